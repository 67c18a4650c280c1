//! `events`: the history of what happened, per merchant. Subscriptions replay it (`after`), and
//! `recentEvents` pages through it. Ids are UUIDv7, so they sort by time; `seq` numbers events in commit order, and resume
//! points and cursors use it.

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
    /// The position in commit order, numbered without gaps: what a resume replays after
    /// (migration 000011). Set by the INSERT itself, never by the caller.
    pub seq: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}
