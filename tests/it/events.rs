//! Events end to end: emitted through GraphQL and REST, streamed over both WebSocket protocols,
//! scoped by merchant, resumable from the history (across a restart too), cut off when lagging,
//! and shared between two instances over Redis.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use smartbot::{
    auth::{MerchantId, MerchantScope},
    events::EventType,
};

use crate::{
    both_dbs,
    common::{Db, TestApp},
    ws::{Ws, connect, next_within, recv, send},
};

const SUB: &str = r#"subscription($types: [EventType!], $m: ID, $after: ID) {
  events(types: $types, merchantId: $m, after: $after) {
    id type merchantId payload data { __typename }
  }
}"#;

const EMIT: &str = r#"mutation($t: EventType!, $m: ID, $p: JSON!) {
  emitEvent(type: $t, merchantId: $m, payload: $p) { id type }
}"#;

/// A valid payload for each type.
fn payload(t: EventType, n: usize) -> Value {
    match t {
        EventType::MessageReceived => {
            json!({ "messageId": format!("in-{n}"), "from": "263781564004", "text": "hi" })
        }
        EventType::MessageSent => json!({ "messageId": format!("out-{n}"), "to": "263781564004" }),
        EventType::OrderCreated => {
            json!({ "orderId": format!("o-{n}"), "customerPhone": "263781564004", "totalAmount": 1250, "currency": "USD" })
        }
        EventType::OrderStatusChanged => {
            json!({ "orderId": format!("o-{n}"), "oldStatus": "PENDING", "newStatus": "CONFIRMED" })
        }
        EventType::ProductUpdated => json!({ "productId": format!("sku-{n}") }),
        EventType::PaymentReceived => {
            json!({ "orderId": format!("o-{n}"), "amount": 1250, "currency": "USD", "reference": format!("ref-{n}") })
        }
        EventType::DeliveryStarted => {
            json!({ "deliveryId": format!("d-{n}"), "orderId": format!("o-{n}") })
        }
        EventType::DeliveryCompleted => {
            json!({ "deliveryId": format!("d-{n}"), "orderId": format!("o-{n}") })
        }
        EventType::BotConnected | EventType::BotDisconnected => json!({ "reason": "test" }),
    }
}

/// How many events the history holds, as `recentEvents` counts them for an admin.
async fn stored(app: &TestApp) -> u64 {
    let data = app
        .gql_ok(
            Some(&app.admin),
            "{ recentEvents { totalCount } }",
            json!({}),
        )
        .await;
    data["recentEvents"]["totalCount"]
        .as_u64()
        .expect("a count")
}

fn gql_name(t: EventType) -> String {
    t.as_str().to_ascii_uppercase()
}

async fn emit_gql(app: &TestApp, t: EventType, merchant: &str, n: usize) -> String {
    let data = app
        .gql_ok(
            Some(&app.admin),
            EMIT,
            json!({ "t": gql_name(t), "m": merchant, "p": payload(t, n) }),
        )
        .await;
    data["emitEvent"]["id"].as_str().unwrap().to_owned()
}

async fn emit_rest(app: &TestApp, t: EventType, merchant: &str, n: usize) -> String {
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/events",
            Some(&app.admin),
            Some(json!({ "event_type": t.as_str(), "payload": payload(t, n), "merchant_id": merchant })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    assert_eq!(body["event"]["type"], t.as_str(), "{body:#}");
    body["event"]["id"].as_str().unwrap().to_owned()
}

/// Opens a socket, inits with `token` and subscribes as operation "s".
async fn subscribe(app: &TestApp, protocol: &str, token: &str, vars: Value) -> Ws {
    let before = app.server.state.events.subscriptions_opened();
    let ws = send_subscribe(app, protocol, token, vars).await;
    opened(&app.server.state, before).await;
    ws
}

/// Opens a socket, inits and sends the subscription, without waiting for it to open (for
/// subscriptions the server refuses).
async fn send_subscribe(app: &TestApp, protocol: &str, token: &str, vars: Value) -> Ws {
    let mut ws = init(app, protocol, token).await;
    let kind = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    send(
        &mut ws,
        json!({ "type": kind, "id": "s", "payload": { "query": SUB, "variables": vars } }),
    )
    .await;
    ws
}

/// Opens a socket and inits it with `token`.
async fn init(app: &TestApp, protocol: &str, token: &str) -> Ws {
    let mut ws = connect(app, "/graphql/ws", protocol).await;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "token": token } }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    ws
}

/// Waits until the server has opened a subscription after `before` (a count of
/// `subscriptions_opened`): from then on, every event emitted reaches it.
pub(crate) async fn opened(state: &smartbot::AppState, before: u64) {
    crate::common::eventually("the subscription is open", || async {
        let now = state.events.subscriptions_opened();
        if now > before {
            Ok(())
        } else {
            Err(format!("{now} opened"))
        }
    })
    .await
}

/// The next event on the socket, or the error that ended the subscription.
async fn next_event(ws: &mut Ws) -> Result<Value, Value> {
    let v = recv(ws).await;
    match v["type"].as_str() {
        Some("next" | "data") if v["payload"]["errors"].is_null() => {
            Ok(v["payload"]["data"]["events"].clone())
        }
        _ => Err(v),
    }
}

fn error_code(v: &Value) -> String {
    let p = &v["payload"];
    let e = if p["errors"].is_array() {
        &p["errors"][0]
    } else if p.is_array() {
        &p[0]
    } else {
        p
    };
    e["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

#[tokio::test]
async fn every_type_arrives_over_both_protocols() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = subscribe(&app, protocol, &app.admin, json!({})).await;
        let mut sent = vec![];
        for (n, t) in EventType::ALL.into_iter().enumerate() {
            // Half through GraphQL, half through the seed's REST endpoint.
            let id = if n % 2 == 0 {
                emit_gql(&app, t, "m-1", n).await
            } else {
                emit_rest(&app, t, "m-1", n).await
            };
            sent.push((id, t));
        }
        for (id, t) in sent {
            let e = next_event(&mut ws)
                .await
                .unwrap_or_else(|e| panic!("{protocol}: {e}"));
            assert_eq!(e["id"], id.as_str(), "{protocol}");
            assert_eq!(e["type"], gql_name(t), "{protocol}");
            assert_eq!(e["merchantId"], "m-1");
            let typename = format!("{:?}Data", t);
            assert_eq!(e["data"]["__typename"], typename.as_str(), "{e}");
        }
    }
}

async fn merchants_see_only_their_own(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.merchant("m-a"), app.merchant("m-b"));
    // Naming another merchant is refused, on the socket and in the history.
    let mut ws = send_subscribe(&app, "graphql-transport-ws", &a, json!({ "m": "m-b" })).await;
    let err = next_event(&mut ws).await.unwrap_err();
    assert_eq!(error_code(&err), "FORBIDDEN", "{err}");
    let q = r#"query($m: ID) { recentEvents(merchantId: $m) { totalCount nodes { merchantId } } }"#;
    let (_, body) = app.gql(Some(&a), q, json!({ "m": "m-b" })).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let (_, body) = app.gql(None, q, json!({})).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    let mut ws_a = subscribe(&app, "graphql-transport-ws", &a, json!({})).await;
    let mut ws_b = subscribe(&app, "graphql-ws", &b, json!({})).await;
    emit_gql(&app, EventType::OrderCreated, "m-b", 1).await;
    let mine = emit_gql(&app, EventType::OrderCreated, "m-a", 2).await;
    emit_rest(&app, EventType::PaymentReceived, "m-b", 3).await;
    let got = next_event(&mut ws_a).await.unwrap();
    assert_eq!(got["id"], mine.as_str(), "A got B's event first: {got}");
    assert!(
        next_within(&mut ws_a, Duration::from_millis(500))
            .await
            .is_none()
    );
    for _ in 0..2 {
        assert_eq!(next_event(&mut ws_b).await.unwrap()["merchantId"], "m-b");
    }
    let data = app.gql_ok(Some(&a), q, json!({})).await;
    assert_eq!(data["recentEvents"]["totalCount"], 1);
    let data = app.gql_ok(Some(&app.admin), q, json!({})).await;
    assert_eq!(data["recentEvents"]["totalCount"], 3);
    // Merchants cannot emit, even for themselves.
    let (_, body) = app
        .gql(Some(&a), EMIT, json!({ "t": "BOT_CONNECTED", "p": {} }))
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");
}

/// Live subscriptions that ask the same thing share one execution (`graphql::shared`): one per
/// query, variables and visibility class. Another merchant, or a replay with `after`, gets its
/// own; every subscriber still gets exactly what it may see; a shared execution ends with its
/// last subscriber.
#[tokio::test]
async fn identical_live_subscriptions_share_one_execution() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let hubs = app.server.state.subscriptions.clone();
    let (a, b) = (app.merchant("m-a"), app.merchant("m-b"));
    let first = emit_gql(&app, EventType::OrderCreated, "m-a", 0).await;
    let mut a1 = subscribe(&app, "graphql-transport-ws", &a, json!({})).await;
    let mut a2 = subscribe(&app, "graphql-ws", &a, json!({})).await;
    assert_eq!(
        hubs.running(),
        1,
        "two identical subscriptions, one execution"
    );
    let mut b1 = subscribe(&app, "graphql-transport-ws", &b, json!({})).await;
    assert_eq!(hubs.running(), 2, "another merchant is another execution");
    let mut replay = subscribe(&app, "graphql-transport-ws", &a, json!({ "after": first })).await;
    assert_eq!(hubs.running(), 2, "a replay is not shared");

    let for_a = emit_gql(&app, EventType::OrderCreated, "m-a", 1).await;
    let for_b = emit_gql(&app, EventType::OrderCreated, "m-b", 2).await;
    for ws in [&mut a1, &mut a2, &mut replay] {
        assert_eq!(next_event(ws).await.unwrap()["id"], for_a.as_str());
        assert!(next_within(ws, Duration::from_millis(300)).await.is_none());
    }
    assert_eq!(next_event(&mut b1).await.unwrap()["id"], for_b.as_str());
    assert!(
        next_within(&mut b1, Duration::from_millis(300))
            .await
            .is_none()
    );

    drop((a1, a2));
    crate::common::eventually("the shared execution of m-a ends", || {
        let n = hubs.running();
        async move {
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} running"))
            }
        }
    })
    .await;
    // A new subscriber starts a new execution and is live.
    let mut a3 = subscribe(&app, "graphql-transport-ws", &a, json!({})).await;
    assert_eq!(hubs.running(), 2);
    let again = emit_rest(&app, EventType::OrderCreated, "m-a", 3).await;
    assert_eq!(next_event(&mut a3).await.unwrap()["id"], again.as_str());
}

/// A shared execution's response is serialized once and written inside each operation's own
/// envelope: every subscriber gets its own operation id (escaped as JSON, whatever it holds) and
/// its protocol's message type around the same payload, two operations on one socket included,
/// and completing one leaves the other live.
#[tokio::test]
async fn a_shared_response_reaches_each_operation_under_its_own_id() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let hubs = app.server.state.subscriptions.clone();
    let token = app.merchant("m-env");
    let start = |kind: &str, id: &str| json!({ "type": kind, "id": id, "payload": { "query": SUB, "variables": {} } });
    let (id1, id2, id3) = ("q\"1\\", "ünï/2 <x>", "3\n");
    let before = app.server.state.events.subscriptions_opened();
    let mut modern = init(&app, "graphql-transport-ws", &token).await;
    send(&mut modern, start("subscribe", id1)).await;
    send(&mut modern, start("subscribe", id3)).await;
    let mut legacy = init(&app, "graphql-ws", &token).await;
    send(&mut legacy, start("start", id2)).await;
    opened(&app.server.state, before + 2).await;
    assert_eq!(
        hubs.running(),
        1,
        "three identical subscriptions, one execution"
    );

    let id = emit_gql(&app, EventType::OrderCreated, "m-env", 0).await;
    let mut got = vec![];
    for _ in 0..2 {
        got.push(recv(&mut modern).await);
    }
    got.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_owned());
    let l = recv(&mut legacy).await;
    assert_eq!(got[0]["type"], "next", "{}", got[0]);
    assert_eq!(got[0]["id"], id3);
    assert_eq!(got[1]["type"], "next", "{}", got[1]);
    assert_eq!(got[1]["id"], id1);
    assert_eq!(l["type"], "data", "{l}");
    assert_eq!(l["id"], id2);
    assert_eq!(l["payload"]["data"]["events"]["id"], id.as_str(), "{l}");
    assert_eq!(
        l["payload"]["data"]["events"]["type"], "ORDER_CREATED",
        "{l}"
    );
    assert_eq!(got[0]["payload"], l["payload"]);
    assert_eq!(got[1]["payload"], l["payload"]);

    // Completing one operation answers for that id only; the other on the socket stays live.
    send(&mut modern, json!({ "type": "complete", "id": id1 })).await;
    let done = recv(&mut modern).await;
    assert_eq!(done, json!({ "type": "complete", "id": id1 }));
    let second = emit_gql(&app, EventType::OrderCreated, "m-env", 1).await;
    let v = recv(&mut modern).await;
    assert_eq!(v["id"], id3, "{v}");
    assert_eq!(v["payload"]["data"]["events"]["id"], second.as_str(), "{v}");
    assert!(
        next_within(&mut modern, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(
        next_event(&mut legacy).await.unwrap()["id"],
        second.as_str()
    );
}

async fn resume_replays_exactly_what_was_missed(db: Db) {
    let app = TestApp::spawn(db).await;
    let first = emit_gql(&app, EventType::MessageReceived, "m-r", 0).await;
    let mut missed = vec![];
    for n in 1..=5 {
        missed.push(emit_rest(&app, EventType::MessageReceived, "m-r", n).await);
    }
    // Another merchant's events in between are not replayed to m-r.
    emit_gql(&app, EventType::MessageReceived, "m-other", 9).await;
    let token = app.merchant("m-r");
    let mut ws = subscribe(
        &app,
        "graphql-transport-ws",
        &token,
        json!({ "after": first }),
    )
    .await;
    for id in &missed {
        assert_eq!(next_event(&mut ws).await.unwrap()["id"], id.as_str());
    }
    // Then live, with no duplicate at the seam.
    let live = emit_gql(&app, EventType::MessageSent, "m-r", 6).await;
    assert_eq!(next_event(&mut ws).await.unwrap()["id"], live.as_str());
    assert!(
        next_within(&mut ws, Duration::from_millis(500))
            .await
            .is_none()
    );
    // recentEvents pages the same history, newest first.
    let data = app
        .gql_ok(
            Some(&token),
            r#"{ recentEvents(first: 2) { nodes { id } pageInfo { hasNextPage } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["recentEvents"]["nodes"][0]["id"], live.as_str());
    assert_eq!(data["recentEvents"]["nodes"][1]["id"], missed[4].as_str());
}

async fn payload_errors_name_their_field(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, body) = app
        .gql(
            Some(&app.admin),
            EMIT,
            json!({ "t": "ORDER_CREATED", "m": "m-1", "p": { "orderId": "o", "customerPhone": "263781564004", "totalAmount": 12.5, "currency": "USD" } }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "payload.totalAmount"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("expected a whole number") && !message.contains("i64"),
        "in the client's terms, not Rust's: {message}"
    );
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/events",
            Some(&app.admin),
            Some(json!({ "event_type": "payment_received", "merchant_id": "m-1", "payload": { "orderId": "o", "amount": 5, "currency": "USD" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "payload.reference", "{body:#}");
    // Values held to what the domains hold them to: order statuses as orders name them, known
    // currencies, no control characters in ids and text.
    for (t, p, field) in [
        (
            "ORDER_STATUS_CHANGED",
            json!({ "orderId": "o", "oldStatus": "FOO", "newStatus": "CONFIRMED" }),
            "payload.oldStatus",
        ),
        (
            "ORDER_STATUS_CHANGED",
            json!({ "orderId": "o", "oldStatus": "PENDING", "newStatus": "confirmed" }),
            "payload.newStatus",
        ),
        (
            "ORDER_CREATED",
            json!({ "orderId": "o", "customerPhone": "263781564004", "totalAmount": 5, "currency": "XYZ" }),
            "payload.currency",
        ),
        (
            "BOT_CONNECTED",
            json!({ "reason": "a\u{7}b" }),
            "payload.reason",
        ),
        (
            "PRODUCT_UPDATED",
            json!({ "productId": "p\u{1b}" }),
            "payload.productId",
        ),
    ] {
        let (_, body) = app
            .gql(
                Some(&app.admin),
                EMIT,
                json!({ "t": t, "m": "m-1", "p": p }),
            )
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{t}: {body:#}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{t}: {body:#}"
        );
    }
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/events",
            Some(&app.admin),
            Some(json!({ "event_type": "order_shipped", "merchant_id": "m-1", "payload": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    // The body's own field name, whichever way the type is wrong.
    assert_eq!(body["field"], "event_type", "{body:#}");
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/events",
            Some(&app.admin),
            Some(json!({ "merchant_id": "m-1", "payload": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["field"], "event_type", "{body:#}");
    // Every missing field is named in one answer, not one per attempt.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/events",
            Some(&app.admin),
            Some(json!({ "event_type": "order_created", "merchant_id": "m-1", "payload": { "currency": "USD" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    let mut named: Vec<&str> = body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("{body:#}"))
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    named.sort_unstable();
    assert_eq!(
        named,
        [
            "payload.customerPhone",
            "payload.orderId",
            "payload.totalAmount"
        ],
        "{body:#}"
    );
    // Admins must name the merchant.
    let (_, body) = app
        .gql(
            Some(&app.admin),
            EMIT,
            json!({ "t": "BOT_CONNECTED", "p": {} }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "merchantId",
        "{body:#}"
    );
    // Nothing was stored by any of these.
    assert_eq!(stored(&app).await, 0);
    // Line breaks are text.
    app.gql_ok(
        Some(&app.admin),
        EMIT,
        json!({ "t": "BOT_CONNECTED", "m": "m-1", "p": { "reason": "two\nlines" } }),
    )
    .await;
    assert_eq!(stored(&app).await, 1);
}

/// The group-commit writer (`db::BatchInserter`, behind the webhook delivery log), on event rows:
/// rows handed over together are all stored, and a row the database refuses fails alone, with
/// its own typed error, while the rest of its batch is stored.
async fn a_batch_stores_every_row_and_refuses_only_the_bad_one(db: Db) {
    use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    use smartbot::{db::BatchInserter, error::Error};
    let app = TestApp::spawn(db).await;
    let state = &app.server.state;
    let taken = emit_rest(&app, EventType::BotConnected, "m-batch", 0).await;
    let row = |id: uuid::Uuid| entity::event::ActiveModel {
        id: Set(id),
        event_type: Set("bot_connected".into()),
        merchant_id: Set("m-batch".into()),
        payload: Set(json!({ "reason": "batch" })),
        occurred_at: Set(chrono::Utc::now()),
        webhooks_dispatched_at: sea_orm::ActiveValue::NotSet,
        seq: sea_orm::ActiveValue::NotSet,
    };
    // A linger long enough that the 20 rows share one batch.
    let writer = BatchInserter::spawn(
        state.db.clone(),
        64,
        Some(Duration::from_millis(200)),
        "test events",
    );
    let ids: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::now_v7()).collect();
    let mut rows: Vec<_> = ids.iter().map(|id| row(*id)).collect();
    rows.insert(7, row(taken.parse().unwrap()));
    let results = futures::future::join_all(rows.into_iter().map(|r| writer.insert(r))).await;
    for (i, res) in results.iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(res, Err(Error::Conflict(_))),
                "the duplicate: {res:?}"
            );
        } else {
            assert!(res.is_ok(), "row {i}: {res:?}");
        }
    }
    let stored = entity::event::Entity::find()
        .filter(entity::event::Column::Id.is_in(ids.clone()))
        .count(&state.db)
        .await
        .unwrap();
    assert_eq!(stored, ids.len() as u64);
}

/// `recentEvents` pages the whole history newest first, in commit order, page after page; a
/// cursor from another list is refused.
async fn recent_events_page_through_the_history(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut emitted = vec![];
    for n in 0..7 {
        emitted.push(emit_gql(&app, EventType::BotConnected, "m-page", n).await);
    }
    let token = app.merchant("m-page");
    let q = r#"query($after: String) { recentEvents(first: 3, after: $after) {
        totalCount nodes { id } pageInfo { hasNextPage endCursor } } }"#;
    let (mut after, mut seen) = (Value::Null, vec![]);
    loop {
        let data = app.gql_ok(Some(&token), q, json!({ "after": after })).await;
        let page = &data["recentEvents"];
        assert_eq!(page["totalCount"], 7);
        for node in page["nodes"].as_array().unwrap() {
            seen.push(node["id"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        // The cursor names the event, not its position: positions count every merchant's
        // events, and would tell a merchant how many the others had in between.
        assert_eq!(
            smartbot::pagination::decode_cursor("evt", after.as_str().unwrap()).unwrap(),
            *seen.last().unwrap()
        );
    }
    emitted.reverse();
    assert_eq!(seen, emitted);
    // Another merchant's event is no page boundary of this merchant's.
    let foreign = emit_gql(&app, EventType::BotConnected, "m-other", 0).await;
    let foreign = smartbot::pagination::encode_cursor("evt", &foreign);
    let (code, _) = app
        .as_merchant("m-page")
        .gql_err(q, json!({ "after": foreign }))
        .await;
    assert_eq!(code, "HISTORY_EXPIRED");
    let orders_cursor =
        smartbot::pagination::encode_cursor("ord", &uuid::Uuid::now_v7().to_string());
    let (code, _) = app
        .as_merchant("m-page")
        .gql_err(q, json!({ "after": orders_cursor }))
        .await;
    assert_eq!(code, "VALIDATION");
}

/// `Events::emit` shares commits between concurrent emits, yet each emit returns only once its
/// own row is stored: read back the moment its emit returns, every event is in the history.
async fn concurrent_emits_are_each_stored_when_they_return(db: Db) {
    use sea_orm::EntityTrait;
    let app = TestApp::spawn(db).await;
    let state = &app.server.state;
    let emits = (0..120).map(|n| async move {
        let merchant = MerchantId::parse("m", &format!("m-group-{}", n % 3)).unwrap();
        let e = state
            .events
            .emit(
                EventType::BotConnected,
                &merchant,
                payload(EventType::BotConnected, n),
            )
            .await
            .expect("emit");
        let row = entity::event::Entity::find_by_id(e.id)
            .one(&state.db)
            .await
            .unwrap();
        (e.id, row.map(|r| r.merchant_id))
    });
    let got = futures::future::join_all(emits).await;
    let mut ids = std::collections::HashSet::new();
    for (n, (id, merchant)) in got.into_iter().enumerate() {
        assert_eq!(
            merchant.as_deref(),
            Some(format!("m-group-{}", n % 3).as_str()),
            "event {n} ({id}) was not stored when its emit returned"
        );
        assert!(ids.insert(id), "event {n}: id {id} twice");
    }
    assert_eq!(stored(&app).await, 120);
}

/// A replay longer than a page whose history is trimmed past `after` while it runs (its first
/// page already read and going out): what was read goes out whole, then HISTORY_EXPIRED. Never
/// the events after the trim's hole, as if nothing were missing.
async fn a_replay_trimmed_while_it_runs_ends_expired(db: Db) {
    use futures::StreamExt;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
    // More than one replay page (500 events).
    const STORED: usize = 700;
    const TRIMMED: usize = 600;
    let app = TestApp::spawn(db).await;
    let state = &app.server.state;
    let m = MerchantId::parse("m", "m-trim-replay").unwrap();
    let txn = state.db.begin().await.unwrap();
    let mut stored = Vec::with_capacity(STORED);
    for n in 0..STORED {
        let e = smartbot::events::service::record(
            &txn,
            EventType::BotConnected,
            &m,
            payload(EventType::BotConnected, n),
        )
        .await
        .unwrap();
        stored.push(e);
    }
    txn.commit().await.unwrap();
    let stream = state
        .events
        .stream(MerchantScope::One(m.clone()), vec![], Some(stored[0].id));
    futures::pin_mut!(stream);
    let mut got = vec![];
    let first = stream.next().await.expect("a replay").expect("replayed");
    got.push(first.id);
    // A trim of the merchant's history now, as the trimmer does it: its oldest events go.
    entity::event::Entity::delete_many()
        .filter(entity::event::Column::MerchantId.eq(m.as_str()))
        .filter(entity::event::Column::Seq.lte(stored[TRIMMED - 1].seq))
        .exec(&state.db)
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(e))) => {
                let n = stored.iter().position(|s| s.id == e.id);
                assert!(
                    n.is_some_and(|n| n <= 500),
                    "event {n:?} replayed after a hole (got {} before it)",
                    got.len()
                );
                got.push(e.id);
            }
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!(
                "the replay ended without an error after {} events",
                got.len()
            ),
            Err(_) => panic!("no error within 5 s after {} events", got.len()),
        }
    };
    assert!(
        matches!(end, smartbot::error::Error::HistoryExpired(_)),
        "{end:?}"
    );
    let want: Vec<_> = stored[1..=500].iter().map(|e| e.id).collect();
    assert_eq!(got, want, "the page read before the trim, whole");
}

both_dbs!(
    merchants_see_only_their_own,
    a_batch_stores_every_row_and_refuses_only_the_bad_one,
    concurrent_emits_are_each_stored_when_they_return,
    resume_replays_exactly_what_was_missed,
    payload_errors_name_their_field,
    recent_events_page_through_the_history,
    a_replay_trimmed_while_it_runs_ends_expired,
);

/// Waits until the background trim has left fewer than `n` events stored.
async fn trimmed_below(app: &TestApp, n: u64) {
    crate::common::eventually("the history is trimmed", || async {
        match stored(app).await {
            kept if kept < n => Ok(()),
            kept => Err(format!("{kept} kept")),
        }
    })
    .await;
}

/// An admin's subscription resuming `after`, across merchants or for `merchant`.
async fn admin_resume(app: &TestApp, after: &str, merchant: Option<&str>) -> Ws {
    subscribe(
        app,
        "graphql-transport-ws",
        &app.admin,
        json!({ "after": after, "m": merchant }),
    )
    .await
}

/// `after` older than the history holds is an error, never a silent skip.
#[tokio::test]
async fn an_expired_resume_point_is_an_error() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.event_history = 3).await;
    let first = emit_gql(&app, EventType::BotConnected, "m-h", 0).await;
    // The history is trimmed every 32 emits, in the background: past that, `first` is gone.
    for n in 1..40 {
        emit_gql(&app, EventType::BotConnected, "m-h", n).await;
    }
    trimmed_below(&app, 40).await;
    for after in [first, uuid::Uuid::now_v7().to_string()] {
        let mut ws = admin_resume(&app, &after, None).await;
        let err = next_event(&mut ws).await.unwrap_err();
        assert_eq!(error_code(&err), "HISTORY_EXPIRED", "{err}");
    }
    let kept = stored(&app).await;
    assert!((3..=3 + 32).contains(&kept), "kept {kept}");
}

/// Across merchants (admin or service, no `merchantId`), `after` being in the history is not
/// enough: another merchant's history, trimmed on its own, may have lost events after it.
#[tokio::test]
async fn an_expired_resume_point_across_merchants_is_an_error() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.event_history = 5).await;
    let quiet = emit_gql(&app, EventType::BotConnected, "m-quiet", 0).await;
    // Still whole: the busy merchant's history is not full yet.
    for n in 0..4 {
        emit_gql(&app, EventType::BotConnected, "m-busy", n).await;
    }
    let mut ws = admin_resume(&app, &quiet, None).await;
    for _ in 0..4 {
        next_event(&mut ws).await.expect("replayed");
    }
    for n in 4..70 {
        emit_gql(&app, EventType::BotConnected, "m-busy", n).await;
    }
    trimmed_below(&app, 60).await;
    // `quiet` is still there, but what the busy merchant emitted after it is not all there.
    let mut ws = admin_resume(&app, &quiet, None).await;
    let err = next_event(&mut ws).await.unwrap_err();
    assert_eq!(error_code(&err), "HISTORY_EXPIRED", "{err}");
    // Scoped to the quiet merchant, its own history is whole.
    let mut ws = admin_resume(&app, &quiet, Some("m-quiet")).await;
    emit_gql(&app, EventType::BotConnected, "m-quiet", 1).await;
    let e = next_event(&mut ws)
        .await
        .expect("live after a whole replay");
    assert_eq!(e["merchantId"], "m-quiet", "{e}");
}

/// Every merchant's history is trimmed, whichever order merchants emit in, and whether the
/// events are emitted or recorded by a domain and published (here: bot presence). A count shared
/// by all merchants trimmed only the merchant whose emit landed on the turn.
#[tokio::test]
async fn every_merchants_history_is_trimmed() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.event_history = 3).await;
    let count = |m: &'static str| {
        let app = &app;
        async move {
            app.gql_ok(
                Some(&app.admin),
                "query($m: ID) { recentEvents(merchantId: $m) { totalCount } }",
                json!({ "m": m }),
            )
            .await["recentEvents"]["totalCount"]
                .as_u64()
                .expect("a count")
        }
    };
    // Two merchants in turn: with a shared count of 32, one of them always took the turn.
    for n in 0..70 {
        emit_gql(&app, EventType::BotConnected, "m-even", n).await;
        emit_gql(&app, EventType::BotConnected, "m-odd", n).await;
    }
    // Recorded by the bots domain, then published.
    for n in 0..70 {
        app.as_service()
            .gql_ok(
                "mutation($c: Boolean!) { reportBotStatus(merchantId: \"m-bot\", connected: $c) { connected } }",
                json!({ "c": n % 2 == 0 }),
            )
            .await;
    }
    for m in ["m-even", "m-odd", "m-bot"] {
        crate::common::eventually("every history is trimmed", || async {
            match count(m).await {
                n if n <= 3 + 32 => Ok(()),
                n => Err(format!("{m}: {n} kept")),
            }
        })
        .await;
        assert!(count(m).await >= 3, "{m}");
    }
}

/// A consumer that falls a whole buffer behind is cut off with LAGGED; others keep receiving.
#[tokio::test]
async fn a_lagging_consumer_is_cut_off() {
    use futures::StreamExt;
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.event_buffer = 4).await;
    let events = app.server.state.events.clone();
    let m = MerchantId::parse("m", "m-lag").unwrap();
    let slow = events.stream(MerchantScope::All, vec![], None);
    let fast = events.stream(MerchantScope::All, vec![], None);
    futures::pin_mut!(slow, fast);
    let mut got = 0;
    for n in 0..12 {
        events
            .emit(
                EventType::BotConnected,
                &m,
                json!({ "reason": format!("{n}") }),
            )
            .await
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), fast.next())
            .await
            .unwrap();
        assert!(e.unwrap().is_ok());
        got += 1;
    }
    assert_eq!(got, 12);
    let cut = tokio::time::timeout(Duration::from_secs(5), slow.next())
        .await
        .unwrap();
    match cut {
        Some(Err(e)) => {
            assert_eq!(e.code(), "LAGGED", "{e}");
            // The count of events missed counts every merchant's: a merchant's subscriber
            // would learn how busy the others are.
            assert!(
                !e.to_string().chars().any(|c| c.is_ascii_digit()),
                "a count in the message: {e}"
            );
        }
        other => panic!("expected LAGGED, got {other:?}"),
    }
    assert!(slow.next().await.is_none(), "the stream ends after LAGGED");
}

/// What follows an event recorded in a transaction (committed, not yet published).
enum Then {
    /// A later event is emitted, then the first is published late.
    PublishLate,
    /// A later event is emitted; the first is never published.
    EmitNext,
    /// Nothing: the first is never published and nothing shows the gap.
    Nothing,
}

/// Live subscribers get every committed event, in commit order, each once, whatever follows it
/// (`then`).
async fn live_events_come_in_commit_order(then: Then) {
    use futures::StreamExt;
    let app = TestApp::spawn(Db::Sqlite).await;
    let events = app.server.state.events.clone();
    let m = MerchantId::parse("m", "m-order").unwrap();
    let stream = events.stream(MerchantScope::All, vec![], None);
    futures::pin_mut!(stream);
    let older = smartbot::events::service::record(
        &app.server.state.db,
        EventType::BotConnected,
        &m,
        json!({}),
    )
    .await
    .unwrap();
    let mut want = vec![older.id];
    if !matches!(then, Then::Nothing) {
        let newer = events
            .emit(EventType::BotDisconnected, &m, json!({}))
            .await
            .unwrap();
        assert_eq!(newer.seq, older.seq + 1);
        want.push(newer.id);
    }
    if matches!(then, Then::PublishLate) {
        events.publish(older.clone()).await;
    }
    for want in want {
        let got = tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("an event within 3 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.id, want);
    }
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "delivered twice: {more:?}");
}

/// An event's id is taken when its emit begins and it is published after the commit, so an event
/// can be published before one that committed earlier: the later one waits for the earlier.
#[tokio::test]
async fn an_event_published_after_a_newer_one_arrives_first() {
    live_events_come_in_commit_order(Then::PublishLate).await
}

/// An event committed but never published (its emitter failed after the commit, or the bus lost
/// it) does not hold back the ones after it for good, and is not skipped: live subscribers get it
/// from the history, in its place.
#[tokio::test]
async fn an_unpublished_event_is_delivered_from_the_history_in_its_place() {
    live_events_come_in_commit_order(Then::EmitNext).await
}

/// An event committed and never published, with nothing emitted after it to show the gap (its
/// emitter went away after the commit, or the bus refused it), still reaches live subscribers:
/// when the bus is quiet the sequencer looks in the history.
#[tokio::test]
async fn an_event_never_published_with_nothing_after_it_still_arrives() {
    live_events_come_in_commit_order(Then::Nothing).await
}

/// A bus whose publish never answers (a hung Redis): emits still return once the event is
/// stored, and subscribers still get it (from the history).
#[tokio::test]
async fn an_emit_does_not_wait_for_a_hung_bus() {
    use futures::StreamExt;
    use smartbot::events::bus::{Delivery, EventBus};
    struct Hung(tokio::sync::broadcast::Sender<Delivery>);
    #[async_trait::async_trait]
    impl EventBus for Hung {
        async fn publish(
            &self,
            _: std::sync::Arc<smartbot::events::Event>,
        ) -> smartbot::error::Result<()> {
            std::future::pending().await
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Delivery> {
            self.0.subscribe()
        }
        fn backend(&self) -> &'static str {
            "hung"
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::config_in(dir.path());
    let db = smartbot::db::connect(&config).await.unwrap();
    smartbot::db::migrate(&db).await.unwrap();
    let bus = std::sync::Arc::new(Hung(tokio::sync::broadcast::channel(16).0));
    let events = std::sync::Arc::new(
        smartbot::events::service::Events::start(db, bus, 100, 16)
            .await
            .unwrap(),
    );
    let stream = events.stream(MerchantScope::All, vec![], None);
    futures::pin_mut!(stream);
    let m = MerchantId::parse("m", "m-hung").unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(2),
        events.emit(EventType::BotConnected, &m, json!({})),
    )
    .await
    .expect("the emit returns without waiting for the bus")
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("the event within 3 s")
        .unwrap()
        .unwrap();
    assert_eq!(got.id, e.id);
}

/// Emits overlap: each id is taken when its emit begins, and the commits land in another order
/// (here each transaction holds its event a moment before it commits, as a domain's does). A
/// subscriber that reconnects every few events with `after` = the last id it received still gets
/// every event exactly once, in commit order. (Resuming by id order missed some and repeated
/// others.)
async fn resumes_are_exact_when_emits_overlap(app: TestApp) {
    use futures::StreamExt;
    use sea_orm::TransactionTrait;
    const EMITTERS: usize = 6;
    const EACH: usize = 40;
    let state = app.server.state.clone();
    let events = state.events.clone();
    let mut stream = Box::pin(events.stream(MerchantScope::All, vec![], None));
    let emitters = tokio::spawn(async move {
        let emit = |w: usize| {
            let state = state.clone();
            async move {
                let m = MerchantId::parse("m", &format!("m-overlap-{}", w % 2)).unwrap();
                let mut ids = vec![];
                for n in 0..EACH {
                    let txn = state.db.begin().await.unwrap();
                    let e = smartbot::events::service::record(
                        &txn,
                        EventType::BotConnected,
                        &m,
                        json!({ "n": n }),
                    )
                    .await
                    .unwrap();
                    let hold = (w * 7 + n * 13) % 4;
                    tokio::time::sleep(Duration::from_millis(hold as u64)).await;
                    txn.commit().await.unwrap();
                    ids.push(e.id);
                    state.events.publish(e).await;
                }
                ids
            }
        };
        futures::future::join_all((0..EMITTERS).map(emit))
            .await
            .concat()
    });
    let mut got: Vec<(uuid::Uuid, i64)> = vec![];
    let mut resumes = 0;
    loop {
        // Reconnects after every 5 events, and once more after the emitters are done.
        let quiet = emitters.is_finished();
        let mut taken = 0;
        while taken < 5 {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(e))) => {
                    got.push((e.id, e.seq));
                    taken += 1;
                }
                Ok(other) => panic!("the stream ended: {other:?}"),
                Err(_) => break,
            }
        }
        if quiet && taken == 0 {
            break;
        }
        let after = got.last().map(|(id, _)| *id);
        stream = Box::pin(events.stream(MerchantScope::All, vec![], after));
        resumes += 1;
    }
    let emitted = emitters.await.unwrap();
    assert!(resumes > 20, "{resumes} resumes");
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<_> = got.iter().filter(|(id, _)| !seen.insert(*id)).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let missed: Vec<_> = emitted.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "{} of {} never delivered",
        missed.len(),
        emitted.len()
    );
    assert_eq!(got.len(), emitted.len());
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "not in commit order"
    );
}

mod resumes_are_exact_when_emits_overlap {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::resumes_are_exact_when_emits_overlap(TestApp::spawn(Db::Sqlite).await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::resumes_are_exact_when_emits_overlap(TestApp::spawn(Db::Postgres).await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_and_redis() {
        let prefix = format!("smartbot-test-{}:", uuid::Uuid::new_v4().simple());
        let redis = crate::common::redis_url();
        let app = TestApp::spawn_with(Db::Postgres, |c| {
            c.redis_url = Some(redis);
            c.redis_prefix = prefix;
        })
        .await;
        assert_eq!(app.server.state.events.bus().backend(), "redis");
        super::resumes_are_exact_when_emits_overlap(app).await
    }
}

/// The history survives a restart: resume works against a new process on the same database.
#[tokio::test]
async fn resume_works_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || crate::common::config_in(dir.path());
    let m = MerchantId::parse("m", "m-restart").unwrap();
    let server = smartbot::spawn(config()).await.unwrap();
    let first = server
        .state
        .events
        .emit(EventType::BotConnected, &m, json!({}))
        .await
        .unwrap();
    let second = server
        .state
        .events
        .emit(EventType::BotDisconnected, &m, json!({}))
        .await
        .unwrap();
    server.stop().await.unwrap();

    let server = smartbot::spawn(config()).await.unwrap();
    use futures::StreamExt;
    let stream = server
        .state
        .events
        .stream(MerchantScope::One(m), vec![], Some(first.id));
    futures::pin_mut!(stream);
    let replayed = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(replayed.id, second.id);
    server.stop().await.unwrap();
}

/// Two instances on one PostgreSQL and one Redis: an event emitted on A reaches a subscriber on
/// B exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_instances_over_redis() {
    let prefix = format!("smartbot-test-{}:", uuid::Uuid::new_v4().simple());
    let redis = crate::common::redis_url();
    let a = TestApp::spawn_with(Db::Postgres, |c| {
        c.redis_url = Some(redis.clone());
        c.redis_prefix = prefix.clone();
        c.run_workers = false;
    })
    .await;
    let mut config = (*a.server.state.config).clone();
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().into();
    config.port = 0;
    let b = smartbot::spawn(config).await.unwrap();
    assert_eq!(b.state.events.bus().backend(), "redis");

    let mut ws = connect_to(&b, &a.admin).await;
    let id = emit_gql(&a, EventType::OrderCreated, "m-x", 1).await;
    let e = next_event(&mut ws).await.unwrap();
    assert_eq!(e["id"], id.as_str());
    assert!(
        next_within(&mut ws, Duration::from_millis(700))
            .await
            .is_none(),
        "delivered more than once"
    );
    b.stop().await.unwrap();
}

async fn connect_to(server: &smartbot::RunningServer, token: &str) -> Ws {
    let before = server.state.events.subscriptions_opened();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/graphql/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "token": token } }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "s", "payload": { "query": SUB, "variables": {} } }),
    )
    .await;
    opened(&server.state, before).await;
    ws
}

/// With Redis, the rate limit is one allowance across instances, not one per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_shared_across_instances() {
    let prefix = format!("smartbot-test-{}:", uuid::Uuid::new_v4().simple());
    let redis = crate::common::redis_url();
    let tweak = |c: &mut smartbot::Config| {
        c.redis_url = Some(redis.clone());
        c.redis_prefix = prefix.clone();
        c.rate_limit = Some("6/15m".parse().unwrap());
        c.run_workers = false;
    };
    let a = TestApp::spawn_with(Db::Sqlite, tweak).await;
    let b = TestApp::spawn_with(Db::Sqlite, tweak).await;
    let mut statuses = vec![];
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app
            .client
            .get(app.url("/api/templates"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
}

/// Product-media changes emit `product_updated`, recorded in the change's own transaction.
async fn product_media_changes_emit_product_updated(db: Db) {
    use crate::common::docs::{ATTACH_MEDIA, DETACH_MEDIA, REORDER_MEDIA};
    let app = TestApp::spawn(db).await;
    let token = app.merchant("m-shop");
    let mut ws = subscribe(
        &app,
        "graphql-transport-ws",
        &token,
        json!({ "types": ["PRODUCT_UPDATED"] }),
    )
    .await;
    let media = app.upload(&token, &crate::common::tiny_png(7), None).await;
    let media_id = media["id"].as_str().unwrap().to_owned();
    let vars = json!({ "product": "sku-9", "media": media_id });
    app.gql_ok(Some(&token), ATTACH_MEDIA, vars.clone()).await;
    app.gql_ok(
        Some(&token),
        REORDER_MEDIA,
        json!({ "product": "sku-9", "ids": [media_id] }),
    )
    .await;
    app.gql_ok(Some(&token), DETACH_MEDIA, vars).await;
    for change in ["media_attached", "media_reordered", "media_detached"] {
        let e = next_event(&mut ws).await.unwrap();
        assert_eq!(e["type"], "PRODUCT_UPDATED");
        assert_eq!(e["merchantId"], "m-shop");
        assert_eq!(
            e["payload"],
            json!({ "productId": "sku-9", "change": change })
        );
    }
    // A refused change emits nothing.
    let (_, body) = app
        .gql(
            Some(&app.merchant("m-other")),
            DETACH_MEDIA,
            json!({ "product": "sku-9", "media": media["id"] }),
        )
        .await;
    assert!(body.get("errors").is_some(), "{body:#}");
    assert!(
        next_within(&mut ws, Duration::from_millis(500))
            .await
            .is_none()
    );
}

both_dbs!(product_media_changes_emit_product_updated);

/// Over real sockets: a client that stops reading is cut off with LAGGED once the server's
/// per-subscriber buffer overflows (the socket's own buffers fill first, then its buffer on the
/// execution both clients share), while a client that keeps reading gets every event. Server
/// memory is bounded by the socket buffers plus EVENT_BUFFER responses, whatever the stalled
/// client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_socket_is_cut_off_with_lagged() {
    use futures::StreamExt;

    const N: usize = 700;
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.event_buffer = 16).await;

    // The stalled client: a tiny receive buffer, and it reads nothing until every event is out.
    let mut slow = small_window_socket(&app).await;
    let init = json!({ "type": "connection_init", "payload": { "token": app.admin } });
    send(&mut slow, init).await;
    assert_eq!(recv(&mut slow).await["type"], "connection_ack");
    let sub =
        json!({ "type": "subscribe", "id": "s", "payload": { "query": SUB, "variables": {} } });
    let before = app.server.state.events.subscriptions_opened();
    send(&mut slow, sub).await;
    opened(&app.server.state, before).await;

    // The attentive client reads as events arrive.
    let mut fast = subscribe(&app, "graphql-transport-ws", &app.admin, json!({})).await;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = got.clone();
    let reader = tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        while seen.load(Ordering::SeqCst) < N {
            match next_event(&mut fast).await {
                Ok(_) => seen.fetch_add(1, Ordering::SeqCst),
                Err(e) => panic!("the attentive client was cut off: {e}"),
            };
        }
    });

    // 15 KB payloads (an extra field: producers may say more), so the socket buffers (a few MB) fill after a few hundred events.
    let events = app.server.state.events.clone();
    let m = MerchantId::parse("m", "m-stall").unwrap();
    let filler = "x".repeat(15_000);
    for n in 1..=N {
        events
            .emit(
                EventType::BotConnected,
                &m,
                json!({ "reason": "stall", "note": filler }),
            )
            .await
            .unwrap();
        // Paced by the attentive client, so only the stalled one can fall behind.
        let seen = got.clone();
        crate::common::eventually("the attentive client keeps up", || {
            let seen = seen.clone();
            async move {
                let have = seen.load(std::sync::atomic::Ordering::SeqCst);
                if have + 4 >= n {
                    Ok(())
                } else {
                    Err(format!("{have} of {n}"))
                }
            }
        })
        .await;
    }
    reader.await.unwrap();

    // Now the stalled client reads: what the buffers held, then LAGGED, then nothing more.
    let mut delivered = 0;
    let code = loop {
        match next_event(&mut slow).await {
            Ok(_) => delivered += 1,
            Err(v) => break error_code(&v),
        }
    };
    assert_eq!(code, "LAGGED", "after {delivered} events");
    assert!(
        delivered < N,
        "the stalled client was cut off, not buffered without bound ({delivered} of {N})"
    );
    let _ = slow.next().await;
}

/// A graphql-transport-ws connection whose client socket has a 4 KB receive buffer: a reader
/// that stops, or reads slowly, makes the server's writes wait soon.
async fn small_window_socket(
    app: &TestApp,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(app.server.addr).await.unwrap();
    let req = crate::ws::request(app, "/graphql/ws", "graphql-transport-ws", None);
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

/// A peer that reads slowly but steadily is kept, however long a write to it takes: its socket
/// keeps taking bytes. (It was dropped when a burst took longer than two keep-alive intervals to
/// drain, and its pong, queued behind the burst, could not arrive in time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_kept() {
    use futures::StreamExt;

    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.ws_keepalive = std::time::Duration::from_millis(200);
    })
    .await;
    let mut slow = small_window_socket(&app).await;
    send(
        &mut slow,
        json!({ "type": "connection_init", "payload": { "token": app.admin } }),
    )
    .await;
    assert_eq!(recv(&mut slow).await["type"], "connection_ack");
    let before = app.server.state.events.subscriptions_opened();
    send(
        &mut slow,
        json!({ "type": "subscribe", "id": "s", "payload": { "query": SUB, "variables": {} } }),
    )
    .await;
    opened(&app.server.state, before).await;
    let events = app.server.state.events.clone();
    let m = MerchantId::parse("m", "m-steady").unwrap();
    let filler = "x".repeat(15_000);
    const N: usize = 30;
    for _ in 0..N {
        events
            .emit(
                EventType::BotConnected,
                &m,
                json!({ "reason": "steady", "note": filler }),
            )
            .await
            .unwrap();
    }
    // About 90 ms per 15 KB frame through a 4 KB window: the burst takes well over two
    // intervals (400 ms) to drain, and the reader never stops.
    let mut got = 0;
    while got < N {
        match slow.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "next", "{v}");
                got += 1;
                tokio::time::sleep(std::time::Duration::from_millis(90)).await;
            }
            Some(Ok(_)) => {}
            other => panic!("the steady reader was dropped after {got} of {N}: {other:?}"),
        }
    }
    // Still connected: a later event arrives. (A dropped socket still delivers what the kernel
    // held for it, so only what comes after the burst tells.)
    events
        .emit(EventType::BotConnected, &m, json!({ "reason": "after" }))
        .await
        .unwrap();
    let after = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match slow.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => break Some(t),
                Some(Ok(_)) => {}
                _ => break None,
            }
        }
    })
    .await
    .expect("no answer after the burst");
    let after = after.expect("the steady reader was dropped after the burst");
    assert!(after.contains("\"after\""), "{after}");
}

/// A socket whose peer stops reading is dropped once a write has waited two keep-alive
/// intervals, whatever it subscribed to: while its writes wait, no ping goes out, and its
/// operations' buffers held what arrived (a hundred distinct subscriptions of 16 KB events held
/// over a gigabyte). Reading afterwards finds the connection ended, not kept open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_dropped() {
    use futures::StreamExt;

    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.ws_keepalive = std::time::Duration::from_millis(300);
    })
    .await;
    let mut slow = small_window_socket(&app).await;
    let init = json!({ "type": "connection_init", "payload": { "token": app.admin } });
    send(&mut slow, init).await;
    assert_eq!(recv(&mut slow).await["type"], "connection_ack");
    // Distinct subscriptions (each its own execution and buffer).
    let before = app.server.state.events.subscriptions_opened();
    for i in 0..10 {
        let query =
            format!("subscription S{i} {{ events(types: [BOT_CONNECTED]) {{ id payload }} }}");
        send(
            &mut slow,
            json!({ "type": "subscribe", "id": format!("s{i}"), "payload": { "query": query } }),
        )
        .await;
    }
    crate::common::eventually("ten subscriptions open", || {
        let opened = app.server.state.events.subscriptions_opened();
        async move {
            if opened >= before + 10 {
                Ok(())
            } else {
                Err(format!("{}", opened - before))
            }
        }
    })
    .await;
    let events = app.server.state.events.clone();
    let m = MerchantId::parse("m", "m-stop").unwrap();
    let filler = "x".repeat(15_000);
    for _ in 0..200 {
        events
            .emit(
                EventType::BotConnected,
                &m,
                json!({ "reason": "stop", "note": filler }),
            )
            .await
            .unwrap();
    }
    // Without reading anything: once a write has waited two intervals, the socket is dropped,
    // and its executions with it.
    let subscriptions = app.server.state.subscriptions.clone();
    crate::common::eventually("the socket dropped, and its executions", || {
        let running = subscriptions.running();
        async move {
            if running == 0 {
                Ok(())
            } else {
                Err(format!("{running} running"))
            }
        }
    })
    .await;
    // Reading now finds what was sent before, then the end.
    let drained = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut frames = 0;
        while let Some(Ok(_)) = slow.next().await {
            frames += 1;
        }
        frames
    })
    .await
    .expect("the server kept a socket that stopped reading");
    assert!(drained < 10 * 200, "{drained} frames");
}
