//! `/graphql`: POST runs queries and mutations; GET serves GraphiQL or, with an Upgrade header,
//! the subscription WebSocket (also at `/graphql/ws`).
//!
//! WebSockets speak both `graphql-transport-ws` (graphql-ws) and the legacy `graphql-ws`
//! (subscriptions-transport-ws). The token comes from the upgrade request's Authorization header
//! or the `connection_init` payload (`{"Authorization":"Bearer …"}` or `{"token":"…"}`). A bad token
//! closes the socket with 4403, as the graphql-ws protocol says; async-graphql itself sends 1002
//! there, so the close frame is rewritten on its way out.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use async_graphql::{
    Data, ParseRequestError,
    http::{ALL_WEBSOCKET_PROTOCOLS, MultipartOptions, WebSocketProtocols},
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
use futures::{SinkExt, StreamExt};

use super::{explorer, request_context};
use crate::{AppState, auth::RequestContext, error::Error};

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
    let req = match async_graphql::http::receive_body(
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
        Err(other) => return bad_request(format!("malformed GraphQL request: {other}")),
    };
    // async-graphql only turns max_num_files into a whole-stream byte limit: count the files too.
    if req.uploads.len() > 1 {
        return bad_request("at most one file may be uploaded per request".into());
    }
    // A syntax error is a malformed request: answer 400, not 200 with errors.
    if let Err(e) = async_graphql::parser::parse_query(&req.query) {
        return bad_request(format!("malformed GraphQL query: {e}"));
    }
    let schema = state.schema().clone();
    GraphQLResponse::from(schema.execute(req.data(ctx).data(state)).await).into_response()
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
    ws.protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_ws(socket, state, protocol, base))
}

/// The token in a connection_init payload, if any.
fn init_token(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    for key in ["Authorization", "authorization"] {
        if let Some(v) = obj.get(key).and_then(|v| v.as_str()) {
            return Some(v.to_owned());
        }
    }
    if let Some(headers) = obj.get("headers").and_then(|h| h.as_object()) {
        for key in ["Authorization", "authorization"] {
            if let Some(v) = headers.get(key).and_then(|v| v.as_str()) {
                return Some(v.to_owned());
            }
        }
    }
    obj.get("token")
        .and_then(|v| v.as_str())
        .map(|t| format!("Bearer {t}"))
}

async fn serve_ws(
    socket: WebSocket,
    state: AppState,
    protocol: WebSocketProtocols,
    base: RequestContext,
) {
    let refused = Arc::new(AtomicBool::new(false));
    let (sink, stream) = socket.split();
    let input = stream
        .take_while(|res| futures::future::ready(res.is_ok()))
        .filter_map(|msg| {
            futures::future::ready(match msg {
                Ok(Message::Text(t)) => Some(t.as_bytes().to_vec()),
                Ok(Message::Binary(b)) => Some(b.to_vec()),
                _ => None,
            })
        });

    let keys = state.keys.clone();
    let flag = refused.clone();
    let app = state.clone();
    let on_init = move |payload: serde_json::Value| async move {
        let mut ctx = base;
        if let Some(auth) = init_token(&payload) {
            match keys.actor_from_header(Some(&auth)) {
                Ok(actor) => ctx.actor = actor,
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

    let schema = state.schema().clone();
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    let out =
        async_graphql::http::WebSocket::new(schema, input, protocol).on_connection_init(on_init);
    futures::pin_mut!(out, sink);
    while let Some(msg) = out.next().await {
        let msg = match msg {
            async_graphql::http::WsMessage::Text(text) => Message::Text(text.into()),
            async_graphql::http::WsMessage::Close(code, reason) => {
                let code = if code == 1002 && refused.load(Ordering::SeqCst) {
                    CLOSE_FORBIDDEN
                } else {
                    code
                };
                Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
            }
        };
        if sink.send(msg).await.is_err() {
            return;
        }
    }
    // The legacy protocol reports a refused init with connection_error; close with 4403 after it.
    if legacy && refused.load(Ordering::SeqCst) {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CLOSE_FORBIDDEN,
                reason: "Forbidden".into(),
            })))
            .await;
    }
}
