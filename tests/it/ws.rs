//! Subscriptions over WebSocket at /graphql/ws and /graphql, in both protocols
//! (`graphql-transport-ws` and the legacy `graphql-ws`), including refused tokens (close 4403).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::common::{Db, TestApp};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);
const PATHS: [&str; 2] = ["/graphql/ws", "/graphql"];
const HEARTBEAT: &str = "subscription { heartbeat(intervalMs: 100) }";

pub(crate) fn request(
    app: &TestApp,
    path: &str,
    protocol: &str,
    authorization: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}{path}", app.server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    if let Some(a) = authorization {
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(a).unwrap());
    }
    req
}

pub(crate) async fn connect(app: &TestApp, path: &str, protocol: &str) -> Ws {
    let (ws, res) =
        tokio::time::timeout(TIMEOUT, connect_async(request(app, path, protocol, None)))
            .await
            .expect("handshake timed out")
            .unwrap_or_else(|e| panic!("handshake on {path} with {protocol} failed: {e}"));
    assert_eq!(res.status(), 101);
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol),
        "the server picks the offered protocol"
    );
    ws
}

pub(crate) async fn send(ws: &mut Ws, msg: Value) {
    tokio::time::timeout(TIMEOUT, ws.send(Message::text(msg.to_string())))
        .await
        .expect("send timed out")
        .expect("send");
}

/// What the server sent next: a JSON text message, or the close code.
#[derive(Debug)]
pub(crate) enum Got {
    Json(Value),
    Close(Option<u16>),
    Ended,
}

pub(crate) async fn next_within(ws: &mut Ws, within: Duration) -> Option<Got> {
    loop {
        let msg = match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Got::Ended),
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON text message");
                // Legacy keep-alives carry nothing a test cares about.
                if v["type"] == "ka" {
                    continue;
                }
                return Some(Got::Json(v));
            }
            Message::Close(frame) => return Some(Got::Close(frame.map(|f| u16::from(f.code)))),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

pub(crate) async fn recv(ws: &mut Ws) -> Value {
    match next_within(ws, TIMEOUT).await {
        Some(Got::Json(v)) => v,
        None => panic!("no message within {TIMEOUT:?}"),
        Some(other) => panic!("expected a JSON message, got {other:?}"),
    }
}

/// The next message that is not a subscription result for `id`.
async fn recv_skipping(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = recv(ws).await;
        if v["id"] != id {
            return v;
        }
    }
}

pub(crate) async fn expect_close(ws: &mut Ws, code: u16) {
    match next_within(ws, TIMEOUT).await {
        Some(Got::Close(got)) => assert_eq!(got, Some(code)),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

fn assert_heartbeat(v: &Value, kind: &str, id: &str) {
    assert_eq!(v["type"], kind, "{v}");
    assert_eq!(v["id"], id, "{v}");
    let at = v["payload"]["data"]["heartbeat"]
        .as_str()
        .unwrap_or_else(|| panic!("no heartbeat in {v}"));
    let at: chrono::DateTime<chrono::Utc> = at.parse().expect("RFC 3339 time");
    let age = chrono::Utc::now() - at;
    assert!(age.num_seconds().abs() < 60, "heartbeat time {at} is off");
}

#[tokio::test]
async fn graphql_transport_ws() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for path in PATHS {
        let mut ws = connect(&app, path, "graphql-transport-ws").await;
        send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
        assert_eq!(recv(&mut ws).await["type"], "connection_ack", "{path}");

        send(&mut ws, json!({ "type": "ping" })).await;
        assert_eq!(recv(&mut ws).await, json!({ "type": "pong" }), "{path}");

        send(
            &mut ws,
            json!({ "id": "1", "type": "subscribe", "payload": { "query": HEARTBEAT } }),
        )
        .await;
        let first = recv(&mut ws).await;
        assert_heartbeat(&first, "next", "1");
        let second = recv(&mut ws).await;
        assert_heartbeat(&second, "next", "1");

        // After `complete` the stream stops: once a ping round-trips, nothing more arrives.
        send(&mut ws, json!({ "id": "1", "type": "complete" })).await;
        send(&mut ws, json!({ "type": "ping" })).await;
        assert_eq!(recv_skipping(&mut ws, "1").await["type"], "pong");
        let quiet = next_within(&mut ws, Duration::from_millis(400)).await;
        assert!(quiet.is_none(), "{path}: message after complete: {quiet:?}");

        // An invalid subscription gets an error for its id.
        send(
            &mut ws,
            json!({ "id": "2", "type": "subscribe", "payload": { "query": "subscription { heartbeat(intervalMs: 5) }" } }),
        )
        .await;
        // (async-graphql reports it as a `next` with errors; the spec's `error` is fine too.)
        let err = recv(&mut ws).await;
        assert_eq!(err["id"], "2", "{err}");
        let errors = match err["type"].as_str() {
            Some("error") => &err["payload"],
            Some("next") => &err["payload"]["errors"],
            _ => panic!("expected an error for id 2, got {err}"),
        };
        assert!(
            errors[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("greater than or equal to 100")),
            "{err}"
        );
        assert!(err["payload"]["data"].is_null(), "{err}");
        ws.close(None).await.ok();
    }
}

#[tokio::test]
async fn graphql_transport_ws_tokens() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for path in PATHS {
        for payload in [
            json!({ "Authorization": "Bearer bad" }),
            json!({ "token": "bad" }),
            json!({ "headers": { "authorization": "Bearer bad" } }),
            json!({ "Authorization": "Basic xyz" }),
        ] {
            let mut ws = connect(&app, path, "graphql-transport-ws").await;
            send(
                &mut ws,
                json!({ "type": "connection_init", "payload": payload }),
            )
            .await;
            expect_close(&mut ws, 4403).await;
        }
        for payload in [
            json!({ "token": app.admin }),
            json!({ "Authorization": format!("Bearer {}", app.merchant("m-1")) }),
        ] {
            let mut ws = connect(&app, path, "graphql-transport-ws").await;
            send(
                &mut ws,
                json!({ "type": "connection_init", "payload": payload }),
            )
            .await;
            assert_eq!(recv(&mut ws).await["type"], "connection_ack", "{payload}");
            send(
                &mut ws,
                json!({ "id": "a", "type": "subscribe", "payload": { "query": HEARTBEAT } }),
            )
            .await;
            assert_heartbeat(&recv(&mut ws).await, "next", "a");
            ws.close(None).await.ok();
        }
    }

    // A bad token on the upgrade request itself is refused before the handshake.
    let err = connect_async(request(
        &app,
        "/graphql/ws",
        "graphql-transport-ws",
        Some("Bearer bad"),
    ))
    .await
    .expect_err("handshake with a bad token must fail");
    match err {
        tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected HTTP 401, got {other}"),
    }
    // So is an upgrade that offers no protocol the server speaks.
    let err = connect_async(request(&app, "/graphql/ws", "chat", None))
        .await
        .expect_err("handshake without a GraphQL protocol must fail");
    match err {
        tungstenite::Error::Http(res) => assert_eq!(res.status(), 400),
        other => panic!("expected HTTP 400, got {other}"),
    }
}

#[tokio::test]
async fn legacy_graphql_ws() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for path in PATHS {
        let mut ws = connect(&app, path, "graphql-ws").await;
        send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
        assert_eq!(recv(&mut ws).await["type"], "connection_ack", "{path}");
        send(
            &mut ws,
            json!({ "type": "start", "id": "1", "payload": { "query": HEARTBEAT } }),
        )
        .await;
        assert_heartbeat(&recv(&mut ws).await, "data", "1");
        assert_heartbeat(&recv(&mut ws).await, "data", "1");
        send(&mut ws, json!({ "type": "stop", "id": "1" })).await;
        // The server confirms the stop with `complete` (possibly after a last data message).
        let done = recv_skipping(&mut ws, "never").await;
        let done = if done["type"] == "data" {
            recv(&mut ws).await
        } else {
            done
        };
        assert_eq!(done["type"], "complete", "{done}");
        assert_eq!(done["id"], "1", "{done}");
        ws.close(None).await.ok();

        // A valid token is accepted.
        let mut ws = connect(&app, path, "graphql-ws").await;
        send(
            &mut ws,
            json!({ "type": "connection_init", "payload": { "token": app.admin } }),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "connection_ack");
        ws.close(None).await.ok();

        // A bad one: connection_error, then close 4403.
        for payload in [
            json!({ "Authorization": "Bearer bad" }),
            json!({ "token": "bad" }),
        ] {
            let mut ws = connect(&app, path, "graphql-ws").await;
            send(
                &mut ws,
                json!({ "type": "connection_init", "payload": payload }),
            )
            .await;
            let err = recv(&mut ws).await;
            assert_eq!(err["type"], "connection_error", "{err}");
            assert!(
                err["payload"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{err}"
            );
            expect_close(&mut ws, 4403).await;
        }
    }
}

/// A second `connection_init` ends the connection with 4429, as graphql-ws asks, also while an
/// operation streams: the client's frames are still read between the server's responses.
#[tokio::test]
async fn a_second_connection_init_closes_with_4429() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut ws = connect(&app, "/graphql/ws", "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": HEARTBEAT } }),
    )
    .await;
    assert_heartbeat(&recv(&mut ws).await, "next", "1");
    assert_heartbeat(&recv(&mut ws).await, "next", "1");
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    // Heartbeats already on their way may come first; then the close, and nothing else.
    loop {
        match next_within(&mut ws, TIMEOUT).await {
            Some(Got::Json(v)) if v["id"] == "1" && v["type"] == "next" => continue,
            Some(Got::Close(code)) => {
                assert_eq!(code, Some(4429));
                break;
            }
            other => panic!("expected close 4429, got {other:?}"),
        }
    }
}
