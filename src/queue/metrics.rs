//! Prometheus metrics for the queue (prometheus-client), served at `/metrics`.
//!
//! Counters and histograms count what this process did through one [`super::JobQueue`] and its
//! workers (each app has its own registry). Queue depth per state is a gauge that a background
//! task refreshes from the backend every [`GAUGE_REFRESH`], so a scrape costs no database or
//! Redis round trip however often it comes; every instance still reports the shared truth.

use std::{
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{QueueBackend, QueueName};

/// How often the depth gauges are read from the backend.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub queue: String,
    pub state: String,
}

pub struct QueueMetrics {
    registry: Registry,
    enqueued: Family<QueueLabel, Counter>,
    duplicates: Family<QueueLabel, Counter>,
    processed: Family<QueueLabel, Counter>,
    failed: Family<QueueLabel, Counter>,
    retried: Family<QueueLabel, Counter>,
    duration: Family<QueueLabel, Histogram>,
    pickup: Family<QueueLabel, Histogram>,
    depth: Family<StateLabel, Gauge>,
    /// Set once the background refresher runs (started by the first scrape).
    refresher: OnceLock<()>,
}

impl std::fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMetrics").finish_non_exhaustive()
    }
}

fn label(q: QueueName) -> QueueLabel {
    QueueLabel {
        queue: q.as_str().to_owned(),
    }
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueMetrics {
    pub fn new() -> Self {
        let buckets = || {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
        };
        let mut m = Self {
            registry: Registry::with_prefix("smartbot"),
            enqueued: Family::default(),
            duplicates: Family::default(),
            processed: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            duration: Family::new_with_constructor(buckets),
            pickup: Family::new_with_constructor(buckets),
            depth: Family::default(),
            refresher: OnceLock::new(),
        };
        let r = &mut m.registry;
        r.register("jobs_enqueued", "Jobs added to a queue", m.enqueued.clone());
        r.register(
            "jobs_duplicate",
            "Enqueues ignored because the job id existed",
            m.duplicates.clone(),
        );
        r.register("jobs_processed", "Jobs completed", m.processed.clone());
        r.register("jobs_failed", "Jobs that ended in failed", m.failed.clone());
        r.register(
            "jobs_retried",
            "Failed attempts scheduled for retry",
            m.retried.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Handler run time per attempt",
            m.duration.clone(),
        );
        r.register(
            "job_pickup_latency_seconds",
            "Time from ready to picked up",
            m.pickup.clone(),
        );
        r.register(
            "queue_jobs",
            "Jobs per queue and state (refreshed in the background)",
            m.depth.clone(),
        );
        // Every queue appears from the first scrape, at zero, so dashboards need no special cases.
        for q in QueueName::ALL {
            let l = label(q);
            let _ = m.enqueued.get_or_create(&l);
            let _ = m.duplicates.get_or_create(&l);
            let _ = m.processed.get_or_create(&l);
            let _ = m.failed.get_or_create(&l);
            let _ = m.retried.get_or_create(&l);
            let _ = m.duration.get_or_create(&l);
            let _ = m.pickup.get_or_create(&l);
        }
        m
    }

    pub fn enqueued(&self, q: QueueName, created: bool) {
        if created {
            self.enqueued.get_or_create(&label(q)).inc();
        } else {
            self.duplicates.get_or_create(&label(q)).inc();
        }
    }

    pub fn completed(&self, q: QueueName, secs: f64) {
        self.processed.get_or_create(&label(q)).inc();
        self.duration.get_or_create(&label(q)).observe(secs);
    }

    pub fn failed_attempt(&self, q: QueueName, secs: f64, will_retry: bool) {
        self.duration.get_or_create(&label(q)).observe(secs);
        if will_retry {
            self.retried.get_or_create(&label(q)).inc();
        } else {
            self.failed.get_or_create(&label(q)).inc();
        }
    }

    pub fn picked_up(&self, q: QueueName, secs: f64) {
        self.pickup.get_or_create(&label(q)).observe(secs.max(0.0));
    }

    /// Reads every queue's depth from the backend into the gauges.
    pub async fn refresh(&self, backend: &dyn QueueBackend) {
        for q in QueueName::ALL {
            match backend.counts(q).await {
                Ok(c) => {
                    for (state, n) in [
                        ("waiting", c.waiting),
                        ("active", c.active),
                        ("delayed", c.delayed),
                        ("completed", c.completed),
                        ("failed", c.failed),
                    ] {
                        self.depth
                            .get_or_create(&StateLabel {
                                queue: q.as_str().into(),
                                state: state.into(),
                            })
                            .set(n as i64);
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %q, error = %e, "metrics: cannot read queue depth")
                }
            }
        }
    }

    /// The text exposition. The first call reads the depth once and starts the background
    /// refresher; later calls touch no backend. The refresher ends when the app is dropped.
    pub async fn render(self: &Arc<Self>, backend: &Arc<dyn QueueBackend>) -> String {
        if self.refresher.set(()).is_ok() {
            // At most a second: with Redis or the database not answering, each queue's read
            // waits for its command timeout, and four of them outlasted Prometheus's scrape
            // timeout. The gauges then show their last values (zero) until the refresher reads.
            let first = tokio::time::timeout(FIRST_READ, self.refresh(backend.as_ref()));
            if first.await.is_err() {
                tracing::warn!("metrics: the queues' depth could not be read within a second");
            }
            let (metrics, backend) = (Arc::downgrade(self), Arc::downgrade(backend));
            tokio::spawn(refresh_loop(metrics, backend));
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// How long the first scrape waits for the queues' depth.
const FIRST_READ: std::time::Duration = std::time::Duration::from_secs(1);

async fn refresh_loop(metrics: Weak<QueueMetrics>, backend: Weak<dyn QueueBackend>) {
    let mut tick = tokio::time::interval(GAUGE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (Some(m), Some(b)) = (metrics.upgrade(), backend.upgrade()) else {
            return;
        };
        m.refresh(b.as_ref()).await;
    }
}
