//! `webhook_logs`: one row per delivery attempt. Deleted with its webhook.

use sea_orm::entity::prelude::*;

use crate::WebhookAttemptStatus;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub attempt: i32,
    pub status: WebhookAttemptStatus,
    pub request_body: Option<Json>,
    pub response_status: Option<i32>,
    #[sea_orm(column_type = "Text", nullable)]
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    pub next_retry_at: Option<DateTimeUtc>,
    /// Where the attempt was sent.
    pub url: Option<String>,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "webhook_id", to = "id", on_delete = "Cascade")]
    pub webhook: HasOne<super::webhook::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
