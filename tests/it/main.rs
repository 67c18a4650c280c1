//! One integration-test binary (faster to link than one per file), with a module per area.

mod access;
mod cli;
mod common;
mod events;
mod explorer;
mod fuzz;
mod hardening;
mod lifecycle;
mod limits;
mod media;
mod orders;
mod pagination;
mod preview;
mod queue;
mod queue_api;
mod read_cache;
mod rest;
mod schema;
mod templates;
mod traversal;
mod validation;
mod webhooks;
mod whatsapp;
mod ws;
mod ws_rules;
