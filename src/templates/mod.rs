//! Message templates: the pure [`engine`] (render, variables, WhatsApp limits, Cloud API
//! payloads), the [`service`] that stores them with versions and audit, the [`seed`] defaults, and
//! the [`cache`] of serialized reads.

pub mod cache;
pub mod engine;
pub mod seed;
pub mod service;
