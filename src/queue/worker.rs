//! Workers: one loop per queue that leases up to `concurrency` jobs, runs each handler in its own
//! task (so a panic is caught), extends the lease while it runs, enforces the job's timeout, and
//! records the outcome with exponential backoff for retries.
//!
//! Shutdown stops fetching and lets running jobs finish within the grace period; whatever is still
//! running then is abandoned and its lease expires, so another worker reclaims it. Nothing is lost.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{JobInfo, Leased, Outcome, QueueBackend, QueueName, Retention, backoff_delay, metrics};

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
    pub clean_interval: Duration,
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
            tasks.spawn(run_queue(
                q,
                backend.clone(),
                handler,
                config.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(maintain(
                q,
                backend.clone(),
                config.clone(),
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

async fn run_queue(
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let concurrency = config.concurrency_of(queue);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<()> = JoinSet::new();
    let mut error_backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        while running.try_join_next().is_some() {}
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = running.join_next() => continue,
            }
        }
        match backend.fetch(queue, free, config.lease).await {
            Ok(jobs) if jobs.is_empty() => {
                error_backoff = Duration::from_millis(50);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = backend.wait_for_work(queue, config.idle_wait) => {
                        if let Err(e) = r {
                            tracing::warn!(queue = %queue, error = %e, "waiting for work failed; retrying");
                            tokio::time::sleep(error_backoff).await;
                        }
                    }
                }
            }
            Ok(jobs) => {
                error_backoff = Duration::from_millis(50);
                for leased in jobs {
                    let permit = slots
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("semaphore is never closed");
                    let (backend, handler, lease) =
                        (backend.clone(), handler.clone(), config.lease);
                    running.spawn(async move {
                        run_one(queue, backend, handler, leased, lease).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, backoff_ms = error_backoff.as_millis() as u64, "fetch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    // Drain: running jobs get the grace period; the rest are reclaimed after their lease.
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(queue = %queue, left = running.len(), "grace period over; abandoning running jobs to lease expiry");
        running.abort_all();
    }
}

/// Stall recovery and retention for one queue.
async fn maintain(
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let mut stall = tokio::time::interval(config.stall_interval);
    let mut clean = tokio::time::interval(config.clean_interval);
    stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clean.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = stall.tick() => match backend.recover_stalled(queue).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(queue = %queue, jobs = n, "reclaimed stalled jobs"),
                Err(e) => tracing::warn!(queue = %queue, error = %e, "stall recovery failed"),
            },
            _ = clean.tick() => if let Err(e) = backend.clean(queue, config.retention).await {
                tracing::warn!(queue = %queue, error = %e, "retention clean-up failed");
            },
        }
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
    queue: QueueName,
    backend: Arc<dyn QueueBackend>,
    handler: Arc<dyn JobHandler>,
    leased: Leased,
    lease: Duration,
) {
    let Leased { job, token } = leased;
    if let Some(started) = job.started_at {
        metrics::global().picked_up(
            queue,
            (started - job.run_at.max(job.created_at)) as f64 / 1000.0,
        );
    }
    let started = Instant::now();
    let task_job = job.clone();
    let mut task = tokio::spawn(async move { handler.handle(&task_job).await });
    let mut renew = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
    let deadline = tokio::time::sleep(job.timeout);
    tokio::pin!(deadline);

    let result: Result<Value, JobError> = loop {
        tokio::select! {
            r = &mut task => break match r {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(JobError::Retryable(format!("handler panicked: {}", panic_message(e.into_panic())))),
                Err(e) => Err(JobError::Retryable(format!("handler task ended: {e}"))),
            },
            _ = &mut deadline => {
                task.abort();
                break Err(JobError::Retryable(format!("timed out after {} ms", job.timeout.as_millis())));
            }
            _ = renew.tick() => match backend.extend(queue, &job.id, &token, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    task.abort();
                    tracing::warn!(queue = %queue, job = %job.id, "lease lost (reclaimed elsewhere); abandoning this run");
                    return;
                }
                Err(e) => tracing::warn!(queue = %queue, job = %job.id, error = %e, "lease renewal failed"),
            },
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(value) => {
            metrics::global().completed(queue, secs);
            Outcome::Completed(value)
        }
        Err(err) => {
            let retry_in = match &err {
                JobError::Permanent(_) => None,
                JobError::Retryable(_) if job.attempts_made < job.max_attempts => {
                    Some(backoff_delay(job.backoff, job.attempts_made))
                }
                JobError::Retryable(_) => None,
            };
            metrics::global().failed_attempt(queue, secs, retry_in.is_some());
            tracing::warn!(queue = %queue, job = %job.id, attempt = job.attempts_made, error = %err, retry = retry_in.is_some(), "job attempt failed");
            Outcome::Failed {
                error: err.to_string(),
                retry_in,
            }
        }
    };
    // Recording the outcome is retried briefly; if it never lands, the lease expires and the job
    // runs again (at-least-once).
    for attempt in 0..5u32 {
        match backend
            .finish(queue, &job.id, &token, job.attempts_made, outcome.clone())
            .await
        {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(queue = %queue, job = %job.id, "lease lost before the outcome was recorded");
                return;
            }
            Err(e) => {
                tracing::warn!(queue = %queue, job = %job.id, error = %e, "recording the outcome failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}
