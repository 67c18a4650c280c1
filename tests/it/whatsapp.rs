//! WhatsApp end to end, through the queue, against a local stand-in of the Cloud API: the exact
//! JSON on the wire, retryable and final provider errors (with Retry-After), the recording
//! transport and `outbox`, merchants' own numbers (encrypted), and the inbound webhook
//! (handshake, signature, dedupe, statuses).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp, docs, eventually},
};

pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const TOKEN: &str = "EAAG-test-token";
pub const APP_SECRET: &str = "app-secret-for-tests";
pub const CUSTOMER: &str = "263781564004";

/// One request the stand-in saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: Instant,
}

/// How the stand-in answers the next request (default: 200 with a fresh wamid).
#[derive(Debug, Clone)]
pub enum Reply {
    Accept,
    /// Holds the request open, answering nothing (a call whose worker dies during it).
    Hang,
    /// 200 with this message id, whatever was sent before (a provider that repeats ids).
    AcceptAs(&'static str),
    Error {
        status: u16,
        code: i64,
        retry_after: Option<&'static str>,
    },
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    script: VecDeque<Reply>,
}

/// The Cloud API stand-in: `POST /{version}/{phone_number_id}/messages`, answering as Meta
/// documents (success: `messages[0].id`; errors: `{"error": {message, type, code, error_data,
/// fbtrace_id}}`).
#[derive(Clone)]
pub struct CloudApi {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

async fn messages(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_version, _number)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (reply, n) = {
        let mut g = inner.lock().unwrap();
        g.seen.push(Seen {
            path: uri.path().to_owned(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.clone(),
            at: Instant::now(),
        });
        (g.script.pop_front().unwrap_or(Reply::Accept), g.seen.len())
    };
    match reply {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Reply::Accept => Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
            "messages": [{ "id": format!("wamid.TEST{n}") }],
        }))
        .into_response(),
        Reply::AcceptAs(id) => Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
            "messages": [{ "id": id }],
        }))
        .into_response(),
        Reply::Error {
            status,
            code,
            retry_after,
        } => {
            let mut res = (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({ "error": {
                    // Meta's words may hold anything, a NUL included (which PostgreSQL
                    // cannot store in text): the message must still end as it should.
                    "message": format!("(#{code}) stand-in\u{0}error"),
                    "type": "OAuthException",
                    "code": code,
                    "error_data": { "messaging_product": "whatsapp", "details": "stand-in details" },
                    "fbtrace_id": "AbCdEf",
                }})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                res.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            res
        }
    }
}

/// `GET /{version}/{phone_number_id}`: the number, for a token that may use it. The stand-in
/// accepts tokens that start with `merchant-token`; others get Meta's invalid-token answer.
async fn phone_number(
    Path((_version, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token.starts_with("merchant-token") {
        Json(json!({ "id": number })).into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": {
                "message": "Invalid OAuth access token - Cannot parse access token",
                "type": "OAuthException", "code": 190, "fbtrace_id": "AbCdEf",
            }})),
        )
            .into_response()
    }
}

impl CloudApi {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/{version}/{number}", get(phone_number))
            .route("/{version}/{number}/messages", post(messages))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, inner }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }
}

/// An app whose platform number points at `cloud`, with fast retries and the inbound secrets.
pub async fn app_with(db: Db, cloud: Option<&CloudApi>) -> TestApp {
    let base = cloud.map(CloudApi::base);
    TestApp::spawn_with(db, move |c| {
        if let Some(base) = base {
            c.whatsapp.api_base = base;
            c.whatsapp.token = Some(TOKEN.into());
        }
        c.whatsapp.phone_number_id = Some(PHONE_NUMBER_ID.into());
        c.whatsapp.merchant_id = "m-wa".into();
        c.whatsapp.app_secret = Some(APP_SECRET.into());
        c.whatsapp.verify_token = Some("verify-me".into());
        c.whatsapp.retry_base = Duration::from_millis(50);
        // Webhook endpoints on a local receiver (the ten-types test).
        c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await
}

/// Meta's `X-Hub-Signature-256` for `body`, computed here and not with the crate's own helper:
/// `sha256=` and the lowercase hex HMAC-SHA256 of the raw body, keyed with the app secret.
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a webhook body signed with `secret` (none: unsigned).
pub async fn post_webhook(app: &TestApp, body: &Value, secret: Option<&str>) -> (u16, Value) {
    post_raw_webhook(app, serde_json::to_vec(body).unwrap(), secret).await
}

/// POSTs raw bytes as a webhook body, signed with `secret` (none: unsigned).
pub async fn post_raw_webhook(app: &TestApp, raw: Vec<u8>, secret: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("content-type", "application/json")
        .body(raw.clone());
    if let Some(s) = secret {
        req = req.header("x-hub-signature-256", sign(s, &raw));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A Meta webhook body with `messages` and `statuses` for `number`.
pub fn webhook(number: &str, messages: Value, statuses: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "WABA-1",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550000000", "phone_number_id": number },
                    "contacts": [{ "profile": { "name": "Tari" }, "wa_id": CUSTOMER }],
                    "messages": messages,
                    "statuses": statuses,
                    "unknown_future_field": { "kept": true },
                }
            }]
        }]
    })
}

pub fn text_message(wamid: &str, text: &str) -> Value {
    json!({ "from": CUSTOMER, "id": wamid, "timestamp": "1732600000", "type": "text", "text": { "body": text } })
}

async fn send(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql_ok(Some(token), docs::SEND_MESSAGE, json!({ "input": input }))
        .await["sendMessage"]
        .clone()
}

async fn message(app: &TestApp, id: &str) -> Value {
    app.gql_ok(Some(&app.admin), docs::MESSAGE_BY_ID, json!({ "id": id }))
        .await["message"]
        .clone()
}

async fn message_in(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(&format!("message {id} is {status}"), || async {
        let m = message(app, id).await;
        if m["status"] == status {
            Ok(m)
        } else {
            Err(m.to_string())
        }
    })
    .await
}

async fn events_of(app: &TestApp, merchant: &str, kind: &str) -> Vec<Value> {
    let data = app
        .gql_ok(
            Some(&app.admin),
            docs::RECENT_EVENTS,
            json!({ "m": merchant, "types": [kind] }),
        )
        .await;
    data["recentEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// A stored BUTTONS template becomes exactly this Cloud API JSON on the wire.
async fn templates_go_out_as_exact_cloud_api_json(db: Db) {
    let cloud = CloudApi::start().await;
    let app = app_with(db, Some(&cloud)).await;
    let shop = app.merchant("m-shop");
    app.create_template(
        &shop,
        json!({
            "name": "order_ready", "type": "BUTTONS",
            "header": "Order {{order}}", "body": "Hi {{name}}, your order is ready.",
            "footer": "Mbare Mart",
            "buttons": [{ "id": "collect", "title": "Collect" }, { "id": "deliver", "title": "Deliver" }],
        }),
    )
    .await;
    let sent = send(
        &app,
        &shop,
        json!({ "to": "+263781564004", "templateName": "order_ready",
                "variables": { "name": "Tari", "order": "#42" }, "priority": "HIGH" }),
    )
    .await;
    assert_eq!(sent["status"], "QUEUED");
    let id = sent["id"].as_str().unwrap();
    let m = message_in(&app, id, "SENT").await;
    assert_eq!(m["providerMessageId"], "wamid.TEST1");
    assert_eq!(m["transport"], "cloud_api");
    let seen = cloud.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        seen[0].body,
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "interactive",
            "interactive": {
                "type": "button",
                "header": { "type": "text", "text": "Order #42" },
                "body": { "text": "Hi Tari, your order is ready." },
                "footer": { "text": "Mbare Mart" },
                "action": { "buttons": [
                    { "type": "reply", "reply": { "id": "collect", "title": "Collect" } },
                    { "type": "reply", "reply": { "id": "deliver", "title": "Deliver" } },
                ]},
            },
        })
    );
    let sent_events = events_of(&app, "m-shop", "MESSAGE_SENT").await;
    assert_eq!(sent_events.len(), 1);
    assert_eq!(sent_events[0]["payload"]["messageId"], id);
    assert_eq!(
        sent_events[0]["payload"]["providerMessageId"],
        "wamid.TEST1"
    );

    // Text and image-by-link go out as the engine builds them too.
    let t = send(
        &app,
        &shop,
        json!({ "to": CUSTOMER, "text": "plain words" }),
    )
    .await;
    message_in(&app, t["id"].as_str().unwrap(), "SENT").await;
    let i = send(
        &app,
        &shop,
        json!({ "to": CUSTOMER, "media": { "link": "https://cdn.example/p.jpg", "caption": "New stock" } }),
    )
    .await;
    message_in(&app, i["id"].as_str().unwrap(), "SENT").await;
    let bodies: Vec<Value> = cloud.seen().into_iter().map(|s| s.body).collect();
    assert!(bodies.contains(
        &json!({ "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": CUSTOMER, "type": "text", "text": { "preview_url": false, "body": "plain words" } })
    ));
    assert!(bodies.contains(&json!({ "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": CUSTOMER, "type": "image", "image": { "link": "https://cdn.example/p.jpg", "caption": "New stock" } })));
}

/// A missing variable, a Cloud API limit or a bad phone is refused before anything is queued.
async fn bad_messages_are_refused_before_queueing(db: Db) {
    let cloud = CloudApi::start().await;
    let app = app_with(db, Some(&cloud)).await;
    let shop = app.merchant("m-shop");
    app.create_template(
        &shop,
        json!({ "name": "greet", "type": "TEXT", "body": "Hi {{name}} from {{shop}}" }),
    )
    .await;
    let cases = [
        (
            json!({ "to": CUSTOMER, "templateName": "greet", "variables": { "name": "T" } }),
            "variables",
        ),
        (json!({ "to": "0781564004", "text": "hi" }), "to"),
        (json!({ "to": CUSTOMER, "text": "x".repeat(4097) }), "text"),
        (
            json!({ "to": CUSTOMER, "text": "hi", "templateName": "greet" }),
            "templateId",
        ),
        (
            json!({ "to": CUSTOMER, "media": { "link": format!("https://x/{}", "a".repeat(3000)) } }),
            "media.link",
        ),
    ];
    for (input, field) in cases {
        let (code, body) = app
            .as_merchant("m-shop")
            .gql_err(docs::SEND_MESSAGE, json!({ "input": input }))
            .await;
        assert_eq!(code, "VALIDATION", "{body:#}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body:#}");
    }
    let data = app.gql_ok(Some(&shop), docs::MESSAGES, json!({})).await;
    assert_eq!(data["messages"]["totalCount"], 0, "nothing was stored");
    assert!(cloud.seen().is_empty(), "nothing was sent");
}

/// 503 then 429 (Retry-After: 1) then success: three calls, SENT; Retry-After is honoured.
/// A final 400 (131026, undeliverable) fails at once with the reason.
async fn provider_errors_are_retried_or_final(db: Db) {
    let cloud = CloudApi::start().await;
    let app = app_with(db, Some(&cloud)).await;
    let shop = app.merchant("m-shop");
    cloud.script([
        Reply::Error {
            status: 503,
            code: 131016,
            retry_after: None,
        },
        Reply::Error {
            status: 429,
            code: 130429,
            retry_after: Some("1"),
        },
    ]);
    let m = send(&app, &shop, json!({ "to": CUSTOMER, "text": "retry me" })).await;
    let done = message_in(&app, m["id"].as_str().unwrap(), "SENT").await;
    assert_eq!(done["attempts"], 3, "{done:#}");
    let seen = cloud.seen();
    assert_eq!(seen.len(), 3);
    let waited = seen[2].at - seen[1].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: {waited:?}"
    );

    cloud.script([Reply::Error {
        status: 400,
        code: 131026,
        retry_after: None,
    }]);
    let f = send(
        &app,
        &shop,
        json!({ "to": CUSTOMER, "text": "undeliverable" }),
    )
    .await;
    let failed = message_in(&app, f["id"].as_str().unwrap(), "FAILED").await;
    assert_eq!(failed["errorCode"], 131026, "{failed:#}");
    assert!(
        failed["error"].as_str().unwrap().contains("131026")
            && failed["error"]
                .as_str()
                .unwrap()
                .contains("stand-in\u{FFFD}error"),
        "{failed:#}"
    );
    assert_eq!(failed["attempts"], 1, "a final error is not retried");
    assert_eq!(cloud.seen().len(), 4);
    // Only the successful one emitted message_sent.
    assert_eq!(events_of(&app, "m-shop", "MESSAGE_SENT").await.len(), 1);
}

/// Retryable errors to the end of the budget leave the message FAILED, not QUEUED forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_retry_budget_fails_the_message() {
    let cloud = CloudApi::start().await;
    let app = app_with(Db::Sqlite, Some(&cloud)).await;
    cloud.script(std::iter::repeat_n(
        Reply::Error {
            status: 500,
            code: 131000,
            retry_after: None,
        },
        5,
    ));
    let m = send(
        &app,
        &app.merchant("m-shop"),
        json!({ "to": CUSTOMER, "text": "doomed" }),
    )
    .await;
    let failed = message_in(&app, m["id"].as_str().unwrap(), "FAILED").await;
    assert_eq!(failed["attempts"], 5, "{failed:#}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 5"),
        "{failed:#}"
    );
    assert_eq!(cloud.seen().len(), 5);
}

/// A provider that answers an id another message already has: the second message went out,
/// so it is SENT (without the id), once. It failed on the unique id, and every retry sent the
/// customer the message again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_provider_id_never_sends_twice() {
    let cloud = CloudApi::start().await;
    let app = app_with(Db::Sqlite, Some(&cloud)).await;
    cloud.script([Reply::AcceptAs("wamid.SAME"), Reply::AcceptAs("wamid.SAME")]);
    let shop = app.merchant("m-shop");
    let first = send(&app, &shop, json!({ "to": CUSTOMER, "text": "one" })).await;
    let first = message_in(&app, first["id"].as_str().unwrap(), "SENT").await;
    assert_eq!(first["providerMessageId"], "wamid.SAME");
    let second = send(&app, &shop, json!({ "to": CUSTOMER, "text": "two" })).await;
    let second = message_in(&app, second["id"].as_str().unwrap(), "SENT").await;
    assert!(second["providerMessageId"].is_null(), "{second:#}");
    // Let any retry happen (the retry base is 50 ms): none does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud.seen().len(), 2, "each message sent once");
    assert_eq!(events_of(&app, "m-shop", "MESSAGE_SENT").await.len(), 2);
}

/// Provider calls that never come back, each worker SIGKILLed during its call: the queue
/// counts every lost run, and once the five calls are spent the job's next run ends the message
/// FAILED, naming the lost runs. It was left QUEUED for good when the last call's run was the
/// job's last attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_lost_with_their_worker_still_fail_the_message() {
    let cloud = CloudApi::start().await;
    cloud.script(std::iter::repeat_n(Reply::Hang, 10));
    // The parent serves the API and runs no workers: child processes take the job.
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.run_workers = false;
        c.job_lease = Duration::from_secs(1);
    })
    .await;
    let cfg = app.server.state.config.clone();
    let spec = format!(
        "DATABASE_URL={}\nDATA_DIR={}\nPORT=0\nBIND_ADDR=127.0.0.1\nRATE_LIMIT=off\n\
         JOB_LEASE=1s\nSEED_TEMPLATES=false\nWHATSAPP_API_BASE={}\nWHATSAPP_TOKEN={TOKEN}\n\
         WHATSAPP_PHONE_NUMBER_ID={PHONE_NUMBER_ID}\nWHATSAPP_RETRY_BASE=50ms\n\
         WHATSAPP_TIMEOUT=120s\n",
        cfg.database_url,
        cfg.data_dir.display(),
        cloud.base(),
    );
    let m = send(
        &app,
        &app.merchant("m-shop"),
        json!({ "to": CUSTOMER, "text": "lost in flight" }),
    )
    .await;
    let id = m["id"].as_str().unwrap();
    for call in 1..=5 {
        let mut child = crate::webhooks::spawn_child_server(&spec);
        eventually(&format!("provider call {call}"), || async {
            let n = cloud.seen().len();
            if n >= call {
                Ok(())
            } else {
                Err(format!("{n} calls"))
            }
        })
        .await;
        // SIGKILL: the call's outcome is never recorded.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(message(&app, id).await["status"], "QUEUED");
    let mut config = (*cfg).clone();
    config.port = 0;
    config.run_workers = true;
    config.whatsapp.api_base = cloud.base();
    config.whatsapp.token = Some(TOKEN.into());
    config.whatsapp.phone_number_id = Some(PHONE_NUMBER_ID.into());
    let worker = smartbot::spawn(config).await.unwrap();
    let failed = message_in(&app, id, "FAILED").await;
    assert_eq!(failed["attempts"], 5, "{failed:#}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 5 attempts") && error.contains("stalled"),
        "{failed:#}"
    );
    assert_eq!(cloud.seen().len(), 5, "no sixth call");
    worker.stop().await.unwrap();
}

/// Without credentials the recording transport keeps the message; `outbox` shows it, scoped.
async fn the_recording_transport_fills_the_outbox(db: Db) {
    let app = app_with(db, None).await;
    let shop = app.merchant("m-shop");
    let m = send(
        &app,
        &shop,
        json!({ "to": CUSTOMER, "text": "kept, not sent", "idempotencyKey": "k-1" }),
    )
    .await;
    let id = m["id"].as_str().unwrap();
    let done = message_in(&app, id, "SENT").await;
    assert_eq!(done["transport"], "recording");
    // The same idempotency key gives the same message.
    let again = send(
        &app,
        &shop,
        json!({ "to": CUSTOMER, "text": "kept, not sent", "idempotencyKey": "k-1" }),
    )
    .await;
    assert_eq!(again["id"], id);
    let (code, _) = app
        .as_merchant("m-shop")
        .gql_err(
            docs::SEND_MESSAGE,
            json!({ "input": { "to": CUSTOMER, "text": "different", "idempotencyKey": "k-1" } }),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    let outbox = app.gql_ok(Some(&shop), docs::OUTBOX, json!({})).await["outbox"].clone();
    assert_eq!(outbox["totalCount"], 1, "{outbox:#}");
    assert_eq!(
        outbox["edges"][0]["node"]["payload"]["text"]["body"],
        "kept, not sent"
    );
    let other = app
        .gql_ok(Some(&app.merchant("m-other")), docs::OUTBOX, json!({}))
        .await;
    assert_eq!(other["outbox"]["totalCount"], 0);
    let (code, _) = app
        .as_merchant("m-other")
        .gql_err(docs::OUTBOX, json!({ "m": "m-shop" }))
        .await;
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(message_events(&app, "m-shop").await, 1);
}

async fn message_events(app: &TestApp, merchant: &str) -> usize {
    events_of(app, merchant, "MESSAGE_SENT").await.len()
}

/// A merchant's own number is used for its messages, with its token, which is stored encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_credentials_are_encrypted_and_used() {
    use sea_orm::EntityTrait;
    let cloud = CloudApi::start().await;
    let app = app_with(Db::Sqlite, Some(&cloud)).await;
    let own = app.merchant("m-own");
    let acct = app
        .gql_ok(
            Some(&own),
            docs::SET_WHATSAPP_CREDENTIALS,
            json!({ "pn": "5550001", "token": "merchant-token-xyz" }),
        )
        .await;
    assert_eq!(acct["setWhatsAppCredentials"]["phoneNumberId"], "5550001");
    let row = entity::whatsapp_account::Entity::find_by_id("m-own".to_owned())
        .one(&app.server.state.db)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !row.access_token.contains("merchant-token-xyz"),
        "stored in clear"
    );
    // Another merchant cannot take the number, nor learn that it is taken without a token Meta
    // accepts for it.
    let (code, body) = app
        .as_merchant("m-thief")
        .gql_err(
            docs::SET_WHATSAPP_CREDENTIALS,
            json!({ "pn": "5550001", "token": "t" }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "accessToken");
    let (code, _) = app
        .as_merchant("m-thief")
        .gql_err(
            docs::SET_WHATSAPP_CREDENTIALS,
            json!({ "pn": "5550001", "token": "merchant-token-other" }),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    // Nor claim a number nobody has registered yet without a token Meta accepts for it.
    let (code, body) = app
        .as_merchant("m-thief")
        .gql_err(
            docs::SET_WHATSAPP_CREDENTIALS,
            json!({ "pn": "5550002", "token": "stolen-or-made-up" }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "accessToken");
    assert!(
        entity::whatsapp_account::Entity::find_by_id("m-thief".to_owned())
            .one(&app.server.state.db)
            .await
            .unwrap()
            .is_none(),
        "nothing stored"
    );
    let m = send(
        &app,
        &own,
        json!({ "to": CUSTOMER, "text": "from my own number" }),
    )
    .await;
    message_in(&app, m["id"].as_str().unwrap(), "SENT").await;
    let seen = cloud.seen();
    assert_eq!(seen[0].path, "/v23.0/5550001/messages");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer merchant-token-xyz")
    );
}

/// When the Cloud API does not answer, credentials cannot be checked: UNAVAILABLE, nothing
/// stored, and the same request may be sent again.
#[tokio::test]
async fn credentials_are_not_stored_unchecked() {
    use sea_orm::EntityTrait;
    // A loopback port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.whatsapp.api_base = format!("http://{closed}");
    })
    .await;
    let (code, body) = app
        .as_merchant("m-own")
        .gql_err(
            docs::SET_WHATSAPP_CREDENTIALS,
            json!({ "pn": "5550003", "token": "merchant-token-xyz" }),
        )
        .await;
    assert_eq!(code, "UNAVAILABLE", "{body}");
    assert!(
        entity::whatsapp_account::Entity::find_by_id("m-own".to_owned())
            .one(&app.server.state.db)
            .await
            .unwrap()
            .is_none()
    );
}

/// GET handshake: the challenge comes back only with the right verify token.
#[tokio::test]
async fn the_verification_handshake() {
    let app = app_with(Db::Sqlite, None).await;
    let get = |q: &'static str| {
        let url = app.url(&format!("/webhooks/whatsapp?{q}"));
        let client = app.client.clone();
        async move {
            let res = client.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(
        get("hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444").await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(
        get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1")
            .await
            .0,
        403
    );
    assert_eq!(
        get("hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1")
            .await
            .0,
        403
    );
}

/// A bad or missing signature is 401 and changes nothing; a good one is processed once, however
/// often Meta redelivers it. Every message type becomes `message_received`.
async fn inbound_is_signed_and_processed_once(db: Db) {
    let app = app_with(db, None).await;
    let body = webhook(
        PHONE_NUMBER_ID,
        json!([
            text_message("wamid.IN1", "I'd like 2 loaves"),
            { "from": CUSTOMER, "id": "wamid.IN2", "timestamp": "1732600001", "type": "interactive",
              "interactive": { "type": "button_reply", "button_reply": { "id": "collect", "title": "Collect" } } },
            { "from": CUSTOMER, "id": "wamid.IN3", "timestamp": "1732600002", "type": "interactive",
              "interactive": { "type": "list_reply", "list_reply": { "id": "bread", "title": "Bread", "description": "x" } } },
            { "from": CUSTOMER, "id": "wamid.IN4", "timestamp": "1732600003", "type": "image",
              "image": { "id": "MEDIA-9", "mime_type": "image/jpeg", "sha256": "abc", "caption": "this one" } },
            { "from": CUSTOMER, "id": "wamid.IN5", "timestamp": "1732600004", "type": "location",
              "location": { "latitude": -17.8, "longitude": 31.0 } },
        ]),
        json!([]),
    );
    assert_eq!(post_webhook(&app, &body, None).await.0, 401);
    assert_eq!(
        post_webhook(&app, &body, Some("not-the-secret")).await.0,
        401
    );
    let inbound = || async {
        app.gql_ok(
            Some(&app.admin),
            docs::MESSAGES,
            json!({ "m": "m-wa", "d": "INBOUND" }),
        )
        .await["messages"]["totalCount"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(inbound().await, 0, "a refused webhook stores nothing");
    assert!(events_of(&app, "m-wa", "MESSAGE_RECEIVED").await.is_empty());

    let (status, res) = post_webhook(&app, &body, Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    let (status, res) = post_webhook(&app, &body, Some(APP_SECRET)).await;
    assert_eq!(status, 200);
    assert_eq!(res["summary"]["duplicates"], 5, "{res:#}");
    assert_eq!(inbound().await, 5);
    // Messages that cannot be stored are acknowledged as invalid, not passed off as duplicates.
    let bad = webhook(
        PHONE_NUMBER_ID,
        json!([
            { "from": "abc", "id": "wamid.BAD1", "type": "text", "text": { "body": "x" } },
            { "from": CUSTOMER, "type": "text", "text": { "body": "no id" } },
            { "from": CUSTOMER, "id": "", "type": "text", "text": { "body": "empty id" } },
            { "from": CUSTOMER, "id": "   ", "type": "text", "text": { "body": "blank id" } },
            { "from": CUSTOMER, "id": "w".repeat(300), "type": "text", "text": { "body": "long id" } },
            text_message("wamid.IN1", "again"),
        ]),
        json!([]),
    );
    let (status, res) = post_webhook(&app, &bad, Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    assert_eq!(
        (
            &res["summary"]["invalid"],
            &res["summary"]["duplicates"],
            &res["summary"]["received"]
        ),
        (&json!(5), &json!(1), &json!(0)),
        "{res:#}"
    );
    assert_eq!(inbound().await, 5);
    let mut got = events_of(&app, "m-wa", "MESSAGE_RECEIVED").await;
    assert_eq!(got.len(), 5, "processed once");
    got.reverse();
    let p: Vec<&Value> = got.iter().map(|e| &e["payload"]).collect();
    assert_eq!(p[0]["messageType"], "text");
    assert_eq!(p[0]["text"], "I'd like 2 loaves");
    assert_eq!(p[0]["from"], CUSTOMER);
    assert_eq!(p[0]["providerMessageId"], "wamid.IN1");
    assert_eq!(
        (&p[1]["messageType"], &p[1]["replyId"]),
        (&json!("button"), &json!("collect"))
    );
    assert_eq!(
        (&p[2]["messageType"], &p[2]["text"]),
        (&json!("list_reply"), &json!("Bread"))
    );
    assert_eq!(
        (&p[3]["messageType"], &p[3]["mediaId"]),
        (&json!("image"), &json!("MEDIA-9"))
    );
    assert_eq!(p[4]["messageType"], "location");
    assert_eq!(
        p[4]["raw"]["location"]["latitude"], -17.8,
        "other types are kept raw"
    );
    // A NUL, which PostgreSQL cannot store in text, fails nothing: it is kept as U+FFFD, and
    // the batch's other messages and statuses are processed with it.
    let nul = webhook(
        PHONE_NUMBER_ID,
        json!([
            { "from": CUSTOMER, "id": "wamid.NUL\u{0}1", "timestamp": "1732600005",
              "type": "te\u{0}xt", "text": { "body": "a\u{0}b" } },
            text_message("wamid.IN6", "fine"),
            // Other control characters in what a customer typed are kept as U+FFFD too; in an
            // id they make the message invalid (acknowledged, not stored).
            text_message("wamid.IN7", "bell\u{7} esc\u{1b} del\u{7f}\nline"),
            text_message("wamid.K\u{7}", "bad id"),
        ]),
        json!([{ "id": "wamid.\u{0}", "status": "delivered", "timestamp": "1732600006" }]),
    );
    let (status, res) = post_webhook(&app, &nul, Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    assert_eq!(
        (&res["summary"]["received"], &res["summary"]["invalid"]),
        (&json!(3), &json!(1)),
        "{res:#}"
    );
    assert_eq!(inbound().await, 8);
    let got = events_of(&app, "m-wa", "MESSAGE_RECEIVED").await;
    assert_eq!(
        got[0]["payload"]["text"], "bell\u{FFFD} esc\u{FFFD} del\u{FFFD}\nline",
        "{got:#?}"
    );
    let got = &got[1..];
    let scrubbed = &got[1]["payload"];
    assert_eq!(
        scrubbed["providerMessageId"], "wamid.NUL\u{FFFD}1",
        "{got:#?}"
    );
    assert_eq!(scrubbed["messageType"], "te\u{FFFD}xt", "{got:#?}");
    assert_eq!(scrubbed["raw"]["text"]["body"], "a\u{FFFD}b", "{got:#?}");
    assert_eq!(got[0]["payload"]["text"], "fine", "{got:#?}");

    // A number nobody owns is skipped, not an error (Meta would retry forever).
    let (status, res) = post_webhook(
        &app,
        &webhook("999", json!([text_message("wamid.X", "?")]), json!([])),
        Some(APP_SECRET),
    )
    .await;
    assert_eq!((status, &res["summary"]["skipped"]), (200, &json!(1)));
    // Not JSON, but signed: VALIDATION, nothing stored.
    let raw = b"not json".to_vec();
    let res = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign(APP_SECRET, &raw))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
}

/// Status updates land on the outbound message once each, and move it forward only.
async fn statuses_follow_the_outbound_message(db: Db) {
    let cloud = CloudApi::start().await;
    let app = app_with(db, Some(&cloud)).await;
    let wa = app.merchant("m-wa");
    let m = send(&app, &wa, json!({ "to": CUSTOMER, "text": "status me" })).await;
    let id = m["id"].as_str().unwrap().to_owned();
    let sent = message_in(&app, &id, "SENT").await;
    let wamid = sent["providerMessageId"].as_str().unwrap().to_owned();
    let status = |s: &str, ts: &str| json!({ "id": wamid, "status": s, "timestamp": ts, "recipient_id": CUSTOMER });
    for batch in [
        json!([status("delivered", "1732600010")]),
        json!([
            status("delivered", "1732600010"),
            status("read", "1732600020")
        ]),
        json!([status("sent", "1732600005")]),
    ] {
        let (code, res) = post_webhook(
            &app,
            &webhook(PHONE_NUMBER_ID, json!([]), batch),
            Some(APP_SECRET),
        )
        .await;
        assert_eq!(code, 200, "{res:#}");
    }
    let m = message(&app, &id).await;
    assert_eq!(
        m["status"], "READ",
        "a late `sent` does not move it back: {m:#}"
    );
    let history: Vec<String> = m["statusHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        history,
        ["QUEUED", "SENT", "DELIVERED", "READ", "SENT"],
        "{m:#}"
    );

    // A failure after sending records Meta's reason.
    let f = send(&app, &wa, json!({ "to": CUSTOMER, "text": "will bounce" })).await;
    let f_id = f["id"].as_str().unwrap().to_owned();
    let f_wamid = message_in(&app, &f_id, "SENT").await["providerMessageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = json!([{ "id": f_wamid, "status": "failed", "timestamp": "1732600030", "recipient_id": CUSTOMER,
        "errors": [{ "code": 131047, "title": "Re-engagement message", "error_data": { "details": "24 hours passed" } }] }]);
    post_webhook(
        &app,
        &webhook(PHONE_NUMBER_ID, json!([]), failed),
        Some(APP_SECRET),
    )
    .await;
    let m = message(&app, &f_id).await;
    assert_eq!(m["status"], "FAILED");
    assert_eq!(m["errorCode"], 131047);
}

both_dbs!(
    templates_go_out_as_exact_cloud_api_json,
    bad_messages_are_refused_before_queueing,
    provider_errors_are_retried_or_final,
    the_recording_transport_fills_the_outbox,
    inbound_is_signed_and_processed_once,
    statuses_follow_the_outbound_message,
);

/// Signed bodies that are not quite what Meta documents: a lone surrogate escape in one text
/// costs that character (U+FFFD), not the batch; a body that is not an object, or whose `entry`
/// is not an array, is VALIDATION; a change whose `phone_number_id` is not a string is counted
/// invalid, not dropped unseen.
#[tokio::test]
async fn odd_signed_bodies_get_clear_answers() {
    let app = app_with(Db::Sqlite, None).await;
    let body = webhook(
        PHONE_NUMBER_ID,
        json!([
            text_message("wamid.LS1", "hi SURROGATE x"),
            text_message("wamid.LS2", "fine"),
        ]),
        json!([]),
    );
    let raw = serde_json::to_string(&body)
        .unwrap()
        .replace("SURROGATE", "\\ud83d");
    let (status, res) = post_raw_webhook(&app, raw.into_bytes(), Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    assert_eq!(res["summary"]["received"], 2, "{res:#}");
    let texts: Vec<Value> = events_of(&app, "m-wa", "MESSAGE_RECEIVED")
        .await
        .iter()
        .map(|e| e["payload"]["text"].clone())
        .collect();
    assert!(texts.contains(&json!("hi \u{FFFD} x")), "{texts:?}");
    assert!(texts.contains(&json!("fine")), "{texts:?}");

    for (raw, field) in [
        (&b"[]"[..], "body"),
        (b"\"text\"", "body"),
        (
            br#"{"object":"whatsapp_business_account","entry":{}}"#,
            "entry",
        ),
    ] {
        let (status, res) = post_raw_webhook(&app, raw.to_vec(), Some(APP_SECRET)).await;
        assert_eq!(status, 400, "{res:#}");
        assert_eq!(
            (&res["code"], &res["field"]),
            (&json!("VALIDATION"), &json!(field)),
            "{res:#}"
        );
    }

    // A value serde_json reads but cannot hold (a number past f64, nesting past 128 levels)
    // costs its message, not the batch.
    let odd = webhook(
        PHONE_NUMBER_ID,
        json!([
            text_message("wamid.OK1", "kept"),
            { "from": CUSTOMER, "id": "wamid.HUGE", "timestamp": "HUGE", "type": "text", "text": { "body": "x" } },
            { "from": CUSTOMER, "id": "wamid.DEEP", "type": "text", "text": { "body": "y" }, "extra": "DEEP" },
        ]),
        json!([{ "id": "wamid.OK1", "status": "HUGE", "timestamp": "1732600010" }]),
    );
    let raw = serde_json::to_string(&odd)
        .unwrap()
        .replace("\"HUGE\"", "1e400")
        .replace(
            "\"DEEP\"",
            &format!("{}{}", "[".repeat(200), "]".repeat(200)),
        );
    assert!(
        serde_json::from_str::<Value>(&raw).is_err(),
        "serde_json cannot hold it"
    );
    let (status, res) = post_raw_webhook(&app, raw.into_bytes(), Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    assert_eq!(
        (&res["summary"]["received"], &res["summary"]["invalid"]),
        (&json!(1), &json!(2)),
        "{res:#}"
    );
    let texts: Vec<Value> = events_of(&app, "m-wa", "MESSAGE_RECEIVED")
        .await
        .iter()
        .map(|e| e["payload"]["text"].clone())
        .collect();
    assert!(texts.contains(&json!("kept")), "{texts:?}");

    let mut numeric = webhook(
        PHONE_NUMBER_ID,
        json!([text_message("wamid.N1", "x")]),
        json!([]),
    );
    numeric["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = json!(1065);
    let (status, res) = post_webhook(&app, &numeric, Some(APP_SECRET)).await;
    assert_eq!(status, 200, "{res:#}");
    assert_eq!(
        (&res["summary"]["invalid"], &res["summary"]["received"]),
        (&json!(1), &json!(0)),
        "{res:#}"
    );
}

/// Meta redelivers a batch while the first delivery is still being processed, or splits one in
/// two. On PostgreSQL the batches' transactions overlap: one holds a message row the other
/// inserts. Each transaction records its events only after its rows, so neither waits on a row
/// while holding the event lock the other needs (migration 000011): no deadlock, every
/// delivery answers 200, and each message is stored once with one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_deliveries_of_a_batch_never_deadlock() {
    let app = app_with(Db::Postgres, None).await;
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        let (a, b) = (format!("wamid.R{round}A"), format!("wamid.R{round}B"));
        let both = webhook(
            PHONE_NUMBER_ID,
            json!([text_message(&a, "a"), text_message(&b, "b")]),
            json!([]),
        );
        let second = webhook(PHONE_NUMBER_ID, json!([text_message(&b, "b")]), json!([]));
        let (one, two) = tokio::join!(
            post_webhook(&app, &both, Some(APP_SECRET)),
            post_webhook(&app, &second, Some(APP_SECRET)),
        );
        assert_eq!(one.0, 200, "round {round}: {:#}", one.1);
        assert_eq!(two.0, 200, "round {round}: {:#}", two.1);
    }
    let received = app
        .gql_ok(
            Some(&app.admin),
            "{ recentEvents(merchantId: \"m-wa\", types: [MESSAGE_RECEIVED], first: 1) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        received["recentEvents"]["totalCount"],
        2 * ROUNDS,
        "one event per message"
    );
}

/// The REST surface is untouched by the webhook route: an unknown method is 405, not a 500.
#[tokio::test]
async fn the_webhook_route_only_takes_get_and_post() {
    let app = app_with(Db::Sqlite, None).await;
    let (status, _) = app
        .rest(Method::PUT, "/webhooks/whatsapp", None, None)
        .await;
    assert_eq!(status.as_u16(), 405);
}

/// The same retry rules with the queue on Redis: the Retry-After continuation is a delayed job
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_are_retried_on_the_redis_queue() {
    let cloud = CloudApi::start().await;
    let (base, redis) = (cloud.base(), crate::common::redis_url());
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_with(Db::Postgres, move |c| {
        c.redis_url = Some(redis);
        c.redis_prefix = prefix;
        c.whatsapp.api_base = base;
        c.whatsapp.token = Some(TOKEN.into());
        c.whatsapp.phone_number_id = Some(PHONE_NUMBER_ID.into());
        c.whatsapp.retry_base = Duration::from_millis(50);
        // Webhook endpoints on a local receiver (the ten-types test).
        c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert_eq!(app.server.state.queue.backend().kind(), "redis");
    cloud.script([
        Reply::Error {
            status: 500,
            code: 131000,
            retry_after: None,
        },
        Reply::Error {
            status: 429,
            code: 130429,
            retry_after: Some("1"),
        },
    ]);
    let m = send(
        &app,
        &app.merchant("m-shop"),
        json!({ "to": CUSTOMER, "text": "via redis" }),
    )
    .await;
    let done = message_in(&app, m["id"].as_str().unwrap(), "SENT").await;
    assert_eq!(done["attempts"], 3, "{done:#}");
    let seen = cloud.seen();
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(950));
}
