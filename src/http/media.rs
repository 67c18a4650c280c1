//! Media over REST (the seed's base64 upload) and the public `/uploads` file server.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, Path, rest::JsonBody};
use crate::{
    AppState,
    error::{Error, Result},
    media::{intake, service, storage},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/media/upload", post(upload))
        .route("/api/media/{id}", get(get_media).delete(delete_media))
        .route("/uploads/{*key}", get(serve_file))
}

/// The seed's upload body, in its documented snake_case (`file_data`, `file_name`, `mime_type`,
/// `merchant_id`) or in camelCase. `fileData` is base64 or a `data:` URL.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Base64Upload {
    #[serde(default, alias = "file_data")]
    pub file_data: Option<String>,
    #[serde(default, alias = "file_name")]
    pub file_name: Option<String>,
    #[serde(default, alias = "mime_type")]
    pub mime_type: Option<String>,
    #[serde(default, alias = "merchant_id")]
    pub merchant_id: Option<String>,
}

/// POST /api/media/upload → 201 `{"success":true,"media":{…}}`.
async fn upload(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    ctx.actor.require_authenticated()?;
    let b: Base64Upload = super::rest::from_json_value(body)?;
    let file_data = b
        .file_data
        .ok_or_else(|| Error::validation("fileData", "fileData is required"))?;
    let req = intake::from_base64(
        &file_data,
        b.file_name.as_deref(),
        b.mime_type,
        b.merchant_id,
        state.config.media_max_bytes,
    )?;
    let m = service::upload(&state, &ctx, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "media": m })),
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
    Ok(Json(json!({ "success": true, "media": m })))
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
        // Weak comparison (RFC 9110 §13.1.2): `W/"…"` matches too.
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        }) {
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
