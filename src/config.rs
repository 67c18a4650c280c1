//! One typed `Config`, read once from the environment (and `.env` when present).
//!
//! The defaults *are* the embedded mode: a SQLite file and media under `./data`, port 4001, no Redis.
//! Setting `DATABASE_URL=postgres://…` and `REDIS_URL=redis://…` switches the same binary to scale-out.
//! Nothing else in the program reads the environment.
//!
//! `Config` is a serde struct: figment extracts it from the variables (each field is its variable,
//! lowercased; `WHATSAPP_*` nest under `whatsapp`), humantime-serde reads the durations, and the
//! few domain formats (comma lists of CIDRs, delays and `queue=N`, `off`) are the deserializers in
//! [`de`]. Range rules that span no format live in [`Config::check`]. A bad value is a VALIDATION
//! error that names its variable. figment's own `Env` provider is not used: it reads values as
//! literals (`123` becomes a number, `"x"` loses its quotes, `[a]` an array), which would corrupt
//! digit-only ids and secrets; [`env_dict`] hands figment every value as the string it was.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::Serialized,
    value::{Dict, Value},
};
use serde::Deserialize;

use crate::{error::Error, queue::QueueName};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            _ => Err("expected json or pretty"),
        }
    }
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
        // The limiter's arithmetic is in nanoseconds (governor panics past 584 years).
        if window > Duration::from_secs(366 * 24 * 3600) {
            return Err("rate limit window must be at most a year".into());
        }
        Ok(Self { max, window })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
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
    #[serde(deserialize_with = "de::off_or")]
    pub rate_limit: Option<RateLimit>,
    /// `TRUST_PROXY` (default false): take the client IP from X-Forwarded-For, as the nearest
    /// trusted proxy saw it.
    pub trust_proxy: bool,
    /// `TRUSTED_PROXIES`: CIDRs of the proxies in front of the server (comma-separated). The
    /// client IP is the rightmost X-Forwarded-For hop outside them. Empty: only the direct peer is
    /// trusted, so the client IP is the last hop it appended.
    #[serde(deserialize_with = "de::cidrs")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `HTTP_READ_TIMEOUT` (default 30s): how long a connection may take to send a request's
    /// headers (an idle keep-alive connection too: it waits for its next request's), and how
    /// long a request body may pause between two of its parts. A connection that takes longer is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub http_read_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS` (default: the open-file limit less 256 kept for the database,
    /// Redis and files): connections served at once, WebSockets included. Past it, new ones
    /// wait in the listen queue instead of taking the descriptors everything else needs.
    pub http_max_connections: Option<usize>,
    /// `WS_INIT_TIMEOUT` (default 10s): a socket must send `connection_init` within this (4408).
    #[serde(with = "humantime_serde")]
    pub ws_init_timeout: Duration,
    /// `WS_MAX_OPERATIONS` (default 100): operations that may run at once on one socket.
    pub ws_max_operations: usize,
    /// `WS_KEEPALIVE` (default 15s): ping interval; a peer silent for two intervals is dropped.
    #[serde(with = "humantime_serde")]
    pub ws_keepalive: Duration,
    /// `LOG_FORMAT` (pretty | json).
    #[serde(deserialize_with = "de::parsed")]
    pub log_format: LogFormat,
    /// `BODY_LIMIT` in bytes (default 10 MiB).
    pub body_limit: usize,
    /// `GRAPHQL_MAX_DEPTH` (default 16).
    pub graphql_max_depth: usize,
    /// `GRAPHQL_MAX_COMPLEXITY` (default 5000): a field costs 1 plus what it selects, a paginated
    /// field what one item selects times the items its page may hold.
    pub graphql_max_complexity: usize,
    /// `SHUTDOWN_GRACE` (default 10s).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `SEED_TEMPLATES` (default true): insert the default templates into an empty database.
    pub seed_templates: bool,
    /// `REDIS_PREFIX` (default `smartbot:`): namespaces every Redis key.
    pub redis_prefix: String,
    /// `QUEUE_CONCURRENCY`, e.g. `media_processing=3,message_sending=5` (unset queues keep the
    /// seed's defaults: 3, 5, 2, 5).
    #[serde(deserialize_with = "de::concurrency")]
    pub queue_concurrency: HashMap<QueueName, usize>,
    /// `JOB_LEASE` (default 30s): how long a job stays leased without renewal; a crashed worker's
    /// job is reclaimed after this.
    #[serde(with = "humantime_serde")]
    pub job_lease: Duration,
    /// `QUEUE_POLL_INTERVAL` (default 250ms): how often the embedded queue looks for work that
    /// other processes enqueued.
    #[serde(with = "humantime_serde")]
    pub queue_poll_interval: Duration,
    /// `RUN_WORKERS` (default true): `serve` runs the workers in-process.
    pub run_workers: bool,
    /// `MEDIA_MAX_BYTES` (default 5 MiB): the largest file an upload may be.
    pub media_max_bytes: usize,
    /// `MEDIA_DECODE_BUDGET_MB` (default 512): the memory all image decodes may hold at once; a
    /// burst of large images queues instead of allocating.
    #[serde(rename = "media_decode_budget_mb", deserialize_with = "de::megabytes")]
    pub media_decode_budget: u64,
    /// `EVENT_HISTORY` (default 1000): events kept per merchant for replay and `recentEvents`.
    pub event_history: usize,
    /// `EVENT_BUFFER` (default 1024): how far a live subscriber may fall behind before it is cut
    /// off with LAGGED (and resumes with `after`).
    pub event_buffer: usize,
    /// `METRICS_TOKEN` (default none): when set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// `WEBHOOK_TIMEOUT` (default 15s): one delivery attempt, connect to last byte.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE` (default `0s,5s,5m,30m,2h,5h,10h`): the delay before each
    /// attempt (the first is the first attempt's); its length is the number of attempts.
    #[serde(deserialize_with = "de::retry_schedule")]
    pub webhook_retry_schedule: Vec<Duration>,
    /// `WEBHOOK_DISABLE_AFTER` (default 5 days): an endpoint whose every attempt failed for this
    /// long is disabled.
    #[serde(with = "humantime_serde")]
    pub webhook_disable_after: Duration,
    /// `WEBHOOK_ALLOWED_NETWORKS`: CIDRs that deliveries may reach although they are private,
    /// loopback, etc. (default none).
    #[serde(deserialize_with = "de::cidrs")]
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,
    /// `WEBHOOK_HTTPS_ONLY` (default false): refuse `http://` endpoints.
    pub webhook_https_only: bool,
    /// `WEBHOOK_LOG_RETENTION` (default 30 days): delivery logs older than this are trimmed.
    #[serde(with = "humantime_serde")]
    pub webhook_log_retention: Duration,
    /// `WEBHOOK_SWEEP_INTERVAL` (default 5s): how often each process looks for events whose
    /// webhook fan-out was interrupted by a crash (and trims old logs).
    #[serde(with = "humantime_serde")]
    pub webhook_sweep_interval: Duration,
    /// `WHATSAPP_*`: the Cloud API, the platform number, the inbound webhook's secrets.
    pub whatsapp: crate::whatsapp::WhatsAppConfig,
    /// `BOT_STALE_AFTER` (default 5m; `off` disables): a connected bot that has not reported for
    /// this long is marked disconnected.
    #[serde(deserialize_with = "de::off_or_duration")]
    pub bot_stale_after: Option<Duration>,
    /// `TEMPLATE_CACHE_MB` (default 32; 0 turns it off): the memory the template read cache may
    /// hold (see `templates::cache`).
    #[serde(rename = "template_cache_mb", deserialize_with = "de::cache_megabytes")]
    pub template_cache_bytes: usize,
}

impl Default for Config {
    /// The embedded defaults under `./data`.
    fn default() -> Self {
        Self::embedded("./data")
    }
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
            http_read_timeout: Duration::from_secs(30),
            http_max_connections: None,
            ws_init_timeout: Duration::from_secs(10),
            ws_max_operations: 100,
            ws_keepalive: Duration::from_secs(15),
            log_format: LogFormat::Pretty,
            body_limit: 10 * 1024 * 1024,
            graphql_max_depth: 16,
            graphql_max_complexity: 5000,
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
        // A line dotenvy cannot read stops it there: the lines after it would be dropped
        // without a word, and the server would start on defaults.
        match dotenvy::dotenv() {
            Err(e) if !e.not_found() => return Err(invalid(".env", e)),
            _ => {}
        }
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Builds a Config from `(NAME, value)` pairs; unset or empty names take the embedded default.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        let figment = Figment::from(Serialized::defaults(env_dict(vars)));
        let mut c: Self = figment.extract_lossy().map_err(|e| {
            let key = e.path.join("_").to_ascii_uppercase();
            invalid(&key, e.kind)
        })?;
        if !figment.contains("database_url") {
            c.database_url = sqlite_url(&c.data_dir);
        }
        c.whatsapp.check()?;
        c.check()?;
        Ok(c)
    }

    /// `DATABASE_URL` and `REDIS_URL` are URLs of a kind this program speaks, checked before
    /// anything connects: a bad one names its variable, never reads as an outage, and is shown
    /// without its password (see [`redact_url`]).
    pub fn check_urls(&self) -> Result<(), Error> {
        let db = &self.database_url;
        if !db.starts_with("sqlite:") {
            let ok = url::Url::parse(db)
                .map_err(|e| invalid("DATABASE_URL", format!("{}: {e}", redact_url(db))))?;
            if !matches!(ok.scheme(), "postgres" | "postgresql") {
                return Err(invalid(
                    "DATABASE_URL",
                    format!("{}: must start with sqlite: or postgres://", redact_url(db)),
                ));
            }
        }
        if let Some(r) = &self.redis_url {
            let ok = url::Url::parse(r)
                .map_err(|e| invalid("REDIS_URL", format!("{}: {e}", redact_url(r))))?;
            if !matches!(
                ok.scheme(),
                "redis" | "rediss" | "redis-cluster" | "redis-sentinel"
            ) {
                return Err(invalid(
                    "REDIS_URL",
                    format!("{}: must start with redis:// or rediss://", redact_url(r)),
                ));
            }
        }
        Ok(())
    }

    /// The rules a value's format does not carry.
    fn check(&self) -> Result<(), Error> {
        self.check_urls()?;
        let counts = [
            ("WS_MAX_OPERATIONS", self.ws_max_operations),
            ("MEDIA_MAX_BYTES", self.media_max_bytes),
            ("EVENT_HISTORY", self.event_history),
            ("EVENT_BUFFER", self.event_buffer),
            // Zero would refuse every request (a body limit of nothing, no query depth at all).
            ("BODY_LIMIT", self.body_limit),
            ("GRAPHQL_MAX_DEPTH", self.graphql_max_depth),
            ("GRAPHQL_MAX_COMPLEXITY", self.graphql_max_complexity),
            // Zero makes a pool that can never hand out a connection.
            (
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections as usize,
            ),
        ];
        let spans = [
            // Zero would poll in a busy loop.
            ("QUEUE_POLL_INTERVAL", self.queue_poll_interval),
            ("HTTP_READ_TIMEOUT", self.http_read_timeout),
            ("WS_INIT_TIMEOUT", self.ws_init_timeout),
            ("WS_KEEPALIVE", self.ws_keepalive),
            ("WEBHOOK_TIMEOUT", self.webhook_timeout),
            ("WEBHOOK_DISABLE_AFTER", self.webhook_disable_after),
            ("WEBHOOK_LOG_RETENTION", self.webhook_log_retention),
            ("WEBHOOK_SWEEP_INTERVAL", self.webhook_sweep_interval),
        ];
        let zero = counts.iter().find(|(_, n)| *n == 0).map(|(k, _)| k);
        let zero =
            zero.or((self.http_max_connections == Some(0)).then_some(&"HTTP_MAX_CONNECTIONS"));
        let zero = zero.or(spans.iter().find(|(_, d)| d.is_zero()).map(|(k, _)| k));
        if let Some(key) = zero {
            return Err(invalid(key, "must be greater than zero"));
        }
        // Allocated up front, per process (EVENT_BUFFER: a broadcast ring of that many slots).
        let caps = [
            ("EVENT_BUFFER", self.event_buffer, MAX_EVENT_BUFFER),
            (
                "WS_MAX_OPERATIONS",
                self.ws_max_operations,
                MAX_WS_OPERATIONS,
            ),
            (
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections as usize,
                MAX_DATABASE_CONNECTIONS,
            ),
        ];
        if let Some((key, _, max)) = caps.iter().find(|(_, n, max)| n > max) {
            return Err(invalid(key, format!("must be at most {max}")));
        }
        if self.job_lease < Duration::from_secs(1) {
            return Err(invalid("JOB_LEASE", "must be at least 1s"));
        }
        if self.webhook_timeout > Duration::from_secs(300) {
            return Err(invalid("WEBHOOK_TIMEOUT", "must be at most 5m"));
        }
        Ok(())
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// Where uploaded media is stored.
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}

/// The largest `EVENT_BUFFER`: its ring is allocated at start (about 50 bytes a slot).
const MAX_EVENT_BUFFER: usize = 1_000_000;
/// The largest `WS_MAX_OPERATIONS` per socket.
const MAX_WS_OPERATIONS: usize = 10_000;
/// The largest `DATABASE_MAX_CONNECTIONS`.
const MAX_DATABASE_CONNECTIONS: usize = 10_000;

/// The variables as figment data: names lowercased, values trimmed and kept as strings, empty
/// ones dropped, `WHATSAPP_X` nested as `whatsapp.x`. Names with lowercase letters are not ours.
fn env_dict(vars: impl IntoIterator<Item = (String, String)>) -> Dict {
    let (mut top, mut whatsapp) = (Dict::new(), Dict::new());
    for (name, value) in vars {
        let value = value.trim();
        if value.is_empty() || name.bytes().any(|b| b.is_ascii_lowercase()) {
            continue;
        }
        let key = name.to_ascii_lowercase();
        match key.strip_prefix("whatsapp_") {
            Some(rest) => whatsapp.insert(rest.to_owned(), Value::from(value)),
            None => top.insert(key, Value::from(value)),
        };
    }
    top.insert("whatsapp".into(), Value::from(whatsapp));
    top
}

/// `media_processing=3,message_sending=5` → per-queue worker counts.
/// `QUEUE_CONCURRENCY`'s value (or a flag's of the same form, named `source` in errors).
pub fn parse_concurrency(source: &str, v: &str) -> Result<HashMap<QueueName, usize>, Error> {
    concurrency(v).map_err(|why| invalid(source, why))
}

fn concurrency(v: &str) -> Result<HashMap<QueueName, usize>, String> {
    let mut out = HashMap::new();
    for part in list(v) {
        let (q, n) = part
            .split_once('=')
            .ok_or_else(|| format!("expected queue=N, got {part:?}"))?;
        let queue: QueueName = q.parse().map_err(|e: Error| e.to_string())?;
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| format!("{n:?} is not a count between 1 and 1000"))?;
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
    retry_schedule(v).map_err(|why| invalid("WEBHOOK_RETRY_SCHEDULE", why))
}

fn retry_schedule(v: &str) -> Result<Vec<Duration>, String> {
    let out = list(v)
        .map(|p| humantime::parse_duration(p).map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() || out.len() > 20 {
        return Err("must list 1 to 20 delays".into());
    }
    if out.iter().any(|d| *d > Duration::from_secs(24 * 3600)) {
        return Err("each delay must be at most 24h".into());
    }
    Ok(out)
}

fn cidrs(v: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list(v)
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{p:?} is not a CIDR"))
        })
        .collect()
}

/// The non-empty, trimmed items of a comma-separated list.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// The deserializers of the formats that are ours.
mod de {
    use std::{collections::HashMap, fmt::Display, str::FromStr, time::Duration};

    use serde::{Deserialize, Deserializer, de::Error as _};

    use crate::queue::QueueName;

    fn with<'de, D: Deserializer<'de>, T, E: Display>(
        d: D,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }

    /// Any `FromStr` type, with its own error message.
    pub fn parsed<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        d: D,
    ) -> Result<T, D::Error> {
        with(d, str::parse)
    }

    /// `off`, or a `FromStr` value.
    pub fn off_or<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        with(d, |s| {
            if s.eq_ignore_ascii_case("off") {
                Ok(None)
            } else {
                s.parse().map(Some)
            }
        })
    }

    /// `off`, or a duration greater than zero.
    pub fn off_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let d = off_or::<D, humantime::Duration>(d)?.map(Duration::from);
        match d {
            Some(d) if d.is_zero() => Err(D::Error::custom("must be greater than zero")),
            d => Ok(d),
        }
    }

    pub fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        with(d, super::cidrs)
    }

    pub fn concurrency<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<QueueName, usize>, D::Error> {
        with(d, super::concurrency)
    }

    pub fn retry_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        with(d, super::retry_schedule)
    }

    /// `TEMPLATE_CACHE_MB`: 0 (off) to 1 TiB, in bytes.
    pub fn cache_megabytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let mb = usize::deserialize(d)?;
        if mb > 1 << 20 {
            return Err(D::Error::custom("must be at most 1048576"));
        }
        Ok(mb << 20)
    }

    /// `MEDIA_DECODE_BUDGET_MB`: 16 MiB to 1 TiB, in bytes.
    pub fn megabytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let mb = u64::deserialize(d)?;
        if !(16..=1 << 20).contains(&mb) {
            return Err(D::Error::custom("must be 16 to 1048576"));
        }
        Ok(mb << 20)
    }
}

pub fn sqlite_url(data_dir: &std::path::Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("smartbot.db").display()
    )
}

/// A connection URL as logs and errors may show it: its password replaced by `***`. A URL
/// that does not parse is shown as its scheme only (its password could be anywhere in it).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".into(),
        },
    }
}

pub fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::validation(key, format!("invalid {key}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
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
        for (k, v) in [
            ("DATABASE_URL", "postgres://u:S3CRET@127.0.0.1:99999/x"),
            ("DATABASE_URL", "mysql://u:S3CRET@h/x"),
            ("DATABASE_URL", "garbage"),
            ("REDIS_URL", "http://:S3CRET@127.0.0.1:6379"),
        ] {
            let err = from(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
            assert!(!err.contains("S3CRET"), "{err}");
        }
        assert_eq!(
            redact_url("redis://:S3CRET@127.0.0.1:1/0"),
            "redis://:***@127.0.0.1:1/0"
        );
        let err = from(&[("RATE_LIMIT", "1/100000000000000h")]).unwrap_err();
        assert!(err.to_string().contains("at most a year"), "{err}");
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
            ("BODY_LIMIT", "0"),
            ("GRAPHQL_MAX_DEPTH", "0"),
            ("GRAPHQL_MAX_COMPLEXITY", "0"),
            ("QUEUE_POLL_INTERVAL", "0ms"),
            // A pool of none panicked in the pool's queue; a huge ring aborted the process.
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("DATABASE_MAX_CONNECTIONS", "10001"),
            ("EVENT_BUFFER", "99999999999"),
            ("EVENT_BUFFER", "1000001"),
            ("WS_MAX_OPERATIONS", "99999999999"),
            ("WHATSAPP_RETRY_BASE", "0s"),
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

    #[test]
    fn values_stay_strings_and_formats_are_read() {
        let c = from(&[
            ("JWT_SECRET", " 0123456789012345 "),
            ("METRICS_TOKEN", "[not-an-array]"),
            ("WHATSAPP_PHONE_NUMBER_ID", "0123456"),
            ("WHATSAPP_API_BASE", "http://127.0.0.1:9/"),
            ("WHATSAPP_TIMEOUT", "2s"),
            ("DATA_DIR", "/tmp/y"),
            ("TRUST_PROXY", "Yes"),
            ("SEED_TEMPLATES", "0"),
            ("LOG_FORMAT", "JSON"),
            ("BOT_STALE_AFTER", "off"),
            ("SHUTDOWN_GRACE", "1m 30s"),
            ("MEDIA_DECODE_BUDGET_MB", "64"),
            ("BIND_ADDR", "127.0.0.1"),
            ("RATE_LIMIT", ""),
            ("port", "1"),
        ])
        .unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("0123456789012345"));
        assert_eq!(c.metrics_token.as_deref(), Some("[not-an-array]"));
        assert_eq!(c.whatsapp.phone_number_id.as_deref(), Some("0123456"));
        assert_eq!(c.whatsapp.api_base, "http://127.0.0.1:9");
        assert_eq!(c.whatsapp.timeout, Duration::from_secs(2));
        assert_eq!(c.database_url, "sqlite:///tmp/y/smartbot.db?mode=rwc");
        assert!(c.trust_proxy && !c.seed_templates);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.bot_stale_after, None);
        assert_eq!(c.shutdown_grace, Duration::from_secs(90));
        assert_eq!(c.media_decode_budget, 64 << 20);
        assert_eq!(c.bind_addr, IpAddr::from([127, 0, 0, 1]));
        assert!(c.rate_limit.is_some(), "empty takes the default");
        assert_eq!(c.port, 4001, "lowercase names are not ours");
        for (k, v) in [
            ("WHATSAPP_API_BASE", "ftp://x"),
            ("WHATSAPP_PHONE_NUMBER_ID", "12a"),
            ("WHATSAPP_TIMEOUT", "0s"),
            ("WHATSAPP_TIMEOUT", "6m"),
            ("WHATSAPP_RETRY_BASE", "soon"),
            ("WHATSAPP_MERCHANT_ID", "a b"),
            ("MEDIA_DECODE_BUDGET_MB", "8"),
            ("JOB_LEASE", "10ms"),
            ("WEBHOOK_TIMEOUT", "6m"),
            ("BOT_STALE_AFTER", "0s"),
            ("EVENT_BUFFER", "0"),
            ("TRUST_PROXY", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("BIND_ADDR", "localhost"),
            ("DATABASE_MAX_CONNECTIONS", "-1"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, nope"),
        ] {
            let err = from(&[(k, v)]).unwrap_err();
            assert!(err.to_string().contains(k), "{k}={v}: {err}");
            assert_eq!(err.field(), Some(k), "{k}={v}");
        }
    }
}
