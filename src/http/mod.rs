//! HTTP routes and the middleware every request passes through: request id, tracing, body limit,
//! per-IP rate limit, panic catching and CORS. Handlers are thin; they call domain services.

pub mod explorer;
pub mod graphql;
pub mod health;
pub mod media;
pub mod rest;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderName, Method, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::CorsLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{AppState, auth::RequestContext, error::Error};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's IP: the socket peer, or the first X-Forwarded-For hop when TRUST_PROXY is set.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

fn client_ip(parts: &Parts, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Resolves the client IP once and applies the rate limit. A limited GraphQL request gets the
/// GraphQL error shape; everything else the REST shape. Both answer 429 with Retry-After.
async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let ip = client_ip(&parts, state.config.trust_proxy);
    parts.extensions.insert(ClientIp(ip));
    let exempt = matches!(parts.uri.path(), "/health" | "/ready" | "/metrics")
        || parts.uri.path().starts_with("/explorer/")
        || parts.method == Method::OPTIONS;
    if !exempt
        && let Some(ip) = ip
        && let Err(err) = state.rate_limiter.check(ip)
    {
        return if parts.uri.path().starts_with("/graphql") {
            err.into_graphql_response()
        } else {
            err.into_response()
        };
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Refuses a body whose Content-Length is over BODY_LIMIT with PAYLOAD_TOO_LARGE in the API's own
/// shape (GraphQL or REST). `RequestBodyLimitLayer` would answer a bare text/plain 413 here; it still
/// cuts off streamed bodies, which the extractors then report as PAYLOAD_TOO_LARGE.
async fn body_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let too_big = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > state.config.body_limit as u64);
    if too_big {
        let err = Error::PayloadTooLarge(format!(
            "request body is larger than {} bytes",
            state.config.body_limit
        ));
        return if req.uri().path().starts_with("/graphql") {
            err.into_graphql_response()
        } else {
            err.into_response()
        };
    }
    next.run(req).await
}

/// The caller of a REST request. A bad token is rejected (UNAUTHENTICATED), never anonymous.
pub struct Ctx(pub RequestContext);

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Ctx(request_context(parts, state)?))
    }
}

pub(crate) fn request_context(parts: &Parts, state: &AppState) -> Result<RequestContext, Error> {
    let auth = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| {
            v.to_str().map_err(|_| {
                Error::Unauthenticated("Authorization header is not valid text".into())
            })
        })
        .transpose()?;
    let actor = state.keys.actor_from_header(auth)?;
    Ok(RequestContext {
        actor,
        ip: parts
            .extensions
            .get::<ClientIp>()
            .and_then(|c| c.0)
            .or_else(|| client_ip(parts, state.config.trust_proxy)),
        request_id: parts
            .extensions
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .map(str::to_owned),
    })
}

async fn not_found() -> Error {
    Error::NotFound("no such route".into())
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    Router::new()
        .route("/graphql", get(graphql::graphiql_or_ws).post(graphql::graphql_post))
        .route("/graphql/ws", get(graphql::ws))
        .route("/playground", get(explorer::playground))
        .route("/explorer/assets/{name}", get(explorer::asset))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(rest::router())
        .merge(media::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), self::body_limit))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| Error::Internal("handler panicked".into()).into_response()))
        .layer(CorsLayer::permissive().max_age(Duration::from_secs(3600)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(tower_http::LatencyUnit::Millis)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
