//! Queue soak: pushes many no-op jobs through one worker process with the default retention and
//! samples the process's memory and what the backend holds, to show both stay flat.
//!
//!     cargo run --release --example soak_queue -- redis 1000000
//!     cargo run --release --example soak_queue -- postgres 100000   # TEST_POSTGRES_URL or DATABASE_URL
//!     cargo run --release --example soak_queue -- sqlite 100000
//!
//! The producer keeps at most 20,000 jobs waiting (batches of 1000), so the run measures steady
//! state rather than a backlog. One JSON line per sample (RSS, and the Redis keys under this run's
//! prefix or the `jobs` rows of the queue), then a summary comparing the second half of the run
//! with the first.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use smartbot::queue::{
    JobOptions, JobQueue, QueueBackend, QueueName, Retention,
    worker::{FnHandler, Handlers, WorkerConfig, Workers},
};

const Q: QueueName = QueueName::MessageSending;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What the backend holds for this run: Redis keys under the prefix, or the queue's rows.
enum Held {
    Redis(fred::clients::Client, String),
    Sql(sea_orm::DatabaseConnection),
}

impl Held {
    async fn count(&self) -> u64 {
        match self {
            Held::Redis(client, prefix) => {
                use fred::interfaces::ClientLike;
                let mut cursor = "0".to_owned();
                let mut n = 0u64;
                loop {
                    let (next, keys): (String, Vec<String>) = client
                        .custom(
                            fred::types::CustomCommand::new_static("SCAN", None, false),
                            vec![
                                cursor.clone(),
                                "MATCH".into(),
                                format!("{prefix}*"),
                                "COUNT".into(),
                                "5000".into(),
                            ],
                        )
                        .await
                        .expect("scan");
                    n += keys.len() as u64;
                    if next == "0" {
                        return n;
                    }
                    cursor = next;
                }
            }
            Held::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let row = db
                    .query_one_raw(sea_orm::Statement::from_string(
                        db.get_database_backend(),
                        "SELECT COUNT(*) AS n FROM jobs WHERE queue = 'message_sending'",
                    ))
                    .await
                    .expect("count")
                    .expect("a row");
                row.try_get::<i64>("", "n").expect("n") as u64
            }
        }
    }
}

async fn backend(
    kind: &str,
) -> (
    Arc<dyn QueueBackend>,
    Held,
    Option<tempfile::TempDir>,
    String,
) {
    match kind {
        "redis" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let prefix = format!("soak:{}:", uuid::Uuid::new_v4().simple());
            let q = smartbot::queue::redis::RedisQueue::connect(&url, &prefix)
                .await
                .expect("redis");
            let client = fred::prelude::Builder::from_config(
                fred::prelude::Config::from_url(&url).expect("url"),
            )
            .build()
            .expect("client");
            use fred::interfaces::ClientLike;
            client.init().await.expect("redis");
            (
                Arc::new(q),
                Held::Redis(client, prefix.clone()),
                None,
                prefix,
            )
        }
        "sqlite" | "postgres" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = smartbot::Config::embedded(dir.path());
            if kind == "postgres" {
                config.database_url = std::env::var("DATABASE_URL")
                    .or_else(|_| std::env::var("TEST_POSTGRES_URL"))
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            }
            config.database_max_connections = 20;
            let db = smartbot::db::connect(&config).await.expect("database");
            smartbot::db::migrate(&db).await.expect("migrate");
            {
                use sea_orm::ConnectionTrait;
                db.execute_unprepared("DELETE FROM jobs WHERE queue = 'message_sending'")
                    .await
                    .expect("clear");
            }
            let q = smartbot::queue::sql::SqlQueue::new(db.clone(), Duration::from_millis(250));
            (Arc::new(q), Held::Sql(db), Some(dir), String::new())
        }
        other => panic!("unknown backend {other:?}; use redis, postgres or sqlite"),
    }
}

fn main() {
    let runtime = smartbot::queue::worker::runtime().expect("runtime");
    runtime.block_on(soak());
}

async fn soak() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args
        .first()
        .map(String::as_str)
        .unwrap_or("redis")
        .to_owned();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(if kind == "redis" { 1_000_000 } else { 100_000 });
    let (backend, held, _dir, _prefix) = backend(&kind).await;
    let queue = JobQueue::new(backend.clone());
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |_job| {
            let d = d.clone();
            async move {
                d.fetch_add(1, Ordering::Relaxed);
                Ok(json!(1))
            }
        }),
    );
    let retention = Retention::default();
    let mut config = WorkerConfig {
        queues: vec![Q],
        retention,
        metrics: queue.metrics().clone(),
        ..Default::default()
    };
    config.concurrency.insert(Q, 5);
    let workers = Workers::start(backend.clone(), &handlers, config);

    let t0 = Instant::now();
    let mut samples: Vec<(usize, f64, u64)> = Vec::new();
    let mut next_sample = 0usize;
    let sample_every = (n / 20).max(1000);
    let opts = JobOptions {
        attempts: Some(3),
        ..Default::default()
    };
    let mut sent = 0usize;
    while done.load(Ordering::Relaxed) < n {
        let finished = done.load(Ordering::Relaxed);
        if sent < n && sent - finished < 20_000 {
            let batch: Vec<_> = (sent..(sent + 1000).min(n))
                .map(|i| {
                    (
                        json!({ "i": i, "to": "263781564004", "body": "Hello" }),
                        opts.clone(),
                    )
                })
                .collect();
            sent += batch.len();
            queue
                .enqueue_bulk(Q, "soak", &batch)
                .await
                .expect("enqueue");
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if finished >= next_sample {
            next_sample += sample_every;
            let (rss, keys) = (rss_mb(), held.count().await);
            samples.push((finished, rss, keys));
            println!(
                "{}",
                json!({ "sample": samples.len(), "jobs_done": finished, "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                        "rss_mb": (rss * 10.0).round() / 10.0, "held": keys })
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Let the last completions land and retention trim them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, keys) = (rss_mb(), held.count().await);
    samples.push((n, rss, keys));
    workers.stop().await;
    let half = samples.len() / 2;
    let max = |s: &[(usize, f64, u64)]| {
        (
            s.iter().map(|x| x.1).fold(0.0, f64::max),
            s.iter().map(|x| x.2).max().unwrap_or(0),
        )
    };
    // The first sample is taken before the process has warmed up; compare the rest.
    let (rss_first, held_first) = max(&samples[1.min(half)..half.max(1)]);
    let (rss_second, held_second) = max(&samples[half..]);
    println!(
        "{}",
        json!({
            "soak": kind, "jobs": n, "seconds": secs.round(), "jobs_per_s": (n as f64 / secs).round(),
            "rss_mb_max_first_half": (rss_first * 10.0).round() / 10.0,
            "rss_mb_max_second_half": (rss_second * 10.0).round() / 10.0,
            "held_max_first_half": held_first, "held_max_second_half": held_second,
            "held_at_end": keys,
            "retention": { "completed": retention.completed_count, "failed": retention.failed_count },
        })
    );
    let none = Retention {
        completed_count: 0,
        completed_age: Duration::ZERO,
        failed_count: 0,
        failed_age: Duration::ZERO,
    };
    while backend.clean(Q, none).await.unwrap_or(0) > 0 {}
}
