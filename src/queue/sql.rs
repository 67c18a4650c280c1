//! The embedded queue: a `jobs` table in the app database, so jobs survive a restart with no
//! other service.
//!
//! A fetch is one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING *` statement. On PostgreSQL
//! the inner select takes `FOR UPDATE SKIP LOCKED`, so any number of worker processes claim
//! disjoint jobs without waiting on each other; on SQLite the single writer serialises the
//! statement, which makes it just as atomic. The inner select walks a partial index in its own
//! order, so a fetch stays a millisecond statement however long the backlog: on PostgreSQL a long
//! fetch holds row locks on jobs other workers leased meanwhile (see `fetch`). Every later write
//! re-checks `lease_token`, so a worker whose lease was reclaimed changes nothing.
//!
//! Round trips are batched: a batch of jobs is one multi-row `INSERT`, and a batch of
//! completions is one `UPDATE … FROM (VALUES …)`, sent together with the next fetch.
//!
//! Wake-ups: workers in one process are woken at once by a local notification. On PostgreSQL
//! every change that makes work ready also sends `NOTIFY smartbot_jobs, '<queue>'`, and one
//! `LISTEN` connection per process wakes its workers, so other processes pick work up within a
//! round trip too. `poll_interval` remains as the fallback for delayed jobs and lost
//! notifications (SQLite has no cross-process signal, so other processes poll).
//!
//! Times are epoch milliseconds from the application host's clock.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Once},
    time::Duration,
};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    Value as DbValue, sea_query::OnConflict,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    AttemptError, Completion, FailedKey, JobInfo, JobState, Leased, NewJob, Outcome, Priority,
    QueueBackend, QueueControl, QueueName, Retention, StateCounts,
};
use crate::error::{Error, Result};
use entity::{job, queue_control};

/// The PostgreSQL channel that carries "work is ready in <queue>" between processes.
const CHANNEL: &str = "smartbot_jobs";

/// Rows per multi-row statement: 19 columns × 500 stays far below both databases' parameter caps.
const BATCH_ROWS: usize = 500;

type Wakers = Arc<HashMap<QueueName, Arc<Notify>>>;

pub struct SqlQueue {
    db: DatabaseConnection,
    notify: Wakers,
    poll_interval: Duration,
    /// Starts the LISTEN task (PostgreSQL) the first time a worker waits.
    listening: Once,
    stop: CancellationToken,
    /// SQLite only: the queue's writes take turns here. SQLite has one writer; without this, a
    /// write that finds the database locked sleeps in SQLite's busy handler (1, 2, 5, 10 … ms)
    /// instead of starting the moment the other write ends.
    writer: Option<tokio::sync::Mutex<()>>,
}

impl Drop for SqlQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wakes every worker waiting on `queue`, and leaves a permit for one that is about to wait,
/// so a wake-up between a worker's empty fetch and its wait is never lost.
fn wake_all(notify: &Wakers, queue: QueueName) {
    if let Some(n) = notify.get(&queue) {
        n.notify_waiters();
        n.notify_one();
    }
}

fn now_ms() -> i64 {
    crate::db::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

const COLUMNS: &str = "queue, id, name, payload, state, priority, attempts_made, max_attempts, backoff_ms, \
timeout_ms, run_at, lease_until, lease_token, errors, last_error, result, created_at, started_at, finished_at";

impl SqlQueue {
    pub fn new(db: DatabaseConnection, poll_interval: Duration) -> Self {
        let notify = QueueName::ALL
            .into_iter()
            .map(|q| (q, Arc::new(Notify::new())))
            .collect();
        let writer =
            (db.get_database_backend() == DbBackend::Sqlite).then(|| tokio::sync::Mutex::new(()));
        Self {
            db,
            notify: Arc::new(notify),
            poll_interval,
            listening: Once::new(),
            stop: CancellationToken::new(),
            writer,
        }
    }

    /// Waits for this process's turn to write (SQLite; nothing to wait for on PostgreSQL).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writer {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// A transaction that will write. On SQLite it takes the write lock at BEGIN (IMMEDIATE), so
    /// it waits its turn under `busy_timeout` instead of failing with "database is locked" when
    /// a read-then-write transaction would have to upgrade its lock.
    async fn begin_write(&self) -> Result<DatabaseTransaction> {
        Ok(self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?)
    }

    /// Tells workers that `queue` has ready work: local ones at once, and on PostgreSQL those of
    /// every process through NOTIFY.
    async fn signal(&self, queue: QueueName) -> Result<()> {
        wake_all(&self.notify, queue);
        if self.backend() == DbBackend::Postgres {
            self.db
                .execute_raw(self.stmt(
                    "SELECT pg_notify(?, ?)",
                    vec![CHANNEL.into(), queue.as_str().into()],
                ))
                .await?;
        }
        Ok(())
    }

    /// LISTEN on PostgreSQL: one connection per process wakes this process's workers.
    fn start_listener(&self) {
        if self.backend() != DbBackend::Postgres {
            return;
        }
        self.listening.call_once(|| {
            let pool = self.db.get_postgres_connection_pool().clone();
            let (notify, stop) = (self.notify.clone(), self.stop.clone());
            tokio::spawn(async move {
                use sea_orm::sqlx::postgres::PgListener;
                // Reconnects until it is back, 100 ms doubling to 5 s with jitter; workers poll
                // meanwhile.
                let reconnect = ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times();
                while !stop.is_cancelled() {
                    let connect = || async {
                        let mut l = PgListener::connect_with(&pool).await?;
                        l.listen(CHANNEL).await?;
                        Ok::<_, sea_orm::sqlx::Error>(l)
                    };
                    let connected = connect.retry(reconnect).notify(|e, _| {
                        tracing::warn!(error = %e, "queue: LISTEN failed; polling until it is back")
                    });
                    let mut listener = tokio::select! {
                        _ = stop.cancelled() => return,
                        l = connected => match l {
                            Ok(l) => l,
                            Err(_) => continue,
                        },
                    };
                    // Anything sent while we were not listening is unknown: look once.
                    for q in QueueName::ALL {
                        wake_all(&notify, q);
                    }
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = listener.try_recv() => match r {
                                Ok(Some(n)) => {
                                    if let Ok(q) = n.payload().parse::<QueueName>() {
                                        wake_all(&notify, q);
                                    }
                                }
                                // The connection dropped and reconnects; notifications may be lost.
                                Ok(None) => {
                                    for q in QueueName::ALL {
                                        wake_all(&notify, q);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "queue: LISTEN connection failed; reconnecting");
                                    break;
                                }
                            },
                        }
                    }
                }
            });
        });
    }

    /// The fetch statement for [`QueueBackend::fetch`], with its values: an `UPDATE … RETURNING`
    /// of up to `n` ready jobs.
    fn fetch_sql(
        &self,
        queue: QueueName,
        n: usize,
        lease: Duration,
        now: i64,
    ) -> (String, Vec<DbValue>, String) {
        let token = uuid::Uuid::new_v4().simple().to_string();
        // PostgreSQL: the ids are locked with SKIP LOCKED in an InitPlan that runs once, and the
        // UPDATE finds them by primary key (`IN (SELECT …)` lets a generic plan scan the table).
        // SQLite's single writer makes the plain form atomic.
        let (open, close) = if self.backend() == DbBackend::Postgres {
            ("= ANY(ARRAY(", " FOR UPDATE SKIP LOCKED))")
        } else {
            ("IN (", ")")
        };
        // The inner select walks `ix_jobs_fetch` in its own order and stops after `n` rows: a fetch
        // costs the same with 10 or 100,000 jobs waiting. Keep it that short. Under READ COMMITTED
        // it sees the table as of its start, so rows other workers leased since then still look
        // waiting: SKIP LOCKED cannot skip them (their leases are committed, not locked), so it
        // locks them, re-checks, drops them, and keeps the lock until the statement ends. A fetch
        // that sorted the backlog ran for seconds, and the completions of those jobs queued
        // behind it until their leases ran out (issue 12). The outer state check makes the UPDATE
        // itself re-check each row's newest version.
        let sql = format!(
            "UPDATE jobs SET state = 'active', attempts_made = attempts_made + 1, lease_token = ?, lease_until = ?, started_at = ? \
             WHERE queue = ? AND state IN ('waiting', 'delayed') AND id {open}\
               SELECT id FROM jobs WHERE queue = ? AND state IN ('waiting', 'delayed') AND run_at <= ? \
               AND NOT EXISTS (SELECT 1 FROM queue_controls c WHERE c.queue = ? AND c.paused = ?) \
               ORDER BY priority, run_at, created_at, id LIMIT ?{close} \
             RETURNING {COLUMNS}"
        );
        let q = queue.as_str();
        let values = vec![
            token.clone().into(),
            (now + ms(lease)).into(),
            now.into(),
            q.into(),
            q.into(),
            now.into(),
            q.into(),
            true.into(),
            (n as i64).into(),
        ];
        (sql, values, token)
    }

    /// One fetch statement (the caller holds the SQLite writer's turn).
    async fn fetch_now(&self, queue: QueueName, n: usize, lease: Duration) -> Result<Vec<Leased>> {
        if n == 0 {
            return Ok(vec![]);
        }
        let (sql, values, token) = self.fetch_sql(queue, n, lease, now_ms());
        let rows = job::Entity::find()
            .from_raw_sql(self.stmt(&sql, values))
            .all(&self.db)
            .await?;
        leases(rows, &token)
    }

    /// PostgreSQL: records `done` and leases up to `n` jobs in one statement. Each part is a
    /// data-modifying CTE; they touch disjoint rows (active ones with a matching token, and
    /// waiting ones), and both always run in full. The join keeps one row even when nothing was
    /// leased, to carry the count of completions that landed.
    async fn pg_complete_and_fetch(
        &self,
        queue: QueueName,
        done: &[Completion],
        n: usize,
        lease: Duration,
    ) -> Result<(usize, Vec<Leased>)> {
        let now = now_ms();
        let mut sql = String::from("WITH ");
        let mut values = Vec::new();
        if !done.is_empty() {
            let (complete, v) = complete_sql(queue, done, now);
            sql.push_str(&format!("done AS ({complete} RETURNING 1), "));
            values.extend(v);
        }
        let mut token = String::new();
        if n > 0 {
            let (fetch, v, t) = self.fetch_sql(queue, n, lease, now);
            sql.push_str(&format!("got AS ({fetch}), "));
            values.extend(v);
            token = t;
        }
        sql.push_str(if done.is_empty() {
            "d AS (SELECT 0::bigint AS landed) "
        } else {
            "d AS (SELECT count(*) AS landed FROM done) "
        });
        sql.push_str(if n > 0 {
            "SELECT got.*, d.landed FROM d LEFT JOIN got ON true"
        } else {
            "SELECT d.landed FROM d"
        });
        let rows = self.db.query_all_raw(self.stmt(&sql, values)).await?;
        let mut landed = 0usize;
        let mut got = Vec::with_capacity(rows.len());
        for row in rows {
            landed = row.try_get::<i64>("", "landed")?.max(0) as usize;
            if n > 0 && row.try_get::<Option<String>>("", "id")?.is_some() {
                got.push(job::Model::from_query_result(&row, "")?);
            }
        }
        Ok((landed, leases(got, &token)?))
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Writes SQL with `?` placeholders; PostgreSQL gets `$1, $2, …`.
    fn stmt(&self, sql: &str, values: Vec<DbValue>) -> Statement {
        let backend = self.backend();
        let sql = if backend == DbBackend::Postgres {
            let mut out = String::with_capacity(sql.len() + 16);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            sql.to_owned()
        };
        Statement::from_sql_and_values(backend, sql, values)
    }
}

/// `UPDATE … FROM (VALUES …)` that records a batch of completions (each only while its lease
/// holds), with its values.
fn complete_sql(queue: QueueName, chunk: &[Completion], now: i64) -> (String, Vec<DbValue>) {
    let mut sql = String::from(
        "UPDATE jobs SET state = 'completed', result = v.column3, finished_at = ?, lease_token = NULL, lease_until = NULL FROM (VALUES ",
    );
    let mut values: Vec<DbValue> = Vec::with_capacity(2 + chunk.len() * 3);
    values.push(now.into());
    for (i, c) in chunk.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?)");
        values.extend([
            c.id.clone().into(),
            c.token.clone().into(),
            c.result.to_string().into(),
        ]);
    }
    sql.push_str(
        ") AS v WHERE jobs.queue = ? AND jobs.id = v.column1 AND jobs.lease_token = v.column2 AND jobs.state = 'active'",
    );
    values.push(queue.as_str().into());
    (sql, values)
}

/// Leases from fetched rows, in queue order (RETURNING order is unspecified).
fn leases(rows: Vec<job::Model>, token: &str) -> Result<Vec<Leased>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(Leased {
            job: to_info(row)?,
            token: token.to_owned(),
        });
    }
    out.sort_by_key(|l| (l.job.priority.rank(), l.job.run_at, l.job.created_at));
    Ok(out)
}

fn to_info(m: job::Model) -> Result<JobInfo> {
    let queue: QueueName = m.queue.parse()?;
    let errors: Vec<AttemptError> = serde_json::from_str(&m.errors).unwrap_or_default();
    let mut state = JobState::parse(&m.state)?;
    if state == JobState::Delayed && m.run_at <= now_ms() {
        state = JobState::Waiting;
    }
    Ok(JobInfo {
        queue,
        id: m.id,
        name: m.name,
        payload: serde_json::from_str(&m.payload).map_err(Error::internal)?,
        state,
        priority: Priority::from_rank(m.priority.into()),
        attempts_made: m.attempts_made.max(0) as u32,
        max_attempts: m.max_attempts.max(0) as u32,
        backoff: Duration::from_millis(m.backoff_ms.max(0) as u64),
        timeout: Duration::from_millis(m.timeout_ms.max(0) as u64),
        errors,
        last_error: m.last_error,
        result: m
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        created_at: m.created_at,
        run_at: m.run_at,
        started_at: m.started_at,
        finished_at: m.finished_at,
    })
}

fn push_error(errors_json: &str, attempt: u32, error: &str, at: i64) -> String {
    let mut list: Vec<AttemptError> = serde_json::from_str(errors_json).unwrap_or_default();
    list.push(AttemptError {
        attempt,
        error: error.to_owned(),
        at,
    });
    // Keep the history bounded: the first attempts and the most recent ones.
    if list.len() > 50 {
        list.drain(10..list.len() - 40);
    }
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl QueueControl for SqlQueue {
    async fn get(&self, queue: QueueName, id: &str) -> Result<Option<JobInfo>> {
        job::Entity::find_by_id((queue.as_str().to_owned(), id.to_owned()))
            .one(&self.db)
            .await?
            .map(to_info)
            .transpose()
    }

    async fn counts(&self, queue: QueueName) -> Result<StateCounts> {
        let rows = self
            .db
            .query_all_raw(self.stmt(
                "SELECT CASE WHEN state IN ('waiting', 'delayed') AND run_at > ? THEN 'delayed' \
                 WHEN state = 'delayed' THEN 'waiting' ELSE state END AS s, COUNT(*) AS n \
                 FROM jobs WHERE queue = ? GROUP BY 1",
                vec![now_ms().into(), queue.as_str().into()],
            ))
            .await?;
        let mut c = StateCounts::default();
        for row in rows {
            let s: String = row.try_get("", "s")?;
            let n: i64 = row.try_get("", "n")?;
            let n = n.max(0) as u64;
            match s.as_str() {
                "waiting" => c.waiting += n,
                "delayed" => c.delayed += n,
                "active" => c.active += n,
                "completed" => c.completed += n,
                "failed" => c.failed += n,
                _ => {}
            }
        }
        c.paused = queue_control::Entity::find_by_id(queue.as_str().to_owned())
            .one(&self.db)
            .await?
            .is_some_and(|c| c.paused);
        Ok(c)
    }

    async fn list_failed(
        &self,
        queue: QueueName,
        after: Option<&FailedKey>,
        limit: u64,
    ) -> Result<Vec<JobInfo>> {
        let mut q = job::Entity::find()
            .filter(job::Column::Queue.eq(queue.as_str()))
            .filter(job::Column::State.eq("failed"));
        if let Some(k) = after {
            q = q.filter(
                Condition::any()
                    .add(job::Column::FinishedAt.lt(k.finished_at))
                    .add(
                        Condition::all()
                            .add(job::Column::FinishedAt.eq(k.finished_at))
                            .add(job::Column::Id.lt(k.id.as_str())),
                    ),
            );
        }
        q.order_by_desc(job::Column::FinishedAt)
            .order_by_desc(job::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_info)
            .collect()
    }

    async fn retry(&self, queue: QueueName, id: &str) -> Result<()> {
        let turn = self.write_turn().await;
        let res = self
            .db
            .execute_raw(self.stmt(
                "UPDATE jobs SET state = 'waiting', attempts_made = 0, run_at = ?, finished_at = NULL \
                 WHERE queue = ? AND id = ? AND state = 'failed'",
                vec![now_ms().into(), queue.as_str().into(), id.into()],
            ))
            .await?;
        drop(turn);
        if res.rows_affected() == 1 {
            self.signal(queue).await?;
            return Ok(());
        }
        match self.get(queue, id).await? {
            None => Err(Error::not_found(format_args!("job {id} in {queue}"))),
            Some(j) => Err(Error::Conflict(format!(
                "job {id} is {}, only failed jobs can be retried",
                j.state.as_str()
            ))),
        }
    }

    async fn remove(&self, queue: QueueName, id: &str) -> Result<bool> {
        let turn = self.write_turn().await;
        let res = self
            .db
            .execute_raw(self.stmt(
                "DELETE FROM jobs WHERE queue = ? AND id = ? AND state <> 'active'",
                vec![queue.as_str().into(), id.into()],
            ))
            .await?;
        drop(turn);
        if res.rows_affected() == 1 {
            return Ok(true);
        }
        match self.get(queue, id).await? {
            None => Ok(false),
            Some(_) => Err(Error::Conflict(format!(
                "job {id} is active; it can be removed once it finishes"
            ))),
        }
    }

    async fn set_paused(&self, queue: QueueName, paused: bool) -> Result<()> {
        let turn = self.write_turn().await;
        queue_control::Entity::insert(queue_control::ActiveModel {
            queue: Set(queue.as_str().to_owned()),
            paused: Set(paused),
            updated_at: Set(now_ms()),
        })
        .on_conflict(
            OnConflict::column(queue_control::Column::Queue)
                .update_columns([
                    queue_control::Column::Paused,
                    queue_control::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        drop(turn);
        if !paused {
            self.signal(queue).await?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sql"
    }

    /// The queue lives in the app database, which `/ready` checks anyway.
    async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        vec![]
    }
}

#[async_trait]
impl QueueBackend for SqlQueue {
    async fn enqueue(&self, queue: QueueName, job: NewJob) -> Result<bool> {
        Ok(self
            .enqueue_many(queue, vec![job])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// One multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING id` per batch: a repeated job id
    /// is a no-op, atomically, and the returned ids say which jobs are new.
    async fn enqueue_many(&self, queue: QueueName, jobs: Vec<NewJob>) -> Result<Vec<bool>> {
        let now = now_ms();
        let q = queue.as_str();
        let mut created = Vec::with_capacity(jobs.len());
        let mut ready = false;
        for chunk in jobs.chunks(BATCH_ROWS) {
            let mut sql = format!("INSERT INTO jobs ({COLUMNS}) VALUES ");
            let mut values: Vec<DbValue> = Vec::with_capacity(chunk.len() * 19);
            for (i, job) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, NULL, NULL, '[]', NULL, NULL, ?, NULL, NULL)");
                let delayed = !job.delay.is_zero();
                values.extend([
                    q.into(),
                    job.id.clone().into(),
                    job.name.clone().into(),
                    job.payload.clone().into(),
                    if delayed { "delayed" } else { "waiting" }.into(),
                    job.priority.rank().into(),
                    (job.max_attempts as i32).into(),
                    ms(job.backoff).into(),
                    ms(job.timeout).into(),
                    (now + ms(job.delay)).into(),
                    now.into(),
                ]);
            }
            sql.push_str(" ON CONFLICT (queue, id) DO NOTHING RETURNING id");
            let rows = {
                let _turn = self.write_turn().await;
                self.db.query_all_raw(self.stmt(&sql, values)).await?
            };
            let mut new: HashSet<String> = HashSet::with_capacity(rows.len());
            for row in rows {
                new.insert(row.try_get::<String>("", "id")?);
            }
            for job in chunk {
                // `remove`: a second copy of one id within the batch is a duplicate.
                let is_new = new.remove(&job.id);
                ready |= is_new && job.delay.is_zero();
                created.push(is_new);
            }
        }
        if ready {
            self.signal(queue).await?;
        }
        Ok(created)
    }

    /// Records a batch of completions in one `UPDATE … FROM (VALUES …)` and leases the next
    /// jobs. PostgreSQL: both in one statement (two data-modifying CTEs), so one round trip and
    /// one commit per batch. SQLite: two statements in one turn of the writer.
    async fn complete_and_fetch(
        &self,
        queue: QueueName,
        done: &[Completion],
        n: usize,
        lease: Duration,
    ) -> Result<(usize, Vec<Leased>)> {
        if done.is_empty() && n == 0 {
            return Ok((0, vec![]));
        }
        if self.backend() == DbBackend::Postgres && done.len() <= BATCH_ROWS {
            return self.pg_complete_and_fetch(queue, done, n, lease).await;
        }
        let _turn = self.write_turn().await;
        let mut landed = 0;
        for chunk in done.chunks(BATCH_ROWS) {
            let (sql, values) = complete_sql(queue, chunk, now_ms());
            landed += self
                .db
                .execute_raw(self.stmt(&sql, values))
                .await?
                .rows_affected() as usize;
        }
        Ok((landed, self.fetch_now(queue, n, lease).await?))
    }

    async fn fetch(&self, queue: QueueName, n: usize, lease: Duration) -> Result<Vec<Leased>> {
        if n == 0 {
            return Ok(vec![]);
        }
        if self.backend() == DbBackend::Postgres {
            return Ok(self.pg_complete_and_fetch(queue, &[], n, lease).await?.1);
        }
        let _turn = self.write_turn().await;
        self.fetch_now(queue, n, lease).await
    }

    async fn extend(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let res = self
            .db
            .execute_raw(self.stmt(
                "UPDATE jobs SET lease_until = ? WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                vec![(now_ms() + ms(lease)).into(), queue.as_str().into(), id.into(), token.into()],
            ))
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn finish(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<bool> {
        let now = now_ms();
        let q = queue.as_str();
        let _turn = self.write_turn().await;
        match outcome {
            Outcome::Completed(result) => {
                let res = self
                    .db
                    .execute_raw(self.stmt(
                        "UPDATE jobs SET state = 'completed', result = ?, finished_at = ?, lease_token = NULL, lease_until = NULL \
                         WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                        vec![result.to_string().into(), now.into(), q.into(), id.into(), token.into()],
                    ))
                    .await?;
                Ok(res.rows_affected() == 1)
            }
            Outcome::Failed { error, retry_in } => {
                let txn = self.begin_write().await?;
                let current = job::Entity::find()
                    .filter(job::Column::Queue.eq(q))
                    .filter(job::Column::Id.eq(id))
                    .filter(job::Column::LeaseToken.eq(token))
                    .filter(job::Column::State.eq("active"))
                    .one(&txn)
                    .await?;
                let Some(current) = current else {
                    return Ok(false);
                };
                let errors = push_error(&current.errors, attempt, &error, now);
                let (state, run_at, finished) = match retry_in {
                    Some(d) => ("delayed", now + ms(d), None),
                    None => ("failed", current.run_at, Some(now)),
                };
                let res = txn
                    .execute_raw(self.stmt(
                        "UPDATE jobs SET state = ?, run_at = ?, finished_at = ?, errors = ?, last_error = ?, lease_token = NULL, lease_until = NULL \
                         WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                        vec![
                            state.into(),
                            run_at.into(),
                            finished.into(),
                            errors.into(),
                            error.into(),
                            q.into(),
                            id.into(),
                            token.into(),
                        ],
                    ))
                    .await?;
                txn.commit().await?;
                Ok(res.rows_affected() == 1)
            }
        }
    }

    async fn release(&self, queue: QueueName, id: &str, token: &str) -> Result<bool> {
        let turn = self.write_turn().await;
        let res = self
            .db
            .execute_raw(self.stmt(
                "UPDATE jobs SET state = 'waiting', attempts_made = attempts_made - 1, lease_token = NULL, lease_until = NULL, started_at = NULL \
                 WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                vec![queue.as_str().into(), id.into(), token.into()],
            ))
            .await?;
        drop(turn);
        if res.rows_affected() == 1 {
            self.signal(queue).await?;
        }
        Ok(res.rows_affected() == 1)
    }

    /// The UPDATE re-checks the expiry itself: under READ COMMITTED it is evaluated against the
    /// row's newest version, so a holder that renewed its lease after the SELECT keeps the job.
    async fn recover_stalled(&self, queue: QueueName) -> Result<u64> {
        let now = now_ms();
        let stalled = job::Entity::find()
            .filter(job::Column::Queue.eq(queue.as_str()))
            .filter(job::Column::State.eq("active"))
            .filter(job::Column::LeaseUntil.lt(now))
            .limit(500)
            .all(&self.db)
            .await?;
        let mut recovered = 0;
        for j in stalled {
            let attempt = j.attempts_made.max(0) as u32;
            let error = "stalled: the worker stopped renewing its lease (crashed or hung)";
            let errors = push_error(&j.errors, attempt, error, now);
            let out_of_attempts = j.attempts_made >= j.max_attempts;
            let (state, finished) = if out_of_attempts {
                ("failed", Some(now))
            } else {
                ("waiting", None)
            };
            let _turn = self.write_turn().await;
            let res = self
                .db
                .execute_raw(self.stmt(
                    "UPDATE jobs SET state = ?, run_at = ?, finished_at = ?, errors = ?, last_error = ?, lease_token = NULL, lease_until = NULL \
                     WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active' AND lease_until < ?",
                    vec![
                        state.into(),
                        now.into(),
                        finished.into(),
                        errors.into(),
                        error.into(),
                        j.queue.clone().into(),
                        j.id.clone().into(),
                        j.lease_token.clone().into(),
                        now.into(),
                    ],
                ))
                .await?;
            recovered += res.rows_affected();
        }
        if recovered > 0 {
            self.signal(queue).await?;
        }
        Ok(recovered)
    }

    async fn wait_for_work(&self, queue: QueueName, timeout: Duration) -> Result<()> {
        self.start_listener();
        let notify = self.notify[&queue].clone();
        let _ = tokio::time::timeout(timeout.min(self.poll_interval), notify.notified()).await;
        Ok(())
    }

    /// By age: one range delete on `ix_jobs_finished`. By count: first a read that stops after
    /// `keep + 1` index entries, and the delete (which sorts every finished job of that state)
    /// only when there is something beyond `keep`, so a trim that finds nothing to do writes
    /// nothing and holds no lock.
    async fn clean(&self, queue: QueueName, r: Retention) -> Result<u64> {
        let now = now_ms();
        let q = queue.as_str();
        let mut removed = 0;
        for (state, keep, age) in [
            ("completed", r.completed_count, r.completed_age),
            ("failed", r.failed_count, r.failed_age),
        ] {
            let cutoff = now - ms(age);
            let old = self
                .db
                .query_one_raw(self.stmt(
                    "SELECT 1 AS x FROM jobs WHERE queue = ? AND state = ? AND finished_at < ? LIMIT 1",
                    vec![q.into(), state.into(), cutoff.into()],
                ))
                .await?
                .is_some();
            if old {
                let _turn = self.write_turn().await;
                removed += self
                    .db
                    .execute_raw(self.stmt(
                        "DELETE FROM jobs WHERE queue = ? AND state = ? AND finished_at < ?",
                        vec![q.into(), state.into(), cutoff.into()],
                    ))
                    .await?
                    .rows_affected();
            }
            let over = self
                .db
                .query_one_raw(self.stmt(
                    "SELECT 1 AS x FROM jobs WHERE queue = ? AND state = ? LIMIT 1 OFFSET ?",
                    vec![q.into(), state.into(), (keep as i64).into()],
                ))
                .await?
                .is_some();
            if over {
                let _turn = self.write_turn().await;
                removed += self
                    .db
                    .execute_raw(self.stmt(
                        "DELETE FROM jobs WHERE queue = ? AND state = ? AND id NOT IN (\
                         SELECT id FROM jobs WHERE queue = ? AND state = ? ORDER BY finished_at DESC, id DESC LIMIT ?)",
                        vec![q.into(), state.into(), q.into(), state.into(), (keep as i64).into()],
                    ))
                    .await?
                    .rows_affected();
            }
        }
        Ok(removed)
    }

    /// A batch of leases beyond the free slots, so one round trip records a batch of
    /// completions and refills them (graphile-worker's local queue does the same).
    fn prefetch(&self, concurrency: usize) -> usize {
        concurrency
    }

    /// Short jobs: up to 500 leased ahead (graphile-worker's benchmark setting for its local
    /// queue), so one statement records and refills hundreds of jobs instead of a handful; the
    /// cost per commit (a WAL flush) is then shared by the batch.
    fn max_prefetch(&self, concurrency: usize) -> usize {
        concurrency.max(500)
    }

    /// PostgreSQL: two fetch loops whose round trips overlap (SKIP LOCKED keeps them disjoint).
    /// SQLite has one writer, so a second loop would only wait for it.
    fn lanes(&self, concurrency: usize) -> usize {
        if self.backend() == DbBackend::Postgres {
            concurrency.min(2)
        } else {
            1
        }
    }
}
