//! Deliveries: one task per order at a time, moving pending -> assigned -> picked_up ->
//! in_transit -> delivered, or failed / cancelled from any open state.
//!
//! * `picked_up` emits `delivery_started`; the order must be READY (a driver collects a ready order).
//! * `delivered` emits `delivery_completed` and moves the order READY -> DELIVERED with its
//!   `order_status_changed`, all in one transaction: the three are true together or not at all.
//!
//! Status changes are conditional UPDATEs on the expected old status, so two racing drivers'
//! apps cannot both move the same task.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        Actor, MerchantId, RequestContext,
        scope::{self, Scoped as _},
    },
    error::{Error, Result},
    events::{self, Event, EventType},
    orders::service as orders,
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::{
    DeliveryStatus, OrderStatus,
    delivery_task::{self, Column as C, Entity as Tasks},
};

const CURSOR_KIND: &str = "dlv";

/// A pickup or dropoff point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Location {
    fn check(mut self, field: &str) -> Result<Self> {
        self.address = self.address.trim().to_owned();
        if self.address.is_empty() || self.address.chars().count() > 500 {
            return Err(Error::validation(
                format!("{field}.address"),
                "address must have 1 to 500 characters",
            ));
        }
        if self.latitude.is_some_and(|l| !(-90.0..=90.0).contains(&l)) {
            return Err(Error::validation(
                format!("{field}.latitude"),
                "latitude must be between -90 and 90",
            ));
        }
        if self
            .longitude
            .is_some_and(|l| !(-180.0..=180.0).contains(&l))
        {
            return Err(Error::validation(
                format!("{field}.longitude"),
                "longitude must be between -180 and 180",
            ));
        }
        if let Some(p) = &self.contact_phone {
            self.contact_phone = Some(crate::whatsapp::parse_phone(
                &format!("{field}.contactPhone"),
                p,
            )?);
        }
        if self.notes.as_ref().is_some_and(|n| n.chars().count() > 500) {
            return Err(Error::validation(
                format!("{field}.notes"),
                "notes must be at most 500 characters",
            ));
        }
        Ok(self)
    }
}

pub fn location(v: &Option<serde_json::Value>) -> Option<Location> {
    v.as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

pub fn cursor(m: &delivery_task::Model) -> String {
    encode_cursor(CURSOR_KIND, &m.id.to_string())
}

/// The GraphQL name of a status (`PICKED_UP`).
pub fn status_name(s: DeliveryStatus) -> String {
    s.as_str().to_ascii_uppercase()
}

/// The states a task ends in; every other state is open.
const CLOSED: [DeliveryStatus; 3] = [
    DeliveryStatus::Delivered,
    DeliveryStatus::Failed,
    DeliveryStatus::Cancelled,
];

fn is_open(s: DeliveryStatus) -> bool {
    !CLOSED.contains(&s)
}

/// Cancels the order's open delivery task, if it has one, inside the caller's transaction: an
/// order that is cancelled has nothing left to deliver, and a task left open would be stranded
/// (it could never be delivered, and it would block a new one). Returns the task's id.
pub(crate) async fn cancel_open_for_order<Db: ConnectionTrait>(
    db: &Db,
    order_id: Uuid,
) -> Result<Option<Uuid>> {
    let open = Tasks::find()
        .filter(C::OrderId.eq(order_id.to_string()))
        .filter(C::Status.is_not_in(CLOSED))
        .one(db)
        .await?;
    match open {
        Some(task) => Ok(Some(
            move_task(db, &task, DeliveryStatus::Cancelled, None)
                .await?
                .id,
        )),
        None => Ok(None),
    }
}

/// What became of an order's open delivery task when the order was marked DELIVERED by hand.
pub(crate) enum HandedOver {
    /// It was on its way (PICKED_UP or IN_TRANSIT): completed, and its `delivery_completed` is
    /// the caller's to record (after its row writes).
    Completed(delivery_task::Model),
    /// It was not picked up yet (PENDING or ASSIGNED): cancelled, the customer had the order
    /// some other way (collected it, say).
    Cancelled(delivery_task::Model),
}

/// Closes the open delivery task of an order marked DELIVERED by hand, inside the caller's
/// transaction: left open it would be stranded (it could never be delivered, as its order is no
/// longer READY, and `delivery_completed` never sent).
pub(crate) async fn close_open_for_delivered_order<Db: ConnectionTrait>(
    db: &Db,
    order_id: Uuid,
) -> Result<Option<HandedOver>> {
    let Some(task) = Tasks::find()
        .filter(C::OrderId.eq(order_id.to_string()))
        .filter(C::Status.is_not_in(CLOSED))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(
        if matches!(
            task.status,
            DeliveryStatus::PickedUp | DeliveryStatus::InTransit
        ) {
            HandedOver::Completed(move_task(db, &task, DeliveryStatus::Delivered, None).await?)
        } else {
            HandedOver::Cancelled(move_task(db, &task, DeliveryStatus::Cancelled, None).await?)
        },
    ))
}

/// The `delivery_completed` event of `task`.
pub(crate) async fn record_completed<Db: ConnectionTrait>(
    db: &Db,
    merchant: &MerchantId,
    task: &delivery_task::Model,
) -> Result<Event> {
    events::service::record(
        db,
        EventType::DeliveryCompleted,
        merchant,
        json!({ "deliveryId": task.id.to_string(), "orderId": task.order_id }),
    )
    .await
}

/// The transitions `updateDeliveryStatus` may make (ASSIGNED comes from `assignDriver`).
pub fn allowed(from: DeliveryStatus, to: DeliveryStatus) -> bool {
    use DeliveryStatus::*;
    match to {
        Failed | Cancelled => is_open(from),
        PickedUp => from == Assigned,
        InTransit => from == PickedUp,
        Delivered => from == InTransit,
        Pending | Assigned => false,
    }
}

/// The one way to load a task for `actor`: another merchant's task is NOT_FOUND.
async fn find_scoped<Db: ConnectionTrait>(
    db: &Db,
    actor: &Actor,
    id: Uuid,
) -> Result<delivery_task::Model> {
    scope::one_writable::<Tasks, _>(db, actor, Condition::all().add(C::Id.eq(id))).await
}

/// `createDeliveryTask(orderId, pickup, dropoff)`: for a confirmed, preparing or ready order
/// without an open task.
pub async fn create(
    state: &AppState,
    ctx: &RequestContext,
    order_id: Uuid,
    pickup: Location,
    dropoff: Location,
) -> Result<delivery_task::Model> {
    ctx.actor.require_authenticated()?;
    let pickup = pickup.check("pickup")?;
    let dropoff = dropoff.check("dropoff")?;
    let txn = crate::db::begin_write(&state.db).await?;
    let order = orders::find_scoped(&txn, &ctx.actor, order_id).await?;
    if !matches!(
        order.status,
        OrderStatus::Confirmed | OrderStatus::Preparing | OrderStatus::Ready
    ) {
        return Err(Error::validation(
            "orderId",
            format!(
                "the order is {}; deliveries are for confirmed, preparing or ready orders",
                orders::status_name(order.status)
            ),
        ));
    }
    let open = Tasks::find()
        .filter(C::OrderId.eq(order.id.to_string()))
        .filter(C::Status.is_not_in(CLOSED))
        .count(&txn)
        .await?;
    if open > 0 {
        return Err(Error::Conflict(
            "the order already has an open delivery task".into(),
        ));
    }
    let now = crate::db::now();
    let model = delivery_task::ActiveModel {
        id: Set(Uuid::now_v7()),
        merchant_id: Set(order.merchant_id.clone()),
        order_id: Set(order.id.to_string()),
        status: Set(DeliveryStatus::Pending),
        driver_id: Set(None),
        address: Set(Some(json!(dropoff))),
        pickup: Set(Some(json!(pickup))),
        dropoff: Set(Some(json!(dropoff))),
        notes: Set(None),
        attempts: Set(0),
        started_at: Set(None),
        completed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(model)
}

/// Moves `current` to `to` when nobody changed it meanwhile.
async fn move_task<Db: ConnectionTrait>(
    db: &Db,
    current: &delivery_task::Model,
    to: DeliveryStatus,
    driver: Option<&str>,
) -> Result<delivery_task::Model> {
    let now = crate::db::now();
    let mut q = Tasks::update_many()
        .col_expr(C::Status, Expr::value(to.as_str()))
        .col_expr(C::UpdatedAt, Expr::value(now));
    if let Some(d) = driver {
        q = q.col_expr(C::DriverId, Expr::value(d));
    }
    match to {
        DeliveryStatus::PickedUp => q = q.col_expr(C::StartedAt, Expr::value(now)),
        DeliveryStatus::Delivered => q = q.col_expr(C::CompletedAt, Expr::value(now)),
        DeliveryStatus::Failed => q = q.col_expr(C::Attempts, Expr::col(C::Attempts).add(1)),
        _ => {}
    }
    let res = q
        .filter(C::Id.eq(current.id))
        .filter(C::Status.eq(current.status))
        .exec(db)
        .await?;
    if res.rows_affected != 1 {
        return Err(Error::Conflict(
            "the delivery task changed meanwhile; reload it and retry".into(),
        ));
    }
    Tasks::find_by_id(current.id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("delivery task"))
}

/// `assignDriver(id, driver)`: pending -> assigned, or a new driver for an assigned task.
pub async fn assign_driver(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    driver: &str,
) -> Result<delivery_task::Model> {
    ctx.actor.require_authenticated()?;
    let driver = driver.trim();
    if driver.is_empty() || driver.chars().count() > 128 || driver.chars().any(char::is_control) {
        return Err(Error::validation(
            "driver",
            "driver must be 1 to 128 printable characters",
        ));
    }
    let txn = crate::db::begin_write(&state.db).await?;
    let current = find_scoped(&txn, &ctx.actor, id).await?;
    if !matches!(
        current.status,
        DeliveryStatus::Pending | DeliveryStatus::Assigned
    ) {
        return Err(Error::validation(
            "status",
            format!(
                "a driver is assigned to PENDING or ASSIGNED tasks; this one is {}",
                status_name(current.status)
            ),
        ));
    }
    let model = move_task(&txn, &current, DeliveryStatus::Assigned, Some(driver)).await?;
    txn.commit().await?;
    Ok(model)
}

/// `updateDeliveryStatus(id, status)`; see the module docs for the events.
pub async fn update_status(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    to: DeliveryStatus,
) -> Result<delivery_task::Model> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(&state.db).await?;
    // The order's lock before the task's (see `orders::lock`); the task is read after it, so a
    // change that committed meanwhile (its order cancelled) is what this decides on.
    if let Some(task) = Tasks::find_by_id(id).one(&txn).await?
        && let Ok(order_id) = Uuid::parse_str(&task.order_id)
    {
        orders::lock(&txn, order_id).await?;
    }
    let current = find_scoped(&txn, &ctx.actor, id).await?;
    if !allowed(current.status, to) {
        let hint = if to == DeliveryStatus::Assigned {
            " (use assignDriver)"
        } else {
            ""
        };
        return Err(Error::validation(
            "status",
            format!(
                "a delivery cannot move from {} to {}{hint}",
                status_name(current.status),
                status_name(to)
            ),
        ));
    }
    let merchant = MerchantId::parse("merchantId", &current.merchant_id)?;
    let order_id = Uuid::parse_str(&current.order_id)
        .map_err(|_| Error::internal("delivery task with a malformed order id"))?;
    let mut out: Vec<Event> = Vec::new();
    if matches!(to, DeliveryStatus::PickedUp | DeliveryStatus::Delivered) {
        let order = orders::find_scoped(&txn, &ctx.actor, order_id).await?;
        if order.status != OrderStatus::Ready {
            return Err(Error::validation(
                "status",
                format!(
                    "the order is {}; it must be READY to be {}",
                    orders::status_name(order.status),
                    if to == DeliveryStatus::PickedUp {
                        "picked up"
                    } else {
                        "delivered"
                    }
                ),
            ));
        }
        if to == DeliveryStatus::Delivered {
            if !orders::transition(&txn, &order, OrderStatus::Delivered, None).await? {
                return Err(Error::Conflict(
                    "the order changed meanwhile; reload it and retry".into(),
                ));
            }
            out.push(record_completed(&txn, &merchant, &current).await?);
            out.push(
                orders::record_status_change(&txn, &merchant, &order, OrderStatus::Delivered)
                    .await?,
            );
        } else {
            out.push(
                events::service::record(
                    &txn,
                    EventType::DeliveryStarted,
                    &merchant,
                    json!({
                        "deliveryId": current.id.to_string(),
                        "orderId": current.order_id,
                        "driver": current.driver_id,
                    }),
                )
                .await?,
            );
        }
    }
    let model = move_task(&txn, &current, to, None).await?;
    txn.commit().await?;
    for e in out {
        state.events.publish(e).await;
    }
    Ok(model)
}

/// `deliveryTask(id)`.
pub async fn get(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<delivery_task::Model> {
    scope::one_visible::<Tasks, _>(db, &ctx.actor, Condition::all().add(C::Id.eq(id))).await
}

/// `deliveryTasks(merchantId, status, first, after)`: newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
    status: Option<DeliveryStatus>,
    page: &PageArgs,
) -> Result<Page<delivery_task::Model>> {
    let pager = page.newest_first(CURSOR_KIND)?;
    let scope = ctx.actor.merchant_scope(merchant_id)?;
    let mut cond = Tasks::scope_condition(&scope);
    if let Some(s) = status {
        cond = cond.add(C::Status.eq(s));
    }
    pager.fetch(db, Tasks::find().filter(cond), C::Id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_refuses_skips() {
        use DeliveryStatus::*;
        assert!(allowed(Assigned, PickedUp) && allowed(PickedUp, InTransit));
        assert!(allowed(InTransit, Delivered) && allowed(Pending, Cancelled));
        assert!(!allowed(Pending, PickedUp) && !allowed(Assigned, Delivered));
        assert!(!allowed(Delivered, Failed) && !allowed(Cancelled, Assigned));
        assert!(!allowed(Pending, Assigned), "assignDriver assigns");
    }
}
