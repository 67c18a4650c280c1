//! The endpoint cache: which enabled endpoints an event goes to, without reading `webhooks` for
//! every fan-out and every attempt.
//!
//! # How it works
//!
//! * The `webhooks` generation in `cache_generations` (migration 000010) is bumped by triggers
//!   in the transaction of every change that shapes a delivery: an endpoint added or removed, a
//!   new URL, secret, event list, rate limit or signature format, enabled or disabled, and an
//!   endpoint starting or ending a run of failures. Counting failed attempts does not bump it.
//! * A fan-out batch reads the generation first (one primary-key read), then takes each
//!   merchant's enabled endpoints from this cache, reading only the merchants it does not hold
//!   yet. A newer generation empties the cache. The fan-out is exact: the read starts after the
//!   events committed, so every endpoint registered before them is counted (the argument of
//!   `templates::cache`: the bump commits with the change, counters only grow, and entries are
//!   only kept under the generation read before their rows were).
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
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::error::Result;
use entity::webhook::{self, Column as W, Entity as Webhooks};

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
        let started = Instant::now();
        let Some(generation) = crate::db::generation(db, "webhooks").await? else {
            return Ok(None);
        };
        let mut inner = self.lock();
        if generation > inner.generation {
            inner.clear();
            inner.generation = generation;
            inner.confirmed_at = None;
        }
        if generation == inner.generation && inner.forgotten_at.is_none_or(|f| started > f) {
            inner.confirmed_at = Some(inner.confirmed_at.map_or(started, |t| t.max(started)));
        }
        Ok(Some(generation))
    }

    /// The enabled endpoints that may receive events of these merchants: each merchant's own
    /// and the platform-wide ones, read from the database only for scopes not held. Exact as of
    /// the call (see the module doc).
    pub async fn for_merchants<'a>(
        &self,
        db: &DatabaseConnection,
        merchants: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Arc<webhook::Model>>> {
        let generation = self.confirm(db).await?;
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
