//! Every one of the ten event types, each from its real entry point (no `emitEvent`), arrives at
//! a GraphQL subscriber over WebSocket and at the merchant's webhook endpoint, signed.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp, docs},
    orders::order_in,
    webhooks::{TestReceiver, register, spec_signature},
    whatsapp::{APP_SECRET, PHONE_NUMBER_ID, app_with, post_webhook, text_message, webhook},
    ws::{Got, Ws, connect, next_within, recv, send},
};

const SUB: &str = r#"subscription($m: ID) {
  events(merchantId: $m) { id type merchantId payload data { __typename } }
}"#;

const PROBE: &str = r#"mutation($m: ID) {
  emitEvent(type: PRODUCT_UPDATED, merchantId: $m, payload: { productId: "probe" }) { id }
}"#;

/// Subscribes as `token`, then emits probes until one arrives, so the subscription is live
/// before the test starts (no fixed sleep). Probes are told apart by `productId: "probe"`.
async fn live_subscription(app: &TestApp, token: &str, merchant: &str) -> Ws {
    let mut ws = connect(app, "/graphql/ws", "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "token": token } }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "s", "payload": { "query": SUB, "variables": { "m": merchant } } }),
    )
    .await;
    // Probes until one arrives, for at most a minute: a subscription that never goes live fails
    // the test instead of hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription never went live"
        );
        app.gql_ok(Some(&app.admin), PROBE, json!({ "m": merchant }))
            .await;
        if let Some(Got::Json(_)) =
            next_within(&mut ws, std::time::Duration::from_millis(300)).await
        {
            return ws;
        }
    }
}

async fn ok(app: &TestApp, token: &str, doc: &str, vars: Value) -> Value {
    app.gql_ok(Some(token), doc, vars).await
}

async fn all_ten_event_types_reach_a_subscriber(db: Db) {
    let app = app_with(db, None).await;
    // The platform number serves `m-wa`, so the inbound webhook lands there too.
    let m = "m-wa";
    let shop = app.merchant(m);
    let service = app.token(smartbot::auth::Role::Service, None);
    // An endpoint for every type (an empty list), on a local receiver.
    let receiver = TestReceiver::start().await;
    let (_, secret) = register(&app, m, json!({ "url": receiver.url(), "eventTypes": [] })).await;
    let mut ws = live_subscription(&app, &shop, m).await;
    // Read the socket all along: reading answers the server's keep-alive pings, which a loaded
    // box can otherwise leave unanswered for longer than the server waits.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Got::Json(v)) = next_within(&mut ws, crate::common::EVENTUALLY).await {
            if tx.send(v).is_err() {
                break;
            }
        }
    });

    produce_all_ten(&app, &shop, &service, m).await;

    let mut seen = BTreeSet::new();
    let want: BTreeSet<String> = smartbot::events::EventType::ALL
        .iter()
        .map(|t| t.as_str().to_ascii_uppercase())
        .collect();
    while seen != want {
        // Generous: the order and message events wait for their jobs on a shared, loaded box.
        let v = match tokio::time::timeout(crate::common::EVENTUALLY, rx.recv()).await {
            Ok(Some(v)) => v,
            other => panic!(
                "waiting for {:?}: got {other:?}",
                want.difference(&seen).collect::<Vec<_>>()
            ),
        };
        assert_eq!(v["type"], "next", "{v:#}");
        let e = &v["payload"]["data"]["events"];
        if e["payload"]["productId"] == "probe" {
            continue;
        }
        assert_eq!(e["merchantId"], m);
        assert!(e["data"]["__typename"].is_string(), "typed data for {e}");
        seen.insert(e["type"].as_str().unwrap().to_owned());
    }
    reader.abort();

    // The same ten types reached the webhook endpoint, each signed to the Standard Webhooks spec
    // (checked by the test's own implementation) with the event id as `webhook-id`.
    let hooked = crate::common::eventually("the ten types at the webhook receiver", || async {
        let mut types = BTreeSet::new();
        for r in receiver.requests() {
            let body = r.json();
            if body["payload"]["productId"] == "probe" {
                continue;
            }
            let (id, ts) = (r.header("webhook-id"), r.header("webhook-timestamp"));
            assert_eq!(body["id"], id, "webhook-id is the event id");
            assert_eq!(body["merchant_id"], m);
            assert_eq!(
                r.header("webhook-signature"),
                spec_signature(&secret, id, ts, &r.body),
                "signature of {body}"
            );
            types.insert(
                body["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_uppercase(),
            );
        }
        if types == want {
            Ok(types)
        } else {
            Err(format!("{types:?}"))
        }
    })
    .await;
    assert_eq!(hooked.len(), 10);
}

/// Makes each of the ten event types happen for `m` through the API, the jobs and the inbound
/// WhatsApp webhook, as the dashboard and the bot would.
async fn produce_all_ten(app: &TestApp, shop: &str, service: &str, m: &str) {
    // bot_connected
    ok(
        app,
        service,
        docs::REPORT_BOT_STATUS,
        json!({ "m": m, "connected": true }),
    )
    .await;
    // product_updated
    ok(
        app,
        service,
        docs::UPDATE_PRODUCT,
        json!({ "m": m, "p": "bread", "changes": { "price": 130 } }),
    )
    .await;
    // order_created (through order_processing)
    let order = ok(
        app,
        shop,
        docs::SUBMIT_ORDER,
        json!({ "input": {
            "customerPhone": "+263781564004", "currency": "USD", "totalAmount": 250,
            "items": [{ "productId": "bread", "name": "Bread", "quantity": 2, "unitPrice": 125 }],
        }}),
    )
    .await["submitOrder"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    order_in(app, &order, "CONFIRMED").await;
    // order_status_changed
    ok(
        app,
        shop,
        docs::UPDATE_ORDER_STATUS,
        json!({ "id": order, "status": "PREPARING" }),
    )
    .await;
    ok(
        app,
        shop,
        docs::UPDATE_ORDER_STATUS,
        json!({ "id": order, "status": "READY" }),
    )
    .await;
    // payment_received
    ok(
        app,
        shop,
        docs::RECORD_PAYMENT,
        json!({ "order": order, "amount": 250, "currency": "USD", "ref": "EC-9" }),
    )
    .await;
    // delivery_started, delivery_completed
    let task = ok(app, shop, docs::CREATE_DELIVERY, json!({
        "order": order, "pickup": { "address": "Mbare Mart" }, "dropoff": { "address": "12 Samora Machel Ave" },
    }))
    .await["createDeliveryTask"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(
        app,
        shop,
        docs::ASSIGN_DRIVER,
        json!({ "id": task, "driver": "Farai" }),
    )
    .await;
    for status in ["PICKED_UP", "IN_TRANSIT", "DELIVERED"] {
        ok(
            app,
            shop,
            docs::UPDATE_DELIVERY_STATUS,
            json!({ "id": task, "status": status }),
        )
        .await;
    }
    // message_sent (through message_sending, recording transport)
    ok(
        app,
        shop,
        docs::SEND_MESSAGE,
        json!({ "input": { "to": "+263781564004", "text": "On its way!" } }),
    )
    .await;
    // message_received (the signed inbound webhook)
    let (status, _) = post_webhook(
        app,
        &webhook(
            PHONE_NUMBER_ID,
            json!([text_message("wamid.TEN", "Thanks!")]),
            json!([]),
        ),
        Some(APP_SECRET),
    )
    .await;
    assert_eq!(status, 200);
    // bot_disconnected
    ok(
        app,
        service,
        docs::REPORT_BOT_STATUS,
        json!({ "m": m, "connected": false }),
    )
    .await;
}

both_dbs!(all_ten_event_types_reach_a_subscriber);
