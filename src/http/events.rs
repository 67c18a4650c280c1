//! `POST /api/events`: the seed's `handleWebhookEvent(type, payload, merchantId)` for the Node bot
//! process, with the seed's body `{"event_type", "payload", "merchant_id"}` (camelCase works too).

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, rest::JsonBody};
use crate::{AppState, error::Result, events::EventType, graphql::events::require_trusted};

#[derive(Deserialize)]
struct EmitBody {
    #[serde(alias = "eventType", alias = "type")]
    event_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default, alias = "merchantId")]
    merchant_id: Option<String>,
}

async fn emit(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(body): JsonBody<EmitBody>,
) -> Result<impl IntoResponse> {
    require_trusted(&ctx.actor)?;
    let kind = EventType::parse_field(&body.event_type, "event_type")?;
    let merchant = ctx.actor.owning_merchant(body.merchant_id.as_deref())?;
    let event = state.events.emit(kind, &merchant, body.payload).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "event": event })),
    ))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/events", post(emit))
}
