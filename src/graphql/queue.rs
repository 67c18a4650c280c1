//! The job queue over GraphQL: thin adapters over `queue::admin`, which holds the authorization
//! (read: admin or service; change: admin), the input checks and the paging.

use async_graphql::{
    Context, Json, Object, SimpleObject,
    connection::{Connection, Edge},
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{audit::CountFields, req};
use crate::{
    pagination::PageArgs,
    queue::{AttemptError, JobInfo, JobState, Priority, QueueName, StateCounts, admin::QueueAdmin},
};

fn admin<'a>(ctx: &'a Context<'_>) -> QueueAdmin<'a> {
    let (state, rc) = req(ctx);
    state.queue.admin(&rc.actor)
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

impl QueueStats {
    fn new(queue: QueueName, c: StateCounts) -> Self {
        Self {
            name: queue.as_str().to_owned(),
            waiting: c.waiting,
            active: c.active,
            delayed: c.delayed,
            completed: c.completed,
            failed: c.failed,
            paused: c.paused,
        }
    }
}

#[derive(Default)]
pub struct QueueQuery;

#[Object]
impl QueueQuery {
    /// Every queue's counts.
    async fn queues(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<QueueStats>> {
        let all = admin(ctx).all_stats().await?;
        Ok(all
            .into_iter()
            .map(|(q, c)| QueueStats::new(q, c))
            .collect())
    }

    async fn queue_stats(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        Ok(QueueStats::new(queue, admin(ctx).stats(queue).await?))
    }

    /// One job: state, attempts, errors, timestamps and result.
    async fn job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<Job> {
        Ok(Job(admin(ctx).job(queue, &id).await?))
    }

    /// Failed jobs, most recently failed first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn failed_jobs(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Job, CountFields>> {
        let page = admin(ctx)
            .failed_jobs(queue, PageArgs { first, after })
            .await?;
        let mut conn = Connection::with_additional_fields(
            page.has_previous,
            page.has_next,
            CountFields {
                total_count: page.total,
            },
        );
        conn.edges.extend(
            page.jobs
                .into_iter()
                .map(|(cursor, j)| Edge::new(cursor, Job(j))),
        );
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
        let options = options.map(|o| o.0);
        Ok(Job(admin(ctx)
            .enqueue(queue, &name, &data.0, options)
            .await?))
    }

    /// Moves a failed job back to waiting with a fresh set of attempts (admin).
    async fn retry_job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<Job> {
        Ok(Job(admin(ctx).retry(queue, &id).await?))
    }

    /// Deletes a job that is not running (admin). False when there was no such job.
    async fn remove_job(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
        id: String,
    ) -> async_graphql::Result<bool> {
        Ok(admin(ctx).remove(queue, &id).await?)
    }

    /// Stops workers everywhere from taking new jobs of this queue (admin).
    async fn pause_queue(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        Ok(QueueStats::new(
            queue,
            admin(ctx).set_paused(queue, true).await?,
        ))
    }

    async fn resume_queue(
        &self,
        ctx: &Context<'_>,
        queue: QueueName,
    ) -> async_graphql::Result<QueueStats> {
        Ok(QueueStats::new(
            queue,
            admin(ctx).set_paused(queue, false).await?,
        ))
    }
}
