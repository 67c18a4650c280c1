//! `delivery_tasks`: the delivery of one order, moving pending -> assigned -> picked_up ->
//! in_transit -> delivered (or failed / cancelled).

use sea_orm::entity::prelude::*;

use crate::DeliveryStatus;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "delivery_tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub merchant_id: String,
    pub order_id: String,
    pub status: DeliveryStatus,
    pub driver_id: Option<String>,
    pub address: Option<Json>,
    /// Where the driver collects the order (`{address, latitude, longitude, contactPhone, notes}`).
    pub pickup: Option<Json>,
    /// Where the order goes (same shape as `pickup`).
    pub dropoff: Option<Json>,
    pub notes: Option<String>,
    pub attempts: i32,
    pub started_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
