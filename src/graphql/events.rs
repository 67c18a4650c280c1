//! Events over GraphQL: the `events` subscription (live, resumable with `after`), the
//! `recentEvents` history, and `emitEvent` for trusted callers (the Node bot posts its events
//! here). Scope comes from the caller: a merchant sees only its own merchant's events.

use std::sync::Arc;

use async_graphql::{Context, ID, Json, Object, Subscription, connection::Connection};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::{audit::CountFields, connection, parse_id, req};
use crate::{
    auth::Actor,
    error::Error,
    events::{Event, EventData, EventType, service::Events},
    pagination::PageArgs,
};

/// One event: the envelope, the raw `payload`, and the typed `data`. Shared: a live event
/// reaches every subscriber as the same allocation.
pub struct EventNode(pub Arc<Event>);

impl From<Event> for EventNode {
    fn from(e: Event) -> Self {
        Self(Arc::new(e))
    }
}

#[Object(name = "Event")]
impl EventNode {
    /// Time-ordered (UUIDv7): pass the last one received as `after` to resume with exactly the
    /// events that committed after it.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> EventType {
        self.0.kind
    }
    async fn merchant_id(&self) -> ID {
        ID(self.0.merchant_id.clone())
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    /// The payload as JSON (camelCase fields, amounts in minor units).
    async fn payload(&self) -> Json<Value> {
        Json(self.0.payload.clone())
    }
    /// The payload typed by event type (one object type per event type).
    async fn data(&self) -> Option<EventData> {
        // Validated when it was emitted: only typed here.
        EventData::parse(self.0.kind, &self.0.payload).ok()
    }
}

fn parse_after(after: Option<ID>) -> async_graphql::Result<Option<uuid::Uuid>> {
    Ok(after.map(|a| parse_id(&a, "after")).transpose()?)
}

#[derive(Default)]
pub struct EventQuery;

#[Object]
impl EventQuery {
    /// The event history, newest first in commit order (the order `events` delivers in): the
    /// same history `events(after:)` replays.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn recent_events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<EventType>>,
        merchant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, EventNode, CountFields>> {
        let (state, rc) = req(ctx);
        let scope = rc
            .actor
            .merchant_scope(merchant_id.as_ref().map(|m| m.as_str()))?;
        let page = state
            .events
            .recent(
                &scope,
                &types.unwrap_or_default(),
                &PageArgs {
                    first,
                    after: after.clone(),
                },
            )
            .await?;
        Ok(connection(
            page,
            after.is_some(),
            Events::cursor,
            EventNode::from,
        ))
    }
}

#[derive(Default)]
pub struct EventMutation;

#[Object]
impl EventMutation {
    /// Emits an event (service and admin tokens): validated per type, stored, then streamed.
    async fn emit_event(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "type")] kind: EventType,
        merchant_id: Option<ID>,
        payload: Json<Value>,
    ) -> async_graphql::Result<EventNode> {
        let (state, rc) = req(ctx);
        require_trusted(&rc.actor)?;
        let merchant = rc
            .actor
            .owning_merchant(merchant_id.as_ref().map(|m| m.as_str()))?;
        Ok(state.events.emit(kind, &merchant, payload.0).await?.into())
    }
}

/// Emitting is for the platform's own processes (service) and admins.
pub fn require_trusted(actor: &Actor) -> crate::error::Result<()> {
    actor.require_authenticated()?;
    match actor {
        Actor::Admin { .. } | Actor::Service { .. } => Ok(()),
        _ => Err(Error::Forbidden(
            "emitting events requires a service or admin token".into(),
        )),
    }
}

#[derive(Default)]
pub struct EventSubscription;

#[Subscription]
impl EventSubscription {
    /// Every event the caller may see, live, in commit order. With `after` (an event id), first
    /// replays every event that committed after it from the history, then continues live with no
    /// gap and no duplicate. Ends with
    /// HISTORY_EXPIRED when `after` is older than the history, and LAGGED when this subscriber
    /// fell too far behind (resume with `after`).
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<EventType>>,
        merchant_id: Option<ID>,
        after: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<EventNode>>> {
        let (state, rc) = req(ctx);
        let scope = rc
            .actor
            .merchant_scope(merchant_id.as_ref().map(|m| m.as_str()))?;
        let after = parse_after(after)?;
        let stream = state.events.stream(scope, types.unwrap_or_default(), after);
        Ok(stream.map(|r| r.map(EventNode).map_err(async_graphql::Error::from)))
    }
}
