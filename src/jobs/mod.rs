//! One handler per queue. A queue gets workers in a process only when it has a handler here;
//! jobs enqueued for the others wait, durably, until a process that has one picks them up.

use crate::{AppState, queue::worker::Handlers};

/// The handlers this build provides.
pub fn handlers(_state: &AppState) -> Handlers {
    Handlers::new()
}
