//! Prometheus metrics for the queue (prometheus-client), served at `/metrics`.
//!
//! Counters and histograms count what this process did; queue depth per state is read from the
//! backend at scrape time, so every instance reports the shared truth.

use std::sync::{LazyLock, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{QueueBackend, QueueName};

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
    registry: Mutex<Registry>,
    enqueued: Family<QueueLabel, Counter>,
    duplicates: Family<QueueLabel, Counter>,
    processed: Family<QueueLabel, Counter>,
    failed: Family<QueueLabel, Counter>,
    retried: Family<QueueLabel, Counter>,
    duration: Family<QueueLabel, Histogram>,
    pickup: Family<QueueLabel, Histogram>,
    depth: Family<StateLabel, Gauge>,
}

fn label(q: QueueName) -> QueueLabel {
    QueueLabel {
        queue: q.as_str().to_owned(),
    }
}

static GLOBAL: LazyLock<QueueMetrics> = LazyLock::new(QueueMetrics::new);

pub fn global() -> &'static QueueMetrics {
    &GLOBAL
}

impl QueueMetrics {
    fn new() -> Self {
        let buckets = || {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
        };
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("smartbot")),
            enqueued: Family::default(),
            duplicates: Family::default(),
            processed: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            duration: Family::new_with_constructor(buckets),
            pickup: Family::new_with_constructor(buckets),
            depth: Family::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics registry");
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
            r.register("queue_jobs", "Jobs per queue and state", m.depth.clone());
        }
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

    /// Reads the depth of every queue from the backend, then renders the text exposition.
    pub async fn render(&self, backend: &dyn QueueBackend) -> String {
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
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}
