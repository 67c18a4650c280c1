//! `orders`: what a customer ordered, in integer minor units of one ISO 4217 currency. The
//! idempotency key is unique per merchant, so a retried `submitOrder` finds the first order.

use sea_orm::entity::prelude::*;

use crate::OrderStatus;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub merchant_id: String,
    /// E.164 digits without `+`.
    pub customer_phone: String,
    /// `[{productId, name, quantity, unitPrice}]`, unit prices in minor units.
    pub items: Json,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    /// In minor units (cents): never a float.
    pub total_amount: i64,
    pub status: OrderStatus,
    /// Why validation rejected the order (or why it was cancelled).
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub payments: HasMany<super::payment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
