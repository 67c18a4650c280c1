//! `GET /webhooks/whatsapp` (Meta's verification handshake) and `POST /webhooks/whatsapp` (signed
//! deliveries). Thin: the checks and the processing live in `whatsapp::inbound`. Not rate limited
//! per IP (Meta's senders are few and busy); the signature is the gate.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::Query;
use crate::{AppState, error::Error, whatsapp::inbound};

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/whatsapp", get(verify).post(receive))
}

/// Answers `hub.challenge` when `hub.mode=subscribe` and `hub.verify_token` matches.
async fn verify(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let expected = state.config.whatsapp.verify_token.as_deref();
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && match (expected, q.get("hub.verify_token")) {
            (Some(e), Some(given)) => inbound::same_secret(e, given),
            _ => false,
        };
    match (ok, q.get("hub.challenge")) {
        (true, Some(challenge)) if challenge.len() <= 256 => {
            (StatusCode::OK, challenge.clone()).into_response()
        }
        _ => Error::Forbidden("verification failed".into()).into_response(),
    }
}

/// Verifies `X-Hub-Signature-256` over the raw body, then processes it.
async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if body.len() > inbound::MAX_BODY_BYTES {
        return Error::PayloadTooLarge("webhook body is too large".into()).into_response();
    }
    let Some(secret) = state.config.whatsapp.app_secret.as_deref() else {
        return Error::Unauthenticated(
            "inbound webhooks are not configured (WHATSAPP_APP_SECRET is unset)".into(),
        )
        .into_response();
    };
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !inbound::verify_signature(secret, &body, sig) {
        return Error::Unauthenticated("bad or missing X-Hub-Signature-256".into()).into_response();
    }
    match inbound::process(&state, &body).await {
        Ok(summary) => (
            StatusCode::OK,
            Json(json!({ "success": true, "summary": summary })),
        )
            .into_response(),
        // Internal trouble answers 500 so Meta redelivers; the dedupe makes that safe.
        Err(e) => e.into_response(),
    }
}
