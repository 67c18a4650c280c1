//! The endpoint cache: which enabled endpoints an event goes to, without reading `webhooks` for
//! every fan-out and every attempt.
//!
//! # How it works
//!
//! * The `webhooks` generation in `cache_generations` (migration 000010) is bumped by triggers
//!   in the transaction of every change that shapes a delivery: an endpoint added or removed, a
//!   new URL, secret, event list, rate limit or signature format, enabled or disabled, and an
//!   endpoint starting or ending a run of failures. Counting failed attempts does not bump it.
//! * A fan-out batch first needs the generation, seen no earlier than its events' INSERTs
//!   began. On PostgreSQL [`Events::emit`](crate::events::service::Events::emit) reads it in the
//!   event's own INSERT (`RETURNING (SELECT generation …)`, asked for by
//!   [`Outbox::generation`](crate::events::service::Outbox::generation)) and hands it over with
//!   the event, so the batch reads nothing more. Otherwise (events recorded in a domain's own
//!   transaction, events the sweeper finds, every event on SQLite) the batch reads it (one
//!   primary-key read). A newer generation empties the cache. Then the batch takes each
//!   merchant's enabled endpoints from this cache, reading only the merchants it does not hold
//!   yet. The fan-out is exact: every endpoint change committed before the events' INSERTs
//!   began is counted (the argument of `templates::cache`: the bump commits with the change, so
//!   the generation seen includes it; counters only grow, so the cache then holds that
//!   generation or a newer one; and entries are only kept under a generation read before their
//!   rows were). A change committed while an event is being inserted is concurrent with it: it
//!   may or may not be counted.
//! * A delivery attempt uses the cached endpoint when this process saw its generation current
//!   less than [`FRESH_FOR`] ago; otherwise it reads the row, as before. So a change made through
//!   another instance reaches an attempt here within [`FRESH_FOR`]; one made through this
//!   process does at once (its writes call [`EndpointCache::forget`]). Reading the row at the
//!   attempt was never exact either: a change committed between that read and the POST was not
//!   seen. A process that only runs workers (`smartbot worker`) fans nothing out, confirms no
//!   generation, and reads the row for each attempt.
//!
//! The cache holds at most [`MAX_MERCHANTS`] merchants' lists; past that it starts again empty.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::{db::SeenGeneration, error::Result};
use entity::webhook::{self, Column as W, Entity as Webhooks};

/// The `cache_generations` counter of webhook endpoints.
pub const GENERATION: &str = "webhooks";
/// How long after this process last saw the generation current an attempt may use a cached
/// endpoint instead of reading its row.
pub const FRESH_FOR: Duration = Duration::from_millis(50);
/// Merchants whose endpoint lists are kept at most.
pub const MAX_MERCHANTS: usize = 10_000;

/// Endpoints of one scope: `Some(merchant)`, or `None` for the platform-wide ones.
type Scope = Option<String>;

#[derive(Default)]
pub struct EndpointCache {
    inner: Mutex<Inner>,
    /// Generation reads of this process's fan-outs so far.
    reads: AtomicU64,
}

#[derive(Default)]
struct Inner {
    generation: i64,
    /// When a read that began at this instant found `generation` current.
    confirmed_at: Option<Instant>,
    /// When this process last changed an endpoint: a read that began earlier confirms nothing.
    forgotten_at: Option<Instant>,
    /// The enabled endpoints of each scope held, at `generation`.
    lists: HashMap<Scope, Arc<[Arc<webhook::Model>]>>,
    by_id: HashMap<Uuid, Arc<webhook::Model>>,
}

impl Inner {
    fn clear(&mut self) {
        self.lists.clear();
        self.by_id.clear();
    }
}

impl EndpointCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the current generation and adopts it: a newer one empties the cache. `None` when
    /// the counter is missing (then nothing is cached).
    async fn confirm(&self, db: &DatabaseConnection) -> Result<Option<i64>> {
        let read_from = Instant::now();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let Some(value) = crate::db::generation(db, GENERATION).await? else {
            return Ok(None);
        };
        self.adopt(SeenGeneration { value, read_from });
        Ok(Some(value))
    }

    /// Takes in a generation seen current: a newer one empties the cache, the one held is
    /// confirmed as of the sighting. Returns the generation now held (at least `seen`'s).
    fn adopt(&self, seen: SeenGeneration) -> i64 {
        let mut inner = self.lock();
        if seen.value > inner.generation {
            inner.clear();
            inner.generation = seen.value;
            inner.confirmed_at = None;
        }
        let at = seen.read_from;
        if seen.value == inner.generation && inner.forgotten_at.is_none_or(|f| at > f) {
            inner.confirmed_at = Some(inner.confirmed_at.map_or(at, |t| t.max(at)));
        }
        inner.generation
    }

    /// The enabled endpoints that may receive events of these merchants: each merchant's own
    /// and the platform-wide ones, read from the database only for scopes not held.
    ///
    /// `seen`: the generation the events' own INSERTs read ([`GENERATION`] in
    /// `Outbox::generation`), or `None` to read it now. Exact either way (see the module doc).
    pub async fn for_merchants<'a>(
        &self,
        db: &DatabaseConnection,
        merchants: impl IntoIterator<Item = &'a str>,
        seen: Option<SeenGeneration>,
    ) -> Result<Vec<Arc<webhook::Model>>> {
        let generation = match seen {
            Some(seen) => Some(self.adopt(seen)),
            None => self.confirm(db).await?,
        };
        let mut scopes: Vec<Scope> = merchants.into_iter().map(|m| Some(m.to_owned())).collect();
        scopes.sort_unstable();
        scopes.dedup();
        scopes.push(None);
        let mut out: Vec<Arc<webhook::Model>> = Vec::new();
        let mut missing: Vec<Scope> = Vec::new();
        {
            let inner = self.lock();
            let current = generation.is_some_and(|g| g == inner.generation);
            for scope in scopes {
                match inner.lists.get(&scope).filter(|_| current) {
                    Some(list) => out.extend(list.iter().cloned()),
                    None => missing.push(scope),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut cond = Condition::any();
        let named: Vec<&str> = missing.iter().filter_map(|s| s.as_deref()).collect();
        if !named.is_empty() {
            cond = cond.add(W::MerchantId.is_in(named));
        }
        if missing.contains(&None) {
            cond = cond.add(W::MerchantId.is_null());
        }
        let rows = Webhooks::find()
            .filter(W::Enabled.eq(true))
            .filter(cond)
            .all(db)
            .await?;
        let mut read: HashMap<Scope, Vec<Arc<webhook::Model>>> =
            missing.into_iter().map(|s| (s, Vec::new())).collect();
        for w in rows {
            let w = Arc::new(w);
            out.push(w.clone());
            if let Some(list) = read.get_mut(&w.merchant_id) {
                list.push(w);
            }
        }
        // Kept only under the generation read before the rows were (a newer one may have
        // arrived meanwhile: then these rows are not kept, though this batch still uses them).
        let mut inner = self.lock();
        if generation.is_some_and(|g| g == inner.generation) {
            if inner.lists.len() + read.len() > MAX_MERCHANTS {
                inner.clear();
            }
            for (scope, list) in read {
                for w in &list {
                    inner.by_id.insert(w.id, w.clone());
                }
                inner.lists.insert(scope, list.into());
            }
        }
        Ok(out)
    }

    /// How many times this process's fan-outs have read the generation themselves (those whose
    /// events' INSERTs read it do not).
    pub fn generation_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The endpoint `id` as this process knows it, if that knowledge is fresh ([`FRESH_FOR`])
    /// and the endpoint is enabled. `None`: read the row.
    pub fn fresh(&self, id: Uuid) -> Option<Arc<webhook::Model>> {
        let inner = self.lock();
        if inner.confirmed_at?.elapsed() >= FRESH_FOR {
            return None;
        }
        inner.by_id.get(&id).cloned()
    }

    /// This process changed an endpoint: attempts read rows until the next fan-out reads the
    /// generation its change bumped.
    pub fn forget(&self) {
        let mut inner = self.lock();
        inner.confirmed_at = None;
        inner.forgotten_at = Some(Instant::now());
        inner.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding merchant `m-a` and the platform-wide scope (both with no endpoints) at
    /// generation 5.
    fn warm() -> EndpointCache {
        let cache = EndpointCache::default();
        {
            let mut inner = cache.lock();
            inner.generation = 5;
            inner.lists.insert(Some("m-a".into()), Arc::from([]));
            inner.lists.insert(None, Arc::from([]));
        }
        cache
    }

    fn seen(value: i64) -> Option<SeenGeneration> {
        Some(SeenGeneration {
            value,
            read_from: Instant::now(),
        })
    }

    /// With the generation the events' INSERTs saw, a fan-out whose scopes are held touches no
    /// database (here, one without tables, so that every read fails); a newer generation empties
    /// the cache and so reads; without one, the generation itself is read.
    #[tokio::test]
    async fn a_generation_seen_by_the_insert_saves_the_read() {
        let offline = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let cache = warm();
        for held in [5, 4] {
            let got = cache.for_merchants(&offline, ["m-a"], seen(held)).await;
            assert!(got.is_ok_and(|l| l.is_empty()), "seen {held}: no read");
        }
        assert!(cache.fresh(Uuid::nil()).is_none(), "nothing held by id");
        assert!(cache.lock().confirmed_at.is_some(), "seeing 5 confirms 5");

        // In this order: the last one empties the cache.
        for (merchant, seen, why) in [
            ("m-a", None, "nothing seen: the generation is read"),
            ("m-b", seen(5), "a merchant not held is read"),
            ("m-a", seen(6), "a newer generation empties the cache"),
        ] {
            let got = cache.for_merchants(&offline, [merchant], seen).await;
            assert!(got.is_err(), "{why}");
        }
        assert_eq!(cache.lock().generation, 6);
        assert!(cache.lock().lists.is_empty());
    }

    /// A change made through this process outdates sightings that began before it.
    #[test]
    fn sightings_before_a_local_change_confirm_nothing() {
        let cache = warm();
        let before = Instant::now();
        cache.forget();
        let five_from = |read_from| SeenGeneration {
            value: 5,
            read_from,
        };
        cache.adopt(five_from(before));
        assert!(cache.lock().confirmed_at.is_none());
        cache.adopt(five_from(Instant::now()));
        assert!(cache.lock().confirmed_at.is_some());
    }
}
