//! The job queue over GraphQL. Reading needs an admin or service token; changing needs admin.

use async_graphql::{
    Context, Json, Object, SimpleObject,
    connection::{Connection, Edge},
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{audit::CountFields, req};
use crate::{
    auth::{Actor, RequestContext},
    error::{Error, Result},
    pagination::{PageArgs, decode_cursor, encode_cursor},
    queue::{AttemptError, JobInfo, JobOptions, JobState, Priority, QueueName},
};

fn require_reader(rc: &RequestContext) -> Result<()> {
    rc.actor.require_authenticated()?;
    match rc.actor {
        Actor::Admin { .. } | Actor::Service { .. } => Ok(()),
        _ => Err(Error::Forbidden(
            "queue data needs an admin or service token".into(),
        )),
    }
}

#[derive(SimpleObject)]
pub struct QueueStats {
    /// The seed's lowercase queue name, e.g. `media_processing`.
    name: String,
    waiting: u64,
    active: u64,
    delayed: u64,
    completed: u64,
    failed: u64,
    paused: bool,
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

pub struct Job(JobInfo);

#[Object]
impl Job {
    async fn id(&self) -> &str {
        &self.0.id
    }
    async fn queue(&self) -> QueueName {
        self.0.queue
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn state(&self) -> JobState {
        self.0.state
    }
    async fn data(&self) -> Json<Value> {
        Json(self.0.payload.clone())
    }
    async fn priority(&self) -> Priority {
        self.0.priority
    }
    async fn attempts_made(&self) -> u32 {
        self.0.attempts_made
    }
    async fn max_attempts(&self) -> u32 {
        self.0.max_attempts
    }
    /// Every failed attempt, oldest first.
    async fn errors(&self) -> &[AttemptError] {
        &self.0.errors
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    async fn result(&self) -> Option<Json<Value>> {
        self.0.result.clone().map(Json)
    }
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        millis(self.0.created_at)
    }
    /// When the job is (or was) due to run.
    async fn run_at(&self) -> Option<DateTime<Utc>> {
        millis(self.0.run_at)
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.and_then(millis)
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.and_then(millis)
    }
}

async fn stats(ctx: &Context<'_>, queue: QueueName) -> Result<QueueStats> {
    let (state, _) = req(ctx);
    let c = state.queue.queue_stats(queue).await?;
    Ok(QueueStats {
        name: queue.as_str().to_owned(),
        waiting: c.waiting,
        active: c.active,
        delayed: c.delayed,
        completed: c.completed,
        failed: c.failed,
        paused: c.paused,
    })
}

#[derive(Default)]
pub struct QueueQuery;

#[Object]
impl QueueQuery {
    /// Every queue's counts.
    async fn queues(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<QueueStats>> {
        require_reader(req(ctx).1)?;
        let mut out = Vec::new();
        for q in QueueName::ALL {
            out.push(stats(ctx, q).await?);
        }
        Ok(out)
    }

    async fn queue_stats(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        require_reader(req(ctx).1)?;
        Ok(stats(ctx, queue).await?)
    }

    /// One job: state, attempts, errors, timestamps and result.
    async fn job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<Job> {
        let (state, rc) = req(ctx);
        require_reader(rc)?;
        Ok(Job(state.queue.job_status(queue, &id).await?))
    }

    /// Failed jobs, most recently failed first.
    async fn failed_jobs(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Job, CountFields>> {
        let (state, rc) = req(ctx);
        require_reader(rc)?;
        let args = PageArgs { first, after };
        let limit = args.limit()?;
        let offset: u64 = match &args.after {
            Some(c) => decode_cursor("failed", c)?.parse().map_err(|_| {
                Error::validation("after", "after is not a valid cursor for this list")
            })?,
            None => 0,
        };
        let backend = state.queue.backend();
        let total = backend.counts(queue).await?.failed;
        let mut jobs = backend.list_failed(queue, offset, limit + 1).await?;
        let has_next = jobs.len() as u64 > limit;
        jobs.truncate(limit as usize);
        let mut conn = Connection::with_additional_fields(
            offset > 0,
            has_next,
            CountFields { total_count: total },
        );
        conn.edges
            .extend(jobs.into_iter().enumerate().map(|(i, j)| {
                Edge::new(
                    encode_cursor("failed", &(offset + i as u64 + 1).to_string()),
                    Job(j),
                )
            }));
        Ok(conn)
    }
}

#[derive(Default)]
pub struct QueueMutation;

#[Object]
impl QueueMutation {
    /// Adds a job (admin). `options`: attempts, backoffMs, priority (high|normal|low), delayMs or
    /// runAt, timeoutMs, jobId. The same jobId twice gives one job.
    async fn enqueue_job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        name: String,
        data: Json<Value>,
        options: Option<Json<Value>>,
    ) -> async_graphql::Result<Job> {
        let (state, rc) = req(ctx);
        rc.actor.require_admin()?;
        let opts: JobOptions = match options.map(|o| o.0) {
            None | Some(Value::Null) => JobOptions::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::validation("options", format!("invalid job options: {e}")))?,
        };
        if name.trim().is_empty() || name.len() > 64 {
            return Err(Error::validation("name", "name must be 1-64 characters").into());
        }
        let id = state.queue.enqueue(queue, &name, &data.0, &opts).await?;
        Ok(Job(state.queue.job_status(queue, &id).await?))
    }

    /// Moves a failed job back to waiting with a fresh set of attempts (admin).
    async fn retry_job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<Job> {
        let (state, rc) = req(ctx);
        rc.actor.require_admin()?;
        state.queue.backend().retry(queue, &id).await?;
        Ok(Job(state.queue.job_status(queue, &id).await?))
    }

    /// Deletes a job that is not running (admin). False when there was no such job.
    async fn remove_job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<bool> {
        let (state, rc) = req(ctx);
        rc.actor.require_admin()?;
        Ok(state.queue.backend().remove(queue, &id).await?)
    }

    /// Stops workers everywhere from taking new jobs of this queue (admin).
    async fn pause_queue(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        let (state, rc) = req(ctx);
        rc.actor.require_admin()?;
        state.queue.backend().set_paused(queue, true).await?;
        Ok(stats(ctx, queue).await?)
    }

    async fn resume_queue(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        let (state, rc) = req(ctx);
        rc.actor.require_admin()?;
        state.queue.backend().set_paused(queue, false).await?;
        Ok(stats(ctx, queue).await?)
    }
}
