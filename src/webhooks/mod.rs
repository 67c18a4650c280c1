//! Webhooks: merchants' endpoints receive every event they subscribe to as a signed, retried,
//! logged HTTP POST, the way Svix does it.
//!
//! * [`service`]: endpoints (register, update, enable/disable, rotate, delete), logs, redeliver,
//!   recover and test sends. Scoped finders keep a merchant to its own endpoints and logs.
//! * [`delivery`]: the transactional outbox (an event row's `webhooks_dispatched_at` is the
//!   durable intent, fanned out into one `webhook_delivery` job per endpoint after commit, and
//!   swept up after a crash), and the job that makes one attempt.
//! * [`signing`]: Standard Webhooks signatures, and [`verify`] for receivers.
//! * [`ssrf`]: the address policy and the guarded HTTP client.
//!
//! Secrets are stored encrypted with the app's `crypto::Cipher`, returned once at registration
//! (and rotation), and never logged.

pub mod delivery;
pub mod endpoints;
pub mod service;
pub mod signing;
pub mod ssrf;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use signing::{DEFAULT_TOLERANCE, VerifyError, verify};

use crate::{Config, error::Result};

/// What every delivery in this process shares: the policy, the guarded client, the schedule.
pub struct WebhookRuntime {
    pub policy: Arc<ssrf::AddressPolicy>,
    pub client: reqwest::Client,
    /// The delay before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    pub disable_after: Duration,
    pub log_retention: Duration,
    pub sweep_interval: Duration,
    pacing: Pacing,
    pub(crate) sweeper_started: AtomicBool,
    pub(crate) stop: CancellationToken,
    /// The batching log writer, started on first use (see `delivery::LogWriter`).
    pub(crate) log_writer: std::sync::OnceLock<delivery::LogWriter>,
    /// Enabled endpoints by merchant, for fan-out and attempts.
    pub endpoints: endpoints::EndpointCache,
}

impl WebhookRuntime {
    pub fn new(config: &Config) -> Result<Self> {
        let policy = Arc::new(ssrf::AddressPolicy::new(
            config.webhook_allowed_networks.clone(),
            config.webhook_https_only,
        ));
        Ok(Self {
            client: ssrf::client(policy.clone(), config.webhook_timeout)?,
            policy,
            schedule: config.webhook_retry_schedule.clone(),
            timeout: config.webhook_timeout,
            disable_after: config.webhook_disable_after,
            log_retention: config.webhook_log_retention,
            sweep_interval: config.webhook_sweep_interval,
            pacing: Pacing::default(),
            sweeper_started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            log_writer: std::sync::OnceLock::new(),
            endpoints: Default::default(),
        })
    }

    /// Stops this process's sweeper.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for this endpoint's next free slot under its `rate_limit` (per second).
    pub(crate) async fn pace(&self, webhook: Uuid, per_second: Option<i32>) {
        let Some(n) = per_second.filter(|n| *n > 0) else {
            return;
        };
        let at = self.pacing.reserve(webhook, n as u32);
        tokio::time::sleep_until(at).await;
    }
}

/// Per-endpoint pacing (per process): each delivery takes the next slot, `1/rate` apart, so
/// deliveries over the limit wait their turn instead of being dropped.
#[derive(Default)]
struct Pacing {
    next_free: Mutex<HashMap<Uuid, Instant>>,
}

impl Pacing {
    fn reserve(&self, webhook: Uuid, per_second: u32) -> Instant {
        let gap = Duration::from_secs(1) / per_second.max(1);
        let now = Instant::now();
        let mut map = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, t| *t > now);
        }
        let slot = map
            .get(&webhook)
            .copied()
            .filter(|t| *t > now)
            .unwrap_or(now);
        map.insert(webhook, slot + gap);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spaces_slots_by_the_rate() {
        let p = Pacing::default();
        let id = Uuid::now_v7();
        let a = p.reserve(id, 10);
        let b = p.reserve(id, 10);
        let c = p.reserve(id, 10);
        assert!(b - a >= Duration::from_millis(99) && c - b >= Duration::from_millis(99));
        let other = p.reserve(Uuid::now_v7(), 10);
        assert!(other < b, "endpoints are paced independently");
    }
}
