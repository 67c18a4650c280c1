//! The queue as operators use it: who may look and who may act, what an operator's input must be,
//! and how the failed-job list pages. GraphQL (and any REST endpoint) is a thin adapter over
//! [`QueueAdmin`], so the transports cannot disagree.
//!
//! Reading (counts, a job, failed jobs) needs an admin or service token; changing (enqueue, retry,
//! remove, pause, resume) needs admin. Jobs are platform data, not a merchant's, so merchant
//! tokens are refused.

use serde_json::Value;

use super::{FailedKey, JobInfo, JobOptions, JobQueue, QueueControl, QueueName, StateCounts};
use crate::{
    auth::Actor,
    error::{Error, Result},
    pagination::{PageArgs, decode_cursor, encode_cursor},
};

/// The cursor kind of the failed-job list: `{finished_at}:{id}` (see [`FailedKey`]).
const FAILED_CURSOR: &str = "failed";

/// One request's view of the queue admin: the queue and the caller.
pub struct QueueAdmin<'a> {
    queue: &'a JobQueue,
    actor: &'a Actor,
}

/// A page of failed jobs, most recently failed first, each with its cursor.
pub struct FailedPage {
    pub jobs: Vec<(String, JobInfo)>,
    pub has_previous: bool,
    pub has_next: bool,
    pub total: u64,
}

impl<'a> QueueAdmin<'a> {
    pub fn new(queue: &'a JobQueue, actor: &'a Actor) -> Self {
        Self { queue, actor }
    }

    fn control(&self) -> &dyn QueueControl {
        self.queue.backend().as_ref()
    }

    fn require_reader(&self) -> Result<()> {
        self.actor.require_authenticated()?;
        match self.actor {
            Actor::Admin { .. } | Actor::Service { .. } => Ok(()),
            _ => Err(Error::Forbidden(
                "queue data needs an admin or service token".into(),
            )),
        }
    }

    /// Counts of one queue.
    pub async fn stats(&self, queue: QueueName) -> Result<StateCounts> {
        self.require_reader()?;
        self.queue.queue_stats(queue).await
    }

    /// Counts of every queue, in `QueueName::ALL` order.
    pub async fn all_stats(&self) -> Result<Vec<(QueueName, StateCounts)>> {
        self.require_reader()?;
        let mut out = Vec::with_capacity(QueueName::ALL.len());
        for q in QueueName::ALL {
            out.push((q, self.queue.queue_stats(q).await?));
        }
        Ok(out)
    }

    pub async fn job(&self, queue: QueueName, id: &str) -> Result<JobInfo> {
        self.require_reader()?;
        super::check_job_id("id", id)?;
        self.queue.job_status(queue, id).await
    }

    /// Failed jobs, most recently failed first, paged by key: a cursor names its job's finish
    /// time and id, so jobs that fail between two pages repeat nothing and skip nothing (an
    /// offset cursor repeated the page's last jobs).
    pub async fn failed_jobs(&self, queue: QueueName, page: PageArgs) -> Result<FailedPage> {
        self.require_reader()?;
        let limit = page.limit()?;
        let after = match &page.after {
            Some(c) => Some(
                decode_cursor(FAILED_CURSOR, c)?
                    .split_once(':')
                    .and_then(|(at, id)| {
                        Some(FailedKey {
                            finished_at: at.parse().ok()?,
                            id: id.to_owned(),
                        })
                    })
                    .ok_or_else(|| {
                        Error::validation("after", "after is not a valid cursor for this list")
                    })?,
            ),
            None => None,
        };
        let total = self.control().counts(queue).await?.failed;
        let mut jobs = self
            .control()
            .list_failed(queue, after.as_ref(), limit + 1)
            .await?;
        let has_next = jobs.len() as u64 > limit;
        jobs.truncate(limit as usize);
        let jobs = jobs
            .into_iter()
            .map(|j| {
                let at = j.finished_at.unwrap_or_default();
                (encode_cursor(FAILED_CURSOR, &format!("{at}:{}", j.id)), j)
            })
            .collect();
        Ok(FailedPage {
            jobs,
            has_previous: after.is_some(),
            has_next,
            total,
        })
    }

    /// Adds a job. `options` is the JSON object of [`JobOptions`] (unknown keys are refused).
    pub async fn enqueue(
        &self,
        queue: QueueName,
        name: &str,
        data: &Value,
        options: Option<Value>,
    ) -> Result<JobInfo> {
        self.actor.require_admin()?;
        // A delivery job carries the body it signs with a merchant's secret: only the dispatcher
        // makes them, from stored events, so no one can have a forged event signed.
        if queue == QueueName::WebhookDelivery {
            return Err(Error::validation(
                "queue",
                "webhook_delivery jobs are made from stored events only; to send again use \
                 redeliver(logId), recoverWebhook(id) or sendTestEvent(id)",
            ));
        }
        let opts: JobOptions = match options {
            None | Some(Value::Null) => JobOptions::default(),
            Some(v) => crate::input::deserialize(v).map_err(|e| {
                // Named as the checks after parsing name them (`attempts`, `jobId`).
                let field = match e.path().to_string().as_str() {
                    "." => "options".to_owned(),
                    p => p.to_owned(),
                };
                let message = crate::input::json_error_message(&e.into_inner().to_string());
                Error::validation(field, format!("invalid job options: {message}"))
            })?,
        };
        if name.trim().is_empty() || name.len() > 64 {
            return Err(Error::validation("name", "name must be 1-64 characters"));
        }
        let id = self.queue.enqueue(queue, name, data, &opts).await?;
        self.queue.job_status(queue, &id).await
    }

    /// Moves a failed job back to waiting with a fresh set of attempts.
    pub async fn retry(&self, queue: QueueName, id: &str) -> Result<JobInfo> {
        self.actor.require_admin()?;
        super::check_job_id("id", id)?;
        self.control().retry(queue, id).await?;
        self.queue.job_status(queue, id).await
    }

    /// Deletes a job that is not running; `false` when there was no such job.
    pub async fn remove(&self, queue: QueueName, id: &str) -> Result<bool> {
        self.actor.require_admin()?;
        super::check_job_id("id", id)?;
        self.control().remove(queue, id).await
    }

    /// Pauses or resumes taking new jobs of `queue`, everywhere; returns its counts.
    pub async fn set_paused(&self, queue: QueueName, paused: bool) -> Result<StateCounts> {
        self.actor.require_admin()?;
        self.control().set_paused(queue, paused).await?;
        // The counts as they are now, and the state this call set: a pause and a resume at once
        // each answer with their own change, as in a serial run (read back, a pause could
        // answer "not paused" after a resume that came in between).
        let mut stats = self.queue.queue_stats(queue).await?;
        stats.paused = paused;
        Ok(stats)
    }
}
