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

/// The largest output a job may ask for, per side, and how many sizes one job may render.
/// Anything bigger is refused when the payload is parsed, before any pixel is allocated
/// (a 100000×100000 request would otherwise abort the process, and lease recovery would repeat it).
pub const MAX_SIZE_SIDE: u32 = 4096;
pub const MAX_SIZES: usize = 8;

/// Options as they arrive; [`Options`] is what is left after the bounds hold.
#[derive(Deserialize)]
struct RawOptions {
    #[serde(default = "default_sizes")]
    sizes: Vec<SizeSpec>,
    #[serde(default = "default_quality")]
    quality: u8,
}

#[derive(Deserialize)]
#[serde(try_from = "RawOptions")]
struct Options {
    sizes: Vec<SizeSpec>,
    quality: u8,
}

impl TryFrom<RawOptions> for Options {
    type Error = String;

    fn try_from(raw: RawOptions) -> Result<Self, String> {
        if raw.sizes.is_empty() || raw.sizes.len() > MAX_SIZES {
            return Err(format!("sizes must list 1 to {MAX_SIZES} sizes"));
        }
        for (i, s) in raw.sizes.iter().enumerate() {
            if !size_name_ok(&s.name) {
                return Err(format!(
                    "sizes[{i}].name must be 1-32 characters of a-z 0-9 _ -"
                ));
            }
            let side = 1..=MAX_SIZE_SIDE;
            if !side.contains(&s.width) || !side.contains(&s.height) {
                return Err(format!(
                    "sizes[{i}] asks for {}x{}; each side must be between 1 and {MAX_SIZE_SIDE}",
                    s.width, s.height
                ));
            }
        }
        if !(1..=100).contains(&raw.quality) {
            return Err("quality must be between 1 and 100".into());
        }
        Ok(Self {
            sizes: raw.sizes,
            quality: raw.quality,
        })
    }
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

/// The row with its new status; `None` when it was deleted meanwhile.
async fn set_status(
    state: &AppState,
    row: &media_file::Model,
    status: MediaStatus,
    error: Option<String>,
) -> Result<Option<media_file::Model>, Error> {
    let mut am: media_file::ActiveModel = row.clone().into();
    am.status = Set(status);
    am.error = Set(error);
    am.updated_at = Set(crate::db::now());
    match am.update(&state.db).await {
        Ok(row) => Ok(Some(row)),
        Err(sea_orm::DbErr::RecordNotUpdated) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn deleted() -> Value {
    json!({ "skipped": "media deleted" })
}

/// Attempts of the app's own processing jobs: three that render, and the last, which only
/// records the outcome (see [`handle`]).
pub const ATTEMPTS: u32 = 4;

/// Whether this run only records the outcome: the last of several attempts. A run can end
/// without recording anything (its worker killed, a decode that outlives the job's timeout)
/// and the queue still counts it; when the last attempt went that way, the row stayed
/// PROCESSING for good.
fn records_only(job: &JobInfo) -> bool {
    job.max_attempts > 1 && job.on_last_attempt()
}

pub async fn handle(state: &AppState, job: &JobInfo) -> Result<Value, JobError> {
    // Every bound is checked here, at parse; a bad payload fails once, permanently.
    let p: Payload = crate::input::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("bad payload: {e}")))?;
    let id = Uuid::parse_str(&p.media_id)
        .map_err(|_| JobError::permanent("mediaId is not a valid id"))?;
    let Some(row) = media_file::Entity::find_by_id(id)
        .one(&state.db)
        .await
        .map_err(|e| JobError::retryable(Error::from(e)))?
    else {
        return Ok(deleted());
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
        if row.status != MediaStatus::Ready
            && set_status(state, &row, MediaStatus::Ready, None)
                .await
                .map_err(classify)?
                .is_none()
        {
            return Ok(deleted());
        }
        return Ok(json!({ "variants": row.variants }));
    }
    if records_only(job) {
        let reason = format!(
            "processing did not finish in {} attempts; upload the image again",
            job.attempts_made - 1
        );
        if set_status(state, &row, MediaStatus::Failed, Some(reason.clone()))
            .await
            .map_err(classify)?
            .is_none()
        {
            return Ok(deleted());
        }
        let last = job.last_error.as_deref().unwrap_or("no outcome recorded");
        return Err(JobError::permanent(format!("{reason} (last: {last})")));
    }
    let Some(row) = set_status(state, &row, MediaStatus::Processing, None)
        .await
        .map_err(classify)?
    else {
        return Ok(deleted());
    };
    let recorded = match render(state, &row, todo, p.options.quality).await {
        // Recorded under the files' lock: a delete since then takes these files with it.
        Ok(new) => crate::media::service::record_sizes(state, row.id, &row.sha256, new).await,
        Err(e) => Err(e),
    };
    match recorded {
        Ok(Some(row)) => Ok(json!({ "variants": row.variants })),
        Ok(None) => Ok(deleted()),
        Err(e) => {
            // The row shows its owner a public reason, never internal detail.
            let reason = crate::media::service::failure_reason(&e);
            let err = classify(e);
            // The next run would only record (`attempts_made` counts this one): this failure
            // is the outcome.
            let last = job.attempts_made + 1 >= job.max_attempts;
            let status = if matches!(err, JobError::Permanent(_)) || last {
                (MediaStatus::Failed, Some(reason))
            } else {
                (MediaStatus::Ready, None)
            };
            if let Ok(None) = set_status(state, &row, status.0, status.1).await {
                return Ok(deleted());
            }
            Err(match err {
                JobError::Retryable(e) if last => JobError::Permanent(e),
                err => err,
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Payload, String> {
        crate::input::from_value::<Payload>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_are_bounded_at_parse() {
        let id = "0191d5b2-0000-7000-8000-000000000000";
        let huge = json!({ "mediaId": id, "options": { "sizes": [
            { "name": "huge", "width": 100000, "height": 100000, "fit": "cover" }
        ] } });
        let err = parse(huge).err().expect("100000x100000 is refused");
        assert!(
            err.contains("100000x100000") && err.contains("4096"),
            "{err}"
        );
        let at_limit = json!({ "mediaId": id, "options": { "sizes": [
            { "name": "big", "width": MAX_SIZE_SIDE, "height": 1, "fit": "inside" }
        ] } });
        assert!(parse(at_limit).is_ok());
        for bad in [
            json!({ "sizes": [] }),
            json!({ "sizes": [{ "name": "a", "width": 0, "height": 10, "fit": "cover" }] }),
            json!({ "sizes": [{ "name": "../x", "width": 10, "height": 10, "fit": "cover" }] }),
            json!({ "sizes": (0..=MAX_SIZES).map(|i| json!({ "name": format!("s{i}"), "width": 10, "height": 10, "fit": "cover" })).collect::<Vec<_>>() }),
            json!({ "quality": 0 }),
        ] {
            assert!(parse(json!({ "mediaId": id, "options": bad })).is_err());
        }
        assert!(
            parse(json!({ "mediaId": id })).is_ok(),
            "defaults hold the bounds"
        );
    }
}
