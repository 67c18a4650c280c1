//! `messages`: WhatsApp messages, outbound (what `sendMessage` queued and the Cloud API took) and
//! inbound (what customers wrote). The provider's id (`wamid…`) is unique per merchant: inbound
//! redeliveries are processed once, and status updates find their outbound message by it.

use sea_orm::entity::prelude::*;

use crate::{MessageDirection, MessageStatus};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub merchant_id: String,
    pub direction: MessageDirection,
    /// The customer's phone (E.164 digits): the recipient outbound, the sender inbound.
    pub customer_phone: String,
    /// The Cloud API message type: `text`, `interactive`, `image`, `button`, …
    pub message_type: String,
    pub template_id: Option<Uuid>,
    /// Outbound: the exact Cloud API request body. Inbound: the message object as Meta sent it.
    pub payload: Json,
    pub status: MessageStatus,
    /// `[{status, at, error?}]`, oldest first.
    pub status_history: Json,
    pub provider_message_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// `cloud_api` or `recording` once sent.
    pub transport: Option<String>,
    /// Provider calls made for this message.
    pub attempts: i32,
    pub error: Option<String>,
    /// The Cloud API's error code of the last failure.
    pub error_code: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
