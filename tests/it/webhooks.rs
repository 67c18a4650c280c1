//! Webhooks end to end, with real sockets: endpoints over GraphQL, events emitted through the
//! API, deliveries caught by a `TestReceiver` (axum on 127.0.0.1:0, as in svix's tests).
//!
//! Every server here allows only 127.0.0.0/8 (`WEBHOOK_ALLOWED_NETWORKS`), or nothing at all in
//! the SSRF tests, so no request can leave for another address even when a test fails.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use smartbot::{Config, auth::MerchantId, events::EventType, queue::QueueName};

use crate::{
    both_dbs,
    common::{Db, TestApp, eventually},
};

// ---- the receiver ----------------------------------------------------------------------------

#[derive(Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Never answer (a receiver that hangs).
    hang: bool,
    /// The answer's body (`ok` when unset).
    body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            hang: false,
            body: None,
        }
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn hang() -> Self {
        Self {
            status: 200,
            headers: vec![],
            hang: true,
            body: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
}

/// An HTTP receiver on 127.0.0.1:0 that records every request and answers from a script
/// (then 200).
pub struct TestReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.got.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| s.default.lock().unwrap().clone())
        .unwrap_or(Reply::status(200));
    if reply.hang {
        std::future::pending::<()>().await;
    }
    let body = reply.body.unwrap_or_else(|| b"ok".to_vec());
    let mut res = (StatusCode::from_u16(reply.status).unwrap(), body).into_response();
    for (k, v) in reply.headers {
        res.headers_mut().insert(k, v.parse().unwrap());
    }
    res
}

impl TestReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(receive).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next answers, in order; after them, the default (200).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    pub fn always(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = Some(reply);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} requests at the receiver"), || async {
            let got = self.requests();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} requests", got.len()))
            }
        })
        .await
    }
}

// ---- documents and helpers -------------------------------------------------------------------

const REGISTER: &str = r#"mutation($i: RegisterWebhookInput!) {
  registerWebhook(input: $i) { secret webhook { id merchantId url enabled eventTypes legacySignature } }
}"#;
const WEBHOOK: &str = r#"query($id: ID!) {
  webhook(id: $id) { id enabled disabledReason consecutiveFailures failingSince previousSecretExpiresAt }
}"#;
const WEBHOOKS: &str =
    r#"query($m: ID) { webhooks(merchantId: $m) { totalCount edges { node { id merchantId } } } }"#;
const LOGS: &str = r#"query($w: ID, $s: Boolean) {
  webhookLogs(webhookId: $w, success: $s, first: 100) { totalCount edges { node {
    id webhookId eventId eventType attempt success statusCode error nextRetryAt durationMs url responseBody createdAt
  } } }
}"#;
const EMIT: &str = r#"mutation($t: EventType!, $m: ID, $p: JSON!) {
  emitEvent(type: $t, merchantId: $m, payload: $p) { id }
}"#;
const ROTATE: &str = r#"mutation($id: ID!, $o: String) {
  rotateWebhookSecret(id: $id, overlap: $o) { secret webhook { id previousSecretExpiresAt } }
}"#;

/// Loopback allowed, a test-sized schedule, a fast sweeper.
fn hooks(c: &mut Config) {
    c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
    c.webhook_retry_schedule = vec![
        Duration::ZERO,
        Duration::from_millis(200),
        Duration::from_millis(200),
        Duration::from_millis(200),
    ];
    c.webhook_sweep_interval = Duration::from_millis(200);
    c.webhook_timeout = Duration::from_secs(10);
}

async fn spawn(db: Db) -> TestApp {
    TestApp::spawn_with(db, hooks).await
}

/// Registers an endpoint as `merchant`; returns (id, secret).
pub(crate) async fn register(app: &TestApp, merchant: &str, input: Value) -> (String, String) {
    let data = app
        .as_merchant(merchant)
        .gql_ok(REGISTER, json!({ "i": input }))
        .await;
    let r = &data["registerWebhook"];
    (
        r["webhook"]["id"].as_str().unwrap().to_owned(),
        r["secret"].as_str().unwrap().to_owned(),
    )
}

fn order_payload(n: usize) -> Value {
    json!({ "orderId": format!("o-{n}"), "customerPhone": "263781564004", "totalAmount": 1250, "currency": "USD" })
}

/// Emits `order_created` for `merchant` (as the service); returns the event id.
async fn emit(app: &TestApp, merchant: &str, n: usize) -> String {
    let data = app
        .as_service()
        .gql_ok(
            EMIT,
            json!({ "t": "ORDER_CREATED", "m": merchant, "p": order_payload(n) }),
        )
        .await;
    data["emitEvent"]["id"].as_str().unwrap().to_owned()
}

async fn logs(app: &TestApp, token: &str, webhook: &str) -> Vec<Value> {
    let data = app.gql_ok(Some(token), LOGS, json!({ "w": webhook })).await;
    data["webhookLogs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// Waits until `webhook` has `n` log rows; returns them oldest first.
async fn wait_logs(app: &TestApp, merchant: &str, webhook: &str, n: usize) -> Vec<Value> {
    let token = app.merchant_token(merchant);
    eventually(&format!("{n} log rows"), || async {
        let mut l = logs(app, &token, webhook).await;
        if l.len() >= n {
            l.reverse();
            Ok(l)
        } else {
            Err(format!("{l:?}"))
        }
    })
    .await
}

async fn webhook(app: &TestApp, merchant: &str, id: &str) -> Value {
    app.as_merchant(merchant)
        .gql_ok(WEBHOOK, json!({ "id": id }))
        .await["webhook"]
        .clone()
}

/// The spec, implemented here apart from the server's code: base64(HMAC-SHA256(decoded secret,
/// "id.timestamp.body")).
pub(crate) fn spec_signature(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

// ---- signing ---------------------------------------------------------------------------------

async fn deliveries_are_signed_to_spec_and_logged(db: Db) {
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    let (id, secret) = register(
        &app,
        "m-a",
        json!({ "url": rx.url(), "eventTypes": ["ORDER_CREATED"], "legacySignature": true }),
    )
    .await;
    assert!(secret.starts_with("whsec_"));
    // Another type: not subscribed, not delivered.
    app.as_service()
        .gql_ok(
            EMIT,
            json!({ "t": "BOT_CONNECTED", "m": "m-a", "p": { "reason": "x" } }),
        )
        .await;
    let event = emit(&app, "m-a", 1).await;
    let got = rx.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.header("webhook-id"), event);
    assert_eq!(r.header("content-type"), "application/json");
    let ts = r.header("webhook-timestamp");
    let now = chrono::Utc::now().timestamp();
    assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);
    assert_eq!(
        r.header("webhook-signature"),
        spec_signature(&secret, &event, ts, &r.body)
    );
    // The seed's format: hex(HMAC-SHA256(secret text, body)).
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    assert_eq!(
        r.header("x-webhook-signature"),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    assert_eq!(r.header("x-webhook-timestamp"), ts);
    // The public verifier agrees, and refuses a tampered body or another secret.
    assert_eq!(
        smartbot::webhooks::verify(&r.headers, &r.body, &[&secret], None),
        Ok(())
    );
    assert!(smartbot::webhooks::verify(&r.headers, b"{}", &[&secret], None).is_err());
    let other = smartbot::webhooks::signing::generate_secret();
    assert!(smartbot::webhooks::verify(&r.headers, &r.body, &[&other], None).is_err());
    let body = r.json();
    assert_eq!(body["id"], event.as_str());
    assert_eq!(body["type"], "order_created");
    assert_eq!(body["merchant_id"], "m-a");
    assert_eq!(body["payload"]["orderId"], "o-1");

    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l[0]["success"], true);
    assert_eq!(l[0]["statusCode"], 200);
    assert_eq!(l[0]["attempt"], 1);
    assert_eq!(l[0]["eventId"], event.as_str());
    assert_eq!(l[0]["eventType"], "ORDER_CREATED");
    assert_eq!(l[0]["url"], rx.url());
    assert_eq!(l[0]["responseBody"], "ok");
    assert!(l[0]["nextRetryAt"].is_null());
    assert_eq!(rx.requests().len(), 1, "one delivery, one request");
    // The secret is stored encrypted, never as given.
    let row = <entity::webhook::Entity as sea_orm::EntityTrait>::find_by_id(
        uuid::Uuid::parse_str(&id).unwrap(),
    )
    .one(&app.server.state.db)
    .await
    .unwrap()
    .unwrap();
    assert!(row.secret.starts_with("enc:v1:"), "{}", row.secret);
    assert!(!row.secret.contains(&secret["whsec_".len()..]));
    app.server.stop().await.unwrap();
}

// ---- retries ---------------------------------------------------------------------------------

async fn failures_are_retried_until_success(db: Db) {
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500), Reply::status(500)]);
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let event = emit(&app, "m-a", 1).await;
    let l = wait_logs(&app, "m-a", &id, 3).await;
    let attempts: Vec<_> = l
        .iter()
        .map(|r| {
            (
                r["attempt"].as_i64().unwrap(),
                r["success"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, false), (2, false), (3, true)]);
    assert_eq!(l[0]["statusCode"], 500);
    assert!(
        !l[0]["nextRetryAt"].is_null(),
        "a failure schedules the next"
    );
    assert!(l[2]["nextRetryAt"].is_null());
    let got = rx.requests();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.header("webhook-id") == event),
        "the same webhook-id on every attempt"
    );
    let w = webhook(&app, "m-a", &id).await;
    assert_eq!(w["consecutiveFailures"], 0, "a success resets the count");
    assert!(w["failingSince"].is_null());
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(429).header("retry-after", "2")]);
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    let got = rx.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    // The schedule says 200 ms; the receiver asked for 2 s.
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    let l = wait_logs(&app, "m-a", &id, 2).await;
    assert_eq!(l[0]["statusCode"], 429);
    assert_eq!(l[1]["success"], true);
    app.server.stop().await.unwrap();
}

async fn a_down_receiver_is_logged_and_retried_later(db: Db) {
    let app = TestApp::spawn_with(db, |c| {
        hooks(c);
        c.webhook_retry_schedule = vec![Duration::ZERO, Duration::from_secs(3600)];
    })
    .await;
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (id, _) = register(
        &app,
        "m-a",
        json!({ "url": format!("http://{closed}/hook") }),
    )
    .await;
    let event = emit(&app, "m-a", 1).await;
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l[0]["success"], false);
    assert!(l[0]["statusCode"].is_null());
    assert!(
        !l[0]["error"].as_str().unwrap_or_default().is_empty(),
        "{:?}",
        l[0]
    );
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(l[0]["nextRetryAt"].clone()).unwrap();
    let created: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(l[0]["createdAt"].clone()).unwrap();
    let wait = (next - created).num_seconds();
    assert!((2800..=4400).contains(&wait), "next retry in {wait}s");
    // The second attempt waits in the queue as its own delayed job.
    let job = app
        .server
        .state
        .queue
        .job_status(QueueName::WebhookDelivery, &format!("{id}:{event}:2"))
        .await
        .unwrap();
    assert_eq!(job.state, smartbot::queue::JobState::Delayed);
    let w = webhook(&app, "m-a", &id).await;
    assert_eq!(w["consecutiveFailures"], 1);
    assert!(!w["failingSince"].is_null());
    // Disabled, the endpoint's retry will be skipped when it comes due: its log says so.
    app.as_merchant("m-a")
        .gql_ok(
            r#"mutation($id: ID!) { disableWebhook(id: $id) { id } }"#,
            json!({ "id": id }),
        )
        .await;
    let l = logs(&app, &app.merchant_token("m-a"), &id).await;
    assert!(l[0]["nextRetryAt"].is_null(), "{l:?}");
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    rx.always(Reply::status(410));
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    let w = eventually("the endpoint to be disabled", || async {
        let w = webhook(&app, "m-a", &id).await;
        if w["enabled"] == false {
            Ok(w)
        } else {
            Err(w.to_string())
        }
    })
    .await;
    assert!(w["disabledReason"].as_str().unwrap().contains("410"), "{w}");
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert!(l[0]["nextRetryAt"].is_null(), "no retry after 410");
    // Later events are not delivered to a disabled endpoint.
    emit(&app, "m-a", 2).await;
    let marker = TestReceiver::start().await;
    register(&app, "m-a", json!({ "url": marker.url() })).await;
    emit(&app, "m-a", 3).await;
    marker.wait_for(1).await;
    assert_eq!(rx.requests().len(), 1);
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_failure_disables_automatically() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        hooks(c);
        c.webhook_retry_schedule = [0, 300, 300, 300, 300, 300, 300, 300, 300, 300]
            .map(Duration::from_millis)
            .to_vec();
        c.webhook_disable_after = Duration::from_secs(1);
    })
    .await;
    let rx = TestReceiver::start().await;
    rx.always(Reply::status(500));
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    let w = eventually("the endpoint to be disabled", || async {
        let w = webhook(&app, "m-a", &id).await;
        if w["enabled"] == false {
            Ok(w)
        } else {
            Err(w.to_string())
        }
    })
    .await;
    let reason = w["disabledReason"].as_str().unwrap();
    assert!(reason.contains("every attempt failed since"), "{reason}");
    let n = rx.requests().len();
    assert!(
        (2..10).contains(&n),
        "disabled after ~1 s of failures, before the schedule ran out: {n} attempts"
    );
    // Enabling clears the record.
    let w = app
        .as_merchant("m-a")
        .gql_ok(
            r#"mutation($id: ID!) { enableWebhook(id: $id) { enabled disabledReason consecutiveFailures } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        w["enableWebhook"],
        json!({ "enabled": true, "disabledReason": null, "consecutiveFailures": 0 })
    );
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_deliveries_wait_and_all_arrive() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url(), "rateLimit": 4 })).await;
    for n in 0..6 {
        emit(&app, "m-a", n).await;
    }
    let got = rx.wait_for(6).await;
    // 4 per second: six deliveries take five quarter-second gaps at least.
    let span = got[5].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1150),
        "six deliveries in {span:?}"
    );
    let l = wait_logs(&app, "m-a", &id, 6).await;
    assert!(
        l.iter().all(|r| r["success"] == true),
        "none dropped: {l:?}"
    );
    // Updates are checked like registrations.
    const UPDATE: &str = r#"mutation($id: ID!, $i: UpdateWebhookInput!) {
      updateWebhook(id: $id, input: $i) { id url rateLimit description eventTypes }
    }"#;
    let ma = app.as_merchant("m-a");
    for (input, field) in [
        (json!({ "rateLimit": 0 }), "rateLimit"),
        (json!({ "url": "http://10.1.2.3/" }), "url"),
        (json!({ "description": "d".repeat(256) }), "description"),
        // Null for what an endpoint always has, and an empty patch, are refused, not ignored.
        (json!({ "url": null }), "url"),
        (json!({ "eventTypes": null }), "eventTypes"),
        (json!({ "legacySignature": null }), "legacySignature"),
        (json!({}), "input"),
    ] {
        let (code, body) = ma.gql_err(UPDATE, json!({ "id": id, "i": input })).await;
        assert_eq!(code, "VALIDATION", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field);
    }
    let w = ma
        .gql_ok(
            UPDATE,
            json!({ "id": id, "i": { "rateLimit": null, "description": "orders", "eventTypes": ["PAYMENT_RECEIVED"] } }),
        )
        .await;
    assert_eq!(
        w["updateWebhook"],
        json!({ "id": id, "url": rx.url(), "rateLimit": null, "description": "orders", "eventTypes": ["PAYMENT_RECEIVED"] })
    );
    app.server.stop().await.unwrap();
}

// ---- SSRF ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_at_registration() {
    // Nothing re-allowed: the production default.
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        hooks(c);
        c.webhook_allowed_networks = vec![];
    })
    .await;
    let rx = TestReceiver::start().await;
    for url in [
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::ffff:10.0.0.1]/hook".to_owned(),
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        rx.url(),
        // A name that resolves to 127.0.0.1.
        format!("http://localhost:{}/hook", rx.addr.port()),
        "file:///etc/passwd".to_owned(),
    ] {
        let (code, body) = app
            .as_merchant("m-a")
            .gql_err(REGISTER, json!({ "i": { "url": url } }))
            .await;
        assert_eq!(code, "VALIDATION", "{url}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "url", "{url}");
    }
    assert!(rx.requests().is_empty());
    let data = app.as_merchant("m-a").gql_ok(WEBHOOKS, json!({})).await;
    assert_eq!(data["webhooks"]["totalCount"], 0, "nothing was stored");
    app.server.stop().await.unwrap();
}

/// The delivery client itself refuses a name that resolves to a loopback address when loopback
/// is not allowed: the guard runs at connect time, not only at registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_client_refuses_names_for_private_addresses() {
    use smartbot::webhooks::ssrf::{AddressPolicy, client};
    let rx = TestReceiver::start().await;
    let strict = client(Arc::new(AddressPolicy::default()), Duration::from_secs(5)).unwrap();
    let err = strict
        .post(format!("http://localhost:{}/hook", rx.addr.port()))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let mut text = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        text += &format!(": {s}");
        src = s.source();
    }
    assert!(text.contains("refused"), "{text}");
    assert!(rx.requests().is_empty(), "nothing reached the receiver");
    // The same client with loopback allowed gets through: the refusal was the policy.
    let open = client(
        Arc::new(AddressPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            false,
        )),
        Duration::from_secs(5),
    )
    .unwrap();
    let res = open
        .post(format!("http://localhost:{}/hook", rx.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    // The redirect points at a second loopback receiver, so that a client that followed it
    // would be seen there, and no request could ever leave the machine.
    let target = TestReceiver::start().await;
    rx.always(Reply::status(302).header("location", target.url()));
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l[0]["statusCode"], 302);
    assert_eq!(l[0]["success"], false);
    assert!(
        l[0]["error"].as_str().unwrap().contains("redirect"),
        "{:?}",
        l[0]
    );
    assert_eq!(rx.requests().len(), 1);
    assert!(target.requests().is_empty(), "the redirect was followed");
    app.server.stop().await.unwrap();
}

// ---- scope -----------------------------------------------------------------------------------

async fn merchants_see_only_their_endpoints_and_logs(db: Db) {
    let app = spawn(db).await;
    let rx_a = TestReceiver::start().await;
    let rx_b = TestReceiver::start().await;
    let (a, _) = register(&app, "m-a", json!({ "url": rx_a.url() })).await;
    let (b, _) = register(&app, "m-b", json!({ "url": rx_b.url() })).await;
    let ea = emit(&app, "m-a", 1).await;
    let eb = emit(&app, "m-b", 2).await;
    wait_logs(&app, "m-a", &a, 1).await;
    wait_logs(&app, "m-b", &b, 1).await;
    assert_eq!(rx_a.requests().len(), 1);
    assert_eq!(rx_a.requests()[0].header("webhook-id"), ea);
    assert_eq!(rx_b.requests()[0].header("webhook-id"), eb);

    let mb = app.as_merchant("m-b");
    let list = mb.gql_ok(WEBHOOKS, json!({})).await;
    assert_eq!(list["webhooks"]["totalCount"], 1);
    assert_eq!(list["webhooks"]["edges"][0]["node"]["id"], b.as_str());
    assert_eq!(mb.gql_code(WEBHOOK, json!({ "id": a })).await, "NOT_FOUND");
    assert_eq!(mb.gql_code(LOGS, json!({ "w": a })).await, "NOT_FOUND");
    let all = mb.gql_ok(LOGS, json!({})).await;
    assert_eq!(all["webhookLogs"]["totalCount"], 1, "{all}");
    assert_eq!(
        all["webhookLogs"]["edges"][0]["node"]["webhookId"],
        b.as_str()
    );
    for m in [
        r#"mutation($id: ID!) { deleteWebhook(id: $id) }"#,
        r#"mutation($id: ID!) { disableWebhook(id: $id) { id } }"#,
        r#"mutation($id: ID!) { updateWebhook(id: $id, input: { description: "x" }) { id } }"#,
        r#"mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }"#,
        r#"mutation($id: ID!) { sendTestEvent(webhookId: $id, type: ORDER_CREATED) }"#,
    ] {
        assert_eq!(mb.gql_code(m, json!({ "id": a })).await, "NOT_FOUND", "{m}");
    }
    let a_log = logs(&app, &app.merchant_token("m-a"), &a).await[0]["id"].clone();
    assert_eq!(
        mb.gql_code(
            r#"mutation($l: ID!) { redeliver(logId: $l) }"#,
            json!({ "l": a_log })
        )
        .await,
        "NOT_FOUND"
    );
    // Naming another merchant, and no token at all.
    assert_eq!(
        mb.gql_code(
            REGISTER,
            json!({ "i": { "url": rx_b.url(), "merchantId": "m-a" } })
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        app.anonymous().gql_code(WEBHOOKS, json!({})).await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.anonymous()
            .gql_code(REGISTER, json!({ "i": { "url": rx_b.url() } }))
            .await,
        "UNAUTHENTICATED"
    );
    // Without a token, a log id that exists and one that does not get the same answer.
    for l in [a_log.clone(), json!(uuid::Uuid::now_v7().to_string())] {
        assert_eq!(
            app.anonymous()
                .gql_code(
                    r#"mutation($l: ID!) { redeliver(logId: $l) }"#,
                    json!({ "l": l })
                )
                .await,
            "UNAUTHENTICATED"
        );
    }
    // Admin sees both, or the one it names; service must name the merchant to register.
    let all = app.as_admin().gql_ok(WEBHOOKS, json!({})).await;
    assert_eq!(all["webhooks"]["totalCount"], 2);
    let one = app.as_admin().gql_ok(WEBHOOKS, json!({ "m": "m-a" })).await;
    assert_eq!(one["webhooks"]["edges"][0]["node"]["id"], a.as_str());
    assert_eq!(
        app.as_service()
            .gql_code(REGISTER, json!({ "i": { "url": rx_b.url() } }))
            .await,
        "VALIDATION"
    );
    // A's endpoint still works: nothing B did reached it.
    assert_eq!(webhook(&app, "m-a", &a).await["enabled"], true);
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_endpoints_take_every_merchants_events() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    let data = app
        .as_admin()
        .gql_ok(
            REGISTER,
            json!({ "i": { "url": rx.url(), "eventTypes": ["ORDER_CREATED"] } }),
        )
        .await;
    assert!(data["registerWebhook"]["webhook"]["merchantId"].is_null());
    emit(&app, "m-a", 1).await;
    emit(&app, "m-b", 2).await;
    let got = rx.wait_for(2).await;
    let merchants: HashSet<String> = got
        .iter()
        .map(|r| r.json()["merchant_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(merchants, HashSet::from(["m-a".into(), "m-b".into()]));
    // Merchants do not see platform endpoints.
    let list = app.as_merchant("m-a").gql_ok(WEBHOOKS, json!({})).await;
    assert_eq!(list["webhooks"]["totalCount"], 0);
    // A service token acts for merchants: it cannot repoint, re-key, test or delete the platform's
    // endpoint, which receives every merchant's events.
    let id = data["registerWebhook"]["webhook"]["id"].as_str().unwrap();
    let service = app.as_service();
    for (doc, vars) in [
        (
            "mutation($id: ID!) { updateWebhook(id: $id, input: { url: \"http://127.0.0.1:9/hijack\" }) { id } }",
            json!({ "id": id }),
        ),
        (ROTATE, json!({ "id": id })),
        (
            "mutation($id: ID!) { sendTestEvent(webhookId: $id, type: ORDER_CREATED) }",
            json!({ "id": id }),
        ),
        (
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({ "id": id }),
        ),
    ] {
        let (code, body) = service.gql_err(doc, vars).await;
        assert_eq!(code, "FORBIDDEN", "{doc}: {body}");
    }
    let got = app.as_admin().gql_ok(WEBHOOK, json!({ "id": id })).await;
    assert_eq!(got["webhook"]["enabled"], true, "{got}");
    // It reads what it lists, though: the endpoint by id, and its logs.
    let got = service.gql_ok(WEBHOOK, json!({ "id": id })).await;
    assert_eq!(got["webhook"]["id"], id, "{got}");
    let logs = service
        .gql_ok(
            "query($id: ID!) { webhookLogs(webhookId: $id) { totalCount } }",
            json!({ "id": id }),
        )
        .await;
    assert!(logs["webhookLogs"]["totalCount"].is_i64(), "{logs}");
    // A merchant still cannot.
    let (code, _) = app
        .as_merchant("m-a")
        .gql_err(WEBHOOK, json!({ "id": id }))
        .await;
    assert_eq!(code, "NOT_FOUND");
    let list = app.as_admin().gql_ok(WEBHOOKS, json!({})).await;
    assert_eq!(list["webhooks"]["totalCount"], 1, "{list}");
    // A merchant's endpoint stays the service's to manage.
    let theirs = app
        .as_service()
        .gql_ok(
            REGISTER,
            json!({ "i": { "url": rx.url(), "eventTypes": ["ORDER_CREATED"], "merchantId": "m-a" } }),
        )
        .await;
    let theirs = theirs["registerWebhook"]["webhook"]["id"].as_str().unwrap();
    app.as_service()
        .gql_ok(ROTATE, json!({ "id": theirs }))
        .await;
    app.server.stop().await.unwrap();
}

// ---- rotation, redelivery, recovery, test sends ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_both_secrets_verify() {
    let app = spawn(Db::Sqlite).await;
    let rx = TestReceiver::start().await;
    let (id, old) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let data = app
        .as_merchant("m-a")
        .gql_ok(ROTATE, json!({ "id": id, "o": "1h" }))
        .await;
    let new = data["rotateWebhookSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert!(!data["rotateWebhookSecret"]["webhook"]["previousSecretExpiresAt"].is_null());
    emit(&app, "m-a", 1).await;
    let r = rx.wait_for(1).await.remove(0);
    let sigs: Vec<&str> = r.header("webhook-signature").split(' ').collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    let (id_h, ts) = (r.header("webhook-id"), r.header("webhook-timestamp"));
    for secret in [&old, &new] {
        assert!(sigs.contains(&spec_signature(secret, id_h, ts, &r.body).as_str()));
        assert_eq!(
            smartbot::webhooks::verify(&r.headers, &r.body, &[secret], None),
            Ok(())
        );
    }
    // A rotation without overlap: only the newest secret signs.
    let data = app
        .as_merchant("m-a")
        .gql_ok(ROTATE, json!({ "id": id, "o": "0s" }))
        .await;
    let newest = data["rotateWebhookSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    emit(&app, "m-a", 2).await;
    let r = rx.wait_for(2).await.remove(1);
    assert_eq!(r.header("webhook-signature").split(' ').count(), 1);
    assert!(smartbot::webhooks::verify(&r.headers, &r.body, &[&newest], None).is_ok());
    assert!(smartbot::webhooks::verify(&r.headers, &r.body, &[&new], None).is_err());
    assert_eq!(
        app.as_merchant("m-a")
            .gql_code(ROTATE, json!({ "id": id, "o": "30d" }))
            .await,
        "VALIDATION"
    );
    app.server.stop().await.unwrap();
}

async fn redeliver_recover_and_test_sends(db: Db) {
    let app = TestApp::spawn_with(db, |c| {
        hooks(c);
        c.webhook_retry_schedule = vec![Duration::ZERO];
    })
    .await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500), Reply::status(500)]);
    let (id, secret) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let e1 = emit(&app, "m-a", 1).await;
    let e2 = emit(&app, "m-a", 2).await;
    let l = wait_logs(&app, "m-a", &id, 2).await;
    assert!(l.iter().all(|r| r["success"] == false));
    let ma = app.as_merchant("m-a");
    // recover: both failed events, once each.
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let n = ma
        .gql_ok(
            r#"mutation($w: ID!, $s: DateTime!) { recoverWebhook(webhookId: $w, since: $s) }"#,
            json!({ "w": id, "s": since }),
        )
        .await;
    assert_eq!(n["recoverWebhook"], 2);
    let l = wait_logs(&app, "m-a", &id, 4).await;
    let ok: HashSet<&str> = l
        .iter()
        .filter(|r| r["success"] == true)
        .map(|r| r["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ok, HashSet::from([e1.as_str(), e2.as_str()]));
    assert!(l[2..].iter().all(|r| r["attempt"] == 2), "{l:?}");
    // Nothing left to recover.
    let n = ma
        .gql_ok(
            r#"mutation($w: ID!, $s: DateTime!) { recoverWebhook(webhookId: $w, since: $s) }"#,
            json!({ "w": id, "s": since }),
        )
        .await;
    assert_eq!(n["recoverWebhook"], 0);
    // redeliver re-sends one delivery, even a successful one.
    let first = l[0]["id"].as_str().unwrap().to_owned();
    ma.gql_ok(
        r#"mutation($l: ID!) { redeliver(logId: $l) }"#,
        json!({ "l": first }),
    )
    .await;
    wait_logs(&app, "m-a", &id, 5).await;
    let got = rx.requests();
    assert_eq!(got.len(), 5);
    assert_eq!(
        got[4].header("webhook-id"),
        l[0]["eventId"].as_str().unwrap()
    );
    // A signed test event.
    let test_id = ma
        .gql_ok(
            r#"mutation($w: ID!) { sendTestEvent(webhookId: $w, type: PAYMENT_RECEIVED) }"#,
            json!({ "w": id }),
        )
        .await["sendTestEvent"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = rx.wait_for(6).await.remove(5);
    assert_eq!(r.header("webhook-id"), test_id);
    assert_eq!(r.json()["type"], "payment_received");
    assert!(smartbot::webhooks::verify(&r.headers, &r.body, &[&secret], None).is_ok());
    // Filters.
    let failed = ma.gql_ok(LOGS, json!({ "w": id, "s": false })).await;
    assert_eq!(failed["webhookLogs"]["totalCount"], 2);
    app.server.stop().await.unwrap();
}

/// Two rotations of one endpoint at once take turns: the later keeps the earlier's new secret
/// as its previous one, so both secrets shown to their callers sign (a lost update kept the
/// original secret twice, and one caller's secret never signed anything).
async fn concurrent_rotations_take_turns(db: Db) {
    use sea_orm::EntityTrait;
    let app = spawn(db).await;
    let (id, _) = register(&app, "m-a", json!({ "url": "http://127.0.0.1:9/hook" })).await;
    let ma = app.as_merchant("m-a");
    for round in 0..6 {
        let rotate = || ma.gql_ok(ROTATE, json!({ "id": id, "o": "1h" }));
        let (a, b) = tokio::join!(rotate(), rotate());
        let shown: HashSet<String> = [a, b]
            .iter()
            .map(|d| {
                d["rotateWebhookSecret"]["secret"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let row = entity::webhook::Entity::find_by_id(id.parse::<uuid::Uuid>().unwrap())
            .one(&app.server.state.db)
            .await
            .unwrap()
            .unwrap();
        let cipher = &app.server.state.cipher;
        let signing: HashSet<String> = [Some(row.secret), row.previous_secret]
            .into_iter()
            .flatten()
            .map(|s| cipher.decrypt(&s).unwrap())
            .collect();
        assert_eq!(signing, shown, "round {round}: a rotation was lost");
    }
}

/// Recoveries of one endpoint at once (a double click) send each failed event once, not once
/// per call.
async fn concurrent_recoveries_send_each_event_once(db: Db) {
    let app = TestApp::spawn_with(db, |c| {
        hooks(c);
        c.webhook_retry_schedule = vec![Duration::ZERO];
    })
    .await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500)]);
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    wait_logs(&app, "m-a", &id, 1).await;
    let ma = app.as_merchant("m-a");
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let recover = || {
        ma.gql_ok(
            r#"mutation($w: ID!, $s: DateTime!) { recoverWebhook(webhookId: $w, since: $s) }"#,
            json!({ "w": id, "s": since }),
        )
    };
    let got = tokio::join!(recover(), recover(), recover());
    // Each call queues the event (1), or finds it already recovered by another call whose
    // attempt has succeeded meanwhile (0), as a serial run could.
    let queued: Vec<u64> = [got.0, got.1, got.2]
        .iter()
        .map(|d| d["recoverWebhook"].as_u64().unwrap())
        .collect();
    assert!(
        queued.iter().all(|&n| n <= 1) && queued.contains(&1),
        "{queued:?}"
    );
    let queue = app.server.state.queue.clone();
    eventually("the queue is idle", || async {
        let c = queue.queue_stats(QueueName::WebhookDelivery).await.unwrap();
        match c.waiting + c.active + c.delayed {
            0 => Ok(()),
            _ => Err(format!("{c:?}")),
        }
    })
    .await;
    let l = wait_logs(&app, "m-a", &id, 2).await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(
        rx.requests().len(),
        2,
        "the event was recovered more than once"
    );
}

// ---- the outbox ------------------------------------------------------------------------------

/// A process that stored an event and died before publishing it: the sweeper delivers it.
async fn an_event_recorded_but_never_published_is_delivered(db: Db) {
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let merchant = MerchantId::parse("merchantId", "m-a").unwrap();
    // `record` without `publish`: exactly what a crash right after commit leaves behind.
    let event = smartbot::events::service::record(
        &app.server.state.db,
        EventType::OrderCreated,
        &merchant,
        order_payload(1),
    )
    .await
    .unwrap();
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].header("webhook-id"), event.id.to_string());
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l[0]["success"], true);
    // Dispatched once: later sweeps leave it alone.
    let marker = TestReceiver::start().await;
    register(&app, "m-b", json!({ "url": marker.url() })).await;
    emit(&app, "m-b", 2).await;
    marker.wait_for(1).await;
    assert_eq!(rx.requests().len(), 1);
    app.server.stop().await.unwrap();
}

/// The normal path marks what it fanned out (a burst's marks go together, shortly after), so the
/// sweeper leaves those rows alone and every event is delivered once.
async fn a_burst_is_fanned_out_once_and_marked(db: Db) {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(uuid::Uuid::parse_str(&emit(&app, "m-a", n).await).unwrap());
    }
    rx.wait_for(20).await;
    let db = &app.server.state.db;
    eventually("every emitted event marked dispatched", || async {
        let unmarked = entity::event::Entity::find()
            .filter(entity::event::Column::Id.is_in(ids.clone()))
            .filter(entity::event::Column::WebhooksDispatchedAt.is_null())
            .count(db)
            .await
            .unwrap();
        if unmarked == 0 {
            Ok(())
        } else {
            Err(format!("{unmarked} of 20 still unmarked"))
        }
    })
    .await;
    // Three sweeps later, still one delivery and one log row per event.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.requests().len(), 20);
    assert_eq!(wait_logs(&app, "m-a", &id, 20).await.len(), 20);
    app.server.stop().await.unwrap();
}

/// The `webhooks` generation (migration 000010), read as the endpoint cache reads it.
async fn webhooks_generation(app: &TestApp) -> i64 {
    smartbot::db::generation(&app.server.state.db, "webhooks")
        .await
        .unwrap()
        .expect("the webhooks generation row")
}

/// Runs `sql` straight on the database, as another instance (or a person in psql) would: this
/// process's endpoint cache is not told.
async fn elsewhere(app: &TestApp, sql: &str) {
    use sea_orm::ConnectionTrait;
    app.server.state.db.execute_unprepared(sql).await.unwrap();
}

/// Waits until the event's webhook fan-out is done (its outbox row marked dispatched).
async fn fanned_out(app: &TestApp, event: &str) {
    use sea_orm::EntityTrait;
    let id = uuid::Uuid::parse_str(event).unwrap();
    let db = &app.server.state.db;
    eventually("the event's fan-out", || async {
        let row = entity::event::Entity::find_by_id(id).one(db).await.unwrap();
        match row {
            Some(e) if e.webhooks_dispatched_at.is_some() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The endpoint cache follows changes it was not told about: the next fan-out reads them, and a
/// failure that is only counted leaves the cache alone.
async fn changes_made_elsewhere_reach_the_next_fan_out(db: Db) {
    let app = spawn(db).await;
    let (rx1, rx2) = (TestReceiver::start().await, TestReceiver::start().await);
    register(&app, "m-a", json!({ "url": rx1.url() })).await;
    let first = emit(&app, "m-a", 1).await;
    assert_eq!(rx1.wait_for(1).await[0].header("webhook-id"), first);

    // A new URL, set elsewhere: the next event goes there.
    move_elsewhere(&app, &rx2).await;
    let moved = emit(&app, "m-a", 2).await;
    assert_eq!(rx2.wait_for(1).await[0].header("webhook-id"), moved);

    // Disabled elsewhere: no delivery. Enabled again: the next event arrives, the one emitted
    // while it was disabled never does.
    elsewhere(
        &app,
        "UPDATE webhooks SET enabled = false WHERE merchant_id = 'm-a'",
    )
    .await;
    let skipped = emit(&app, "m-a", 3).await;
    // The fan-out runs just after the emit returns: wait for it before enabling again.
    fanned_out(&app, &skipped).await;
    elsewhere(
        &app,
        "UPDATE webhooks SET enabled = true WHERE merchant_id = 'm-a'",
    )
    .await;
    let back = emit(&app, "m-a", 4).await;
    let got = rx2.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), back);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = rx2
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(!ids.contains(&skipped), "delivered while disabled: {ids:?}");
    assert_eq!(rx1.requests().len(), 1, "nothing more to the old URL");

    // What bumps the generation: a change that shapes deliveries, and the start or end of a run
    // of failures; counting failures and editing the description do not.
    let g = webhooks_generation(&app).await;
    for (sql, bumps) in [
        ("SET consecutive_failures = consecutive_failures + 1", false),
        ("SET description = 'edited elsewhere'", false),
        ("SET failing_since = updated_at", true),
        ("SET failing_since = created_at", false),
        ("SET failing_since = NULL", true),
        ("SET rate_limit = 7", true),
        ("SET event_types = '[\"order_created\"]'", true),
    ] {
        let before = webhooks_generation(&app).await;
        elsewhere(
            &app,
            &format!("UPDATE webhooks {sql} WHERE merchant_id = 'm-a'"),
        )
        .await;
        let after = webhooks_generation(&app).await;
        assert_eq!(after > before, bumps, "{sql}: {before} -> {after}");
    }
    assert!(webhooks_generation(&app).await > g);
    app.server.stop().await.unwrap();
}

/// Points merchant `m-a`'s endpoints at `rx`, in SQL outside this process.
async fn move_elsewhere(app: &TestApp, rx: &TestReceiver) {
    let sql = format!(
        "UPDATE webhooks SET url = '{}' WHERE merchant_id = 'm-a'",
        rx.url()
    );
    elsewhere(app, &sql).await;
}

/// On PostgreSQL an emitted event's own INSERT reads the endpoint generation and hands it to the
/// fan-out, which then reads no generation itself; on SQLite every fan-out reads it.
async fn an_emit_hands_its_fan_out_the_generation(db: Db) {
    let app = TestApp::spawn_with(db, |c| {
        hooks(c);
        // No sweep during the test: only the emits' own fan-outs run.
        c.webhook_sweep_interval = Duration::from_secs(600);
    })
    .await;
    let rx = TestReceiver::start().await;
    register(&app, "m-a", json!({ "url": rx.url() })).await;
    let cache = &app.server.state.webhooks.endpoints;
    let before = cache.generation_reads();
    for n in 0..5 {
        // One at a time, so each is a fan-out batch of its own.
        emit(&app, "m-a", n).await;
        rx.wait_for(n + 1).await;
    }
    let reads = cache.generation_reads() - before;
    match db {
        Db::Postgres => assert_eq!(reads, 0, "the INSERTs read the generation"),
        Db::Sqlite => assert_eq!(reads, 5, "one read per fan-out batch"),
    }
    // Still exact: a change made elsewhere reaches the next emit.
    let rx2 = TestReceiver::start().await;
    move_elsewhere(&app, &rx2).await;
    let moved = emit(&app, "m-a", 5).await;
    assert_eq!(rx2.wait_for(1).await[0].header("webhook-id"), moved);
    assert_eq!(rx.requests().len(), 5, "nothing more to the old URL");
    app.server.stop().await.unwrap();
}

/// A receiver's answer is kept as text on every backend: NUL bytes (which PostgreSQL cannot
/// store in text) become U+FFFD, and the delivery is logged once, not retried for it.
async fn any_answer_is_logged(db: Db) {
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    let mut body = b"ok\0then".to_vec();
    body.extend(0u8..=255);
    rx.script([Reply::status(200).body(body)]);
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    emit(&app, "m-a", 1).await;
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l[0]["success"], true, "{l:?}");
    let logged = l[0]["responseBody"].as_str().unwrap();
    assert!(logged.starts_with("ok\u{FFFD}then"), "{logged:?}");
    assert!(!logged.contains('\0'));
    // Logged once, delivered once: nothing failed to retry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests().len(), 1);
    assert_eq!(logs(&app, &app.merchant_token("m-a"), &id).await.len(), 1);
    app.server.stop().await.unwrap();
}

/// An attempt already made is not made again, whatever job asks for it: a second job for the
/// same attempt (the queue forgot the first's id: retention, or a Redis that restarted empty, and
/// the event was dispatched again) is skipped, and the receiver hears the event once.
async fn a_repeated_attempt_reaches_the_receiver_once(db: Db) {
    let app = spawn(db).await;
    let rx = TestReceiver::start().await;
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let event = emit(&app, "m-a", 1).await;
    wait_logs(&app, "m-a", &id, 1).await;
    let q = &app.server.state.queue;
    let first = q
        .job_status(QueueName::WebhookDelivery, &format!("{id}:{event}:1"))
        .await
        .unwrap();
    let again = q
        .enqueue(
            QueueName::WebhookDelivery,
            &first.name,
            &first.payload,
            &smartbot::queue::JobOptions {
                job_id: Some(format!("again-{event}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = eventually("the repeat ran", || async {
        let j = q
            .job_status(QueueName::WebhookDelivery, &again)
            .await
            .unwrap();
        if j.state == smartbot::queue::JobState::Completed {
            Ok(j)
        } else {
            Err(format!("{:?}", j.state))
        }
    })
    .await;
    assert_eq!(
        done.result.as_ref().map(|r| r["skipped"].clone()),
        Some(json!("already delivered or attempted")),
        "{done:?}"
    );
    assert_eq!(rx.requests().len(), 1);
    assert_eq!(logs(&app, &app.merchant_token("m-a"), &id).await.len(), 1);
    app.server.stop().await.unwrap();
}

both_dbs!(
    any_answer_is_logged,
    a_repeated_attempt_reaches_the_receiver_once,
    a_burst_is_fanned_out_once_and_marked,
    an_emit_hands_its_fan_out_the_generation,
    changes_made_elsewhere_reach_the_next_fan_out,
    deliveries_are_signed_to_spec_and_logged,
    failures_are_retried_until_success,
    a_down_receiver_is_logged_and_retried_later,
    merchants_see_only_their_endpoints_and_logs,
    redeliver_recover_and_test_sends,
    an_event_recorded_but_never_published_is_delivered,
    concurrent_rotations_take_turns,
    concurrent_recoveries_send_each_event_once,
);

// ---- several processes -----------------------------------------------------------------------

/// Two instances on one PostgreSQL and one Redis queue, both running workers and sweepers: every
/// event is delivered once, not once per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once() {
    let prefix = format!("smartbot-test-{}:", uuid::Uuid::new_v4().simple());
    let redis = crate::common::redis_url();
    let a = TestApp::spawn_with(Db::Postgres, |c| {
        hooks(c);
        c.redis_url = Some(redis.clone());
        c.redis_prefix = prefix.clone();
    })
    .await;
    let mut config = (*a.server.state.config).clone();
    config.port = 0;
    // The same encryption key file: instances sharing a database share the key.
    let b = smartbot::spawn(config).await.unwrap();
    let rx = TestReceiver::start().await;
    let (id, _) = register(&a, "m-a", json!({ "url": rx.url() })).await;
    const N: usize = 30;
    let mut ids = HashSet::new();
    for n in 0..N {
        let via = if n % 2 == 0 {
            a.url("/graphql")
        } else {
            b.url("/graphql")
        };
        let res: Value = a
            .client
            .post(via)
            .bearer_auth(a.token(smartbot::auth::Role::Service, None))
            .json(&json!({ "query": EMIT, "variables": { "t": "ORDER_CREATED", "m": "m-a", "p": order_payload(n) } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.insert(res["data"]["emitEvent"]["id"].as_str().unwrap().to_owned());
    }
    wait_logs(&a, "m-a", &id, N).await;
    let got = rx.requests();
    let seen: HashSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(seen, ids);
    assert_eq!(got.len(), N, "each event delivered once");
    let l = logs(&a, &a.merchant_token("m-a"), &id).await;
    assert_eq!(l.len(), N);
    b.stop().await.unwrap();
    a.server.stop().await.unwrap();
}

const CHILD_ENV: &str = "SMARTBOT_TEST_WEBHOOK_CHILD";

/// The body of a child server process (`serve` with workers), configured by the parent through
/// `CHILD_ENV` (`KEY=VALUE` lines). It does nothing unless started by a SIGKILL test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child process of the webhook SIGKILL test"]
async fn child_server_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let vars: std::collections::HashMap<String, String> = spec
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut config = Config::from_vars(vars).unwrap();
    hooks(&mut config);
    config.webhook_timeout = Duration::from_secs(120);
    let server = smartbot::spawn(config).await.unwrap();
    // Until the parent kills us, or ten minutes (a parent that died).
    tokio::time::sleep(Duration::from_secs(600)).await;
    server.stop().await.unwrap();
}

/// Starts `serve` (with workers) in a child process, configured by `spec` (`KEY=VALUE` lines).
pub(crate) fn spawn_child_server(spec: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "webhooks::child_server_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the child server")
}

/// A worker process SIGKILLed mid-delivery (the receiver holds the request open): its lease
/// expires, another process takes the job and delivers it. The receiver sees the delivery twice
/// with the same `webhook-id`, and the log records the success once.
async fn sigkill_mid_delivery_is_retried(db: Db, redis: bool) {
    let prefix = format!("smartbot-test-{}:", uuid::Uuid::new_v4().simple());
    let redis_url = crate::common::redis_url();
    // The parent serves the API but runs no workers, so the child takes the job.
    let app = TestApp::spawn_with(db, |c| {
        hooks(c);
        c.run_workers = false;
        c.job_lease = Duration::from_secs(2);
        if redis {
            c.redis_url = Some(redis_url.clone());
            c.redis_prefix = prefix.clone();
        }
    })
    .await;
    let cfg = app.server.state.config.clone();
    let mut spec = format!(
        "DATABASE_URL={}\nDATA_DIR={}\nPORT=0\nBIND_ADDR=127.0.0.1\nRATE_LIMIT=off\nJOB_LEASE=2s\nSEED_TEMPLATES=false\n",
        cfg.database_url,
        cfg.data_dir.display()
    );
    if redis {
        spec += &format!("REDIS_URL={redis_url}\nREDIS_PREFIX={prefix}\n");
    }
    let rx = TestReceiver::start().await;
    rx.script([Reply::hang()]);
    let (id, _) = register(&app, "m-a", json!({ "url": rx.url() })).await;
    let mut child = spawn_child_server(&spec);
    let event = emit(&app, "m-a", 1).await;
    let first = rx.wait_for(1).await;
    assert_eq!(first[0].header("webhook-id"), event);
    // SIGKILL: no chance to log, finish or release anything.
    child.kill().unwrap();
    child.wait().unwrap();
    // Another process with workers reclaims the expired lease and delivers again.
    let mut config = (*cfg).clone();
    config.port = 0;
    config.run_workers = true;
    let worker = smartbot::spawn(config).await.unwrap();
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), event, "same webhook-id");
    let l = wait_logs(&app, "m-a", &id, 1).await;
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["success"], true);
    worker.stop().await.unwrap();
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_sqlite() {
    sigkill_mid_delivery_is_retried(Db::Sqlite, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_postgres_redis() {
    sigkill_mid_delivery_is_retried(Db::Postgres, true).await
}
