//! Workers: one loop per queue that leases up to `concurrency` jobs, runs each handler in its own
//! task (so a panic is caught), extends the lease while it runs, enforces the job's timeout, and
//! records the outcome with exponential backoff for retries.
//!
//! Shutdown stops fetching and lets running jobs finish within the grace period; whatever is still
//! running then is abandoned and its lease expires, so another worker reclaims it. Nothing is lost.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use serde_json::Value;
use tokio::{
    sync::{Notify, Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    Completion, JobInfo, Leased, Outcome, QueueBackend, QueueName, Retention, backoff_delay,
    metrics,
};

/// Why a handler failed. `Permanent` skips the remaining attempts (bad input will not get better).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

/// The code that does a queue's work. Must be idempotent: a job may run more than once.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &JobInfo) -> Result<Value, JobError>;
}

/// Any `async fn(JobInfo) -> Result<Value, JobError>` is a handler.
pub struct FnHandler<F>(pub F);

#[async_trait]
impl<F, Fut> JobHandler for FnHandler<F>
where
    F: Fn(JobInfo) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, JobError>> + Send + 'static,
{
    async fn handle(&self, job: &JobInfo) -> Result<Value, JobError> {
        (self.0)(job.clone()).await
    }
}

/// Handlers by queue. A queue without a handler has no workers in this process.
#[derive(Clone, Default)]
pub struct Handlers {
    map: HashMap<QueueName, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, queue: QueueName, handler: impl JobHandler) -> Self {
        self.map.insert(queue, Arc::new(handler));
        self
    }

    pub fn get(&self, queue: QueueName) -> Option<Arc<dyn JobHandler>> {
        self.map.get(&queue).cloned()
    }

    pub fn queues(&self) -> Vec<QueueName> {
        QueueName::ALL
            .into_iter()
            .filter(|q| self.map.contains_key(q))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Which queues this process works; empty means every queue that has a handler.
    pub queues: Vec<QueueName>,
    pub concurrency: HashMap<QueueName, usize>,
    /// How long a lease lasts without renewal; a crashed worker's job is reclaimed after this.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub stall_interval: Duration,
    /// Longest idle wait before fetching again.
    pub idle_wait: Duration,
    pub shutdown_grace: Duration,
    pub retention: Retention,
    /// How often finished jobs are trimmed by age. Trimming by count also runs whenever enough
    /// jobs finished since the last trim, and when a queue goes idle, so it keeps pace.
    pub clean_interval: Duration,
    /// Where this process's counters go (the app's `JobQueue::metrics`).
    pub metrics: Arc<metrics::QueueMetrics>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: vec![],
            concurrency: HashMap::new(),
            lease: Duration::from_secs(30),
            stall_interval: Duration::from_secs(5),
            idle_wait: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            retention: Retention::default(),
            clean_interval: Duration::from_secs(60),
            metrics: Arc::new(metrics::QueueMetrics::new()),
        }
    }
}

impl WorkerConfig {
    pub fn concurrency_of(&self, q: QueueName) -> usize {
        self.concurrency
            .get(&q)
            .copied()
            .unwrap_or_else(|| q.default_concurrency())
            .max(1)
    }
}

/// Counts jobs that finished since the last trim and wakes the queue's maintenance task once
/// enough did, so retention keeps pace with throughput instead of with a clock.
struct Trim {
    finished: AtomicU64,
    threshold: u64,
    wake: Notify,
}

impl Trim {
    fn new(r: &Retention) -> Self {
        Self {
            finished: AtomicU64::new(0),
            threshold: (r.completed_count.min(r.failed_count) / 4).max(32),
            wake: Notify::new(),
        }
    }

    fn due(&self) -> bool {
        self.finished.load(Ordering::Relaxed) >= self.threshold
    }

    fn add(&self, n: u64) {
        if n > 0 && self.finished.fetch_add(n, Ordering::Relaxed) + n >= self.threshold {
            self.wake.notify_one();
        }
    }

    /// The queue went idle: trim what finished since the last trim (after [`IDLE_TRIM_DELAY`],
    /// so a queue that goes idle between every job does not trim after every job).
    fn flush(&self) {
        if self.finished.load(Ordering::Relaxed) > 0 {
            self.wake.notify_one();
        }
    }
}

/// Running workers; `stop` drains them.
pub struct Workers {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Workers {
    /// Starts a loop per queue (those in `config.queues` that have a handler).
    pub fn start(
        backend: Arc<dyn QueueBackend>,
        handlers: &Handlers,
        config: WorkerConfig,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let wanted = if config.queues.is_empty() {
            handlers.queues()
        } else {
            config.queues.clone()
        };
        for q in wanted {
            let Some(handler) = handlers.get(q) else {
                tracing::warn!(queue = %q, "no handler registered for this queue; not working it");
                continue;
            };
            tracing::info!(queue = %q, concurrency = config.concurrency_of(q), "worker started");
            let trim = Arc::new(Trim::new(&config.retention));
            tasks.spawn(run_queue(
                q,
                backend.clone(),
                handler,
                config.clone(),
                trim.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(maintain(
                q,
                backend.clone(),
                config.clone(),
                trim,
                shutdown.clone(),
            ));
        }
        Self { shutdown, tasks }
    }

    /// Stops fetching, lets running jobs finish within each queue's grace period, and waits.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Splits a queue's concurrency into lanes. Each lane has its own fetch loop, so while one
/// waits on a round trip another is already recording and fetching: the round trips overlap
/// instead of queueing behind each other.
async fn run_queue(
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    trim: Arc<Trim>,
    shutdown: CancellationToken,
) {
    let total = config.concurrency_of(queue);
    let lanes = backend.lanes(total).clamp(1, total);
    let mut set = JoinSet::new();
    for i in 0..lanes {
        // Spread the slots as evenly as possible: 5 over 2 lanes is 3 + 2.
        let share = total / lanes + usize::from(i < total % lanes);
        let lane = Lane {
            queue,
            backend: backend.clone(),
            handler: handler.clone(),
            lease: config.lease,
            metrics: config.metrics.clone(),
            trim: trim.clone(),
            avg_run_ns: AtomicU64::new(0),
        };
        set.spawn(run_lane(
            Arc::new(lane),
            share,
            config.clone(),
            shutdown.clone(),
        ));
    }
    while set.join_next().await.is_some() {}
}

/// What every run in one lane shares.
struct Lane {
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    handler: Arc<dyn JobHandler>,
    lease: Duration,
    metrics: Arc<metrics::QueueMetrics>,
    trim: Arc<Trim>,
    /// Moving average of how long a handler runs, in nanoseconds (0 until one has run).
    avg_run_ns: AtomicU64,
}

impl Lane {
    /// How many leased jobs may wait for a slot now: the backend's base, grown towards its
    /// maximum while jobs are short, so that the last prefetched job is expected to start
    /// within a quarter of its lease (slow handlers keep the base).
    fn prefetch(&self, concurrency: usize, base: usize, max: usize) -> usize {
        let avg = self.avg_run_ns.load(Ordering::Relaxed);
        if avg == 0 || max <= base {
            return base;
        }
        let per_slot = (self.lease.as_nanos() / 4 / u128::from(avg)).min(usize::MAX as u128);
        (per_slot as usize)
            .saturating_mul(concurrency)
            .clamp(base, max)
    }

    fn ran_for(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.avg_run_ns.load(Ordering::Relaxed);
        let new = if old == 0 { d } else { (old / 8) * 7 + d / 8 };
        self.avg_run_ns.store(new.max(1), Ordering::Relaxed);
    }
}

async fn run_lane(
    lane: Arc<Lane>,
    concurrency: usize,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let (queue, backend) = (lane.queue, lane.backend.clone());
    type Sync = futures::future::BoxFuture<
        'static,
        (
            Vec<Completion>,
            usize,
            crate::error::Result<(usize, Vec<Leased>)>,
        ),
    >;
    let (base_prefetch, max_prefetch) = (
        backend.prefetch(concurrency),
        backend.max_prefetch(concurrency),
    );
    let lease = config.lease;
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<()> = JoinSet::new();
    // Finished runs report here; they are recorded with the next round trip, in a batch.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut pending: Vec<Completion> = Vec::new();
    // Leased jobs waiting for a free slot (at most `prefetch`), with when they were leased.
    let mut buffer: VecDeque<(Leased, Instant)> = VecDeque::new();
    // At most one round trip in flight; jobs keep starting and finishing meanwhile, so the next
    // trip carries everything that happened during this one.
    let mut inflight: Option<Sync> = None;
    let mut idle = false;
    // Not `backon`: a failed round trip is not retried as such. The next trip carries whatever
    // completed meanwhile and asks for a fresh number of jobs, and the lane keeps running jobs
    // and collecting completions while it waits, so the delay lives in this loop's own state.
    let mut error_backoff = Duration::from_millis(50);

    loop {
        let stopping = shutdown.is_cancelled();
        if stopping && inflight.is_none() {
            break;
        }
        while slots.available_permits() > 0 && !stopping {
            let Some((leased, leased_at)) = buffer.pop_front() else {
                break;
            };
            let permit = slots.clone().try_acquire_owned().expect("a permit is free");
            running.spawn(run_one(
                lane.clone(),
                leased,
                leased_at,
                done_tx.clone(),
                permit,
            ));
        }
        if inflight.is_none() && !stopping {
            let busy = concurrency - slots.available_permits();
            let prefetch = lane.prefetch(concurrency, base_prefetch, max_prefetch);
            let want = (concurrency + prefetch).saturating_sub(busy + buffer.len());
            let want = if idle { 0 } else { want };
            if !pending.is_empty() || want > 0 {
                let done = std::mem::take(&mut pending);
                let backend = backend.clone();
                inflight = Some(Box::pin(async move {
                    let r = backend.complete_and_fetch(queue, &done, want, lease).await;
                    (done, want, r)
                }));
            }
        }
        tokio::select! {
            biased;
            (done, want, r) = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                inflight = None;
                match r {
                    Ok((landed, jobs)) => {
                        if landed < done.len() {
                            tracing::warn!(queue = %queue, lost = done.len() - landed, "completions arrived after their lease was lost");
                        }
                        error_backoff = Duration::from_millis(50);
                        lane.trim.add(landed as u64);
                        idle = want > 0 && jobs.is_empty();
                        if idle {
                            lane.trim.flush();
                        }
                        let now = Instant::now();
                        buffer.extend(jobs.into_iter().map(|j| (j, now)));
                    }
                    Err(e) => {
                        tracing::warn!(queue = %queue, error = %e, backoff_ms = error_backoff.as_millis() as u64, "queue round trip failed; retrying");
                        pending.splice(0..0, done);
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(error_backoff) => {}
                        }
                        error_backoff = (error_backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Some(c) = done_rx.recv() => pending.push(c),
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = shutdown.cancelled(), if !stopping => {}
            r = backend.wait_for_work(queue, config.idle_wait), if idle && inflight.is_none() && pending.is_empty() && !stopping => {
                if let Err(e) = r {
                    tracing::warn!(queue = %queue, error = %e, "waiting for work failed; retrying");
                    tokio::time::sleep(error_backoff).await;
                }
                idle = false;
            }
        }
    }

    // Leased jobs that never started go back to the queue at once, without using an attempt.
    for (leased, _) in buffer.drain(..) {
        if let Err(e) = backend.release(queue, &leased.job.id, &leased.token).await {
            tracing::warn!(queue = %queue, job = %leased.job.id, error = %e, "could not release a prefetched job; it returns after its lease");
        }
    }
    // Running jobs get the grace period; the rest are reclaimed after their lease.
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(queue = %queue, left = running.len(), "grace period over; abandoning running jobs to lease expiry");
        running.abort_all();
    }
    drop(done_tx);
    while let Some(c) = done_rx.recv().await {
        pending.push(c);
    }
    if !pending.is_empty() {
        let record = || backend.complete_and_fetch(queue, &pending, 0, lease);
        if let Err(e) = record
            .retry(record_retries())
            .notify(|e, _| tracing::warn!(queue = %queue, error = %e, "recording completions at shutdown failed; retrying"))
            .await
        {
            tracing::warn!(queue = %queue, error = %e, jobs = pending.len(), "could not record completions at shutdown; those jobs run again after their lease");
        }
    }
}

/// Recording an outcome: five tries, 100 ms doubling, with jitter. If it never lands, the lease
/// expires and the job runs again (at-least-once).
fn record_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_times(4)
        .with_jitter()
}

/// How long after a queue goes idle the jobs that finished since the last trim are trimmed.
const IDLE_TRIM_DELAY: Duration = Duration::from_secs(1);

/// Stall recovery and retention for one queue.
async fn maintain(
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    config: WorkerConfig,
    trim: Arc<Trim>,
    shutdown: CancellationToken,
) {
    let mut stall = tokio::time::interval(config.stall_interval);
    let mut clean = tokio::time::interval(config.clean_interval);
    stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clean.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the queue went idle with finished jobs not yet trimmed: trim at this time.
    let mut idle_trim: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = stall.tick() => match backend.recover_stalled(queue).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(queue = %queue, jobs = n, "reclaimed stalled jobs");
                    // A reclaimed job out of attempts ended in failed: retention counts it too.
                    trim_finished(queue, backend.as_ref(), &config, &trim).await;
                }
                Err(e) => tracing::warn!(queue = %queue, error = %e, "stall recovery failed"),
            },
            _ = clean.tick() => {
                idle_trim = None;
                trim_finished(queue, backend.as_ref(), &config, &trim).await;
            }
            _ = trim.wake.notified() => {
                if trim.due() {
                    idle_trim = None;
                    trim_finished(queue, backend.as_ref(), &config, &trim).await;
                } else {
                    idle_trim.get_or_insert_with(|| Instant::now() + IDLE_TRIM_DELAY);
                }
            }
            _ = tokio::time::sleep_until(idle_trim.unwrap_or_else(Instant::now)), if idle_trim.is_some() => {
                idle_trim = None;
                trim_finished(queue, backend.as_ref(), &config, &trim).await;
            }
        }
    }
}

async fn trim_finished(
    queue: QueueName,
    backend: &dyn QueueBackend,
    config: &WorkerConfig,
    trim: &Trim,
) {
    trim.finished.store(0, Ordering::Relaxed);
    if let Err(e) = backend.clean(queue, config.retention).await {
        tracing::warn!(queue = %queue, error = %e, "retention clean-up failed");
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

async fn run_one(
    lane: Arc<Lane>,
    leased: Leased,
    leased_at: Instant,
    done: mpsc::UnboundedSender<Completion>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let (queue, backend, lease) = (lane.queue, &lane.backend, lane.lease);
    let Leased { job, token } = leased;
    // A prefetched job may have waited for its slot: renew an aging lease before starting, and
    // never start a job whose lease is gone.
    if leased_at.elapsed() > lease / 3 {
        match backend.extend(queue, &job.id, &token, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(queue = %queue, job = %job.id, "prefetched job's lease expired before it started; skipping");
                return;
            }
            Err(e) => {
                tracing::warn!(queue = %queue, job = %job.id, error = %e, "lease renewal failed")
            }
        }
    }
    if let Some(started) = job.started_at {
        lane.metrics.picked_up(
            queue,
            (started - job.run_at.max(job.created_at)) as f64 / 1000.0,
        );
    }
    let started = Instant::now();
    // Polled inline (no extra task per job); a panic is caught and becomes a failed attempt, and
    // dropping the future cancels the run on timeout or a lost lease.
    let (task_job, handler) = (job.clone(), lane.handler.clone());
    let task =
        std::panic::AssertUnwindSafe(async move { handler.handle(&task_job).await }).catch_unwind();
    tokio::pin!(task);
    let mut renew = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
    let deadline = tokio::time::sleep(job.timeout);
    tokio::pin!(deadline);

    let result: Result<Value, JobError> = loop {
        tokio::select! {
            r = &mut task => break match r {
                Ok(r) => r,
                Err(panic) => Err(JobError::Retryable(format!("handler panicked: {}", panic_message(panic)))),
            },
            _ = &mut deadline => {
                break Err(JobError::Retryable(format!("timed out after {} ms", job.timeout.as_millis())));
            }
            _ = renew.tick() => match backend.extend(queue, &job.id, &token, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(queue = %queue, job = %job.id, "lease lost (reclaimed elsewhere); abandoning this run");
                    return;
                }
                Err(e) => tracing::warn!(queue = %queue, job = %job.id, error = %e, "lease renewal failed"),
            },
        }
    };
    lane.ran_for(started.elapsed());
    let secs = started.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(value) => {
            lane.metrics.completed(queue, secs);
            // The worker loop records it with its next fetch; the slot frees now.
            drop(slot);
            let c = Completion {
                id: job.id.clone(),
                token: token.clone(),
                result: value,
            };
            match done.send(c) {
                Ok(()) => return,
                Err(mpsc::error::SendError(c)) => Outcome::Completed(c.result),
            }
        }
        Err(err) => {
            let retry_in = match &err {
                JobError::Permanent(_) => None,
                JobError::Retryable(_) if job.attempts_made < job.max_attempts => {
                    Some(backoff_delay(job.backoff, job.attempts_made))
                }
                JobError::Retryable(_) => None,
            };
            lane.metrics.failed_attempt(queue, secs, retry_in.is_some());
            tracing::warn!(queue = %queue, job = %job.id, attempt = job.attempts_made, error = %err, retry = retry_in.is_some(), "job attempt failed");
            Outcome::Failed {
                // Job errors often quote another system's answer.
                error: crate::input::without_nul(&err.to_string()).into_owned(),
                retry_in,
            }
        }
    };
    // Recording the outcome is retried briefly; if it never lands, the lease expires and the job
    // runs again (at-least-once).
    let ends = matches!(outcome, Outcome::Failed { retry_in: None, .. });
    let record = || backend.finish(queue, &job.id, &token, job.attempts_made, outcome.clone());
    match record
        .retry(record_retries())
        .notify(|e, _| tracing::warn!(queue = %queue, job = %job.id, error = %e, "recording the outcome failed; retrying"))
        .await
    {
        Ok(true) => lane.trim.add(u64::from(ends)),
        Ok(false) => {
            tracing::warn!(queue = %queue, job = %job.id, "lease lost before the outcome was recorded")
        }
        Err(e) => {
            tracing::warn!(queue = %queue, job = %job.id, error = %e, "could not record the outcome; the job runs again after its lease")
        }
    }
}

/// The async runtime `smartbot worker` runs on: one thread per core but one, at least one. The
/// queue's work is short I/O-bound steps between the process and Redis or PostgreSQL, usually on
/// the same small machine; measured on 2 cores, a second async thread there mostly adds
/// cross-thread wake-ups and takes CPU from Redis (see the README's benchmarks). CPU-heavy work
/// (images) runs on the blocking pool either way. `TOKIO_WORKER_THREADS`, when set, wins.
/// `smartbot serve` runs on [`serve_runtime`] instead.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

/// The async runtime `smartbot serve` runs on: one thread per core (tokio's default, and
/// `TOKIO_WORKER_THREADS` wins). Serving is socket work that spreads over cores: one event to
/// 10,000 subscribers is 10,000 sends, and on 2 cores a second thread nearly halves that fan-out
/// (see the README's event benchmarks). A dedicated `smartbot worker` keeps [`runtime`].
pub fn serve_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
