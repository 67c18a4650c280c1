//! Orders: submit, validate (the `order_processing` job), the status state machine, and the
//! scoped finders every read and write goes through.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::currency;
use crate::{
    AppState, audit,
    auth::{
        Actor, MerchantId, RequestContext,
        scope::{self, Scoped as _},
    },
    error::{Error, Result},
    events::{self, EventType, MAX_AMOUNT},
    pagination::{Page, PageArgs, encode_cursor},
    queue::{JobOptions, QueueName},
};
use entity::{
    OrderStatus,
    order::{self, Column as C, Entity as Orders},
};

const CURSOR_KIND: &str = "ord";
/// The most line items one order may carry.
pub const MAX_ITEMS: usize = 100;
/// The largest quantity of one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
pub const MAX_KEY_CHARS: usize = 128;

/// One line of an order, in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: i64,
}

/// `submitOrder`'s input.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub merchant_id: Option<String>,
    pub customer_phone: String,
    pub items: Vec<OrderItem>,
    pub currency: String,
    pub total_amount: i64,
    pub idempotency_key: Option<String>,
}

/// The GraphQL name of a status (`PENDING`), as events carry it.
pub fn status_name(s: OrderStatus) -> String {
    s.as_str().to_ascii_uppercase()
}

pub fn items_of(m: &order::Model) -> Vec<OrderItem> {
    serde_json::from_value(m.items.clone()).unwrap_or_default()
}

pub fn cursor(m: &order::Model) -> String {
    encode_cursor(CURSOR_KIND, &m.id.to_string())
}

/// Checks an idempotency key given as input.
pub fn parse_idempotency_key(key: Option<String>) -> Result<Option<String>> {
    let Some(key) = key else { return Ok(None) };
    let key = key.trim().to_owned();
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Error::validation(
            "idempotencyKey",
            format!("idempotencyKey must be 1 to {MAX_KEY_CHARS} printable characters"),
        ));
    }
    Ok(Some(key))
}

/// The one way to load an order for `actor`: another merchant's order is NOT_FOUND.
pub async fn find_scoped<Db: ConnectionTrait>(
    db: &Db,
    actor: &Actor,
    id: Uuid,
) -> Result<order::Model> {
    scope::one_writable::<Orders, _>(db, actor, Condition::all().add(C::Id.eq(id))).await
}

/// Bounds the input before anything is stored. Business rules (totals, currency, quantities)
/// are the job's: see [`validate`].
fn check_shape(input: &mut NewOrder) -> Result<()> {
    input.customer_phone = crate::whatsapp::parse_phone("customerPhone", &input.customer_phone)?;
    if input.items.len() > MAX_ITEMS {
        return Err(Error::validation(
            "items",
            format!("an order may have at most {MAX_ITEMS} items"),
        ));
    }
    for (i, item) in input.items.iter_mut().enumerate() {
        item.product_id = item.product_id.trim().to_owned();
        if item.product_id.is_empty()
            || item.product_id.chars().count() > 128
            || item.product_id.chars().any(char::is_control)
        {
            return Err(Error::validation(
                format!("items[{i}].productId"),
                "productId must be 1 to 128 printable characters",
            ));
        }
        if item.name.chars().count() > 200 || item.name.chars().any(char::is_control) {
            return Err(Error::validation(
                format!("items[{i}].name"),
                "name must be at most 200 printable characters",
            ));
        }
        if item.quantity.abs() > MAX_QUANTITY {
            return Err(Error::validation(
                format!("items[{i}].quantity"),
                format!("quantity must be at most {MAX_QUANTITY}"),
            ));
        }
        if item.unit_price.abs() > MAX_AMOUNT {
            return Err(Error::validation(
                format!("items[{i}].unitPrice"),
                "unitPrice must be a whole amount in minor units, at most 2^53-1",
            ));
        }
    }
    if !(0..=MAX_AMOUNT).contains(&input.total_amount) {
        return Err(Error::validation(
            "totalAmount",
            "totalAmount must be a whole amount in minor units, from 0 to 2^53-1",
        ));
    }
    input.currency = input.currency.trim().to_ascii_uppercase();
    if input.currency.len() != 3 || !input.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::validation(
            "currency",
            "currency must be a three-letter ISO 4217 code such as USD",
        ));
    }
    input.idempotency_key = parse_idempotency_key(input.idempotency_key.take())?;
    Ok(())
}

/// The business rules `order_processing` applies: `Err(reason)` rejects the order.
pub fn validate(items: &[OrderItem], currency_code: &str, total: i64) -> Result<(), String> {
    if items.is_empty() {
        return Err("items: an order needs at least one item".into());
    }
    let mut sum: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        if item.quantity <= 0 {
            return Err(format!("items[{i}].quantity must be greater than 0"));
        }
        if item.unit_price < 0 {
            return Err(format!("items[{i}].unitPrice must not be negative"));
        }
        sum = item
            .quantity
            .checked_mul(item.unit_price)
            .and_then(|line| sum.checked_add(line))
            .filter(|s| *s <= MAX_AMOUNT)
            .ok_or_else(|| "totalAmount: the items add up to more than 2^53-1".to_owned())?;
    }
    if sum != total {
        return Err(format!(
            "totalAmount {total} does not match the items, which add up to {sum} (minor units)"
        ));
    }
    if !currency::is_known(currency_code) {
        return Err(format!(
            "currency {currency_code:?} is not a known ISO 4217 code"
        ));
    }
    Ok(())
}

fn same_order(m: &order::Model, input: &NewOrder) -> bool {
    m.customer_phone == input.customer_phone
        && m.currency == input.currency
        && m.total_amount == input.total_amount
        && items_of(m) == input.items
}

async fn enqueue_validation(state: &AppState, m: &order::Model) -> Result<()> {
    // The job id makes a repeated submit (same idempotency key) enqueue nothing new.
    state
        .queue
        .enqueue(
            QueueName::OrderProcessing,
            "process_order",
            &json!({ "orderId": m.id, "data": { "merchantId": m.merchant_id } }),
            &JobOptions {
                job_id: Some(format!("order-{}", m.id)),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// `submitOrder`: stores the order PENDING and queues its validation. The same idempotency key
/// returns the same order (and CONFLICT when the rest of the input differs).
pub async fn submit(
    state: &AppState,
    ctx: &RequestContext,
    mut input: NewOrder,
) -> Result<order::Model> {
    let merchant = ctx.actor.owning_merchant(input.merchant_id.as_deref())?;
    check_shape(&mut input)?;
    if let Some(existing) =
        find_by_key(&state.db, &merchant, input.idempotency_key.as_deref()).await?
    {
        return replay(state, existing, &input).await;
    }
    let now = crate::db::now();
    let am = order::ActiveModel {
        id: Set(Uuid::now_v7()),
        merchant_id: Set(merchant.as_str().to_owned()),
        customer_phone: Set(input.customer_phone.clone()),
        items: Set(json!(input.items)),
        currency: Set(input.currency.clone()),
        total_amount: Set(input.total_amount),
        status: Set(OrderStatus::Pending),
        reason: Set(None),
        idempotency_key: Set(input.idempotency_key.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let model = match am.insert(&state.db).await.map_err(Error::from) {
        Ok(m) => m,
        // A concurrent submit with the same key won the insert.
        Err(Error::Conflict(_)) => {
            let existing = find_by_key(&state.db, &merchant, input.idempotency_key.as_deref())
                .await?
                .ok_or_else(|| Error::Conflict("the order changed meanwhile; retry".into()))?;
            return replay(state, existing, &input).await;
        }
        Err(e) => return Err(e),
    };
    enqueue_validation(state, &model).await?;
    Ok(model)
}

async fn find_by_key(
    db: &DatabaseConnection,
    merchant: &MerchantId,
    key: Option<&str>,
) -> Result<Option<order::Model>> {
    let Some(key) = key else { return Ok(None) };
    Ok(Orders::find()
        .filter(C::MerchantId.eq(merchant.as_str()))
        .filter(C::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

async fn replay(
    state: &AppState,
    existing: order::Model,
    input: &NewOrder,
) -> Result<order::Model> {
    if !same_order(&existing, input) {
        return Err(Error::Conflict(
            "idempotencyKey was already used for a different order".into(),
        ));
    }
    if existing.status == OrderStatus::Pending {
        // The first submit may have stored the order and lost its job: enqueue again (same id).
        enqueue_validation(state, &existing).await?;
    }
    Ok(existing)
}

/// Moves `current` to `to` when nobody changed it meanwhile; `false` when someone did.
pub(crate) async fn transition<Db: ConnectionTrait>(
    db: &Db,
    current: &order::Model,
    to: OrderStatus,
    reason: Option<String>,
) -> Result<bool> {
    let mut q = Orders::update_many()
        .col_expr(C::Status, Expr::value(to.as_str()))
        .col_expr(C::UpdatedAt, Expr::value(crate::db::now()));
    if reason.is_some() {
        q = q.col_expr(C::Reason, Expr::value(reason));
    }
    let res = q
        .filter(C::Id.eq(current.id))
        .filter(C::Status.eq(current.status))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// The `order_processing` job: validates a PENDING order once. Anything else (already decided,
/// deleted) is a no-op, so a redelivered job changes nothing.
pub async fn process(state: &AppState, order_id: Uuid) -> Result<Value> {
    let txn = crate::db::begin_write(&state.db).await?;
    let Some(order) = Orders::find_by_id(order_id).one(&txn).await? else {
        return Ok(json!({ "skipped": "order not found" }));
    };
    if order.status != OrderStatus::Pending {
        return Ok(json!({ "skipped": format!("order is {}", status_name(order.status)) }));
    }
    let merchant = MerchantId::parse("merchantId", &order.merchant_id)?;
    let verdict = validate(&items_of(&order), &order.currency, order.total_amount);
    let to = match verdict {
        Ok(()) => OrderStatus::Confirmed,
        Err(_) => OrderStatus::Rejected,
    };
    // The transition before the event: on PostgreSQL recording an event takes the event lock
    // until the commit (migration 000011), and nothing after it should wait on a row lock.
    if !transition(&txn, &order, to, verdict.clone().err()).await? {
        // Changed by someone else meanwhile (cancelled): their change stands.
        return Ok(json!({ "skipped": "order changed meanwhile" }));
    }
    let event = match &verdict {
        Ok(()) => {
            events::service::record(
                &txn,
                EventType::OrderCreated,
                &merchant,
                json!({
                    "orderId": order.id.to_string(),
                    "customerPhone": order.customer_phone,
                    "totalAmount": order.total_amount,
                    "currency": order.currency,
                }),
            )
            .await?
        }
        Err(reason) => {
            events::service::record(
                &txn,
                EventType::OrderStatusChanged,
                &merchant,
                json!({
                    "orderId": order.id.to_string(),
                    "oldStatus": status_name(OrderStatus::Pending),
                    "newStatus": status_name(OrderStatus::Rejected),
                    "reason": reason,
                }),
            )
            .await?
        }
    };
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(match verdict {
        Ok(()) => json!({ "status": "CONFIRMED" }),
        Err(reason) => json!({ "status": "REJECTED", "reason": reason }),
    })
}

/// The transitions `updateOrderStatus` may make. PENDING is decided by validation only;
/// DELIVERED also comes from a completed delivery.
pub fn allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    matches!(
        (from, to),
        (Pending, Cancelled)
            | (Confirmed, Preparing | Cancelled)
            | (Preparing, Ready | Cancelled)
            | (Ready, Delivered | Cancelled)
    )
}

/// `updateOrderStatus`: one step of the state machine, with `order_status_changed`.
pub async fn update_status(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    to: OrderStatus,
) -> Result<order::Model> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(&state.db).await?;
    let current = find_scoped(&txn, &ctx.actor, id).await?;
    if !allowed(current.status, to) {
        return Err(Error::validation(
            "status",
            format!(
                "an order cannot move from {} to {}",
                status_name(current.status),
                status_name(to)
            ),
        ));
    }
    if !transition(&txn, &current, to, None).await? {
        return Err(Error::Conflict(
            "the order changed meanwhile; reload it and retry".into(),
        ));
    }
    let merchant = MerchantId::parse("merchantId", &current.merchant_id)?;
    // The order's open delivery task is closed with it, in the same transaction: cancelled
    // with a cancelled order; with one marked DELIVERED by hand, completed if it was on its way,
    // else cancelled.
    let mut after = json!({ "status": status_name(to) });
    let mut completed = None;
    match to {
        OrderStatus::Cancelled => {
            if let Some(task) = crate::deliveries::cancel_open_for_order(&txn, current.id).await? {
                after["cancelledDeliveryTask"] = json!(task.to_string());
            }
        }
        OrderStatus::Delivered => {
            use crate::deliveries::HandedOver;
            match crate::deliveries::close_open_for_delivered_order(&txn, current.id).await? {
                Some(HandedOver::Completed(task)) => {
                    after["completedDeliveryTask"] = json!(task.id.to_string());
                    completed = Some(task);
                }
                Some(HandedOver::Cancelled(task)) => {
                    after["cancelledDeliveryTask"] = json!(task.id.to_string());
                }
                None => {}
            }
        }
        _ => {}
    }
    // After the row writes (see `process`), in the order a driver's delivery records them.
    let mut events = Vec::with_capacity(2);
    if let Some(task) = &completed {
        events.push(crate::deliveries::record_completed(&txn, &merchant, task).await?);
    }
    events.push(record_status_change(&txn, &merchant, &current, to).await?);
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "order.set_status",
            target_type: "order",
            target_id: current.id.to_string(),
            merchant_id: Some(current.merchant_id.clone()),
            before: Some(json!({ "status": status_name(current.status) })),
            after: Some(after),
        },
    )
    .await?;
    let model = Orders::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("order"))?;
    txn.commit().await?;
    for event in events {
        state.events.publish(event).await;
    }
    Ok(model)
}

pub(crate) async fn record_status_change<Db: ConnectionTrait>(
    db: &Db,
    merchant: &MerchantId,
    current: &order::Model,
    to: OrderStatus,
) -> Result<events::Event> {
    events::service::record(
        db,
        EventType::OrderStatusChanged,
        merchant,
        json!({
            "orderId": current.id.to_string(),
            "oldStatus": status_name(current.status),
            "newStatus": status_name(to),
        }),
    )
    .await
}

/// `order(id)`.
pub async fn get(db: &DatabaseConnection, ctx: &RequestContext, id: Uuid) -> Result<order::Model> {
    scope::one_visible::<Orders, _>(db, &ctx.actor, Condition::all().add(C::Id.eq(id))).await
}

/// Takes an order's row lock, whoever may see it, and nothing else: a transaction that changes
/// a delivery task and then its order takes the order's lock first, as one that changes an order
/// and then its task does, so the two cannot deadlock. The scoped reads come after.
pub(crate) async fn lock<Db: ConnectionTrait>(db: &Db, id: Uuid) -> Result<()> {
    Orders::find_by_id(id).lock_exclusive().one(db).await?;
    Ok(())
}

/// `orders(merchantId, status, first, after)`: newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
    status: Option<OrderStatus>,
    page: &PageArgs,
) -> Result<Page<order::Model>> {
    let pager = page.newest_first(CURSOR_KIND)?;
    let scope = ctx.actor.merchant_scope(merchant_id)?;
    let mut cond = Orders::scope_condition(&scope);
    if let Some(s) = status {
        cond = cond.add(C::Status.eq(s));
    }
    pager.fetch(db, Orders::find().filter(cond), C::Id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: i64, p: i64) -> OrderItem {
        OrderItem {
            product_id: "p".into(),
            name: "n".into(),
            quantity: q,
            unit_price: p,
        }
    }

    #[test]
    fn validation_catches_each_rule() {
        assert!(validate(&[item(2, 250), item(1, 99)], "USD", 599).is_ok());
        assert!(
            validate(&[], "USD", 0)
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            validate(&[item(0, 5)], "USD", 0)
                .unwrap_err()
                .contains("quantity")
        );
        assert!(
            validate(&[item(1, 5)], "USD", 6)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(
            validate(&[item(1, 5)], "XYZ", 5)
                .unwrap_err()
                .contains("ISO 4217")
        );
        assert!(
            validate(&[item(MAX_QUANTITY, MAX_AMOUNT)], "USD", 0)
                .unwrap_err()
                .contains("2^53")
        );
    }

    #[test]
    fn the_state_machine_refuses_skips_and_exits() {
        use OrderStatus::*;
        assert!(allowed(Confirmed, Preparing) && allowed(Ready, Delivered));
        assert!(!allowed(Pending, Confirmed), "validation decides PENDING");
        assert!(!allowed(Confirmed, Ready) && !allowed(Delivered, Cancelled));
        assert!(!allowed(Rejected, Confirmed) && !allowed(Cancelled, Preparing));
    }
}
