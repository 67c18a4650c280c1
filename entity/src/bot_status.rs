//! `bot_status`: whether each merchant's bot is online, as it last reported (or as the staleness
//! sweep decided when it stopped reporting).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bot_status")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub merchant_id: String,
    pub connected: bool,
    pub reason: Option<String>,
    pub last_seen_at: DateTimeUtc,
    /// When `connected` last flipped.
    pub changed_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
