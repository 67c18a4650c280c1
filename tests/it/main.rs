//! One integration-test binary (faster to link than one per file), with a module per area.

mod common;
mod templates;
