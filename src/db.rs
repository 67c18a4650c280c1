//! The database connection: SQLite (embedded default) or PostgreSQL, chosen once from Config.

use futures::future::BoxFuture;
use std::{sync::Arc, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
};

use crate::{
    config::Config,
    error::{Error, Result},
};

/// Connects, creating the SQLite file and its directory when needed.
pub async fn connect(config: &Config) -> Result<DatabaseConnection> {
    let url = &config.database_url;
    // The one rule for what DATABASE_URL may be (a Config built in code skips `from_vars`).
    config.check_urls()?;
    if config.is_sqlite() {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            crate::config::invalid(
                "DATA_DIR",
                format!("cannot create {}: {e}", config.data_dir.display()),
            )
        })?;
    }
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(config.database_max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    // Lives as long as the pool (held by its after-connect hook): the checkpointer's lifeline.
    let alive = Arc::new(());
    if config.is_sqlite() {
        opts.map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            // WAL lets readers run beside the single writer; writers wait instead of failing.
            // REGEXP (the `regex` crate): template search folds case by Unicode, where
            // SQLite's lower() and LIKE fold ASCII only.
            o.with_regexp()
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                // Until `after_connect` installs `busy_wait` in its place.
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                // No checkpoint inside a commit: see `checkpointer`.
                .pragma("wal_autocheckpoint", "0")
                // A burst can take the WAL to hundreds of MB; when it starts over after a
                // checkpoint, SQLite cuts the file back to this (else it keeps its largest size).
                .pragma("journal_size_limit", SQLITE_WAL_SIZE_LIMIT.to_string())
        });
        let hold = alive.clone();
        opts.map_sqlx_sqlite_pool_opts(move |p| {
            let hold = hold.clone();
            p.after_connect(move |conn, _| {
                let _ = &hold;
                Box::pin(async move {
                    let mut handle = conn.lock_handle().await?;
                    // SAFETY: the pointer is this connection's open database handle, held
                    // locked for the call; `busy_wait` uses no user data.
                    let rc = unsafe {
                        libsqlite3_sys::sqlite3_busy_handler(
                            handle.as_raw_handle().as_ptr(),
                            Some(busy_wait),
                            std::ptr::null_mut(),
                        )
                    };
                    if rc != libsqlite3_sys::SQLITE_OK {
                        return Err(sea_orm::sqlx::Error::Configuration(
                            format!("sqlite3_busy_handler failed ({rc})").into(),
                        ));
                    }
                    Ok(())
                })
            })
        });
    }
    let db = Database::connect(opts).await.map_err(|e| {
        refused(&e)
            .unwrap_or_else(|| Error::Internal(format!("cannot connect to the database: {e}")))
    })?;
    if config.is_sqlite() {
        tokio::spawn(checkpointer(url.clone(), Arc::downgrade(&alive)));
    }
    Ok(db)
}

/// A connection the server refused for what `DATABASE_URL` says (a role or password it does not
/// accept, a database that does not exist): waiting will not mend it, so it names the variable
/// instead of reading as an outage.
fn refused(e: &sea_orm::DbErr) -> Option<Error> {
    use sea_orm::{DbErr, RuntimeErr};
    let DbErr::Conn(RuntimeErr::SqlxError(e)) = e else {
        return None;
    };
    let sea_orm::sqlx::Error::Database(db) = e.as_ref() else {
        return None;
    };
    let code = db.code()?;
    (code.starts_with("28") || code == "3D000").then(|| {
        crate::config::invalid(
            "DATABASE_URL",
            format!("the database server refused it: {} ({code})", db.message()),
        )
    })
}

/// How long an SQLite write waits for the write lock before it fails with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// A waiting write retries this often at first…
const BUSY_SHORT_WAIT: Duration = Duration::from_micros(50);
/// …for this many tries (about 10 to 20 ms with the kernel's timer slack), then every
/// [`BUSY_LONG_WAIT`].
const BUSY_SHORT_TRIES: i32 = 200;
const BUSY_LONG_WAIT: Duration = Duration::from_millis(1);

thread_local! {
    /// When the current wait for the lock began (a connection's statements run on its own
    /// thread, so one wait per thread at a time).
    static BUSY_SINCE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler for every pooled connection: how a write waits while another
/// connection holds the write lock.
///
/// The size (bytes) SQLite cuts the WAL file back to when it starts over: 64 MiB.
const SQLITE_WAL_SIZE_LIMIT: u64 = 64 << 20;

/// SQLite has one writer. Its default handler (`busy_timeout`) sleeps 1, 2, 5, 10, 15, 20,
/// 25 … ms between tries, so a write that arrives a few microseconds into another's commit
/// waits at least a millisecond, and under load several: at 1,000 webhook events a second that
/// was 8,000 sleeps in 10 s, and most of the delivery latency on SQLite. This handler retries
/// every 50 µs for the first tries, then every millisecond, and gives up after
/// [`SQLITE_BUSY_TIMEOUT`] as before. It runs on the connection's own thread (sqlx runs each
/// SQLite connection on a thread of its own), never on an async worker.
///
/// `count` is how many times SQLite already called it for this wait (0 on the first call).
unsafe extern "C" fn busy_wait(
    _: *mut std::ffi::c_void,
    count: std::ffi::c_int,
) -> std::ffi::c_int {
    let now = std::time::Instant::now();
    let since = BUSY_SINCE.with(|s| {
        if count == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    match busy_delay(count, now.duration_since(since)) {
        Some(wait) => {
            std::thread::sleep(wait);
            1
        }
        None => 0,
    }
}

/// How long a write that found the lock taken for the `count`-th time, `waited` after its
/// first try, sleeps before it tries again; `None`: it gives up ("database is locked").
fn busy_delay(count: i32, waited: Duration) -> Option<Duration> {
    if waited >= SQLITE_BUSY_TIMEOUT {
        None
    } else if count < BUSY_SHORT_TRIES {
        Some(BUSY_SHORT_WAIT)
    } else {
        Some(BUSY_LONG_WAIT)
    }
}

/// How often the WAL is copied back into an SQLite database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// SQLite checkpoints, off the commit path.
///
/// By default SQLite copies the WAL back into the database file inside whichever commit takes
/// the WAL past 1000 pages, fsync included: every few hundred jobs one commit took several
/// milliseconds longer (the queue's idle pickup p99). Here no connection of the pool checkpoints
/// on commit (`wal_autocheckpoint = 0`); this task, on a connection of its own, runs a PASSIVE
/// checkpoint every [`CHECKPOINT_EVERY`]. PASSIVE never waits for readers or the writer, so it
/// delays no request; the WAL stays as small as before. The task ends with the pool: `alive`
/// is a weak handle on a value the pool holds.
async fn checkpointer(url: String, alive: std::sync::Weak<()>) {
    use sea_orm::sqlx::{Connection, sqlite::SqliteConnection};
    let mut conn = match SqliteConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "SQLite checkpointer could not connect; the WAL will grow until restart");
            return;
        }
    };
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            break;
        }
        if let Err(e) = sea_orm::sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
    let _ = conn.close().await;
}

/// Held while an instance migrates and seeds at start-up, so instances started together take
/// turns (the first migrates and seeds, the rest find it done) instead of racing on the
/// migration table and the seed's unique names. On PostgreSQL a session advisory lock on a
/// connection of its own; dropping it closes the connection, which releases the lock. On SQLite
/// an exclusive lock on a file beside the database (`<database>.startup-lock`, or
/// `DATA_DIR/.startup-lock` for a database without a file path): two `serve` processes started
/// at once on one DATA_DIR had one fail with "index … already exists".
pub struct StartupLock(Option<DatabaseConnection>, Option<std::fs::File>);

/// The file a SQLite start-up lock is taken on.
fn sqlite_lock_path(config: &Config) -> std::path::PathBuf {
    let url = &config.database_url;
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|p| !p.is_empty() && !p.contains(":memory:"));
    match path {
        Some(p) => std::path::PathBuf::from(format!("{p}.startup-lock")),
        None => config.data_dir.join(".startup-lock"),
    }
}

/// The advisory lock's key: "smartbot" in ASCII, as a number.
const STARTUP_LOCK_KEY: i64 = 0x0073_6d61_7274_626f;

pub async fn startup_lock(config: &Config) -> Result<StartupLock> {
    if config.is_sqlite() {
        let path = sqlite_lock_path(config);
        // The file's place comes from DATA_DIR unless DATABASE_URL names another.
        let var = if config.database_url == crate::config::sqlite_url(&config.data_dir) {
            "DATA_DIR"
        } else {
            "DATABASE_URL"
        };
        let file = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::config::invalid(var, format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| {
                    crate::config::invalid(var, format!("cannot open {}: {e}", path.display()))
                })?;
            file.lock()?;
            Ok::<_, Error>(file)
        })
        .await
        .map_err(Error::internal)??;
        return Ok(StartupLock(None, Some(file)));
    }
    let mut opts = ConnectOptions::new(config.database_url.clone());
    opts.max_connections(1)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let conn = Database::connect(opts)
        .await
        .map_err(|e| refused(&e).unwrap_or_else(|| e.into()))?;
    conn.execute_unprepared(&format!("SELECT pg_advisory_lock({STARTUP_LOCK_KEY})"))
        .await?;
    Ok(StartupLock(Some(conn), None))
}

impl StartupLock {
    pub async fn release(mut self) -> Result<()> {
        // Closing the file releases its lock.
        drop(self.1.take());
        if let Some(conn) = self.0.take() {
            conn.execute_unprepared(&format!("SELECT pg_advisory_unlock({STARTUP_LOCK_KEY})"))
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
}

/// The time now, to the microsecond: what PostgreSQL's `timestamptz` keeps. SQLite stores
/// the text it is given, so a nanosecond clock made the same row read back with nine digits on
/// one database and six on the other.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    Migrator::up(db, None).await?;
    Ok(())
}

/// A `cache_generations` counter's value as a read that began at `read_from` found it (the read
/// may be part of another statement, such as an event's INSERT: see `events::service::Outbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenGeneration {
    pub value: i64,
    pub read_from: std::time::Instant,
}

impl SeenGeneration {
    /// The newest sighting of a batch in which each item may have one: `None` when any item
    /// has none (or the batch is empty), since such an item's counter must then be read.
    pub fn newest_of_all(seen: impl IntoIterator<Item = Option<Self>>) -> Option<Self> {
        let mut newest: Option<Self> = None;
        for s in seen {
            let s = s?;
            if newest.is_none_or(|n| (s.value, s.read_from) > (n.value, n.read_from)) {
                newest = Some(s);
            }
        }
        newest
    }
}

/// The read of a `cache_generations` counter (`templates`, `webhooks`): one primary-key read,
/// alone ([`generation`]) or as a subquery of another statement (an event's INSERT … RETURNING).
pub fn generation_query(name: &str) -> sea_orm::sea_query::SelectStatement {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, Query};
    Query::select()
        .column(Alias::new("generation"))
        .from(Alias::new("cache_generations"))
        .and_where(Expr::col(Alias::new("name")).eq(name))
        .to_owned()
}

/// The committed value of a `cache_generations` counter. `None` when the counter row is missing
/// (then nothing may be cached).
pub async fn generation(db: &DatabaseConnection, name: &str) -> Result<Option<i64>> {
    use sea_orm::ConnectionTrait;
    let row = db.query_one(&generation_query(name)).await?;
    Ok(match row {
        Some(r) => Some(r.try_get_by_index::<i64>(0)?),
        None => None,
    })
}

/// A cheap round trip, for /ready.
pub async fn ping(db: &DatabaseConnection) -> Result<()> {
    db.ping()
        .await
        .map_err(|e| Error::Internal(format!("database: {e}")))
}

/// Starts a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: it takes the write
/// lock up front (waiting up to the busy timeout), because a deferred transaction that reads and
/// then writes cannot wait for the lock and fails with "database is locked". PostgreSQL ignores
/// the mode.
pub async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

/// Serializes, until `txn` ends, every transaction that locks the same `key` in `namespace`
/// (content-addressed files: one upload's "the files are there, the row goes in" against one
/// delete's "no row is left, the files go"). On PostgreSQL a transaction-level advisory lock;
/// on SQLite nothing more is needed: a [`begin_write`] transaction already holds the database's
/// one write lock until it ends.
pub async fn lock_key(txn: &sea_orm::DatabaseTransaction, namespace: i32, key: &str) -> Result<()> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            [namespace.into(), key.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Rows of one table written in batches (group commit). Each caller hands its row over and waits
/// until the statement holding it has committed, so a row is durable when [`insert`] returns, as
/// with an INSERT of its own; but rows that arrive together share one multi-row INSERT, one
/// commit, and on SQLite one turn of the writer lock. Concurrent single-row INSERTs each take
/// that lock in turn, and on SQLite a writer that finds it taken sleeps in the busy handler
/// (1 ms, 2 ms, 5 ms, …): under load those sleeps, not the writes, were most of the latency.
///
/// Batches form by themselves: one statement runs at a time, and whatever arrived meanwhile is
/// the next batch. `linger` may hold the first row of a batch a little longer for others to
/// join. When a batch fails, its rows are written one by one, so each caller gets the result
/// of its own row.
///
/// [`insert`]: BatchInserter::insert
pub type BatchInserter<A> = BatchWriter<A, ()>;

/// Writes a batch of rows in one statement, with one result per row, in order.
pub type WriteBatch<R, O> =
    Box<dyn Fn(DatabaseConnection, Vec<R>) -> BoxFuture<'static, Result<Vec<O>>> + Send + Sync>;

/// A [`BatchInserter`] whose statement answers something per row (what `RETURNING` gives).
pub struct BatchWriter<R, O = ()> {
    tx: tokio::sync::mpsc::Sender<Pending<R, O>>,
    what: &'static str,
}

type Pending<R, O> = (R, tokio::sync::oneshot::Sender<Result<O>>);

impl<A> BatchWriter<A, ()>
where
    A: ActiveModelTrait + Clone + Send + 'static,
{
    /// Starts the writer task (on the current runtime). `batch` is the most rows per INSERT:
    /// keep rows × columns under SQLite's bound-parameter limit (32,766). `what` names the rows
    /// in errors and logs.
    pub fn spawn(
        db: DatabaseConnection,
        batch: usize,
        linger: Option<Duration>,
        what: &'static str,
    ) -> Self {
        Self::spawn_with(
            db,
            batch,
            linger,
            what,
            Box::new(|db, rows| {
                Box::pin(async move {
                    let n = rows.len();
                    insert_rows(&db, rows).await?;
                    Ok(vec![(); n])
                })
            }),
        )
    }

    /// Writes `row`; returns once it is committed.
    pub async fn insert(&self, row: A) -> Result<()> {
        self.write(row).await
    }
}

impl<R, O> BatchWriter<R, O>
where
    R: Clone + Send + 'static,
    O: Send + 'static,
{
    /// [`BatchWriter::spawn`] with the statement `write` (one result per row, in order).
    pub fn spawn_with(
        db: DatabaseConnection,
        batch: usize,
        linger: Option<Duration>,
        what: &'static str,
        write: WriteBatch<R, O>,
    ) -> Self {
        let batch = batch.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending<R, O>>(4 * batch);
        tokio::spawn(async move {
            let mut pending: Vec<Pending<R, O>> = Vec::with_capacity(batch);
            while rx.recv_many(&mut pending, batch).await > 0 {
                if let Some(linger) = linger {
                    let until = tokio::time::Instant::now() + linger;
                    while pending.len() < batch {
                        let room = batch - pending.len();
                        match tokio::time::timeout_at(until, rx.recv_many(&mut pending, room)).await
                        {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                }
                let (rows, waiters): (Vec<R>, Vec<_>) = pending.drain(..).unzip();
                if rows.len() == 1 {
                    let res = one(write(db.clone(), rows).await);
                    if let Some(w) = waiters.into_iter().next() {
                        let _ = w.send(res);
                    }
                    continue;
                }
                match write(db.clone(), rows.clone()).await {
                    Ok(outs) if outs.len() == waiters.len() => {
                        for (out, w) in outs.into_iter().zip(waiters) {
                            let _ = w.send(Ok(out));
                        }
                    }
                    res => {
                        if let Err(e) = &res {
                            tracing::debug!(error = %e, rows = rows.len(), "{what}: batch failed; writing its rows one by one");
                        }
                        for (row, w) in rows.into_iter().zip(waiters) {
                            let _ = w.send(one(write(db.clone(), vec![row]).await));
                        }
                    }
                }
            }
        });
        Self { tx, what }
    }

    /// Writes `row`; returns its result once it is committed.
    pub async fn write(&self, row: R) -> Result<O> {
        let stopped = || Error::Internal(format!("the {} writer has stopped", self.what));
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx.send((row, done)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// The one result of a one-row write.
fn one<O>(res: Result<Vec<O>>) -> Result<O> {
    res?.into_iter()
        .next()
        .ok_or_else(|| Error::Internal("a write answered nothing for its row".into()))
}

/// One multi-row INSERT; a database error keeps its type (a conflict, say).
async fn insert_rows<A>(db: &DatabaseConnection, rows: Vec<A>) -> Result<()>
where
    A: ActiveModelTrait + Send,
{
    <A::Entity as EntityTrait>::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DATA_DIR that cannot be made is refused naming the variable and the path.
    #[tokio::test]
    async fn an_unusable_data_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = connect(&Config::embedded(file.join("data")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATA_DIR") && err.contains("file"), "{err}");
    }

    /// Every pooled SQLite connection caps the WAL file it starts over (and checkpoints
    /// itself never: the checkpointer does).
    #[tokio::test]
    async fn sqlite_connections_cap_the_wal_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(&Config::embedded(dir.path())).await.unwrap();
        for (pragma, want) in [
            ("journal_size_limit", SQLITE_WAL_SIZE_LIMIT as i64),
            ("wal_autocheckpoint", 0),
        ] {
            let got: i64 = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    format!("PRAGMA {pragma}"),
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
            assert_eq!(got, want, "{pragma}");
        }
    }

    #[test]
    fn a_locked_write_retries_soon_then_every_millisecond_until_the_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(busy_delay(0, Duration::ZERO), Some(BUSY_SHORT_WAIT));
        assert_eq!(
            busy_delay(BUSY_SHORT_TRIES - 1, ms(15)),
            Some(BUSY_SHORT_WAIT)
        );
        assert_eq!(busy_delay(BUSY_SHORT_TRIES, ms(20)), Some(BUSY_LONG_WAIT));
        assert_eq!(busy_delay(5_000, ms(9_999)), Some(BUSY_LONG_WAIT));
        assert_eq!(busy_delay(5_000, SQLITE_BUSY_TIMEOUT), None);
        // A wait that began long ago gives up even on an early try.
        assert_eq!(busy_delay(3, SQLITE_BUSY_TIMEOUT + ms(1)), None);
    }

    /// A batch's sighting is its newest, and there is none when any item lacks one.
    #[test]
    fn a_batch_sees_its_newest_generation_only_when_all_saw_one() {
        let t = std::time::Instant::now();
        let s = |value| {
            Some(SeenGeneration {
                value,
                read_from: t,
            })
        };
        assert_eq!(SeenGeneration::newest_of_all([s(3), s(7), s(5)]), s(7));
        assert_eq!(SeenGeneration::newest_of_all([s(3), None, s(5)]), None);
        assert_eq!(SeenGeneration::newest_of_all([]), None);
    }
}
