//! The embedded job queue's tables: `jobs` and `queue_controls`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Jobs::Table)
                .if_not_exists()
                .col(string_len(Jobs::Queue, 32))
                .col(string_len(Jobs::Id, 128))
                .col(string_len(Jobs::Name, 64))
                .col(text(Jobs::Payload))
                .col(string_len(Jobs::State, 16))
                .col(small_integer(Jobs::Priority))
                .col(integer(Jobs::AttemptsMade))
                .col(integer(Jobs::MaxAttempts))
                .col(big_integer(Jobs::BackoffMs))
                .col(big_integer(Jobs::TimeoutMs))
                .col(big_integer(Jobs::RunAt))
                .col(big_integer_null(Jobs::LeaseUntil))
                .col(string_len_null(Jobs::LeaseToken, 64))
                .col(text(Jobs::Errors))
                .col(text_null(Jobs::LastError))
                .col(text_null(Jobs::Result))
                .col(big_integer(Jobs::CreatedAt))
                .col(big_integer_null(Jobs::StartedAt))
                .col(big_integer_null(Jobs::FinishedAt))
                .primary_key(Index::create().col(Jobs::Queue).col(Jobs::Id))
                .to_owned(),
        )
        .await?;
        // Fetch: ready jobs of a queue in priority then time order.
        m.create_index(
            Index::create()
                .name("ix_jobs_ready")
                .table(Jobs::Table)
                .col(Jobs::Queue)
                .col(Jobs::State)
                .col(Jobs::Priority)
                .col(Jobs::RunAt)
                .to_owned(),
        )
        .await?;
        // Stall recovery (active by lease) and retention / failed listing (by finish time).
        m.create_index(
            Index::create()
                .name("ix_jobs_lease")
                .table(Jobs::Table)
                .col(Jobs::Queue)
                .col(Jobs::State)
                .col(Jobs::LeaseUntil)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_jobs_finished")
                .table(Jobs::Table)
                .col(Jobs::Queue)
                .col(Jobs::State)
                .col(Jobs::FinishedAt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(QueueControls::Table)
                .if_not_exists()
                .col(string_len(QueueControls::Queue, 32).primary_key())
                .col(boolean(QueueControls::Paused).default(false))
                .col(big_integer(QueueControls::UpdatedAt))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(QueueControls::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(Jobs::Table).if_exists().to_owned())
            .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Queue,
    Id,
    Name,
    Payload,
    State,
    Priority,
    AttemptsMade,
    MaxAttempts,
    BackoffMs,
    TimeoutMs,
    RunAt,
    LeaseUntil,
    LeaseToken,
    Errors,
    LastError,
    Result,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum QueueControls {
    Table,
    Queue,
    Paused,
    UpdatedAt,
}
