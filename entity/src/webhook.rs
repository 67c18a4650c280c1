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
    /// The `whsec_…` signing secret, encrypted at rest (`enc:v1:…`, see the app's `crypto`).
    pub secret: String,
    /// Event types delivered; an empty list means all.
    pub event_types: Json,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub created_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Also sign the seed's way (`X-Webhook-Signature: sha256=<hex>`).
    pub legacy_signature: bool,
    /// Deliveries per second at most; NULL is unlimited.
    pub rate_limit: Option<i32>,
    /// The secret before the last rotation (encrypted), still signing until it expires.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTimeUtc>,
    /// When the current run of failed attempts began; NULL after a success.
    pub failing_since: Option<DateTimeUtc>,
    #[sea_orm(has_many)]
    pub logs: HasMany<super::webhook_log::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
