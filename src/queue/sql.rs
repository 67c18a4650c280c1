//! The embedded queue: a `jobs` table in the app database, so jobs survive a restart with no
//! other service.
//!
//! A fetch is one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING *` statement. On PostgreSQL
//! the inner select takes `FOR UPDATE SKIP LOCKED`, so any number of worker processes claim
//! disjoint jobs without waiting on each other; on SQLite the single writer serialises the
//! statement, which makes it just as atomic. Every later write re-checks `lease_token`, so a
//! worker whose lease was reclaimed changes nothing.
//!
//! Times are epoch milliseconds from the application host's clock. Workers in one process are
//! woken at once by a local notification; other processes poll every `poll_interval`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait, Value as DbValue,
    sea_query::OnConflict,
};
use tokio::sync::Notify;

use super::{
    AttemptError, JobInfo, JobState, Leased, NewJob, Outcome, Priority, QueueBackend, QueueName,
    Retention, StateCounts,
};
use crate::error::{Error, Result};
use entity::{job, queue_control};

pub struct SqlQueue {
    db: DatabaseConnection,
    notify: HashMap<QueueName, Arc<Notify>>,
    poll_interval: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
        Self {
            db,
            notify,
            poll_interval,
        }
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

    fn wake(&self, queue: QueueName) {
        if let Some(n) = self.notify.get(&queue) {
            // A stored permit means a wake-up between two waits is never lost.
            n.notify_one();
        }
    }
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
impl QueueBackend for SqlQueue {
    async fn enqueue(&self, queue: QueueName, job: NewJob) -> Result<bool> {
        let now = now_ms();
        let delayed = !job.delay.is_zero();
        let am = job::ActiveModel {
            queue: Set(queue.as_str().to_owned()),
            id: Set(job.id),
            name: Set(job.name),
            payload: Set(job.payload),
            state: Set(if delayed { "delayed" } else { "waiting" }.to_owned()),
            priority: Set(job.priority.rank()),
            attempts_made: Set(0),
            max_attempts: Set(job.max_attempts as i32),
            backoff_ms: Set(ms(job.backoff)),
            timeout_ms: Set(ms(job.timeout)),
            run_at: Set(now + ms(job.delay)),
            lease_until: Set(None),
            lease_token: Set(None),
            errors: Set("[]".into()),
            last_error: Set(None),
            result: Set(None),
            created_at: Set(now),
            started_at: Set(None),
            finished_at: Set(None),
        };
        // ON CONFLICT DO NOTHING makes a repeated job id a no-op, atomically.
        let res = job::Entity::insert(am)
            .on_conflict(
                OnConflict::columns([job::Column::Queue, job::Column::Id])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        let created = res > 0;
        if created && !delayed {
            self.wake(queue);
        }
        Ok(created)
    }

    async fn fetch(&self, queue: QueueName, n: usize, lease: Duration) -> Result<Vec<Leased>> {
        if n == 0 {
            return Ok(vec![]);
        }
        let now = now_ms();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let lock = if self.backend() == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET state = 'active', attempts_made = attempts_made + 1, lease_token = ?, lease_until = ?, started_at = ? \
             WHERE queue = ? AND id IN (\
               SELECT id FROM jobs WHERE queue = ? AND state IN ('waiting', 'delayed') AND run_at <= ? \
               AND NOT EXISTS (SELECT 1 FROM queue_controls c WHERE c.queue = ? AND c.paused = ?) \
               ORDER BY priority, run_at, created_at, id LIMIT ?{lock}) \
             RETURNING {COLUMNS}"
        );
        let q = queue.as_str();
        let stmt = self.stmt(
            &sql,
            vec![
                token.clone().into(),
                (now + ms(lease)).into(),
                now.into(),
                q.into(),
                q.into(),
                now.into(),
                q.into(),
                true.into(),
                (n as i64).into(),
            ],
        );
        let rows = job::Entity::find().from_raw_sql(stmt).all(&self.db).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(Leased {
                job: to_info(row)?,
                token: token.clone(),
            });
        }
        // RETURNING order is unspecified: hand jobs out in queue order.
        out.sort_by_key(|l| (l.job.priority.rank(), l.job.run_at, l.job.created_at));
        Ok(out)
    }

    async fn extend(
        &self,
        queue: QueueName,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
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
                let txn = self.db.begin().await?;
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
        let res = self
            .db
            .execute_raw(self.stmt(
                "UPDATE jobs SET state = 'waiting', attempts_made = attempts_made - 1, lease_token = NULL, lease_until = NULL, started_at = NULL \
                 WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                vec![queue.as_str().into(), id.into(), token.into()],
            ))
            .await?;
        if res.rows_affected() == 1 {
            self.wake(queue);
        }
        Ok(res.rows_affected() == 1)
    }

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
            let res = self
                .db
                .execute_raw(self.stmt(
                    "UPDATE jobs SET state = ?, run_at = ?, finished_at = ?, errors = ?, last_error = ?, lease_token = NULL, lease_until = NULL \
                     WHERE queue = ? AND id = ? AND lease_token = ? AND state = 'active'",
                    vec![
                        state.into(),
                        now.into(),
                        finished.into(),
                        errors.into(),
                        error.into(),
                        j.queue.clone().into(),
                        j.id.clone().into(),
                        j.lease_token.clone().into(),
                    ],
                ))
                .await?;
            recovered += res.rows_affected();
        }
        if recovered > 0 {
            self.wake(queue);
        }
        Ok(recovered)
    }

    async fn wait_for_work(&self, queue: QueueName, timeout: Duration) -> Result<()> {
        let notify = self.notify[&queue].clone();
        let _ = tokio::time::timeout(timeout.min(self.poll_interval), notify.notified()).await;
        Ok(())
    }

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

    async fn list_failed(&self, queue: QueueName, offset: u64, limit: u64) -> Result<Vec<JobInfo>> {
        job::Entity::find()
            .filter(job::Column::Queue.eq(queue.as_str()))
            .filter(job::Column::State.eq("failed"))
            .order_by_desc(job::Column::FinishedAt)
            .order_by_desc(job::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_info)
            .collect()
    }

    async fn retry(&self, queue: QueueName, id: &str) -> Result<()> {
        let res = self
            .db
            .execute_raw(self.stmt(
                "UPDATE jobs SET state = 'waiting', attempts_made = 0, run_at = ?, finished_at = NULL \
                 WHERE queue = ? AND id = ? AND state = 'failed'",
                vec![now_ms().into(), queue.as_str().into(), id.into()],
            ))
            .await?;
        if res.rows_affected() == 1 {
            self.wake(queue);
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
        let res = self
            .db
            .execute_raw(self.stmt(
                "DELETE FROM jobs WHERE queue = ? AND id = ? AND state <> 'active'",
                vec![queue.as_str().into(), id.into()],
            ))
            .await?;
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
        if !paused {
            self.wake(queue);
        }
        Ok(())
    }

    async fn clean(&self, queue: QueueName, r: Retention) -> Result<u64> {
        let now = now_ms();
        let q = queue.as_str();
        let mut removed = 0;
        for (state, keep, age) in [
            ("completed", r.completed_count, r.completed_age),
            ("failed", r.failed_count, r.failed_age),
        ] {
            removed += self
                .db
                .execute_raw(self.stmt(
                    "DELETE FROM jobs WHERE queue = ? AND state = ? AND finished_at < ?",
                    vec![q.into(), state.into(), (now - ms(age)).into()],
                ))
                .await?
                .rows_affected();
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
        Ok(removed)
    }

    async fn ping(&self) -> Result<()> {
        crate::db::ping(&self.db).await
    }

    fn kind(&self) -> &'static str {
        "sql"
    }
}
