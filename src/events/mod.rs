//! The ten event types, their typed payloads, and the envelope every consumer sees.
//!
//! * [`EventType`]: the GraphQL enum (`ORDER_CREATED`, …); storage, REST and webhooks use the seed's
//!   lowercase names (`order_created`, …).
//! * Each type has a payload struct. [`validate_payload`] parses a JSON payload into it and names
//!   the field that is wrong, so a bad shape is VALIDATION at emit time, never a surprise for a
//!   subscriber. Unknown extra fields are kept: producers may say more than the minimum.
//! * [`service`] emits (history first, then the bus), replays and pages the history; [`bus`] fans
//!   events out to subscribers on every instance.

pub mod bus;
pub mod service;

use async_graphql::{
    Enum, OutputType, SimpleObject, Union,
    registry::{MetaType, Registry},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, FieldError, Result};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    MessageReceived,
    MessageSent,
    OrderCreated,
    OrderStatusChanged,
    ProductUpdated,
    PaymentReceived,
    DeliveryStarted,
    DeliveryCompleted,
    BotConnected,
    BotDisconnected,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::MessageReceived,
        EventType::MessageSent,
        EventType::OrderCreated,
        EventType::OrderStatusChanged,
        EventType::ProductUpdated,
        EventType::PaymentReceived,
        EventType::DeliveryStarted,
        EventType::DeliveryCompleted,
        EventType::BotConnected,
        EventType::BotDisconnected,
    ];

    /// The seed's name, used in storage, REST and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageReceived => "message_received",
            EventType::MessageSent => "message_sent",
            EventType::OrderCreated => "order_created",
            EventType::OrderStatusChanged => "order_status_changed",
            EventType::ProductUpdated => "product_updated",
            EventType::PaymentReceived => "payment_received",
            EventType::DeliveryStarted => "delivery_started",
            EventType::DeliveryCompleted => "delivery_completed",
            EventType::BotConnected => "bot_connected",
            EventType::BotDisconnected => "bot_disconnected",
        }
    }
}

impl EventType {
    /// Reads a type name given as the input field `field`, which an error names.
    /// `order_created` (the seed's name) and `ORDER_CREATED` (the GraphQL enum) both work.
    pub fn parse_field(s: &str, field: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == lower)
            .ok_or_else(|| {
                Error::validation(
                    field,
                    format!(
                        "unknown event type {s:?}; expected one of: {}",
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ),
                )
            })
    }
}

impl std::str::FromStr for EventType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_field(s, "type")
    }
}

/// One event as every consumer sees it. JSON (REST, webhooks) uses the seed's snake_case names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// UUIDv7: time-ordered, and the resume point for `events(after:)`.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub merchant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
    /// The position in commit order (`events.seq`, numbered without gaps): live subscribers get
    /// events in this order, and a resume replays what follows its `after` event in it. 0 for an
    /// event that is not stored (a webhook endpoint's test ping).
    #[serde(skip)]
    pub seq: i64,
}

/// The largest payload accepted, as JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// The largest amount in minor units: what JavaScript clients read exactly (2^53 - 1).
pub const MAX_AMOUNT: i64 = 9_007_199_254_740_991;

/// `message_received`: a customer wrote to the bot.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceivedData {
    pub message_id: String,
    /// The customer's phone (E.164 digits, `+` optional).
    pub from: String,
    /// `text`, `button`, `list_reply`, `image`, … (the Cloud API's message type).
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// `message_sent`: the Cloud API accepted an outbound message.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct MessageSentData {
    pub message_id: String,
    /// The recipient's phone.
    pub to: String,
    #[serde(default)]
    pub template_id: Option<String>,
    /// The provider's id (`wamid…`).
    #[serde(default)]
    pub provider_message_id: Option<String>,
}

/// `order_created`: an order was confirmed.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreatedData {
    pub order_id: String,
    pub customer_phone: String,
    /// In minor units (cents): never a float.
    pub total_amount: i64,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
}

/// `order_status_changed`: an order moved from `oldStatus` to `newStatus`.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusChangedData {
    pub order_id: String,
    pub old_status: String,
    pub new_status: String,
    /// Why, when the change says so: a REJECTED order's failed business rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `product_updated`: a product or its media changed.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ProductUpdatedData {
    pub product_id: String,
    /// What changed, e.g. `media_attached`, `media_reordered`, `details`.
    #[serde(default)]
    pub change: Option<String>,
}

/// `payment_received`: money arrived for an order.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReceivedData {
    pub order_id: String,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
    pub reference: String,
    #[serde(default)]
    pub method: Option<String>,
}

/// `delivery_started`: the driver picked the order up.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStartedData {
    pub delivery_id: String,
    pub order_id: String,
    #[serde(default)]
    pub driver: Option<String>,
}

/// `delivery_completed`: the order was delivered.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryCompletedData {
    pub delivery_id: String,
    pub order_id: String,
}

/// `bot_connected`: the merchant's bot is online.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct BotConnectedData {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `bot_disconnected`: the merchant's bot went offline.
#[derive(Debug, Clone, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct BotDisconnectedData {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The typed payload: one object type per event type, so generated clients get real types.
#[derive(Debug, Clone, Union)]
pub enum EventData {
    MessageReceived(MessageReceivedData),
    MessageSent(MessageSentData),
    OrderCreated(OrderCreatedData),
    OrderStatusChanged(OrderStatusChangedData),
    ProductUpdated(ProductUpdatedData),
    PaymentReceived(PaymentReceivedData),
    DeliveryStarted(DeliveryStartedData),
    DeliveryCompleted(DeliveryCompletedData),
    BotConnected(BotConnectedData),
    BotDisconnected(BotDisconnectedData),
}

impl EventData {
    /// Types a payload by its event type, naming the field of a wrong shape. Stored events were
    /// validated when emitted ([`validate_payload`]); this is the typing step alone.
    pub fn parse(kind: EventType, payload: &Value) -> Result<Self> {
        Ok(match kind {
            EventType::MessageReceived => Self::MessageReceived(parse(payload)?),
            EventType::MessageSent => Self::MessageSent(parse(payload)?),
            EventType::OrderCreated => Self::OrderCreated(parse(payload)?),
            EventType::OrderStatusChanged => Self::OrderStatusChanged(parse(payload)?),
            EventType::ProductUpdated => Self::ProductUpdated(parse(payload)?),
            EventType::PaymentReceived => Self::PaymentReceived(parse(payload)?),
            EventType::DeliveryStarted => Self::DeliveryStarted(parse(payload)?),
            EventType::DeliveryCompleted => Self::DeliveryCompleted(parse(payload)?),
            EventType::BotConnected => Self::BotConnected(parse(payload)?),
            EventType::BotDisconnected => Self::BotDisconnected(parse(payload)?),
        })
    }
}

/// Parses `payload` as `T`, naming the wrong field (`payload.orderId`). Every required field that
/// is missing (or null) is named at once; serde alone stops at the first.
fn parse<T: DeserializeOwned + OutputType>(payload: &Value) -> Result<T> {
    crate::input::deserialize(payload).map_err(|e| {
        let missing: Vec<FieldError> = match payload {
            Value::Object(fields) => required_fields::<T>()
                .into_iter()
                .filter(|f| fields.get(f).is_none_or(Value::is_null))
                .map(|f| FieldError {
                    message: format!("missing field `{f}`"),
                    field: format!("payload.{f}"),
                })
                .collect(),
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            return Error::violations(missing);
        }
        // serde names Rust's types ("expected i64"); a client sent JSON.
        let inner = crate::input::json_error_message(&e.inner().to_string());
        let field = match e.path().to_string().as_str() {
            "." => "payload".to_owned(),
            p => format!("payload.{p}"),
        };
        Error::validation(field, inner)
    })
}

/// The fields a payload type requires: its non-null GraphQL fields, which are its fields without
/// `Option` (`every_required_field_is_named_at_once` holds serde and the schema together).
fn required_fields<T: OutputType>() -> Vec<String> {
    let mut registry = Registry::default();
    T::create_type_info(&mut registry);
    match registry.types.get(T::type_name().as_ref()) {
        Some(MetaType::Object { fields, .. }) => fields
            .values()
            .filter(|f| f.ty.ends_with('!'))
            .map(|f| f.name.clone())
            .collect(),
        _ => Vec::new(),
    }
}

struct Checks(Vec<FieldError>);

impl Checks {
    fn id(&mut self, field: &str, v: &str) {
        if v.trim().is_empty() || v.chars().count() > 128 {
            self.bad(field, "must have 1 to 128 characters");
        } else if v.chars().any(char::is_control) {
            self.bad(field, "must not contain control characters");
        }
    }
    /// Free text: line breaks and tabs are text, other control characters (NUL among them,
    /// which PostgreSQL cannot store) are not.
    fn text(&mut self, field: &str, v: Option<&str>, max: usize) {
        let Some(v) = v else { return };
        if v.chars().count() > max {
            self.bad(field, &format!("must be at most {max} characters"));
        } else if v.chars().any(crate::input::is_forbidden_in_text) {
            self.bad(field, "must not contain control characters");
        }
    }
    fn phone(&mut self, field: &str, v: &str) {
        if crate::whatsapp::parse_phone(field, v).is_err() {
            self.bad(
                field,
                "must be a phone number in E.164 form (7 to 15 digits)",
            );
        }
    }
    /// An order status as the orders domain names it (`PENDING`, `READY`, …).
    fn order_status(&mut self, field: &str, v: &str) {
        let known = v.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && v.to_ascii_lowercase()
                .parse::<entity::OrderStatus>()
                .is_ok();
        if !known {
            self.bad(
                field,
                "must be an order status: PENDING, CONFIRMED, REJECTED, PREPARING, READY, DELIVERED or CANCELLED",
            );
        }
    }
    fn amount(&mut self, field: &str, v: i64) {
        if !(0..=MAX_AMOUNT).contains(&v) {
            self.bad(
                field,
                "must be a whole amount in minor units, from 0 to 2^53-1",
            );
        }
    }
    fn currency(&mut self, field: &str, v: &str) {
        if !crate::orders::currency::is_known(v) {
            self.bad(field, "must be a known ISO 4217 code such as USD");
        }
    }
    fn bad(&mut self, field: &str, message: &str) {
        self.0.push(FieldError {
            field: format!("payload.{field}"),
            message: format!("{field} {message}"),
        });
    }
}

/// Writes a payload's values in their one stored form, as the domains store them: a currency
/// in upper case (`usd` is `USD`, as `submitOrder` and `recordPayment` take it), a phone as its
/// E.164 digits without `+` (as orders and messages keep it). Then [`validate_payload`] judges
/// it; a value that is not a phone is left for it to name.
pub fn normalize_payload(kind: EventType, payload: &mut Value) {
    if matches!(kind, EventType::OrderCreated | EventType::PaymentReceived)
        && let Some(Value::String(c)) = payload.get_mut("currency")
    {
        *c = c.trim().to_ascii_uppercase();
    }
    let phone = match kind {
        EventType::MessageReceived => "from",
        EventType::MessageSent => "to",
        EventType::OrderCreated => "customerPhone",
        _ => return,
    };
    if let Some(Value::String(p)) = payload.get_mut(phone)
        && let Ok(digits) = crate::whatsapp::parse_phone(phone, p)
    {
        *p = digits;
    }
}

/// Parses and checks a payload for `kind`: its typed form, or VALIDATION naming the field.
pub fn validate_payload(kind: EventType, payload: &Value) -> Result<EventData> {
    if !payload.is_object() {
        return Err(Error::validation(
            "payload",
            "payload must be a JSON object",
        ));
    }
    if payload.to_string().len() > MAX_PAYLOAD_BYTES {
        return Err(Error::validation(
            "payload",
            format!("payload must be at most {MAX_PAYLOAD_BYTES} bytes of JSON"),
        ));
    }
    let data = EventData::parse(kind, payload)?;
    let mut c = Checks(vec![]);
    match &data {
        EventData::MessageReceived(d) => {
            c.id("messageId", &d.message_id);
            c.phone("from", &d.from);
            c.text("messageType", d.message_type.as_deref(), 32);
            c.text("text", d.text.as_deref(), 4096);
        }
        EventData::MessageSent(d) => {
            c.id("messageId", &d.message_id);
            c.phone("to", &d.to);
            c.text("templateId", d.template_id.as_deref(), 128);
            c.text("providerMessageId", d.provider_message_id.as_deref(), 256);
        }
        EventData::OrderCreated(d) => {
            c.id("orderId", &d.order_id);
            c.phone("customerPhone", &d.customer_phone);
            c.amount("totalAmount", d.total_amount);
            c.currency("currency", &d.currency);
        }
        EventData::OrderStatusChanged(d) => {
            c.id("orderId", &d.order_id);
            c.order_status("oldStatus", &d.old_status);
            c.order_status("newStatus", &d.new_status);
            c.text("reason", d.reason.as_deref(), 1024);
        }
        EventData::ProductUpdated(d) => {
            c.id("productId", &d.product_id);
            c.text("change", d.change.as_deref(), 64);
        }
        EventData::PaymentReceived(d) => {
            c.id("orderId", &d.order_id);
            c.amount("amount", d.amount);
            c.currency("currency", &d.currency);
            c.id("reference", &d.reference);
            c.text("method", d.method.as_deref(), 64);
        }
        EventData::DeliveryStarted(d) => {
            c.id("deliveryId", &d.delivery_id);
            c.id("orderId", &d.order_id);
            c.text("driver", d.driver.as_deref(), 128);
        }
        EventData::DeliveryCompleted(d) => {
            c.id("deliveryId", &d.delivery_id);
            c.id("orderId", &d.order_id);
        }
        EventData::BotConnected(d) => {
            c.text("reason", d.reason.as_deref(), 256);
        }
        EventData::BotDisconnected(d) => {
            c.text("reason", d.reason.as_deref(), 256);
        }
    }
    if c.0.is_empty() {
        Ok(data)
    } else {
        Err(Error::violations(c.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                Value::String(t.as_str().into())
            );
        }
        assert!("order_shipped".parse::<EventType>().is_err());
    }

    #[test]
    fn payload_errors_name_their_field() {
        let field = |t, p: Value| match validate_payload(t, &p) {
            Err(Error::Validation { field, .. }) => field,
            other => panic!("expected VALIDATION, got {other:?}"),
        };
        assert_eq!(
            field(
                EventType::OrderCreated,
                json!({"customerPhone": "263781564004", "totalAmount": 5, "currency": "USD"})
            ),
            "payload.orderId"
        );
        assert_eq!(
            field(
                EventType::OrderCreated,
                json!({"orderId": "o1", "customerPhone": "263781564004", "totalAmount": 1.5, "currency": "USD"})
            ),
            "payload.totalAmount"
        );
        assert_eq!(
            field(
                EventType::PaymentReceived,
                json!({"orderId": "o1", "amount": 100, "currency": "usd", "reference": "r"})
            ),
            "payload.currency"
        );
        assert_eq!(
            field(
                EventType::MessageReceived,
                json!({"messageId": "m", "from": "12ab"})
            ),
            "payload.from"
        );
        assert_eq!(field(EventType::BotConnected, json!([1])), "payload");
        assert!(validate_payload(EventType::BotConnected, &json!({})).is_ok());
        assert!(
            validate_payload(
                EventType::OrderStatusChanged,
                &json!({"orderId": "o", "oldStatus": "PENDING", "newStatus": "CONFIRMED", "extra": 1})
            )
            .is_ok()
        );
    }

    /// A sample payload of each type, with every field given.
    fn full(t: EventType) -> Value {
        match t {
            EventType::MessageReceived => {
                json!({"messageId": "m", "from": "263781564004", "messageType": "text", "text": "hi"})
            }
            EventType::MessageSent => {
                json!({"messageId": "m", "to": "263781564004", "templateId": "t", "providerMessageId": "w"})
            }
            EventType::OrderCreated => {
                json!({"orderId": "o", "customerPhone": "263781564004", "totalAmount": 5, "currency": "USD"})
            }
            EventType::OrderStatusChanged => {
                json!({"orderId": "o", "oldStatus": "PENDING", "newStatus": "CONFIRMED"})
            }
            EventType::ProductUpdated => json!({"productId": "p", "change": "details"}),
            EventType::PaymentReceived => {
                json!({"orderId": "o", "amount": 1, "currency": "USD", "reference": "r", "method": "card"})
            }
            EventType::DeliveryStarted => json!({"deliveryId": "d", "orderId": "o", "driver": "x"}),
            EventType::DeliveryCompleted => json!({"deliveryId": "d", "orderId": "o"}),
            EventType::BotConnected | EventType::BotDisconnected => json!({"reason": "r"}),
        }
    }

    #[test]
    fn currencies_are_stored_in_upper_case() {
        let mut p = json!({"orderId": "o", "amount": 1, "currency": " usd", "reference": "r"});
        normalize_payload(EventType::PaymentReceived, &mut p);
        assert_eq!(p["currency"], "USD");
        assert!(validate_payload(EventType::PaymentReceived, &p).is_ok());
        let mut other = json!({"reason": "x", "currency": "usd"});
        normalize_payload(EventType::BotConnected, &mut other);
        assert_eq!(
            other["currency"], "usd",
            "only where a currency is a currency"
        );
    }

    #[test]
    fn phones_are_stored_as_their_digits() {
        for (kind, field, mut p) in [
            (
                EventType::OrderCreated,
                "customerPhone",
                json!({"orderId": "o", "customerPhone": " +263781564004", "totalAmount": 5, "currency": "USD"}),
            ),
            (
                EventType::MessageSent,
                "to",
                json!({"messageId": "m", "to": "+263781564004"}),
            ),
            (
                EventType::MessageReceived,
                "from",
                json!({"messageId": "m", "from": "+263781564004"}),
            ),
        ] {
            normalize_payload(kind, &mut p);
            assert_eq!(p[field], "263781564004", "{kind:?}");
            assert!(validate_payload(kind, &p).is_ok(), "{kind:?}");
        }
        // Not a phone: left as sent, for validation to name.
        let mut bad = json!({"messageId": "m", "to": "+12ab"});
        normalize_payload(EventType::MessageSent, &mut bad);
        assert_eq!(bad["to"], "+12ab");
        let err = validate_payload(EventType::MessageSent, &bad).unwrap_err();
        assert_eq!(err.field(), Some("payload.to"));
    }

    #[test]
    fn every_required_field_is_named_at_once() {
        for t in EventType::ALL {
            let full = full(t);
            assert!(validate_payload(t, &full).is_ok(), "{t:?}");
            // Serde's own view of what is required: each field whose removal alone fails.
            let mut required: Vec<String> = full
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    let mut p = full.clone();
                    p.as_object_mut().unwrap().remove(*k);
                    validate_payload(t, &p).is_err()
                })
                .map(|k| format!("payload.{k}"))
                .collect();
            required.sort();
            // An empty object names all of them, and nothing else.
            let mut named: Vec<String> = match validate_payload(t, &json!({})) {
                Ok(_) => vec![],
                Err(Error::Validation { field, details, .. }) if details.is_empty() => {
                    vec![field]
                }
                Err(Error::Validation { details, .. }) => {
                    details.into_iter().map(|e| e.field).collect()
                }
                Err(other) => panic!("{other:?}"),
            };
            named.sort();
            assert_eq!(named, required, "{t:?}");
            // Null counts as missing.
            if let Some(first) = required.first() {
                let mut p = full.clone();
                p[first.trim_start_matches("payload.")] = Value::Null;
                match validate_payload(t, &p) {
                    Err(Error::Validation { field, .. }) => assert_eq!(&field, first),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
