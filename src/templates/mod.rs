//! Message templates: the pure [`engine`] (render, variables, WhatsApp limits, Cloud API
//! payloads), the [`service`] that stores them with versions and audit, and the [`seed`] defaults.

pub mod engine;
pub mod seed;
pub mod service;
