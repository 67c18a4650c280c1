//! The template read cache: serialized template reads (the REST list, GraphQL `templates` and
//! `template` operations), kept in process and correct across instances.
//!
//! # How it works
//!
//! * `cache_generations` holds one counter per cached table. Triggers on `message_templates`
//!   (migration 000009) bump the `templates` counter in the transaction of every INSERT, UPDATE
//!   and DELETE, whoever makes it: the service, the seed, another instance, a person in `psql`.
//! * Each cacheable request first reads that counter (one primary-key read), then looks up
//!   `(caller's reader class, the request)` in this process's map, which holds the responses of
//!   one generation only. A hit answers the stored bytes; a miss runs the read as before, answers
//!   it, and stores the bytes under the generation read *before* the read ran.
//! * Requests waiting for the counter at the same time share one read: at most one counter read
//!   is in flight per process, and a request joins the next one to *start* (never one already
//!   running). Under load that is one read per database round trip instead of one per request.
//! * The first request that reads a newer generation empties the map. Its size is bounded by
//!   `TEMPLATE_CACHE_MB` (default 32; 0 turns the cache off); an entry over an eighth of that is
//!   not stored, and when the budget is full arbitrary entries make room.
//!
//! # Why a read never returns stale data
//!
//! Let write W commit with counter value `g_w`. The bump is in W's own transaction, so the new
//! value becomes visible exactly when W's rows do (the counter row is updated, never read-then-
//! written by the trigger; its row lock on PostgreSQL, the single writer on SQLite, order the
//! bumps). A request that starts after W committed reads a counter `g >= g_w`: the counter read
//! it gets starts after the request registered for it (a shared read is only joined before it
//! starts), both databases give each statement a snapshot taken when it starts, and counters only
//! grow. It is answered
//! either by the entry stored under `g`, or by its own read. An entry stored under `g` was
//! computed by a request that read `g` first and ran its row query afterwards, in a later
//! snapshot, so that entry reflects at least every write counted up to `g`, W included. Entries
//! are only stored and served under the generation the map holds, and the map only moves
//! forward; a request that read an older generation than the map's (it raced a newer one) reads
//! the database and stores nothing.
//!
//! A response depends only on the request and on who asks. The reader class captures who asks
//! exactly as the template visibility rule does (`auth::scope`, `Tenant for message_template`):
//! anonymous callers see ACTIVE rows, a merchant its own rows plus ACTIVE ones (and its own name
//! namespace), admin and service everything. Two callers of one class get the same rows; callers
//! of different classes never share an entry. Errors are never stored.
//!
//! # Rules for changes
//!
//! * GraphQL operations are cached only when every root field is in [`GRAPHQL_ROOT_FIELDS`].
//!   Everything under them must read `message_templates` only: a `Template` field that read
//!   another table (versions, media) would be served stale after a write to that table.
//! * SQLite drops a table's triggers with the table: a migration that rebuilds `message_templates`
//!   must create them again (`create_sqlite_triggers` in migration 000009).
//! * A new visibility rule for templates (say, rows shared between merchants) must be reflected
//!   in [`Reader`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use crate::{
    auth::Actor,
    error::{Error, Result},
};
use entity::{TemplateStatus, TemplateType};

/// GraphQL root fields whose operations are cached (with `__typename`): template reads whose
/// whole result comes from `message_templates`.
pub const GRAPHQL_ROOT_FIELDS: &[&str] = &["templates", "template", "__typename"];

/// Who is asking, as far as template visibility is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reader {
    /// No token: ACTIVE templates.
    Public,
    /// A merchant: its own templates and the ACTIVE ones.
    Merchant(String),
    /// Admin and service tokens: every template.
    Everything,
}

impl Reader {
    pub fn of(actor: &Actor) -> Self {
        match actor {
            Actor::Anonymous => Reader::Public,
            Actor::Merchant { merchant_id, .. } => Reader::Merchant(merchant_id.clone()),
            Actor::Admin { .. } | Actor::Service { .. } => Reader::Everything,
        }
    }
}

/// What is asked, with every input that shapes the response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `GET /api/templates?type=&status=&search=`.
    RestList {
        kind: Option<TemplateType>,
        status: Option<TemplateStatus>,
        search: Option<String>,
    },
    /// A GraphQL read of templates only.
    Graphql {
        query: String,
        operation: Option<String>,
        /// The variables as JSON text.
        variables: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub reader: Reader,
    pub request: Request,
}

impl Key {
    pub fn new(actor: &Actor, request: Request) -> Self {
        Key {
            reader: Reader::of(actor),
            request,
        }
    }

    fn weight(&self, body: &Bytes) -> usize {
        let request = match &self.request {
            Request::RestList { search, .. } => search.as_ref().map_or(0, String::len),
            Request::Graphql {
                query,
                operation,
                variables,
            } => query.len() + operation.as_ref().map_or(0, String::len) + variables.len(),
        };
        // Plus the map's own overhead per entry, roughly.
        body.len() + request + 128
    }
}

struct Entries {
    /// The generation every entry belongs to (0: none read yet).
    generation: i64,
    map: HashMap<Key, Bytes>,
    bytes: usize,
}

/// The cache. One per process, in [`crate::AppState`].
pub struct ReadCache {
    entries: Mutex<Entries>,
    max_bytes: usize,
    reads: Arc<SharedReads>,
    /// Lookups answered from the map.
    hits: std::sync::atomic::AtomicU64,
}

/// A read's outcome, for every request that waited on it: the generation, or the error, which
/// keeps its kind (a database that does not answer is UNAVAILABLE, as for any read).
type Generation = std::result::Result<Option<i64>, ReadFailed>;

#[derive(Clone)]
enum ReadFailed {
    Unavailable(String),
    Other(String),
}

/// The counter reads requests share (see the module doc).
#[derive(Default)]
struct SharedReads {
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Requests waiting for the next read to start.
    next: Vec<oneshot::Sender<Generation>>,
    /// Whether a task is reading (it takes `next` before each read it starts).
    reading: bool,
}

impl SharedReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn read(self: &Arc<Self>, db: &DatabaseConnection) -> Result<Option<i64>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut w = self.lock();
            w.next.push(tx);
            !std::mem::replace(&mut w.reading, true)
        };
        if start {
            // A task of its own, so that a request that goes away cannot cancel others' read.
            tokio::spawn(
                ReadLoop {
                    reads: self.clone(),
                    finished: false,
                }
                .run(db.clone()),
            );
        }
        match rx.await {
            Ok(Ok(generation)) => Ok(generation),
            Ok(Err(ReadFailed::Unavailable(e))) => Err(Error::Unavailable(e)),
            Ok(Err(ReadFailed::Other(e))) => Err(Error::Internal(format!(
                "cannot read the cache generation: {e}"
            ))),
            Err(_) => Err(Error::Internal("the cache generation read stopped".into())),
        }
    }
}

/// Reads the counter for each batch of waiters until none is left. Dropped before that (by a
/// panic or a runtime shutting down), it fails the waiters and lets the next request start anew.
struct ReadLoop {
    reads: Arc<SharedReads>,
    finished: bool,
}

impl ReadLoop {
    async fn run(mut self, db: DatabaseConnection) {
        loop {
            let batch = {
                let mut w = self.reads.lock();
                if w.next.is_empty() {
                    // In the same critical section as the check: a request that comes next
                    // starts a new loop.
                    w.reading = false;
                    self.finished = true;
                    return;
                }
                std::mem::take(&mut w.next)
            };
            let generation = ReadCache::generation(&db).await.map_err(|e| match e {
                Error::Unavailable(m) => ReadFailed::Unavailable(m),
                other => ReadFailed::Other(other.to_string()),
            });
            for tx in batch {
                let _ = tx.send(generation.clone());
            }
        }
    }
}

impl Drop for ReadLoop {
    fn drop(&mut self) {
        if !self.finished {
            let mut w = self.reads.lock();
            w.reading = false;
            // Their senders dropped, the waiters get an error rather than wait for ever.
            w.next.clear();
        }
    }
}

/// The outcome of [`ReadCache::lookup`].
pub enum Lookup<'a> {
    Hit(Bytes),
    /// Compute the response, then give its bytes to [`Slot::fill`] if it is a success.
    Miss(Slot<'a>),
}

/// Where a computed response goes; dropping it stores nothing.
pub struct Slot<'a> {
    cache: &'a ReadCache,
    /// None: not storable (the cache is off, or this request read an older generation).
    generation: Option<i64>,
    key: Key,
}

impl Slot<'_> {
    /// Stores a successful response under the generation read before it was computed.
    pub fn fill(self, body: Bytes) {
        if let Some(generation) = self.generation {
            self.cache.insert(generation, self.key, body);
        }
    }
}

impl ReadCache {
    /// A cache holding up to `max_bytes` of responses; 0 turns it off (every lookup misses and
    /// no generation is read).
    pub fn new(max_bytes: usize) -> Self {
        ReadCache {
            entries: Mutex::new(Entries {
                generation: 0,
                map: HashMap::new(),
                bytes: 0,
            }),
            max_bytes,
            reads: Arc::default(),
            hits: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The committed `templates` generation (see [`crate::db::generation`]).
    pub async fn generation(db: &DatabaseConnection) -> Result<Option<i64>> {
        crate::db::generation(db, "templates").await
    }

    /// Reads the generation, then answers from the map or hands out the slot for the response.
    pub async fn lookup(&self, db: &DatabaseConnection, key: Key) -> Result<Lookup<'_>> {
        if !self.enabled() {
            return Ok(Lookup::Miss(Slot {
                cache: self,
                generation: None,
                key,
            }));
        }
        let generation = self.reads.read(db).await?;
        let storable = generation.filter(|&g| {
            let mut e = self.lock();
            if g > e.generation {
                e.generation = g;
                e.map.clear();
                e.bytes = 0;
            }
            g == e.generation
        });
        if let Some(g) = storable
            && let Some(body) = self.get(g, &key)
        {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Lookup::Hit(body));
        }
        Ok(Lookup::Miss(Slot {
            cache: self,
            generation: storable,
            key,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map is consistent after every statement: a panic elsewhere cannot break it.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, generation: i64, key: &Key) -> Option<Bytes> {
        let e = self.lock();
        if e.generation != generation {
            return None;
        }
        e.map.get(key).cloned()
    }

    fn insert(&self, generation: i64, key: Key, body: Bytes) {
        let weight = key.weight(&body);
        if weight > self.max_bytes / 8 {
            return;
        }
        let mut e = self.lock();
        if e.generation != generation {
            return; // a newer generation arrived meanwhile
        }
        if let Some(old) = e.map.remove(&key) {
            e.bytes -= key.weight(&old);
        }
        while e.bytes + weight > self.max_bytes {
            let Some(victim) = e.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = e.map.remove(&victim) {
                e.bytes -= victim.weight(&old);
            }
        }
        e.bytes += weight;
        e.map.insert(key, body);
    }

    /// Entries held and their weight in bytes (tests, metrics).
    pub fn stats(&self) -> (usize, usize) {
        let e = self.lock();
        (e.map.len(), e.bytes)
    }

    /// Lookups answered from the cache since start (tests, metrics).
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reader: Reader, search: &str) -> Key {
        Key {
            reader,
            request: Request::RestList {
                kind: None,
                status: None,
                search: Some(search.into()),
            },
        }
    }

    fn seeded(max: usize, generation: i64) -> ReadCache {
        let c = ReadCache::new(max);
        c.lock().generation = generation;
        c
    }

    #[test]
    fn entries_belong_to_one_generation() {
        let c = seeded(1 << 20, 5);
        c.insert(5, key(Reader::Public, "a"), Bytes::from_static(b"five"));
        assert_eq!(
            c.get(5, &key(Reader::Public, "a")).as_deref(),
            Some(&b"five"[..])
        );
        // Another reader class or another generation never sees it.
        assert_eq!(c.get(5, &key(Reader::Everything, "a")), None);
        assert_eq!(c.get(5, &key(Reader::Merchant("m".into()), "a")), None);
        assert_eq!(c.get(4, &key(Reader::Public, "a")), None);
        // A response computed under an older generation is not stored.
        c.insert(4, key(Reader::Public, "b"), Bytes::from_static(b"four"));
        assert_eq!(c.get(5, &key(Reader::Public, "b")), None);
    }

    #[test]
    fn the_budget_holds() {
        let max = 8 * 1024;
        let c = seeded(max, 1);
        // Over an eighth of the budget: not stored.
        c.insert(1, key(Reader::Public, "big"), Bytes::from(vec![0; max / 8]));
        assert_eq!(c.stats().0, 0);
        for i in 0..100 {
            c.insert(
                1,
                key(Reader::Public, &i.to_string()),
                Bytes::from(vec![0; 500]),
            );
            let (_, bytes) = c.stats();
            assert!(bytes <= max, "{bytes} > {max}");
        }
        assert!(c.stats().0 > 4, "the budget is used: {:?}", c.stats());
        // Replacing an entry does not count it twice.
        let before = c.stats();
        c.insert(1, key(Reader::Public, "99"), Bytes::from(vec![0; 500]));
        assert_eq!(c.stats(), before);
    }

    #[test]
    fn readers_follow_the_visibility_rule() {
        assert_eq!(Reader::of(&Actor::Anonymous), Reader::Public);
        let admin = Actor::Admin { sub: "a".into() };
        let service = Actor::Service { sub: "s".into() };
        assert_eq!(Reader::of(&admin), Reader::of(&service));
        let m1 = Actor::Merchant {
            sub: "u1".into(),
            merchant_id: "m1".into(),
        };
        let m1_other_user = Actor::Merchant {
            sub: "u2".into(),
            merchant_id: "m1".into(),
        };
        let m2 = Actor::Merchant {
            sub: "u1".into(),
            merchant_id: "m2".into(),
        };
        assert_eq!(Reader::of(&m1), Reader::of(&m1_other_user));
        assert_ne!(Reader::of(&m1), Reader::of(&m2));
        assert_ne!(Reader::of(&m1), Reader::Public);
        assert_ne!(Reader::of(&m1), Reader::Everything);
    }
}
