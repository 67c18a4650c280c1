//! Media over REST (the seed's base64 upload) and the public `/uploads` file server.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, rest::JsonBody};
use crate::{
    AppState,
    error::{Error, Result},
    media::{service, storage},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/media/upload", post(upload))
        .route("/api/media/{id}", get(get_media).delete(delete_media))
        .route("/uploads/{*key}", get(serve_file))
}

/// The seed's upload body. `fileData` is base64 or a `data:` URL.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Base64Upload {
    pub file_data: String,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub merchant_id: Option<String>,
}

/// Decodes `fileData`; a `data:` URL's media type becomes the claimed MIME when none is given.
pub fn decode_file_data(
    data: &str,
    mime_type: Option<String>,
) -> Result<(Vec<u8>, Option<String>)> {
    let bad = || Error::validation("fileData", "fileData is not valid base64");
    let (claimed, b64) = match data.trim().strip_prefix("data:") {
        Some(rest) => {
            let (meta, payload) = rest.split_once(',').ok_or_else(bad)?;
            let meta = meta.strip_suffix(";base64").ok_or_else(bad)?;
            let mime = Some(meta.to_owned()).filter(|m| !m.is_empty());
            (mime_type.or(mime), payload)
        }
        None => (mime_type, data),
    };
    let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(Error::validation("fileData", "fileData is empty"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
        .map_err(|_| bad())?;
    Ok((bytes, claimed))
}

/// POST /api/media/upload → 201 `{"success":true,"media":{…}}`.
async fn upload(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    ctx.actor.require_authenticated()?;
    let b: Base64Upload =
        serde_json::from_value(body).map_err(|e| Error::validation("body", e.to_string()))?;
    let (bytes, claimed) = decode_file_data(&b.file_data, b.mime_type)?;
    let m = service::upload(
        &state,
        &ctx,
        bytes,
        b.file_name.as_deref().unwrap_or("upload"),
        claimed,
        b.merchant_id,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "media": service::to_json(&m) })),
    )
        .into_response())
}

fn parse_uuid(id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| Error::validation("id", "id is not a valid id"))
}

async fn get_media(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let m = service::get(&state.db, &ctx, parse_uuid(&id)?).await?;
    Ok(Json(
        json!({ "success": true, "media": service::to_json(&m) }),
    ))
}

async fn delete_media(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    service::delete(&state, &ctx, parse_uuid(&id)?).await?;
    Ok(Json(json!({ "success": true, "message": "media deleted" })))
}

fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next() {
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        _ => "application/octet-stream",
    }
}

/// GET /uploads/<key>: immutable, content-addressed files. Keys are checked before any path is built.
async fn serve_file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    if !storage::key_ok(&key) {
        return Err(Error::validation("path", "invalid file path"));
    }
    let name = key.rsplit('/').next().unwrap_or(&key);
    let sha = name.split(['_', '.']).next().unwrap_or(name);
    let etag = format!("\"{sha}\"");
    let bytes = state
        .storage
        .get(&key)
        .await?
        .ok_or_else(|| Error::not_found("file"))?;
    let mut res = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(bytes).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&key)),
        );
        r
    };
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(res)
}
