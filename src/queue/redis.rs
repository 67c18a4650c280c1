//! The Redis queue backend (fred).
//!
//! ## Design, and why not Streams
//!
//! The issue suggests one Stream per queue read by a consumer group. Streams deliver in arrival
//! order only, while jobs here have priorities, delays, caller-chosen ids and per-job leases, so
//! a Stream would need a sorted set beside it anyway and two structures to keep consistent. This
//! backend keeps the same safety properties with plain sorted sets, each change in one Lua script:
//!
//! * `job:<id>` — a hash with the job's fields (payload, state, attempts, lease token, errors …).
//! * `wait` — ready jobs, scored `priority·10¹³ + ready time (ms)`: ZPOPMIN takes the highest
//!   priority, oldest first (ties fall back to the id, and generated ids are time-ordered UUIDv7).
//! * `delayed` — jobs and backoffs scored by run time; promoted atomically by the fetch script.
//! * `active` — leased jobs scored by lease deadline. Workers extend the lease while a job runs;
//!   the recover script moves expired leases back to `wait` (the XAUTOCLAIM of this design).
//! * `completed` / `failed` — scored by finish time, trimmed by count and age.
//! * `notify` — a list that enqueue pushes to; idle workers BLPOP it on their own connection, so
//!   an idle queue picks a job up within a round trip instead of a poll interval.
//! * `paused` — a flag the fetch script honours.
//!
//! Every key of a queue shares the hash tag `{q:<queue>}`, so the scripts touch one slot and a
//! cluster would work. Scripts run by EVALSHA through fred's `Script`, which reloads them on
//! NOSCRIPT (after a Redis restart). All times come from Redis `TIME`, so workers on different machines agree. Every lease has a
//! fresh token that complete/fail/extend check, so a worker that lost its lease changes nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Once},
    time::Duration,
};

use async_trait::async_trait;
use fred::interfaces::LuaInterface as _;
use fred::{
    clients::{Client, Pool},
    interfaces::{ClientLike, KeysInterface, ListInterface, SortedSetsInterface},
    prelude::{Builder, Config as RedisConfig, Options, ReconnectPolicy},
    types::{
        ClusterHash, CustomCommand, Value as RedisValue,
        scripts::Script as FredScript,
        sorted_sets::{ZRange, ZRangeBound, ZRangeKind, ZSort},
    },
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    AttemptError, Completion, FailedKey, JobInfo, JobState, Leased, NewJob, Outcome, Priority,
    QueueBackend, QueueControl, QueueName, Retention, StateCounts,
};
use crate::error::{Error, Result};

const LUA_NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Adds ARGV[2] jobs, each as 8 fields after ARGV[2]: id, name, payload, prio, max, backoff,
/// timeout, delay. KEYS: wait, delayed, notify, seq. Returns 1 per new job, 0 per existing id.
const ENQUEUE: &str = r#"
local now = now_ms()
local count = tonumber(ARGV[2])
local out = {}
local woken = 0
for i = 0, count - 1 do
  local b = 2 + i * 8
  local id = ARGV[b + 1]
  local jk = ARGV[1] .. id
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 0
  else
    local delay = tonumber(ARGV[b + 8])
    local run_at = now + delay
    local state = 'waiting'
    if delay > 0 then state = 'delayed' end
    redis.call('HSET', jk, 'id', id, 'name', ARGV[b + 2], 'payload', ARGV[b + 3], 'state', state,
      'prio', ARGV[b + 4], 'attempts', 0, 'max', ARGV[b + 5], 'backoff', ARGV[b + 6], 'timeout', ARGV[b + 7],
      'created', now, 'run_at', run_at)
    if delay > 0 then
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      redis.call('ZADD', KEYS[1], tonumber(ARGV[b + 4]) * 1e13 + now, id)
      woken = woken + 1
    end
    out[#out + 1] = 1
  end
end
if woken > 0 then
  for _ = 1, math.min(woken, 64) do redis.call('LPUSH', KEYS[3], 1) end
  redis.call('LTRIM', KEYS[3], 0, 999)
end
return out
"#;

/// Promotes due delayed jobs, then leases up to ARGV[2] jobs into `out`.
/// KEYS: wait, delayed, active, paused, seq. ARGV: job prefix, n, lease ms, token.
const LUA_FETCH_FN: &str = r#"
local function fetch_jobs(now, out)
  if redis.call('EXISTS', KEYS[4]) == 1 or tonumber(ARGV[2]) <= 0 then return end
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local jk = ARGV[1] .. id
    local prio = tonumber(redis.call('HGET', jk, 'prio') or 1)
    redis.call('ZADD', KEYS[1], prio * 1e13 + now, id)
    redis.call('HSET', jk, 'state', 'waiting')
  end
  local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[2]))
  local lease_until = now + tonumber(ARGV[3])
  for i = 1, #popped, 2 do
    local id = popped[i]
    local jk = ARGV[1] .. id
    local h = redis.call('HGETALL', jk)
    if #h > 0 then
      local attempts = 1
      for f = 1, #h, 2 do
        if h[f] == 'attempts' then attempts = tonumber(h[f + 1]) + 1; h[f + 1] = tostring(attempts)
        elseif h[f] == 'state' then h[f + 1] = 'active' end
      end
      redis.call('HSET', jk, 'state', 'active', 'attempts', attempts, 'token', ARGV[4], 'lease', lease_until, 'started', now)
      redis.call('ZADD', KEYS[3], lease_until, id)
      h[#h + 1] = 'started'
      h[#h + 1] = tostring(now)
      out[#out + 1] = h
    end
  end
end
"#;

const FETCH: &str = r#"
local out = {}
fetch_jobs(now_ms(), out)
return out
"#;

/// Records completions (ARGV[5] of them as id, token, result triples after ARGV[5]), then
/// fetches. Returns {landed, job, job, …}. KEYS as fetch, plus KEYS[6] = completed.
const COMPLETE_FETCH: &str = r#"
local now = now_ms()
local count = tonumber(ARGV[5])
local landed = 0
for i = 0, count - 1 do
  local id, tok, res = ARGV[6 + i * 3], ARGV[7 + i * 3], ARGV[8 + i * 3]
  local jk = ARGV[1] .. id
  -- Only an active job carries a token, so a matching token proves the lease.
  if redis.call('HGET', jk, 'token') == tok then
    redis.call('ZREM', KEYS[3], id)
    redis.call('HSET', jk, 'state', 'completed', 'result', res, 'finished', now, 'token', '', 'lease', '')
    redis.call('ZADD', KEYS[6], now, id)
    landed = landed + 1
  end
end
local out = {landed}
fetch_jobs(now, out)
return out
"#;

const EXTEND: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
local lease = now_ms() + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease', lease)
redis.call('ZADD', KEYS[2], 'XX', lease, ARGV[3])
return 1
"#;

const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
local now = now_ms()
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[2], 'finished', now)
redis.call('HDEL', KEYS[1], 'token', 'lease')
redis.call('ZADD', KEYS[3], now, ARGV[3])
return 1
"#;

const FAIL: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
local now = now_ms()
local errs = cjson.decode(redis.call('HGET', KEYS[1], 'errors') or '[]')
if type(errs) ~= 'table' then errs = {} end
table.insert(errs, {attempt = tonumber(ARGV[3]), error = ARGV[2], at = now})
if #errs > 50 then table.remove(errs, 11) end
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('HDEL', KEYS[1], 'token', 'lease')
local retry = tonumber(ARGV[4])
if retry >= 0 then
  redis.call('HSET', KEYS[1], 'state', 'delayed', 'run_at', now + retry, 'errors', cjson.encode(errs), 'last_error', ARGV[2])
  redis.call('ZADD', KEYS[3], now + retry, ARGV[5])
else
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished', now, 'errors', cjson.encode(errs), 'last_error', ARGV[2])
  redis.call('ZADD', KEYS[4], now, ARGV[5])
end
return 1
"#;

const RECOVER: &str = r#"
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 500)
local n = 0
local msg = 'stalled: the worker stopped renewing its lease (crashed or hung)'
for _, id in ipairs(ids) do
  local jk = ARGV[1] .. id
  redis.call('ZREM', KEYS[1], id)
  if redis.call('EXISTS', jk) == 1 then
    local attempts = tonumber(redis.call('HGET', jk, 'attempts') or 0)
    local max = tonumber(redis.call('HGET', jk, 'max') or 1)
    local errs = cjson.decode(redis.call('HGET', jk, 'errors') or '[]')
    if type(errs) ~= 'table' then errs = {} end
    table.insert(errs, {attempt = attempts, error = msg, at = now})
    redis.call('HDEL', jk, 'token', 'lease')
    if attempts >= max then
      redis.call('HSET', jk, 'state', 'failed', 'finished', now, 'errors', cjson.encode(errs), 'last_error', msg)
      redis.call('ZADD', KEYS[3], now, id)
    else
      local prio = tonumber(redis.call('HGET', jk, 'prio') or 1)
      redis.call('HSET', jk, 'state', 'waiting', 'run_at', now, 'errors', cjson.encode(errs), 'last_error', msg)
      redis.call('ZADD', KEYS[2], prio * 1e13 + now, id)
      redis.call('LPUSH', KEYS[5], 1)
    end
    n = n + 1
  end
end
return n
"#;

/// A leased job that never started goes back to the front of its priority, attempt undone.
const RELEASE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'token', 'state', 'prio')
if cur[1] ~= ARGV[1] or cur[2] ~= 'active' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'state', 'waiting')
redis.call('HDEL', KEYS[1], 'token', 'lease', 'started')
redis.call('ZADD', KEYS[3], tonumber(cur[3] or 1) * 1e13, ARGV[2])
redis.call('LPUSH', KEYS[4], 1)
return 1
"#;

const RETRY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local prio = tonumber(redis.call('HGET', KEYS[1], 'prio') or 1)
local now = now_ms()
redis.call('HSET', KEYS[1], 'state', 'waiting', 'attempts', 0, 'run_at', now)
redis.call('HDEL', KEYS[1], 'finished')
redis.call('ZADD', KEYS[3], prio * 1e13 + now, ARGV[1])
redis.call('LPUSH', KEYS[5], 1)
return 1
"#;

const REMOVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'active' then return -1 end
redis.call('DEL', KEYS[1])
for i = 2, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"#;

/// Trims one call's worth (at most ARGV[6] jobs per state) and returns {removed, more}; the
/// caller repeats while `more` is 1, so one clean catches up however far behind it is, while
/// each script stays short.
const CLEAN: &str = r#"
local now = now_ms()
local cap = tonumber(ARGV[6])
local removed = 0
local more = 0
local function drop(key, ids)
  for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[1] .. id)
    redis.call('ZREM', key, id)
    removed = removed + 1
  end
end
local function trim(key, keep, age)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - age, 'LIMIT', 0, cap)
  drop(key, old)
  local extra = redis.call('ZCARD', key) - keep
  if extra > 0 then
    drop(key, redis.call('ZRANGE', key, 0, math.min(extra, cap) - 1))
    if extra > cap then more = 1 end
  end
  if #old == cap then more = 1 end
end
trim(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
trim(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {removed, more}
"#;

/// One of the queue's Lua scripts: fred's [`FredScript`] (which hashes it and reloads it on
/// NOSCRIPT, after a Redis restart), plus the one call fred has no form for.
struct Script(FredScript);

impl Script {
    fn new(body: &str) -> Self {
        Self(FredScript::from_lua(format!(
            "{LUA_NOW}{LUA_FETCH_FN}{body}"
        )))
    }

    async fn run<R: fred::types::FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<RedisValue>,
    ) -> Result<R> {
        self.0
            .evalsha_with_reload(client, keys, args)
            .await
            .map_err(redis_err)
    }

    /// Runs a script that must never run twice for one call (a lease): fred re-sends a command
    /// whose reply was lost to a dropped connection, which would lease a second batch, so this
    /// one is written at most once and a lost reply is an error (its leases expire and recover).
    /// fred's `Script` only runs on a plain `Client`, and the at-most-once client is a
    /// `WithOptions<Client>`, so this sends the EVALSHA itself with the script's own hash.
    async fn run_once<R: fred::types::FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<RedisValue>,
    ) -> Result<R> {
        let once = client.with_options(&Options {
            max_attempts: Some(1),
            ..Default::default()
        });
        let mut argv: Vec<RedisValue> = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(self.0.sha1().clone().into());
        argv.push((keys.len() as i64).into());
        argv.extend(keys.into_iter().map(RedisValue::from));
        argv.extend(args);
        // Offset 2: route by the first key (after the SHA and the key count), as EVALSHA does.
        let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
        match once.custom::<R, _>(cmd.clone(), argv.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                self.0.load(client).await.map_err(redis_err)?;
                once.custom(cmd, argv).await.map_err(redis_err)
            }
            other => other.map_err(redis_err),
        }
    }
}

fn redis_err(e: fred::error::Error) -> Error {
    Error::redis("the job queue", &e)
}

struct Scripts {
    enqueue: Script,
    fetch: Script,
    complete_fetch: Script,
    extend: Script,
    complete: Script,
    fail: Script,
    recover: Script,
    retry: Script,
    release: Script,
    remove: Script,
    clean: Script,
}

pub struct RedisQueue {
    pool: Pool,
    /// One connection per queue for its blocking wait, so a BLPOP never holds up commands.
    blocking: HashMap<QueueName, Client>,
    /// Per queue: woken by that queue's BLPOP loop, started by the first worker that waits.
    /// Keeping the BLPOP in its own task makes waiting cancellation-safe: a worker that stops
    /// waiting does not leave a BLPOP behind that would swallow the next wake-up.
    wakers: HashMap<QueueName, (Arc<Notify>, Once)>,
    stop: CancellationToken,
    prefix: String,
    scripts: Scripts,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a Redis command may wait for its answer, the reconnects in between included. fred
/// queues commands while it reconnects, with no limit by default: when Redis is down, every
/// request that touches it would hang until Redis came back, instead of failing with a typed
/// error (INTERNAL for an enqueue, 503 from `/ready`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// For a check that fails open (the shared rate limit): it must not hold up the request.
pub const COMMAND_TIMEOUT_FAST: Duration = Duration::from_secs(1);

/// Connects with reconnection forever (exponential, capped at 2 s), so workers resume by
/// themselves after a dropped connection or a Redis restart. Commands are re-sent after a lost
/// reply (`max_command_attempts`) because every script but the lease scripts is safe to repeat
/// (token- and state-checked); leases go through `Script::run_once`.
pub async fn connect_client(url: &str, pool_size: usize) -> Result<Pool> {
    let config = RedisConfig::from_url(url)
        .map_err(|e| Error::validation("REDIS_URL", format!("invalid REDIS_URL: {e}")))?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 5;
            c.auto_client_setname = true;
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2))
        .build_pool(pool_size)
        .map_err(redis_err)?;
    pool.init().await.map_err(|e| {
        Error::Internal(format!(
            "cannot connect to Redis at {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    Ok(pool)
}

/// The server's `maxmemory-policy`, read with `CONFIG GET`.
pub async fn eviction_policy(client: &Client) -> Result<String> {
    let reply: HashMap<String, String> = client
        .custom(
            CustomCommand::new_static("CONFIG", None, false),
            vec!["GET", "maxmemory-policy"],
        )
        .await
        .map_err(redis_err)?;
    reply
        .get("maxmemory-policy")
        .cloned()
        .ok_or_else(|| Error::Internal("redis: CONFIG GET maxmemory-policy gave no value".into()))
}

async fn connect_single(url: &str) -> Result<Client> {
    let config = RedisConfig::from_url(url)
        .map_err(|e| Error::validation("REDIS_URL", format!("invalid REDIS_URL: {e}")))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.auto_client_setname = true;
        })
        // Above the BLPOP's own 1 s.
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2))
        .build()
        .map_err(redis_err)?;
    client.init().await.map_err(|e| {
        Error::Internal(format!(
            "cannot connect to Redis at {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    Ok(client)
}

/// Why anything but `noeviction` is dangerous for a queue, in the words an operator needs.
pub fn eviction_warning(policy: &str) -> Option<String> {
    (policy != "noeviction").then(|| {
        format!(
            "IMPORTANT! Redis maxmemory-policy is {policy:?}; the job queue needs \"noeviction\". \
             With any other policy Redis silently deletes jobs when memory fills. \
             Run `CONFIG SET maxmemory-policy noeviction` and put it in redis.conf."
        )
    })
}

impl RedisQueue {
    /// `prefix` namespaces every key (tests give each run its own).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let pool = connect_client(url, 4).await?;
        match eviction_policy(pool.next()).await {
            Ok(policy) => {
                if let Some(w) = eviction_warning(&policy) {
                    tracing::warn!(maxmemory_policy = %policy, "{w}");
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not read Redis maxmemory-policy (CONFIG may be disabled); make sure it is \"noeviction\", or Redis may delete queued jobs"
            ),
        }
        let mut blocking = HashMap::new();
        for q in QueueName::ALL {
            blocking.insert(q, connect_single(url).await?);
        }
        Ok(Self {
            pool,
            blocking,
            wakers: QueueName::ALL
                .into_iter()
                .map(|q| (q, (Arc::new(Notify::new()), Once::new())))
                .collect(),
            stop: CancellationToken::new(),
            prefix: prefix.to_owned(),
            scripts: Scripts {
                enqueue: Script::new(ENQUEUE),
                fetch: Script::new(FETCH),
                complete_fetch: Script::new(COMPLETE_FETCH),
                extend: Script::new(EXTEND),
                complete: Script::new(COMPLETE),
                fail: Script::new(FAIL),
                recover: Script::new(RECOVER),
                retry: Script::new(RETRY),
                release: Script::new(RELEASE),
                remove: Script::new(REMOVE),
                clean: Script::new(CLEAN),
            },
        })
    }

    /// The server's `maxmemory-policy` (checked at connect; see [`eviction_warning`]).
    pub async fn maxmemory_policy(&self) -> Result<String> {
        eviction_policy(self.client()).await
    }

    /// The names Redis knows this backend's connections by (for operators and tests).
    pub fn client_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pool
            .clients()
            .iter()
            .map(|c| c.id().to_string())
            .collect();
        names.extend(self.blocking.values().map(|c| c.id().to_string()));
        names
    }

    /// The BLPOP loop for `queue`: each marker that enqueue pushes wakes one local waiter.
    fn start_waker(&self, queue: QueueName) {
        let (notify, once) = &self.wakers[&queue];
        once.call_once(|| {
            let (client, notify, stop, key) =
                (self.blocking[&queue].clone(), notify.clone(), self.stop.clone(), self.key(queue, "notify"));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = client.blpop::<Option<(String, String)>, _>(key.as_str(), 1.0) => match r {
                            Ok(Some(_)) => notify.notify_one(),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "queue wake-up wait failed; retrying");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                    }
                }
                let _ = client.quit().await;
            });
        });
    }

    fn key(&self, q: QueueName, suffix: &str) -> String {
        format!("{}{{q:{}}}:{}", self.prefix, q.as_str(), suffix)
    }

    fn job_prefix(&self, q: QueueName) -> String {
        self.key(q, "job:")
    }

    fn client(&self) -> &Client {
        self.pool.next()
    }
}

fn to_info(queue: QueueName, pairs: Vec<String>) -> Result<JobInfo> {
    let mut m: HashMap<String, String> = HashMap::with_capacity(pairs.len() / 2);
    let mut it = pairs.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    let num = |k: &str| {
        m.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|f| f as i64)
    };
    let state = JobState::parse(m.get("state").map(String::as_str).unwrap_or("waiting"))?;
    let errors: Vec<AttemptError> = m
        .get("errors")
        .and_then(|e| serde_json::from_str::<Vec<AttemptError>>(e).ok())
        .unwrap_or_default();
    Ok(JobInfo {
        queue,
        id: m.get("id").cloned().unwrap_or_default(),
        name: m.get("name").cloned().unwrap_or_default(),
        payload: m
            .get("payload")
            .map(|p| serde_json::from_str(p).map_err(Error::internal))
            .transpose()?
            .unwrap_or(serde_json::Value::Null),
        state,
        priority: Priority::from_rank(num("prio").unwrap_or(1)),
        attempts_made: num("attempts").unwrap_or(0).max(0) as u32,
        max_attempts: num("max").unwrap_or(1).max(0) as u32,
        backoff: Duration::from_millis(num("backoff").unwrap_or(1000).max(0) as u64),
        timeout: Duration::from_millis(num("timeout").unwrap_or(30_000).max(0) as u64),
        errors,
        last_error: m.get("last_error").cloned(),
        result: m.get("result").and_then(|r| serde_json::from_str(r).ok()),
        created_at: num("created").unwrap_or(0),
        run_at: num("run_at").unwrap_or(0),
        started_at: num("started"),
        finished_at: num("finished"),
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

#[async_trait]
impl QueueControl for RedisQueue {
    async fn get(&self, queue: QueueName, id: &str) -> Result<Option<JobInfo>> {
        let pairs: Vec<String> = self
            .client()
            .custom(
                fred::types::CustomCommand::new_static("HGETALL", None, false),
                vec![format!("{}{id}", self.job_prefix(queue))],
            )
            .await
            .map_err(redis_err)?;
        if pairs.is_empty() {
            return Ok(None);
        }
        to_info(queue, pairs).map(Some)
    }

    async fn counts(&self, queue: QueueName) -> Result<StateCounts> {
        let c = self.client();
        let pipe = c.pipeline();
        let _: () = pipe
            .zcard(self.key(queue, "wait"))
            .await
            .map_err(redis_err)?;
        let _: () = pipe
            .zcard(self.key(queue, "active"))
            .await
            .map_err(redis_err)?;
        let _: () = pipe
            .zcard(self.key(queue, "delayed"))
            .await
            .map_err(redis_err)?;
        let _: () = pipe
            .zcard(self.key(queue, "completed"))
            .await
            .map_err(redis_err)?;
        let _: () = pipe
            .zcard(self.key(queue, "failed"))
            .await
            .map_err(redis_err)?;
        let _: () = pipe
            .exists(self.key(queue, "paused"))
            .await
            .map_err(redis_err)?;
        let (waiting, active, delayed, completed, failed, paused): (u64, u64, u64, u64, u64, u64) =
            pipe.all().await.map_err(redis_err)?;
        Ok(StateCounts {
            waiting,
            active,
            delayed,
            completed,
            failed,
            paused: paused > 0,
        })
    }

    async fn list_failed(
        &self,
        queue: QueueName,
        after: Option<&FailedKey>,
        limit: u64,
    ) -> Result<Vec<JobInfo>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        // Scored by finish time; ties come in descending id order, as the SQL backend sorts.
        // From the cursor's time down, skipping its own time's ids up to and including its id.
        let key = self.key(queue, "failed");
        let top = ZRange {
            kind: ZRangeKind::Inclusive,
            range: match after {
                Some(k) => ZRangeBound::Score(k.finished_at as f64),
                None => ZRangeBound::InfiniteScore,
            },
        };
        let chunk = limit as i64 + 16;
        let mut ids: Vec<String> = Vec::with_capacity(limit as usize);
        let mut offset = 0;
        'chunks: loop {
            // Member, score, member, score, … (scores are whole milliseconds).
            let flat: Vec<String> = self
                .client()
                .zrange(
                    &key,
                    &top,
                    "-inf",
                    Some(ZSort::ByScore),
                    true,
                    Some((offset, chunk)),
                    true,
                )
                .await
                .map_err(redis_err)?;
            let got: Vec<(String, i64)> = flat
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].parse::<f64>().unwrap_or_default() as i64))
                .collect();
            let full = got.len() as i64 == chunk;
            for (id, score) in got {
                if after.is_some_and(|k| score == k.finished_at && id >= k.id) {
                    continue;
                }
                ids.push(id);
                if ids.len() as u64 == limit {
                    break 'chunks;
                }
            }
            if !full {
                break;
            }
            offset += chunk;
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(j) = self.get(queue, &id).await? {
                out.push(j);
            }
        }
        Ok(out)
    }

    async fn retry(&self, queue: QueueName, id: &str) -> Result<()> {
        let keys = vec![
            format!("{}{id}", self.job_prefix(queue)),
            self.key(queue, "failed"),
            self.key(queue, "wait"),
            self.key(queue, "seq"),
            self.key(queue, "notify"),
        ];
        let r: i64 = self
            .scripts
            .retry
            .run(self.client(), keys, vec![id.into()])
            .await?;
        match r {
            1 => Ok(()),
            -1 => Err(Error::not_found(format_args!("job {id} in {queue}"))),
            _ => {
                let state = self
                    .get(queue, id)
                    .await?
                    .map(|j| j.state.as_str())
                    .unwrap_or("gone");
                Err(Error::Conflict(format!(
                    "job {id} is {state}, only failed jobs can be retried"
                )))
            }
        }
    }

    async fn remove(&self, queue: QueueName, id: &str) -> Result<bool> {
        let keys = vec![
            format!("{}{id}", self.job_prefix(queue)),
            self.key(queue, "wait"),
            self.key(queue, "delayed"),
            self.key(queue, "active"),
            self.key(queue, "completed"),
            self.key(queue, "failed"),
        ];
        let r: i64 = self
            .scripts
            .remove
            .run(self.client(), keys, vec![id.into()])
            .await?;
        match r {
            1 => Ok(true),
            -1 => Err(Error::Conflict(format!(
                "job {id} is active; it can be removed once it finishes"
            ))),
            _ => Ok(false),
        }
    }

    async fn set_paused(&self, queue: QueueName, paused: bool) -> Result<()> {
        let c = self.client();
        if paused {
            let _: () = c
                .set(self.key(queue, "paused"), 1, None, None, false)
                .await
                .map_err(redis_err)?;
        } else {
            let _: () = c.del(self.key(queue, "paused")).await.map_err(redis_err)?;
            let _: () = c
                .lpush(self.key(queue, "notify"), 1)
                .await
                .map_err(redis_err)?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    /// Ready when Redis answers the commands the queue runs, not only PING: a key read and a
    /// script (a Redis whose ACL allows PING alone answered PING while it refused every queue
    /// command).
    async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        let check: Result<()> = async {
            let c = self.client();
            let _: String = c.ping(None).await.map_err(redis_err)?;
            let _: i64 = c
                .zcard(self.key(QueueName::ALL[0], "wait"))
                .await
                .map_err(redis_err)?;
            let _: i64 = c
                .eval::<i64, _, _, _>("return 1", Vec::<String>::new(), Vec::<String>::new())
                .await
                .map_err(redis_err)?;
            Ok(())
        }
        .await;
        vec![("redis", check)]
    }
}

#[async_trait]
impl QueueBackend for RedisQueue {
    async fn enqueue(&self, queue: QueueName, job: NewJob) -> Result<bool> {
        Ok(self
            .enqueue_many(queue, vec![job])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    async fn enqueue_many(&self, queue: QueueName, jobs: Vec<NewJob>) -> Result<Vec<bool>> {
        let mut created = Vec::with_capacity(jobs.len());
        // Bounded batches keep each script short, so other clients are never held up long.
        for chunk in jobs.chunks(500) {
            let keys = vec![
                self.key(queue, "wait"),
                self.key(queue, "delayed"),
                self.key(queue, "notify"),
                self.key(queue, "seq"),
            ];
            let mut args: Vec<RedisValue> = Vec::with_capacity(2 + chunk.len() * 8);
            args.push(self.job_prefix(queue).into());
            args.push((chunk.len() as i64).into());
            for job in chunk {
                args.push(job.id.clone().into());
                args.push(job.name.clone().into());
                args.push(job.payload.clone().into());
                args.push(i64::from(job.priority.rank()).into());
                args.push(i64::from(job.max_attempts).into());
                args.push(ms(job.backoff).into());
                args.push(ms(job.timeout).into());
                args.push(ms(job.delay).into());
            }
            let flags: Vec<i64> = self.scripts.enqueue.run(self.client(), keys, args).await?;
            created.extend(flags.into_iter().map(|f| f == 1));
        }
        Ok(created)
    }

    async fn fetch(&self, queue: QueueName, n: usize, lease: Duration) -> Result<Vec<Leased>> {
        if n == 0 {
            return Ok(vec![]);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let keys = vec![
            self.key(queue, "wait"),
            self.key(queue, "delayed"),
            self.key(queue, "active"),
            self.key(queue, "paused"),
            self.key(queue, "seq"),
        ];
        let args: Vec<RedisValue> = vec![
            self.job_prefix(queue).into(),
            (n as i64).into(),
            ms(lease).into(),
            token.clone().into(),
        ];
        let rows: Vec<Vec<String>> = self
            .scripts
            .fetch
            .run_once(self.client(), keys, args)
            .await?;
        rows.into_iter()
            .map(|pairs| {
                Ok(Leased {
                    job: to_info(queue, pairs)?,
                    token: token.clone(),
                })
            })
            .collect()
    }

    async fn extend(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let keys = vec![
            format!("{}{id}", self.job_prefix(queue)),
            self.key(queue, "active"),
        ];
        let args: Vec<RedisValue> = vec![token.into(), ms(lease).into(), id.into()];
        let ok: i64 = self.scripts.extend.run(self.client(), keys, args).await?;
        Ok(ok == 1)
    }

    async fn finish(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<bool> {
        let job_key = format!("{}{id}", self.job_prefix(queue));
        let ok: i64 = match outcome {
            Outcome::Completed(result) => {
                let keys = vec![
                    job_key,
                    self.key(queue, "active"),
                    self.key(queue, "completed"),
                ];
                let args: Vec<RedisValue> =
                    vec![token.into(), result.to_string().into(), id.into()];
                self.scripts.complete.run(self.client(), keys, args).await?
            }
            Outcome::Failed { error, retry_in } => {
                let keys = vec![
                    job_key,
                    self.key(queue, "active"),
                    self.key(queue, "delayed"),
                    self.key(queue, "failed"),
                ];
                let retry = retry_in.map(ms).unwrap_or(-1);
                let args: Vec<RedisValue> = vec![
                    token.into(),
                    error.into(),
                    i64::from(attempt).into(),
                    retry.into(),
                    id.into(),
                ];
                self.scripts.fail.run(self.client(), keys, args).await?
            }
        };
        Ok(ok == 1)
    }

    async fn recover_stalled(&self, queue: QueueName) -> Result<u64> {
        let keys = vec![
            self.key(queue, "active"),
            self.key(queue, "wait"),
            self.key(queue, "failed"),
            self.key(queue, "seq"),
            self.key(queue, "notify"),
        ];
        let n: i64 = self
            .scripts
            .recover
            .run(self.client(), keys, vec![self.job_prefix(queue).into()])
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn wait_for_work(&self, queue: QueueName, timeout: Duration) -> Result<()> {
        self.start_waker(queue);
        let notify = self.wakers[&queue].0.clone();
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
        Ok(())
    }

    async fn complete_and_fetch(
        &self,
        queue: QueueName,
        done: &[Completion],
        n: usize,
        lease: Duration,
    ) -> Result<(usize, Vec<Leased>)> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let keys = vec![
            self.key(queue, "wait"),
            self.key(queue, "delayed"),
            self.key(queue, "active"),
            self.key(queue, "paused"),
            self.key(queue, "seq"),
            self.key(queue, "completed"),
        ];
        let mut args: Vec<RedisValue> = Vec::with_capacity(5 + done.len() * 3);
        args.push(self.job_prefix(queue).into());
        args.push((n as i64).into());
        args.push(ms(lease).into());
        args.push(token.clone().into());
        args.push((done.len() as i64).into());
        for c in done {
            args.push(c.id.clone().into());
            args.push(c.token.clone().into());
            args.push(c.result.to_string().into());
        }
        let reply: Vec<RedisValue> = self
            .scripts
            .complete_fetch
            .run_once(self.client(), keys, args)
            .await?;
        let mut it = reply.into_iter();
        let landed = it.next().and_then(|v| v.as_i64()).unwrap_or(0).max(0) as usize;
        let mut jobs = Vec::new();
        for v in it {
            let pairs: Vec<String> = v.convert().map_err(redis_err)?;
            jobs.push(Leased {
                job: to_info(queue, pairs)?,
                token: token.clone(),
            });
        }
        Ok((landed, jobs))
    }

    async fn clean(&self, queue: QueueName, r: Retention) -> Result<u64> {
        let keys = vec![self.key(queue, "completed"), self.key(queue, "failed")];
        let args: Vec<RedisValue> = vec![
            self.job_prefix(queue).into(),
            (r.completed_count as i64).into(),
            ms(r.completed_age).into(),
            (r.failed_count as i64).into(),
            ms(r.failed_age).into(),
            2000.into(),
        ];
        let mut total = 0;
        loop {
            let (removed, more): (i64, i64) = self
                .scripts
                .clean
                .run(self.client(), keys.clone(), args.clone())
                .await?;
            total += removed.max(0) as u64;
            if more != 1 {
                return Ok(total);
            }
        }
    }

    async fn release(&self, queue: QueueName, id: &str, token: &str) -> Result<bool> {
        let keys = vec![
            format!("{}{id}", self.job_prefix(queue)),
            self.key(queue, "active"),
            self.key(queue, "wait"),
            self.key(queue, "notify"),
        ];
        let r: i64 = self
            .scripts
            .release
            .run(self.client(), keys, vec![token.into(), id.into()])
            .await?;
        Ok(r == 1)
    }

    fn prefetch(&self, concurrency: usize) -> usize {
        concurrency
    }

    /// Two loops, each with one round trip in flight, keep Redis busy while the other loop
    /// runs jobs; measured best on 2 cores (one loop idles Redis, one per slot adds contention).
    fn lanes(&self, concurrency: usize) -> usize {
        concurrency.min(2)
    }
}
