//! Schema migrations, portable across SQLite and PostgreSQL. They run at `serve` start and through
//! `smartbot migrate up|down|status`.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_tables;
mod m20261125_000002_create_jobs;
mod m20261126_000003_template_names_per_merchant;
mod m20261126_000004_create_events;
mod m20261126_000005_product_media_per_merchant;
mod m20261126_000006_webhooks;
mod m20261126_000007_orders;
mod m20261126_000008_jobs_fetch_index;
mod m20261202_000009_cache_generations;
mod m20261203_000010_webhooks_generation;
mod m20261204_000011_event_positions;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tables::Migration),
            Box::new(m20261125_000002_create_jobs::Migration),
            Box::new(m20261126_000003_template_names_per_merchant::Migration),
            Box::new(m20261126_000004_create_events::Migration),
            Box::new(m20261126_000005_product_media_per_merchant::Migration),
            Box::new(m20261126_000006_webhooks::Migration),
            Box::new(m20261126_000007_orders::Migration),
            Box::new(m20261126_000008_jobs_fetch_index::Migration),
            Box::new(m20261202_000009_cache_generations::Migration),
            Box::new(m20261203_000010_webhooks_generation::Migration),
            Box::new(m20261204_000011_event_positions::Migration),
        ]
    }
}
