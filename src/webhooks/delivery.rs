//! Delivery: from a committed event to signed POSTs, with retries, logs and automatic disabling.
//!
//! **The outbox.** `events::service::record` writes the event row in the caller's transaction
//! with `webhooks_dispatched_at` NULL: that row is the durable intent. After commit,
//! `Events::publish` calls [`Dispatcher::dispatch`], which enqueues one `webhook_delivery` job per
//! matching enabled endpoint and then marks the row dispatched (a burst's marks together, within
//! a quarter of the sweep interval, or sooner when the history trim asks). A process that dies
//! in between leaves the row NULL, and [`spawn_sweeper`] (in every serve and worker process)
//! dispatches it again. The queue may be Redis while events live in SQL: nothing here needs a
//! transaction that spans both.
//!
//! **Idempotence.** Dispatching twice is harmless: job ids are `{webhook}:{event}:{attempt}`, so
//! the queue keeps one job per attempt, and an attempt whose log row exists (or whose event
//! already succeeded on that endpoint) is skipped. The receiver sees `webhook-id` = event id on
//! every attempt, so the rare at-least-once duplicate (a worker killed after sending, before
//! logging) is deduplicated there, as the spec intends.
//!
//! **Retries: one job per attempt.** Each attempt is its own job, delayed by the schedule
//! (`WEBHOOK_RETRY_SCHEDULE`, ±20 % jitter) or by the receiver's `Retry-After` when that is later.
//! The queue's own retries (5, 1 s backoff) only cover our side failing: a lost lease (worker
//! killed) or the database being unreachable. So the HTTP schedule can span hours without tying
//! up a lease, and every attempt has its own log row and `nextRetryAt`.
//!
//! **Disabling.** `410 Gone` disables the endpoint at once. An endpoint whose every attempt has
//! failed for `WEBHOOK_DISABLE_AFTER` (since `failing_since`, reset by any success) is disabled
//! with the reason recorded. Pending attempts of a disabled or deleted endpoint end quietly.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{WebhookRuntime, signing};
use crate::{
    AppState,
    auth::RequestContext,
    crypto::Cipher,
    db::{BatchInserter, SeenGeneration},
    error::{Error, Result},
    events::{Event, EventType, service::Outbox},
    queue::{JobInfo, JobOptions, JobQueue, QueueName, worker::JobError},
};
use entity::{
    WebhookAttemptStatus, event,
    webhook::{self, Column as W, Entity as Webhooks},
    webhook_log::{self, Column as L, Entity as Logs},
};

/// A response body is kept up to this many bytes in the log.
pub const MAX_LOGGED_BODY: usize = 4096;
/// A `Retry-After` is honoured up to this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Queue-level tries of one attempt job: they cover our failures (lost lease, database down),
/// never the receiver's.
const JOB_ATTEMPTS: u32 = 5;
const JOB_NAME: &str = "deliver_webhook";
const SWEEP_BATCH: u64 = 500;

/// The payload of one attempt job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// 1-based; a scheduled chain stops at the schedule's length.
    pub attempt: u32,
    /// The event envelope as sent: the same bytes on every attempt.
    pub body: String,
    /// A redelivery, recovery or test send: one attempt, sent even when the event already
    /// succeeded, never followed by scheduled retries.
    #[serde(default)]
    pub manual: bool,
    /// A manual attempt queued at most once by its number (a recovery: recoveries at once, a
    /// double click say, send each event once, not once per call). Other manual attempts (a
    /// redelivery, a test send) are each a send of their own.
    #[serde(skip)]
    pub once: bool,
}

impl Attempt {
    fn job_id(&self) -> String {
        if self.manual && self.once {
            format!("{}:{}:r{}", self.webhook_id, self.event_id, self.attempt)
        } else if self.manual {
            format!(
                "{}:{}:m{}",
                self.webhook_id,
                self.event_id,
                Uuid::now_v7().simple()
            )
        } else {
            format!("{}:{}:{}", self.webhook_id, self.event_id, self.attempt)
        }
    }
}

fn job_options(a: &Attempt, delay: Duration, rt: &WebhookRuntime) -> JobOptions {
    JobOptions {
        job_id: Some(a.job_id()),
        attempts: Some(JOB_ATTEMPTS),
        backoff_ms: Some(1000),
        delay_ms: (!delay.is_zero()).then_some(delay.as_millis() as u64),
        // The HTTP timeout plus room for pacing and the log write.
        timeout_ms: Some((rt.timeout + Duration::from_secs(60)).as_millis() as u64),
        ..Default::default()
    }
}

pub(crate) async fn enqueue(
    queue: &JobQueue,
    rt: &WebhookRuntime,
    attempts: &[(Attempt, Duration)],
) -> Result<Vec<String>> {
    if attempts.is_empty() {
        return Ok(vec![]);
    }
    let jobs: Vec<(Value, JobOptions)> = attempts
        .iter()
        .map(|(a, delay)| {
            Ok((
                serde_json::to_value(a).map_err(Error::internal)?,
                job_options(a, *delay, rt),
            ))
        })
        .collect::<Result<_>>()?;
    queue
        .enqueue_bulk(QueueName::WebhookDelivery, JOB_NAME, &jobs)
        .await
}

/// Whether an endpoint subscribes to `kind` (an empty list means every type).
pub fn subscribes(w: &webhook::Model, kind: EventType) -> bool {
    match w.event_types.as_array() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t.as_str() == Some(kind.as_str())),
        _ => true,
    }
}

/// An event handed to the fan-out batcher, with the endpoint generation its INSERT saw.
type Handed = (Event, Option<SeenGeneration>);

/// The `webhook_delivery` fan-out of committed events: the outbox's consumer.
///
/// [`Outbox::dispatch`] hands the events to one task per process that fans them out in batches:
/// a burst costs one endpoints query and one bulk enqueue per batch, not per event, and the
/// outbox marks of everything fanned out within [`MARK_LINGER`] go in one UPDATE. The hand-off
/// never blocks the emitter: when the task's buffer is full (or the process dies before the
/// batch is done), the rows stay undispatched and [`spawn_sweeper`] fans them out
/// after `WEBHOOK_SWEEP_INTERVAL`. Nothing is lost; only that path is slower.
#[derive(Clone)]
pub struct Dispatcher {
    db: DatabaseConnection,
    queue: JobQueue,
    runtime: Arc<WebhookRuntime>,
    batcher: Arc<std::sync::OnceLock<mpsc::Sender<Handed>>>,
    /// Events fanned out whose outbox mark is still to be written (shared by the batch task
    /// and [`Outbox::flush`]).
    unmarked: Arc<std::sync::Mutex<Vec<Uuid>>>,
}

/// Events waiting for the batch task, per process. Beyond this the sweeper takes over.
const DISPATCH_BUFFER: usize = 20_000;
/// Events fanned out in one batch at most.
const DISPATCH_BATCH: usize = 500;
/// Batches being fanned out at once at most.
const DISPATCH_CONCURRENCY: usize = 4;
/// Events marked dispatched in one UPDATE at most.
const MARK_BATCH: usize = 500;
/// The longest a fanned-out event waits for its mark (see [`Dispatcher::mark_linger`]).
const MARK_LINGER: Duration = Duration::from_millis(250);

impl Dispatcher {
    pub fn new(db: DatabaseConnection, queue: JobQueue, runtime: Arc<WebhookRuntime>) -> Self {
        Self {
            db,
            queue,
            runtime,
            batcher: Arc::new(std::sync::OnceLock::new()),
            unmarked: Arc::default(),
        }
    }

    /// The enabled endpoints of these merchants, and the platform-wide ones (the endpoint
    /// cache: the generation, read unless `seen` by the events' INSERTs, and a query only for
    /// merchants it does not hold).
    async fn endpoints_for(
        &self,
        events: &[Event],
        seen: Option<SeenGeneration>,
    ) -> Result<Vec<Arc<webhook::Model>>> {
        self.runtime
            .endpoints
            .for_merchants(
                &self.db,
                events.iter().map(|e| e.merchant_id.as_str()),
                seen,
            )
            .await
    }

    /// Fans out `events` now: enqueues one first-attempt job per matching endpoint, then marks
    /// the rows dispatched. Idempotent (see the module doc).
    pub async fn dispatch_now(&self, events: &[Event]) -> Result<()> {
        self.fan_out(events, None).await?;
        self.mark_dispatched(events.iter().map(|e| e.id)).await
    }

    /// Enqueues one first-attempt job per matching endpoint of each event.
    async fn fan_out(&self, events: &[Event], seen: Option<SeenGeneration>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let endpoints = self.endpoints_for(events, seen).await?;
        let first = self.runtime.schedule.first().copied().unwrap_or_default();
        let mut attempts = Vec::new();
        for e in events {
            let mut body = None;
            for w in endpoints.iter().filter(|w| {
                w.merchant_id.as_deref().is_none_or(|m| m == e.merchant_id) && subscribes(w, e.kind)
            }) {
                let body = match &body {
                    Some(b) => String::clone(b),
                    None => body
                        .insert(serde_json::to_string(e).map_err(Error::internal)?)
                        .clone(),
                };
                let a = Attempt {
                    webhook_id: w.id,
                    event_id: e.id,
                    event_type: e.kind.as_str().to_owned(),
                    attempt: 1,
                    body,
                    manual: false,
                    once: false,
                };
                attempts.push((a, jitter(first)));
            }
        }
        enqueue(&self.queue, &self.runtime, &attempts).await?;
        Ok(())
    }

    /// Marks events whose fan-out the queue now carries, so the sweeper leaves them alone.
    async fn mark_dispatched(&self, ids: impl IntoIterator<Item = Uuid>) -> Result<()> {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        for chunk in ids.chunks(MARK_BATCH) {
            event::Entity::update_many()
                .col_expr(
                    event::Column::WebhooksDispatchedAt,
                    Expr::value(Some(crate::db::now())),
                )
                .filter(event::Column::Id.is_in(chunk.iter().copied()))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// After one batch of the task was fanned out: queues its marks, due within `linger` (at
    /// once when a whole UPDATE's worth is waiting).
    fn fanned_out(
        &self,
        batch: &[Event],
        result: Result<()>,
        due: &mut Option<tokio::time::Instant>,
        linger: Duration,
    ) {
        match result {
            Ok(()) => {
                let waiting = {
                    let mut unmarked = self.unmarked.lock().unwrap_or_else(|p| p.into_inner());
                    unmarked.extend(batch.iter().map(|e| e.id));
                    unmarked.len()
                };
                let now = tokio::time::Instant::now();
                *due = Some(if waiting >= MARK_BATCH {
                    now
                } else {
                    due.unwrap_or(now + linger)
                });
            }
            Err(e) => tracing::warn!(
                error = %e,
                count = batch.len(),
                "webhook fan-out deferred to the sweeper"
            ),
        }
    }

    /// Writes the marks of everything fanned out so far. If the UPDATE fails the rows stay
    /// unmarked, and the sweeper dispatches them again (harmlessly).
    async fn flush_marks(&self) -> Result<()> {
        let ids = std::mem::take(&mut *self.unmarked.lock().unwrap_or_else(|p| p.into_inner()));
        self.mark_dispatched(ids).await
    }

    /// How long a fanned-out event may wait for its mark: a fraction of the sweep interval, so
    /// the sweeper (which takes rows older than one interval) never sees it unmarked.
    fn mark_linger(&self) -> Duration {
        (self.runtime.sweep_interval / 4).min(MARK_LINGER)
    }

    /// Writes the marks of everything fanned out so far, in a task of its own so that no
    /// fan-out waits for the UPDATE.
    fn flush_marks_later(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.flush_marks().await {
                // Left to the sweeper, which dispatches them again (harmlessly).
                tracing::warn!(error = %e, "marking webhook fan-out as dispatched failed");
            }
        });
    }

    /// This process's batch task, started on first use (on the caller's runtime).
    ///
    /// Fan-out is immediate: events are taken as they come, in batches of whatever arrived
    /// meanwhile, with up to [`DISPATCH_CONCURRENCY`] batches in flight, so an event does not
    /// wait for the batch ahead of it to be enqueued. The marks are written together, at most
    /// `mark_linger` later (one UPDATE for a burst instead of one commit per batch). If the
    /// process dies before the mark, the sweeper dispatches the event again, which the job ids
    /// make harmless.
    fn batcher(&self) -> &mpsc::Sender<Handed> {
        self.batcher.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel(DISPATCH_BUFFER);
            let this = Dispatcher {
                batcher: Arc::new(std::sync::OnceLock::new()),
                ..self.clone()
            };
            tokio::spawn(async move {
                let linger = this.mark_linger();
                let mut batch = Vec::with_capacity(DISPATCH_BATCH);
                let mut running = futures::stream::FuturesUnordered::new();
                let mut due: Option<tokio::time::Instant> = None;
                let mut open = true;
                while open || !running.is_empty() {
                    tokio::select! {
                        n = rx.recv_many(&mut batch, DISPATCH_BATCH),
                            if open && running.len() < DISPATCH_CONCURRENCY =>
                        {
                            open = n > 0;
                            if !batch.is_empty() {
                                let batch = std::mem::replace(
                                    &mut batch,
                                    Vec::with_capacity(DISPATCH_BATCH),
                                );
                                let this = this.clone();
                                running.push(async move {
                                    let seen = SeenGeneration::newest_of_all(
                                        batch.iter().map(|(_, seen)| *seen),
                                    );
                                    let batch: Vec<Event> =
                                        batch.into_iter().map(|(e, _)| e).collect();
                                    let result = this.fan_out(&batch, seen).await;
                                    (batch, result)
                                });
                            }
                        }
                        Some((batch, result)) = futures::StreamExt::next(&mut running),
                            if !running.is_empty() =>
                        {
                            this.fanned_out(&batch, result, &mut due, linger);
                        }
                        _ = sleep_until(due), if due.is_some() => {}
                    }
                    if due.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        due = None;
                        this.flush_marks_later();
                    }
                }
                if due.is_some() {
                    this.flush_marks_later();
                }
            });
            tx
        })
    }
}

#[async_trait]
impl Outbox for Dispatcher {
    async fn dispatch(&self, events: &[Event], seen: Option<SeenGeneration>) -> Result<()> {
        let tx = self.batcher();
        for e in events {
            if let Err(err) = tx.try_send((e.clone(), seen)) {
                // Full, or the task is gone with its runtime: the sweeper dispatches the row.
                tracing::debug!(event = %e.id, error = %err, "webhook fan-out left to the sweeper");
            }
        }
        Ok(())
    }

    fn generation(&self) -> Option<&'static str> {
        Some(super::endpoints::GENERATION)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_marks().await
    }
}

/// Sleeps until `at`; never wakes when there is nothing due.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// ±20 %, so retries of a burst do not arrive together.
fn jitter(d: Duration) -> Duration {
    if d.is_zero() {
        d
    } else {
        d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }
}

/// Dispatches events whose fan-out a crash interrupted (older than one sweep interval, so the
/// normal path is not raced without need; racing it would be harmless). Returns how many.
pub async fn sweep_once(dispatcher: &Dispatcher) -> Result<usize> {
    let cutoff = crate::db::now()
        - chrono::Duration::from_std(dispatcher.runtime.sweep_interval).unwrap_or_default();
    let rows = event::Entity::find()
        .filter(event::Column::WebhooksDispatchedAt.is_null())
        .filter(event::Column::OccurredAt.lt(cutoff))
        .order_by_asc(event::Column::OccurredAt)
        .limit(SWEEP_BATCH)
        .all(&dispatcher.db)
        .await?;
    let events: Vec<Event> = rows
        .into_iter()
        .filter_map(|m| {
            Some(Event {
                id: m.id,
                kind: m.event_type.parse().ok()?,
                merchant_id: m.merchant_id,
                occurred_at: m.occurred_at,
                payload: m.payload,
                seq: m.seq.unwrap_or_default(),
            })
        })
        .collect();
    if !events.is_empty() {
        tracing::info!(
            count = events.len(),
            "dispatching webhook fan-out left undone"
        );
        dispatcher.dispatch_now(&events).await?;
    }
    Ok(events.len())
}

/// Deletes delivery logs older than the retention. Returns how many.
pub async fn trim_logs(db: &DatabaseConnection, retention: Duration) -> Result<u64> {
    let cutoff = crate::db::now() - chrono::Duration::from_std(retention).unwrap_or_default();
    Ok(Logs::delete_many()
        .filter(L::CreatedAt.lt(cutoff))
        .exec(db)
        .await?
        .rows_affected)
}

/// Starts this process's sweeper (once per app state): undispatched events every
/// `WEBHOOK_SWEEP_INTERVAL`, log retention every minute. Several processes may sweep at once.
pub fn spawn_sweeper(state: &AppState) {
    use std::sync::atomic::Ordering;
    let rt = state.webhooks.clone();
    if rt.sweeper_started.swap(true, Ordering::SeqCst) {
        return;
    }
    let dispatcher = Dispatcher::new(state.db.clone(), state.queue.clone(), rt.clone());
    let db = state.db.clone();
    tokio::spawn(async move {
        let mut last_trim = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = rt.stop.cancelled() => break,
                _ = tokio::time::sleep(rt.sweep_interval) => {}
            }
            if let Err(e) = sweep_once(&dispatcher).await {
                tracing::warn!(error = %e, "webhook outbox sweep failed");
            }
            if last_trim.elapsed() >= Duration::from_secs(60) {
                last_trim = tokio::time::Instant::now();
                match trim_logs(&db, rt.log_retention).await {
                    Ok(n) if n > 0 => tracing::info!(count = n, "trimmed webhook logs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook log trim failed"),
                }
            }
        }
    });
}

/// What one HTTP attempt gave.
struct Sent {
    status: Option<u16>,
    body: Option<String>,
    error: Option<String>,
    retry_after: Option<Duration>,
    duration: Duration,
}

impl Sent {
    fn refused(error: String) -> Self {
        Self {
            status: None,
            body: None,
            error: Some(error),
            retry_after: None,
            duration: Duration::ZERO,
        }
    }
}

/// The signing keys of an endpoint now: the current secret, and the previous one during a
/// rotation's overlap. Also the current secret's text (the legacy signature's key).
pub(crate) fn signing_keys(cipher: &Cipher, w: &webhook::Model) -> Result<(Vec<Vec<u8>>, String)> {
    let current = cipher.decrypt(&w.secret)?;
    let mut keys = vec![
        signing::secret_key(&current)
            .ok_or_else(|| Error::internal("stored secret is malformed"))?,
    ];
    if let (Some(prev), Some(until)) = (&w.previous_secret, w.previous_secret_expires_at)
        && until > crate::db::now()
        && let Some(k) = signing::secret_key(&cipher.decrypt(prev)?)
    {
        keys.push(k);
    }
    Ok((keys, current))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&Utc) - crate::db::now()).to_std().ok()?
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Signs and POSTs one attempt. Nothing leaves unless the address policy allows it.
async fn send(
    rt: &WebhookRuntime,
    keys: &[Vec<u8>],
    secret: &str,
    w: &webhook::Model,
    a: &Attempt,
) -> Sent {
    // Literal addresses skip DNS, so they are checked here; names are checked by the resolver.
    let url = match rt.policy.check_url(&w.url) {
        Ok(u) => u,
        Err(e) => return Sent::refused(format!("refused: {e}")),
    };
    let ts = crate::db::now().timestamp();
    let id = a.event_id.to_string();
    let body = a.body.as_bytes();
    let mut req = rt
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signing::HEADER_ID, &id)
        .header(signing::HEADER_TIMESTAMP, ts.to_string())
        .header(
            signing::HEADER_SIGNATURE,
            signing::signature_header(keys, &id, ts, body),
        );
    if w.legacy_signature {
        req = req
            .header(
                signing::LEGACY_HEADER_SIGNATURE,
                signing::legacy_signature(secret, body),
            )
            .header(signing::LEGACY_HEADER_TIMESTAMP, ts.to_string());
    }
    let started = std::time::Instant::now();
    match req.body(a.body.clone()).send().await {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = retry_after(resp.headers());
            let mut buf = Vec::new();
            while buf.len() < MAX_LOGGED_BODY {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        buf.extend_from_slice(&c[..c.len().min(MAX_LOGGED_BODY - buf.len())])
                    }
                    _ => break,
                }
            }
            let error = (!(200..300).contains(&status)).then(|| {
                if (300..400).contains(&status) {
                    format!("HTTP {status}: redirects are not followed")
                } else {
                    format!("HTTP {status}")
                }
            });
            Sent {
                status: Some(status),
                body: Some(crate::input::without_nul(&String::from_utf8_lossy(&buf)).into_owned()),
                error,
                retry_after,
                duration: started.elapsed(),
            }
        }
        Err(e) => Sent {
            status: None,
            body: None,
            error: Some(if e.is_timeout() {
                format!("timed out after {:?}", rt.timeout)
            } else {
                error_chain(&e)
            }),
            retry_after: None,
            duration: started.elapsed(),
        },
    }
}

/// Our side failing (database, queue): the queue retries the job.
fn ours(e: impl std::fmt::Display) -> JobError {
    JobError::retryable(e)
}

/// The `webhook_delivery` job: one attempt of one event to one endpoint.
pub async fn handle(state: &AppState, job: &JobInfo) -> std::result::Result<Value, JobError> {
    let a: Attempt = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("bad payload: {e}")))?;
    if a.attempt == 0 || a.attempt > 100 {
        return Err(JobError::permanent("attempt must be 1 to 100"));
    }
    let db = &state.db;
    let rt = &state.webhooks;
    // The endpoint as this process's fan-out just saw it, or its row (see `endpoints`).
    let w = match rt.endpoints.fresh(a.webhook_id) {
        Some(w) => w,
        None => match Webhooks::find_by_id(a.webhook_id)
            .one(db)
            .await
            .map_err(ours)?
        {
            Some(w) => Arc::new(w),
            None => return Ok(json!({ "skipped": "endpoint deleted" })),
        },
    };
    if !w.enabled {
        return Ok(json!({ "skipped": "endpoint disabled" }));
    }
    // The attempt may be done already: a rerun of this job (our side failed, or a worker died
    // after logging), or a second job for it. The job id is the attempt's, so the queue holds
    // one job per attempt while it remembers the id; but it forgets (retention, or a Redis that
    // restarted empty) and the sweeper dispatches an event again when its dispatch was not
    // recorded. One indexed read per attempt keeps every such repeat from reaching the receiver.
    if !a.manual {
        let seen: Vec<(i32, WebhookAttemptStatus)> = Logs::find()
            .select_only()
            .column(L::Attempt)
            .column(L::Status)
            .filter(L::EventId.eq(a.event_id))
            .filter(L::WebhookId.eq(a.webhook_id))
            .into_tuple()
            .all(db)
            .await
            .map_err(ours)?;
        if seen
            .iter()
            .any(|(n, s)| *s == WebhookAttemptStatus::Succeeded || *n == a.attempt as i32)
        {
            return Ok(json!({ "skipped": "already delivered or attempted" }));
        }
    }
    let (keys, secret) = signing_keys(&state.cipher, &w).map_err(ours)?;
    rt.pace(w.id, w.rate_limit).await;
    let sent = send(rt, &keys, &secret, &w, &a).await;
    drop(secret);

    let now = crate::db::now();
    let success = sent.status.is_some_and(|s| (200..300).contains(&s));
    let mut next_retry_at = None;
    let mut disable: Option<String> = None;
    if success {
        if w.consecutive_failures != 0 || w.failing_since.is_some() {
            Webhooks::update_many()
                .col_expr(W::ConsecutiveFailures, Expr::value(0))
                .col_expr(
                    W::FailingSince,
                    Expr::value(Option::<chrono::DateTime<Utc>>::None),
                )
                .filter(W::Id.eq(w.id))
                .exec(db)
                .await
                .map_err(ours)?;
            // The end of a run of failures changes what the cache holds.
            rt.endpoints.forget();
        }
    } else {
        // The failure record as it is now: a cached endpoint's may be older than its last
        // failures (counting them does not change the cache's generation).
        let Some(w) = Webhooks::find_by_id(w.id).one(db).await.map_err(ours)? else {
            return Ok(json!({ "skipped": "endpoint deleted" }));
        };
        let failing_since = w.failing_since.unwrap_or(now);
        Webhooks::update_many()
            .col_expr(
                W::ConsecutiveFailures,
                Expr::col(W::ConsecutiveFailures).add(1),
            )
            .col_expr(W::FailingSince, Expr::value(Some(failing_since)))
            .filter(W::Id.eq(w.id))
            .exec(db)
            .await
            .map_err(ours)?;
        if w.failing_since.is_none() {
            // The start of a run of failures changes what the cache holds.
            rt.endpoints.forget();
        }
        let failing_for = (now - failing_since).to_std().unwrap_or_default();
        if sent.status == Some(410) {
            disable = Some("the endpoint answered 410 Gone".into());
        } else if failing_for >= rt.disable_after {
            disable = Some(format!(
                "every attempt failed since {} ({} attempts)",
                failing_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                w.consecutive_failures + 1
            ));
        } else if !a.manual && (a.attempt as usize) < rt.schedule.len() {
            let scheduled = jitter(rt.schedule[a.attempt as usize]);
            let delay = scheduled.max(sent.retry_after.unwrap_or_default());
            let next = Attempt {
                attempt: a.attempt + 1,
                ..a.clone()
            };
            // Enqueued before the log row: a crash in between reruns this attempt (at least
            // once), never loses the next one.
            enqueue(&state.queue, rt, &[(next, delay)])
                .await
                .map_err(ours)?;
            next_retry_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
        }
    }
    if let Some(reason) = &disable {
        disable_endpoint(state, &w, reason).await.map_err(ours)?;
    }
    let row = webhook_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        webhook_id: Set(w.id),
        event_id: Set(a.event_id),
        event_type: Set(a.event_type.clone()),
        attempt: Set(a.attempt as i32),
        status: Set(if success {
            WebhookAttemptStatus::Succeeded
        } else {
            WebhookAttemptStatus::Failed
        }),
        request_body: Set(serde_json::from_str(&a.body).ok()),
        response_status: Set(sent.status.map(i32::from)),
        response_body: Set(sent.body),
        error: Set(sent.error.clone()),
        duration_ms: Set(Some(sent.duration.as_millis() as i64)),
        next_retry_at: Set(next_retry_at),
        url: Set(Some(w.url.clone())),
        created_at: Set(now),
    };
    rt.log_writer
        .get_or_init(|| log_writer(db.clone()))
        .insert(row)
        .await
        .map_err(ours)?;
    Ok(json!({
        "success": success,
        "status": sent.status,
        "error": sent.error,
        "nextRetryAt": next_retry_at,
        "disabled": disable,
    }))
}

/// Delivery log rows per INSERT at most (well under SQLite's bound-parameter limit: 14 columns
/// each).
const LOG_BATCH: usize = 200;
/// How long the first row of a batch waits for others to share its commit. The delay is after
/// the POST, so no receiver waits for it; a job only holds its lease that much longer.
const LOG_LINGER: Duration = Duration::from_millis(2);

/// Delivery log rows are written in batches (group commit, [`BatchInserter`]): a job completes
/// only after its log row is durable, but a burst of deliveries costs one multi-row INSERT
/// instead of one transaction per attempt.
pub(crate) type LogWriter = BatchInserter<webhook_log::ActiveModel>;

pub(crate) fn log_writer(db: DatabaseConnection) -> LogWriter {
    BatchInserter::spawn(db, LOG_BATCH, Some(LOG_LINGER), "delivery logs")
}

/// Disables an endpoint with a reason, audited as the system's act.
async fn disable_endpoint(state: &AppState, w: &webhook::Model, reason: &str) -> Result<()> {
    Webhooks::update_many()
        .col_expr(W::Enabled, Expr::value(false))
        .col_expr(W::DisabledReason, Expr::value(Some(reason.to_owned())))
        .col_expr(W::UpdatedAt, Expr::value(crate::db::now()))
        .filter(W::Id.eq(w.id))
        .exec(&state.db)
        .await?;
    super::service::drop_pending_retries(&state.db, w.id).await?;
    state.webhooks.endpoints.forget();
    tracing::warn!(webhook = %w.id, reason, "webhook endpoint disabled");
    crate::audit::record(
        &state.db,
        &RequestContext::system(),
        crate::audit::Change {
            action: "webhook.auto_disable",
            target_type: "webhook",
            target_id: w.id.to_string(),
            merchant_id: w.merchant_id.clone(),
            before: None,
            after: Some(json!({ "enabled": false, "disabledReason": reason })),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "999999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let at = (crate::db::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, at.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..200 {
            let d = jitter(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(80) && d <= Duration::from_secs(120));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
