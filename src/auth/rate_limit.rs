//! Per-client-IP rate limiting (`RATE_LIMIT=100/15m` by default, `off` to disable).
//!
//! The embedded limiter is governor's keyed GCRA: `max` requests may burst, and the allowance
//! refills evenly over `window`, so a client is never locked out for a whole window at once.
//! `Retry-After` is the time until the next request would be allowed.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use fred::{clients::Client, types::scripts::Script};
use governor::{Quota, RateLimiter as Governor, clock::Clock};

use crate::{config::RateLimit, error::Error};

type Keyed = governor::DefaultKeyedRateLimiter<IpAddr>;

/// GCRA in one atomic step, on Redis's clock: the same rule as governor's, shared by every
/// instance. The key holds the "theoretical arrival time" (ms) and expires when it has passed.
/// Returns {1, 0} when allowed, or {0, ms to wait}.
const GCRA_LUA: &str = r#"
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local period = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or t)
if tat < t then tat = t end
local new_tat = tat + period
local allow_at = new_tat - tolerance
if allow_at > t then return {0, allow_at - t} end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - t)))
return {1, 0}
"#;

#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Backend>,
}

#[derive(Clone)]
enum Backend {
    /// governor's keyed GCRA in this process.
    Local(Arc<Keyed>),
    /// The same GCRA in Redis, so the limit holds across instances.
    Redis(Arc<RedisGcra>),
}

struct RedisGcra {
    client: Client,
    script: Script,
    prefix: String,
    period_ms: u64,
    tolerance_ms: u64,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        let inner = limit.map(|l| {
            let max = NonZeroU32::new(l.max).unwrap_or(NonZeroU32::MIN);
            let period = (l.window / max.get()).max(Duration::from_nanos(1));
            let quota = Quota::with_period(period)
                .expect("period is non-zero")
                .allow_burst(max);
            Backend::Local(Arc::new(Governor::keyed(quota)))
        });
        Self { inner }
    }

    /// Connects the shared limiter to Redis. A command is sent once, never re-sent after a lost
    /// reply, so a reconnect cannot count one request twice.
    pub async fn connect_redis(
        limit: Option<RateLimit>,
        url: &str,
        prefix: &str,
    ) -> Result<Self, Error> {
        use fred::prelude::{Builder, ClientLike, Config as RedisConfig, ReconnectPolicy};
        let config = RedisConfig::from_url(url)
            .map_err(|e| Error::validation("REDIS_URL", format!("invalid REDIS_URL: {e}")))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.max_command_attempts = 1;
            })
            // Without a timeout a command waits for a Redis that is down until it comes back
            // (fred queues it for the reconnect): every rate-limited request would hang. With
            // it the check fails, and a failed check lets the request through (see `check`).
            .with_performance_config(|p| {
                p.default_command_timeout = crate::queue::redis::COMMAND_TIMEOUT_FAST
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2))
            .build()
            .map_err(|e| Error::Internal(format!("redis rate limiter: {e}")))?;
        client.init().await.map_err(|e| {
            Error::Internal(format!(
                "cannot connect to Redis at {}: {e}",
                crate::config::redact_url(url)
            ))
        })?;
        Ok(Self::redis(limit, client, prefix))
    }

    /// A limiter shared by every instance through Redis (`REDIS_URL` set).
    pub fn redis(limit: Option<RateLimit>, client: Client, prefix: &str) -> Self {
        let inner = limit.map(|l| {
            let period_ms = (l.window.as_millis() as u64 / u64::from(l.max.max(1))).max(1);
            Backend::Redis(Arc::new(RedisGcra {
                client,
                script: Script::from_lua(GCRA_LUA),
                prefix: format!("{prefix}rl:"),
                period_ms,
                tolerance_ms: period_ms * u64::from(l.max.max(1)),
            }))
        });
        Self { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Counts one request from `ip`; RATE_LIMITED with the wait when over the limit. When Redis
    /// cannot answer, the request is let through (and logged): an outage of the shared counter
    /// must not take the API down with it.
    pub async fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let key = client_key(ip);
        let wait = match &self.inner {
            None => return Ok(()),
            Some(Backend::Local(limiter)) => match limiter.check_key(&key) {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    not_until.wait_time_from(governor::clock::DefaultClock::default().now())
                }
            },
            Some(Backend::Redis(r)) => {
                let res: Result<Vec<i64>, _> = r
                    .script
                    .evalsha_with_reload(
                        &r.client,
                        format!("{}{key}", r.prefix),
                        vec![r.period_ms, r.tolerance_ms],
                    )
                    .await;
                match res.as_deref() {
                    Ok([1, _]) => return Ok(()),
                    Ok([0, wait_ms]) => Duration::from_millis((*wait_ms).max(0) as u64),
                    other => {
                        tracing::warn!(result = ?other, "shared rate limiter unavailable; request allowed");
                        return Ok(());
                    }
                }
            }
        };
        Err(Error::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Counts one operation on a WebSocket (the same allowance as HTTP requests).
    pub async fn check_opt(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        match ip {
            Some(ip) => self.check(ip).await,
            None => Ok(()),
        }
    }

    /// Drops state for clients that have fully recovered, so memory stays bounded (Redis keys
    /// expire by themselves).
    pub fn spawn_janitor(&self) {
        if let Some(Backend::Local(limiter)) = self.inner.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            });
        }
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (one subscriber's
/// allocation, so rotating addresses inside it does not buy a fresh allowance).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_per_ip() {
        let rl = RateLimiter::new(Some(RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            rl.check(a).await.unwrap();
        }
        match rl.check(a).await {
            Err(Error::RateLimited { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs))
            }
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        rl.check(b).await.unwrap();
        assert!(RateLimiter::new(None).check(a).await.is_ok());

        // IPv6 clients are counted per /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..3 {
            rl.check(v6(&format!("2001:db8:1:2::{i}"))).await.unwrap();
        }
        assert!(rl.check(v6("2001:db8:1:2:ffff::9")).await.is_err());
        rl.check(v6("2001:db8:1:3::1")).await.unwrap();
        // An IPv4-mapped address is the IPv4 client.
        assert!(rl.check(v6("::ffff:10.0.0.1")).await.is_err());
    }
}
