//! `recordPayment`: money received against a confirmed order, emitting `payment_received`.
//!
//! Idempotent on the provider's `reference` (unique per merchant): recording the same payment
//! again returns the first row and emits nothing; a reference reused for a different payment is
//! CONFLICT. The amount and currency must match the order exactly, in minor units.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};
use serde_json::json;
use uuid::Uuid;

use super::service::{find_scoped, status_name};
use crate::{
    AppState,
    auth::{MerchantId, RequestContext},
    error::{Error, Result},
    events::{self, EventType, MAX_AMOUNT},
};
use entity::{
    OrderStatus,
    payment::{self, Column as C, Entity as Payments},
};

/// `recordPayment`'s input.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub order_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub reference: String,
    pub method: Option<String>,
}

fn check(input: &mut NewPayment) -> Result<()> {
    if !(1..=MAX_AMOUNT).contains(&input.amount) {
        return Err(Error::validation(
            "amount",
            "amount must be a whole amount in minor units, from 1 to 2^53-1",
        ));
    }
    input.currency = input.currency.trim().to_ascii_uppercase();
    if input.currency.len() != 3 || !input.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::validation(
            "currency",
            "currency must be a three-letter ISO 4217 code such as USD",
        ));
    }
    input.reference = input.reference.trim().to_owned();
    if input.reference.is_empty()
        || input.reference.chars().count() > 128
        || input.reference.chars().any(char::is_control)
    {
        return Err(Error::validation(
            "reference",
            "reference must be 1 to 128 printable characters",
        ));
    }
    // Optional text: blank is absent, as a webhook's description is.
    input.method = input
        .method
        .take()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty());
    if let Some(m) = &input.method
        && (m.chars().count() > 64 || m.chars().any(char::is_control))
    {
        return Err(Error::validation(
            "method",
            "method must be at most 64 printable characters",
        ));
    }
    Ok(())
}

fn same(p: &payment::Model, input: &NewPayment) -> Result<()> {
    if p.order_id == input.order_id && p.amount == input.amount && p.currency == input.currency {
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "reference {:?} was already recorded for a different payment",
            input.reference
        )))
    }
}

async fn by_reference(
    db: &DatabaseConnection,
    merchant: &str,
    reference: &str,
) -> Result<Option<payment::Model>> {
    Ok(Payments::find()
        .filter(C::MerchantId.eq(merchant))
        .filter(C::Reference.eq(reference))
        .one(db)
        .await?)
}

/// Records a payment for an order the caller may write; see the module docs.
pub async fn record(
    state: &AppState,
    ctx: &RequestContext,
    mut input: NewPayment,
) -> Result<payment::Model> {
    ctx.actor.require_authenticated()?;
    check(&mut input)?;
    let txn = crate::db::begin_write(&state.db).await?;
    let order = find_scoped(&txn, &ctx.actor, input.order_id).await?;
    if let Some(existing) = Payments::find()
        .filter(C::MerchantId.eq(order.merchant_id.as_str()))
        .filter(C::Reference.eq(input.reference.as_str()))
        .one(&txn)
        .await?
    {
        same(&existing, &input)?;
        return Ok(existing);
    }
    if !matches!(
        order.status,
        OrderStatus::Confirmed
            | OrderStatus::Preparing
            | OrderStatus::Ready
            | OrderStatus::Delivered
    ) {
        return Err(Error::validation(
            "orderId",
            format!(
                "the order is {}; payments are recorded against confirmed orders",
                status_name(order.status)
            ),
        ));
    }
    if input.currency != order.currency {
        return Err(Error::validation(
            "currency",
            format!(
                "currency {} does not match the order's {}",
                input.currency, order.currency
            ),
        ));
    }
    if input.amount != order.total_amount {
        return Err(Error::validation(
            "amount",
            format!(
                "amount {} does not match the order's total {} (minor units)",
                input.amount, order.total_amount
            ),
        ));
    }
    if let Some(paid) = Payments::find()
        .filter(C::OrderId.eq(order.id))
        .order_by_asc(C::CreatedAt)
        .one(&txn)
        .await?
    {
        return Err(Error::Conflict(format!(
            "the order is already paid (reference {:?})",
            paid.reference
        )));
    }
    let row = payment::ActiveModel {
        id: Set(Uuid::now_v7()),
        merchant_id: Set(order.merchant_id.clone()),
        order_id: Set(order.id),
        amount: Set(input.amount),
        currency: Set(input.currency.clone()),
        reference: Set(input.reference.clone()),
        method: Set(input.method.clone()),
        created_at: Set(crate::db::now()),
    };
    // DO NOTHING: a racing insert of the same reference must not abort this transaction.
    let inserted = Payments::insert(row.clone())
        .on_conflict(
            OnConflict::columns([C::MerchantId, C::Reference])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    if inserted == 0 {
        drop(txn);
        let existing = by_reference(&state.db, &order.merchant_id, &input.reference)
            .await?
            .ok_or_else(|| Error::Conflict("the payment changed meanwhile; retry".into()))?;
        same(&existing, &input)?;
        return Ok(existing);
    }
    let merchant = MerchantId::parse("merchantId", &order.merchant_id)?;
    let event = events::service::record(
        &txn,
        EventType::PaymentReceived,
        &merchant,
        json!({
            "orderId": order.id.to_string(),
            "amount": input.amount,
            "currency": input.currency,
            "reference": input.reference,
            "method": input.method,
        }),
    )
    .await?;
    let model = Payments::find_by_id(row.id.unwrap())
        .one(&txn)
        .await?
        .ok_or_else(|| Error::internal("payment vanished inside its transaction"))?;
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(model)
}

/// The payments of an order (already scoped by the caller).
pub async fn of_order(db: &DatabaseConnection, order_id: Uuid) -> Result<Vec<payment::Model>> {
    Ok(Payments::find()
        .filter(C::OrderId.eq(order_id))
        .order_by_asc(C::CreatedAt)
        .all(db)
        .await?)
}
