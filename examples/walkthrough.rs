//! The order walkthrough from the README, as a program: takes one order from submit to
//! delivered while a GraphQL subscription watches, and prints every event as it arrives.
//!
//! ```sh
//! cargo run --release                      # terminal 1: prints an admin token at start
//! SMARTBOT_URL=http://localhost:4001 TOKEN=<admin token> cargo run --example walkthrough
//! ```
//!
//! With no WhatsApp credentials configured, the message goes to the recording transport and the
//! program prints the `outbox` entry: the exact Cloud API body that would have been sent.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const MERCHANT: &str = "m-demo";

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn gql(&self, query: &str, variables: Value) -> Value {
        let res: Value = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a JSON answer");
        if let Some(errors) = res.get("errors") {
            panic!("GraphQL error: {errors:#}");
        }
        res["data"].clone()
    }

    async fn order_status(&self, id: &str) -> String {
        self.gql(
            "query($id: ID!) { order(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await["order"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("SMARTBOT_URL").unwrap_or_else(|_| "http://localhost:4001".into());
    let token =
        std::env::var("TOKEN").expect("set TOKEN to an admin token (printed by `smartbot serve`)");
    let api = Api {
        http: reqwest::Client::new(),
        url: url.clone(),
        token: token.clone(),
    };

    // 1. Subscribe to the merchant's events and print them as they come.
    let mut req = format!("{}/graphql/ws", url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket");
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(
        json!({ "type": "connection_init", "payload": { "token": token } }),
    ))
    .await
    .unwrap();
    ws.send(send(json!({ "type": "subscribe", "id": "1", "payload": {
        "query": "subscription($m: ID) { events(merchantId: $m) { type occurredAt payload } }",
        "variables": { "m": MERCHANT },
    }})))
    .await
    .unwrap();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if v["type"] == "next" {
                    let e = &v["payload"]["data"]["events"];
                    println!(
                        "  event {:<22} {}",
                        e["type"].as_str().unwrap_or("?"),
                        e["payload"]
                    );
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. The bot comes online.
    api.gql(
        "mutation { reportBotStatus(merchantId: \"m-demo\", connected: true, reason: \"walkthrough\") { connected } }",
        json!({}),
    )
    .await;

    // 3. Submit an order: PENDING, then the order_processing job confirms it.
    let order = api
        .gql(
            "mutation($i: SubmitOrderInput!) { submitOrder(input: $i) { id status } }",
            json!({ "i": {
                "merchantId": MERCHANT,
                "customerPhone": "+263781564004",
                "items": [
                    { "productId": "bread", "name": "Bread", "quantity": 2, "unitPrice": 125 },
                    { "productId": "milk", "name": "Milk 1L", "quantity": 1, "unitPrice": 99 }
                ],
                "currency": "USD",
                "totalAmount": 349,
                "idempotencyKey": format!("walkthrough-{}", std::process::id()),
            }}),
        )
        .await["submitOrder"]
        .clone();
    let id = order["id"].as_str().unwrap().to_owned();
    println!("submitted order {id}: {}", order["status"]);
    while api.order_status(&id).await == "PENDING" {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("validated: {}", api.order_status(&id).await);

    // 4. Prepare it, take the payment, get it ready.
    let set = "mutation($id: ID!, $s: OrderStatus!) { updateOrderStatus(id: $id, status: $s) { status } }";
    api.gql(set, json!({ "id": id, "s": "PREPARING" })).await;
    api.gql(
        "mutation($id: ID!) { recordPayment(orderId: $id, amount: 349, currency: \"USD\", reference: \"EC-WALK\", method: \"ecocash\") { id } }",
        json!({ "id": id }),
    )
    .await;
    api.gql(set, json!({ "id": id, "s": "READY" })).await;

    // 5. Tell the customer (recording transport without credentials).
    let msg = api
        .gql(
            "mutation($i: SendMessageInput!) { sendMessage(input: $i) { id status } }",
            json!({ "i": { "merchantId": MERCHANT, "to": "+263781564004", "text": "Your order is on its way!" } }),
        )
        .await["sendMessage"]
        .clone();
    println!("message {} {}", msg["id"], msg["status"]);

    // 6. Deliver it.
    let task = api
        .gql(
            "mutation($id: ID!) { createDeliveryTask(orderId: $id, pickup: { address: \"Mbare Mart\" }, dropoff: { address: \"12 Samora Machel Ave, Harare\" }) { id } }",
            json!({ "id": id }),
        )
        .await["createDeliveryTask"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.gql(
        "mutation($id: ID!) { assignDriver(id: $id, driver: \"Farai\") { status } }",
        json!({ "id": task }),
    )
    .await;
    for s in ["PICKED_UP", "IN_TRANSIT", "DELIVERED"] {
        api.gql(
            "mutation($id: ID!, $s: DeliveryStatus!) { updateDeliveryStatus(id: $id, status: $s) { status } }",
            json!({ "id": task, "s": s }),
        )
        .await;
    }
    println!("order {id} is {}", api.order_status(&id).await);

    // 7. What the recording transport kept.
    let outbox = api
        .gql(
            "query($m: String) { outbox(merchantId: $m, first: 1) { nodes { to status payload } } }",
            json!({ "m": MERCHANT }),
        )
        .await;
    println!("outbox: {}", outbox["outbox"]["nodes"][0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
}
