//! `webhook_delivery`: one signed attempt of one event to one endpoint. The logic lives in
//! `webhooks::delivery`; this is the queue's entry point.

use serde_json::Value;

use crate::{
    AppState,
    queue::{JobInfo, worker::JobError},
};

pub async fn handle(state: &AppState, job: &JobInfo) -> Result<Value, JobError> {
    crate::webhooks::delivery::handle(state, job).await
}
