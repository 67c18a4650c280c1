//! `message_sending`: delivers one queued WhatsApp message (see `whatsapp::service::deliver` for
//! the transports, the retry rules and `Retry-After`).

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    AppState,
    queue::{JobInfo, worker::JobError},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    message_id: Uuid,
}

#[derive(Deserialize)]
struct Payload {
    message: Message,
}

pub async fn handle(state: &AppState, job: &JobInfo) -> Result<Value, JobError> {
    let p: Payload = crate::input::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("bad message_sending payload: {e}")))?;
    crate::whatsapp::service::deliver(state, job, p.message.message_id).await
}
