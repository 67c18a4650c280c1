//! The HTTP rules hold for a WebSocket's whole life, in both protocols: token expiry (close 4403),
//! a rate limit per operation (an `error` for that operation, the socket stays open), BODY_LIMIT
//! on frames, the `connection_init` timeout (close 4408), a cap on concurrent operations, and
//! keep-alive pings that drop a silent peer.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use smartbot::auth::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    common::{Db, TestApp},
    ws::{Got, Ws, connect, expect_close, next_within, recv, send},
};

const PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];
const LONG: &str = "subscription { heartbeat(intervalMs: 60000) }";

fn start(protocol: &str, id: &str, query: &str) -> Value {
    let kind = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    json!({ "type": kind, "id": id, "payload": { "query": query } })
}

async fn init(ws: &mut Ws, payload: Value) {
    send(ws, json!({ "type": "connection_init", "payload": payload })).await;
    assert_eq!(recv(ws).await["type"], "connection_ack");
}

/// The next message for operation `id`, skipping others.
async fn recv_for(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = recv(ws).await;
        if v["id"] == id {
            return v;
        }
    }
}

/// The error code of an `error` message in either protocol's shape.
fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    let p = &v["payload"];
    let e = if p.is_array() { &p[0] } else { p };
    e["extensions"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_expired_token_closes_the_socket() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for protocol in PROTOCOLS {
        // Validation has 5 s of leeway: the socket must close within ~6 s of expiry, not live on.
        let token = app
            .server
            .state
            .keys
            .issue("short", Role::Admin, None, Duration::from_secs(1))
            .unwrap();
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({ "token": token })).await;
        match next_within(&mut ws, Duration::from_secs(15)).await {
            Some(Got::Close(code)) => assert_eq!(code, Some(4403), "{protocol}"),
            other => panic!("{protocol}: expected close 4403 at expiry, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn each_operation_counts_against_the_rate_limit() {
    for protocol in PROTOCOLS {
        // The limit is per client IP: a fresh server per protocol gives each a fresh allowance.
        let app = TestApp::spawn_with(Db::Sqlite, |c| {
            c.rate_limit = Some("4/15m".parse().unwrap());
        })
        .await;
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({})).await;
        let mut limited = 0;
        for i in 0..6 {
            let id = format!("q{i}");
            send(&mut ws, start(protocol, &id, "{ __typename }")).await;
            let v = recv_for(&mut ws, &id).await;
            if v["type"] == "error" {
                assert_eq!(error_code(&v), "RATE_LIMITED", "{protocol}: {v}");
                limited += 1;
            } else {
                assert_eq!(v["payload"]["data"]["__typename"], "QueryRoot", "{v}");
            }
        }
        // One allowance went to the upgrade request, the next three to operations.
        assert_eq!(limited, 3, "{protocol}");
        // The socket stays open: a ping still round-trips.
        if protocol == "graphql-transport-ws" {
            send(&mut ws, json!({ "type": "ping" })).await;
            let pong = loop {
                let v = recv(&mut ws).await;
                if v["type"] == "pong" {
                    break v;
                }
            };
            assert_eq!(pong["type"], "pong");
        }
    }
}

#[tokio::test]
async fn frames_over_body_limit_are_refused() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.body_limit = 16 * 1024).await;
    for protocol in PROTOCOLS {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({})).await;
        // A valid operation padded past the limit: it must not run.
        let padded = format!("{{ __typename }}{}", " ".repeat(32 * 1024));
        let _ = futures::SinkExt::send(
            &mut ws,
            Message::text(start(protocol, "big", &padded).to_string()),
        )
        .await;
        match next_within(&mut ws, Duration::from_secs(5)).await {
            Some(Got::Close(code)) => assert_eq!(code, Some(1009), "{protocol}"),
            Some(Got::Ended) => {}
            other => panic!("{protocol}: expected the socket to close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connection_init_must_arrive_in_time() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.ws_init_timeout = Duration::from_millis(500)
    })
    .await;
    for protocol in PROTOCOLS {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        expect_close(&mut ws, 4408).await;
    }
    // A socket that does init in time is not closed.
    let mut ws = connect(&app, "/graphql/ws", "graphql-transport-ws").await;
    init(&mut ws, json!({})).await;
    assert!(
        next_within(&mut ws, Duration::from_millis(1500))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn operations_per_socket_are_capped() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.ws_max_operations = 2).await;
    for protocol in PROTOCOLS {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({})).await;
        send(&mut ws, start(protocol, "a", LONG)).await;
        send(&mut ws, start(protocol, "b", LONG)).await;
        send(&mut ws, start(protocol, "c", LONG)).await;
        let v = recv_for(&mut ws, "c").await;
        assert_eq!(error_code(&v), "RATE_LIMITED", "{protocol}: {v}");
        // Ending one makes room for another.
        let stop = if protocol == "graphql-ws" {
            "stop"
        } else {
            "complete"
        };
        send(&mut ws, json!({ "type": stop, "id": "a" })).await;
        send(&mut ws, start(protocol, "d", "{ __typename }")).await;
        let v = recv_for(&mut ws, "d").await;
        assert_ne!(v["type"], "error", "{protocol}: {v}");
        // An operation that ends by itself (a query, completed by the server) frees its slot.
        let v = recv_for(&mut ws, "d").await;
        assert_eq!(v["type"], "complete", "{protocol}: {v}");
        send(&mut ws, start(protocol, "e", "{ __typename }")).await;
        let v = recv_for(&mut ws, "e").await;
        assert_ne!(v["type"], "error", "{protocol}: {v}");
    }
}

#[tokio::test]
async fn keepalive_pings_and_drops_a_silent_peer() {
    let app =
        TestApp::spawn_with(Db::Sqlite, |c| c.ws_keepalive = Duration::from_millis(300)).await;
    for protocol in PROTOCOLS {
        // A live peer gets pings (tungstenite answers them while we read).
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({})).await;
        let ping = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Ping(_))) => return true,
                    Some(Ok(_)) => continue,
                    _ => return false,
                }
            }
        })
        .await;
        assert_eq!(ping, Ok(true), "{protocol}: no keep-alive ping");

        // A peer that answers every ping stays connected through many quiet intervals (the
        // server once judged it by a `last_seen` read before its pong arrived, and dropped every
        // idle subscriber after two intervals).
        let quiet = tokio::time::timeout(Duration::from_millis(300 * 8), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "{protocol}: a live, idle peer was dropped");
        send(&mut ws, start(protocol, "alive", "{ __typename }")).await;
        let v = recv_for(&mut ws, "alive").await;
        assert_ne!(v["type"], "error", "{protocol}: {v}");

        // A peer that stops reading (so never answers) is dropped after two intervals.
        let mut silent = connect(&app, "/graphql/ws", protocol).await;
        init(&mut silent, json!({})).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match silent.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert_eq!(ended, Ok(true), "{protocol}: a silent peer was kept");
    }
}

/// graphql-ws's own close codes: `subscribe` before the acknowledgement is 4401, a second
/// `subscribe` with an id that is still running is 4409, and a message that is not one of the
/// protocol's is 4400.
#[tokio::test]
async fn graphql_transport_ws_close_codes() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let protocol = "graphql-transport-ws";
    let mut ws = connect(&app, "/graphql/ws", protocol).await;
    send(&mut ws, start(protocol, "a", "{ __typename }")).await;
    expect_close(&mut ws, 4401).await;

    let mut ws = connect(&app, "/graphql/ws", protocol).await;
    init(&mut ws, json!({})).await;
    send(&mut ws, start(protocol, "a", LONG)).await;
    send(&mut ws, start(protocol, "a", LONG)).await;
    expect_close(&mut ws, 4409).await;

    // The last one's parse error quotes a long id: the close reason is cut to fit a control
    // frame, not sent whole (which the client would take for a protocol error).
    let long = "é".repeat(200);
    for bad in [
        // The legacy protocol's messages are not this one's.
        json!({ "type": "start", "id": "s", "payload": { "query": "{ __typename }" } }),
        json!({ "type": "stop", "id": "s" }),
        json!({ "type": "connection_terminate" }),
        json!({ "type": "bogus" }),
        json!({ "id": "a" }),
        json!([1, 2]),
        json!({ "type": long }),
    ] {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        init(&mut ws, json!({})).await;
        send(&mut ws, bad).await;
        expect_close(&mut ws, 4400).await;
    }

    // An id may be used again once its operation completed.
    let mut ws = connect(&app, "/graphql/ws", protocol).await;
    init(&mut ws, json!({})).await;
    // (A document the schema refuses gets one `error` with its errors and codes, and the
    // socket stays open.)
    send(&mut ws, start(protocol, "v", "subscription { nope }")).await;
    let v = recv_for(&mut ws, "v").await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"][0]["extensions"]["code"], "VALIDATION", "{v}");
    for _ in 0..2 {
        send(&mut ws, start(protocol, "q", "{ __typename }")).await;
        assert_eq!(recv_for(&mut ws, "q").await["type"], "next");
        assert_eq!(recv_for(&mut ws, "q").await["type"], "complete");
    }
}

/// Malformed or conflicting credentials in `connection_init` close the socket with 4403; they are
/// never read as anonymous, and one of two credentials is never picked by order.
#[tokio::test]
async fn malformed_or_conflicting_init_credentials_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let merchant = app.merchant("m1");
    let admin = app.admin.clone();
    for payload in [
        json!({ "token": 123 }),
        json!({ "token": ["x"] }),
        json!({ "Authorization": 123 }),
        json!({ "token": null }),
        json!({ "headers": "Bearer x" }),
        json!(format!("Bearer {admin}")),
        json!({ "Authorization": format!("Bearer {merchant}"), "token": admin }),
        json!({ "authorization": format!("Bearer {merchant}"), "Authorization": format!("Bearer {admin}") }),
        json!({ "headers": { "Authorization": format!("Bearer {merchant}") }, "token": admin }),
    ] {
        let mut ws = connect(&app, "/graphql/ws", "graphql-transport-ws").await;
        send(
            &mut ws,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        expect_close(&mut ws, 4403).await;
    }
    // The same credential twice is one credential.
    let mut ws = connect(&app, "/graphql/ws", "graphql-transport-ws").await;
    init(
        &mut ws,
        json!({ "Authorization": format!("Bearer {admin}"), "token": admin }),
    )
    .await;
}

/// The legacy protocol takes only its own messages: graphql-transport-ws's `subscribe` closes
/// the socket with 1002, as an invalid message there always did.
#[tokio::test]
async fn the_legacy_protocol_refuses_the_other_protocols_messages() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for bad in [
        json!({ "type": "subscribe", "id": "s", "payload": { "query": "{ __typename }" } }),
        json!({ "type": "complete", "id": "s" }),
    ] {
        let mut ws = connect(&app, "/graphql/ws", "graphql-ws").await;
        init(&mut ws, json!({})).await;
        send(&mut ws, bad).await;
        expect_close(&mut ws, 1002).await;
    }
}
