//! `payments`: money received for an order. The reference is unique per merchant, so recording
//! the same payment twice finds the first row.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub merchant_id: String,
    pub order_id: Uuid,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
    /// The payment provider's reference (EcoCash, card processor, …).
    pub reference: String,
    pub method: Option<String>,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "order_id", to = "id", on_delete = "Cascade")]
    pub order: HasOne<super::order::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
