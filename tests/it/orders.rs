//! Orders, payments, deliveries, bot presence and product updates, black-box through GraphQL and
//! the queue, on SQLite and PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp, docs, eventually},
};

const PHONE: &str = "+263781564004";

fn order_input(key: Option<&str>) -> Value {
    json!({
        "customerPhone": PHONE,
        "items": [
            { "productId": "bread", "name": "Bread", "quantity": 2, "unitPrice": 125 },
            { "productId": "milk", "name": "Milk 1L", "quantity": 1, "unitPrice": 99 },
        ],
        "currency": "USD",
        "totalAmount": 349,
        "idempotencyKey": key,
    })
}

async fn submit(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql_ok(Some(token), docs::SUBMIT_ORDER, json!({ "input": input }))
        .await["submitOrder"]
        .clone()
}

pub async fn order_in(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(&format!("order {id} is {status}"), || async {
        let o = app
            .gql_ok(Some(&app.admin), docs::ORDER_BY_ID, json!({ "id": id }))
            .await["order"]
            .clone();
        if o["status"] == status {
            Ok(o)
        } else {
            Err(o.to_string())
        }
    })
    .await
}

async fn events_of(app: &TestApp, merchant: &str, kind: &str) -> Vec<Value> {
    app.gql_ok(
        Some(&app.admin),
        docs::RECENT_EVENTS,
        json!({ "m": merchant, "types": [kind] }),
    )
    .await["recentEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["payload"].clone())
        .collect()
}

async fn set_status(app: &TestApp, token: &str, id: &str, status: &str) -> Result<Value, String> {
    let (_, body) = app
        .gql(
            Some(token),
            docs::UPDATE_ORDER_STATUS,
            json!({ "id": id, "status": status }),
        )
        .await;
    match body["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => Err(code.to_owned()),
        None => Ok(body["data"]["updateOrderStatus"].clone()),
    }
}

/// A delivery task for `order` (READY), with a driver assigned; returns its id.
async fn assigned_task(app: &TestApp, shop: &str, order: &str) -> String {
    let place = |a: &str| json!({ "address": a, "latitude": -17.83, "longitude": 31.05 });
    let vars = json!({ "order": order, "pickup": place("Mbare Mart"), "dropoff": place("12 Samora Machel Ave") });
    let id = app.gql_ok(Some(shop), docs::CREATE_DELIVERY, vars).await["createDeliveryTask"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.gql_ok(
        Some(shop),
        docs::ASSIGN_DRIVER,
        json!({ "id": id, "driver": "Farai" }),
    )
    .await;
    id
}

/// A valid order is confirmed by the job (with `order_created`); each invalid one is rejected
/// with its reason, and the job completes (no retry).
async fn orders_are_validated_by_the_job(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let o = submit(&app, &shop, order_input(None)).await;
    assert_eq!(o["status"], "PENDING");
    assert_eq!(o["customerPhone"], "263781564004");
    let id = o["id"].as_str().unwrap();
    order_in(&app, id, "CONFIRMED").await;
    let created = events_of(&app, "m-shop", "ORDER_CREATED").await;
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0],
        json!({ "orderId": id, "customerPhone": "263781564004", "totalAmount": 349, "currency": "USD" })
    );

    let bad = |patch: Value| {
        let mut i = order_input(None);
        for (k, v) in patch.as_object().unwrap() {
            i[k] = v.clone();
        }
        i
    };
    let cases = [
        (
            bad(json!({ "items": [], "totalAmount": 0 })),
            "at least one item",
        ),
        (
            bad(
                json!({ "items": [{ "productId": "b", "name": "B", "quantity": 0, "unitPrice": 5 }], "totalAmount": 0 }),
            ),
            "items[0].quantity must be greater than 0",
        ),
        (bad(json!({ "totalAmount": 350 })), "does not match"),
        (bad(json!({ "currency": "XYZ" })), "ISO 4217"),
    ];
    for (input, reason) in cases {
        let o = submit(&app, &shop, input).await;
        let done = order_in(&app, o["id"].as_str().unwrap(), "REJECTED").await;
        assert!(
            done["reason"].as_str().unwrap().contains(reason),
            "{done:#} vs {reason}"
        );
    }
    assert_eq!(events_of(&app, "m-shop", "ORDER_CREATED").await.len(), 1);
    let rejected = events_of(&app, "m-shop", "ORDER_STATUS_CHANGED").await;
    assert_eq!(rejected.len(), 4);
    assert!(
        rejected
            .iter()
            .all(|p| p["newStatus"] == "REJECTED" && p["reason"].is_string())
    );
    // The typed data carries the reason too, as the payload does.
    let typed = app
        .gql_ok(
            Some(&app.admin),
            r#"query($m: ID) { recentEvents(merchantId: $m, types: [ORDER_STATUS_CHANGED]) {
                nodes { payload data { ... on OrderStatusChangedData { newStatus reason } } } } }"#,
            json!({ "m": "m-shop" }),
        )
        .await;
    let nodes = typed["recentEvents"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{typed}");
    for n in nodes {
        assert_eq!(n["data"]["reason"], n["payload"]["reason"], "{n}");
        assert!(n["data"]["reason"].is_string(), "{n}");
    }

    // The shape is refused at the door, naming the field; nothing is stored.
    for (patch, field) in [
        (json!({ "customerPhone": "12ab" }), "customerPhone"),
        (json!({ "totalAmount": -1 }), "totalAmount"),
        (json!({ "currency": "DOLLARS" }), "currency"),
        (json!({ "idempotencyKey": "" }), "idempotencyKey"),
    ] {
        let (code, body) = app
            .as_merchant("m-shop")
            .gql_err(docs::SUBMIT_ORDER, json!({ "input": bad(patch) }))
            .await;
        assert_eq!(
            (code.as_str(), &body["errors"][0]["extensions"]["field"]),
            ("VALIDATION", &json!(field))
        );
    }
    let all = app.gql_ok(Some(&shop), docs::ORDERS, json!({})).await;
    assert_eq!(all["orders"]["totalCount"], 5);
}

/// The same idempotency key gives the same order; reused for a different order it is CONFLICT.
async fn submit_is_idempotent(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let a = submit(&app, &shop, order_input(Some("cart-7"))).await;
    let b = submit(&app, &shop, order_input(Some("cart-7"))).await;
    assert_eq!(a["id"], b["id"]);
    // Another merchant's key space is its own.
    let c = submit(&app, &app.merchant("m-other"), order_input(Some("cart-7"))).await;
    assert_ne!(a["id"], c["id"]);
    let mut different = order_input(Some("cart-7"));
    different["totalAmount"] = json!(1);
    let (code, _) = app
        .as_merchant("m-shop")
        .gql_err(docs::SUBMIT_ORDER, json!({ "input": different }))
        .await;
    assert_eq!(code, "CONFLICT");
    order_in(&app, a["id"].as_str().unwrap(), "CONFIRMED").await;
    assert_eq!(events_of(&app, "m-shop", "ORDER_CREATED").await.len(), 1);
}

/// The order state machine refuses skips and moves out of final states; each step emits.
async fn the_order_state_machine_refuses_illegal_moves(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let id = submit(&app, &shop, order_input(None)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    order_in(&app, &id, "CONFIRMED").await;
    assert_eq!(
        set_status(&app, &shop, &id, "READY").await,
        Err("VALIDATION".into())
    );
    assert_eq!(
        set_status(&app, &shop, &id, "PENDING").await,
        Err("VALIDATION".into())
    );
    assert_eq!(
        set_status(&app, &shop, &id, "PREPARING").await.unwrap()["status"],
        "PREPARING"
    );
    assert_eq!(
        set_status(&app, &shop, &id, "READY").await.unwrap()["status"],
        "READY"
    );
    assert_eq!(
        set_status(&app, &shop, &id, "CANCELLED").await.unwrap()["status"],
        "CANCELLED"
    );
    assert_eq!(
        set_status(&app, &shop, &id, "PREPARING").await,
        Err("VALIDATION".into())
    );
    let changes = events_of(&app, "m-shop", "ORDER_STATUS_CHANGED").await;
    let steps: Vec<(String, String)> = changes
        .iter()
        .rev()
        .map(|p| {
            (
                p["oldStatus"].as_str().unwrap().into(),
                p["newStatus"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("CONFIRMED", "PREPARING"),
            ("PREPARING", "READY"),
            ("READY", "CANCELLED")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // Another merchant cannot see or move it.
    assert_eq!(
        set_status(&app, &app.merchant("m-other"), &id, "CANCELLED").await,
        Err("NOT_FOUND".into())
    );
    let (code, _) = app
        .as_merchant("m-other")
        .gql_err(docs::ORDER_BY_ID, json!({ "id": id }))
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app
        .as_merchant("m-other")
        .gql_err(docs::ORDERS, json!({ "m": "m-shop" }))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let theirs = app
        .gql_ok(Some(&app.merchant("m-other")), docs::ORDERS, json!({}))
        .await;
    assert_eq!(theirs["orders"]["totalCount"], 0);
}

/// Payments: idempotent on reference, checked against the order, one event.
async fn payments_are_idempotent_and_checked(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let id = submit(&app, &shop, order_input(None)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pay = |amount: i64, currency: &str, reference: &str| json!({ "order": id, "amount": amount, "currency": currency, "ref": reference, "method": "ecocash" });
    order_in(&app, &id, "CONFIRMED").await;
    // A rejected order takes no money.
    let mut wrong = order_input(None);
    wrong["totalAmount"] = json!(1);
    let rejected = submit(&app, &shop, wrong).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    order_in(&app, &rejected, "REJECTED").await;
    let (code, body) = app
        .as_merchant("m-shop")
        .gql_err(
            docs::RECORD_PAYMENT,
            json!({ "order": rejected, "amount": 1, "currency": "USD", "ref": "EC-0" }),
        )
        .await;
    assert_eq!(
        (code.as_str(), &body["errors"][0]["extensions"]["field"]),
        ("VALIDATION", &json!("orderId"))
    );
    for (vars, field) in [
        (pay(348, "USD", "EC-1"), "amount"),
        (pay(349, "ZAR", "EC-1"), "currency"),
        (pay(0, "USD", "EC-1"), "amount"),
        (pay(349, "USD", ""), "reference"),
    ] {
        let (code, body) = app
            .as_merchant("m-shop")
            .gql_err(docs::RECORD_PAYMENT, vars)
            .await;
        assert_eq!(
            (code.as_str(), &body["errors"][0]["extensions"]["field"]),
            ("VALIDATION", &json!(field))
        );
    }
    let first = app
        .gql_ok(Some(&shop), docs::RECORD_PAYMENT, pay(349, "USD", "EC-1"))
        .await;
    let again = app
        .gql_ok(Some(&shop), docs::RECORD_PAYMENT, pay(349, "USD", "EC-1"))
        .await;
    assert_eq!(first["recordPayment"]["id"], again["recordPayment"]["id"]);
    let (code, _) = app
        .as_merchant("m-shop")
        .gql_err(docs::RECORD_PAYMENT, pay(349, "USD", "EC-2"))
        .await;
    assert_eq!(code, "CONFLICT", "an order is paid once");
    let received = events_of(&app, "m-shop", "PAYMENT_RECEIVED").await;
    assert_eq!(received.len(), 1, "the repeat emitted nothing");
    assert_eq!(
        received[0],
        json!({ "orderId": id, "amount": 349, "currency": "USD", "reference": "EC-1", "method": "ecocash" })
    );
    let o = order_in(&app, &id, "CONFIRMED").await;
    assert_eq!(o["payments"].as_array().unwrap().len(), 1);
    // A blank method is no method, as a webhook's blank description is.
    let other = submit(&app, &shop, order_input(None)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    order_in(&app, &other, "CONFIRMED").await;
    app.gql_ok(
        Some(&shop),
        docs::RECORD_PAYMENT,
        json!({ "order": other, "amount": 349, "currency": "USD", "ref": "EC-9", "method": "  " }),
    )
    .await;
    let received = events_of(&app, "m-shop", "PAYMENT_RECEIVED").await;
    let blank = received
        .iter()
        .find(|p| p["orderId"] == other.as_str())
        .expect("the second payment's event");
    assert!(blank["method"].is_null(), "{blank}");
}

/// Deliveries follow their state machine; picked_up and delivered emit, and delivered delivers
/// the order.
async fn deliveries_follow_their_state_machine(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let order = submit(&app, &shop, order_input(None)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let place = |a: &str| json!({ "address": a, "latitude": -17.83, "longitude": 31.05 });
    let vars = json!({ "order": order, "pickup": place("Mbare Mart"), "dropoff": place("12 Samora Machel Ave") });
    order_in(&app, &order, "CONFIRMED").await;
    // A rejected order is not delivered.
    let mut wrong = order_input(None);
    wrong["currency"] = json!("XYZ");
    let rejected = submit(&app, &shop, wrong).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    order_in(&app, &rejected, "REJECTED").await;
    let (code, body) = app
        .as_merchant("m-shop")
        .gql_err(
            docs::CREATE_DELIVERY,
            json!({ "order": rejected, "pickup": place("a"), "dropoff": place("b") }),
        )
        .await;
    assert_eq!(
        (code.as_str(), &body["errors"][0]["extensions"]["field"]),
        ("VALIDATION", &json!("orderId"))
    );
    let bad = json!({ "order": order, "pickup": place(""), "dropoff": place("x") });
    let (code, body) = app
        .as_merchant("m-shop")
        .gql_err(docs::CREATE_DELIVERY, bad)
        .await;
    assert_eq!(
        (code.as_str(), &body["errors"][0]["extensions"]["field"]),
        ("VALIDATION", &json!("pickup.address"))
    );
    let task = app
        .gql_ok(Some(&shop), docs::CREATE_DELIVERY, vars.clone())
        .await["createDeliveryTask"]
        .clone();
    assert_eq!(task["status"], "PENDING");
    assert_eq!(task["dropoff"]["latitude"], -17.83);
    let (code, _) = app
        .as_merchant("m-shop")
        .gql_err(docs::CREATE_DELIVERY, vars)
        .await;
    assert_eq!(code, "CONFLICT", "one open task per order");
    let id = task["id"].as_str().unwrap().to_owned();
    let step = |status: &str| {
        let vars = json!({ "id": id, "status": status });
        let app = &app;
        async move {
            let (_, body) = app
                .gql(
                    Some(&app.merchant("m-shop")),
                    docs::UPDATE_DELIVERY_STATUS,
                    vars,
                )
                .await;
            match body["errors"][0]["extensions"]["code"].as_str() {
                Some(c) => Err(c.to_owned()),
                None => Ok(body["data"]["updateDeliveryStatus"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()),
            }
        }
    };
    assert_eq!(
        step("PICKED_UP").await,
        Err("VALIDATION".into()),
        "no driver yet"
    );
    assert_eq!(
        step("ASSIGNED").await,
        Err("VALIDATION".into()),
        "assignDriver assigns"
    );
    let a = app
        .gql_ok(
            Some(&shop),
            docs::ASSIGN_DRIVER,
            json!({ "id": id, "driver": "Farai" }),
        )
        .await;
    assert_eq!(a["assignDriver"]["status"], "ASSIGNED");
    assert_eq!(
        step("PICKED_UP").await,
        Err("VALIDATION".into()),
        "the order is not READY"
    );
    set_status(&app, &shop, &order, "PREPARING").await.unwrap();
    set_status(&app, &shop, &order, "READY").await.unwrap();
    assert_eq!(
        step("DELIVERED").await,
        Err("VALIDATION".into()),
        "no skipping"
    );
    assert_eq!(step("PICKED_UP").await.unwrap(), "PICKED_UP");
    assert_eq!(step("IN_TRANSIT").await.unwrap(), "IN_TRANSIT");
    assert_eq!(step("DELIVERED").await.unwrap(), "DELIVERED");
    assert_eq!(
        step("FAILED").await,
        Err("VALIDATION".into()),
        "delivered is final"
    );
    order_in(&app, &order, "DELIVERED").await;
    let started = events_of(&app, "m-shop", "DELIVERY_STARTED").await;
    assert_eq!(
        started,
        [json!({ "deliveryId": id, "orderId": order, "driver": "Farai" })]
    );
    let completed = events_of(&app, "m-shop", "DELIVERY_COMPLETED").await;
    assert_eq!(completed, [json!({ "deliveryId": id, "orderId": order })]);
    let last = &events_of(&app, "m-shop", "ORDER_STATUS_CHANGED").await[0];
    assert_eq!(
        (&last["oldStatus"], &last["newStatus"]),
        (&json!("READY"), &json!("DELIVERED"))
    );
    // Scoped like orders.
    let theirs = app
        .gql_ok(
            Some(&app.merchant("m-other")),
            docs::DELIVERY_TASKS,
            json!({}),
        )
        .await;
    assert_eq!(theirs["deliveryTasks"]["totalCount"], 0);
    let mine = app
        .gql_ok(
            Some(&shop),
            docs::DELIVERY_TASKS,
            json!({ "status": "DELIVERED" }),
        )
        .await;
    assert_eq!(mine["deliveryTasks"]["totalCount"], 1);
}

/// Cancelling an order cancels its open delivery task in the same step: the task is not left
/// stranded (never deliverable, blocking a new one), and the audit names it.
async fn cancelling_an_order_cancels_its_open_delivery(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-shop");
    let place = |a: &str| json!({ "address": a, "latitude": -17.83, "longitude": 31.05 });
    let mut tasks = Vec::new();
    for (target, last) in [("READY", "PICKED_UP"), ("CONFIRMED", "")] {
        let order = submit(&app, &shop, order_input(None)).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        order_in(&app, &order, "CONFIRMED").await;
        if target == "READY" {
            set_status(&app, &shop, &order, "PREPARING").await.unwrap();
            set_status(&app, &shop, &order, "READY").await.unwrap();
        }
        let vars = json!({ "order": order, "pickup": place("Mbare Mart"), "dropoff": place("12 Samora Machel Ave") });
        let id =
            app.gql_ok(Some(&shop), docs::CREATE_DELIVERY, vars).await["createDeliveryTask"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
        if last == "PICKED_UP" {
            app.gql_ok(
                Some(&shop),
                docs::ASSIGN_DRIVER,
                json!({ "id": id, "driver": "Farai" }),
            )
            .await;
            app.gql_ok(
                Some(&shop),
                docs::UPDATE_DELIVERY_STATUS,
                json!({ "id": id, "status": "PICKED_UP" }),
            )
            .await;
        }
        set_status(&app, &shop, &order, "CANCELLED").await.unwrap();
        tasks.push((order, id));
    }
    let listed = app
        .gql_ok(Some(&shop), docs::DELIVERY_TASKS, json!({}))
        .await;
    let nodes = listed["deliveryTasks"]["edges"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{listed}");
    for (_, id) in &tasks {
        let node = nodes.iter().find(|e| &e["node"]["id"] == id).unwrap();
        assert_eq!(node["node"]["status"], "CANCELLED", "{listed}");
        // And it is final.
        let (code, _) = app
            .as_merchant("m-shop")
            .gql_err(
                docs::UPDATE_DELIVERY_STATUS,
                json!({ "id": id, "status": "DELIVERED" }),
            )
            .await;
        assert_eq!(code, "VALIDATION");
    }
    let audit = app
        .gql_ok(
            Some(&app.admin),
            "{ auditLogs(first: 50) { nodes { action afterState } } }",
            json!({}),
        )
        .await;
    let named: Vec<&Value> = audit["auditLogs"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["action"] == "order.set_status" && n["afterState"]["status"] == "CANCELLED")
        .map(|n| &n["afterState"]["cancelledDeliveryTask"])
        .collect();
    assert_eq!(named.len(), 2, "{audit}");
    for (_, id) in &tasks {
        assert!(named.contains(&&json!(id)), "{audit}");
    }
}

/// An order marked DELIVERED by hand closes its open delivery task in the same step: one on its
/// way is completed (with `delivery_completed`), one not picked up yet is cancelled. Left open,
/// it could never be completed (its order is no longer READY).
async fn delivering_an_order_by_hand_closes_its_open_delivery(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-hand");
    let mut tasks = Vec::new();
    for moves in [&["PICKED_UP", "IN_TRANSIT"][..], &["PICKED_UP"], &[]] {
        let order = submit(&app, &shop, order_input(None)).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        order_in(&app, &order, "CONFIRMED").await;
        set_status(&app, &shop, &order, "PREPARING").await.unwrap();
        set_status(&app, &shop, &order, "READY").await.unwrap();
        let id = assigned_task(&app, &shop, &order).await;
        for status in moves {
            app.gql_ok(
                Some(&shop),
                docs::UPDATE_DELIVERY_STATUS,
                json!({ "id": id, "status": status }),
            )
            .await;
        }
        set_status(&app, &shop, &order, "DELIVERED").await.unwrap();
        let want = if moves.is_empty() {
            "CANCELLED"
        } else {
            "DELIVERED"
        };
        tasks.push((order, id, want));
    }
    let listed = app
        .gql_ok(Some(&shop), docs::DELIVERY_TASKS, json!({}))
        .await;
    let nodes = listed["deliveryTasks"]["edges"].as_array().unwrap();
    for (_, id, want) in &tasks {
        let node = nodes.iter().find(|e| &e["node"]["id"] == id).unwrap();
        assert_eq!(node["node"]["status"], *want, "{listed}");
    }
    // One `delivery_completed` per task that was on its way, before its order's change.
    let completed = events_of(&app, "m-hand", "DELIVERY_COMPLETED").await;
    let mut ids: Vec<&str> = completed
        .iter()
        .map(|p| p["deliveryId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = tasks[..2].iter().map(|(_, id, _)| id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
}

/// Bot presence emits only on a change, and only service (or admin) tokens report it.
async fn bot_presence_emits_on_change_only(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.bot_stale_after = None).await;
    let service = app.token(smartbot::auth::Role::Service, None);
    let report =
        |connected: bool| json!({ "m": "m-bot", "connected": connected, "reason": "test" });
    let (code, _) = app
        .as_merchant("m-bot")
        .gql_err(docs::REPORT_BOT_STATUS, report(true))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let status = app
        .gql_ok(Some(&app.merchant("m-bot")), docs::BOT_STATUS, json!({}))
        .await;
    assert_eq!(
        status["botStatus"]["connected"], false,
        "never reported: offline"
    );
    assert!(status["botStatus"]["lastSeenAt"].is_null());
    // A first "disconnected" is no change.
    app.gql_ok(Some(&service), docs::REPORT_BOT_STATUS, report(false))
        .await;
    for _ in 0..3 {
        app.gql_ok(Some(&service), docs::REPORT_BOT_STATUS, report(true))
            .await;
    }
    app.gql_ok(Some(&service), docs::REPORT_BOT_STATUS, report(false))
        .await;
    app.gql_ok(Some(&service), docs::REPORT_BOT_STATUS, report(false))
        .await;
    assert_eq!(events_of(&app, "m-bot", "BOT_CONNECTED").await.len(), 1);
    assert_eq!(events_of(&app, "m-bot", "BOT_DISCONNECTED").await.len(), 1);
    let status = app
        .gql_ok(Some(&app.merchant("m-bot")), docs::BOT_STATUS, json!({}))
        .await;
    assert_eq!(status["botStatus"]["connected"], false);
}

/// A bot that stops reporting is marked disconnected once, however many sweeps race for it.
async fn a_silent_bot_goes_stale_exactly_once(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.bot_stale_after = None).await;
    let service = app.token(smartbot::auth::Role::Service, None);
    app.gql_ok(
        Some(&service),
        docs::REPORT_BOT_STATUS,
        json!({ "m": "m-quiet", "connected": true }),
    )
    .await;
    let state = app.server.state.clone();
    let after = Duration::from_millis(300);
    eventually("the bot goes stale", || {
        let state = state.clone();
        async move {
            // Eight sweeps at once, as if eight instances ran them.
            let runs = futures::future::join_all(
                (0..8).map(|_| smartbot::bots::sweep_stale(&state, after)),
            )
            .await;
            let flipped: usize = runs.into_iter().map(|r| r.unwrap()).sum();
            if flipped > 0 {
                Ok(flipped)
            } else {
                Err("not yet".into())
            }
        }
    })
    .await;
    let gone = events_of(&app, "m-quiet", "BOT_DISCONNECTED").await;
    assert_eq!(gone.len(), 1, "exactly one instance emits: {gone:?}");
    assert!(
        gone[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no report for")
    );
    let status = app
        .gql_ok(
            Some(&app.admin),
            docs::BOT_STATUS,
            json!({ "m": "m-quiet" }),
        )
        .await;
    assert_eq!(status["botStatus"]["connected"], false);
}

/// The background sweep runs in the server when BOT_STALE_AFTER is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sweeps_stale_bots() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.bot_stale_after = Some(Duration::from_millis(400))
    })
    .await;
    let service = app.token(smartbot::auth::Role::Service, None);
    app.gql_ok(
        Some(&service),
        docs::REPORT_BOT_STATUS,
        json!({ "m": "m-quiet", "connected": true }),
    )
    .await;
    eventually("the sweep marks the bot disconnected", || async {
        let s = app
            .gql_ok(
                Some(&app.admin),
                docs::BOT_STATUS,
                json!({ "m": "m-quiet" }),
            )
            .await;
        if s["botStatus"]["connected"] == false {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(
        events_of(&app, "m-quiet", "BOT_DISCONNECTED").await.len(),
        1
    );
}

/// `updateProduct` is for trusted callers and emits `product_updated` with the changes.
async fn update_product_emits_for_trusted_callers(db: Db) {
    let app = TestApp::spawn(db).await;
    let service = app.token(smartbot::auth::Role::Service, None);
    let vars = json!({ "m": "m-shop", "p": "bread", "changes": { "price": 130, "inStock": true } });
    let (code, _) = app
        .as_merchant("m-shop")
        .gql_err(docs::UPDATE_PRODUCT, vars.clone())
        .await;
    assert_eq!(code, "FORBIDDEN");
    let e = app.gql_ok(Some(&service), docs::UPDATE_PRODUCT, vars).await;
    assert_eq!(e["updateProduct"]["type"], "PRODUCT_UPDATED");
    for changes in [json!({}), json!([1]), json!({ "blob": "x".repeat(9000) })] {
        let (code, body) = app
            .as_service()
            .gql_err(
                docs::UPDATE_PRODUCT,
                json!({ "m": "m-shop", "p": "bread", "changes": changes }),
            )
            .await;
        assert_eq!(
            (code.as_str(), &body["errors"][0]["extensions"]["field"]),
            ("VALIDATION", &json!("changes"))
        );
    }
    let got = events_of(&app, "m-shop", "PRODUCT_UPDATED").await;
    assert_eq!(
        got,
        [
            json!({ "productId": "bread", "change": "details", "changes": { "price": 130, "inStock": true } })
        ]
    );
}

/// Concurrent writes to one order take turns on PostgreSQL as on SQLite: of twenty payments
/// with different references exactly one is recorded (the rest CONFLICT), twenty of the same
/// payment all return its one row, and a delivery racing its order's cancellation loses with the
/// answer a serial run gives (VALIDATION), never a second outcome.
async fn concurrent_writes_to_one_order_take_turns(db: Db) {
    let app = TestApp::spawn(db).await;
    let shop = app.merchant("m-race");
    let confirmed = || async {
        let id = submit(&app, &shop, order_input(None)).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        order_in(&app, &id, "CONFIRMED").await;
        id
    };
    let race = |vars: Vec<Value>, doc: &'static str| {
        let app = &app;
        let shop = &shop;
        async move {
            let calls = vars.into_iter().map(|v| async move {
                let (_, body) = app.gql(Some(shop), doc, v).await;
                match body["errors"][0]["extensions"]["code"].as_str() {
                    Some(code) => Err(code.to_owned()),
                    None => Ok(body["data"].clone()),
                }
            });
            futures::future::join_all(calls).await
        }
    };
    // Different references: one payment.
    let order = confirmed().await;
    let vars = (0..20)
        .map(|i| json!({ "order": order, "amount": 349, "currency": "USD", "ref": format!("R-{i}") }))
        .collect();
    let results = race(vars, docs::RECORD_PAYMENT).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| r.as_ref().err().is_some_and(|c| c == "CONFLICT"))
        .count();
    assert_eq!((ok, conflicts), (1, 19), "{results:?}");
    let o = order_in(&app, &order, "CONFIRMED").await;
    assert_eq!(o["payments"].as_array().unwrap().len(), 1, "{o}");
    // The same payment twenty times: one row, returned to all.
    let order = confirmed().await;
    let vars = (0..20)
        .map(|_| json!({ "order": order, "amount": 349, "currency": "USD", "ref": "SAME-1" }))
        .collect();
    let results = race(vars, docs::RECORD_PAYMENT).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|r| match r {
            Ok(d) => d["recordPayment"]["id"].as_str().unwrap().to_owned(),
            Err(code) => panic!("{code}: {results:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    let paid = events_of(&app, "m-race", "PAYMENT_RECEIVED").await;
    assert_eq!(paid.len(), 2, "one event per recorded payment: {paid:?}");
    // A delivery completing while its order is cancelled: one wins, the other is VALIDATION.
    for _ in 0..3 {
        let order = confirmed().await;
        set_status(&app, &shop, &order, "PREPARING").await.unwrap();
        set_status(&app, &shop, &order, "READY").await.unwrap();
        let task = assigned_task(&app, &shop, &order).await;
        app.gql_ok(
            Some(&shop),
            docs::UPDATE_DELIVERY_STATUS,
            json!({ "id": task, "status": "PICKED_UP" }),
        )
        .await;
        let (delivered, cancelled) = tokio::join!(
            race(
                vec![json!({ "id": task, "status": "DELIVERED" })],
                docs::UPDATE_DELIVERY_STATUS
            ),
            set_status(&app, &shop, &order, "CANCELLED"),
        );
        let delivered = delivered.into_iter().next().unwrap();
        match (&delivered, &cancelled) {
            (Ok(_), Err(code)) | (Err(code), Ok(_)) => assert_eq!(code, "VALIDATION"),
            other => panic!("exactly one may win: {other:?}"),
        }
        let final_status = if delivered.is_ok() {
            "DELIVERED"
        } else {
            "CANCELLED"
        };
        order_in(&app, &order, final_status).await;
    }
}

both_dbs!(
    orders_are_validated_by_the_job,
    concurrent_writes_to_one_order_take_turns,
    submit_is_idempotent,
    the_order_state_machine_refuses_illegal_moves,
    payments_are_idempotent_and_checked,
    deliveries_follow_their_state_machine,
    cancelling_an_order_cancels_its_open_delivery,
    delivering_an_order_by_hand_closes_its_open_delivery,
    bot_presence_emits_on_change_only,
    a_silent_bot_goes_stale_exactly_once,
    update_product_emits_for_trusted_callers,
);
