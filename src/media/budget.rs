//! How much memory image decoding may use at once, and single-flight for identical uploads.
//!
//! A 160 KB PNG can decode to 160 MB of pixels. Every decode first asks [`DecodeBudget`] for its
//! estimated peak ([`super::process::decode_cost`]), weighted in MiB on a tokio semaphore, and only
//! then starts on the blocking pool; a burst of large images therefore queues instead of
//! allocating. An image larger than the whole budget runs alone. The permit is released when the
//! blocking work ends, even if the request that asked for it went away.
//!
//! [`SingleFlight`] makes identical bytes uploaded concurrently by the same merchant run once:
//! the first caller's work runs in its own task and everyone else with the same key awaits it.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;

/// The default budget: one largest image (40 Mpx RGBA plus a working copy, 320 MB) fits, with room
/// for small ones beside it.
pub const DEFAULT_DECODE_BUDGET: u64 = 512 * MIB;

/// Shared by every decode in the process (uploads and the media_processing job).
pub struct DecodeBudget {
    sem: Arc<Semaphore>,
    capacity_mib: u32,
    waiting: AtomicUsize,
    running: AtomicUsize,
    decodes: AtomicU64,
}

/// What the budget has seen; for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    pub capacity_mib: u32,
    pub in_use_mib: u32,
    /// Decodes waiting for their share.
    pub waiting: usize,
    /// Decodes holding their share.
    pub running: usize,
    /// Decodes started since start-up.
    pub decodes: u64,
}

impl DecodeBudget {
    pub fn new(capacity_bytes: u64) -> Self {
        let capacity_mib = capacity_bytes
            .div_ceil(MIB)
            .clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            sem: Arc::new(Semaphore::new(capacity_mib as usize)),
            capacity_mib,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            decodes: AtomicU64::new(0),
        }
    }

    /// The share a decode of `cost_bytes` takes: at least 1 MiB, at most the whole budget.
    pub fn permits_for(&self, cost_bytes: u64) -> u32 {
        cost_bytes
            .div_ceil(MIB)
            .clamp(1, u64::from(self.capacity_mib)) as u32
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            capacity_mib: self.capacity_mib,
            in_use_mib: self.capacity_mib - self.sem.available_permits() as u32,
            waiting: self.waiting.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
            decodes: self.decodes.load(Ordering::SeqCst),
        }
    }

    /// Takes `bytes` of the budget (at most all of it) until the permit is dropped: for memory
    /// used outside a decode, and for tests that need decodes to queue.
    pub async fn hold(&self, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.sem
            .clone()
            .acquire_many_owned(self.permits_for(bytes))
            .await
            .map_err(Error::internal)
    }

    /// Waits for `cost_bytes` of the budget, then runs `work` on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        cost_bytes: u64,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let n = self.permits_for(cost_bytes);
        let permit = {
            let _waiting = Gauge::inc(&self.waiting);
            self.sem.clone().acquire_many_owned(n).await
        }
        .map_err(Error::internal)?;
        self.decodes.fetch_add(1, Ordering::SeqCst);
        let _running = Gauge::inc(&self.running);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(Error::internal)?
    }
}

/// A count held while in scope (also when the future holding it is dropped).
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn inc(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cloneable copy of an [`Error`], so every waiter of a shared result gets the same answer.
pub fn clone_error(e: &Error) -> Error {
    match e {
        Error::Validation {
            field,
            message,
            details,
        } => Error::Validation {
            field: field.clone(),
            message: message.clone(),
            details: details.clone(),
        },
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::Conflict(m) => Error::Conflict(m.clone()),
        Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
        Error::Forbidden(m) => Error::Forbidden(m.clone()),
        Error::RateLimited { retry_after_secs } => Error::RateLimited {
            retry_after_secs: *retry_after_secs,
        },
        Error::PayloadTooLarge(m) => Error::PayloadTooLarge(m.clone()),
        Error::UnsupportedMedia(m) => Error::UnsupportedMedia(m.clone()),
        Error::MethodNotAllowed(m) => Error::MethodNotAllowed(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Internal(m) => Error::Internal(m.clone()),
        Error::HistoryExpired(m) => Error::HistoryExpired(m.clone()),
        Error::Lagged(m) => Error::Lagged(m.clone()),
    }
}

type SharedResult<T> = std::result::Result<T, Arc<Error>>;
type SharedWork<T> = Shared<BoxFuture<'static, SharedResult<T>>>;

/// Runs the work for one key once, however many callers ask for it meanwhile.
pub struct SingleFlight<K, T: Clone> {
    inflight: Arc<Mutex<HashMap<K, SharedWork<T>>>>,
    joined: AtomicUsize,
}

impl<K, T: Clone> Default for SingleFlight<K, T> {
    fn default() -> Self {
        Self {
            inflight: Arc::default(),
            joined: AtomicUsize::new(0),
        }
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Callers currently waiting on someone else's work.
    pub fn joined(&self) -> usize {
        self.joined.load(Ordering::SeqCst)
    }

    /// The result of `work` for `key`: started here when nobody is running it, else joined.
    /// The work runs in its own task, so it finishes even if every caller goes away.
    pub async fn run<F>(&self, key: K, work: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (shared, leader) = {
            let mut map = self.inflight.lock().expect("single-flight map");
            match map.get(&key) {
                Some(s) => (s.clone(), false),
                None => {
                    let map_ref = self.inflight.clone();
                    let k = key.clone();
                    let task = tokio::spawn(async move {
                        let out = work.await.map_err(Arc::new);
                        map_ref.lock().expect("single-flight map").remove(&k);
                        out
                    });
                    let fut: BoxFuture<'static, SharedResult<T>> = async move {
                        task.await
                            .unwrap_or_else(|e| Err(Arc::new(Error::internal(e))))
                    }
                    .boxed();
                    let s = fut.shared();
                    map.insert(key, s.clone());
                    (s, true)
                }
            }
        };
        let _joined = (!leader).then(|| Gauge::inc(&self.joined));
        let out = shared.await;
        out.map_err(|e| clone_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decode_waits_until_its_share_is_free() {
        let budget = Arc::new(DecodeBudget::new(100 * MIB));
        // Someone holds 80 MiB; a 30 MiB decode must wait, a 20 MiB one may run.
        let held = budget.sem.clone().acquire_many_owned(80).await.unwrap();
        let small = budget.run(20 * MIB, || Ok(1)).await.unwrap();
        assert_eq!(small, 1);
        let b = budget.clone();
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let big = tokio::spawn(async move {
            b.run(30 * MIB, move || {
                s.fetch_add(1, Ordering::SeqCst);
                Ok(2)
            })
            .await
        });
        // Wait until it is queued on the budget, then check it has not run.
        while budget.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "ran over budget");
        drop(held);
        assert_eq!(big.await.unwrap().unwrap(), 2);
        assert_eq!(budget.stats().in_use_mib, 0);
        // Larger than the whole budget: takes all of it and still runs.
        assert_eq!(budget.permits_for(10_000 * MIB), 100);
        assert_eq!(budget.run(10_000 * MIB, || Ok(3)).await.unwrap(), 3);
        assert_eq!(budget.stats().decodes, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_runs_once() {
        let sf = Arc::new(SingleFlight::<String, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (sf, runs, rx) = (sf.clone(), runs.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k".to_owned(), async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let rx = rx.lock().unwrap().take();
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok(7)
                })
                .await
            }));
        }
        while sf.joined() < 7 {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Errors reach every waiter, and a finished key runs again.
        let e = sf
            .run("k".to_owned(), async { Err(Error::Conflict("x".into())) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), "CONFLICT");
        assert_eq!(sf.run("k".to_owned(), async { Ok(9) }).await.unwrap(), 9);
    }
}
