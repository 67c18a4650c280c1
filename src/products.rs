//! `updateProduct`: the catalogue lives with the bot (it is not stored here), but a change to it
//! is an event like any other. Trusted callers (the bot's service token, admins) report what
//! changed; `product_updated` carries it to subscribers and webhooks, and the audit log keeps it.

use serde_json::{Value, json};

use crate::{
    AppState, audit,
    auth::{Actor, RequestContext},
    error::{Error, Result},
    events::{self, Event, EventType},
};

/// The largest `changes` object, as JSON text.
pub const MAX_CHANGES_BYTES: usize = 8 * 1024;

/// Emits `product_updated` with `change: "details"` and the caller's `changes`.
pub async fn update(
    state: &AppState,
    ctx: &RequestContext,
    merchant_id: &str,
    product_id: &str,
    changes: Value,
) -> Result<Event> {
    ctx.actor.require_authenticated()?;
    if !matches!(ctx.actor, Actor::Service { .. } | Actor::Admin { .. }) {
        return Err(Error::Forbidden(
            "updateProduct is for trusted callers (service or admin tokens)".into(),
        ));
    }
    let merchant = ctx.actor.owning_merchant(Some(merchant_id))?;
    let product_id = product_id.trim();
    if product_id.is_empty()
        || product_id.chars().count() > 128
        || product_id.chars().any(char::is_control)
    {
        return Err(Error::validation(
            "productId",
            "productId must be 1 to 128 printable characters",
        ));
    }
    match &changes {
        Value::Object(m) if !m.is_empty() => {}
        _ => {
            return Err(Error::validation(
                "changes",
                "changes must be a non-empty JSON object",
            ));
        }
    }
    if changes.to_string().len() > MAX_CHANGES_BYTES {
        return Err(Error::validation(
            "changes",
            format!("changes must be at most {MAX_CHANGES_BYTES} bytes of JSON"),
        ));
    }
    let txn = crate::db::begin_write(&state.db).await?;
    let event = events::service::record(
        &txn,
        EventType::ProductUpdated,
        &merchant,
        json!({ "productId": product_id, "change": "details", "changes": changes }),
    )
    .await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "product.update",
            target_type: "product",
            target_id: product_id.to_owned(),
            merchant_id: Some(merchant.into_string()),
            before: None,
            after: Some(changes),
        },
    )
    .await?;
    txn.commit().await?;
    state.events.publish(event.clone()).await;
    Ok(event)
}
