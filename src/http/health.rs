//! `/health` (the process is alive), `/ready` (its dependencies answer) and `/metrics`
//! (Prometheus text).

use axum::{Json, extract::State, http::StatusCode, http::header, response::IntoResponse};
use serde_json::json;

use crate::AppState;

pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

fn check(name: &str, r: crate::error::Result<()>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(dependency = name, error = %e, "readiness check failed");
            "unavailable"
        }
    }
}

pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = check("database", crate::db::ping(&state.db).await);
    let backend = state.queue.backend();
    let mut checks = json!({ "database": database });
    let mut ok = database == "ok";
    if backend.kind() == "redis" {
        let redis = check("redis", backend.ping().await);
        ok &= redis == "ok";
        checks["redis"] = json!(redis);
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ok { "ready" } else { "unavailable" }, "checks": checks })),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = crate::queue::metrics::global()
        .render(state.queue.backend().as_ref())
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
