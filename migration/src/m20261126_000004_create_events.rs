//! The ninth table, `events`: the shared, restart-proof event history.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    EventType,
    MerchantId,
    Payload,
    OccurredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Events::Table)
                .if_not_exists()
                .col(pk_uuid(Events::Id))
                .col(string_len(Events::EventType, 32))
                .col(string_len(Events::MerchantId, 64))
                .col(json(Events::Payload))
                .col(timestamp_with_time_zone(Events::OccurredAt))
                .to_owned(),
        )
        .await?;
        // Replay and paging walk one merchant's events in id (= time) order.
        m.create_index(
            Index::create()
                .name("ix_events_merchant_id")
                .table(Events::Table)
                .col(Events::MerchantId)
                .col(Events::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Events::Table).to_owned())
            .await
    }
}
