//! `sendMessage`, the `message_sending` job, `outbox`, `message(id)` and merchants' credentials.
//!
//! The request renders and checks everything (a missing variable or a Cloud API limit is refused
//! before anything is stored), stores the exact Cloud API body as a QUEUED message, and enqueues
//! `message_sending` with a job id derived from the message: a repeated request (same
//! idempotency key) finds the same message and enqueues nothing new.
//!
//! The job picks the transport per message: the merchant's own number, else the platform number,
//! else the recording transport. Each provider call counts against the message's own budget
//! ([`MAX_SEND_ATTEMPTS`]). A retryable failure without `Retry-After` is retried by the queue with
//! its exponential backoff; with `Retry-After`, the job schedules its continuation exactly that
//! far ahead (a delayed job) and completes, because the queue's backoff cannot be told a delay.
//! A final failure, or the budget spent, ends the message FAILED with the reason.
//!
//! The Cloud API has no idempotency key: a send that succeeded at Meta but whose result was not
//! recorded here (a crash between the two) is sent again. At-least-once, as the queue is.

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter,
    sea_query::{Expr, OnConflict},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    client::{Credentials, SendError, Transport},
    config::valid_phone_number_id,
    parse_phone,
};
use crate::{
    AppState, audit,
    auth::{
        Actor, MerchantId, RequestContext,
        scope::{self, Scoped as _},
    },
    error::{Error, Result},
    events::{self, EventType},
    orders::service::parse_idempotency_key,
    pagination::{Page, PageArgs, encode_cursor},
    queue::{JobInfo, JobOptions, Priority, worker::JobError},
    templates::{
        engine::{self, Media, TemplateContent},
        service::{self as templates, TemplateRef},
    },
};
use entity::{
    MessageDirection, MessageStatus, TemplateStatus, TemplateType,
    message::{self, Column as C, Entity as Messages},
    whatsapp_account::{self, Entity as Accounts},
};

const CURSOR_KIND: &str = "msg";
/// Provider calls one message may take before it ends FAILED.
pub const MAX_SEND_ATTEMPTS: i32 = 5;
/// Runs a message's job may take: one per provider call, and two more that only record the
/// outcome. A call can end without the job recording it (it outlived the job's timeout, or the
/// worker was killed during it); the queue still counts the attempt. Without the spare runs, the
/// job's last attempt spent that way left its message QUEUED for good.
const JOB_ATTEMPTS: u32 = MAX_SEND_ATTEMPTS as u32 + 2;
/// The Cloud API's limit on a text message body.
pub const MAX_TEXT_CHARS: usize = 4096;

/// What to send.
#[derive(Debug, Clone)]
pub enum Content {
    TemplateId(Uuid),
    TemplateName(String),
    Text(String),
    /// An image by `link` or uploaded media `id`, with an optional caption.
    Media {
        media: Media,
        caption: Option<String>,
    },
}

/// `sendMessage`'s input.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub merchant_id: Option<String>,
    pub to: String,
    pub content: Content,
    pub variables: Map<String, Value>,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
}

pub fn cursor(m: &message::Model) -> String {
    encode_cursor(CURSOR_KIND, &m.id.to_string())
}

fn history_entry(
    status: MessageStatus,
    at: chrono::DateTime<chrono::Utc>,
    error: Option<&str>,
) -> Value {
    let mut e = json!({ "status": status.as_str().to_ascii_uppercase(), "at": at.to_rfc3339() });
    if let Some(err) = error {
        e["error"] = json!(err);
    }
    e
}

pub(crate) fn push_history(history: &Value, entry: Value) -> Value {
    let mut list = history.as_array().cloned().unwrap_or_default();
    list.push(entry);
    Value::Array(list)
}

fn checked(content: TemplateContent) -> Result<TemplateContent> {
    let violations = engine::validate(&content);
    if violations.is_empty() {
        Ok(content)
    } else {
        Err(Error::violations(violations))
    }
}

/// Renders `content` to the exact Cloud API body; refuses missing variables and broken limits.
async fn render(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant: &MerchantId,
    to: &str,
    content: &Content,
    vars: &Map<String, Value>,
) -> Result<(Value, Option<Uuid>)> {
    match content {
        Content::Text(text) => {
            let n = text.chars().count();
            if n == 0 || n > MAX_TEXT_CHARS || text.trim().is_empty() {
                return Err(Error::validation(
                    "text",
                    format!("text must have 1 to {MAX_TEXT_CHARS} characters"),
                ));
            }
            let c = TemplateContent {
                kind: TemplateType::Text,
                body: text.clone(),
                header: None,
                footer: None,
                button_text: None,
                buttons: vec![],
                sections: vec![],
                media: None,
            };
            Ok((engine::payload(&c, Some(to)), None))
        }
        Content::Media { media, caption } => {
            if media.link.is_some() == media.id.is_some() {
                return Err(Error::validation(
                    "media",
                    "media needs exactly one of link or id",
                ));
            }
            let c = checked(TemplateContent {
                kind: TemplateType::Media,
                body: caption.clone().unwrap_or_default(),
                header: None,
                footer: None,
                button_text: None,
                buttons: vec![],
                sections: vec![],
                media: Some(media.clone()),
            })?;
            Ok((engine::payload(&c, Some(to)), None))
        }
        Content::TemplateId(_) | Content::TemplateName(_) => {
            let r = match content {
                Content::TemplateId(id) => TemplateRef::Id(*id),
                Content::TemplateName(n) => TemplateRef::Name(n.clone()),
                _ => unreachable!(),
            };
            // Templates are looked up as the merchant the message is for sees them.
            let as_merchant = RequestContext::new(Actor::Merchant {
                sub: ctx.actor.id().unwrap_or("system").to_owned(),
                merchant_id: merchant.as_str().to_owned(),
            });
            let field = if matches!(content, Content::TemplateId(_)) {
                "templateId"
            } else {
                "templateName"
            };
            let t = templates::get(db, &as_merchant, &r).await?;
            if t.status != TemplateStatus::Active {
                return Err(Error::validation(
                    field,
                    format!(
                        "template {:?} is {}; only active templates are sent",
                        t.name,
                        t.status.as_str()
                    ),
                ));
            }
            let preview = templates::render_preview(&templates::content_of(&t), vars, Some(to))?;
            if !preview.violations.is_empty() {
                return Err(Error::violations(preview.violations));
            }
            Ok((preview.payload, Some(t.id)))
        }
    }
}

async fn find_by_key(
    db: &DatabaseConnection,
    merchant: &MerchantId,
    key: &str,
) -> Result<Option<message::Model>> {
    Ok(Messages::find()
        .filter(C::MerchantId.eq(merchant.as_str()))
        .filter(C::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

async fn enqueue(state: &AppState, m: &message::Model, priority: Priority, n: i32) -> Result<()> {
    let job_id = if n == 0 {
        format!("msg-{}", m.id)
    } else {
        format!("msg-{}-{n}", m.id)
    };
    state
        .queue
        .queue_message_sending(
            &m.customer_phone,
            json!({ "messageId": m.id, "merchantId": m.merchant_id }),
            &job_options(state, job_id, priority),
        )
        .await?;
    Ok(())
}

/// A message's job: its id, priority, attempts (see [`JOB_ATTEMPTS`]) and backoff, and a
/// timeout that outlasts one provider call (`WHATSAPP_TIMEOUT`) with the bookkeeping around
/// it. A shorter one cancelled calls that Meta may yet have accepted, and the retry sent the
/// message to the customer again.
fn job_options(state: &AppState, job_id: String, priority: Priority) -> JobOptions {
    let timeout = state.config.whatsapp.timeout + std::time::Duration::from_secs(15);
    JobOptions {
        job_id: Some(job_id),
        priority: Some(priority),
        attempts: Some(JOB_ATTEMPTS),
        backoff_ms: Some(state.config.whatsapp.retry_base.as_millis() as u64),
        timeout_ms: Some(timeout.as_millis() as u64),
        ..Default::default()
    }
}

async fn replay(
    state: &AppState,
    existing: message::Model,
    to: &str,
    payload: &Value,
    priority: Priority,
) -> Result<message::Model> {
    if existing.customer_phone != to || &existing.payload != payload {
        return Err(Error::Conflict(
            "idempotencyKey was already used for a different message".into(),
        ));
    }
    if existing.status == MessageStatus::Queued && existing.attempts == 0 {
        // The first request may have stored the message and lost its job: same job id again.
        enqueue(state, &existing, priority, 0).await?;
    }
    Ok(existing)
}

/// `sendMessage`: see the module docs.
pub async fn send(
    state: &AppState,
    ctx: &RequestContext,
    input: SendMessage,
) -> Result<message::Model> {
    let merchant = ctx.actor.owning_merchant(input.merchant_id.as_deref())?;
    let to = parse_phone("to", &input.to)?;
    let key = parse_idempotency_key(input.idempotency_key)?;
    let (payload, template_id) = render(
        &state.db,
        ctx,
        &merchant,
        &to,
        &input.content,
        &input.variables,
    )
    .await?;
    if let Some(k) = &key
        && let Some(existing) = find_by_key(&state.db, &merchant, k).await?
    {
        return replay(state, existing, &to, &payload, input.priority).await;
    }
    let now = crate::db::now();
    let model = message::ActiveModel {
        id: Set(Uuid::now_v7()),
        merchant_id: Set(merchant.as_str().to_owned()),
        direction: Set(MessageDirection::Outbound),
        customer_phone: Set(to.clone()),
        message_type: Set(payload["type"].as_str().unwrap_or("text").to_owned()),
        template_id: Set(template_id),
        payload: Set(payload.clone()),
        status: Set(MessageStatus::Queued),
        status_history: Set(json!([history_entry(MessageStatus::Queued, now, None)])),
        provider_message_id: Set(None),
        idempotency_key: Set(key.clone()),
        transport: Set(None),
        attempts: Set(0),
        error: Set(None),
        error_code: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let model = match model.insert(&state.db).await.map_err(Error::from) {
        Ok(m) => m,
        Err(Error::Conflict(_)) if key.is_some() => {
            let existing = find_by_key(&state.db, &merchant, key.as_deref().unwrap_or_default())
                .await?
                .ok_or_else(|| Error::Conflict("the message changed meanwhile; retry".into()))?;
            return replay(state, existing, &to, &payload, input.priority).await;
        }
        Err(e) => return Err(e),
    };
    enqueue(state, &model, input.priority, 0).await?;
    Ok(model)
}

/// The transport for one merchant's message: its own number, the platform's, or recording.
pub async fn transport_for(state: &AppState, merchant: &str) -> Result<Transport> {
    if let Some(acct) = Accounts::find_by_id(merchant.to_owned())
        .one(&state.db)
        .await?
    {
        return Ok(Transport::CloudApi(Credentials {
            phone_number_id: acct.phone_number_id,
            token: state.cipher.decrypt(&acct.access_token)?,
        }));
    }
    Ok(match state.whatsapp.platform() {
        Some(c) => Transport::CloudApi(c.clone()),
        None => Transport::Recording,
    })
}

/// Marks `m` SENT (if still QUEUED) and records `message_sent` in the same transaction.
async fn mark_sent(
    state: &AppState,
    m: &message::Model,
    wamid: Option<String>,
    transport: &Transport,
) -> Result<Value> {
    match record_sent(state, m, wamid.clone(), transport).await {
        // The provider accepted the message but answered an id another message already has
        // (Meta's ids are unique; a stand-in or a proxy may not be). The message went out:
        // it is SENT, without the id. Failing here retried the job, and the customer got the
        // message again at every retry.
        Err(Error::Conflict(_)) if wamid.is_some() => {
            tracing::warn!(
                message_id = %m.id,
                provider_message_id = wamid.as_deref().unwrap_or_default(),
                "the provider answered a message id another message has; recorded as sent without it"
            );
            record_sent(state, m, None, transport).await
        }
        other => other,
    }
}

async fn record_sent(
    state: &AppState,
    m: &message::Model,
    wamid: Option<String>,
    transport: &Transport,
) -> Result<Value> {
    let now = crate::db::now();
    let txn = crate::db::begin_write(&state.db).await?;
    let changed = Messages::update_many()
        .col_expr(C::Status, Expr::value(MessageStatus::Sent.as_str()))
        .col_expr(C::ProviderMessageId, Expr::value(wamid.clone()))
        .col_expr(C::Transport, Expr::value(transport.name()))
        .col_expr(C::Error, Expr::value(Option::<String>::None))
        .col_expr(C::ErrorCode, Expr::value(Option::<i32>::None))
        .col_expr(
            C::StatusHistory,
            Expr::value(push_history(
                &m.status_history,
                history_entry(MessageStatus::Sent, now, None),
            )),
        )
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.eq(m.id))
        .filter(C::Status.eq(MessageStatus::Queued))
        .exec(&txn)
        .await?
        .rows_affected;
    if changed != 1 {
        return Ok(json!({ "skipped": "message is no longer queued" }));
    }
    let merchant = MerchantId::parse("merchantId", &m.merchant_id)?;
    let event = events::service::record(
        &txn,
        EventType::MessageSent,
        &merchant,
        json!({
            "messageId": m.id.to_string(),
            "to": m.customer_phone,
            "templateId": m.template_id.map(|t| t.to_string()),
            "providerMessageId": wamid,
        }),
    )
    .await?;
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(json!({ "status": "SENT", "providerMessageId": wamid, "transport": transport.name() }))
}

async fn mark_failed(
    state: &AppState,
    m: &message::Model,
    reason: &str,
    code: Option<i64>,
) -> Result<()> {
    let now = crate::db::now();
    Messages::update_many()
        .col_expr(C::Status, Expr::value(MessageStatus::Failed.as_str()))
        .col_expr(C::Error, Expr::value(reason))
        .col_expr(
            C::ErrorCode,
            Expr::value(code.and_then(|c| i32::try_from(c).ok())),
        )
        .col_expr(
            C::StatusHistory,
            Expr::value(push_history(
                &m.status_history,
                history_entry(MessageStatus::Failed, now, Some(reason)),
            )),
        )
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.eq(m.id))
        .filter(C::Status.eq(MessageStatus::Queued))
        .exec(&state.db)
        .await?;
    Ok(())
}

fn internal(e: Error) -> JobError {
    // Database trouble may pass.
    JobError::retryable(e)
}

/// The `message_sending` job for one message; see the module docs.
pub async fn deliver(state: &AppState, job: &JobInfo, message_id: Uuid) -> Result<Value, JobError> {
    let Some(m) = Messages::find_by_id(message_id)
        .one(&state.db)
        .await
        .map_err(|e| internal(e.into()))?
    else {
        return Ok(json!({ "skipped": "message not found" }));
    };
    if m.status != MessageStatus::Queued || m.direction != MessageDirection::Outbound {
        return Ok(json!({ "skipped": format!("message is {}", m.status.as_str()) }));
    }
    if m.attempts >= MAX_SEND_ATTEMPTS {
        // The last call's own error, else what ended its job run (a timeout, a lost worker).
        let last = m.error.clone().or_else(|| job.last_error.clone());
        let reason = format!(
            "gave up after {} attempts: {}",
            m.attempts,
            last.as_deref().unwrap_or("no outcome recorded")
        );
        mark_failed(state, &m, &reason, None)
            .await
            .map_err(internal)?;
        return Err(JobError::permanent(reason));
    }
    let transport = transport_for(state, &m.merchant_id)
        .await
        .map_err(internal)?;
    let attempt = m.attempts + 1;
    Messages::update_many()
        .col_expr(C::Attempts, Expr::value(attempt))
        .filter(C::Id.eq(m.id))
        .exec(&state.db)
        .await
        .map_err(|e| internal(e.into()))?;
    let outcome = match &transport {
        Transport::Recording => Ok(None),
        Transport::CloudApi(creds) => state.whatsapp.send(creds, &m.payload).await,
    };
    match outcome {
        Ok(wamid) => mark_sent(state, &m, wamid, &transport)
            .await
            .map_err(internal),
        Err(SendError::Final { reason, code }) => {
            mark_failed(state, &m, &reason, code)
                .await
                .map_err(internal)?;
            Err(JobError::permanent(reason))
        }
        Err(SendError::Retryable {
            reason,
            code,
            retry_after,
        }) => {
            let last_try = attempt >= MAX_SEND_ATTEMPTS || job.on_last_attempt();
            if last_try {
                let reason = format!("gave up after {attempt} attempts: {reason}");
                mark_failed(state, &m, &reason, code)
                    .await
                    .map_err(internal)?;
                return Err(JobError::permanent(reason));
            }
            Messages::update_many()
                .col_expr(C::Error, Expr::value(reason.clone()))
                .col_expr(
                    C::ErrorCode,
                    Expr::value(code.and_then(|c| i32::try_from(c).ok())),
                )
                .col_expr(C::UpdatedAt, Expr::value(crate::db::now()))
                .filter(C::Id.eq(m.id))
                .exec(&state.db)
                .await
                .map_err(|e| internal(e.into()))?;
            match retry_after {
                Some(delay) => {
                    // The continuation runs exactly `Retry-After` from now; its id is unique per
                    // attempt, so a redelivered job schedules it once.
                    let mut opts =
                        job_options(state, format!("msg-{}-{attempt}", m.id), job.priority);
                    opts.delay_ms = Some(delay.as_millis() as u64);
                    state
                        .queue
                        .queue_message_sending(
                            &m.customer_phone,
                            json!({ "messageId": m.id, "merchantId": m.merchant_id }),
                            &opts,
                        )
                        .await
                        .map_err(internal)?;
                    Ok(
                        json!({ "rescheduled": true, "retryAfterMs": delay.as_millis() as u64, "reason": reason }),
                    )
                }
                None => Err(JobError::retryable(reason)),
            }
        }
    }
}

/// `message(id)`: an outbound or inbound message with its status history.
pub async fn get(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<message::Model> {
    scope::one_writable::<Messages, _>(db, &ctx.actor, Condition::all().add(C::Id.eq(id))).await
}

/// `messages(merchantId, direction, first, after)`, or with `recorded_only` the `outbox`: what
/// the recording transport kept. Newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
    direction: Option<MessageDirection>,
    recorded_only: bool,
    page: &PageArgs,
) -> Result<Page<message::Model>> {
    let pager = page.newest_first(CURSOR_KIND)?;
    let scope = ctx.actor.merchant_scope(merchant_id)?;
    let mut cond = Messages::scope_condition(&scope);
    if let Some(d) = direction {
        cond = cond.add(C::Direction.eq(d));
    }
    if recorded_only {
        cond = cond
            .add(C::Direction.eq(MessageDirection::Outbound))
            .add(C::Transport.eq("recording"));
    }
    pager.fetch(db, Messages::find().filter(cond), C::Id).await
}

/// `setWhatsAppCredentials`: a merchant's own number. The token is encrypted at rest and never
/// read back through the API.
pub async fn set_credentials(
    state: &AppState,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
    phone_number_id: &str,
    access_token: &str,
) -> Result<whatsapp_account::Model> {
    let merchant = ctx.actor.owning_merchant(merchant_id)?;
    let phone_number_id = phone_number_id.trim();
    if !valid_phone_number_id(phone_number_id) {
        return Err(Error::validation(
            "phoneNumberId",
            "phoneNumberId must be 1 to 64 digits",
        ));
    }
    let token = access_token.trim();
    if token.is_empty() || token.len() > 2048 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::validation(
            "accessToken",
            "accessToken must be 1 to 2048 printable ASCII characters",
        ));
    }
    // Proof that the token may use the number first, outside any transaction: whether a number
    // is taken is told only to a caller Meta lets use it (else any merchant could probe which
    // numbers are registered here, the platform's among them).
    state
        .whatsapp
        .verify_number(&super::client::Credentials {
            phone_number_id: phone_number_id.to_owned(),
            token: token.to_owned(),
        })
        .await?;
    let sealed = state.cipher.encrypt(token)?;
    let now = crate::db::now();
    let txn = crate::db::begin_write(&state.db).await?;
    // Inside the transaction, so two merchants cannot both claim it.
    let taken = Accounts::find()
        .filter(whatsapp_account::Column::PhoneNumberId.eq(phone_number_id))
        .filter(whatsapp_account::Column::MerchantId.ne(merchant.as_str()))
        .count(&txn)
        .await?;
    if taken > 0 || state.config.whatsapp.phone_number_id.as_deref() == Some(phone_number_id) {
        return Err(Error::Conflict(
            "that phone number id belongs to another merchant".into(),
        ));
    }
    Accounts::insert(whatsapp_account::ActiveModel {
        merchant_id: Set(merchant.as_str().to_owned()),
        phone_number_id: Set(phone_number_id.to_owned()),
        access_token: Set(sealed),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(whatsapp_account::Column::MerchantId)
            .update_columns([
                whatsapp_account::Column::PhoneNumberId,
                whatsapp_account::Column::AccessToken,
                whatsapp_account::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "whatsapp.set_credentials",
            target_type: "whatsapp_account",
            target_id: merchant.as_str().to_owned(),
            merchant_id: Some(merchant.as_str().to_owned()),
            before: None,
            after: Some(json!({ "phoneNumberId": phone_number_id })),
        },
    )
    .await?;
    let model = Accounts::find_by_id(merchant.as_str().to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| Error::internal("credentials vanished inside their transaction"))?;
    txn.commit().await?;
    Ok(model)
}

/// The merchant an inbound webhook's `phone_number_id` belongs to.
pub async fn merchant_for_number<Db: ConnectionTrait>(
    db: &Db,
    config: &super::WhatsAppConfig,
    phone_number_id: &str,
) -> Result<Option<MerchantId>> {
    if let Some(a) = Accounts::find()
        .filter(whatsapp_account::Column::PhoneNumberId.eq(phone_number_id))
        .one(db)
        .await?
    {
        return Ok(Some(MerchantId::parse("merchantId", &a.merchant_id)?));
    }
    if config.phone_number_id.as_deref() == Some(phone_number_id) {
        return Ok(Some(MerchantId::parse("merchantId", &config.merchant_id)?));
    }
    Ok(None)
}
