//! Queue benchmark: enqueue N no-op jobs and drain them with one worker process at concurrency C,
//! like `benches/peers/bench-bullmq.js` and `bench-graphile.js` do for the Node peers; then
//! measure idle pickup latency (enqueue -> handler running, one job at a time).
//!
//!     cargo run --release --example bench_queue -- redis 20000 5
//!     cargo run --release --example bench_queue -- sqlite 20000 5
//!     cargo run --release --example bench_queue -- postgres 20000 5   # TEST_POSTGRES_URL or DATABASE_URL
//!
//! It runs on the same runtime as `smartbot worker` (`queue::worker::runtime`), so the figures
//! are those of the default configuration. Prints one JSON line per measurement: jobs/s end to
//! end, pickup latency p50/p99 under load and when idle, and the peak RSS of the process.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use smartbot::queue::{
    JobOptions, JobQueue, QueueBackend, QueueName,
    worker::{FnHandler, Handlers, WorkerConfig, Workers},
};

const Q: QueueName = QueueName::MessageSending;

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn backend(kind: &str) -> (Arc<dyn QueueBackend>, Option<tempfile::TempDir>) {
    match kind {
        "redis" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
            let q = smartbot::queue::redis::RedisQueue::connect(&url, &prefix)
                .await
                .expect("redis");
            (Arc::new(q), None)
        }
        "sqlite" | "postgres" => {
            let dir = tempfile::tempdir().unwrap();
            let mut config = smartbot::Config::embedded(dir.path());
            if kind == "postgres" {
                config.database_url = std::env::var("DATABASE_URL")
                    .or_else(|_| std::env::var("TEST_POSTGRES_URL"))
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            }
            config.database_max_connections = 20;
            let db = smartbot::db::connect(&config).await.expect("database");
            smartbot::db::migrate(&db).await.expect("migrate");
            if kind == "postgres" {
                use sea_orm::ConnectionTrait;
                db.execute_unprepared("DELETE FROM jobs WHERE queue = 'message_sending'")
                    .await
                    .unwrap();
            }
            (
                Arc::new(smartbot::queue::sql::SqlQueue::new(
                    db,
                    Duration::from_millis(250),
                )),
                Some(dir),
            )
        }
        other => panic!("unknown backend {other:?}; use redis, sqlite or postgres"),
    }
}

fn main() {
    let runtime = smartbot::queue::worker::runtime().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args
        .first()
        .map(String::as_str)
        .unwrap_or("redis")
        .to_owned();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);

    let (backend, _dir) = backend(&kind).await;
    let queue = JobQueue::new(backend.clone());
    let done = Arc::new(AtomicUsize::new(0));
    // The idle benchmark waits on this instead of spinning on `done`: a spinning waiter takes a
    // core from the worker and the database on a small machine (the peers await a promise).
    let ran = Arc::new(tokio::sync::Notify::new());
    let pickups = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n)));
    let (d, p, r) = (done.clone(), pickups.clone(), ran.clone());
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |job: smartbot::queue::JobInfo| {
            let (d, p, r) = (d.clone(), p.clone(), r.clone());
            async move {
                if let Some(started) = job.started_at {
                    p.lock().unwrap().push((started - job.run_at) as f64);
                }
                d.fetch_add(1, Ordering::Relaxed);
                r.notify_one();
                Ok(json!(1))
            }
        }),
    );
    let mut config = WorkerConfig {
        queues: vec![Q],
        idle_wait: Duration::from_millis(500),
        ..Default::default()
    };
    config.concurrency.insert(Q, concurrency);
    // Keep every finished job: the run ends when all of them are counted as completed.
    config.retention.completed_count = n as u64 + 1000;
    let workers = Workers::start(backend.clone(), &handlers, config);

    // Throughput: enqueue in batches of 1000 (as the peer's addBulk does) while the worker drains.
    let opts = JobOptions {
        attempts: Some(3),
        backoff_ms: Some(1000),
        ..Default::default()
    };
    let t0 = Instant::now();
    for start in (0..n).step_by(1000) {
        let batch: Vec<_> = (start..(start + 1000).min(n))
            .map(|i| {
                (
                    json!({ "i": i, "to": "263781564004", "body": "Hello" }),
                    opts.clone(),
                )
            })
            .collect();
        queue.enqueue_bulk(Q, "job", &batch).await.expect("enqueue");
    }
    let enqueue_secs = t0.elapsed().as_secs_f64();

    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The last completions are recorded with the worker's next round trip.
    while backend.counts(Q).await.unwrap().completed < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *pickups.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "throughput", "backend": kind, "jobs": n, "concurrency": concurrency,
            "seconds": (secs * 1000.0).round() / 1000.0, "jobs_per_s": (n as f64 / secs).round(),
            "enqueue_seconds": (enqueue_secs * 1000.0).round() / 1000.0,
            "pickup_ms_p50": percentile(&lat, 0.5), "pickup_ms_p99": percentile(&lat, 0.99),
            "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
        })
    );

    // Idle pickup latency: one job at a time into an idle queue.
    let samples = 200;
    let mut idle = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = done.load(Ordering::Relaxed);
        let t = Instant::now();
        queue
            .enqueue(Q, "idle", &json!({ "i": i }), &opts)
            .await
            .unwrap();
        while done.load(Ordering::Relaxed) == before {
            ran.notified().await;
        }
        idle.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    idle.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "idle_pickup", "backend": kind, "samples": samples,
            "enqueue_to_handler_ms_p50": (percentile(&idle, 0.5) * 100.0).round() / 100.0,
            "enqueue_to_handler_ms_p99": (percentile(&idle, 0.99) * 100.0).round() / 100.0,
            "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
        })
    );
    workers.stop().await;
    // Leave nothing behind: trim every finished job.
    let none = smartbot::queue::Retention {
        completed_count: 0,
        completed_age: Duration::ZERO,
        failed_count: 0,
        failed_age: Duration::ZERO,
    };
    while backend.clean(Q, none).await.unwrap_or(0) > 0 {}
}
