//! The durable job queue: four queues, two backends behind two traits ([`QueueBackend`], the
//! worker protocol, and [`QueueControl`], inspection and admin commands), and [`admin`], the
//! service operators reach through GraphQL.
//!
//! * [`redis::RedisQueue`] (when `REDIS_URL` is set): every state change is one Lua script over
//!   keys that share the queue's hash tag; see that module for the design and why.
//! * [`sql::SqlQueue`] (embedded default): a `jobs` table in the app database, claimed with
//!   `FOR UPDATE SKIP LOCKED` on PostgreSQL and by SQLite's single writer.
//!
//! Both give the same semantics, which one behavioural test suite checks against each:
//!
//! * **At-least-once.** A fetched job is *leased* to one worker for `lease` (extended while the
//!   handler runs). A worker that dies stops extending; after the lease the job is reclaimed and
//!   runs again, counting the lost run as an attempt. Every lease carries a fresh token, so a
//!   worker that lost its lease cannot complete or fail the job afterwards.
//! * `attempts` counts total tries (as in BullMQ); failures back off exponentially with jitter.
//! * A caller-chosen job id makes enqueue idempotent: the same id twice gives one job.
//! * Completed and failed jobs are kept by count and by age, then trimmed.
//!
//! Handlers must therefore be idempotent: key side effects by the job id.

pub mod admin;
pub mod metrics;
pub mod redis;
pub mod sql;
pub mod worker;

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The four queues. GraphQL shows them as `MEDIA_PROCESSING` …; storage and REST use the seed's
/// lowercase names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    MediaProcessing,
    MessageSending,
    OrderProcessing,
    WebhookDelivery,
}

impl QueueName {
    pub const ALL: [QueueName; 4] = [
        QueueName::MediaProcessing,
        QueueName::MessageSending,
        QueueName::OrderProcessing,
        QueueName::WebhookDelivery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::MediaProcessing => "media_processing",
            QueueName::MessageSending => "message_sending",
            QueueName::OrderProcessing => "order_processing",
            QueueName::WebhookDelivery => "webhook_delivery",
        }
    }

    /// The seed's per-queue concurrency.
    pub fn default_concurrency(self) -> usize {
        match self {
            QueueName::MediaProcessing => 3,
            QueueName::MessageSending => 5,
            QueueName::OrderProcessing => 2,
            QueueName::WebhookDelivery => 5,
        }
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        QueueName::ALL
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::validation(
                    "queue",
                    format!(
                        "unknown queue {s:?}; expected one of: media_processing, message_sending, order_processing, webhook_delivery"
                    ),
                )
            })
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, async_graphql::Enum,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn rank(self) -> i16 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    pub fn from_rank(r: i64) -> Self {
        match r {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Normal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Waiting,
    Delayed,
    Active,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Delayed => "delayed",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "waiting" => JobState::Waiting,
            "delayed" => JobState::Delayed,
            "active" => JobState::Active,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            other => {
                return Err(Error::Internal(format!(
                    "unknown job state {other:?} in storage"
                )));
            }
        })
    }
}

/// Options a caller may set on a job. Every field has the seed's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOptions {
    /// Total tries, as in BullMQ (default 3, 1..=100).
    pub attempts: Option<u32>,
    /// Base of the exponential backoff in milliseconds (default 1000).
    pub backoff_ms: Option<u64>,
    pub priority: Option<Priority>,
    /// Run no sooner than this many milliseconds from now.
    pub delay_ms: Option<u64>,
    /// Run no sooner than this time (exclusive with `delay_ms`).
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Per-attempt timeout in milliseconds (default 30 000).
    pub timeout_ms: Option<u64>,
    /// A caller-chosen id: enqueueing the same id again returns the existing job.
    pub job_id: Option<String>,
}

pub const MAX_ATTEMPTS: u32 = 100;
/// A job id as `jobId` (or an admin's `id`) may give it: 1-128 of `A-Z a-z 0-9 - _ . :`
/// (generated ids are UUIDs, which fit). Anything else names no job and is VALIDATION on `field`.
pub fn check_job_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(
            field,
            format!("{field} must be 1-128 characters of A-Z a-z 0-9 - _ . :"),
        ))
    }
}

pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A validated job, ready for a backend.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub name: String,
    /// The payload as JSON text (validated, size-checked).
    pub payload: String,
    pub priority: Priority,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    /// Milliseconds from now before the job may run (0 = now).
    pub delay: Duration,
}

impl NewJob {
    /// Parses and checks everything from outside; nothing is enqueued when this fails.
    pub fn new(name: &str, payload: &Value, opts: &JobOptions) -> Result<Self> {
        let payload = serde_json::to_string(payload).map_err(Error::internal)?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge(format!(
                "job payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        let max_attempts = opts.attempts.unwrap_or(3);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::validation(
                "attempts",
                format!("attempts must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        let backoff = Duration::from_millis(opts.backoff_ms.unwrap_or(1000));
        if backoff > Duration::from_secs(24 * 3600) {
            return Err(Error::validation(
                "backoffMs",
                "backoffMs must be at most one day",
            ));
        }
        let timeout = Duration::from_millis(opts.timeout_ms.unwrap_or(30_000));
        if timeout < Duration::from_millis(10) || timeout > MAX_TIMEOUT {
            return Err(Error::validation(
                "timeoutMs",
                "timeoutMs must be between 10 ms and one hour",
            ));
        }
        let delay = match (opts.delay_ms, opts.run_at) {
            (Some(_), Some(_)) => {
                return Err(Error::validation(
                    "delayMs",
                    "give delayMs or runAt, not both",
                ));
            }
            (Some(ms), None) => Duration::from_millis(ms),
            (None, Some(at)) => (at - crate::db::now()).to_std().unwrap_or(Duration::ZERO),
            (None, None) => Duration::ZERO,
        };
        if delay > MAX_DELAY {
            return Err(Error::validation(
                if opts.run_at.is_some() {
                    "runAt"
                } else {
                    "delayMs"
                },
                "a job may be delayed by at most one year",
            ));
        }
        let id = match &opts.job_id {
            Some(id) => {
                check_job_id("jobId", id)?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        Ok(Self {
            id,
            name: name.to_owned(),
            payload,
            priority: opts.priority.unwrap_or_default(),
            max_attempts,
            backoff,
            timeout,
            delay,
        })
    }
}

/// One failed attempt, kept in the job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, async_graphql::SimpleObject)]
#[graphql(complex)]
pub struct AttemptError {
    pub attempt: u32,
    pub error: String,
    /// Epoch milliseconds in storage; GraphQL shows a DateTime (an Int is only 32-bit).
    #[graphql(skip)]
    pub at: i64,
}

#[async_graphql::ComplexObject]
impl AttemptError {
    /// When the attempt failed.
    async fn at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.at).unwrap_or_default()
    }
}

/// Everything known about a job.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub queue: QueueName,
    pub id: String,
    pub name: String,
    pub payload: Value,
    pub state: JobState,
    pub priority: Priority,
    pub attempts_made: u32,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    pub errors: Vec<AttemptError>,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub run_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobInfo {
    /// Whether the run this job is on is its last attempt (`attempts_made` counts the run).
    pub fn on_last_attempt(&self) -> bool {
        self.attempts_made >= self.max_attempts
    }
}

/// A job handed to one worker, with the token that proves the lease.
#[derive(Debug, Clone)]
pub struct Leased {
    pub job: JobInfo,
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub waiting: u64,
    pub active: u64,
    pub delayed: u64,
    pub completed: u64,
    pub failed: u64,
    pub paused: bool,
}

/// How many finished jobs to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub completed_count: u64,
    pub completed_age: Duration,
    pub failed_count: u64,
    pub failed_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_count: 1000,
            completed_age: Duration::from_secs(24 * 3600),
            failed_count: 5000,
            failed_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a worker reports after running a job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed(Value),
    /// Failed this attempt; retry after the delay, or end in failed when `None`.
    Failed {
        error: String,
        retry_in: Option<Duration>,
    },
}

/// A successful run waiting to be recorded; workers batch these.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub token: String,
    pub result: Value,
}

/// A failed job's place in the failed list: when it failed (epoch ms), then its id. A page
/// starts after a key, not at an offset, so jobs that fail between two pages shift nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedKey {
    pub finished_at: i64,
    pub id: String,
}

/// What operators and producers ask of a queue: inspection and the admin commands. Served by the
/// same storage as [`QueueBackend`]; [`admin`] wraps it with authorization and paging.
#[async_trait]
pub trait QueueControl: Send + Sync + 'static {
    async fn get(&self, queue: QueueName, id: &str) -> Result<Option<JobInfo>>;
    async fn counts(&self, queue: QueueName) -> Result<StateCounts>;
    /// Failed jobs, most recently failed first (ties: greater id first), after `after`.
    async fn list_failed(
        &self,
        queue: QueueName,
        after: Option<&FailedKey>,
        limit: u64,
    ) -> Result<Vec<JobInfo>>;
    /// Failed -> waiting with a fresh set of attempts. NOT_FOUND / CONFLICT otherwise.
    async fn retry(&self, queue: QueueName, id: &str) -> Result<()>;
    /// Deletes a job that is not active. Returns whether it existed.
    async fn remove(&self, queue: QueueName, id: &str) -> Result<bool>;
    async fn set_paused(&self, queue: QueueName, paused: bool) -> Result<()>;
    /// One round trip to each service this backend needs beyond the app database, named as
    /// `/ready` reports it (empty when the queue lives in the app database, which `/ready`
    /// checks anyway).
    async fn readiness(&self) -> Vec<(&'static str, Result<()>)>;
    fn kind(&self) -> &'static str;
}

/// The worker protocol: enqueue, lease, renew, record, reclaim and trim. All time comparisons use
/// the backend's clock (Redis TIME, or the database host's clock through the app) so workers
/// agree. Every backend also serves [`QueueControl`], so one handle (`Arc<dyn QueueBackend>`)
/// gives both.
#[async_trait]
pub trait QueueBackend: QueueControl {
    /// Adds a job; returns `false` when a job with that id already existed (nothing changed).
    async fn enqueue(&self, queue: QueueName, job: NewJob) -> Result<bool>;
    /// Adds many jobs in as few round trips as the backend can; one flag per job as `enqueue`.
    async fn enqueue_many(&self, queue: QueueName, jobs: Vec<NewJob>) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.enqueue(queue, job).await?);
        }
        Ok(out)
    }
    /// Leases up to `n` ready jobs (none while paused).
    async fn fetch(&self, queue: QueueName, n: usize, lease: Duration) -> Result<Vec<Leased>>;
    /// Records `done`, then leases up to `n` ready jobs, in as few round trips as the backend
    /// can (Redis: one script). Returns how many completions landed (the others had lost their
    /// lease) and the new leases.
    async fn complete_and_fetch(
        &self,
        queue: QueueName,
        done: &[Completion],
        n: usize,
        lease: Duration,
    ) -> Result<(usize, Vec<Leased>)> {
        let mut landed = 0;
        for c in done {
            if self
                .finish(
                    queue,
                    &c.id,
                    &c.token,
                    0,
                    Outcome::Completed(c.result.clone()),
                )
                .await?
            {
                landed += 1;
            }
        }
        Ok((landed, self.fetch(queue, n, lease).await?))
    }
    /// Extends a lease; `false` when the lease was lost (reclaimed by someone else).
    async fn extend(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool>;
    /// Records the outcome of a leased run; `false` when the lease was lost.
    async fn finish(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<bool>;
    /// Returns expired leases to waiting (or failed when out of attempts). Returns how many.
    async fn recover_stalled(&self, queue: QueueName) -> Result<u64>;
    /// Blocks until work may be ready or `timeout` passes. Spurious wake-ups are fine.
    async fn wait_for_work(&self, queue: QueueName, timeout: Duration) -> Result<()>;
    /// Trims finished jobs beyond the retention. Returns how many were removed.
    async fn clean(&self, queue: QueueName, retention: Retention) -> Result<u64>;
    /// Returns a leased job that never started to waiting, without using an attempt
    /// (prefetched jobs at shutdown). `false` when the lease was already lost.
    async fn release(&self, queue: QueueName, id: &str, token: &str) -> Result<bool>;
    /// How many jobs beyond `concurrency` a worker may hold leased, ready for the next free
    /// slot. Prefetching lets one round trip record a batch of completions and refill them.
    fn prefetch(&self, concurrency: usize) -> usize {
        let _ = concurrency;
        0
    }
    /// The most a worker may prefetch while its jobs are short (it grows from `prefetch` so
    /// that a prefetched job is still expected to start within a quarter of its lease).
    fn max_prefetch(&self, concurrency: usize) -> usize {
        self.prefetch(concurrency)
    }
    /// How many independent fetch loops a worker should split `concurrency` into. Round trips of
    /// separate loops overlap; one loop batches more per trip.
    fn lanes(&self, concurrency: usize) -> usize {
        let _ = concurrency;
        1
    }
}

/// Exponential backoff with full jitter in [base·2^(n-1)/2, base·2^(n-1)], capped at one hour.
pub fn backoff_delay(base: Duration, attempts_made: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts_made.saturating_sub(1).min(20));
    let capped = exp.min(Duration::from_secs(3600));
    let half = capped / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The queue as the rest of the app sees it: validated enqueue helpers over a backend.
#[derive(Clone)]
pub struct JobQueue {
    backend: Arc<dyn QueueBackend>,
    metrics: Arc<metrics::QueueMetrics>,
}

impl JobQueue {
    /// A queue over `backend`, with its own metrics registry (give it to this app's workers).
    pub fn new(backend: Arc<dyn QueueBackend>) -> Self {
        Self {
            backend,
            metrics: Arc::new(metrics::QueueMetrics::new()),
        }
    }

    pub fn backend(&self) -> &Arc<dyn QueueBackend> {
        &self.backend
    }

    /// The operator commands, for one request's caller (authorization happens there).
    pub fn admin<'a>(&'a self, actor: &'a crate::auth::Actor) -> admin::QueueAdmin<'a> {
        admin::QueueAdmin::new(self, actor)
    }

    /// What this queue and the workers given the same registry did; served at `/metrics`.
    pub fn metrics(&self) -> &Arc<metrics::QueueMetrics> {
        &self.metrics
    }

    /// Enqueues a job; returns its id (the existing one when `jobId` was already used).
    pub async fn enqueue(
        &self,
        queue: QueueName,
        name: &str,
        payload: &Value,
        opts: &JobOptions,
    ) -> Result<String> {
        let job = NewJob::new(name, payload, opts)?;
        let id = job.id.clone();
        let created = self.backend.enqueue(queue, job).await?;
        self.metrics.enqueued(queue, created);
        Ok(id)
    }

    /// Enqueues many jobs of one name at once (like BullMQ's addBulk); all are validated first,
    /// so a bad one enqueues nothing. Returns their ids in order.
    pub async fn enqueue_bulk(
        &self,
        queue: QueueName,
        name: &str,
        jobs: &[(Value, JobOptions)],
    ) -> Result<Vec<String>> {
        let jobs = jobs
            .iter()
            .map(|(payload, opts)| NewJob::new(name, payload, opts))
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let created = self.backend.enqueue_many(queue, jobs).await?;
        for c in created {
            self.metrics.enqueued(queue, c);
        }
        Ok(ids)
    }

    /// The seed's `queueMediaProcessing(id, path, {sizes, quality})`.
    pub async fn queue_media_processing(
        &self,
        media_id: &str,
        path: &str,
        opts: Value,
    ) -> Result<String> {
        let job_opts = JobOptions {
            job_id: None,
            attempts: Some(crate::jobs::media_processing::ATTEMPTS),
            ..Default::default()
        };
        self.enqueue(
            QueueName::MediaProcessing,
            "process_media",
            &serde_json::json!({ "mediaId": media_id, "path": path, "options": opts }),
            &job_opts,
        )
        .await
    }

    /// The seed's `queueMessageSending(to, message, options)`.
    pub async fn queue_message_sending(
        &self,
        to: &str,
        body: Value,
        opts: &JobOptions,
    ) -> Result<String> {
        if to.trim().is_empty() {
            return Err(Error::validation("to", "a recipient is required"));
        }
        self.enqueue(
            QueueName::MessageSending,
            "send_message",
            &serde_json::json!({ "to": to, "message": body }),
            opts,
        )
        .await
    }

    /// The seed's `queueOrderProcessing(orderId, data)`.
    pub async fn queue_order_processing(&self, order_id: &str, data: Value) -> Result<String> {
        self.enqueue(
            QueueName::OrderProcessing,
            "process_order",
            &serde_json::json!({ "orderId": order_id, "data": data }),
            &JobOptions::default(),
        )
        .await
    }

    /// One signed delivery of one event to one endpoint; the job id makes redelivery idempotent.
    pub async fn queue_webhook_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        event: Value,
    ) -> Result<String> {
        let opts = JobOptions {
            job_id: Some(format!("{webhook_id}:{event_id}")),
            attempts: Some(8),
            ..Default::default()
        };
        self.enqueue(
            QueueName::WebhookDelivery,
            "deliver_webhook",
            &serde_json::json!({ "webhookId": webhook_id, "eventId": event_id, "event": event }),
            &opts,
        )
        .await
    }

    pub async fn job_status(&self, queue: QueueName, id: &str) -> Result<JobInfo> {
        self.backend
            .get(queue, id)
            .await?
            .ok_or_else(|| Error::not_found(format_args!("job {id} in {queue}")))
    }

    pub async fn queue_stats(&self, queue: QueueName) -> Result<StateCounts> {
        self.backend.counts(queue).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_are_validated() {
        let ok = NewJob::new("n", &json!({"a":1}), &JobOptions::default()).unwrap();
        assert_eq!(ok.max_attempts, 3);
        assert_eq!(ok.backoff, Duration::from_secs(1));
        let bad = |o: JobOptions| {
            NewJob::new("n", &json!({}), &o)
                .unwrap_err()
                .field()
                .map(str::to_owned)
        };
        assert_eq!(
            bad(JobOptions {
                attempts: Some(0),
                ..Default::default()
            })
            .as_deref(),
            Some("attempts")
        );
        assert_eq!(
            bad(JobOptions {
                job_id: Some("a b".into()),
                ..Default::default()
            })
            .as_deref(),
            Some("jobId")
        );
        assert_eq!(
            bad(JobOptions {
                timeout_ms: Some(0),
                ..Default::default()
            })
            .as_deref(),
            Some("timeoutMs")
        );
        let big = json!({ "x": "y".repeat(MAX_PAYLOAD_BYTES) });
        assert!(matches!(
            NewJob::new("n", &big, &JobOptions::default()),
            Err(Error::PayloadTooLarge(_))
        ));
        assert!("nope".parse::<QueueName>().is_err());
        assert_eq!(
            "Media_Processing".parse::<QueueName>().unwrap(),
            QueueName::MediaProcessing
        );
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for n in 1..6 {
            let full = Duration::from_secs(1 << (n - 1));
            // Many samples: every one inside [full/2, full], and spread across that range
            // (a delay without jitter gives one value and fails here).
            let samples: Vec<Duration> = (0..400)
                .map(|_| backoff_delay(Duration::from_secs(1), n))
                .collect();
            for d in &samples {
                assert!(*d >= full / 2 && *d <= full, "attempt {n}: {d:?}");
            }
            let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
            assert!(
                *hi - *lo >= full / 4,
                "attempt {n}: delays span only {lo:?}..{hi:?}; jitter should spread them over {:?}..{full:?}",
                full / 2
            );
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(
                distinct.len() > 300,
                "attempt {n}: only {} distinct delays",
                distinct.len()
            );
        }
        assert!(backoff_delay(Duration::from_secs(1), 40) <= Duration::from_secs(3600));
    }
}
