//! Per-client-IP rate limiting (`RATE_LIMIT=100/15m` by default, `off` to disable).
//!
//! The embedded limiter is governor's keyed GCRA: `max` requests may burst, and the allowance
//! refills evenly over `window`, so a client is never locked out for a whole window at once.
//! `Retry-After` is the time until the next request would be allowed.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{Quota, RateLimiter as Governor, clock::Clock};

use crate::{config::RateLimit, error::Error};

type Keyed = governor::DefaultKeyedRateLimiter<IpAddr>;

#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Keyed>>,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        let inner = limit.map(|l| {
            let max = NonZeroU32::new(l.max).unwrap_or(NonZeroU32::MIN);
            let period = (l.window / max.get()).max(Duration::from_nanos(1));
            let quota = Quota::with_period(period)
                .expect("period is non-zero")
                .allow_burst(max);
            Arc::new(Governor::keyed(quota))
        });
        Self { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Counts one request from `ip`; RATE_LIMITED with the wait when over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter.check_key(&client_key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            Error::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Counts one operation on a WebSocket (the same allowance as HTTP requests).
    pub fn check_opt(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        ip.map_or(Ok(()), |ip| self.check(ip))
    }

    /// Drops state for clients that have fully recovered, so memory stays bounded.
    pub fn spawn_janitor(&self) {
        if let Some(limiter) = self.inner.clone() {
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

    #[test]
    fn limits_per_ip() {
        let rl = RateLimiter::new(Some(RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            rl.check(a).unwrap();
        }
        match rl.check(a) {
            Err(Error::RateLimited { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs))
            }
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        rl.check(b).unwrap();
        assert!(RateLimiter::new(None).check(a).is_ok());

        // IPv6 clients are counted per /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..3 {
            rl.check(v6(&format!("2001:db8:1:2::{i}"))).unwrap();
        }
        assert!(rl.check(v6("2001:db8:1:2:ffff::9")).is_err());
        rl.check(v6("2001:db8:1:3::1")).unwrap();
        // An IPv4-mapped address is the IPv4 client.
        assert!(rl.check(v6("::ffff:10.0.0.1")).is_err());
    }
}
