//! Bot presence and product changes over GraphQL: thin adapters over `bots` and `products`.

use async_graphql::{Context, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{events::EventNode, req};
use crate::{bots, products};
use entity::bot_status;

#[derive(SimpleObject)]
pub struct BotStatus {
    pub merchant_id: String,
    pub connected: bool,
    pub reason: Option<String>,
    /// The last report; null when the bot never reported.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// When `connected` last changed.
    pub changed_at: Option<DateTime<Utc>>,
}

impl From<bot_status::Model> for BotStatus {
    fn from(m: bot_status::Model) -> Self {
        let known = |t: DateTime<Utc>| (t != DateTime::<Utc>::UNIX_EPOCH).then_some(t);
        BotStatus {
            merchant_id: m.merchant_id,
            connected: m.connected,
            reason: m.reason,
            last_seen_at: known(m.last_seen_at),
            changed_at: known(m.changed_at),
        }
    }
}

#[derive(Default)]
pub struct BotQuery;

#[Object]
impl BotQuery {
    /// Whether the merchant's bot is online (a bot that never reported is offline).
    async fn bot_status(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<BotStatus> {
        let (state, rc) = req(ctx);
        Ok(bots::get(&state.db, rc, merchant_id.as_deref())
            .await?
            .into())
    }
}

#[derive(Default)]
pub struct BotMutation;

#[Object]
impl BotMutation {
    /// The bot's heartbeat (service token). Emits `bot_connected` / `bot_disconnected` on a change.
    async fn report_bot_status(
        &self,
        ctx: &Context<'_>,
        merchant_id: String,
        connected: bool,
        reason: Option<String>,
    ) -> async_graphql::Result<BotStatus> {
        let (state, rc) = req(ctx);
        Ok(bots::report(state, rc, &merchant_id, connected, reason)
            .await?
            .into())
    }

    /// A product changed in the bot's catalogue (service or admin): emits `product_updated`.
    async fn update_product(
        &self,
        ctx: &Context<'_>,
        merchant_id: String,
        product_id: String,
        changes: Json<Value>,
    ) -> async_graphql::Result<EventNode> {
        let (state, rc) = req(ctx);
        Ok(
            products::update(state, rc, &merchant_id, &product_id, changes.0)
                .await?
                .into(),
        )
    }
}
