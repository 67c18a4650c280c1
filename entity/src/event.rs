//! `events`: the history of what happened, per merchant. Subscriptions replay it (`after`), and
//! `recentEvents` pages through it. Ids are UUIDv7, so they sort by time and serve as cursors.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The seed's lowercase name, e.g. `order_created`.
    pub event_type: String,
    pub merchant_id: String,
    pub payload: Json,
    pub occurred_at: DateTimeUtc,
    /// The transactional outbox: NULL until this event's webhook deliveries are enqueued.
    pub webhooks_dispatched_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
