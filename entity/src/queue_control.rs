//! `queue_controls`: per-queue switches of the embedded queue (paused).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_controls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub queue: String,
    pub paused: bool,
    pub updated_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}
