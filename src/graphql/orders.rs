//! Orders, payments and deliveries over GraphQL: thin adapters over `orders` and `deliveries`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};

use super::{audit::CountFields, connection, parse_id, req};
use crate::{
    deliveries::{self, Location},
    orders::{
        self as orders_mod,
        payments::{self, NewPayment},
        service::{self as orders},
    },
    pagination::PageArgs,
};
use entity::{DeliveryStatus, OrderStatus, delivery_task, order, payment};

pub struct Order(pub order::Model);

/// One line of an order, in minor units.
#[derive(SimpleObject)]
pub struct OrderItem {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: i64,
}

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn merchant_id(&self) -> &str {
        &self.0.merchant_id
    }
    /// E.164 digits.
    async fn customer_phone(&self) -> &str {
        &self.0.customer_phone
    }
    async fn items(&self) -> Vec<OrderItem> {
        orders::items_of(&self.0)
            .into_iter()
            .map(|i| OrderItem {
                product_id: i.product_id,
                name: i.name,
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect()
    }
    /// ISO 4217.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// In minor units (cents).
    async fn total_amount(&self) -> i64 {
        self.0.total_amount
    }
    async fn status(&self) -> OrderStatus {
        self.0.status
    }
    /// Why validation rejected the order.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
    async fn payments(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Payment>> {
        let (state, _) = req(ctx);
        Ok(payments::of_order(&state.db, self.0.id)
            .await?
            .into_iter()
            .map(Payment)
            .collect())
    }
}

pub struct Payment(pub payment::Model);

#[Object]
impl Payment {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn order_id(&self) -> ID {
        ID(self.0.order_id.to_string())
    }
    async fn merchant_id(&self) -> &str {
        &self.0.merchant_id
    }
    /// In minor units.
    async fn amount(&self) -> i64 {
        self.0.amount
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn reference(&self) -> &str {
        &self.0.reference
    }
    async fn method(&self) -> Option<&str> {
        self.0.method.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

/// A pickup or dropoff point.
#[derive(SimpleObject, InputObject, Clone)]
#[graphql(input_name = "LocationInput", name = "Location")]
pub struct LocationGql {
    pub address: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub contact_phone: Option<String>,
    pub notes: Option<String>,
}

impl From<LocationGql> for Location {
    fn from(l: LocationGql) -> Self {
        Location {
            address: l.address,
            latitude: l.latitude,
            longitude: l.longitude,
            contact_phone: l.contact_phone,
            notes: l.notes,
        }
    }
}

impl From<Location> for LocationGql {
    fn from(l: Location) -> Self {
        LocationGql {
            address: l.address,
            latitude: l.latitude,
            longitude: l.longitude,
            contact_phone: l.contact_phone,
            notes: l.notes,
        }
    }
}

pub struct DeliveryTask(pub delivery_task::Model);

#[Object]
impl DeliveryTask {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn merchant_id(&self) -> &str {
        &self.0.merchant_id
    }
    async fn order_id(&self) -> ID {
        ID(self.0.order_id.clone())
    }
    async fn status(&self) -> DeliveryStatus {
        self.0.status
    }
    async fn driver(&self) -> Option<&str> {
        self.0.driver_id.as_deref()
    }
    async fn pickup(&self) -> Option<LocationGql> {
        deliveries::location(&self.0.pickup).map(Into::into)
    }
    async fn dropoff(&self) -> Option<LocationGql> {
        deliveries::location(&self.0.dropoff).map(Into::into)
    }
    async fn started_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.started_at
    }
    async fn completed_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.completed_at
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

#[derive(InputObject)]
pub struct OrderItemInput {
    pub product_id: String,
    pub name: String,
    pub quantity: i32,
    /// In minor units (cents).
    pub unit_price: i64,
}

#[derive(InputObject)]
pub struct SubmitOrderInput {
    /// Admin and service callers name the merchant; a merchant's orders are its own.
    pub merchant_id: Option<String>,
    /// E.164, e.g. `+263781564004`.
    pub customer_phone: String,
    pub items: Vec<OrderItemInput>,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    /// In minor units; must equal the sum of quantity × unitPrice.
    pub total_amount: i64,
    /// The same key returns the same order.
    pub idempotency_key: Option<String>,
}

impl From<SubmitOrderInput> for orders_mod::NewOrder {
    fn from(i: SubmitOrderInput) -> Self {
        orders_mod::NewOrder {
            merchant_id: i.merchant_id,
            customer_phone: i.customer_phone,
            items: i
                .items
                .into_iter()
                .map(|it| orders_mod::OrderItem {
                    product_id: it.product_id,
                    name: it.name,
                    quantity: i64::from(it.quantity),
                    unit_price: it.unit_price,
                })
                .collect(),
            currency: i.currency,
            total_amount: i.total_amount,
            idempotency_key: i.idempotency_key,
        }
    }
}

#[derive(Default)]
pub struct OrderQuery;

#[Object]
impl OrderQuery {
    /// Orders the caller may see, newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        status: Option<OrderStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Order, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page = orders::list(&state.db, rc, merchant_id.as_deref(), status, &page_args).await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            orders::cursor,
            Order,
        ))
    }

    async fn order(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Order> {
        let (state, rc) = req(ctx);
        Ok(Order(
            orders::get(&state.db, rc, parse_id(&id, "id")?).await?,
        ))
    }

    /// Delivery tasks the caller may see, newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn delivery_tasks(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        status: Option<DeliveryStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, DeliveryTask, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page =
            deliveries::list(&state.db, rc, merchant_id.as_deref(), status, &page_args).await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            deliveries::cursor,
            DeliveryTask,
        ))
    }

    async fn delivery_task(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<DeliveryTask> {
        let (state, rc) = req(ctx);
        Ok(DeliveryTask(
            deliveries::get(&state.db, rc, parse_id(&id, "id")?).await?,
        ))
    }
}

#[derive(Default)]
pub struct OrderMutation;

#[Object]
impl OrderMutation {
    /// Records the order PENDING and queues its validation (CONFIRMED or REJECTED follows).
    async fn submit_order(
        &self,
        ctx: &Context<'_>,
        input: SubmitOrderInput,
    ) -> async_graphql::Result<Order> {
        let (state, rc) = req(ctx);
        Ok(Order(orders::submit(state, rc, input.into()).await?))
    }

    /// One step of PENDING → CONFIRMED → PREPARING → READY → DELIVERED, or CANCELLED.
    async fn update_order_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
        status: OrderStatus,
    ) -> async_graphql::Result<Order> {
        let (state, rc) = req(ctx);
        Ok(Order(
            orders::update_status(state, rc, parse_id(&id, "id")?, status).await?,
        ))
    }

    /// Idempotent on `reference`; the amount and currency must match the order.
    async fn record_payment(
        &self,
        ctx: &Context<'_>,
        order_id: ID,
        amount: i64,
        currency: String,
        reference: String,
        method: Option<String>,
    ) -> async_graphql::Result<Payment> {
        let (state, rc) = req(ctx);
        let input = NewPayment {
            order_id: parse_id(&order_id, "orderId")?,
            amount,
            currency,
            reference,
            method,
        };
        Ok(Payment(payments::record(state, rc, input).await?))
    }

    async fn create_delivery_task(
        &self,
        ctx: &Context<'_>,
        order_id: ID,
        pickup: LocationGql,
        dropoff: LocationGql,
    ) -> async_graphql::Result<DeliveryTask> {
        let (state, rc) = req(ctx);
        Ok(DeliveryTask(
            deliveries::create(
                state,
                rc,
                parse_id(&order_id, "orderId")?,
                pickup.into(),
                dropoff.into(),
            )
            .await?,
        ))
    }

    async fn assign_driver(
        &self,
        ctx: &Context<'_>,
        id: ID,
        driver: String,
    ) -> async_graphql::Result<DeliveryTask> {
        let (state, rc) = req(ctx);
        Ok(DeliveryTask(
            deliveries::assign_driver(state, rc, parse_id(&id, "id")?, &driver).await?,
        ))
    }

    /// PICKED_UP emits `delivery_started`; DELIVERED emits `delivery_completed` and delivers the order.
    async fn update_delivery_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
        status: DeliveryStatus,
    ) -> async_graphql::Result<DeliveryTask> {
        let (state, rc) = req(ctx);
        Ok(DeliveryTask(
            deliveries::update_status(state, rc, parse_id(&id, "id")?, status).await?,
        ))
    }
}
