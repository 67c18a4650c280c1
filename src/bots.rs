//! Bot presence: whether each merchant's WhatsApp bot is online.
//!
//! The bot reports with a service token (`reportBotStatus`); `bot_connected` / `bot_disconnected`
//! are emitted only when `connected` flips, and a first report of "disconnected" is no change (an
//! unknown bot counts as offline). A bot that stops reporting for `BOT_STALE_AFTER` is marked
//! disconnected by a sweep that every instance runs. The flip is a conditional
//! `UPDATE … WHERE connected AND last_seen_at < cutoff`, and only the instance whose UPDATE
//! changed the row records the event, in the same transaction: exactly one instance emits.

use std::time::Duration;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, OnConflict},
};
use serde_json::json;

use crate::{
    AppState,
    auth::{Actor, MerchantId, RequestContext},
    error::{Error, Result},
    events::{self, Event, EventType},
};
use entity::bot_status::{self, Column as C, Entity as Bots};

/// What `botStatus` answers for a merchant whose bot never reported.
pub fn unknown(merchant: &MerchantId) -> bot_status::Model {
    bot_status::Model {
        merchant_id: merchant.as_str().to_owned(),
        connected: false,
        reason: None,
        last_seen_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        changed_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
    }
}

fn check_reason(reason: Option<String>) -> Result<Option<String>> {
    match reason {
        Some(r) if r.chars().count() > 256 || r.chars().any(char::is_control) => Err(
            Error::validation("reason", "reason must be at most 256 printable characters"),
        ),
        other => Ok(other.filter(|r| !r.trim().is_empty())),
    }
}

async fn flip_event<Db: ConnectionTrait>(
    db: &Db,
    merchant: &MerchantId,
    connected: bool,
    reason: Option<&str>,
) -> Result<Event> {
    let kind = if connected {
        EventType::BotConnected
    } else {
        EventType::BotDisconnected
    };
    events::service::record(db, kind, merchant, json!({ "reason": reason })).await
}

/// `reportBotStatus(merchantId, connected, reason)`: service (or admin) callers only.
pub async fn report(
    state: &AppState,
    ctx: &RequestContext,
    merchant_id: &str,
    connected: bool,
    reason: Option<String>,
) -> Result<bot_status::Model> {
    ctx.actor.require_authenticated()?;
    if !matches!(ctx.actor, Actor::Service { .. } | Actor::Admin { .. }) {
        return Err(Error::Forbidden(
            "bot status is reported with a service token".into(),
        ));
    }
    let merchant = MerchantId::parse("merchantId", merchant_id)?;
    let reason = check_reason(reason)?;
    let now = crate::db::now();
    let txn = crate::db::begin_write(&state.db).await?;
    // Flip only when it differs: the UPDATE decides, so concurrent reports emit once.
    let flipped = Bots::update_many()
        .col_expr(C::Connected, Expr::value(connected))
        .col_expr(C::Reason, Expr::value(reason.clone()))
        .col_expr(C::LastSeenAt, Expr::value(now))
        .col_expr(C::ChangedAt, Expr::value(now))
        .filter(C::MerchantId.eq(merchant.as_str()))
        .filter(C::Connected.ne(connected))
        .exec(&txn)
        .await?
        .rows_affected
        == 1;
    let mut event = None;
    if flipped {
        event = Some(flip_event(&txn, &merchant, connected, reason.as_deref()).await?);
    } else {
        let seen = Bots::update_many()
            .col_expr(C::LastSeenAt, Expr::value(now))
            .filter(C::MerchantId.eq(merchant.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if seen == 0 {
            let inserted = Bots::insert(bot_status::ActiveModel {
                merchant_id: Set(merchant.as_str().to_owned()),
                connected: Set(connected),
                reason: Set(reason.clone()),
                last_seen_at: Set(now),
                changed_at: Set(now),
            })
            .on_conflict(OnConflict::column(C::MerchantId).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
            // Unknown counts as offline: only a first "connected" is a change.
            if inserted == 1 && connected {
                event = Some(flip_event(&txn, &merchant, true, reason.as_deref()).await?);
            }
        }
    }
    let model = Bots::find_by_id(merchant.as_str().to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| Error::internal("bot status vanished inside its transaction"))?;
    txn.commit().await?;
    if let Some(e) = event {
        state.events.publish(e).await;
    }
    Ok(model)
}

/// `botStatus(merchantId)`, scoped like every read.
pub async fn get(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<&str>,
) -> Result<bot_status::Model> {
    let merchant = ctx.actor.owning_merchant(merchant_id)?;
    Ok(Bots::find_by_id(merchant.as_str().to_owned())
        .one(db)
        .await?
        .unwrap_or_else(|| unknown(&merchant)))
}

/// Marks bots silent for longer than `stale_after` disconnected; returns how many this instance
/// flipped (and so emitted for).
pub async fn sweep_stale(state: &AppState, stale_after: Duration) -> Result<usize> {
    let cutoff =
        crate::db::now() - chrono::Duration::from_std(stale_after).map_err(Error::internal)?;
    let candidates: Vec<String> = Bots::find()
        .select_only()
        .column(C::MerchantId)
        .filter(C::Connected.eq(true))
        .filter(C::LastSeenAt.lt(cutoff))
        .limit(500)
        .into_tuple()
        .all(&state.db)
        .await?;
    let reason = format!(
        "no report for {}",
        humantime::format_duration(Duration::from_secs(stale_after.as_secs().max(1)))
    );
    let mut flipped = 0;
    for merchant_id in candidates {
        let Ok(merchant) = MerchantId::parse("merchantId", &merchant_id) else {
            continue;
        };
        let txn = crate::db::begin_write(&state.db).await?;
        let changed = Bots::update_many()
            .col_expr(C::Connected, Expr::value(false))
            .col_expr(C::Reason, Expr::value(reason.clone()))
            .col_expr(C::ChangedAt, Expr::value(crate::db::now()))
            .filter(C::MerchantId.eq(merchant.as_str()))
            .filter(C::Connected.eq(true))
            .filter(C::LastSeenAt.lt(cutoff))
            .exec(&txn)
            .await?
            .rows_affected;
        if changed == 1 {
            let event = flip_event(&txn, &merchant, false, Some(&reason)).await?;
            txn.commit().await?;
            state.events.publish(event).await;
            flipped += 1;
        }
    }
    Ok(flipped)
}

/// Runs [`sweep_stale`] every quarter of `stale_after` (at least every second) until dropped.
pub fn spawn_sweeper(state: AppState, stale_after: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = (stale_after / 4).max(Duration::from_millis(250));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep_stale(&state, stale_after).await {
                tracing::warn!(error = %e, "bot staleness sweep failed");
            }
        }
    })
}
