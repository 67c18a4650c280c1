//! One typed `Config`, read once from the environment (and `.env` when present).
//!
//! The defaults *are* the embedded mode: a SQLite file and media under `./data`, port 4001, no Redis.
//! Setting `DATABASE_URL=postgres://…` and `REDIS_URL=redis://…` switches the same binary to scale-out.
//! Nothing else in the program reads the environment.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use crate::{error::Error, queue::QueueName};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `RATE_LIMIT=100/15m`: at most `max` requests per client IP in each `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (max, window) = s
            .split_once('/')
            .ok_or_else(|| format!("expected MAX/WINDOW such as 100/15m, got {s:?}"))?;
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| format!("rate limit count {max:?} is not a positive whole number"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("rate limit window {window:?}: {e}"))?;
        if max == 0 || window.is_zero() {
            return Err("rate limit count and window must be greater than zero".into());
        }
        Ok(Self { max, window })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND_ADDR` (default 0.0.0.0).
    pub bind_addr: IpAddr,
    /// `PORT` (default 4001). 0 picks a free port (tests).
    pub port: u16,
    /// `DATA_DIR` (default ./data): the SQLite file, media and the generated JWT secret live here.
    pub data_dir: PathBuf,
    /// `DATABASE_URL` (default `sqlite://DATA_DIR/smartbot.db?mode=rwc`).
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub database_max_connections: u32,
    /// `REDIS_URL` (default none: embedded queue and bus).
    pub redis_url: Option<String>,
    /// `JWT_SECRET`; when unset a secret is generated and kept in DATA_DIR/jwt_secret.
    pub jwt_secret: Option<String>,
    /// `ENCRYPTION_KEY`: base64 32-byte key(s), comma-separated, for secrets at rest (the first
    /// encrypts). When unset a key is generated and kept in DATA_DIR/encryption_key.
    pub encryption_key: Option<String>,
    /// `RATE_LIMIT` (default 100/15m; `off` disables).
    pub rate_limit: Option<RateLimit>,
    /// `TRUST_PROXY` (default false): take the client IP from X-Forwarded-For, as the nearest
    /// trusted proxy saw it.
    pub trust_proxy: bool,
    /// `TRUSTED_PROXIES`: CIDRs of the proxies in front of the server (comma-separated). The
    /// client IP is the rightmost X-Forwarded-For hop outside them. Empty: only the direct peer is
    /// trusted, so the client IP is the last hop it appended.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `WS_INIT_TIMEOUT` (default 10s): a socket must send `connection_init` within this (4408).
    pub ws_init_timeout: Duration,
    /// `WS_MAX_OPERATIONS` (default 100): operations that may run at once on one socket.
    pub ws_max_operations: usize,
    /// `WS_KEEPALIVE` (default 15s): ping interval; a peer silent for two intervals is dropped.
    pub ws_keepalive: Duration,
    /// `LOG_FORMAT` (pretty | json).
    pub log_format: LogFormat,
    /// `BODY_LIMIT` in bytes (default 10 MiB).
    pub body_limit: usize,
    /// `GRAPHQL_MAX_DEPTH` (default 16).
    pub graphql_max_depth: usize,
    /// `GRAPHQL_MAX_COMPLEXITY` (default 2000).
    pub graphql_max_complexity: usize,
    /// `SHUTDOWN_GRACE` (default 10s).
    pub shutdown_grace: Duration,
    /// `SEED_TEMPLATES` (default true): insert the default templates into an empty database.
    pub seed_templates: bool,
    /// `REDIS_PREFIX` (default `smartbot:`): namespaces every Redis key.
    pub redis_prefix: String,
    /// `QUEUE_CONCURRENCY`, e.g. `media_processing=3,message_sending=5` (unset queues keep the
    /// seed's defaults: 3, 5, 2, 5).
    pub queue_concurrency: HashMap<QueueName, usize>,
    /// `JOB_LEASE` (default 30s): how long a job stays leased without renewal; a crashed worker's
    /// job is reclaimed after this.
    pub job_lease: Duration,
    /// `QUEUE_POLL_INTERVAL` (default 250ms): how often the embedded queue looks for work that
    /// other processes enqueued.
    pub queue_poll_interval: Duration,
    /// `RUN_WORKERS` (default true): `serve` runs the workers in-process.
    pub run_workers: bool,
    /// `MEDIA_MAX_BYTES` (default 5 MiB): the largest file an upload may be.
    pub media_max_bytes: usize,
    /// `MEDIA_DECODE_BUDGET_MB` (default 512): the memory all image decodes may hold at once; a
    /// burst of large images queues instead of allocating.
    pub media_decode_budget: u64,
    /// `EVENT_HISTORY` (default 1000): events kept per merchant for replay and `recentEvents`.
    pub event_history: usize,
    /// `EVENT_BUFFER` (default 1024): how far a live subscriber may fall behind before it is cut
    /// off with LAGGED (and resumes with `after`).
    pub event_buffer: usize,
    /// `METRICS_TOKEN` (default none): when set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// `WEBHOOK_TIMEOUT` (default 15s): one delivery attempt, connect to last byte.
    pub webhook_timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE` (default `0s,5s,5m,30m,2h,5h,10h`): the delay before each
    /// attempt (the first is the first attempt's); its length is the number of attempts.
    pub webhook_retry_schedule: Vec<Duration>,
    /// `WEBHOOK_DISABLE_AFTER` (default 5 days): an endpoint whose every attempt failed for this
    /// long is disabled.
    pub webhook_disable_after: Duration,
    /// `WEBHOOK_ALLOWED_NETWORKS`: CIDRs that deliveries may reach although they are private,
    /// loopback, etc. (default none).
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,
    /// `WEBHOOK_HTTPS_ONLY` (default false): refuse `http://` endpoints.
    pub webhook_https_only: bool,
    /// `WEBHOOK_LOG_RETENTION` (default 30 days): delivery logs older than this are trimmed.
    pub webhook_log_retention: Duration,
    /// `WEBHOOK_SWEEP_INTERVAL` (default 5s): how often each process looks for events whose
    /// webhook fan-out was interrupted by a crash (and trims old logs).
    pub webhook_sweep_interval: Duration,
    /// `WHATSAPP_*`: the Cloud API, the platform number, the inbound webhook's secrets.
    pub whatsapp: crate::whatsapp::WhatsAppConfig,
    /// `BOT_STALE_AFTER` (default 5m; `off` disables): a connected bot that has not reported for
    /// this long is marked disconnected.
    pub bot_stale_after: Option<Duration>,
    /// `TEMPLATE_CACHE_MB` (default 32; 0 turns it off): the memory the template read cache may
    /// hold (see `templates::cache`).
    pub template_cache_bytes: usize,
}

impl Config {
    /// The embedded defaults, rooted at `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            bind_addr: IpAddr::from([0, 0, 0, 0]),
            port: 4001,
            database_url: sqlite_url(&data_dir),
            data_dir,
            database_max_connections: 10,
            redis_url: None,
            jwt_secret: None,
            encryption_key: None,
            rate_limit: Some(RateLimit {
                max: 100,
                window: Duration::from_secs(15 * 60),
            }),
            trust_proxy: false,
            trusted_proxies: Vec::new(),
            ws_init_timeout: Duration::from_secs(10),
            ws_max_operations: 100,
            ws_keepalive: Duration::from_secs(15),
            log_format: LogFormat::Pretty,
            body_limit: 10 * 1024 * 1024,
            graphql_max_depth: 16,
            graphql_max_complexity: 2000,
            shutdown_grace: Duration::from_secs(10),
            seed_templates: true,
            redis_prefix: "smartbot:".into(),
            queue_concurrency: HashMap::new(),
            job_lease: Duration::from_secs(30),
            queue_poll_interval: Duration::from_millis(250),
            run_workers: true,
            media_max_bytes: 5 * 1024 * 1024,
            media_decode_budget: crate::media::budget::DEFAULT_DECODE_BUDGET,
            event_history: 1000,
            event_buffer: 1024,
            metrics_token: None,
            webhook_timeout: Duration::from_secs(15),
            webhook_retry_schedule: default_retry_schedule(),
            webhook_disable_after: Duration::from_secs(5 * 24 * 3600),
            webhook_allowed_networks: Vec::new(),
            webhook_https_only: false,
            webhook_log_retention: Duration::from_secs(30 * 24 * 3600),
            webhook_sweep_interval: Duration::from_secs(5),
            whatsapp: crate::whatsapp::WhatsAppConfig::default(),
            bot_stale_after: Some(Duration::from_secs(5 * 60)),
            template_cache_bytes: 32 << 20,
        }
    }

    /// Reads `.env` (when present) and then the process environment.
    pub fn from_env() -> Result<Self, Error> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds a Config from any key lookup; unset or empty keys take the embedded default.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let data_dir = PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "./data".into()));
        let mut c = Self::embedded(data_dir);
        if let Some(v) = get("BIND_ADDR") {
            c.bind_addr = parse("BIND_ADDR", &v)?;
        }
        if let Some(v) = get("PORT") {
            c.port = parse("PORT", &v)?;
        }
        if let Some(v) = get("DATABASE_URL") {
            c.database_url = v;
        }
        if let Some(v) = get("DATABASE_MAX_CONNECTIONS") {
            c.database_max_connections = parse("DATABASE_MAX_CONNECTIONS", &v)?;
        }
        c.redis_url = get("REDIS_URL");
        c.jwt_secret = get("JWT_SECRET");
        c.encryption_key = get("ENCRYPTION_KEY");
        if let Some(v) = get("RATE_LIMIT") {
            c.rate_limit = if v.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(v.parse().map_err(|e| invalid("RATE_LIMIT", e))?)
            };
        }
        if let Some(v) = get("TRUST_PROXY") {
            c.trust_proxy = parse_bool("TRUST_PROXY", &v)?;
        }
        if let Some(v) = get("TRUSTED_PROXIES") {
            c.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| invalid("TRUSTED_PROXIES", format!("{p:?} is not a CIDR")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("WS_INIT_TIMEOUT") {
            c.ws_init_timeout = duration("WS_INIT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("WS_MAX_OPERATIONS") {
            c.ws_max_operations = parse("WS_MAX_OPERATIONS", &v)?;
            if c.ws_max_operations == 0 {
                return Err(invalid("WS_MAX_OPERATIONS", "must be greater than zero"));
            }
        }
        if let Some(v) = get("WS_KEEPALIVE") {
            c.ws_keepalive = duration("WS_KEEPALIVE", &v)?;
        }
        if let Some(v) = get("LOG_FORMAT") {
            c.log_format = match v.to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "pretty" | "text" => LogFormat::Pretty,
                _ => return Err(invalid("LOG_FORMAT", "expected json or pretty")),
            };
        }
        if let Some(v) = get("BODY_LIMIT") {
            c.body_limit = parse("BODY_LIMIT", &v)?;
        }
        if let Some(v) = get("GRAPHQL_MAX_DEPTH") {
            c.graphql_max_depth = parse("GRAPHQL_MAX_DEPTH", &v)?;
        }
        if let Some(v) = get("GRAPHQL_MAX_COMPLEXITY") {
            c.graphql_max_complexity = parse("GRAPHQL_MAX_COMPLEXITY", &v)?;
        }
        if let Some(v) = get("SHUTDOWN_GRACE") {
            c.shutdown_grace =
                humantime::parse_duration(&v).map_err(|e| invalid("SHUTDOWN_GRACE", e))?;
        }
        if let Some(v) = get("SEED_TEMPLATES") {
            c.seed_templates = parse_bool("SEED_TEMPLATES", &v)?;
        }
        if let Some(v) = get("REDIS_PREFIX") {
            c.redis_prefix = v;
        }
        if let Some(v) = get("QUEUE_CONCURRENCY") {
            c.queue_concurrency = parse_concurrency(&v)?;
        }
        if let Some(v) = get("JOB_LEASE") {
            c.job_lease = humantime::parse_duration(&v).map_err(|e| invalid("JOB_LEASE", e))?;
            if c.job_lease < Duration::from_secs(1) {
                return Err(invalid("JOB_LEASE", "must be at least 1s"));
            }
        }
        if let Some(v) = get("QUEUE_POLL_INTERVAL") {
            c.queue_poll_interval =
                humantime::parse_duration(&v).map_err(|e| invalid("QUEUE_POLL_INTERVAL", e))?;
        }
        if let Some(v) = get("RUN_WORKERS") {
            c.run_workers = parse_bool("RUN_WORKERS", &v)?;
        }
        if let Some(v) = get("MEDIA_MAX_BYTES") {
            c.media_max_bytes = parse("MEDIA_MAX_BYTES", &v)?;
            if c.media_max_bytes == 0 {
                return Err(invalid("MEDIA_MAX_BYTES", "must be greater than zero"));
            }
        }
        if let Some(v) = get("MEDIA_DECODE_BUDGET_MB") {
            let mb: u64 = parse("MEDIA_DECODE_BUDGET_MB", &v)?;
            if !(16..=1 << 20).contains(&mb) {
                return Err(invalid("MEDIA_DECODE_BUDGET_MB", "must be 16 to 1048576"));
            }
            c.media_decode_budget = mb << 20;
        }
        if let Some(v) = get("EVENT_HISTORY") {
            c.event_history = parse("EVENT_HISTORY", &v)?;
            if c.event_history == 0 {
                return Err(invalid("EVENT_HISTORY", "must be greater than zero"));
            }
        }
        if let Some(v) = get("EVENT_BUFFER") {
            c.event_buffer = parse("EVENT_BUFFER", &v)?;
            if c.event_buffer == 0 {
                return Err(invalid("EVENT_BUFFER", "must be greater than zero"));
            }
        }
        c.metrics_token = get("METRICS_TOKEN");
        if let Some(v) = get("WEBHOOK_TIMEOUT") {
            c.webhook_timeout = duration("WEBHOOK_TIMEOUT", &v)?;
            if c.webhook_timeout > Duration::from_secs(300) {
                return Err(invalid("WEBHOOK_TIMEOUT", "must be at most 5m"));
            }
        }
        if let Some(v) = get("WEBHOOK_RETRY_SCHEDULE") {
            c.webhook_retry_schedule = parse_retry_schedule(&v)?;
        }
        if let Some(v) = get("WEBHOOK_DISABLE_AFTER") {
            c.webhook_disable_after = duration("WEBHOOK_DISABLE_AFTER", &v)?;
        }
        if let Some(v) = get("WEBHOOK_ALLOWED_NETWORKS") {
            c.webhook_allowed_networks = parse_cidrs("WEBHOOK_ALLOWED_NETWORKS", &v)?;
        }
        if let Some(v) = get("WEBHOOK_HTTPS_ONLY") {
            c.webhook_https_only = parse_bool("WEBHOOK_HTTPS_ONLY", &v)?;
        }
        if let Some(v) = get("WEBHOOK_LOG_RETENTION") {
            c.webhook_log_retention = duration("WEBHOOK_LOG_RETENTION", &v)?;
        }
        if let Some(v) = get("WEBHOOK_SWEEP_INTERVAL") {
            c.webhook_sweep_interval = duration("WEBHOOK_SWEEP_INTERVAL", &v)?;
        }
        c.whatsapp = crate::whatsapp::WhatsAppConfig::from_lookup(get)?;
        if let Some(v) = get("BOT_STALE_AFTER") {
            c.bot_stale_after = if v.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(duration("BOT_STALE_AFTER", &v)?)
            };
        }
        if let Some(v) = get("TEMPLATE_CACHE_MB") {
            let mb: usize = parse("TEMPLATE_CACHE_MB", &v)?;
            if mb > 1 << 20 {
                return Err(invalid("TEMPLATE_CACHE_MB", "must be at most 1048576"));
            }
            c.template_cache_bytes = mb << 20;
        }
        Ok(c)
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// Where uploaded media is stored.
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}

/// `media_processing=3,message_sending=5` → per-queue worker counts.
pub fn parse_concurrency(v: &str) -> Result<HashMap<QueueName, usize>, Error> {
    let mut out = HashMap::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (q, n) = part.split_once('=').ok_or_else(|| {
            invalid(
                "QUEUE_CONCURRENCY",
                format!("expected queue=N, got {part:?}"),
            )
        })?;
        let queue: QueueName = q
            .parse()
            .map_err(|e: Error| invalid("QUEUE_CONCURRENCY", e))?;
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "QUEUE_CONCURRENCY",
                    format!("{n:?} is not a count between 1 and 1000"),
                )
            })?;
        out.insert(queue, n);
    }
    Ok(out)
}

/// Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
pub fn default_retry_schedule() -> Vec<Duration> {
    [0, 5, 300, 1800, 7200, 18000, 36000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// `0s,5s,5m`: 1 to 20 delays, each at most a day.
pub fn parse_retry_schedule(v: &str) -> Result<Vec<Duration>, Error> {
    let key = "WEBHOOK_RETRY_SCHEDULE";
    let out = v
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| humantime::parse_duration(p).map_err(|e| invalid(key, format!("{p:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() || out.len() > 20 {
        return Err(invalid(key, "must list 1 to 20 delays"));
    }
    if out.iter().any(|d| *d > Duration::from_secs(24 * 3600)) {
        return Err(invalid(key, "each delay must be at most 24h"));
    }
    Ok(out)
}

fn parse_cidrs(key: &str, v: &str) -> Result<Vec<ipnet::IpNet>, Error> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid(key, format!("{p:?} is not a CIDR")))
        })
        .collect()
}

fn sqlite_url(data_dir: &std::path::Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("smartbot.db").display()
    )
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::validation(key, format!("invalid {key}: {why}"))
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| invalid(key, e))
}

fn duration(key: &str, v: &str) -> Result<Duration, Error> {
    let d = humantime::parse_duration(v).map_err(|e| invalid(key, e))?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_embedded() {
        let c = from(&[]).unwrap();
        assert_eq!(c.port, 4001);
        assert!(c.is_sqlite());
        assert_eq!(c.database_url, "sqlite://./data/smartbot.db?mode=rwc");
        assert_eq!(c.media_dir(), PathBuf::from("./data/uploads"));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                max: 100,
                window: Duration::from_secs(900)
            })
        );
        assert!(c.redis_url.is_none());
        assert_eq!(c.media_max_bytes, 5 * 1024 * 1024);
        assert_eq!(
            from(&[("MEDIA_MAX_BYTES", "1024")])
                .unwrap()
                .media_max_bytes,
            1024
        );
        assert!(from(&[("MEDIA_MAX_BYTES", "0")]).is_err());
    }

    #[test]
    fn overrides_and_off() {
        let c = from(&[
            ("PORT", "8080"),
            ("DATA_DIR", "/tmp/x"),
            ("RATE_LIMIT", "off"),
            ("DATABASE_URL", "postgres://u@h/db"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.rate_limit, None);
        assert!(!c.is_sqlite());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.media_dir(), PathBuf::from("/tmp/x/uploads"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = from(&[("RATE_LIMIT", "lots")]).unwrap_err();
        assert!(err.to_string().contains("RATE_LIMIT"), "{err}");
        let err = from(&[("PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
        assert!(from(&[("RATE_LIMIT", "0/1m")]).is_err());
        let c = from(&[(
            "QUEUE_CONCURRENCY",
            "media_processing=7, webhook_delivery=1",
        )])
        .unwrap();
        assert_eq!(
            c.queue_concurrency.get(&QueueName::MediaProcessing),
            Some(&7)
        );
        assert_eq!(c.queue_concurrency.len(), 2);
        assert!(
            from(&[("QUEUE_CONCURRENCY", "nope=1")])
                .unwrap_err()
                .to_string()
                .contains("QUEUE_CONCURRENCY")
        );
        assert!(from(&[("QUEUE_CONCURRENCY", "media_processing=0")]).is_err());
        let c = from(&[
            ("WEBHOOK_RETRY_SCHEDULE", "0s, 100ms, 2s"),
            ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1"),
        ])
        .unwrap();
        assert_eq!(
            c.webhook_retry_schedule,
            vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_secs(2)
            ]
        );
        assert_eq!(c.webhook_allowed_networks.len(), 2);
        assert_eq!(from(&[]).unwrap().webhook_retry_schedule.len(), 7);
        for (k, v) in [
            ("WEBHOOK_RETRY_SCHEDULE", "soon"),
            ("WEBHOOK_RETRY_SCHEDULE", "25h"),
            ("WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/33"),
            ("WEBHOOK_HTTPS_ONLY", "maybe"),
            ("WEBHOOK_TIMEOUT", "0s"),
        ] {
            assert!(
                from(&[(k, v)]).unwrap_err().to_string().contains(k),
                "{k}={v}"
            );
        }
        assert_eq!(
            "5/1s".parse::<RateLimit>().unwrap(),
            RateLimit {
                max: 5,
                window: Duration::from_secs(1)
            }
        );
    }
}
