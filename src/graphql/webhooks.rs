//! Webhook endpoints and delivery logs over GraphQL: thin resolvers over `webhooks::service`.

use async_graphql::{
    Context, ID, InputObject, MaybeUndefined, Object, SimpleObject, connection::Connection,
};

use super::{audit::CountFields, connection, parse_id, req};
use crate::{
    error::Error,
    events::EventType,
    pagination::PageArgs,
    webhooks::service::{self, LogFilter, NewWebhook, WebhookPatch},
};
use entity::{WebhookAttemptStatus, webhook, webhook_log};

/// An endpoint. Its secret is shown once, by `registerWebhook` and `rotateWebhookSecret`.
pub struct Webhook(pub webhook::Model);

#[Object]
impl Webhook {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Null for platform-wide endpoints, which receive every merchant's events.
    async fn merchant_id(&self) -> Option<&str> {
        self.0.merchant_id.as_deref()
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// The types delivered; empty means all.
    async fn event_types(&self) -> Vec<EventType> {
        self.0
            .event_types
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()?.parse().ok()).collect())
            .unwrap_or_default()
    }
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    /// Why the endpoint is disabled (410 Gone, sustained failure, or who disabled it).
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.disabled_reason.as_deref()
    }
    async fn consecutive_failures(&self) -> i32 {
        self.0.consecutive_failures
    }
    /// When the current run of failed attempts began; null after a success.
    async fn failing_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.failing_since
    }
    /// Also signs the seed's way (`X-Webhook-Signature: sha256=<hex>`).
    async fn legacy_signature(&self) -> bool {
        self.0.legacy_signature
    }
    /// Deliveries per second at most; null is unlimited.
    async fn rate_limit(&self) -> Option<i32> {
        self.0.rate_limit
    }
    /// Until when the previous secret still signs, after a rotation.
    async fn previous_secret_expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0
            .previous_secret_expires_at
            .filter(|t| *t > crate::db::now())
    }
    async fn created_by(&self) -> Option<&str> {
        self.0.created_by.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// A new endpoint and its signing secret (`whsec_…`), which is never shown again.
#[derive(SimpleObject)]
pub struct RegisteredWebhook {
    webhook: Webhook,
    secret: String,
}

/// One delivery attempt.
pub struct WebhookLog(pub webhook_log::Model);

#[Object]
impl WebhookLog {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn webhook_id(&self) -> ID {
        ID(self.0.webhook_id.to_string())
    }
    /// The event id, sent as `webhook-id` on every attempt.
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }
    async fn event_type(&self) -> async_graphql::Result<EventType> {
        Ok(self.0.event_type.parse()?)
    }
    async fn url(&self) -> Option<&str> {
        self.0.url.as_deref()
    }
    /// 1 for the first attempt.
    async fn attempt(&self) -> i32 {
        self.0.attempt
    }
    async fn status(&self) -> WebhookAttemptStatus {
        self.0.status
    }
    async fn success(&self) -> bool {
        self.0.status == WebhookAttemptStatus::Succeeded
    }
    /// The HTTP status; null when no answer came (refused, timeout, connection error).
    async fn status_code(&self) -> Option<i32> {
        self.0.response_status
    }
    /// The first 4 KB of the answer.
    async fn response_body(&self) -> Option<&str> {
        self.0.response_body.as_deref()
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn duration_ms(&self) -> Option<i64> {
        self.0.duration_ms
    }
    /// When the next attempt is scheduled; null when none is.
    async fn next_retry_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.next_retry_at
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct RegisterWebhookInput {
    pub url: String,
    /// Empty or absent: every type.
    #[graphql(default)]
    pub event_types: Vec<EventType>,
    pub description: Option<String>,
    /// Admin and service name the merchant; an admin who omits it registers a platform-wide
    /// endpoint. A merchant's endpoints are always its own.
    pub merchant_id: Option<String>,
    #[graphql(default)]
    pub legacy_signature: bool,
    /// Deliveries per second at most (1 to 10000); over it they wait, never dropped.
    pub rate_limit: Option<i32>,
}

/// Absent fields keep their value; `null` clears an optional one (description, rateLimit) and
/// is VALIDATION for the others, which an endpoint always has. An input with no field is
/// VALIDATION too.
#[derive(InputObject, Default)]
pub struct UpdateWebhookInput {
    pub url: MaybeUndefined<String>,
    pub event_types: MaybeUndefined<Vec<EventType>>,
    pub description: MaybeUndefined<String>,
    pub legacy_signature: MaybeUndefined<bool>,
    pub rate_limit: MaybeUndefined<i32>,
}

use super::maybe;

#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// The caller's endpoints (admin and service: `merchantId`'s, or all), newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Webhook, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page = service::list(
            &state.db,
            rc,
            merchant_id.as_ref().map(|m| m.as_str()),
            &page_args,
        )
        .await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            service::cursor,
            Webhook,
        ))
    }

    async fn webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Webhook> {
        let (state, rc) = req(ctx);
        Ok(Webhook(
            service::get(&state.db, rc, parse_id(&id, "id")?).await?,
        ))
    }

    /// Delivery attempts, newest first: one endpoint's, or every endpoint's the caller sees.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn webhook_logs(
        &self,
        ctx: &Context<'_>,
        webhook_id: Option<ID>,
        success: Option<bool>,
        event_type: Option<EventType>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, WebhookLog, CountFields>> {
        let (state, rc) = req(ctx);
        let filter = LogFilter {
            webhook_id: webhook_id
                .as_ref()
                .map(|id| parse_id(id, "webhookId"))
                .transpose()?,
            success,
            event_type,
        };
        let page_args = PageArgs { first, after };
        let page = service::logs(&state.db, rc, &filter, &page_args).await?;
        Ok(connection(
            page,
            page_args.after.is_some(),
            service::log_cursor,
            WebhookLog,
        ))
    }
}

#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Registers an endpoint; the answer carries its secret, shown this once.
    async fn register_webhook(
        &self,
        ctx: &Context<'_>,
        input: RegisterWebhookInput,
    ) -> async_graphql::Result<RegisteredWebhook> {
        let (state, rc) = req(ctx);
        let (w, secret) = service::register(
            state,
            rc,
            NewWebhook {
                url: input.url,
                event_types: input.event_types,
                description: input.description,
                merchant_id: input.merchant_id,
                legacy_signature: input.legacy_signature,
                rate_limit: input.rate_limit,
            },
        )
        .await?;
        Ok(RegisteredWebhook {
            webhook: Webhook(w),
            secret,
        })
    }

    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWebhookInput,
    ) -> async_graphql::Result<Webhook> {
        let (state, rc) = req(ctx);
        let patch = WebhookPatch {
            url: Error::not_null("url", maybe(input.url))?,
            event_types: Error::not_null("eventTypes", maybe(input.event_types))?,
            description: maybe(input.description),
            legacy_signature: Error::not_null("legacySignature", maybe(input.legacy_signature))?,
            rate_limit: maybe(input.rate_limit),
        };
        Ok(Webhook(
            service::update(state, rc, parse_id(&id, "id")?, patch).await?,
        ))
    }

    /// Deletes the endpoint and its logs.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let (state, rc) = req(ctx);
        Ok(service::delete(state, rc, parse_id(&id, "id")?).await?)
    }

    /// Enables the endpoint and clears its failure record.
    async fn enable_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Webhook> {
        let (state, rc) = req(ctx);
        Ok(Webhook(
            service::set_enabled(state, rc, parse_id(&id, "id")?, true).await?,
        ))
    }

    async fn disable_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Webhook> {
        let (state, rc) = req(ctx);
        Ok(Webhook(
            service::set_enabled(state, rc, parse_id(&id, "id")?, false).await?,
        ))
    }

    /// A new secret (shown this once). For `overlap` (default `24h`, at most `7d`; `0s` for
    /// none) the old secret signs every delivery too, so receivers can switch without a gap.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
        overlap: Option<String>,
    ) -> async_graphql::Result<RegisteredWebhook> {
        let (state, rc) = req(ctx);
        let overlap = overlap
            .map(|o| {
                humantime::parse_duration(o.trim()).map_err(|e| {
                    Error::validation(
                        "overlap",
                        format!("overlap is not a duration like 24h: {e}"),
                    )
                })
            })
            .transpose()?;
        let (w, secret) = service::rotate_secret(state, rc, parse_id(&id, "id")?, overlap).await?;
        Ok(RegisteredWebhook {
            webhook: Webhook(w),
            secret,
        })
    }

    /// Sends the delivery of that log row once more. Returns the queued job's id.
    async fn redeliver(&self, ctx: &Context<'_>, log_id: ID) -> async_graphql::Result<ID> {
        let (state, rc) = req(ctx);
        Ok(ID(service::redeliver(
            state,
            rc,
            parse_id(&log_id, "logId")?,
        )
        .await?))
    }

    /// Re-sends every event whose deliveries to this endpoint since `since` all failed.
    /// Returns how many were queued.
    async fn recover_webhook(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        since: chrono::DateTime<chrono::Utc>,
    ) -> async_graphql::Result<u64> {
        let (state, rc) = req(ctx);
        Ok(service::recover(state, rc, parse_id(&webhook_id, "webhookId")?, since).await?)
    }

    /// A signed delivery of a test event (payload `{"test": true}`). Returns its event id.
    async fn send_test_event(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        #[graphql(name = "type")] kind: EventType,
    ) -> async_graphql::Result<ID> {
        let (state, rc) = req(ctx);
        Ok(ID(service::send_test(
            state,
            rc,
            parse_id(&webhook_id, "webhookId")?,
            kind,
        )
        .await?
        .to_string()))
    }
}
