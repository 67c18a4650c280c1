//! The queue's behavioural suite, run against every backend: embedded SQL on SQLite and on
//! PostgreSQL, and Redis. Failure tests use real child processes and real Redis connections.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SetsInterface};
use serde_json::{Value, json};
use smartbot::{
    error::Error,
    queue::{
        JobOptions, JobQueue, JobState, NewJob, Outcome, Priority, QueueBackend, QueueControl,
        QueueName, Retention,
        redis::RedisQueue,
        sql::SqlQueue,
        worker::{FnHandler, Handlers, JobError, WorkerConfig, Workers},
    },
};

use crate::common::{PgDatabase, eventually, redis_url};

const Q: QueueName = QueueName::MessageSending;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Redis,
}

/// A backend with its own database or key prefix; keeps what it needs alive.
pub struct Backend {
    pub queue: Arc<dyn QueueBackend>,
    /// How a child process reaches the same backend: `sql <url>` or `redis <url> <prefix>`.
    pub spec: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl Backend {
    pub async fn new(kind: Kind) -> Self {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
                let queue = sql_queue(&url).await;
                Self {
                    queue,
                    spec: format!("sql {url}"),
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            Kind::Postgres => {
                let pg = PgDatabase::create().await;
                let queue = sql_queue(&pg.url).await;
                Self {
                    queue,
                    spec: format!("sql {}", pg.url),
                    _dir: None,
                    _pg: Some(pg),
                }
            }
            Kind::Redis => {
                let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
                let queue = RedisQueue::connect(&redis_url(), &prefix).await.unwrap_or_else(|e| {
                    panic!("Redis is required for this test but {} is unreachable: {e}. Run ./scripts/test.sh.", redis_url())
                });
                Self {
                    queue: Arc::new(queue),
                    spec: format!("redis {} {prefix}", redis_url()),
                    _dir: None,
                    _pg: None,
                }
            }
        }
    }
}

async fn sql_queue(url: &str) -> Arc<dyn QueueBackend> {
    let mut config = smartbot::Config::embedded(std::env::temp_dir());
    config.database_url = url.to_owned();
    let db = smartbot::db::connect(&config).await.expect("database");
    smartbot::db::migrate(&db).await.expect("migrate");
    Arc::new(SqlQueue::new(db, Duration::from_millis(50)))
}

async fn backend_from_spec(spec: &str) -> Arc<dyn QueueBackend> {
    let parts: Vec<&str> = spec.split(' ').collect();
    match parts.as_slice() {
        ["sql", url] => sql_queue(url).await,
        ["redis", url, prefix] => Arc::new(RedisQueue::connect(url, prefix).await.expect("redis")),
        _ => panic!("bad backend spec {spec:?}"),
    }
}

macro_rules! all_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use super::Kind;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() { super::$name(Kind::Sqlite).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { super::$name(Kind::Postgres).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() { super::$name(Kind::Redis).await }
            }
        )+
    };
}

fn job(payload: Value, opts: JobOptions) -> NewJob {
    NewJob::new("test", &payload, &opts).unwrap()
}

const LEASE: Duration = Duration::from_secs(30);

async fn lifecycle_and_idempotent_ids(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    let opts = JobOptions {
        job_id: Some("order-42".into()),
        ..Default::default()
    };
    assert!(
        q.enqueue(Q, job(json!({"n": 1}), opts.clone()))
            .await
            .unwrap()
    );
    assert!(
        !q.enqueue(Q, job(json!({"n": 2}), opts)).await.unwrap(),
        "same id twice is one job"
    );
    let c = q.counts(Q).await.unwrap();
    assert_eq!((c.waiting, c.active, c.completed), (1, 0, 0));

    let leased = q.fetch(Q, 5, LEASE).await.unwrap();
    assert_eq!(leased.len(), 1);
    let l = &leased[0];
    assert_eq!(l.job.id, "order-42");
    assert_eq!(l.job.payload, json!({"n": 1}), "the first payload wins");
    assert_eq!(l.job.attempts_made, 1);
    assert_eq!(l.job.state, JobState::Active);
    assert!(
        q.fetch(Q, 5, LEASE).await.unwrap().is_empty(),
        "a leased job is not handed out twice"
    );
    assert_eq!(q.counts(Q).await.unwrap().active, 1);

    assert!(
        !q.finish(
            Q,
            "order-42",
            "wrong-token",
            1,
            Outcome::Completed(json!(1))
        )
        .await
        .unwrap()
    );
    assert!(q.extend(Q, "order-42", &l.token, LEASE).await.unwrap());
    assert!(
        q.finish(
            Q,
            "order-42",
            &l.token,
            1,
            Outcome::Completed(json!({"ok": true}))
        )
        .await
        .unwrap()
    );
    let info = q.get(Q, "order-42").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result, Some(json!({"ok": true})));
    assert!(info.finished_at.is_some());
    let c = q.counts(Q).await.unwrap();
    assert_eq!((c.waiting, c.active, c.completed), (0, 0, 1));
    assert!(q.get(Q, "nope").await.unwrap().is_none());
    // Same id after completion is still the same job (within retention).
    assert!(
        !q.enqueue(
            Q,
            job(
                json!({}),
                JobOptions {
                    job_id: Some("order-42".into()),
                    ..Default::default()
                }
            )
        )
        .await
        .unwrap()
    );
}

async fn priority_and_delay(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    for (id, p) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
    ] {
        let opts = JobOptions {
            job_id: Some(id.into()),
            priority: Some(p),
            ..Default::default()
        };
        q.enqueue(Q, job(json!({}), opts)).await.unwrap();
    }
    // The delay is long enough that a stalled machine still fetches before it is due.
    let delayed = JobOptions {
        job_id: Some("later".into()),
        delay_ms: Some(3000),
        ..Default::default()
    };
    let enqueued_at = tokio::time::Instant::now();
    q.enqueue(Q, job(json!({}), delayed)).await.unwrap();
    assert_eq!(q.counts(Q).await.unwrap().delayed, 1);
    assert_eq!(
        q.get(Q, "later").await.unwrap().unwrap().state,
        JobState::Delayed
    );

    let ids: Vec<String> = q
        .fetch(Q, 10, LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.job.id)
        .collect();
    assert_eq!(ids, vec!["high", "normal", "low"]);
    let later = eventually("the delayed job to become due", || async move {
        let l = q.fetch(Q, 10, LEASE).await.unwrap();
        if l.is_empty() {
            Err("nothing ready".to_owned())
        } else {
            Ok(l)
        }
    })
    .await;
    assert!(
        enqueued_at.elapsed() >= Duration::from_millis(3000),
        "the delayed job ran early"
    );
    let ids: Vec<String> = later.into_iter().map(|l| l.job.id).collect();
    assert_eq!(ids, vec!["later"], "the delayed job runs once due");
}

async fn failures_backoff_and_retry(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    let opts = JobOptions {
        job_id: Some("poison".into()),
        attempts: Some(2),
        ..Default::default()
    };
    q.enqueue(Q, job(json!({}), opts)).await.unwrap();
    let l = q.fetch(Q, 1, LEASE).await.unwrap().remove(0);
    let retry = Some(Duration::from_millis(2000));
    assert!(
        q.finish(
            Q,
            "poison",
            &l.token,
            1,
            Outcome::Failed {
                error: "boom 1".into(),
                retry_in: retry
            }
        )
        .await
        .unwrap()
    );
    let info = q.get(Q, "poison").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Delayed);
    assert_eq!(info.last_error.as_deref(), Some("boom 1"));
    assert!(
        q.fetch(Q, 1, LEASE).await.unwrap().is_empty(),
        "backoff holds the job back"
    );
    let l = fetch_one_ready(q).await;
    assert_eq!(l.job.attempts_made, 2);
    assert!(
        q.finish(
            Q,
            "poison",
            &l.token,
            2,
            Outcome::Failed {
                error: "boom 2".into(),
                retry_in: None
            }
        )
        .await
        .unwrap()
    );
    let info = q.get(Q, "poison").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Failed);
    let errors: Vec<(u32, &str)> = info
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(errors, vec![(1, "boom 1"), (2, "boom 2")]);
    let failed = q.list_failed(Q, None, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(q.counts(Q).await.unwrap().failed, 1);

    // retryJob brings it back with fresh attempts; the history stays.
    q.retry(Q, "poison").await.unwrap();
    let info = q.get(Q, "poison").await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.attempts_made, info.errors.len()),
        (JobState::Waiting, 0, 2)
    );
    assert!(matches!(
        q.retry(Q, "poison").await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        q.retry(Q, "missing").await,
        Err(Error::NotFound(_))
    ));
}

async fn stalled_leases_are_reclaimed_and_fenced(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    q.enqueue(
        Q,
        job(
            json!({}),
            JobOptions {
                job_id: Some("s".into()),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    // A lease long enough that a stalled machine still checks it while it is live; then wait
    // for the recovery itself rather than for a clock.
    let old = q
        .fetch(Q, 1, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        q.recover_stalled(Q).await.unwrap(),
        0,
        "a live lease is left alone"
    );
    let start = tokio::time::Instant::now();
    let recovered = eventually("the expired lease to be reclaimed", || async move {
        match q.recover_stalled(Q).await.unwrap() {
            0 => Err("lease still live".to_owned()),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(recovered, 1);
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "reclaimed before the lease ran out"
    );
    let info = q.get(Q, "s").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Waiting);
    assert!(
        info.errors[0].error.contains("stalled"),
        "{:?}",
        info.errors
    );
    let new = q.fetch(Q, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(
        new.job.attempts_made, 2,
        "the lost run counts as an attempt"
    );
    assert!(
        !q.finish(Q, "s", &old.token, 1, Outcome::Completed(json!(null)))
            .await
            .unwrap(),
        "the old worker is fenced off"
    );
    assert!(!q.extend(Q, "s", &old.token, LEASE).await.unwrap());
    assert!(
        q.finish(Q, "s", &new.token, 2, Outcome::Completed(json!(null)))
            .await
            .unwrap()
    );

    // Out of attempts: a stalled job ends in failed.
    q.enqueue(
        Q,
        job(
            json!({}),
            JobOptions {
                job_id: Some("once".into()),
                attempts: Some(1),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    q.fetch(Q, 1, Duration::from_millis(100)).await.unwrap();
    wait_until(
        "the stalled job to end in failed",
        Duration::from_secs(30),
        || {
            let q = q.clone();
            async move {
                q.recover_stalled(Q).await.unwrap();
                q.get(Q, "once").await.unwrap().unwrap().state == JobState::Failed
            }
        },
    )
    .await;
}

async fn pause_remove_and_retention(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    for i in 0..5 {
        q.enqueue(
            Q,
            job(
                json!({}),
                JobOptions {
                    job_id: Some(format!("j{i}")),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    }
    q.set_paused(Q, true).await.unwrap();
    assert!(q.counts(Q).await.unwrap().paused);
    assert!(
        q.fetch(Q, 5, LEASE).await.unwrap().is_empty(),
        "a paused queue hands out nothing"
    );
    q.set_paused(Q, false).await.unwrap();
    assert!(q.remove(Q, "j4").await.unwrap());
    assert!(!q.remove(Q, "j4").await.unwrap());
    let leased = q.fetch(Q, 5, LEASE).await.unwrap();
    assert_eq!(leased.len(), 4);
    assert!(
        matches!(q.remove(Q, "j0").await, Err(Error::Conflict(_))),
        "an active job cannot be removed"
    );
    for l in &leased {
        q.finish(Q, &l.job.id, &l.token, 1, Outcome::Completed(json!(null)))
            .await
            .unwrap();
    }
    let keep_two = Retention {
        completed_count: 2,
        ..Default::default()
    };
    assert_eq!(q.clean(Q, keep_two).await.unwrap(), 2);
    assert_eq!(q.counts(Q).await.unwrap().completed, 2);
    let by_age = Retention {
        completed_age: Duration::ZERO,
        ..Default::default()
    };
    // "Older than zero" holds once the clock has moved past the finish time.
    let removed = std::cell::Cell::new(0);
    eventually("finished jobs to age past a zero retention", || {
        let removed = &removed;
        async move {
            removed.set(removed.get() + q.clean(Q, by_age).await.unwrap());
            match removed.get() {
                2 => Ok(()),
                n => Err(format!("{n} removed")),
            }
        }
    })
    .await;
    assert_eq!(q.counts(Q).await.unwrap().completed, 0);
}

async fn bad_input_enqueues_nothing(kind: Kind) {
    let b = Backend::new(kind).await;
    let jq = JobQueue::new(b.queue.clone());
    let err = "bogus".parse::<QueueName>().unwrap_err();
    assert_eq!((err.code(), err.field()), ("VALIDATION", Some("queue")));
    let err = jq
        .enqueue(
            Q,
            "x",
            &json!({}),
            &JobOptions {
                attempts: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("attempts"));
    let err = jq
        .enqueue(
            Q,
            "x",
            &json!({}),
            &JobOptions {
                delay_ms: Some(1),
                run_at: Some(chrono::Utc::now()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("delayMs"));
    // Too far ahead: the error names the option that was given.
    for (delay_ms, run_at, field) in [
        (Some(400 * 24 * 3600 * 1000), None, "delayMs"),
        (
            None,
            Some(chrono::Utc::now() + chrono::Duration::days(400)),
            "runAt",
        ),
    ] {
        let err = jq
            .enqueue(
                Q,
                "x",
                &json!({}),
                &JobOptions {
                    delay_ms,
                    run_at,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some(field));
    }
    let big = json!({ "blob": "x".repeat(smartbot::queue::MAX_PAYLOAD_BYTES + 1) });
    let err = jq
        .enqueue(Q, "x", &big, &JobOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PAYLOAD_TOO_LARGE");
    let err = jq
        .queue_message_sending("  ", json!({}), &JobOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("to"));
    let c = b.queue.counts(Q).await.unwrap();
    assert_eq!(
        (c.waiting, c.delayed, c.active),
        (0, 0, 0),
        "nothing was enqueued"
    );
}

/// Short enough that a crashed worker's job comes back within seconds, long enough (renewed every
/// third) that a loaded 2-core machine never loses a live lease, nor one whose completion is
/// still on its way to the backend.
fn fast_workers(queues: Vec<QueueName>) -> WorkerConfig {
    WorkerConfig {
        queues,
        lease: Duration::from_secs(8),
        stall_interval: Duration::from_millis(250),
        idle_wait: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Fetches one job, polling until one is ready (a backoff or delay has run out).
async fn fetch_one_ready(q: &Arc<dyn QueueBackend>) -> smartbot::queue::Leased {
    eventually("a job to become ready", || async move {
        q.fetch(Q, 1, LEASE)
            .await
            .unwrap()
            .pop()
            .ok_or_else(|| "nothing ready".to_owned())
    })
    .await
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workers_run_panics_and_timeouts(kind: Kind) {
    let b = Backend::new(kind).await;
    let jq = JobQueue::new(b.queue.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |job: smartbot::queue::JobInfo| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                match job.payload["mode"].as_str() {
                    Some("panic") => panic!("kaboom"),
                    Some("slow") => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(json!("late"))
                    }
                    Some("permanent") => Err(JobError::permanent("bad input")),
                    _ => Ok(json!({ "echo": job.payload })),
                }
            }
        }),
    );
    let workers = Workers::start(b.queue.clone(), &handlers, fast_workers(vec![Q]));
    // Generous timeouts except for the job that must time out: printing a panic's backtrace
    // alone can take longer than 300 ms in a debug build on a busy machine.
    let fast = |id: &str, attempts: u32| JobOptions {
        job_id: Some(id.into()),
        attempts: Some(attempts),
        backoff_ms: Some(20),
        timeout_ms: Some(if id == "slow" { 300 } else { 10_000 }),
        ..Default::default()
    };
    for i in 0..20 {
        jq.enqueue(Q, "ok", &json!({ "i": i }), &fast(&format!("ok{i}"), 3))
            .await
            .unwrap();
    }
    jq.enqueue(Q, "p", &json!({ "mode": "panic" }), &fast("panic", 2))
        .await
        .unwrap();
    jq.enqueue(Q, "s", &json!({ "mode": "slow" }), &fast("slow", 1))
        .await
        .unwrap();
    jq.enqueue(Q, "x", &json!({ "mode": "permanent" }), &fast("perm", 5))
        .await
        .unwrap();

    let q = b.queue.clone();
    wait_until("all jobs to settle", Duration::from_secs(20), || {
        let q = q.clone();
        async move {
            let c = q.counts(Q).await.unwrap();
            c.completed == 20 && c.failed == 3
        }
    })
    .await;
    // 20 successes, the panic twice, the timeout once, the permanent failure once: no job ran
    // more often than that (a retried permanent error, a lost lease or a double fetch adds runs).
    assert_eq!(runs.load(Ordering::SeqCst), 20 + 2 + 1 + 1);
    let panic = jq.job_status(Q, "panic").await.unwrap();
    assert_eq!(
        panic.attempts_made, 2,
        "a panic is a failed attempt, then backoff and retry"
    );
    assert!(
        panic
            .errors
            .iter()
            .all(|e| e.error.contains("panicked: kaboom")),
        "{:?}",
        panic.errors
    );
    let slow = jq.job_status(Q, "slow").await.unwrap();
    assert!(
        slow.last_error
            .as_deref()
            .unwrap()
            .contains("timed out after 300 ms"),
        "{slow:?}"
    );
    let perm = jq.job_status(Q, "perm").await.unwrap();
    assert_eq!(
        perm.attempts_made, 1,
        "a permanent error skips the remaining attempts"
    );

    assert_eq!(
        jq.job_status(Q, "ok7").await.unwrap().result,
        Some(json!({ "echo": { "i": 7 } }))
    );
    workers.stop().await;
}

async fn graceful_shutdown_finishes_running_jobs(kind: Kind) {
    let b = Backend::new(kind).await;
    let jq = JobQueue::new(b.queue.clone());
    // "Active" also counts a leased job still waiting in a worker's prefetch buffer (released at
    // shutdown), so wait until the handler itself is running.
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |_job| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(json!("done"))
            }
        }),
    );
    let workers = Workers::start(b.queue.clone(), &handlers, fast_workers(vec![Q]));
    jq.enqueue(
        Q,
        "x",
        &json!({}),
        &JobOptions {
            job_id: Some("g".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_until("the handler to start", Duration::from_secs(5), || {
        let started = started.clone();
        async move { started.load(Ordering::SeqCst) == 1 }
    })
    .await;
    workers.stop().await;
    assert_eq!(
        jq.job_status(Q, "g").await.unwrap().state,
        JobState::Completed
    );
}

async fn release_returns_a_job_without_an_attempt(kind: Kind) {
    let b = Backend::new(kind).await;
    let q = &b.queue;
    for id in ["a", "b"] {
        q.enqueue(
            Q,
            job(
                json!({}),
                JobOptions {
                    job_id: Some(id.into()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    }
    let leased = q.fetch(Q, 2, LEASE).await.unwrap();
    assert!(!q.release(Q, "b", "not-the-token").await.unwrap());
    assert!(q.release(Q, "b", &leased[1].token).await.unwrap());
    let info = q.get(Q, "b").await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts_made), (JobState::Waiting, 0));
    assert!(
        !q.finish(Q, "b", &leased[1].token, 1, Outcome::Completed(json!(null)))
            .await
            .unwrap(),
        "the released lease is void"
    );
    let again = q.fetch(Q, 2, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].job.id.as_str(), again[0].job.attempts_made),
        ("b", 1)
    );
}

/// Retention keeps pace with throughput: with the clock-driven trim out of the way, finished
/// jobs beyond the configured counts are trimmed as work flows, job records included.
/// The two heaviest tests (thousands of jobs, several processes and pools) take turns: side by
/// side on 2 cores they starve each other of PostgreSQL connections and CPU.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn retention_keeps_pace(kind: Kind) {
    let _turn = HEAVY.lock().await;
    const N: usize = 4000;
    const KEEP: u64 = 50;
    let b = Backend::new(kind).await;
    let jq = JobQueue::new(b.queue.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |job: smartbot::queue::JobInfo| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                if job.payload["fail"] == json!(true) {
                    Err(JobError::permanent("fails on purpose"))
                } else {
                    Ok(json!(null))
                }
            }
        }),
    );
    let mut config = fast_workers(vec![Q]);
    config.retention = Retention {
        completed_count: KEEP,
        failed_count: KEEP,
        ..Default::default()
    };
    // The hourly tick fires once at start, on an empty queue; any later trim keeps pace.
    config.clean_interval = Duration::from_secs(3600);
    config.concurrency.insert(Q, 8);
    let workers = Workers::start(b.queue.clone(), &handlers, config);
    let all: Vec<usize> = (0..N).collect();
    for chunk in all.chunks(500) {
        let batch: Vec<(Value, JobOptions)> = chunk
            .iter()
            .map(|i| {
                let opts = JobOptions {
                    attempts: Some(1),
                    ..Default::default()
                };
                (json!({ "i": i, "fail": i % 10 == 0 }), opts)
            })
            .collect();
        jq.enqueue_bulk(Q, "r", &batch).await.unwrap();
    }
    let r = runs.clone();
    wait_until("every job to run", Duration::from_secs(180), || {
        let r = r.clone();
        async move { r.load(Ordering::SeqCst) >= N }
    })
    .await;
    let q = b.queue.clone();
    wait_until(
        "finished jobs to be trimmed to the retention",
        Duration::from_secs(30),
        || {
            let q = q.clone();
            async move {
                let c = q.counts(Q).await.unwrap();
                c.waiting + c.active + c.delayed == 0 && c.completed <= KEEP && c.failed <= KEEP
            }
        },
    )
    .await;
    let c = b.queue.counts(Q).await.unwrap();
    assert_eq!(
        (c.completed, c.failed),
        (KEEP, KEEP),
        "the most recent {KEEP} of each are kept"
    );
    if kind == Kind::Redis {
        // Trimming deletes the job records, not only their index entries.
        let prefix = b.spec.rsplit(' ').next().unwrap();
        let admin = fred::prelude::Builder::from_config(
            fred::prelude::Config::from_url(&redis_url()).unwrap(),
        )
        .build()
        .unwrap();
        admin.init().await.unwrap();
        let keys: Vec<String> = admin
            .custom(
                fred::types::CustomCommand::new_static("KEYS", None, false),
                vec![format!("{prefix}{{q:{}}}:job:*", Q.as_str())],
            )
            .await
            .unwrap();
        assert_eq!(keys.len() as u64, 2 * KEEP, "job hashes left behind");
        let _: () = admin.quit().await.unwrap();
    }
    workers.stop().await;
}

/// 64 writers at once (enqueue, fetch, fail with retry, complete) never see a storage error:
/// on SQLite, a read-then-write transaction must take the write lock up front.
async fn sixty_four_concurrent_writers(kind: Kind) {
    let b = Backend::new(kind).await;
    let jq = JobQueue::new(b.queue.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..64 {
        let (q, jq) = (b.queue.clone(), jq.clone());
        tasks.spawn(async move {
            for i in 0..5 {
                let opts = JobOptions {
                    job_id: Some(format!("w{w}-{i}")),
                    ..Default::default()
                };
                jq.enqueue(Q, "x", &json!({}), &opts).await?;
                for l in q.fetch(Q, 1, LEASE).await? {
                    let failed = Outcome::Failed {
                        error: "once".into(),
                        retry_in: Some(Duration::ZERO),
                    };
                    q.finish(Q, &l.job.id, &l.token, l.job.attempts_made, failed)
                        .await?;
                }
                for l in q.fetch(Q, 1, LEASE).await? {
                    let done = Outcome::Completed(json!(1));
                    q.finish(Q, &l.job.id, &l.token, l.job.attempts_made, done)
                        .await?;
                }
            }
            Ok::<_, Error>(())
        });
    }
    let mut errors = vec![];
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            errors.push(format!("{e:?}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of 64 writers failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let c = b.queue.counts(Q).await.unwrap();
    assert_eq!(
        c.waiting + c.delayed + c.active + c.completed + c.failed,
        320,
        "every job is accounted for: {c:?}"
    );
}

all_backends!(
    release_returns_a_job_without_an_attempt,
    lifecycle_and_idempotent_ids,
    priority_and_delay,
    failures_backoff_and_retry,
    stalled_leases_are_reclaimed_and_fenced,
    pause_remove_and_retention,
    bad_input_enqueues_nothing,
    workers_run_panics_and_timeouts,
    graceful_shutdown_finishes_running_jobs,
    sixty_four_concurrent_writers,
);

mod retention_keeps_pace {
    use super::Kind;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::retention_keeps_pace(Kind::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::retention_keeps_pace(Kind::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        super::retention_keeps_pace(Kind::Redis).await
    }
}

// ---------------------------------------------------------------------------------------------
// Real processes.

const CHILD_ENV: &str = "SMARTBOT_TEST_CHILD_WORKER";

/// Starts this test binary again as a worker process (see `child_worker_entry`).
fn spawn_child(spec: &str, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "queue::child_worker_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}|{spec}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child worker")
}

/// The body of a child worker process. It does nothing unless started by `spawn_child`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child process of the queue tests"]
async fn child_worker_entry() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, spec) = arg.split_once('|').unwrap();
    // The queue's warnings (lost leases, reclaimed jobs, failed round trips) go to the parent's
    // stderr: they explain a failure of the parent's checks.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,smartbot=warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let backend = backend_from_spec(spec).await;
    let mode = mode.to_owned();
    let long_lease = mode == "effects";
    let effects = EffectSink::connect(spec).await;
    let ready_effects = effects.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |job: smartbot::queue::JobInfo| {
            let (mode, effects) = (mode.clone(), effects.clone());
            async move {
                if mode == "hang" {
                    // Signal that the job is running, then never finish: the parent SIGKILLs us.
                    effects.record(&format!("started:{}", job.id)).await;
                    std::future::pending::<()>().await;
                }
                effects.record_run(&job).await;
                Ok(json!(null))
            }
        }),
    );
    // Keep every finished job: the parent counts them.
    let mut config = fast_workers(vec![Q]);
    config.retention.completed_count = 1_000_000;
    if long_lease {
        // The default lease: on a loaded 2-core box, three processes plus PostgreSQL can stall a
        // finished job's completion for seconds; "no job ran twice" must not hinge on that.
        config.lease = Duration::from_secs(30);
    }
    let workers = Workers::start(backend, &handlers, config);
    ready_effects.ready().await;
    // Run until the parent kills us, or for at most ten minutes (a parent that died).
    tokio::time::sleep(Duration::from_secs(600)).await;
    workers.stop().await;
}

/// Where child workers record side effects, visible to the parent: a Redis set and counter
/// (Redis backend) or a table in the same database (SQL backends).
#[derive(Clone)]
enum EffectSink {
    Redis {
        client: fred::clients::Client,
        prefix: String,
    },
    Sql(sea_orm::DatabaseConnection),
}

impl EffectSink {
    async fn connect(spec: &str) -> Self {
        let parts: Vec<&str> = spec.split(' ').collect();
        match parts.as_slice() {
            ["redis", url, prefix] => {
                let client = fred::prelude::Builder::from_config(
                    fred::prelude::Config::from_url(url).unwrap(),
                )
                .build()
                .unwrap();
                client.init().await.unwrap();
                Self::Redis {
                    client,
                    prefix: prefix.to_string(),
                }
            }
            ["sql", url] => {
                use sea_orm::ConnectionTrait;
                let db = sea_orm::Database::connect(*url).await.unwrap();
                for table in [
                    "CREATE TABLE IF NOT EXISTS test_effects (job_id VARCHAR(128) NOT NULL, worker VARCHAR(32) NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, started_at BIGINT, at BIGINT)",
                    "CREATE TABLE IF NOT EXISTS test_ready (worker VARCHAR(32) NOT NULL)",
                ] {
                    db.execute_unprepared(table).await.unwrap();
                }
                Self::Sql(db)
            }
            _ => panic!("bad spec"),
        }
    }

    /// Records that this process ran `job`, with the attempt it ran as (for diagnosing a duplicate).
    async fn record_run(&self, job: &smartbot::queue::JobInfo) {
        match self {
            Self::Redis { .. } => self.record(&job.id).await,
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let pg = db.get_database_backend() == sea_orm::DbBackend::Postgres;
                let stmt = sea_orm::Statement::from_sql_and_values(
                    db.get_database_backend(),
                    if pg {
                        "INSERT INTO test_effects (job_id, worker, attempt, started_at, at) VALUES ($1, $2, $3, $4, $5)"
                    } else {
                        "INSERT INTO test_effects (job_id, worker, attempt, started_at, at) VALUES (?, ?, ?, ?, ?)"
                    },
                    [
                        job.id.clone().into(),
                        std::process::id().to_string().into(),
                        (job.attempts_made as i32).into(),
                        job.started_at.into(),
                        chrono::Utc::now().timestamp_millis().into(),
                    ],
                );
                db.execute_raw(stmt).await.unwrap();
            }
        }
    }

    /// Every run of the jobs that ran more than once: (job, worker, attempt, started, recorded).
    async fn duplicate_runs(&self) -> Vec<String> {
        match self {
            Self::Redis { .. } => vec![],
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let rows = db
                    .query_all_raw(sea_orm::Statement::from_string(
                        db.get_database_backend(),
                        "SELECT job_id, worker, attempt, started_at, at FROM test_effects WHERE job_id IN \
                         (SELECT job_id FROM test_effects GROUP BY job_id HAVING COUNT(*) > 1) ORDER BY job_id, at",
                    ))
                    .await
                    .unwrap();
                rows.into_iter()
                    .map(|r| {
                        format!(
                            "{} worker {} attempt {} started {:?} recorded {:?}",
                            r.try_get::<String>("", "job_id").unwrap(),
                            r.try_get::<String>("", "worker").unwrap(),
                            r.try_get::<i32>("", "attempt").unwrap(),
                            r.try_get::<Option<i64>>("", "started_at").unwrap(),
                            r.try_get::<Option<i64>>("", "at").unwrap(),
                        )
                    })
                    .collect()
            }
        }
    }

    /// Records that this process ran job `id`.
    async fn record(&self, id: &str) {
        let worker = std::process::id().to_string();
        match self {
            Self::Redis { client, prefix } => {
                let _: () = client.sadd(format!("{prefix}effects"), id).await.unwrap();
                let _: () = client.incr(format!("{prefix}effects:count")).await.unwrap();
                let _: () = client
                    .hincrby(format!("{prefix}effects:by"), worker, 1)
                    .await
                    .unwrap();
            }
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let stmt = sea_orm::Statement::from_sql_and_values(
                    db.get_database_backend(),
                    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
                        "INSERT INTO test_effects (job_id, worker) VALUES ($1, $2)"
                    } else {
                        "INSERT INTO test_effects (job_id, worker) VALUES (?, ?)"
                    },
                    [id.into(), worker.into()],
                );
                db.execute_raw(stmt).await.unwrap();
            }
        }
    }

    /// Records that this process's workers are running.
    async fn ready(&self) {
        let worker = std::process::id().to_string();
        match self {
            Self::Redis { client, prefix } => {
                let _: () = client.sadd(format!("{prefix}ready"), worker).await.unwrap();
            }
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let stmt = sea_orm::Statement::from_sql_and_values(
                    db.get_database_backend(),
                    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
                        "INSERT INTO test_ready (worker) VALUES ($1)"
                    } else {
                        "INSERT INTO test_ready (worker) VALUES (?)"
                    },
                    [worker.into()],
                );
                db.execute_raw(stmt).await.unwrap();
            }
        }
    }

    async fn ready_count(&self) -> u64 {
        match self {
            Self::Redis { client, prefix } => client.scard(format!("{prefix}ready")).await.unwrap(),
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let row = db
                    .query_one_raw(sea_orm::Statement::from_string(
                        db.get_database_backend(),
                        "SELECT COUNT(DISTINCT worker) AS n FROM test_ready",
                    ))
                    .await
                    .unwrap()
                    .unwrap();
                row.try_get::<i64>("", "n").unwrap() as u64
            }
        }
    }

    /// Jobs run per worker process.
    async fn by_worker(&self) -> HashMap<String, u64> {
        match self {
            Self::Redis { client, prefix } => {
                client.hgetall(format!("{prefix}effects:by")).await.unwrap()
            }
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let rows = db
                    .query_all_raw(sea_orm::Statement::from_string(
                        db.get_database_backend(),
                        "SELECT worker, COUNT(*) AS n FROM test_effects GROUP BY worker",
                    ))
                    .await
                    .unwrap();
                rows.into_iter()
                    .map(|r| {
                        (
                            r.try_get::<String>("", "worker").unwrap(),
                            r.try_get::<i64>("", "n").unwrap() as u64,
                        )
                    })
                    .collect()
            }
        }
    }

    /// (rows recorded, distinct ids recorded)
    async fn totals(&self) -> (u64, u64) {
        match self {
            Self::Redis { client, prefix } => {
                let n: Option<u64> = client.get(format!("{prefix}effects:count")).await.unwrap();
                let d: u64 = client.scard(format!("{prefix}effects")).await.unwrap();
                (n.unwrap_or(0), d)
            }
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let row = db
                    .query_one_raw(sea_orm::Statement::from_string(
                        db.get_database_backend(),
                        "SELECT COUNT(*) AS n, COUNT(DISTINCT job_id) AS d FROM test_effects",
                    ))
                    .await
                    .unwrap()
                    .unwrap();
                (
                    row.try_get::<i64>("", "n").unwrap() as u64,
                    row.try_get::<i64>("", "d").unwrap() as u64,
                )
            }
        }
    }

    async fn contains(&self, id: &str) -> bool {
        match self {
            Self::Redis { client, prefix } => client
                .sismember(format!("{prefix}effects"), id)
                .await
                .unwrap(),
            Self::Sql(db) => {
                use sea_orm::ConnectionTrait;
                let sql = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
                    "SELECT COUNT(*) AS n FROM test_effects WHERE job_id = $1"
                } else {
                    "SELECT COUNT(*) AS n FROM test_effects WHERE job_id = ?"
                };
                let row = db
                    .query_one_raw(sea_orm::Statement::from_sql_and_values(
                        db.get_database_backend(),
                        sql,
                        [id.into()],
                    ))
                    .await
                    .unwrap()
                    .unwrap();
                row.try_get::<i64>("", "n").unwrap() > 0
            }
        }
    }
}

struct KillOnDrop(Vec<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn sigkill_mid_job_is_reclaimed(kind: Kind) {
    let b = Backend::new(kind).await;
    let effects = EffectSink::connect(&b.spec).await;
    let jq = JobQueue::new(b.queue.clone());
    jq.enqueue(
        Q,
        "x",
        &json!({}),
        &JobOptions {
            job_id: Some("victim".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut children = KillOnDrop(vec![spawn_child(&b.spec, "hang")]);
    wait_until(
        "the child to start the job",
        Duration::from_secs(30),
        || {
            let e = effects.clone();
            async move { e.contains("started:victim").await }
        },
    )
    .await;
    // SIGKILL: no chance to clean up.
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    assert_eq!(
        jq.job_status(Q, "victim").await.unwrap().state,
        JobState::Active
    );

    // A healthy worker in this process reclaims the job after its lease and completes it.
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |_job| {
            let d = d.clone();
            async move {
                d.fetch_add(1, Ordering::SeqCst);
                Ok(json!("recovered"))
            }
        }),
    );
    let workers = Workers::start(b.queue.clone(), &handlers, fast_workers(vec![Q]));
    let q = b.queue.clone();
    wait_until(
        "the reclaimed job to complete",
        Duration::from_secs(60),
        || {
            let q = q.clone();
            async move { q.get(Q, "victim").await.unwrap().unwrap().state == JobState::Completed }
        },
    )
    .await;
    workers.stop().await;
    let info = jq.job_status(Q, "victim").await.unwrap();
    assert_eq!(info.attempts_made, 2);
    assert!(info.errors[0].error.contains("stalled"));
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

async fn ten_thousand_jobs_over_three_processes(kind: Kind) {
    let _turn = HEAVY.lock().await;
    const N: usize = 10_000;
    let b = Backend::new(kind).await;
    let effects = EffectSink::connect(&b.spec).await;
    let jq = JobQueue::new(b.queue.clone());
    let opts: Vec<JobOptions> = (0..N)
        .map(|i| JobOptions {
            job_id: Some(format!("j{i}")),
            ..Default::default()
        })
        .collect();
    // Three worker processes first, all running before any job exists, so they compete for
    // the whole run.
    let children = KillOnDrop((0..3).map(|_| spawn_child(&b.spec, "effects")).collect());
    let pids: Vec<String> = children.0.iter().map(|c| c.id().to_string()).collect();
    wait_until("three worker processes", Duration::from_secs(60), || {
        let e = effects.clone();
        async move { e.ready_count().await == 3 }
    })
    .await;
    // Enqueue concurrently in chunks, while the workers already run.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in opts.chunks(500) {
        let (jq, chunk) = (jq.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let batch: Vec<(Value, JobOptions)> =
                chunk.into_iter().map(|o| (json!({}), o)).collect();
            jq.enqueue_bulk(Q, "effect", &batch).await.unwrap();
        });
    }
    while tasks.join_next().await.is_some() {}
    let q = b.queue.clone();
    wait_until("10,000 jobs to complete", Duration::from_secs(240), || {
        let q = q.clone();
        async move { q.counts(Q).await.unwrap().completed as usize == N }
    })
    .await;
    let (rows, distinct) = effects.totals().await;
    assert_eq!(distinct, N as u64, "every job's side effect happened");
    if rows != N as u64 {
        let runs = effects.duplicate_runs().await;
        let mut jobs = vec![];
        for line in runs.iter().take(10) {
            let id = line.split(' ').next().unwrap();
            jobs.push(format!("{:?}", jq.job_status(Q, id).await.unwrap().errors));
        }
        panic!(
            "with no crash, no job ran twice: {rows} runs of {N} jobs\n{}\n{}",
            runs.join("\n"),
            jobs.join("\n")
        );
    }
    let by = effects.by_worker().await;
    for pid in &pids {
        let n = by.get(pid).copied().unwrap_or(0);
        assert!(n > 0, "worker process {pid} did none of the work: {by:?}");
    }
    assert_eq!(
        by.values().sum::<u64>(),
        N as u64,
        "only the three children ran jobs: {by:?}"
    );
    drop(children);
}

mod processes {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_sqlite() {
        sigkill_mid_job_is_reclaimed(Kind::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_postgres() {
        sigkill_mid_job_is_reclaimed(Kind::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_redis() {
        sigkill_mid_job_is_reclaimed(Kind::Redis).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_postgres() {
        ten_thousand_jobs_over_three_processes(Kind::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_redis() {
        ten_thousand_jobs_over_three_processes(Kind::Redis).await
    }
}

/// `CLIENT LIST` as (id, name) pairs.
async fn client_list(admin: &fred::clients::Client) -> Vec<(String, String)> {
    let list: String = admin
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["LIST"],
        )
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let fields: HashMap<&str, &str> = line
                .split(' ')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            Some((
                fields.get("id")?.to_string(),
                fields.get("name")?.to_string(),
            ))
        })
        .collect()
}

/// CLIENT KILL every connection of a running backend: the connections really drop, they come
/// back with new ids, and the same process's workers resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_drop_is_survived() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let backend = Arc::new(
        RedisQueue::connect(&redis_url(), &prefix)
            .await
            .expect("redis"),
    );
    let names = backend.client_names();
    let jq = JobQueue::new(backend.clone());
    let handlers = Handlers::new().register(Q, FnHandler(|_job| async { Ok(json!(null)) }));
    let workers = Workers::start(backend.clone(), &handlers, fast_workers(vec![Q]));
    jq.enqueue(
        Q,
        "x",
        &json!({}),
        &JobOptions {
            job_id: Some("before".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let q: Arc<dyn QueueBackend> = backend.clone();
    wait_until("the first job", Duration::from_secs(20), || {
        let q = q.clone();
        async move { q.counts(Q).await.unwrap().completed == 1 }
    })
    .await;

    let admin =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis_url()).unwrap())
            .build()
            .unwrap();
    admin.init().await.unwrap();
    let ours: Vec<(String, String)> = client_list(&admin)
        .await
        .into_iter()
        .filter(|(_, name)| names.contains(name))
        .collect();
    assert_eq!(
        ours.len(),
        names.len(),
        "every connection of the backend is listed: {ours:?} for {names:?}"
    );
    for (id, name) in &ours {
        let killed: i64 = admin
            .custom(
                fred::types::CustomCommand::new_static("CLIENT", None, false),
                vec!["KILL", "ID", id.as_str()],
            )
            .await
            .unwrap();
        assert_eq!(killed, 1, "CLIENT KILL ID {id} ({name}) killed nothing");
    }
    let killed_ids: Vec<&String> = ours.iter().map(|(id, _)| id).collect();
    // Every killed connection comes back (fred reconnects) under its name with a new id.
    wait_until(
        "every connection to reconnect",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            let (names, killed_ids) = (names.clone(), killed_ids.clone());
            async move {
                let now = client_list(&admin).await;
                let still = now.iter().any(|(id, _)| killed_ids.contains(&id));
                assert!(!still, "a killed connection is still listed: {now:?}");
                names.iter().all(|n| {
                    now.iter()
                        .any(|(id, name)| name == n && !killed_ids.contains(&id))
                })
            }
        },
    )
    .await;

    for i in 0..20 {
        jq.enqueue(
            Q,
            "x",
            &json!({}),
            &JobOptions {
                job_id: Some(format!("after{i}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    wait_until(
        "jobs after the connection drop",
        Duration::from_secs(30),
        || {
            let q = q.clone();
            async move {
                q.counts(Q)
                    .await
                    .map(|c| c.completed == 21)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    workers.stop().await;
    let _: () = admin.quit().await.unwrap();
}

/// With REDIS_URL set the queue reads `maxmemory-policy`; anything but noeviction is warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_eviction_policy_is_checked() {
    use smartbot::queue::redis::eviction_warning;
    assert!(eviction_warning("noeviction").is_none());
    let w = eviction_warning("allkeys-lru").expect("allkeys-lru is warned about");
    assert!(w.contains("allkeys-lru") && w.contains("noeviction"), "{w}");
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let backend = RedisQueue::connect(&redis_url(), &prefix).await.unwrap();
    let admin =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis_url()).unwrap())
            .build()
            .unwrap();
    admin.init().await.unwrap();
    let original = backend.maxmemory_policy().await.unwrap();
    let set = |policy: String| {
        let admin = admin.clone();
        async move {
            let _: String = admin
                .custom(
                    fred::types::CustomCommand::new_static("CONFIG", None, false),
                    vec!["SET".to_owned(), "maxmemory-policy".to_owned(), policy],
                )
                .await
                .unwrap();
        }
    };
    set("volatile-lru".into()).await;
    let read = backend.maxmemory_policy().await;
    set(original).await;
    assert_eq!(read.unwrap(), "volatile-lru", "the live policy is read");
    let _: () = admin.quit().await.unwrap();
}

/// A lost reply must never make fred run a lease script again. A loopback proxy passes one
/// FETCH script to Redis, swallows its reply and drops the connection, as a network fault would:
/// the fetch must fail (its lease expires and is recovered later) instead of being re-sent and
/// leasing a second batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_fetch_reply_is_not_replayed() {
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("redis://{}", listener.local_addr().unwrap());
    let armed = Arc::new(AtomicBool::new(false));
    let tripped = Arc::new(AtomicBool::new(false));
    let (a, t) = (armed.clone(), tripped.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let cut = Arc::new(AtomicBool::new(false));
            let (a, t, c) = (a.clone(), t.clone(), cut.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    let is_fetch = chunk.windows(7).any(|w| w == b"EVALSHA")
                        && chunk.windows(7).any(|w| w == b":paused");
                    if is_fetch && a.swap(false, Ordering::SeqCst) {
                        t.store(true, Ordering::SeqCst);
                        c.store(true, Ordering::SeqCst);
                    }
                    if sw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cut.load(Ordering::SeqCst) {
                        // The reply to the armed FETCH is lost with the connection.
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });

    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let backend = RedisQueue::connect(&proxy, &prefix).await.unwrap();
    for id in ["a", "b"] {
        let opts = JobOptions {
            job_id: Some(id.into()),
            ..Default::default()
        };
        backend.enqueue(Q, job(json!({}), opts)).await.unwrap();
    }
    armed.store(true, Ordering::SeqCst);
    let r = backend.fetch(Q, 1, LEASE).await;
    assert!(
        tripped.load(Ordering::SeqCst),
        "the proxy never saw the fetch"
    );
    assert!(
        r.is_err(),
        "a fetch whose reply was lost must fail, not be re-sent; it returned {:?}",
        r.map(|v| v.into_iter().map(|l| l.job.id).collect::<Vec<_>>())
    );
    let c = backend.counts(Q).await.unwrap();
    assert_eq!(
        (c.active, c.waiting),
        (1, 1),
        "the lease script ran exactly once: {c:?}"
    );
}

/// On PostgreSQL another process's enqueue wakes idle workers through LISTEN/NOTIFY: the worker
/// polls only once a minute here, yet the job runs long before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_other_processes() {
    let pg = PgDatabase::create().await;
    let mut config = smartbot::Config::embedded(std::env::temp_dir());
    config.database_url = pg.url.clone();
    let connect = || async {
        let db = smartbot::db::connect(&config).await.expect("database");
        smartbot::db::migrate(&db).await.expect("migrate");
        db
    };
    // Two queues over two pools: nothing in-process links the producer to the worker.
    let worker_side: Arc<dyn QueueBackend> =
        Arc::new(SqlQueue::new(connect().await, Duration::from_secs(60)));
    let producer: Arc<dyn QueueBackend> =
        Arc::new(SqlQueue::new(connect().await, Duration::from_secs(60)));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let handlers = Handlers::new().register(
        Q,
        FnHandler(move |_job| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(json!(null))
            }
        }),
    );
    let mut wc = fast_workers(vec![Q]);
    wc.idle_wait = Duration::from_secs(60);
    let workers = Workers::start(worker_side.clone(), &handlers, wc);
    // Wait until the worker's process is listening: its LISTEN connection shows in
    // pg_stat_activity (the worker's first fetch found nothing, so it waits on the channel).
    let admin = connect().await;
    let admin = &admin;
    eventually("the worker process to LISTEN", || async move {
        use sea_orm::ConnectionTrait;
        let row = admin
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND query ILIKE 'LISTEN%'",
            ))
            .await
            .unwrap()
            .unwrap();
        match row.try_get::<i64>("", "n").unwrap() {
            0 => Err("no LISTEN session yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    for i in 0..3 {
        let before = ran.load(Ordering::SeqCst);
        let opts = JobOptions {
            job_id: Some(format!("n{i}")),
            ..Default::default()
        };
        producer.enqueue(Q, job(json!({}), opts)).await.unwrap();
        let r = ran.clone();
        wait_until(
            "the other process's worker to be woken",
            Duration::from_secs(30),
            || {
                let r = r.clone();
                async move { r.load(Ordering::SeqCst) > before }
            },
        )
        .await;
    }
    workers.stop().await;
}

/// The queue's readiness (`/ready`) fails when Redis refuses the queue's commands, not only when
/// it does not answer: here a user whose ACL allows PING and nothing the queue runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_readiness_needs_the_queue_commands() {
    let admin =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis_url()).unwrap())
            .build()
            .unwrap();
    admin.init().await.unwrap();
    let acl = |args: Vec<String>| {
        let admin = admin.clone();
        async move {
            let _: fred::types::Value = admin
                .custom(
                    fred::types::CustomCommand::new_static("ACL", None, false),
                    args,
                )
                .await
                .unwrap();
        }
    };
    let user = format!("ready-{}", uuid::Uuid::new_v4().simple());
    acl([
        "SETUSER", &user, "on", "nopass", "~*", "-@all", "+ping", "+hello", "+auth", "+client",
        "+select", "+info", "+config",
    ]
    .map(str::to_owned)
    .to_vec())
    .await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let limited = redis_url().replacen("redis://", &format!("redis://{user}:any@"), 1);
    let refused = RedisQueue::connect(&limited, &prefix).await.unwrap();
    let ready = refused.readiness().await;
    acl(vec!["DELUSER".into(), user.clone()]).await;
    assert!(
        ready.iter().any(|(name, r)| *name == "redis" && r.is_err()),
        "a Redis that answers PING but refuses the queue's commands was ready"
    );
    let whole = RedisQueue::connect(&redis_url(), &prefix).await.unwrap();
    assert!(whole.readiness().await.iter().all(|(_, r)| r.is_ok()));
}
