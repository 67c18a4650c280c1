//! The `webhooks` generation in `cache_generations`, for the endpoint cache
//! (`src/webhooks/endpoints.rs`).
//!
//! It counts the changes that shape a delivery: an endpoint added or removed, and an update of
//! its merchant, URL, secrets, event types, enabled flag, signature format or rate limit, or of
//! whether it is in a run of failures (`failing_since` set or cleared). Counting failed attempts
//! (`consecutive_failures`, a later `failing_since`) and edits of the description do not bump
//! it, so an endpoint that keeps failing does not empty every instance's cache on each attempt.
//! As for templates (000009), the bump is made by triggers inside the writing transaction:
//! row-level on SQLite, statement-level on PostgreSQL except for UPDATE, which needs the row to
//! tell a relevant change from another. SQLite drops a table's triggers with the table: a
//! migration that rebuilds `webhooks` must call `create_sqlite_triggers` again.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns whose change bumps the generation (compared as text on PostgreSQL, where `json`
/// has no equality).
const WATCHED: [&str; 9] = [
    "merchant_id",
    "url",
    "secret",
    "event_types",
    "enabled",
    "legacy_signature",
    "rate_limit",
    "previous_secret",
    "previous_secret_expires_at",
];

const BUMP: &str =
    "UPDATE cache_generations SET generation = generation + 1 WHERE name = 'webhooks'";

fn changed(distinct: &str, cast: &str) -> String {
    let mut parts: Vec<String> = WATCHED
        .iter()
        .map(|c| format!("OLD.{c}{cast} {distinct} NEW.{c}{cast}"))
        .collect();
    parts.push("(OLD.failing_since IS NULL) <> (NEW.failing_since IS NULL)".into());
    parts.join(" OR ")
}

/// The SQLite triggers.
pub async fn create_sqlite_triggers(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    for (name, event, when) in [
        ("insert", "INSERT", String::new()),
        ("delete", "DELETE", String::new()),
        (
            "update",
            "UPDATE",
            format!("WHEN {}", changed("IS NOT", "")),
        ),
    ] {
        db.execute_unprepared(&format!(
            "CREATE TRIGGER IF NOT EXISTS webhooks_generation_{name} \
             AFTER {event} ON webhooks FOR EACH ROW {when} BEGIN {BUMP}; END"
        ))
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared(
            "INSERT INTO cache_generations (name, generation) VALUES ('webhooks', 1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .await?;
        match m.get_database_backend() {
            DbBackend::Sqlite => create_sqlite_triggers(db).await?,
            _ => {
                for sql in [
                    format!(
                        "CREATE OR REPLACE FUNCTION bump_webhooks_generation() RETURNS trigger \
                         LANGUAGE plpgsql AS $$ BEGIN {BUMP}; RETURN NULL; END $$"
                    ),
                    "DROP TRIGGER IF EXISTS webhooks_generation ON webhooks".into(),
                    "CREATE TRIGGER webhooks_generation AFTER INSERT OR DELETE OR TRUNCATE \
                     ON webhooks FOR EACH STATEMENT EXECUTE FUNCTION bump_webhooks_generation()"
                        .into(),
                    "DROP TRIGGER IF EXISTS webhooks_generation_update ON webhooks".into(),
                    format!(
                        "CREATE TRIGGER webhooks_generation_update AFTER UPDATE ON webhooks \
                         FOR EACH ROW WHEN ({}) EXECUTE FUNCTION bump_webhooks_generation()",
                        changed("IS DISTINCT FROM", "::text")
                    ),
                ] {
                    db.execute_unprepared(&sql).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Sqlite => {
                for name in ["insert", "delete", "update"] {
                    db.execute_unprepared(&format!(
                        "DROP TRIGGER IF EXISTS webhooks_generation_{name}"
                    ))
                    .await?;
                }
            }
            _ => {
                for sql in [
                    "DROP TRIGGER IF EXISTS webhooks_generation ON webhooks",
                    "DROP TRIGGER IF EXISTS webhooks_generation_update ON webhooks",
                    "DROP FUNCTION IF EXISTS bump_webhooks_generation()",
                ] {
                    db.execute_unprepared(sql).await?;
                }
            }
        }
        db.execute_unprepared("DELETE FROM cache_generations WHERE name = 'webhooks'")
            .await?;
        Ok(())
    }
}
