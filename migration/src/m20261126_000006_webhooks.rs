//! Webhooks, done the way Svix does them:
//!
//! * `events.webhooks_dispatched_at`: the transactional outbox. An event row is written in the
//!   same transaction as the change it reports; NULL here means its webhook fan-out has not been
//!   enqueued yet, so a sweeper can finish the job after a crash. Rows that existed before this
//!   migration are marked dispatched (there were no endpoints to deliver them to).
//! * `webhooks`: the Standard Webhooks seed-compat flag, an optional per-second rate limit, the
//!   previous secret kept for a rotation's overlap, and when the current run of failures began
//!   (automatic disabling).
//! * `webhook_logs.url`: where each attempt went.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    WebhooksDispatchedAt,
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    LegacySignature,
    RateLimit,
    PreviousSecret,
    PreviousSecretExpiresAt,
    FailingSince,
}

#[derive(DeriveIden)]
enum WebhookLogs {
    Table,
    Url,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(Events::Table)
                .add_column(timestamp_with_time_zone_null(Events::WebhooksDispatchedAt))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared("UPDATE events SET webhooks_dispatched_at = occurred_at")
            .await?;
        // The sweeper reads only the (few) undispatched rows.
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS ix_events_webhooks_undispatched ON events (occurred_at) \
             WHERE webhooks_dispatched_at IS NULL",
        )
        .await?;
        for col in [
            boolean(Webhooks::LegacySignature).default(false).to_owned(),
            integer_null(Webhooks::RateLimit).to_owned(),
            string_len_null(Webhooks::PreviousSecret, 255).to_owned(),
            timestamp_with_time_zone_null(Webhooks::PreviousSecretExpiresAt).to_owned(),
            timestamp_with_time_zone_null(Webhooks::FailingSince).to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Webhooks::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(WebhookLogs::Table)
                .add_column(string_len_null(WebhookLogs::Url, 2048))
                .to_owned(),
        )
        .await?;
        // Retention trims by age across every endpoint.
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS ix_webhook_logs_created ON webhook_logs (created_at)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ix_webhook_logs_created")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS ix_events_webhooks_undispatched")
            .await?;
        m.alter_table(
            Table::alter()
                .table(WebhookLogs::Table)
                .drop_column(WebhookLogs::Url)
                .to_owned(),
        )
        .await?;
        for col in [
            Webhooks::LegacySignature,
            Webhooks::RateLimit,
            Webhooks::PreviousSecret,
            Webhooks::PreviousSecretExpiresAt,
            Webhooks::FailingSince,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Webhooks::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Events::Table)
                .drop_column(Events::WebhooksDispatchedAt)
                .to_owned(),
        )
        .await
    }
}
