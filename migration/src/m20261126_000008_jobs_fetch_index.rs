//! The SQL queue's fetch reads ready jobs from a partial index in exactly its `ORDER BY`
//! (priority, run_at, created_at, id), so a fetch stops after its `LIMIT` rows instead of sorting
//! the whole backlog. A fetch that sorted 10,000 waiting jobs ran for seconds under load; on
//! PostgreSQL that long statement also held row locks on jobs other workers had leased meanwhile
//! (see `src/queue/sql.rs`), which is what let leases expire. The index only holds waiting and
//! delayed rows, so it stays as small as the backlog.
//!
//! `ix_jobs_ready` (queue, state, priority, run_at) could not serve that order across two states;
//! nothing else needs it (the other two job indexes lead with queue and state too), and every
//! state change paid for updating it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for sql in [
            "CREATE INDEX IF NOT EXISTS ix_jobs_fetch ON jobs (queue, priority, run_at, created_at, id) \
             WHERE state IN ('waiting', 'delayed')",
            "DROP INDEX IF EXISTS ix_jobs_ready",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for sql in [
            "CREATE INDEX IF NOT EXISTS ix_jobs_ready ON jobs (queue, state, priority, run_at)",
            "DROP INDEX IF EXISTS ix_jobs_fetch",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
