//! WhatsApp over GraphQL: `sendMessage`, `message`, `messages`, `outbox`, merchants' credentials.

use async_graphql::{Context, ID, InputObject, Json, Object, connection::Connection};
use serde_json::Value;

use super::{audit::CountFields, connection, parse_id, req, templates::variables_object};
use crate::{
    error::Error,
    pagination::PageArgs,
    queue::Priority,
    templates::engine::Media,
    whatsapp::service::{self, Content, SendMessage},
};
use entity::{MessageDirection, MessageStatus, message, whatsapp_account};

/// A WhatsApp message, outbound or inbound.
pub struct OutboundMessage(pub message::Model);

#[Object]
impl OutboundMessage {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn merchant_id(&self) -> &str {
        &self.0.merchant_id
    }
    async fn direction(&self) -> MessageDirection {
        self.0.direction
    }
    /// The recipient (outbound) or sender (inbound), E.164 digits.
    async fn to(&self) -> &str {
        &self.0.customer_phone
    }
    /// The Cloud API message type (`text`, `interactive`, `image`, …).
    async fn message_type(&self) -> &str {
        &self.0.message_type
    }
    async fn template_id(&self) -> Option<ID> {
        self.0.template_id.map(|t| ID(t.to_string()))
    }
    /// Outbound: the exact Cloud API request body. Inbound: the message as Meta sent it.
    async fn payload(&self) -> Json<Value> {
        Json(self.0.payload.clone())
    }
    async fn status(&self) -> MessageStatus {
        self.0.status
    }
    /// `[{status, at, error?, source?}]`, oldest first; `source: "webhook"` for Meta's updates.
    async fn status_history(&self) -> Json<Value> {
        Json(self.0.status_history.clone())
    }
    /// The provider's id (`wamid…`).
    async fn provider_message_id(&self) -> Option<&str> {
        self.0.provider_message_id.as_deref()
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// `cloud_api` or `recording`, once sent.
    async fn transport(&self) -> Option<&str> {
        self.0.transport.as_deref()
    }
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// The last failure's reason.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The Cloud API's error code of the last failure.
    async fn error_code(&self) -> Option<i32> {
        self.0.error_code
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// An image to send: a public `link` or an uploaded WhatsApp media `id`.
#[derive(InputObject)]
pub struct SendMediaInput {
    pub link: Option<String>,
    pub id: Option<String>,
    pub caption: Option<String>,
}

#[derive(InputObject)]
pub struct SendMessageInput {
    /// Admin and service callers name the merchant.
    pub merchant_id: Option<String>,
    /// E.164, e.g. `+263781564004`.
    pub to: String,
    /// Exactly one of `templateId`, `templateName`, `text`, `media`.
    pub template_id: Option<ID>,
    pub template_name: Option<String>,
    pub text: Option<String>,
    pub media: Option<SendMediaInput>,
    /// Template variables (a JSON object).
    pub variables: Option<Json<Value>>,
    pub priority: Option<Priority>,
    /// The same key returns the same message.
    pub idempotency_key: Option<String>,
}

impl SendMessageInput {
    fn into_service(self) -> crate::error::Result<SendMessage> {
        let content = match (self.template_id, self.template_name, self.text, self.media) {
            (Some(id), None, None, None) => Content::TemplateId(parse_id(&id, "templateId")?),
            (None, Some(name), None, None) => Content::TemplateName(name),
            (None, None, Some(text), None) => Content::Text(text),
            (None, None, None, Some(m)) => Content::Media {
                media: Media {
                    kind: "image".into(),
                    link: m.link,
                    id: m.id,
                },
                caption: m.caption,
            },
            _ => {
                return Err(Error::validation(
                    "templateId",
                    "give exactly one of templateId, templateName, text or media",
                ));
            }
        };
        Ok(SendMessage {
            merchant_id: self.merchant_id,
            to: self.to,
            content,
            variables: variables_object(self.variables)?,
            priority: self.priority.unwrap_or_default(),
            idempotency_key: self.idempotency_key,
        })
    }
}

/// A merchant's own WhatsApp number. The token is write-only.
pub struct WhatsAppAccount(pub whatsapp_account::Model);

#[Object]
impl WhatsAppAccount {
    async fn merchant_id(&self) -> &str {
        &self.0.merchant_id
    }
    async fn phone_number_id(&self) -> &str {
        &self.0.phone_number_id
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

#[derive(Default)]
pub struct WhatsAppQuery;

#[Object]
impl WhatsAppQuery {
    /// What the recording transport kept (no WhatsApp credentials configured): what would have
    /// been sent, newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn outbox(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, OutboundMessage, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page = service::list(
            &state.db,
            rc,
            merchant_id.as_deref(),
            None,
            true,
            &page_args,
        )
        .await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            service::cursor,
            OutboundMessage,
        ))
    }

    /// Messages the caller may see, newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn messages(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        direction: Option<MessageDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, OutboundMessage, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page = service::list(
            &state.db,
            rc,
            merchant_id.as_deref(),
            direction,
            false,
            &page_args,
        )
        .await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            service::cursor,
            OutboundMessage,
        ))
    }

    /// One message with its status history.
    async fn message(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<OutboundMessage> {
        let (state, rc) = req(ctx);
        Ok(OutboundMessage(
            service::get(&state.db, rc, parse_id(&id, "id")?).await?,
        ))
    }
}

#[derive(Default)]
pub struct WhatsAppMutation;

#[Object]
impl WhatsAppMutation {
    /// Renders, checks and queues a WhatsApp message; returns it QUEUED.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        input: SendMessageInput,
    ) -> async_graphql::Result<OutboundMessage> {
        let (state, rc) = req(ctx);
        Ok(OutboundMessage(
            service::send(state, rc, input.into_service()?).await?,
        ))
    }

    /// Stores a merchant's own number and access token (encrypted at rest). The token must be
    /// one the Cloud API accepts for that number (checked with Meta first): VALIDATION on
    /// `accessToken` otherwise, UNAVAILABLE when Meta does not answer; nothing is stored then.
    async fn set_whats_app_credentials(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        phone_number_id: String,
        access_token: String,
    ) -> async_graphql::Result<WhatsAppAccount> {
        let (state, rc) = req(ctx);
        Ok(WhatsAppAccount(
            service::set_credentials(
                state,
                rc,
                merchant_id.as_deref(),
                &phone_number_id,
                &access_token,
            )
            .await?,
        ))
    }
}
