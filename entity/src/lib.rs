//! sea-orm 2 entities for Smartbot's tables, one module per table, plus the enums their
//! columns hold. Enums are stored as short lowercase strings so both SQLite and PostgreSQL read them
//! the same way, and double as GraphQL enums.

pub mod audit_log;
pub mod bot_status;
pub mod delivery_task;
pub mod enums;
pub mod event;
pub mod job;
pub mod media_file;
pub mod message;
pub mod message_template;
pub mod order;
pub mod payment;
pub mod product_media;
pub mod queue_control;
pub mod template_version;
pub mod webhook;
pub mod webhook_log;
pub mod whatsapp_account;

pub use enums::*;
