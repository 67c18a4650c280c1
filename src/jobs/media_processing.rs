//! `media_processing`: renders the further sizes of an uploaded image (the thumbnail is made on
//! upload) and records them in the row's `variants`.
//!
//! Idempotent: a size already recorded is not rendered again, files are content-addressed and
//! written atomically, and a row deleted meanwhile ends the job quietly.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    AppState,
    error::Error,
    media::{
        process::{self, Limits, SizeSpec},
        storage,
    },
    queue::{JobInfo, worker::JobError},
};
use entity::{MediaStatus, media_file};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    media_id: String,
    #[serde(default)]
    options: Options,
}

#[derive(Deserialize)]
struct Options {
    #[serde(default = "default_sizes")]
    sizes: Vec<SizeSpec>,
    #[serde(default = "default_quality")]
    quality: u8,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sizes: default_sizes(),
            quality: default_quality(),
        }
    }
}

fn default_sizes() -> Vec<SizeSpec> {
    vec![SizeSpec::medium()]
}

fn default_quality() -> u8 {
    85
}

/// A size name becomes part of a file name: keep it to `[a-z0-9_-]`.
fn size_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Database and storage trouble may pass; bad input will not.
fn classify(e: Error) -> JobError {
    match e {
        Error::Internal(_) => JobError::retryable(e),
        other => JobError::permanent(other),
    }
}

async fn set_status(
    state: &AppState,
    row: &media_file::Model,
    status: MediaStatus,
    error: Option<String>,
    variants: Option<Value>,
) -> Result<media_file::Model, Error> {
    let mut am: media_file::ActiveModel = row.clone().into();
    am.status = Set(status);
    am.error = Set(error);
    if let Some(v) = variants {
        am.variants = Set(v);
    }
    am.updated_at = Set(chrono::Utc::now());
    Ok(am.update(&state.db).await?)
}

pub async fn handle(state: &AppState, job: &JobInfo) -> Result<Value, JobError> {
    let p: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("bad payload: {e}")))?;
    let id = Uuid::parse_str(&p.media_id)
        .map_err(|_| JobError::permanent("mediaId is not a valid id"))?;
    if p.options.sizes.is_empty()
        || p.options
            .sizes
            .iter()
            .any(|s| s.width == 0 || s.height == 0 || !size_name_ok(&s.name))
    {
        return Err(JobError::permanent("bad sizes"));
    }
    let Some(row) = media_file::Entity::find_by_id(id)
        .one(&state.db)
        .await
        .map_err(|e| JobError::retryable(Error::from(e)))?
    else {
        return Ok(json!({ "skipped": "media deleted" }));
    };
    let done: Vec<String> = row
        .variants
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let todo: Vec<SizeSpec> = p
        .options
        .sizes
        .iter()
        .filter(|s| !done.contains(&s.name))
        .cloned()
        .collect();
    if todo.is_empty() {
        if row.status != MediaStatus::Ready {
            set_status(state, &row, MediaStatus::Ready, None, None)
                .await
                .map_err(classify)?;
        }
        return Ok(json!({ "variants": row.variants }));
    }
    let row = set_status(state, &row, MediaStatus::Processing, None, None)
        .await
        .map_err(classify)?;
    match render(state, &row, todo, p.options.quality).await {
        Ok(new) => {
            let mut variants = row.variants.as_array().cloned().unwrap_or_default();
            variants.extend(new);
            let row = set_status(
                state,
                &row,
                MediaStatus::Ready,
                None,
                Some(Value::Array(variants)),
            )
            .await
            .map_err(classify)?;
            Ok(json!({ "variants": row.variants }))
        }
        Err(e) => {
            // The row shows its owner a public reason, never internal detail.
            let reason = crate::media::service::failure_reason(&e);
            let err = classify(e);
            let last = job.attempts_made + 1 >= job.max_attempts;
            if matches!(err, JobError::Permanent(_)) || last {
                let _ = set_status(state, &row, MediaStatus::Failed, Some(reason), None).await;
            } else {
                let _ = set_status(state, &row, MediaStatus::Ready, None, None).await;
            }
            Err(err)
        }
    }
}

/// Renders `sizes` from the stored original and stores them; returns their `variants` entries.
async fn render(
    state: &AppState,
    row: &media_file::Model,
    sizes: Vec<SizeSpec>,
    quality: u8,
) -> Result<Vec<Value>, Error> {
    let key = storage::key_of_url(&row.url)
        .ok_or_else(|| Error::internal("media url is not a storage url"))?;
    let bytes = state
        .storage
        .get(key)
        .await?
        .ok_or_else(|| Error::validation("file", "the original file is missing"))?;
    let limits = Limits {
        max_bytes: bytes.len().max(1),
        ..Limits::default()
    };
    let (bytes, probe) = tokio::task::spawn_blocking(move || {
        let probe = process::probe(&bytes, &limits)?;
        Ok::<_, Error>((bytes, probe))
    })
    .await
    .map_err(Error::internal)??;
    // Within the process's decode budget, like uploads.
    let outputs =
        crate::media::service::render(state, std::sync::Arc::new(bytes), probe, sizes, quality)
            .await?;
    let mut out = Vec::new();
    for o in outputs {
        let k = storage::key_for(&row.sha256, Some(&o.name), o.format.ext());
        state.storage.put(&k, &o.bytes).await?;
        out.push(json!({
            "name": o.name,
            "width": o.width,
            "height": o.height,
            "url": storage::url_for(&k),
        }));
    }
    Ok(out)
}
