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

/// A shutdown closes every open socket with 1001 (going away), in both protocols, so that
/// clients reconnect at once: a dropped connection (1006) looks like a network failure.
#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut sockets = vec![];
    for (protocol, start) in [
        ("graphql-transport-ws", "subscribe"),
        ("graphql-ws", "start"),
    ] {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
        assert_eq!(recv(&mut ws).await["type"], "connection_ack", "{protocol}");
        send(
            &mut ws,
            json!({ "id": "1", "type": start, "payload": { "query": HEARTBEAT } }),
        )
        .await;
        assert_eq!(recv(&mut ws).await["id"], "1", "{protocol}");
        sockets.push((protocol, ws));
    }
    // And one that never sent connection_init.
    sockets.push((
        "uninitialised",
        connect(&app, "/graphql", "graphql-ws").await,
    ));
    tokio::time::timeout(TIMEOUT, app.server.stop())
        .await
        .expect("the server stops")
        .expect("a clean stop");
    for (what, mut ws) in sockets {
        // Results already on the way may come first; the close must follow within the time.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_within(&mut ws, left).await {
                Some(Got::Json(v)) if v["id"] == "1" => continue,
                Some(Got::Close(code)) => {
                    assert_eq!(code, Some(1001), "{what}");
                    break;
                }
                other => panic!("{what}: expected close 1001, got {other:?}"),
            }
        }
    }
}

/// A subscription refused before it runs (it does not validate) is one `error` message on
/// graphql-transport-ws, with no `complete` after it, as the reference server sends it; the
/// legacy protocol gets `data` with the errors, then `complete`, as its server did. A field's
/// error while running stays a result (`next`).
#[tokio::test]
async fn refused_subscriptions_get_the_protocols_error() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let unknown = "subscription { noSuchField }";
    let two_roots = "subscription { a: heartbeat b: heartbeat }";

    let mut ws = connect(&app, "/graphql/ws", "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    for (id, query) in [("1", unknown), ("2", two_roots)] {
        send(
            &mut ws,
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
        )
        .await;
        let v = recv(&mut ws).await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["payload"][0]["extensions"]["code"], "VALIDATION", "{v}");
        assert!(v["payload"][0]["message"].is_string(), "{v}");
        // No `complete` follows: the next message is the answer to a ping.
        send(&mut ws, json!({ "type": "ping" })).await;
        assert_eq!(recv(&mut ws).await, json!({ "type": "pong" }), "{query}");
        // The id is free again.
        send(
            &mut ws,
            json!({ "id": id, "type": "subscribe", "payload": { "query": HEARTBEAT } }),
        )
        .await;
        let v = recv(&mut ws).await;
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str()),
            (Some("next"), Some(id)),
            "{v}"
        );
        send(&mut ws, json!({ "id": id, "type": "complete" })).await;
        // Results already on the way, then the server's `complete`.
        let mut v = recv(&mut ws).await;
        while v["type"] == "next" {
            v = recv(&mut ws).await;
        }
        assert_eq!(v, json!({ "type": "complete", "id": id }));
    }
    ws.close(None).await.ok();

    let mut ws = connect(&app, "/graphql/ws", "graphql-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({ "id": "1", "type": "start", "payload": { "query": unknown } }),
    )
    .await;
    let v = recv(&mut ws).await;
    assert_eq!(v["type"], "data", "{v}");
    assert_eq!(
        v["payload"]["errors"][0]["extensions"]["code"], "VALIDATION",
        "{v}"
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({ "type": "complete", "id": "1" })
    );
}
