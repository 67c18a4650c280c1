//! `events.seq`: each event's position in commit order, the resume point of subscriptions.
//!
//! An event id (UUIDv7) is taken when its emit begins, and events commit in another order when
//! emits overlap. Live delivery follows the commits, so a client that resumed after the last id
//! it received could miss an event with a lower id that committed later, and see again one with
//! a higher id that committed earlier. `seq` numbers events in the order they commit, without
//! gaps, so "everything after this event" is exact:
//!
//! - SQLite has one writer at a time: the INSERT takes `MAX(seq) + 1` itself (see
//!   `events::service::insert_events`), inside the write lock it holds until its commit.
//! - PostgreSQL: a BEFORE INSERT trigger takes a transaction-level advisory lock, then
//!   `MAX(seq) + 1`. The lock is held until the transaction ends, so the next writer reads the
//!   maximum only once this one has committed (or rolled back, leaving its number free).
//!
//! Existing rows are numbered in id order.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    MerchantId,
}

/// The advisory lock's keys (two int4: its own key space, apart from the start-up lock's int8).
/// "evts" and "seq" in ASCII.
const LOCK: &str = "1702261875, 7562609";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Events::Table)
                .add_column(ColumnDef::new(Events::Seq).big_integer().null())
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared(
            "UPDATE events SET seq = numbered.n FROM \
             (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS n FROM events) AS numbered \
             WHERE events.id = numbered.id",
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_events_seq")
                .table(Events::Table)
                .col(Events::Seq)
                .unique()
                .to_owned(),
        )
        .await?;
        // Replay, paging and trims walk one merchant's events in commit order.
        m.create_index(
            Index::create()
                .name("ix_events_merchant_seq")
                .table(Events::Table)
                .col(Events::MerchantId)
                .col(Events::Seq)
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == DbBackend::Postgres {
            for sql in [
                format!(
                    "CREATE OR REPLACE FUNCTION events_next_seq() RETURNS trigger \
                     LANGUAGE plpgsql AS $$ BEGIN \
                     PERFORM pg_advisory_xact_lock({LOCK}); \
                     SELECT COALESCE(MAX(seq), 0) + 1 INTO NEW.seq FROM events; \
                     RETURN NEW; END $$"
                ),
                "DROP TRIGGER IF EXISTS events_seq ON events".into(),
                "CREATE TRIGGER events_seq BEFORE INSERT ON events \
                 FOR EACH ROW EXECUTE FUNCTION events_next_seq()"
                    .into(),
            ] {
                db.execute_unprepared(&sql).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            let db = m.get_connection();
            db.execute_unprepared("DROP TRIGGER IF EXISTS events_seq ON events")
                .await?;
            db.execute_unprepared("DROP FUNCTION IF EXISTS events_next_seq()")
                .await?;
        }
        for name in ["ix_events_merchant_seq", "ux_events_seq"] {
            m.drop_index(Index::drop().name(name).table(Events::Table).to_owned())
                .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Events::Table)
                .drop_column(Events::Seq)
                .to_owned(),
        )
        .await
    }
}
