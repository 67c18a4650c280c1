//! The inbound webhook from Meta: the verification handshake, the signature, and the payload.
//!
//! * The signature is `sha256=<hex HMAC-SHA256 of the raw body, keyed with WHATSAPP_APP_SECRET>`,
//!   checked in constant time (`hmac`'s `verify_slice`) before the body is parsed at all. A bad or
//!   missing one is refused and nothing is stored or emitted.
//! * Parsing tolerates what it does not know (fields, change kinds, message types) and keeps any
//!   message type raw; it is strict only about the signature.
//! * Messages become inbound `messages` rows and `message_received` events. The row insert is
//!   `ON CONFLICT (merchant_id, provider_message_id) DO NOTHING` and the event is recorded only when
//!   the row was new, in the same transaction: Meta's redeliveries are processed once.
//! * Statuses (sent, delivered, read, failed) are appended to the outbound message's history (once
//!   each) and move its status forward, never back (a late `sent` after `read` stays in the history).
//! * `metadata.phone_number_id` picks the merchant; an unknown number's entries are skipped.

use hmac::{Hmac, Mac};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, OnConflict},
};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use super::{
    parse_phone,
    service::{merchant_for_number, push_history},
};
use crate::{
    AppState,
    auth::MerchantId,
    error::{Error, Result},
    events::{self, EventType},
};
use entity::{
    MessageDirection, MessageStatus,
    message::{self, Column as C, Entity as Messages},
};

/// The largest webhook body read (Meta batches up to about a thousand small updates).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Raw message objects above this size are kept in the row but left out of the event.
const MAX_RAW_IN_EVENT: usize = 8 * 1024;

/// Checks `X-Hub-Signature-256` against the raw body, in constant time.
pub fn verify_signature(app_secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Constant-time equality for the verify token.
pub fn same_secret(a: &str, b: &str) -> bool {
    use hmac::digest::Digest;
    // Comparing digests keeps the time independent of where the strings differ and of length.
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What one webhook delivery did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub received: usize,
    pub duplicates: usize,
    pub statuses: usize,
    /// Entries for a phone number no merchant owns.
    pub skipped: usize,
    /// Messages that cannot be stored: no id, an id over 256 characters, a sender that is not
    /// E.164; and changes whose `phone_number_id` is not a string. Logged and acknowledged
    /// (Meta would only send them again), never counted as duplicates.
    pub invalid: usize,
}

/// What became of one inbound message.
enum Stored {
    /// Stored; its `message_received` payload, recorded once the batch's rows are written.
    Received(Value),
    Duplicate,
    Invalid,
}

fn status_rank(s: MessageStatus) -> u8 {
    match s {
        MessageStatus::Queued => 0,
        MessageStatus::Sent => 1,
        MessageStatus::Delivered => 2,
        MessageStatus::Read => 3,
        MessageStatus::Failed | MessageStatus::Received => 0,
    }
}

/// The status an update moves a message to: forward only; FAILED only before delivery.
pub fn next_status(current: MessageStatus, update: MessageStatus) -> MessageStatus {
    match update {
        MessageStatus::Failed if status_rank(current) < 2 && current != MessageStatus::Failed => {
            MessageStatus::Failed
        }
        MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read
            if current != MessageStatus::Failed && status_rank(update) > status_rank(current) =>
        {
            update
        }
        _ => current,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `message_received`'s payload for one Cloud API message object.
fn received_payload(row_id: Uuid, from: &str, m: &Value) -> Value {
    let kind = m["type"].as_str().unwrap_or("unknown");
    let mut p = json!({
        "messageId": row_id.to_string(),
        "from": from,
        "providerMessageId": m["id"],
    });
    let (message_type, text, reply_id): (&str, Option<&Value>, Option<&Value>) = match kind {
        "text" => ("text", Some(&m["text"]["body"]), None),
        // A quick-reply button of a template message.
        "button" => (
            "button",
            Some(&m["button"]["text"]),
            Some(&m["button"]["payload"]),
        ),
        "interactive" => match m["interactive"]["type"].as_str() {
            Some("button_reply") => (
                "button",
                Some(&m["interactive"]["button_reply"]["title"]),
                Some(&m["interactive"]["button_reply"]["id"]),
            ),
            Some("list_reply") => (
                "list_reply",
                Some(&m["interactive"]["list_reply"]["title"]),
                Some(&m["interactive"]["list_reply"]["id"]),
            ),
            _ => ("interactive", None, None),
        },
        "image" => {
            p["mediaId"] = m["image"]["id"].clone();
            ("image", Some(&m["image"]["caption"]), None)
        }
        other => (other, None, None),
    };
    // What a customer typed is kept as typed, made fit for the event's rules: a control
    // character (a stray bell, an escape) becomes U+FFFD rather than failing Meta's whole batch.
    let printable = |s: &str, max| crate::input::printable_text(&truncate(s, max)).into_owned();
    p["messageType"] = json!(printable(message_type, 32));
    if let Some(t) = text.and_then(Value::as_str) {
        p["text"] = json!(printable(t, 4096));
    }
    if let Some(r) = reply_id.and_then(Value::as_str) {
        p["replyId"] = json!(truncate(r, 256));
    }
    if !matches!(kind, "text" | "button" | "image") && m.to_string().len() <= MAX_RAW_IN_EVENT {
        p["raw"] = m.clone();
    }
    p
}

async fn store_message<Db: ConnectionTrait>(
    db: &Db,
    merchant: &MerchantId,
    m: &Value,
) -> Result<Stored> {
    let (Some(wamid), Some(from)) = (m["id"].as_str(), m["from"].as_str()) else {
        tracing::warn!("inbound message without an id or a sender; skipped");
        return Ok(Stored::Invalid);
    };
    if wamid.trim().is_empty() || wamid.len() > 256 || wamid.chars().any(char::is_control) {
        tracing::warn!(
            len = wamid.len(),
            "inbound message whose id is blank, over 256 characters or not printable; skipped"
        );
        return Ok(Stored::Invalid);
    }
    let Ok(from) = parse_phone("from", from) else {
        tracing::warn!(
            from,
            "inbound message from a number that is not E.164; skipped"
        );
        return Ok(Stored::Invalid);
    };
    let now = crate::db::now();
    let id = Uuid::now_v7();
    let inserted = Messages::insert(message::ActiveModel {
        id: Set(id),
        merchant_id: Set(merchant.as_str().to_owned()),
        direction: Set(MessageDirection::Inbound),
        customer_phone: Set(from.clone()),
        message_type: Set(crate::input::printable_text(&truncate(
            m["type"].as_str().unwrap_or("unknown"),
            32,
        ))
        .into_owned()),
        template_id: Set(None),
        payload: Set(m.clone()),
        status: Set(MessageStatus::Received),
        status_history: Set(json!([{ "status": "RECEIVED", "at": now.to_rfc3339() }])),
        provider_message_id: Set(Some(wamid.to_owned())),
        idempotency_key: Set(None),
        transport: Set(None),
        attempts: Set(0),
        error: Set(None),
        error_code: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([C::MerchantId, C::ProviderMessageId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if inserted == 0 {
        return Ok(Stored::Duplicate);
    }
    Ok(Stored::Received(received_payload(id, &from, m)))
}

/// Applies one status update; `false` when it changed nothing (unknown message, or a repeat).
async fn apply_status<Db: ConnectionTrait>(
    db: &Db,
    merchant: &MerchantId,
    s: &Value,
) -> Result<bool> {
    let (Some(wamid), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else {
        return Ok(false);
    };
    let Ok(update) = status.parse::<MessageStatus>() else {
        return Ok(false);
    };
    if !matches!(
        update,
        MessageStatus::Sent
            | MessageStatus::Delivered
            | MessageStatus::Read
            | MessageStatus::Failed
    ) {
        return Ok(false);
    }
    let mut q = Messages::find()
        .filter(C::MerchantId.eq(merchant.as_str()))
        .filter(C::ProviderMessageId.eq(wamid))
        .filter(C::Direction.eq(MessageDirection::Outbound));
    // Two deliveries for one message at once must not lose an entry (SQLite's single writer
    // already serializes them).
    if db.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    let Some(m) = q.one(db).await? else {
        return Ok(false);
    };
    let label = update.as_str().to_ascii_uppercase();
    let seen = m.status_history.as_array().is_some_and(|h| {
        h.iter()
            .any(|e| e["status"] == label.as_str() && e["source"] == "webhook")
    });
    if seen {
        return Ok(false);
    }
    let at = s["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .unwrap_or_else(chrono::Utc::now);
    let mut entry = json!({ "status": label, "at": at.to_rfc3339(), "source": "webhook" });
    let err = &s["errors"][0];
    let error_text = err.is_object().then(|| {
        let mut t = format!("code {}", err["code"]);
        for k in ["title", "message"] {
            if let Some(v) = err[k].as_str() {
                t.push_str(": ");
                t.push_str(&truncate(v, 300));
            }
        }
        if let Some(d) = err["error_data"]["details"].as_str() {
            t.push_str(" — ");
            t.push_str(&truncate(d, 300));
        }
        t
    });
    if let Some(t) = &error_text {
        entry["error"] = json!(t);
    }
    let next = next_status(m.status, update);
    let mut upd = Messages::update_many()
        .col_expr(
            C::StatusHistory,
            Expr::value(push_history(&m.status_history, entry)),
        )
        .col_expr(C::Status, Expr::value(next.as_str()))
        .col_expr(C::UpdatedAt, Expr::value(crate::db::now()));
    if next == MessageStatus::Failed && m.status != MessageStatus::Failed {
        upd = upd.col_expr(C::Error, Expr::value(error_text)).col_expr(
            C::ErrorCode,
            Expr::value(err["code"].as_i64().and_then(|c| i32::try_from(c).ok())),
        );
    }
    upd.filter(C::Id.eq(m.id)).exec(db).await?;
    Ok(true)
}

/// The batch read message by message: Meta's envelope (`entry[].changes[].value` with its
/// `metadata`, `messages` and `statuses`) is read with every message and status kept as raw
/// text, and each is then read on its own. One that cannot be read becomes null, which counts
/// it invalid (a message) or skips it (a status); the rest of the batch is processed. `None`
/// when the body is not JSON at all, or not Meta's envelope.
fn per_message(body: &[u8]) -> Option<Value> {
    use serde::Deserialize;
    use serde_json::value::RawValue;
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        object: Option<String>,
        #[serde(default)]
        entry: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        changes: Vec<Change>,
    }
    #[derive(Deserialize)]
    struct Change {
        #[serde(default)]
        field: Option<String>,
        #[serde(default)]
        value: Option<Body>,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        metadata: Option<Box<RawValue>>,
        #[serde(default)]
        messages: Vec<Box<RawValue>>,
        #[serde(default)]
        statuses: Vec<Box<RawValue>>,
    }
    let doc: Doc = crate::input::parse_lossy(body).ok()?;
    let each = |raws: Vec<Box<RawValue>>| -> Value {
        raws.iter()
            .map(|r| crate::input::parse_lossy::<Value>(r.get().as_bytes()).unwrap_or(Value::Null))
            .collect()
    };
    let entry: Vec<Value> = doc
        .entry
        .into_iter()
        .map(|e| {
            let changes: Vec<Value> = e
                .changes
                .into_iter()
                .map(|c| {
                    let value = c.value.map(|v| {
                        serde_json::json!({
                            "metadata": v.metadata
                                .and_then(|m| crate::input::parse_lossy::<Value>(m.get().as_bytes()).ok()),
                            "messages": each(v.messages),
                            "statuses": each(v.statuses),
                        })
                    });
                    serde_json::json!({ "field": c.field, "value": value })
                })
                .collect();
            serde_json::json!({ "changes": changes })
        })
        .collect();
    Some(serde_json::json!({ "object": doc.object, "entry": entry }))
}

/// Processes a verified webhook body: see the module docs. Everything in one transaction;
/// the events are published after it commits.
pub async fn process(state: &AppState, body: &[u8]) -> Result<Summary> {
    // Signed by Meta: a lone surrogate escape in one message's text must not refuse the whole
    // batch (and every redelivery of it). It becomes U+FFFD.
    let mut doc: Value = match crate::input::parse_lossy(body) {
        Ok(doc) => doc,
        // JSON that serde_json reads but cannot hold as one value (a number past f64, nesting
        // past 128 levels) fails the message it is in, not the batch: see [`per_message`].
        Err(e) => per_message(body).ok_or_else(|| {
            Error::validation("body", format!("the webhook body is not JSON: {e}"))
        })?,
    };
    if !doc.is_object() {
        return Err(Error::validation(
            "body",
            "the webhook body must be a JSON object (Meta's `{\"object\", \"entry\": [...]}`)",
        ));
    }
    if !(doc["entry"].is_null() || doc["entry"].is_array()) {
        return Err(Error::validation("entry", "`entry` must be an array"));
    }
    // Signed by Meta, so not the sender's to correct: a NUL (which PostgreSQL cannot store in
    // text, failing the whole batch) is kept as U+FFFD.
    crate::input::scrub_nul(&mut doc);
    let mut summary = Summary::default();
    let mut received = Vec::new();
    let txn = crate::db::begin_write(&state.db).await?;
    let empty = vec![];
    for entry in doc["entry"].as_array().unwrap_or(&empty) {
        for change in entry["changes"].as_array().unwrap_or(&empty) {
            let value = &change["value"];
            // Changes of other fields (account updates, …) carry no number: not ours to count.
            let number = match &value["metadata"]["phone_number_id"] {
                Value::Null => continue,
                Value::String(n) => n.as_str(),
                other => {
                    tracing::warn!(phone_number_id = %other, "webhook change whose phone_number_id is not a string; counted invalid");
                    summary.invalid += 1;
                    continue;
                }
            };
            let Some(merchant) = merchant_for_number(&txn, &state.config.whatsapp, number).await?
            else {
                tracing::warn!(
                    phone_number_id = number,
                    "webhook for a phone number no merchant owns; skipped"
                );
                summary.skipped += 1;
                continue;
            };
            for m in value["messages"].as_array().unwrap_or(&empty) {
                match store_message(&txn, &merchant, m).await? {
                    Stored::Received(payload) => {
                        summary.received += 1;
                        received.push((merchant.clone(), payload));
                    }
                    Stored::Duplicate => summary.duplicates += 1,
                    Stored::Invalid => summary.invalid += 1,
                }
            }
            for s in value["statuses"].as_array().unwrap_or(&empty) {
                if apply_status(&txn, &merchant, s).await? {
                    summary.statuses += 1;
                }
            }
        }
    }
    // The events after every row write: on PostgreSQL recording one takes the event lock until
    // the commit (migration 000011), and nothing after it should wait on a row lock (a message
    // another delivery of the same batch is inserting, say).
    let mut out = Vec::with_capacity(received.len());
    for (merchant, payload) in received {
        out.push(
            events::service::record(&txn, EventType::MessageReceived, &merchant, payload).await?,
        );
    }
    txn.commit().await?;
    for e in out {
        state.events.publish(e).await;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_secret_and_body() {
        // Meta's scheme, computed apart from this module (`printf '{}' | openssl dgst -sha256
        // -hmac s3cret`): `sha256=` and the lowercase hex HMAC-SHA256 of the raw body, keyed
        // with the app secret.
        let known = "sha256=adbde1ce40c89c14215687d5d762a47df6dfaefcfad61e2e86718ffc8498571b";
        assert!(verify_signature("s3cret", b"{}", Some(known)));
        // Hex digits in either case.
        let upper = format!("sha256={}", known["sha256=".len()..].to_uppercase());
        assert!(verify_signature("s3cret", b"{}", Some(&upper)));
        assert!(!verify_signature("other", b"{}", Some(known)));
        assert!(!verify_signature("s3cret", b"{ }", Some(known)));
        assert!(!verify_signature("s3cret", b"{}", None));
        assert!(!verify_signature("s3cret", b"{}", Some("sha256=zz")));
        assert!(!verify_signature(
            "s3cret",
            b"{}",
            Some(known.trim_start_matches("sha256="))
        ));
        assert!(same_secret("a", "a") && !same_secret("a", "b") && !same_secret("a", "aa"));
    }

    #[test]
    fn statuses_move_forward_only() {
        use MessageStatus::*;
        assert_eq!(next_status(Sent, Delivered), Delivered);
        assert_eq!(next_status(Read, Sent), Read);
        assert_eq!(next_status(Sent, Failed), Failed);
        assert_eq!(next_status(Delivered, Failed), Delivered);
        assert_eq!(next_status(Failed, Read), Failed);
    }
}
