//! HTTP routes and the middleware every request passes through: request id, tracing, body limit,
//! per-IP rate limit, panic catching and CORS. Handlers are thin; they call domain services.

pub mod events;
pub mod explorer;
pub mod graphql;
pub mod graphql_ws;
pub mod health;
pub mod media;
pub mod rest;
pub mod serve;
pub mod whatsapp;

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

/// The client's IP: the socket peer, or (with TRUST_PROXY) the address the nearest trusted proxy
/// saw. Resolved once per request by the rate-limit middleware.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

fn client_ip(parts: &Parts, config: &crate::Config) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
    if !config.trust_proxy {
        return Some(peer);
    }
    let hops = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    Some(forwarded_client(peer, hops, &config.trusted_proxies))
}

/// The rightmost hop of `X-Forwarded-For` (then the peer) that is not a trusted proxy: the client
/// writes the left end itself, so only what trusted proxies appended can be believed. With no
/// `trusted` list the direct peer is the one trusted proxy. An unreadable hop ends the walk at the
/// last address a trusted proxy vouched for.
pub fn forwarded_client<'a>(
    peer: IpAddr,
    hops: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !trusted.is_empty() && !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in hops.rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if trusted.is_empty() || !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// One X-Forwarded-For entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Keeps a client's `x-request-id` only when it is 1 to 64 characters of `[A-Za-z0-9._-]`;
/// anything else is dropped so a fresh id is generated (it goes into logs and audit rows).
async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let bad = req.headers().get_all(&REQUEST_ID).iter().count() > 1
        || req.headers().get(&REQUEST_ID).is_some_and(|v| {
            let b = v.as_bytes();
            b.is_empty()
                || b.len() > 64
                || !b
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        });
    if bad {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

/// Resolves the client IP once and applies the rate limit. A limited GraphQL request gets the
/// GraphQL error shape; everything else the REST shape. Both answer 429 with Retry-After.
async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let ip = client_ip(&parts, &state.config);
    parts.extensions.insert(ClientIp(ip));
    // Probes, explorer assets and public media files are not API calls; Meta's signed webhook
    // deliveries are gated by their signature.
    let exempt = matches!(
        parts.uri.path(),
        "/health" | "/ready" | "/metrics" | "/webhooks/whatsapp"
    ) || parts.uri.path().starts_with("/explorer/")
        || parts.uri.path().starts_with("/uploads/")
        || parts.method == Method::OPTIONS;
    if !exempt
        && let Some(ip) = ip
        && let Err(err) = state.rate_limiter.check(ip).await
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

/// The request's one `Authorization` header, as text. Two or more are refused, not read first
/// wins: a proxy and a client that each add one must not decide who the caller is by order.
pub(crate) fn authorization(headers: &axum::http::HeaderMap) -> Result<Option<&str>, Error> {
    let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Error::Unauthenticated(
            "send one Authorization header, not several".into(),
        ));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| Error::Unauthenticated("Authorization header is not valid text".into()))
}

pub(crate) fn request_context(parts: &Parts, state: &AppState) -> Result<RequestContext, Error> {
    let actor = state
        .keys
        .actor_from_header(authorization(&parts.headers)?)?;
    Ok(RequestContext {
        actor,
        ip: parts
            .extensions
            .get::<ClientIp>()
            .and_then(|c| c.0)
            .or_else(|| client_ip(parts, &state.config)),
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

async fn method_not_allowed(method: Method) -> Error {
    Error::MethodNotAllowed(format!("this route does not take {method}"))
}

/// axum's `Path`, refusing in the house's error shape (VALIDATION, field `path`) instead of
/// axum's plain-text rejection, e.g. for a segment that is not valid UTF-8 once decoded.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if crate::input::url_has_nul(parts.uri.path()) {
            return Err(crate::input::nul_in("path"));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| Error::validation("path", e.body_text()))
    }
}

/// axum's `Query`, refusing in the house's error shape (VALIDATION, field `query`).
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(crate::input::url_has_nul) {
            return Err(crate::input::nul_in("query"));
        }
        // Decoded, the query must be UTF-8 text: the decoder would otherwise put U+FFFD in place
        // of the bytes it cannot read, and answer for a value the caller never sent.
        if let Some(q) = parts.uri.query()
            && percent_encoding::percent_decode_str(q)
                .decode_utf8()
                .is_err()
        {
            return Err(Error::validation(
                "query",
                "the query string is not UTF-8 once percent-decoded",
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| Error::validation("query", e.body_text()))
    }
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
        .merge(events::router())
        .merge(media::router())
        .merge(whatsapp::router())
        // After every route is in: it applies to the routes present.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), self::body_limit))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| Error::Internal("handler panicked".into()).into_response()))
        // Any origin (tokens travel in `Authorization`, never in cookies). The request's own
        // headers are echoed back: a `*` would not cover `Authorization`, which the Fetch spec
        // requires to be named, so a browser client on another origin could not send its token.
        .layer(
            CorsLayer::permissive()
                .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
                .max_age(Duration::from_secs(3600)),
        )
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
        .layer(middleware::from_fn(sanitize_request_id))
        .with_state(state)
}
