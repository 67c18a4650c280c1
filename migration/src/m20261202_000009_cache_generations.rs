//! `cache_generations`: one counter per cached table, bumped by triggers in the writing
//! transaction, so that every instance can check in one primary-key read whether what it cached
//! is still current (see `src/templates/cache.rs` for the correctness argument).
//!
//! The `templates` generation counts every change to `message_templates`: INSERT, UPDATE and
//! DELETE (and TRUNCATE on PostgreSQL), made by the service, the seed, a migration or by hand in
//! SQL. PostgreSQL bumps once per statement; SQLite has only row-level triggers and bumps once per
//! row. The counter row is updated, never read, by the trigger: the row lock (PostgreSQL) or the
//! single writer (SQLite) orders the bumps, and the new value becomes visible exactly when the
//! change it counts commits. A sequence would not do: `nextval` is visible before the commit.
//!
//! SQLite drops a table's triggers with the table: a migration that rebuilds `message_templates`
//! (as 000003 did) must create them again (`create_sqlite_triggers`).

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_EVENTS: [(&str, &str); 3] = [
    ("insert", "INSERT"),
    ("update", "UPDATE"),
    ("delete", "DELETE"),
];

/// The SQLite triggers (row-level: SQLite has no statement-level triggers).
pub async fn create_sqlite_triggers(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    for (name, event) in SQLITE_EVENTS {
        db.execute_unprepared(&format!(
            "CREATE TRIGGER IF NOT EXISTS message_templates_generation_{name} \
             AFTER {event} ON message_templates FOR EACH ROW BEGIN \
             UPDATE cache_generations SET generation = generation + 1 WHERE name = 'templates'; \
             END"
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
            "CREATE TABLE IF NOT EXISTS cache_generations \
             (name varchar(64) NOT NULL PRIMARY KEY, generation bigint NOT NULL)",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO cache_generations (name, generation) VALUES ('templates', 1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .await?;
        match m.get_database_backend() {
            DbBackend::Sqlite => create_sqlite_triggers(db).await?,
            _ => {
                for sql in [
                    "CREATE OR REPLACE FUNCTION bump_templates_generation() RETURNS trigger \
                     LANGUAGE plpgsql AS $$ BEGIN \
                     UPDATE cache_generations SET generation = generation + 1 \
                     WHERE name = 'templates'; RETURN NULL; END $$",
                    "DROP TRIGGER IF EXISTS message_templates_generation ON message_templates",
                    "CREATE TRIGGER message_templates_generation \
                     AFTER INSERT OR UPDATE OR DELETE ON message_templates \
                     FOR EACH STATEMENT EXECUTE FUNCTION bump_templates_generation()",
                    "DROP TRIGGER IF EXISTS message_templates_generation_truncate \
                     ON message_templates",
                    "CREATE TRIGGER message_templates_generation_truncate \
                     AFTER TRUNCATE ON message_templates \
                     FOR EACH STATEMENT EXECUTE FUNCTION bump_templates_generation()",
                ] {
                    db.execute_unprepared(sql).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Sqlite => {
                for (name, _) in SQLITE_EVENTS {
                    db.execute_unprepared(&format!(
                        "DROP TRIGGER IF EXISTS message_templates_generation_{name}"
                    ))
                    .await?;
                }
            }
            _ => {
                for sql in [
                    "DROP TRIGGER IF EXISTS message_templates_generation ON message_templates",
                    "DROP TRIGGER IF EXISTS message_templates_generation_truncate \
                     ON message_templates",
                    "DROP FUNCTION IF EXISTS bump_templates_generation()",
                ] {
                    db.execute_unprepared(sql).await?;
                }
            }
        }
        db.execute_unprepared("DROP TABLE IF EXISTS cache_generations")
            .await?;
        Ok(())
    }
}
