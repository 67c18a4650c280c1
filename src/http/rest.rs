//! The seed's REST endpoints under `/api`, kept so the existing frontend migrates gently.
//! Success bodies carry `"success": true`; errors `{"success":false,"error":"…"}` with the right
//! status. Every handler calls the same service function as its GraphQL twin.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Ctx, Path, Query};
use crate::{
    AppState,
    auth::Actor,
    error::{Error, FieldError, Result},
    templates::{
        cache::{self, Lookup},
        engine::{Button, Media, Section, TemplateContent},
        service::{
            self, NewTemplate, PreviewSource, TemplateFilter, TemplatePatch, TemplateRef,
            TemplateRow,
        },
    },
};
use entity::{TemplateStatus, TemplateType};

/// A JSON body whose errors are VALIDATION naming the field path (`buttons[1].title`, via
/// `serde_path_to_error`), `body` for malformed JSON, or PAYLOAD_TOO_LARGE.
pub struct JsonBody<T>(pub T);

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m.strip_prefix("application/")
                .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
        })
}

/// The field a deserialization error is about: the path where it happened, or for a missing
/// field the path plus that field's name.
fn error_field(path: &serde_path_to_error::Path, err: &serde_json::Error) -> String {
    let at = path.to_string();
    let at = if at == "." { String::new() } else { at };
    let msg = err.to_string();
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next());
    match (missing, at.is_empty()) {
        (Some(f), true) => f.to_owned(),
        (Some(f), false) => format!("{at}.{f}"),
        (None, true) => "body".to_owned(),
        (None, false) => at,
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(Error::validation(
                "body",
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge("request body is too large".into())
            } else {
                Error::validation("body", e.body_text())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value: T = crate::input::deserialize(&mut de).map_err(|e| {
            let field = error_field(e.path(), e.inner());
            let inner = e.into_inner();
            // serde_json stops at 128 levels and calls it a syntax error.
            if inner.to_string().starts_with("recursion limit exceeded") {
                return Error::validation("body", "the JSON nests more than 128 levels deep");
            }
            if !(inner.is_syntax() || inner.is_eof()) {
                return Error::validation(
                    field,
                    crate::input::json_error_message(&inner.to_string()),
                );
            }
            // serde_json reports a value of the wrong shape for an enum (`"type": 5`) as a
            // syntax error; only a document that is not JSON is about the body as a whole.
            if field != "body" && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                return Error::validation(
                    field.clone(),
                    format!("`{field}` has a value of the wrong type"),
                );
            }
            Error::validation("body", inner.to_string())
        })?;
        // Trailing content after the document is malformed JSON too.
        de.end()
            .map_err(|e| Error::validation("body", e.to_string()))?;
        if crate::input::json_has_nul(&bytes) {
            let at = serde_json::from_slice(&bytes)
                .ok()
                .and_then(|v| crate::input::nul_path(&v))
                .filter(|at| !at.is_empty())
                .unwrap_or_else(|| "body".to_owned());
            return Err(crate::input::nul_in(at));
        }
        Ok(JsonBody(value))
    }
}

/// A JSON value read as `T`; a value of the wrong type is VALIDATION naming its path, as
/// [`JsonBody`] does.
pub fn from_json_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    crate::input::deserialize(v).map_err(|e| {
        let field = error_field(e.path(), e.inner());
        Error::validation(
            field,
            crate::input::json_error_message(&e.into_inner().to_string()),
        )
    })
}

/// `{"success": true, "template": {…}}`.
#[derive(Serialize)]
struct TemplateEnvelope<'a> {
    success: bool,
    template: TemplateRow<'a>,
}

fn template_response(
    status: StatusCode,
    actor: &Actor,
    t: &entity::message_template::Model,
) -> Response {
    (
        status,
        Json(TemplateEnvelope {
            success: true,
            template: TemplateRow::for_caller(actor, t),
        }),
    )
        .into_response()
}

/// `{"success": true, "count": N, "templates": […]}`.
#[derive(Serialize)]
struct TemplateListEnvelope<'a> {
    success: bool,
    count: usize,
    templates: Vec<TemplateRow<'a>>,
}

#[derive(Serialize)]
struct MessageEnvelope {
    success: bool,
    message: &'static str,
}

#[derive(Serialize)]
struct PreviewEnvelope {
    success: bool,
    preview: PreviewJson,
}

#[derive(Serialize)]
struct PreviewJson {
    text: String,
    payload: Value,
    violations: Vec<FieldError>,
    variables: Vec<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/templates", get(list_templates).post(create_template))
        // `preview` is also a template name like any other: GET reads the template so named.
        .route(
            "/api/templates/preview",
            post(preview_template).get(get_template_named_preview),
        )
        .route(
            "/api/templates/{id}",
            get(get_template)
                .put(update_template)
                .delete(delete_template),
        )
}

fn parse_uuid(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::validation("id", "id is not a valid id"))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    search: Option<String>,
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    field: &str,
    v: Option<String>,
) -> Result<Option<T>> {
    v.filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e: String| Error::validation(field, e)))
        .transpose()
}

/// GET /api/templates?type=&status=&search= → `{"success":true,"count":N,"templates":[…]}`:
/// every visible row (the seed did not page), in one query and without a COUNT, served from the
/// template read cache while no template changed (`templates::cache`).
async fn list_templates(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let filter = TemplateFilter {
        kind: parse_enum::<TemplateType>("type", q.kind)?,
        status: parse_enum::<TemplateStatus>("status", q.status)?,
        search: q.search,
    };
    let key = cache::Key::new(
        &ctx.actor,
        cache::Request::RestList {
            kind: filter.kind,
            status: filter.status,
            search: filter.search.clone(),
        },
    );
    let slot = match state.template_cache.lookup(&state.db, key).await? {
        Lookup::Hit(body) => return Ok(json_bytes(body)),
        Lookup::Miss(slot) => slot,
    };
    let rows = service::list_all(&state.db, &ctx, &filter).await?;
    let body = serde_json::to_vec(&TemplateListEnvelope {
        success: true,
        count: rows.len(),
        templates: rows
            .iter()
            .map(|t| TemplateRow::for_caller(&ctx.actor, t))
            .collect(),
    })
    .map_err(Error::internal)?;
    let body = Bytes::from(body);
    slot.fill(body.clone());
    Ok(json_bytes(body))
}

/// A JSON body already serialized.
fn json_bytes(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn get_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Response> {
    let t = match Uuid::parse_str(&id) {
        // A name may look like an id: when no template has that id, it is read as a name, as
        // GraphQL's `template(name:)` reads it.
        Ok(uuid) => match service::get(&state.db, &ctx, &TemplateRef::Id(uuid)).await {
            Err(Error::NotFound(_)) => {
                service::get(&state.db, &ctx, &TemplateRef::Name(id)).await?
            }
            found => found?,
        },
        Err(_) => service::get(&state.db, &ctx, &TemplateRef::Name(id)).await?,
    };
    Ok(template_response(StatusCode::OK, &ctx.actor, &t))
}

async fn get_template_named_preview(state: State<AppState>, ctx: Ctx) -> Result<Response> {
    get_template(state, ctx, Path("preview".to_owned())).await
}

/// POST /api/templates with the seed's body. Written out rather than `#[serde(flatten)]`ed so
/// that error paths survive (`flatten` buffers the content and loses them).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    name: String,
    #[serde(rename = "type")]
    kind: TemplateType,
    body: String,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    footer: Option<String>,
    #[serde(default, alias = "button_text")]
    button_text: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::templates::engine::deserialize_buttons"
    )]
    buttons: Vec<Button>,
    #[serde(default)]
    sections: Vec<Section>,
    #[serde(default)]
    media: Option<Media>,
    #[serde(default)]
    status: Option<TemplateStatus>,
    #[serde(default, alias = "merchant_id")]
    merchant_id: Option<String>,
}

async fn create_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<Response> {
    let input = NewTemplate {
        name: b.name,
        content: TemplateContent {
            kind: b.kind,
            body: b.body,
            header: b.header,
            footer: b.footer,
            button_text: b.button_text,
            buttons: b.buttons,
            sections: b.sections,
            media: b.media,
        },
        status: b.status,
        merchant_id: b.merchant_id,
    };
    let t = service::create(&state.db, &ctx, input).await?;
    Ok(template_response(StatusCode::CREATED, &ctx.actor, &t))
}

/// PUT /api/templates/:id: any subset of the create body, plus `status`. `null` clears an
/// optional field and is VALIDATION for a required one; absent keeps it (serde_with's
/// `double_option`). `merchantId` may name the template's own merchant, never another.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchBody {
    #[serde(default, with = "serde_with::rust::double_option")]
    name: Option<Option<String>>,
    #[serde(default, rename = "type", with = "serde_with::rust::double_option")]
    kind: Option<Option<TemplateType>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    body: Option<Option<String>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    header: Option<Option<String>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    footer: Option<Option<String>>,
    #[serde(
        default,
        with = "serde_with::rust::double_option",
        alias = "button_text"
    )]
    button_text: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "crate::templates::engine::deserialize_buttons_patch"
    )]
    buttons: Option<Option<Vec<Button>>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    sections: Option<Option<Vec<Section>>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    media: Option<Option<Media>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    status: Option<Option<TemplateStatus>>,
    #[serde(default, alias = "merchant_id")]
    merchant_id: Option<String>,
}

async fn update_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> Result<Response> {
    let id = parse_uuid(&id)?;
    let patch = TemplatePatch {
        name: Error::not_null("name", b.name)?,
        kind: Error::not_null("type", b.kind)?,
        body: Error::not_null("body", b.body)?,
        header: b.header,
        footer: b.footer,
        button_text: b.button_text,
        buttons: Error::not_null("buttons", b.buttons)?,
        sections: Error::not_null("sections", b.sections)?,
        media: b.media,
        status: Error::not_null("status", b.status)?,
        merchant_id: b.merchant_id,
    };
    // Content and status change in one transaction.
    let t = service::update(&state.db, &ctx, id, patch).await?;
    Ok(template_response(StatusCode::OK, &ctx.actor, &t))
}

async fn delete_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<MessageEnvelope>> {
    let id = parse_uuid(&id)?;
    service::delete(&state.db, &ctx, id).await?;
    Ok(Json(MessageEnvelope {
        success: true,
        message: "template deleted",
    }))
}

/// POST /api/templates/preview: `{templateId | templateName | template, variables, to?}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreviewBody {
    #[serde(default, alias = "template_id", alias = "id")]
    template_id: Option<String>,
    #[serde(default, alias = "template_name", alias = "name")]
    template_name: Option<String>,
    #[serde(default)]
    template: Option<TemplateContent>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    to: Option<String>,
}

async fn preview_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(b): JsonBody<PreviewBody>,
) -> Result<Json<PreviewEnvelope>> {
    let source = match (b.template_id, b.template_name, b.template) {
        (Some(id), None, None) => PreviewSource::Stored(TemplateRef::Id(parse_uuid(&id)?)),
        (None, Some(name), None) => PreviewSource::Stored(TemplateRef::Name(name)),
        (None, None, Some(t)) => PreviewSource::Inline(t),
        _ => {
            return Err(Error::validation(
                "templateId",
                "give exactly one of templateId, templateName or template",
            ));
        }
    };
    let vars: Map<String, Value> = match b.variables {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(Error::validation(
                "variables",
                "variables must be a JSON object",
            ));
        }
    };
    let p = service::preview(&state.db, &ctx, source, &vars, b.to.as_deref()).await?;
    Ok(Json(PreviewEnvelope {
        success: true,
        preview: PreviewJson {
            text: p.text,
            payload: p.payload,
            violations: p.violations,
            variables: p.variables,
        },
    }))
}
