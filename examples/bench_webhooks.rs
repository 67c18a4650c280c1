//! Webhook benchmark: from `Events::emit` to the signed POST arriving at a local receiver, at a
//! steady rate spread over endpoints (one endpoint per merchant, events round-robin).
//!
//!     cargo run --release --example bench_webhooks -- sqlite 1000 10 10
//!     cargo run --release --example bench_webhooks -- postgres 1000 10 10 redis
//!
//! Arguments: database (`sqlite`, or `postgres`: a scratch database created for the run beside
//! the one TEST_POSTGRES_URL / DATABASE_URL names, and dropped after), events per second,
//! seconds, endpoints, and `redis` to put the queue and bus on Redis (REDIS_URL or the local
//! default). The app runs in this process with its workers (webhook_delivery concurrency from
//! QUEUE_CONCURRENCY, default 32 here); the receiver verifies every signature.
//! Prints one JSON line: p50/p99/max latency in ms, delivered and missing counts, peak RSS.
//! The run's scratch database and Redis keys are deleted at the end.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode};
use mimalloc::MiMalloc;
use serde_json::json;
use smartbot::{Config, auth::MerchantId, events::EventType};

// The app runs in this process, so it gets the `smartbot` binary's allocator: with glibc's,
// malloc and free were a seventh of this process's CPU at 1,000 events/s.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

struct Sink {
    secrets: Vec<String>,
    started: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<f64>>,
    bad: std::sync::atomic::AtomicUsize,
}

async fn receive(State(s): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    if smartbot::webhooks::verify(&headers, &body, &s.secrets, None).is_err() {
        s.bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = v["payload"]["orderId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(t0) = s.started.lock().unwrap().get(&key) {
        s.latencies
            .lock()
            .unwrap()
            .push((now - *t0).as_secs_f64() * 1000.0);
    }
    StatusCode::OK
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Where a delivery's time went, from the SQL queue's own timestamps (milliseconds): event id
/// (UUIDv7, taken at emit) to its job's insert, insert to lease, lease to completion. The lease
/// is taken by the worker's fetch; a prefetched job may wait for a free slot after it.
async fn stages(db: &sea_orm::DatabaseConnection) -> serde_json::Value {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, created_at, started_at, finished_at FROM jobs \
             WHERE queue = 'webhook_delivery' AND state = 'completed'",
        ))
        .await
        .expect("the jobs");
    let (mut dispatch, mut pickup, mut run) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let id: String = row.try_get("", "id").unwrap();
        let created: i64 = row.try_get("", "created_at").unwrap();
        let started: Option<i64> = row.try_get("", "started_at").unwrap();
        let finished: Option<i64> = row.try_get("", "finished_at").unwrap();
        // `{webhook}:{event}:{attempt}`
        let event = id
            .split(':')
            .nth(1)
            .and_then(|e| uuid::Uuid::parse_str(e).ok())
            .and_then(|e| e.get_timestamp())
            .map(|t| {
                let (s, n) = t.to_unix();
                s as i64 * 1000 + i64::from(n / 1_000_000)
            });
        if let Some(event) = event {
            dispatch.push((created - event) as f64);
        }
        if let (Some(started), Some(finished)) = (started, finished) {
            pickup.push((started - created) as f64);
            run.push((finished - started) as f64);
        }
    }
    let summary = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        json!({ "p50": percentile(&v, 0.5), "p99": percentile(&v, 0.99) })
    };
    json!({
        "stages_ms": {
            "event_to_enqueue": summary(dispatch),
            "enqueue_to_lease": summary(pickup),
            "lease_to_complete": summary(run),
        }
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    // The app with its workers in one process is `smartbot serve`'s shape: its runtime too.
    let runtime = smartbot::queue::worker::serve_runtime().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let db = args
        .first()
        .map(String::as_str)
        .unwrap_or("sqlite")
        .to_owned();
    let rate: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let endpoints: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let redis = args.get(4).is_some_and(|a| a == "redis");

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.bind_addr = [127, 0, 0, 1].into();
    config.port = 0;
    config.rate_limit = None;
    config.seed_templates = false;
    config.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
    config.database_max_connections = 20;
    let concurrency = std::env::var("QUEUE_CONCURRENCY")
        .ok()
        .map(|v| smartbot::config::parse_concurrency("QUEUE_CONCURRENCY", &v).unwrap())
        .unwrap_or_else(|| {
            smartbot::config::parse_concurrency("QUEUE_CONCURRENCY", "webhook_delivery=32").unwrap()
        });
    config.queue_concurrency = concurrency;
    let scratch = if db == "postgres" {
        let scratch = common::ScratchDb::create("bench_webhooks").await;
        config.database_url = scratch.url.clone();
        Some(scratch)
    } else {
        None
    };
    if redis {
        config.redis_url =
            Some(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
        config.redis_prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    }
    let redis_keys = config
        .redis_url
        .clone()
        .map(|url| (url, config.redis_prefix.clone()));
    let server = smartbot::spawn(config).await.expect("server");
    let state = server.state.clone();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut secrets = Vec::new();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let merchants: Vec<MerchantId> = (0..endpoints)
        .map(|i| MerchantId::parse("merchantId", &format!("bench-{run}-{i}")).unwrap())
        .collect();
    for m in &merchants {
        let ctx = smartbot::auth::RequestContext::new(smartbot::auth::Actor::Merchant {
            sub: "bench".into(),
            merchant_id: m.as_str().into(),
        });
        let (_, secret) = smartbot::webhooks::service::register(
            &state,
            &ctx,
            smartbot::webhooks::service::NewWebhook {
                url: format!("http://{addr}/hook"),
                ..Default::default()
            },
        )
        .await
        .expect("register");
        secrets.push(secret);
    }
    let sink = Arc::new(Sink {
        secrets,
        started: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        bad: Default::default(),
    });
    let app = Router::new().fallback(receive).with_state(sink.clone());
    // As production servers do (nginx's tcp_nodelay is on by default): no Nagle delay on replies.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let total = rate * secs;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let emit_ms = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    for n in 0..total {
        tokio::time::sleep_until(start + gap * n as u32).await;
        let key = format!("b-{n}");
        sink.started
            .lock()
            .unwrap()
            .insert(key.clone(), Instant::now());
        let events = state.events.clone();
        let m = merchants[n as usize % endpoints].clone();
        let emit_ms = emit_ms.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            events
                .emit(
                    EventType::OrderCreated,
                    &m,
                    json!({ "orderId": key, "customerPhone": "263781564004", "totalAmount": 100, "currency": "USD" }),
                )
                .await
                .expect("emit");
            emit_ms
                .lock()
                .unwrap()
                .push(t0.elapsed().as_secs_f64() * 1000.0);
        });
    }
    while tasks.join_next().await.is_some() {}
    let emit_secs = start.elapsed().as_secs_f64();
    // Wait for the tail (at most 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.latencies.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut l = sink.latencies.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let mut e = emit_ms.lock().unwrap().clone();
    e.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "database": db, "queue": if redis { "redis" } else { "sql" },
            "rate_per_s": rate, "seconds": secs, "endpoints": endpoints,
            "emitted": total, "emit_wall_s": r(emit_secs),
            "delivered": l.len(), "missing": total as usize - l.len().min(total as usize),
            "bad_signatures": sink.bad.load(std::sync::atomic::Ordering::Relaxed),
            "emit_p50_ms": r(percentile(&e, 0.5)), "emit_p99_ms": r(percentile(&e, 0.99)),
            "p50_ms": r(percentile(&l, 0.5)), "p99_ms": r(percentile(&l, 0.99)),
            "max_ms": r(l.last().copied().unwrap_or(f64::NAN)),
            "peak_rss_mb": r(peak_rss_mb()),
        })
    );
    if !redis {
        println!("{}", stages(&state.db).await);
    }
    server.stop().await.ok();
    drop(state);
    if let Some(db) = scratch {
        db.drop().await;
    }
    if let Some((url, prefix)) = redis_keys {
        common::drop_redis_prefix(&url, &prefix).await;
    }
}
