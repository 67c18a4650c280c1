//! A webhook receiver: verifies Standard Webhooks signatures with `smartbot::webhooks::verify`,
//! refuses stale timestamps (replays), and drops duplicates by `webhook-id`.
//!
//!     WEBHOOK_SECRET=whsec_... cargo run --example webhook_receiver -- 4002
//!
//! Register `http://<this host>:4002/webhooks` with `registerWebhook`. During a secret rotation
//! give both secrets, comma-separated: either one verifies.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};

/// Ids seen recently: a retry of a delivery we already handled is answered 200 and ignored.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const KEEP: usize = 10_000;

    /// True the first time `id` is seen.
    fn first(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

struct Receiver {
    secrets: Vec<String>,
    seen: Mutex<Seen>,
}

async fn webhook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // Default tolerance: 5 minutes either way.
    if let Err(e) = smartbot::webhooks::verify(&headers, &body, &r.secrets, None) {
        eprintln!("refused: {e}");
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !r.seen.lock().unwrap().first(id) {
        println!("duplicate {id} ignored");
        return StatusCode::OK;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(event) => println!(
            "{} {} for {}: {}",
            event["id"], event["type"], event["merchant_id"], event["payload"]
        ),
        Err(_) => return StatusCode::BAD_REQUEST,
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4002);
    let secrets: Vec<String> = std::env::var("WEBHOOK_SECRET")
        .expect("set WEBHOOK_SECRET to the whsec_… secret registerWebhook returned")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let state = Arc::new(Receiver {
        secrets,
        seen: Mutex::new(Seen::default()),
    });
    let app = Router::new()
        .route("/webhooks", post(webhook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind");
    println!("listening on http://0.0.0.0:{port}/webhooks");
    // As production servers do (nginx's tcp_nodelay is on by default): no Nagle delay on replies.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}
