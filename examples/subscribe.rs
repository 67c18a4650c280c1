//! Follows the event stream from Rust, resuming where it left off: the Rust twin of
//! `examples/frontend/src/events.ts`.
//!
//!     cargo run --example subscribe -- --token "$TOKEN"
//!     cargo run --example subscribe -- --token "$TOKEN" --types ORDER_CREATED,ORDER_STATUS_CHANGED
//!     cargo run --example subscribe -- --token "$TOKEN" --after 01930c5e-…   # resume from an id
//!
//! It speaks graphql-transport-ws, sends the token in `connection_init`, and prints one JSON line
//! per event. When the socket drops, the server restarts, or the server cuts this consumer off with
//! LAGGED, it reconnects with `after` set to the last event id it printed, so nothing is missed and
//! nothing repeats. HISTORY_EXPIRED (the resume point is older than the history) restarts live.

use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

const SUBSCRIPTION: &str = "subscription($types: [EventType!], $merchantId: ID, $after: ID) {
  events(types: $types, merchantId: $merchantId, after: $after) {
    id type merchantId occurredAt payload
  }
}";

#[derive(Parser)]
struct Args {
    /// The GraphQL WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:4001/graphql/ws")]
    url: String,
    /// A JWT: the admin token printed at first start, or one from `smartbot token`.
    #[arg(long, env = "SMARTBOT_TOKEN")]
    token: String,
    /// Event types, comma-separated (ORDER_CREATED,…); all when omitted.
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// One merchant (admin and service tokens); a merchant token always sees its own.
    #[arg(long)]
    merchant_id: Option<String>,
    /// Resume after this event id.
    #[arg(long)]
    after: Option<String>,
}

/// Why one connection ended.
enum End {
    /// Resume from the last id (socket closed, LAGGED, server restart).
    Resume(String),
    /// The resume point is gone: continue live without `after`.
    Expired,
    /// Authentication or validation: retrying will not help.
    Fatal(String),
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut after = args.after.clone();
    let mut failures = 0u32;
    loop {
        match follow(&args, &mut after).await {
            End::Fatal(why) => {
                eprintln!("stopped: {why}");
                std::process::exit(1);
            }
            End::Expired => {
                eprintln!("the resume point is older than the history: continuing live");
                after = None;
            }
            End::Resume(why) => {
                failures += 1;
                let wait = Duration::from_millis(250 * 2u64.pow(failures.min(7)));
                eprintln!("{why}; resuming after {after:?} in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One connection: init, subscribe, print until it ends. Updates `after` as events arrive.
async fn follow(args: &Args, after: &mut Option<String>) -> End {
    let mut req = match args.url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return End::Fatal(format!("bad url: {e}")),
    };
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(c) => c,
        Err(e) => return End::Resume(format!("connect failed: {e}")),
    };
    let types = (!args.types.is_empty()).then(|| args.types.clone());
    let frames = [
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", args.token) } }),
        json!({ "type": "subscribe", "id": "events", "payload": {
            "query": SUBSCRIPTION,
            "variables": { "types": types, "merchantId": args.merchant_id, "after": after },
        }}),
    ];
    for f in frames {
        if let Err(e) = ws.send(Message::text(f.to_string())).await {
            return End::Resume(format!("send failed: {e}"));
        }
    }
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                let why = frame.map(|f| format!("{} {}", f.code, f.reason));
                return match why {
                    Some(w) if w.starts_with("4403") || w.starts_with("4401") => End::Fatal(w),
                    w => End::Resume(format!("closed: {}", w.unwrap_or_default())),
                };
            }
            Ok(_) => continue,
            Err(e) => return End::Resume(format!("socket error: {e}")),
        };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        match v["type"].as_str() {
            Some("ping") => {
                let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
            }
            Some("next") if v["payload"]["errors"].is_array() => {
                return classify(&v["payload"]["errors"]);
            }
            Some("next") => {
                let event = &v["payload"]["data"]["events"];
                if let Some(id) = event["id"].as_str() {
                    *after = Some(id.to_owned());
                }
                println!("{event}");
            }
            Some("error") => return classify(&v["payload"]),
            Some("complete") => return End::Resume("the server completed the stream".into()),
            _ => {}
        }
    }
    End::Resume("the socket closed".into())
}

fn classify(errors: &Value) -> End {
    let code = errors[0]["extensions"]["code"].as_str().unwrap_or("");
    let message = errors[0]["message"].as_str().unwrap_or("").to_owned();
    match code {
        "HISTORY_EXPIRED" => End::Expired,
        "LAGGED" | "RATE_LIMITED" | "INTERNAL" => End::Resume(format!("{code}: {message}")),
        _ => End::Fatal(format!("{code}: {message}")),
    }
}
