//! The order lifecycle and WhatsApp delivery: `orders` (the ninth domain table), `payments`,
//! `messages` (outbound and inbound WhatsApp messages), `bot_status`, `whatsapp_accounts`
//! (per-merchant credentials, encrypted), and pickup/dropoff on `delivery_tasks`.
//!
//! Money is integer minor units (`BIGINT`) plus an ISO 4217 code; never a float. Idempotency keys
//! and provider ids are unique per merchant, so a retried request or a redelivered webhook finds
//! the row it made the first time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn enum_col<T: IntoIden>(col: T) -> ColumnDef {
    string_len(col, 16)
}

fn unique(
    name: &str,
    table: impl IntoIden + 'static,
    cols: &[&'static str],
) -> IndexCreateStatement {
    let mut i = idx(name, table, cols);
    i.unique();
    i
}

fn idx(name: &str, table: impl IntoIden + 'static, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(table);
    for c in cols {
        i.col(Alias::new(*c));
    }
    i.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Orders::Table)
                .if_not_exists()
                .col(pk_uuid(Orders::Id))
                .col(string_len(Orders::MerchantId, 64))
                .col(string_len(Orders::CustomerPhone, 16))
                .col(json(Orders::Items))
                .col(string_len(Orders::Currency, 3))
                .col(big_integer(Orders::TotalAmount))
                .col(enum_col(Orders::Status))
                .col(text_null(Orders::Reason))
                .col(string_len_null(Orders::IdempotencyKey, 128))
                .col(timestamp_with_time_zone(Orders::CreatedAt))
                .col(timestamp_with_time_zone(Orders::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "ux_orders_merchant_idempotency",
            Orders::Table,
            &["merchant_id", "idempotency_key"],
        ))
        .await?;
        // `orders(merchantId, status)` pages newest first (ids are UUIDv7).
        m.create_index(idx(
            "ix_orders_merchant_status_id",
            Orders::Table,
            &["merchant_id", "status", "id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Payments::Table)
                .if_not_exists()
                .col(pk_uuid(Payments::Id))
                .col(string_len(Payments::MerchantId, 64))
                .col(uuid(Payments::OrderId))
                .col(big_integer(Payments::Amount))
                .col(string_len(Payments::Currency, 3))
                .col(string_len(Payments::Reference, 128))
                .col(string_len_null(Payments::Method, 64))
                .col(timestamp_with_time_zone(Payments::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_payments_order")
                        .from(Payments::Table, Payments::OrderId)
                        .to(Orders::Table, Orders::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "ux_payments_merchant_reference",
            Payments::Table,
            &["merchant_id", "reference"],
        ))
        .await?;
        m.create_index(idx("ix_payments_order", Payments::Table, &["order_id"]))
            .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .if_not_exists()
                .col(pk_uuid(Messages::Id))
                .col(string_len(Messages::MerchantId, 64))
                .col(enum_col(Messages::Direction))
                .col(string_len(Messages::CustomerPhone, 16))
                .col(string_len(Messages::MessageType, 32))
                .col(uuid_null(Messages::TemplateId))
                .col(json(Messages::Payload))
                .col(enum_col(Messages::Status))
                .col(json(Messages::StatusHistory))
                .col(string_len_null(Messages::ProviderMessageId, 256))
                .col(string_len_null(Messages::IdempotencyKey, 128))
                .col(string_len_null(Messages::Transport, 16))
                .col(integer(Messages::Attempts).default(0))
                .col(text_null(Messages::Error))
                .col(integer_null(Messages::ErrorCode))
                .col(timestamp_with_time_zone(Messages::CreatedAt))
                .col(timestamp_with_time_zone(Messages::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "ux_messages_merchant_idempotency",
            Messages::Table,
            &["merchant_id", "idempotency_key"],
        ))
        .await?;
        // Inbound dedupe (Meta redelivers) and status updates find messages by provider id.
        m.create_index(unique(
            "ux_messages_merchant_provider_id",
            Messages::Table,
            &["merchant_id", "provider_message_id"],
        ))
        .await?;
        m.create_index(idx(
            "ix_messages_merchant_direction_id",
            Messages::Table,
            &["merchant_id", "direction", "id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(BotStatus::Table)
                .if_not_exists()
                .col(string_len(BotStatus::MerchantId, 64).primary_key())
                .col(boolean(BotStatus::Connected))
                .col(string_len_null(BotStatus::Reason, 256))
                .col(timestamp_with_time_zone(BotStatus::LastSeenAt))
                .col(timestamp_with_time_zone(BotStatus::ChangedAt))
                .to_owned(),
        )
        .await?;
        // The staleness sweep looks for connected bots not seen since the cutoff.
        m.create_index(idx(
            "ix_bot_status_connected_seen",
            BotStatus::Table,
            &["connected", "last_seen_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(WhatsappAccounts::Table)
                .if_not_exists()
                .col(string_len(WhatsappAccounts::MerchantId, 64).primary_key())
                .col(string_len_uniq(WhatsappAccounts::PhoneNumberId, 64))
                .col(text(WhatsappAccounts::AccessToken))
                .col(timestamp_with_time_zone(WhatsappAccounts::CreatedAt))
                .col(timestamp_with_time_zone(WhatsappAccounts::UpdatedAt))
                .to_owned(),
        )
        .await?;

        // SQLite adds one column per ALTER TABLE.
        for col in [DeliveryTasks::Pickup, DeliveryTasks::Dropoff] {
            m.alter_table(
                Table::alter()
                    .table(DeliveryTasks::Table)
                    .add_column(json_null(col))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [DeliveryTasks::Dropoff, DeliveryTasks::Pickup] {
            m.alter_table(
                Table::alter()
                    .table(DeliveryTasks::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        for table in [
            WhatsappAccounts::Table.into_iden(),
            BotStatus::Table.into_iden(),
            Messages::Table.into_iden(),
            Payments::Table.into_iden(),
            Orders::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    MerchantId,
    CustomerPhone,
    Items,
    Currency,
    TotalAmount,
    Status,
    Reason,
    IdempotencyKey,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    MerchantId,
    OrderId,
    Amount,
    Currency,
    Reference,
    Method,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    MerchantId,
    Direction,
    CustomerPhone,
    MessageType,
    TemplateId,
    Payload,
    Status,
    StatusHistory,
    ProviderMessageId,
    IdempotencyKey,
    Transport,
    Attempts,
    Error,
    ErrorCode,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BotStatus {
    Table,
    MerchantId,
    Connected,
    Reason,
    LastSeenAt,
    ChangedAt,
}

#[derive(DeriveIden)]
enum WhatsappAccounts {
    Table,
    MerchantId,
    PhoneNumberId,
    AccessToken,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeliveryTasks {
    Table,
    Pickup,
    Dropoff,
}
