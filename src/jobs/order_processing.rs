//! `order_processing`: validates a submitted order (see `orders::service::process`). An invalid
//! order is a business outcome (REJECTED with its reason) and completes the job; only database
//! trouble is retried.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    AppState,
    error::Error,
    queue::{JobInfo, worker::JobError},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    order_id: Uuid,
}

pub async fn handle(state: &AppState, job: &JobInfo) -> Result<Value, JobError> {
    let p: Payload = crate::input::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("bad order_processing payload: {e}")))?;
    crate::orders::service::process(state, p.order_id)
        .await
        .map_err(|e| match e {
            Error::Internal(_) => JobError::retryable(e),
            other => JobError::permanent(other),
        })
}
