//! `/graphql`: POST runs queries and mutations; GET serves GraphiQL or, with an Upgrade header,
//! the subscription WebSocket (also at `/graphql/ws`).
//!
//! WebSockets speak both `graphql-transport-ws` (graphql-ws) and the legacy `graphql-ws`
//! (subscriptions-transport-ws). The token comes from the upgrade request's Authorization header
//! or the `connection_init` payload (`{"Authorization":"Bearer …"}` or `{"token":"…"}`). A bad token
//! closes the socket with 4403, as the graphql-ws protocol says. The protocols themselves are in
//! [`super::graphql_ws`].

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use async_graphql::{
    Data, ParseRequestError,
    http::{ALL_WEBSOCKET_PROTOCOLS, MultipartOptions, WebSocketProtocols},
    parser::types::{ExecutableDocument, OperationType, Selection},
};
use async_graphql_axum::GraphQLResponse;
use axum::{
    body::Bytes,
    extract::{
        State,
        rejection::BytesRejection,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use futures::{FutureExt, SinkExt, StreamExt};

use super::{explorer, graphql_ws::WsMessage, request_context};
use crate::{
    AppState,
    auth::RequestContext,
    error::Error,
    templates::cache::{self, Lookup},
};

/// Close code for a refused `connection_init` (graphql-ws: "Forbidden").
pub const CLOSE_FORBIDDEN: u16 = 4403;

fn bad_request(message: String) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": "VALIDATION", "field": "body" } }]
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The body is buffered by axum (so BODY_LIMIT applies to streamed bodies too and is reported as
/// PAYLOAD_TOO_LARGE) and then parsed by async-graphql.
pub async fn graphql_post(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = match request_context(&parts, &state) {
        Ok(ctx) => ctx,
        Err(e) => return e.into_graphql_response(),
    };
    let too_large =
        || Error::PayloadTooLarge("request body is too large".into()).into_graphql_response();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(),
        Err(e) => return bad_request(format!("malformed GraphQL request: {}", e.body_text())),
    };
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut req = match async_graphql::http::receive_body(
        content_type,
        futures::io::Cursor::new(body),
        MultipartOptions::default()
            .max_file_size(state.config.media_max_bytes)
            .max_num_files(1),
    )
    .await
    {
        Ok(r) => r,
        Err(ParseRequestError::PayloadTooLarge) => return too_large(),
        // async-graphql's own text names the part `operators`; the spec's name is `operations`.
        Err(ParseRequestError::MissingOperatorsPart) => {
            return bad_request(
                "malformed GraphQL request: a multipart request needs an `operations` part".into(),
            );
        }
        Err(other) => return bad_request(format!("malformed GraphQL request: {other}")),
    };
    // async-graphql only turns max_num_files into a whole-stream byte limit: count the files too.
    if req.uploads.len() > 1 {
        return bad_request("at most one file may be uploaded per request".into());
    }
    // Before anything parses it: the parser recurses per nesting level (and NUL is refused).
    if let Err(e) = crate::graphql::check_document(&req.query) {
        return e.into_graphql_response();
    }
    // A syntax error is a malformed request: answer 400, not 200 with errors. Parsed into the
    // request, which async-graphql (and `graphql::Expansion`) then use instead of parsing again.
    let plain = req.uploads.is_empty() && req.extensions.0.is_empty();
    let operation = req.operation_name.clone();
    let cacheable = match req.parsed_query() {
        Ok(doc) => plain && cacheable(doc, operation.as_deref()),
        Err(e) => return bad_request(format!("malformed GraphQL query: {}", e.message)),
    };
    if !cacheable {
        let schema = state.schema().clone();
        return GraphQLResponse::from(schema.execute(req.data(ctx).data(state)).await)
            .into_response();
    }
    let variables = match serde_json::to_string(&req.variables) {
        Ok(v) => v,
        Err(e) => return Error::internal(e).into_graphql_response(),
    };
    let key = cache::Key::new(
        &ctx.actor,
        cache::Request::Graphql {
            query: req.query.clone(),
            operation: req.operation_name.clone(),
            variables,
        },
    );
    let cache = state.template_cache.clone();
    let slot = match cache.lookup(&state.db, key).await {
        Ok(Lookup::Hit(body)) => return graphql_json(body),
        Ok(Lookup::Miss(slot)) => slot,
        Err(e) => return e.into_graphql_response(),
    };
    let schema = state.schema().clone();
    let res = schema.execute(req.data(ctx).data(state)).await;
    // Only a plain success is stored: no errors, no headers or cache hints set by a resolver.
    if !(res.is_ok() && res.http_headers.is_empty() && res.cache_control.value().is_none()) {
        return GraphQLResponse::from(res).into_response();
    }
    match serde_json::to_vec(&res) {
        Ok(body) => {
            let body = Bytes::from(body);
            slot.fill(body.clone());
            graphql_json(body)
        }
        Err(_) => GraphQLResponse::from(res).into_response(),
    }
}

/// Whether the response to `req` may come from the template read cache: a query operation
/// (no uploads, no request extensions) whose root fields are all template reads
/// ([`cache::GRAPHQL_ROOT_FIELDS`]), selected directly (no fragments at the root).
fn cacheable(doc: &ExecutableDocument, operation: Option<&str>) -> bool {
    // The operation async-graphql will run (its own rule); the other cases are errors.
    let Some(op) = crate::graphql::chosen_operation(doc, operation) else {
        return false;
    };
    op.node.ty == OperationType::Query
        && op.node.selection_set.node.items.iter().all(|sel| {
            matches!(&sel.node, Selection::Field(f)
                if cache::GRAPHQL_ROOT_FIELDS.contains(&f.node.name.node.as_str()))
        })
}

/// A GraphQL success body already serialized, with the content type async-graphql-axum sends.
fn graphql_json(body: Bytes) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/graphql-response+json"),
        )],
        body,
    )
        .into_response()
}

/// GET /graphql: the WebSocket when the client asks to upgrade, GraphiQL otherwise.
pub async fn graphiql_or_ws(
    state: State<AppState>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => ws_upgrade(state, parts, ws).await,
        Err(_) => explorer::graphiql().await.into_response(),
    }
}

pub async fn ws(state: State<AppState>, parts: Parts, ws: WebSocketUpgrade) -> Response {
    ws_upgrade(state, parts, ws).await
}

/// The first subprotocol offered that we speak.
fn negotiate(parts: &Parts) -> Option<WebSocketProtocols> {
    parts
        .headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| list.split(',').find_map(|p| p.trim().parse().ok()))
}

/// The initial read buffer of a socket (it grows for a larger frame, up to the frame limit).
const WS_READ_BUFFER: usize = 2 * 1024;
/// A batch of ready frames is written once it holds this many bytes (and at its end).
const WS_WRITE_BUFFER: usize = 16 * 1024;
/// Ready frames written with one flush at most.
const WS_WRITE_BATCH: usize = 64;

async fn ws_upgrade(State(state): State<AppState>, parts: Parts, ws: WebSocketUpgrade) -> Response {
    let Some(protocol) = negotiate(&parts) else {
        return Error::validation(
            "Sec-WebSocket-Protocol",
            "offer graphql-transport-ws or graphql-ws",
        )
        .into_response();
    };
    // A token on the upgrade request itself must be valid; connection_init may still override it.
    let base = match request_context(&parts, &state) {
        Ok(ctx) => ctx,
        Err(e) => return e.into_response(),
    };
    let valid_until = super::authorization(&parts.headers)
        .ok()
        .flatten()
        .and_then(|v| state.keys.session_from_header(Some(v)).ok().flatten())
        .map(|s| s.valid_until());
    // Frames are held to the same limit as HTTP bodies.
    let limit = state.config.body_limit;
    let probe = parts.extensions.get::<super::serve::SocketProbe>().copied();
    ws.protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite's defaults reserve 128 KiB to read and 128 KiB to write per socket: ~150 KB
        // for every idle subscriber. Frames here are small; the buffers grow when one is not.
        // Writes are flushed by `serve_ws` after each batch of ready frames; this only bounds how
        // much of a batch is held before it goes out.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let sockets = state.websockets.clone();
            sockets.track(serve_ws(socket, state, protocol, base, valid_until, probe))
        })
}

/// The process's open WebSockets. At shutdown each one closes with 1001 (going away), so that
/// clients reconnect at once, to another instance, and resume with `after`; a socket that was
/// simply dropped looks like a network failure (1006) to them.
#[derive(Clone, Default)]
pub struct OpenSockets {
    closing: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// How long one socket's close frame may take at shutdown.
const SHUTDOWN_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

impl OpenSockets {
    fn track<F: Future<Output = ()>>(&self, serve: F) -> impl Future<Output = ()> + use<F> {
        self.tasks.track_future(serve)
    }

    /// Tells every open socket, and every one still upgrading, to close.
    pub fn close_all(&self) {
        self.closing.cancel();
        self.tasks.close();
    }

    /// Whether the server is shutting down.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        &self.closing
    }

    /// Waits until every socket has sent its close frame (each gets [`SHUTDOWN_CLOSE`]).
    pub async fn closed(&self) {
        let _ = tokio::time::timeout(SHUTDOWN_CLOSE * 2, self.tasks.wait()).await;
    }
}

/// The token in a connection_init payload, if any.
fn init_token(payload: &serde_json::Value) -> Result<Option<String>, String> {
    let obj = match payload {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(obj) => obj,
        _ => return Err("the connection_init payload must be an object".into()),
    };
    let headers = match obj.get("headers") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(h)) => Some(h),
        Some(_) => return Err("connection_init `headers` must be an object".into()),
    };
    // Every place a credential may be given; a credential that is there must be a string, and
    // two that differ are refused rather than one picked by the order of this list.
    let places = [
        ("Authorization", obj.get("Authorization"), false),
        ("authorization", obj.get("authorization"), false),
        (
            "headers.Authorization",
            headers.and_then(|h| h.get("Authorization")),
            false,
        ),
        (
            "headers.authorization",
            headers.and_then(|h| h.get("authorization")),
            false,
        ),
        ("token", obj.get("token"), true),
    ];
    let mut found: Option<String> = None;
    for (name, value, bare) in places {
        let Some(value) = value else { continue };
        let Some(text) = value.as_str() else {
            return Err(format!("connection_init `{name}` must be a string"));
        };
        let auth = if bare {
            format!("Bearer {text}")
        } else {
            text.to_owned()
        };
        match &found {
            Some(other) if *other != auth => {
                return Err("connection_init carries two different credentials".into());
            }
            _ => found = Some(auth),
        }
    }
    Ok(found)
}

/// Close code when `connection_init` does not arrive in time (graphql-ws).
pub const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// The server is shutting down (RFC 6455 "going away"): reconnect, to another instance.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The two fields of a protocol message the socket rules need; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<EnvelopePayload<'a>>,
}

#[derive(serde::Deserialize)]
struct EnvelopePayload<'a> {
    #[serde(default, borrow)]
    query: Option<std::borrow::Cow<'a, str>>,
}

/// What the socket rules track between the reader and the writer.
struct SocketState {
    /// Operations started and not yet completed, by client-chosen id.
    active: std::collections::HashSet<String>,
    initialised: bool,
    /// Why reading stopped, when it was an error (an oversized frame, say).
    read_error: Option<String>,
    /// When the token in force stops being valid (epoch seconds), if there is one.
    valid_until: Option<i64>,
    last_seen: tokio::time::Instant,
}

/// The HTTP rules, applied per operation: the caller's rate limit and a cap on concurrent
/// operations. `Some(error frame)` refuses the operation and keeps the socket open.
async fn admit(
    state: &AppState,
    shared: &std::sync::Mutex<SocketState>,
    ip: Option<std::net::IpAddr>,
    legacy: bool,
    frame: &[u8],
) -> Option<String> {
    let env: Envelope = serde_json::from_slice(frame).ok()?;
    // Counted before the lock is taken: the shared limiter may be a Redis round trip.
    let starts = matches!(env.kind.as_ref(), "subscribe" | "start")
        && shared.lock().unwrap_or_else(|e| e.into_inner()).initialised;
    let limited = if starts {
        state.rate_limiter.check_opt(ip).await.err()
    } else {
        None
    };
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    s.last_seen = tokio::time::Instant::now();
    let id = env.id.as_deref().unwrap_or_default();
    match env.kind.as_ref() {
        "connection_init" => s.initialised = true,
        "subscribe" | "start" if s.initialised => {
            let document = env
                .payload
                .as_ref()
                .and_then(|p| p.query.as_deref())
                .map_or(Ok(()), crate::graphql::check_document);
            let refused = if let Some(e) = limited {
                Some(e)
            } else if let Err(e) = document {
                // Refused here, before the operation's document is parsed.
                Some(e)
            } else if !s.active.contains(id) && s.active.len() >= state.config.ws_max_operations {
                // Too many at once is a rate: the client may retry when one completes.
                Some(Error::RateLimited {
                    retry_after_secs: 1,
                })
            } else {
                None
            };
            match refused {
                Some(e) => return Some(error_frame(id, &e, legacy)),
                None => {
                    s.active.insert(id.to_owned());
                }
            }
        }
        "complete" | "stop" => {
            s.active.remove(id);
        }
        _ => {}
    }
    None
}

/// An `error` message for operation `id` in the socket's protocol.
fn error_frame(id: &str, err: &Error, legacy: bool) -> String {
    let body = err.graphql_body();
    let errors = body["errors"].clone();
    let payload = if legacy { errors[0].clone() } else { errors };
    serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string()
}

fn close(code: u16, reason: &str) -> Message {
    // A control frame's payload is at most 125 bytes, two of them the code (RFC 6455 §5.5): a
    // longer reason (a parse error quoting the client's frame) is cut at a character boundary,
    // or the client sees a protocol error instead of the code.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Serves one GraphQL WebSocket. Beside the protocol ([`super::graphql_ws`]) it enforces the HTTP
/// rules for the socket's whole life: the token's expiry (close 4403), the rate limit and a cap
/// per operation (an `error` for that operation, the socket stays open), the init timeout (close
/// 4408), and keep-alive pings that drop a peer silent for two intervals.
async fn serve_ws(
    socket: WebSocket,
    state: AppState,
    protocol: WebSocketProtocols,
    base: RequestContext,
    valid_until: Option<i64>,
    probe: Option<super::serve::SocketProbe>,
) {
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    // Whether the peer acknowledged any of our bytes since the last look: the queue of sent
    // and unacknowledged bytes shrank. Such a peer is reading, though a ping queued behind a
    // large write cannot be answered yet. (Without the accept loop's probe, only the pings and
    // the write's own wait tell.)
    let mut unacknowledged: Option<u64> = None;
    let mut draining = move || {
        let now = probe.and_then(|p| p.unacknowledged());
        let before = std::mem::replace(&mut unacknowledged, now);
        matches!((before, now), (Some(b), Some(n)) if n < b)
    };
    let refused = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(std::sync::Mutex::new(SocketState {
        active: Default::default(),
        initialised: false,
        read_error: None,
        valid_until,
        last_seen: tokio::time::Instant::now(),
    }));
    let (sink, stream) = socket.split();
    // Refusals found while reading go out through the writer below.
    // A futures channel: it allocates per message, where tokio's allocates 32 slots up front,
    // a kilobyte for every idle socket.
    let (refusals_tx, mut refusals) = futures::channel::mpsc::channel::<String>(16);
    let ip = base.ip;
    let input = {
        let (state, shared, errors) = (state.clone(), shared.clone(), shared.clone());
        stream
            .take_while(move |res| {
                if let Err(e) = res {
                    errors.lock().unwrap_or_else(|e| e.into_inner()).read_error =
                        Some(e.to_string());
                }
                futures::future::ready(res.is_ok())
            })
            .filter_map(move |msg| {
                let (state, shared, mut refusals_tx) =
                    (state.clone(), shared.clone(), refusals_tx.clone());
                async move {
                    let frame = match msg {
                        Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                        Ok(Message::Binary(b)) => b.to_vec(),
                        _ => {
                            // Pongs and pings prove the peer is alive.
                            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                            s.last_seen = tokio::time::Instant::now();
                            return None;
                        }
                    };
                    match admit(&state, &shared, ip, legacy, &frame).await {
                        Some(refusal) => {
                            let _ = refusals_tx.send(refusal).await;
                            None
                        }
                        None => Some(frame),
                    }
                }
            })
    };

    let keys = state.keys.clone();
    let flag = refused.clone();
    let app = state.clone();
    let init_shared = shared.clone();
    let on_init = move |payload: serde_json::Value| async move {
        let mut ctx = base;
        let auth = match init_token(&payload) {
            Ok(auth) => auth,
            Err(message) => {
                flag.store(true, Ordering::SeqCst);
                return Err(async_graphql::Error::new(message));
            }
        };
        if let Some(auth) = auth {
            match keys.session_from_header(Some(&auth)) {
                Ok(session) => {
                    let session = session.expect("a header was given");
                    init_shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .valid_until = Some(session.valid_until());
                    ctx.actor = session.actor;
                }
                Err(e) => {
                    flag.store(true, Ordering::SeqCst);
                    return Err(async_graphql::Error::new(e.public_message()));
                }
            }
        }
        tracing::debug!(
            role = ctx.actor.role_name(),
            "websocket connection_init accepted"
        );
        let mut data = Data::default();
        data.insert(ctx);
        data.insert(app);
        Ok(data)
    };

    // Live `events` subscriptions asking the same thing share one execution.
    let executor = crate::graphql::shared::SharedExecutor {
        schema: state.schema().clone(),
        hubs: state.subscriptions.clone(),
        events: state.events.clone(),
    };
    let out = super::graphql_ws::Session::new(executor, Box::pin(input), protocol, on_init);
    futures::pin_mut!(out, sink);
    let started = tokio::time::Instant::now();
    let keepalive = state.config.ws_keepalive;
    // Made once, not per loop: each new `cancelled()` would register with the token's one
    // waiter list, shared by every socket, for every frame sent.
    let closing = state.websockets.closing().clone().cancelled_owned();
    tokio::pin!(closing);
    let mut ping = tokio::time::interval_at(started + keepalive, keepalive);
    // When the last keep-alive ping went out.
    let mut pinged_at: Option<tokio::time::Instant> = None;
    // One timer for the socket's deadline: the init timeout until `connection_init`, then the
    // token's expiry. Re-armed only when either changes, not for every frame sent.
    let deadline = tokio::time::sleep_until(started + state.config.ws_init_timeout);
    tokio::pin!(deadline);
    let mut armed: Option<(bool, Option<i64>)> = None;
    let mut on_deadline: Option<(u16, &str)> = None;
    let outgoing = |msg: WsMessage| match msg {
        WsMessage::Text(text) => Message::Text(text.into()),
        // The operation no longer counts against the socket's cap.
        WsMessage::Complete { id, text } => {
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .active
                .remove(&id);
            Message::Text(text.into())
        }
        WsMessage::Close(code, reason) => close(code, &reason),
    };
    loop {
        let watched = {
            let s = shared.lock().unwrap_or_else(|e| e.into_inner());
            (s.initialised, s.valid_until)
        };
        if armed != Some(watched) {
            armed = Some(watched);
            on_deadline = match watched {
                (false, _) => {
                    deadline
                        .as_mut()
                        .reset(started + state.config.ws_init_timeout);
                    Some((CLOSE_INIT_TIMEOUT, "Connection initialisation timeout"))
                }
                (true, Some(t)) => {
                    let left = t.saturating_sub(crate::db::now().timestamp()).max(0);
                    deadline.as_mut().reset(
                        tokio::time::Instant::now()
                            + std::time::Duration::from_secs(left as u64 + 1),
                    );
                    Some((CLOSE_FORBIDDEN, "token expired"))
                }
                (true, None) => None,
            };
        }
        // `batch`: whether more ready frames may follow this one in the same write.
        let (mut msg, batch) = tokio::select! {
            msg = out.next() => match msg {
                Some(msg) => (outgoing(msg), true),
                None => break,
            },
            Some(refusal) = refusals.next() => (Message::Text(refusal.into()), false),
            () = &mut closing => {
                let going_away = close(CLOSE_GOING_AWAY, "server shutting down");
                let _ = tokio::time::timeout(SHUTDOWN_CLOSE, sink.send(going_away)).await;
                return;
            }
            _ = &mut deadline, if on_deadline.is_some() => {
                if let Some((code, reason)) = on_deadline {
                    let _ = tokio::time::timeout(keepalive, sink.send(close(code, reason))).await;
                }
                return;
            }
            _ = ping.tick() => {
                // Read now, not at the top of the loop: a pong that arrived while this select
                // waited updates `last_seen` without ending the wait. A peer that sent nothing
                // since the last ping (a whole interval to answer it) is gone: dropped at most
                // two intervals after its last frame, whichever protocol it speaks.
                let last_seen = shared.lock().unwrap_or_else(|e| e.into_inner()).last_seen;
                // Looked at every tick, so that the next one compares with this one.
                let drained = draining();
                if pinged_at.is_some_and(|at| last_seen < at) && !drained {
                    tracing::debug!("dropping a websocket peer that stopped answering pings");
                    return;
                }
                pinged_at = Some(tokio::time::Instant::now());
                (Message::Ping(Default::default()), false)
            }
        };
        // Frames the executions already have ready leave in the same write: a socket that fell
        // behind catches up with one `send` system call per batch, not one per frame. A close
        // ends the batch.
        let write = async {
            let mut ended = false;
            for fed in 1.. {
                let closing = matches!(msg, Message::Close(_));
                sink.feed(msg).await?;
                if !batch || closing || fed == WS_WRITE_BATCH {
                    break;
                }
                msg = match out.next().now_or_never() {
                    Some(Some(next)) => outgoing(next),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                };
            }
            sink.flush().await?;
            Ok::<_, axum::Error>(ended)
        };
        // A peer that does not read is as gone as one that does not answer pings: while a write
        // waits for it, no ping goes out and the operations' buffers fill. A write that cannot
        // finish within two keep-alive intervals ends the connection and frees them. (The timer
        // is armed only for a write that did not finish at once: a fan-out's writes do.)
        let mut write = std::pin::pin!(write);
        let written = match futures::poll!(write.as_mut()) {
            std::task::Poll::Ready(r) => Ok(r),
            // Waits while the peer keeps taking bytes, however long the write: a slow but
            // steady reader is kept; one that took nothing for two intervals is dropped.
            std::task::Poll::Pending => {
                let mut waiting = tokio::time::Instant::now();
                loop {
                    match tokio::time::timeout(keepalive, write.as_mut()).await {
                        Ok(r) => break Ok(r),
                        // Looked at every interval: a peer that took some resets the wait.
                        Err(_) if draining() => waiting = tokio::time::Instant::now(),
                        Err(elapsed) if waiting.elapsed() >= keepalive * 2 => break Err(elapsed),
                        Err(_) => {}
                    }
                }
            }
        };
        match written {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => break,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("dropping a websocket peer that stopped reading");
                return;
            }
        }
    }
    // The legacy protocol reports a refused init with connection_error; close with 4403 after it.
    if legacy && refused.load(Ordering::SeqCst) {
        let _ =
            tokio::time::timeout(keepalive, sink.send(close(CLOSE_FORBIDDEN, "Forbidden"))).await;
    }
    let read_error = shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .read_error
        .take();
    if let Some(e) = read_error {
        tracing::debug!(error = %e, "websocket read failed");
        // tungstenite's capacity error: the peer sent a message over BODY_LIMIT (close 1009).
        if e.contains("Space limit exceeded") || e.contains("too long") {
            let _ =
                tokio::time::timeout(keepalive, sink.send(close(1009, "message too big"))).await;
        }
    }
}
