//! The seed's eight tables. Every foreign key states its ON DELETE; every list the API serves has
//! an index that matches its filter and order.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Enum columns hold short lowercase strings (see `entity::enums`).
fn enum_col<T: IntoIden>(col: T) -> ColumnDef {
    string_len(col, 16)
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
                .table(MessageTemplates::Table)
                .if_not_exists()
                .col(pk_uuid(MessageTemplates::Id))
                .col(string_len_uniq(MessageTemplates::Name, 100))
                .col(enum_col(MessageTemplates::Type))
                .col(text(MessageTemplates::Body))
                .col(string_len_null(MessageTemplates::Header, 255))
                .col(string_len_null(MessageTemplates::Footer, 255))
                .col(string_len_null(MessageTemplates::ButtonText, 255))
                .col(json(MessageTemplates::Buttons))
                .col(json(MessageTemplates::Sections))
                .col(json_null(MessageTemplates::Media))
                .col(json(MessageTemplates::Variables))
                .col(integer(MessageTemplates::Version).default(1))
                .col(enum_col(MessageTemplates::Status))
                .col(string_len_null(MessageTemplates::MerchantId, 64))
                .col(string_len_null(MessageTemplates::CreatedBy, 128))
                .col(timestamp_with_time_zone(MessageTemplates::CreatedAt))
                .col(timestamp_with_time_zone(MessageTemplates::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_message_templates_merchant_status",
            MessageTemplates::Table,
            &["merchant_id", "status"],
        ))
        .await?;
        m.create_index(idx(
            "ix_message_templates_status_type",
            MessageTemplates::Table,
            &["status", "type"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(TemplateVersions::Table)
                .if_not_exists()
                .col(pk_uuid(TemplateVersions::Id))
                .col(uuid(TemplateVersions::TemplateId))
                .col(integer(TemplateVersions::Version))
                .col(json(TemplateVersions::Content))
                .col(enum_col(TemplateVersions::Status))
                .col(string_len_null(TemplateVersions::CreatedBy, 128))
                .col(timestamp_with_time_zone(TemplateVersions::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_template_versions_template")
                        .from(TemplateVersions::Table, TemplateVersions::TemplateId)
                        .to(MessageTemplates::Table, MessageTemplates::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            idx(
                "ux_template_versions_template_version",
                TemplateVersions::Table,
                &["template_id", "version"],
            )
            .unique()
            .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(MediaFiles::Table)
                .if_not_exists()
                .col(pk_uuid(MediaFiles::Id))
                .col(string_len(MediaFiles::Hash, 32))
                .col(string_len(MediaFiles::Sha256, 64))
                .col(string_len(MediaFiles::OriginalName, 255))
                .col(string_len(MediaFiles::FileName, 255))
                .col(string_len(MediaFiles::MimeType, 64))
                .col(big_integer(MediaFiles::Size))
                .col(integer_null(MediaFiles::Width))
                .col(integer_null(MediaFiles::Height))
                .col(string_len(MediaFiles::Url, 512))
                .col(string_len_null(MediaFiles::ThumbnailUrl, 512))
                .col(json(MediaFiles::Variants))
                .col(string_len_null(MediaFiles::OwnerId, 128))
                .col(string_len_null(MediaFiles::MerchantId, 64))
                .col(enum_col(MediaFiles::Status))
                .col(text_null(MediaFiles::Error))
                .col(timestamp_with_time_zone(MediaFiles::CreatedAt))
                .col(timestamp_with_time_zone(MediaFiles::UpdatedAt))
                .to_owned(),
        )
        .await?;
        // Dedupe is per merchant: the same bytes may be uploaded once by each merchant.
        m.create_index(
            idx(
                "ux_media_files_merchant_hash",
                MediaFiles::Table,
                &["merchant_id", "hash"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_index(idx("ix_media_files_sha256", MediaFiles::Table, &["sha256"]))
            .await?;
        m.create_index(idx(
            "ix_media_files_merchant_status",
            MediaFiles::Table,
            &["merchant_id", "status"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(ProductMedia::Table)
                .if_not_exists()
                .col(pk_uuid(ProductMedia::Id))
                .col(string_len(ProductMedia::ProductId, 128))
                .col(uuid(ProductMedia::MediaId))
                .col(string_len_null(ProductMedia::MerchantId, 64))
                .col(integer(ProductMedia::Position).default(0))
                .col(boolean(ProductMedia::IsPrimary).default(false))
                .col(timestamp_with_time_zone(ProductMedia::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_product_media_media")
                        .from(ProductMedia::Table, ProductMedia::MediaId)
                        .to(MediaFiles::Table, MediaFiles::Id)
                        // Deleting a media file detaches it from every product.
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            idx(
                "ux_product_media_product_media",
                ProductMedia::Table,
                &["product_id", "media_id"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_product_media_product_position",
            ProductMedia::Table,
            &["product_id", "position"],
        ))
        .await?;
        m.create_index(idx(
            "ix_product_media_media",
            ProductMedia::Table,
            &["media_id"],
        ))
        .await?;
        // One primary image per product: a partial unique index (same SQL on both databases).
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX IF NOT EXISTS ux_product_media_one_primary ON product_media (product_id) WHERE is_primary",
            )
            .await?;

        m.create_table(
            Table::create()
                .table(AuditLogs::Table)
                .if_not_exists()
                .col(pk_uuid(AuditLogs::Id))
                .col(string_len_null(AuditLogs::ActorId, 128))
                .col(string_len(AuditLogs::ActorRole, 16))
                .col(string_len(AuditLogs::Action, 64))
                .col(string_len(AuditLogs::TargetType, 64))
                .col(string_len_null(AuditLogs::TargetId, 128))
                .col(string_len_null(AuditLogs::MerchantId, 64))
                .col(json_null(AuditLogs::BeforeState))
                .col(json_null(AuditLogs::AfterState))
                .col(string_len_null(AuditLogs::Ip, 64))
                .col(string_len_null(AuditLogs::RequestId, 64))
                .col(timestamp_with_time_zone(AuditLogs::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_audit_logs_target",
            AuditLogs::Table,
            &["target_type", "target_id"],
        ))
        .await?;
        m.create_index(idx("ix_audit_logs_actor", AuditLogs::Table, &["actor_id"]))
            .await?;
        m.create_index(idx("ix_audit_logs_action", AuditLogs::Table, &["action"]))
            .await?;
        m.create_index(idx(
            "ix_audit_logs_created_at",
            AuditLogs::Table,
            &["created_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(DeliveryTasks::Table)
                .if_not_exists()
                .col(pk_uuid(DeliveryTasks::Id))
                .col(string_len(DeliveryTasks::MerchantId, 64))
                .col(string_len(DeliveryTasks::OrderId, 128))
                .col(enum_col(DeliveryTasks::Status))
                .col(string_len_null(DeliveryTasks::DriverId, 128))
                .col(json_null(DeliveryTasks::Address))
                .col(text_null(DeliveryTasks::Notes))
                .col(integer(DeliveryTasks::Attempts).default(0))
                .col(timestamp_with_time_zone_null(DeliveryTasks::StartedAt))
                .col(timestamp_with_time_zone_null(DeliveryTasks::CompletedAt))
                .col(timestamp_with_time_zone(DeliveryTasks::CreatedAt))
                .col(timestamp_with_time_zone(DeliveryTasks::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_delivery_tasks_merchant_status",
            DeliveryTasks::Table,
            &["merchant_id", "status"],
        ))
        .await?;
        m.create_index(idx(
            "ix_delivery_tasks_order",
            DeliveryTasks::Table,
            &["order_id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Webhooks::Table)
                .if_not_exists()
                .col(pk_uuid(Webhooks::Id))
                .col(string_len_null(Webhooks::MerchantId, 64))
                .col(string_len(Webhooks::Url, 2048))
                .col(string_len_null(Webhooks::Description, 255))
                .col(string_len(Webhooks::Secret, 128))
                .col(json(Webhooks::EventTypes))
                .col(boolean(Webhooks::Enabled).default(true))
                .col(string_len_null(Webhooks::DisabledReason, 255))
                .col(integer(Webhooks::ConsecutiveFailures).default(0))
                .col(string_len_null(Webhooks::CreatedBy, 128))
                .col(timestamp_with_time_zone(Webhooks::CreatedAt))
                .col(timestamp_with_time_zone(Webhooks::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_webhooks_merchant_enabled",
            Webhooks::Table,
            &["merchant_id", "enabled"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookLogs::Table)
                .if_not_exists()
                .col(pk_uuid(WebhookLogs::Id))
                .col(uuid(WebhookLogs::WebhookId))
                .col(uuid(WebhookLogs::EventId))
                .col(string_len(WebhookLogs::EventType, 64))
                .col(integer(WebhookLogs::Attempt))
                .col(enum_col(WebhookLogs::Status))
                .col(json_null(WebhookLogs::RequestBody))
                .col(integer_null(WebhookLogs::ResponseStatus))
                .col(text_null(WebhookLogs::ResponseBody))
                .col(text_null(WebhookLogs::Error))
                .col(big_integer_null(WebhookLogs::DurationMs))
                .col(timestamp_with_time_zone_null(WebhookLogs::NextRetryAt))
                .col(timestamp_with_time_zone(WebhookLogs::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_webhook_logs_webhook")
                        .from(WebhookLogs::Table, WebhookLogs::WebhookId)
                        .to(Webhooks::Table, Webhooks::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(idx(
            "ix_webhook_logs_webhook_created",
            WebhookLogs::Table,
            &["webhook_id", "created_at"],
        ))
        .await?;
        m.create_index(idx(
            "ix_webhook_logs_event",
            WebhookLogs::Table,
            &["event_id"],
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Children first, so foreign keys never block the drop.
        for table in [
            WebhookLogs::Table.into_iden(),
            Webhooks::Table.into_iden(),
            DeliveryTasks::Table.into_iden(),
            AuditLogs::Table.into_iden(),
            ProductMedia::Table.into_iden(),
            MediaFiles::Table.into_iden(),
            TemplateVersions::Table.into_iden(),
            MessageTemplates::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum MessageTemplates {
    Table,
    Id,
    Name,
    Type,
    Body,
    Header,
    Footer,
    ButtonText,
    Buttons,
    Sections,
    Media,
    Variables,
    Version,
    Status,
    MerchantId,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TemplateVersions {
    Table,
    Id,
    TemplateId,
    Version,
    Content,
    Status,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum MediaFiles {
    Table,
    Id,
    Hash,
    Sha256,
    OriginalName,
    FileName,
    MimeType,
    Size,
    Width,
    Height,
    Url,
    ThumbnailUrl,
    Variants,
    OwnerId,
    MerchantId,
    Status,
    Error,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ProductMedia {
    Table,
    Id,
    ProductId,
    MediaId,
    MerchantId,
    Position,
    IsPrimary,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    Id,
    ActorId,
    ActorRole,
    Action,
    TargetType,
    TargetId,
    MerchantId,
    BeforeState,
    AfterState,
    Ip,
    RequestId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum DeliveryTasks {
    Table,
    Id,
    MerchantId,
    OrderId,
    Status,
    DriverId,
    Address,
    Notes,
    Attempts,
    StartedAt,
    CompletedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
    MerchantId,
    Url,
    Description,
    Secret,
    EventTypes,
    Enabled,
    DisabledReason,
    ConsecutiveFailures,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookLogs {
    Table,
    Id,
    WebhookId,
    EventId,
    EventType,
    Attempt,
    Status,
    RequestBody,
    ResponseStatus,
    ResponseBody,
    Error,
    DurationMs,
    NextRetryAt,
    CreatedAt,
}
