//! `webhooks`: a merchant's endpoint for signed event deliveries (Standard Webhooks).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhooks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// NULL for platform-wide endpoints (admin only).
    pub merchant_id: Option<String>,
    pub url: String,
    pub description: Option<String>,
    /// `whsec_…` signing secret.
    pub secret: String,
    /// Event types delivered; an empty list means all.
    pub event_types: Json,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub created_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub logs: HasMany<super::webhook_log::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
