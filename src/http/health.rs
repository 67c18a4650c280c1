//! `/health` (the process is alive), `/ready` (its dependencies answer) and `/metrics`
//! (Prometheus text, served from memory; optionally behind `METRICS_TOKEN`).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{AppState, error::Error};

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

/// How long `/ready` waits for its dependencies. A database or Redis that does not answer
/// made it wait out their own timeouts (10 s, 5 s), past a readiness probe's usual 1–5 s: the
/// probe saw a timeout where it should see 503.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let late = |what: &str| Error::Unavailable(format!("{what} did not answer within 2 s"));
    // The checks run at once, each within READY_WITHIN.
    let (database, backend) = tokio::join!(
        tokio::time::timeout(READY_WITHIN, crate::db::ping(&state.db)),
        tokio::time::timeout(READY_WITHIN, state.queue.backend().readiness()),
    );
    let database = check(
        "database",
        database.unwrap_or_else(|_| Err(late("the database"))),
    );
    let mut checks = json!({ "database": database });
    let mut ok = database == "ok";
    // Whatever else the queue backend depends on, each check named by the backend itself.
    let kind = state.queue.backend().kind();
    let backend = backend.unwrap_or_else(|_| vec![(kind, Err(late("the queue backend")))]);
    for (name, result) in backend {
        let answer = check(name, result);
        ok &= answer == "ok";
        checks[name] = json!(answer);
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

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let given = super::authorization(&headers)
            .ok()
            .flatten()
            .and_then(crate::auth::token::bearer)
            .unwrap_or("");
        if !same(given.trim().as_bytes(), token.as_bytes()) {
            return Error::Unauthenticated(
                "metrics need `Authorization: Bearer <METRICS_TOKEN>`".into(),
            )
            .into_response();
        }
    }
    let body = state.queue.metrics().render(state.queue.backend()).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
