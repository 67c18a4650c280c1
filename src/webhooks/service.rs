//! Endpoints and their logs: the functions GraphQL (and any REST adapter) call.
//!
//! Scope, in one place ([`find_scoped`] over `auth::scope`, as Svix's `secure_find_by_*`):
//! a merchant manages only its own endpoints and reads only their logs; admin and service
//! callers name the merchant (or see all); anonymous callers are refused. An endpoint outside
//! the caller's scope is NOT_FOUND, so ids of other merchants' endpoints leak nothing.
//! Platform-wide endpoints (no merchant; they receive every merchant's events) are registered by
//! admins only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, Query},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    delivery::{self, Attempt},
    signing,
};
use crate::{
    AppState, audit,
    auth::{
        Actor, MerchantScope, RequestContext,
        scope::{self, Scoped as _},
    },
    error::{Error, Result},
    events::{Event, EventType},
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::{
    WebhookAttemptStatus,
    webhook::{self, Column as W, Entity as Webhooks},
    webhook_log::{self, Column as L, Entity as Logs},
};

const CURSOR_KIND: &str = "whk";
const LOG_CURSOR_KIND: &str = "whl";
pub const MAX_DESCRIPTION: usize = 255;
/// Endpoints one merchant (or the platform) may have.
pub const MAX_ENDPOINTS: u64 = 100;
pub const MAX_RATE_LIMIT: i32 = 10_000;
/// A rotation's overlap: 24 h by default, at most 7 days.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// `recoverWebhook` looks at this many log rows at most (newest kept by retention anyway).
const MAX_RECOVER_SCAN: u64 = 20_000;

/// `registerWebhook`'s input.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: String,
    /// Empty means every type.
    pub event_types: Vec<EventType>,
    pub description: Option<String>,
    pub merchant_id: Option<String>,
    pub legacy_signature: bool,
    pub rate_limit: Option<i32>,
}

/// `updateWebhook`: absent fields keep their value; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<EventType>>,
    pub description: Option<Option<String>>,
    pub legacy_signature: Option<bool>,
    pub rate_limit: Option<Option<i32>>,
}

/// `webhookLogs` filters.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub webhook_id: Option<Uuid>,
    pub success: Option<bool>,
    pub event_type: Option<EventType>,
}

/// An endpoint the actor may manage, or NOT_FOUND (also for another merchant's).
pub async fn find_scoped<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
) -> Result<webhook::Model> {
    scope::one_writable::<Webhooks, _>(db, actor, Condition::all().add(W::Id.eq(id))).await
}

/// The endpoint as audit rows show it: never the secret.
fn audit_json(w: &webhook::Model) -> Value {
    json!({
        "id": w.id,
        "merchantId": w.merchant_id,
        "url": w.url,
        "description": w.description,
        "eventTypes": w.event_types,
        "enabled": w.enabled,
        "disabledReason": w.disabled_reason,
        "legacySignature": w.legacy_signature,
        "rateLimit": w.rate_limit,
    })
}

async fn audited<C: ConnectionTrait>(
    db: &C,
    ctx: &RequestContext,
    action: &str,
    before: Option<&webhook::Model>,
    after: Option<&webhook::Model>,
) -> Result<()> {
    let w = after.or(before).expect("an audited change has a row");
    audit::record(
        db,
        ctx,
        audit::Change {
            action,
            target_type: "webhook",
            target_id: w.id.to_string(),
            merchant_id: w.merchant_id.clone(),
            before: before.map(audit_json),
            after: after.map(audit_json),
        },
    )
    .await
}

fn event_types_json(types: &[EventType]) -> Value {
    let mut names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    json!(names)
}

fn check_description(d: Option<String>) -> Result<Option<String>> {
    let d = d.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty());
    if d.as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(Error::validation(
            "description",
            format!("description must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(d)
}

fn check_rate_limit(r: Option<i32>) -> Result<Option<i32>> {
    if r.is_some_and(|r| !(1..=MAX_RATE_LIMIT).contains(&r)) {
        return Err(Error::validation(
            "rateLimit",
            format!("rateLimit must be between 1 and {MAX_RATE_LIMIT} per second"),
        ));
    }
    Ok(r)
}

/// `registerWebhook`: the endpoint and its secret, which is never shown again.
pub async fn register(
    state: &AppState,
    ctx: &RequestContext,
    input: NewWebhook,
) -> Result<(webhook::Model, String)> {
    let owner = match ctx.actor.merchant_scope(input.merchant_id.as_deref())? {
        MerchantScope::One(m) => Some(m.into_string()),
        MerchantScope::All if ctx.actor.is_admin() => None,
        MerchantScope::All => {
            return Err(Error::validation(
                "merchantId",
                "service callers must name the merchant; only admins register platform-wide endpoints",
            ));
        }
    };
    let description = check_description(input.description)?;
    let rate_limit = check_rate_limit(input.rate_limit)?;
    let url = state.webhooks.policy.check_destination(&input.url).await?;
    let count = Webhooks::find()
        .filter(match &owner {
            Some(m) => W::MerchantId.eq(m.as_str()),
            None => W::MerchantId.is_null(),
        })
        .count(&state.db)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Err(Error::Conflict(format!(
            "at most {MAX_ENDPOINTS} webhook endpoints per merchant"
        )));
    }
    let secret = signing::generate_secret();
    let now = crate::db::now();
    let row = webhook::ActiveModel {
        id: Set(Uuid::now_v7()),
        merchant_id: Set(owner),
        url: Set(url.to_string()),
        description: Set(description),
        secret: Set(state.cipher.encrypt(&secret)?),
        event_types: Set(event_types_json(&input.event_types)),
        enabled: Set(true),
        disabled_reason: Set(None),
        consecutive_failures: Set(0),
        created_by: Set(ctx.actor.id().map(str::to_owned)),
        created_at: Set(now),
        updated_at: Set(now),
        legacy_signature: Set(input.legacy_signature),
        rate_limit: Set(rate_limit),
        previous_secret: Set(None),
        previous_secret_expires_at: Set(None),
        failing_since: Set(None),
    };
    let tx = state.db.begin().await?;
    let row = row.insert(&tx).await?;
    audited(&tx, ctx, "webhook.create", None, Some(&row)).await?;
    tx.commit().await?;
    state.webhooks.endpoints.forget();
    Ok((row, secret))
}

/// `webhooks(merchantId, first, after)`, newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
    page: &PageArgs,
) -> Result<Page<webhook::Model>> {
    let pager = page.newest_first(CURSOR_KIND)?;
    let cond = Webhooks::scope_condition(&ctx.actor.merchant_scope(merchant_id)?);
    pager.fetch(db, Webhooks::find().filter(cond), W::Id).await
}

pub fn cursor(w: &webhook::Model) -> String {
    encode_cursor(CURSOR_KIND, &w.id.to_string())
}

pub fn log_cursor(l: &webhook_log::Model) -> String {
    encode_cursor(LOG_CURSOR_KIND, &l.id.to_string())
}

/// `webhook(id)`: what the caller may read, as `webhooks` lists it (a service token reads the
/// platform's endpoints, though only an admin changes them).
pub async fn get(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<webhook::Model> {
    find_visible(db, &ctx.actor, id).await
}

async fn find_visible<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
) -> Result<webhook::Model> {
    scope::one_visible::<Webhooks, _>(db, actor, Condition::all().add(W::Id.eq(id))).await
}

/// `updateWebhook`. A new URL is checked like a registration's.
pub async fn update(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    patch: WebhookPatch,
) -> Result<webhook::Model> {
    let WebhookPatch {
        url,
        event_types,
        description,
        legacy_signature,
        rate_limit,
    } = &patch;
    if url.is_none()
        && event_types.is_none()
        && description.is_none()
        && legacy_signature.is_none()
        && rate_limit.is_none()
    {
        return Err(Error::validation(
            "input",
            "nothing to update: give at least one of url, eventTypes, description, \
             legacySignature, rateLimit",
        ));
    }
    // Checked before the row is locked: a new URL's check may wait on DNS.
    let url = match &patch.url {
        Some(url) => Some(
            state
                .webhooks
                .policy
                .check_destination(url)
                .await?
                .to_string(),
        ),
        None => None,
    };
    let description = patch.description.map(check_description).transpose()?;
    let rate_limit = patch.rate_limit.map(check_rate_limit).transpose()?;
    let tx = crate::db::begin_write(&state.db).await?;
    let before = find_scoped(&tx, &ctx.actor, id).await?;
    let mut am: webhook::ActiveModel = before.clone().into();
    if let Some(url) = url {
        am.url = Set(url);
    }
    if let Some(types) = &patch.event_types {
        am.event_types = Set(event_types_json(types));
    }
    if let Some(d) = description {
        am.description = Set(d);
    }
    if let Some(l) = patch.legacy_signature {
        am.legacy_signature = Set(l);
    }
    if let Some(r) = rate_limit {
        am.rate_limit = Set(r);
    }
    am.updated_at = Set(crate::db::now());
    let after = am.update(&tx).await?;
    audited(&tx, ctx, "webhook.update", Some(&before), Some(&after)).await?;
    tx.commit().await?;
    state.webhooks.endpoints.forget();
    Ok(after)
}

/// `deleteWebhook`: its logs go with it; pending attempts end quietly.
pub async fn delete(state: &AppState, ctx: &RequestContext, id: Uuid) -> Result<bool> {
    let tx = crate::db::begin_write(&state.db).await?;
    let before = find_scoped(&tx, &ctx.actor, id).await?;
    // Explicitly, so SQLite without foreign-key enforcement drops them too.
    Logs::delete_many()
        .filter(L::WebhookId.eq(id))
        .exec(&tx)
        .await?;
    Webhooks::delete_by_id(id).exec(&tx).await?;
    audited(&tx, ctx, "webhook.delete", Some(&before), None).await?;
    tx.commit().await?;
    state.webhooks.endpoints.forget();
    Ok(true)
}

/// `enableWebhook` (clears the failure record) and `disableWebhook`.
pub async fn set_enabled(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    enabled: bool,
) -> Result<webhook::Model> {
    let tx = crate::db::begin_write(&state.db).await?;
    let before = find_scoped(&tx, &ctx.actor, id).await?;
    let mut am: webhook::ActiveModel = before.clone().into();
    am.enabled = Set(enabled);
    if enabled {
        am.disabled_reason = Set(None);
        am.consecutive_failures = Set(0);
        am.failing_since = Set(None);
    } else {
        am.disabled_reason = Set(Some(format!(
            "disabled by {} {}",
            ctx.actor.role_name(),
            ctx.actor.id().unwrap_or("?")
        )));
    }
    am.updated_at = Set(crate::db::now());
    let after = am.update(&tx).await?;
    let action = if enabled {
        "webhook.enable"
    } else {
        "webhook.disable"
    };
    if !enabled {
        drop_pending_retries(&tx, id).await?;
    }
    audited(&tx, ctx, action, Some(&before), Some(&after)).await?;
    tx.commit().await?;
    state.webhooks.endpoints.forget();
    Ok(after)
}

/// A disabled endpoint's scheduled retries are skipped when they come due (unless it is enabled
/// again first), so its log no longer shows them as coming: `nextRetryAt` is cleared.
pub(crate) async fn drop_pending_retries<C: ConnectionTrait>(db: &C, webhook: Uuid) -> Result<()> {
    Logs::update_many()
        .col_expr(L::NextRetryAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(L::WebhookId.eq(webhook))
        .filter(L::NextRetryAt.is_not_null())
        .exec(db)
        .await?;
    Ok(())
}

/// `rotateWebhookSecret(id, overlap)`: a new secret, shown once; the old one keeps signing
/// (alongside) for `overlap`.
pub async fn rotate_secret(
    state: &AppState,
    ctx: &RequestContext,
    id: Uuid,
    overlap: Option<Duration>,
) -> Result<(webhook::Model, String)> {
    let overlap = overlap.unwrap_or(DEFAULT_OVERLAP);
    if overlap > MAX_OVERLAP {
        return Err(Error::validation(
            "overlap",
            "overlap must be at most 7 days",
        ));
    }
    let secret = signing::generate_secret();
    let sealed = state.cipher.encrypt(&secret)?;
    // The row is read locked: two rotations at once take turns, and the second keeps the
    // first's secret as its previous one (read unlocked, both kept the same old secret, and the
    // first's secret, already shown to its caller, never signed anything).
    let tx = crate::db::begin_write(&state.db).await?;
    let before = find_scoped(&tx, &ctx.actor, id).await?;
    let now = crate::db::now();
    let mut am: webhook::ActiveModel = before.clone().into();
    am.secret = Set(sealed);
    if overlap.is_zero() {
        am.previous_secret = Set(None);
        am.previous_secret_expires_at = Set(None);
    } else {
        am.previous_secret = Set(Some(before.secret.clone()));
        am.previous_secret_expires_at = Set(Some(
            now + chrono::Duration::from_std(overlap).map_err(Error::internal)?,
        ));
    }
    am.updated_at = Set(now);
    let after = am.update(&tx).await?;
    audited(
        &tx,
        ctx,
        "webhook.rotate_secret",
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    state.webhooks.endpoints.forget();
    Ok((after, secret))
}

/// `webhookLogs(webhookId, success, eventType, first, after)`, newest first.
pub async fn logs(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    filter: &LogFilter,
    page: &PageArgs,
) -> Result<Page<webhook_log::Model>> {
    let pager = page.newest_first(LOG_CURSOR_KIND)?;
    let mut cond = Condition::all();
    match filter.webhook_id {
        Some(id) => {
            find_visible(db, &ctx.actor, id).await?;
            cond = cond.add(L::WebhookId.eq(id));
        }
        None => {
            if let Some(m) = ctx.actor.merchant_scope(None)?.merchant() {
                cond = cond.add(
                    L::WebhookId.in_subquery(
                        Query::select()
                            .column(W::Id)
                            .from(Webhooks)
                            .and_where(W::MerchantId.eq(m.as_str()))
                            .to_owned(),
                    ),
                );
            }
        }
    }
    if let Some(ok) = filter.success {
        cond = cond.add(if ok {
            L::Status.eq(WebhookAttemptStatus::Succeeded)
        } else {
            L::Status.ne(WebhookAttemptStatus::Succeeded)
        });
    }
    if let Some(t) = filter.event_type {
        cond = cond.add(L::EventType.eq(t.as_str()));
    }
    pager.fetch(db, Logs::find().filter(cond), L::Id).await
}

/// The next attempt number of `(webhook, event)`, for manual sends.
async fn next_attempt(db: &DatabaseConnection, webhook: Uuid, event: Uuid) -> Result<u32> {
    let max: Option<i32> = Logs::find()
        .select_only()
        .column_as(L::Attempt.max(), "m")
        .filter(L::WebhookId.eq(webhook))
        .filter(L::EventId.eq(event))
        .into_tuple::<Option<i32>>()
        .one(db)
        .await?
        .flatten();
    Ok((max.unwrap_or(0).max(0) as u32 + 1).min(100))
}

/// `redeliver(logId)`: sends that delivery once more (a manual attempt). Returns the job id.
pub async fn redeliver(state: &AppState, ctx: &RequestContext, log_id: Uuid) -> Result<String> {
    // Before the lookup: an anonymous caller must not learn which log ids exist.
    ctx.actor.require_authenticated()?;
    let log = Logs::find_by_id(log_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| Error::not_found("webhook log"))?;
    // The log is visible exactly when its endpoint is.
    let w = find_scoped(&state.db, &ctx.actor, log.webhook_id)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::not_found("webhook log"),
            other => other,
        })?;
    if !w.enabled {
        return Err(Error::Conflict(
            "the endpoint is disabled; enable it first".into(),
        ));
    }
    let body = log
        .request_body
        .as_ref()
        .map(Value::to_string)
        .ok_or_else(|| Error::Conflict("this log row holds no request body".into()))?;
    let attempt = Attempt {
        webhook_id: w.id,
        event_id: log.event_id,
        event_type: log.event_type.clone(),
        attempt: next_attempt(&state.db, w.id, log.event_id).await?,
        body,
        manual: true,
        once: false,
    };
    let ids =
        delivery::enqueue(&state.queue, &state.webhooks, &[(attempt, Duration::ZERO)]).await?;
    Ok(ids.into_iter().next().unwrap_or_default())
}

/// `recoverWebhook(webhookId, since)`: re-sends, once each, every event whose deliveries to this
/// endpoint since `since` all failed (like Svix's recover). Returns how many were queued.
pub async fn recover(
    state: &AppState,
    ctx: &RequestContext,
    webhook_id: Uuid,
    since: DateTime<Utc>,
) -> Result<u64> {
    if since > crate::db::now() {
        return Err(Error::validation(
            "since",
            "since must not be in the future",
        ));
    }
    let w = find_scoped(&state.db, &ctx.actor, webhook_id).await?;
    if !w.enabled {
        return Err(Error::Conflict(
            "the endpoint is disabled; enable it first".into(),
        ));
    }
    let rows: Vec<(Uuid, String, WebhookAttemptStatus, i32, Option<Value>)> = Logs::find()
        .select_only()
        .column(L::EventId)
        .column(L::EventType)
        .column(L::Status)
        .column(L::Attempt)
        .column(L::RequestBody)
        .filter(L::WebhookId.eq(w.id))
        .filter(L::CreatedAt.gte(since))
        .order_by_asc(L::Id)
        .limit(MAX_RECOVER_SCAN)
        .into_tuple()
        .all(&state.db)
        .await?;
    // Per event, in first-failure order: (type, highest attempt, body), or None once it succeeded.
    let mut order: Vec<Uuid> = Vec::new();
    let mut failed: std::collections::HashMap<Uuid, Option<(String, i32, Option<Value>)>> =
        std::collections::HashMap::new();
    for (event, kind, status, attempt, body) in rows {
        let entry = failed.entry(event).or_insert_with(|| {
            order.push(event);
            Some((kind, 0, None))
        });
        if status == WebhookAttemptStatus::Succeeded {
            *entry = None;
        } else if let Some((_, max, b)) = entry {
            *max = (*max).max(attempt);
            if body.is_some() {
                *b = body;
            }
        }
    }
    let mut attempts = Vec::new();
    for event in order {
        if let Some(Some((kind, max, Some(body)))) = failed.remove(&event) {
            attempts.push((
                Attempt {
                    webhook_id: w.id,
                    event_id: event,
                    event_type: kind,
                    attempt: (max.max(0) as u32 + 1).min(100),
                    body: body.to_string(),
                    manual: true,
                    once: true,
                },
                Duration::ZERO,
            ));
        }
    }
    for chunk in attempts.chunks(500) {
        delivery::enqueue(&state.queue, &state.webhooks, chunk).await?;
    }
    Ok(attempts.len() as u64)
}

/// `sendTestEvent(webhookId, type)`: a signed delivery of a test event (payload
/// `{"test": true}`), logged like any other. Returns the test event's id (its `webhook-id`).
pub async fn send_test(
    state: &AppState,
    ctx: &RequestContext,
    webhook_id: Uuid,
    kind: EventType,
) -> Result<Uuid> {
    let w = find_scoped(&state.db, &ctx.actor, webhook_id).await?;
    if !w.enabled {
        return Err(Error::Conflict(
            "the endpoint is disabled; enable it first".into(),
        ));
    }
    let event = Event {
        id: Uuid::now_v7(),
        kind,
        merchant_id: w.merchant_id.clone().unwrap_or_else(|| "platform".into()),
        occurred_at: crate::db::now(),
        payload: json!({ "test": true }),
        seq: 0,
    };
    let attempt = Attempt {
        webhook_id: w.id,
        event_id: event.id,
        event_type: kind.as_str().to_owned(),
        attempt: 1,
        body: serde_json::to_string(&event).map_err(Error::internal)?,
        manual: true,
        once: false,
    };
    delivery::enqueue(&state.queue, &state.webhooks, &[(attempt, Duration::ZERO)]).await?;
    Ok(event.id)
}
