//! `/health` (the process is alive) and `/ready` (its dependencies answer).

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::AppState;

pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = match crate::db::ping(&state.db).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            "unavailable".to_owned()
        }
    };
    let ok = database == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "status": if ok { "ready" } else { "unavailable" }, "checks": { "database": database } }),
        ),
    )
}
