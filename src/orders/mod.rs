//! The order lifecycle: `submitOrder` records a PENDING order and queues `order_processing`,
//! whose job validates it (CONFIRMED + `order_created`, or REJECTED with the reason); then
//! `updateOrderStatus` walks the state machine and `recordPayment` books money against it.
//!
//! Why validation runs in the job and not in the request: the bot submits what the customer said
//! and answers at once; a bad order is a business outcome (REJECTED, with a reason the bot can
//! read back), not a transport error, and it is never retried. Only the shape of the input (sizes,
//! the phone number, the idempotency key) is refused at the door, so nothing unbounded is stored.
//!
//! Every status change is a conditional UPDATE (`… WHERE id = ? AND status = <expected>`) with its
//! event recorded in the same transaction: two racing changes cannot both win, and an event exists
//! exactly when its change does.

pub mod currency;
pub mod payments;
pub mod service;

pub use service::{NewOrder, OrderItem};
