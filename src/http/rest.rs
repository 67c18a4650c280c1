//! The seed's REST endpoints under `/api`, kept so the existing frontend migrates gently.
//! Success bodies carry `"success": true`; errors `{"success":false,"error":"…"}` with the right
//! status. Every handler calls the same service function as its GraphQL twin.

use axum::{
    Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::Ctx;
use crate::{
    AppState,
    error::{Error, Result},
    pagination::{MAX_PAGE, PageArgs},
    templates::{
        engine::TemplateContent,
        service::{self, NewTemplate, PreviewSource, TemplateFilter, TemplatePatch, TemplateRef},
    },
};
use entity::{TemplateStatus, TemplateType};

/// `Json<T>` whose rejection is our VALIDATION / PAYLOAD_TOO_LARGE error in the seed's shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(Error::PayloadTooLarge("request body is too large".into()))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::validation(
                "body",
                "expected a JSON body with Content-Type: application/json",
            )),
            Err(e) => Err(Error::validation("body", e.body_text())),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/templates", get(list_templates).post(create_template))
        .route("/api/templates/preview", post(preview_template))
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

/// GET /api/templates?type=&status=&search= → `{"success":true,"templates":[…],"count":N}`.
async fn list_templates(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let filter = TemplateFilter {
        kind: parse_enum::<TemplateType>("type", q.kind)?,
        status: parse_enum::<TemplateStatus>("status", q.status)?,
        search: q.search,
    };
    // The seed returned every row: walk the pages.
    let mut templates = Vec::new();
    let mut args = PageArgs {
        first: Some(MAX_PAGE as i32),
        after: None,
    };
    loop {
        let page = service::list(&state.db, &ctx, &filter, &args).await?;
        let last = page.items.last().map(service::cursor);
        templates.extend(page.items.iter().map(service::to_json));
        match (page.has_next_page, last) {
            (true, Some(cursor)) => args.after = Some(cursor),
            _ => break,
        }
    }
    Ok(Json(
        json!({ "success": true, "count": templates.len(), "templates": templates }),
    ))
}

async fn get_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let r = match Uuid::parse_str(&id) {
        Ok(id) => TemplateRef::Id(id),
        Err(_) => TemplateRef::Name(id),
    };
    let t = service::get(&state.db, &ctx, &r).await?;
    Ok(Json(
        json!({ "success": true, "template": service::to_json(&t) }),
    ))
}

/// POST /api/templates with the seed's body: `{name, type, body, buttons, sections, media, …}`.
async fn create_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let input: NewTemplate =
        serde_json::from_value(body).map_err(|e| Error::validation("body", e.to_string()))?;
    let t = service::create(&state.db, &ctx, input).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "template": service::to_json(&t) })),
    )
        .into_response())
}

/// PUT /api/templates/:id: any subset of the create body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchBody {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<TemplateType>,
    body: Option<String>,
    #[serde(default, with = "double_option")]
    header: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    footer: Option<Option<String>>,
    #[serde(default, with = "double_option", alias = "button_text")]
    button_text: Option<Option<String>>,
    buttons: Option<Vec<crate::templates::engine::Button>>,
    sections: Option<Vec<crate::templates::engine::Section>>,
    #[serde(default, with = "double_option")]
    media: Option<Option<crate::templates::engine::Media>>,
    status: Option<TemplateStatus>,
}

/// Distinguishes an absent field (None) from an explicit null (Some(None)).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

async fn update_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>> {
    let id = parse_uuid(&id)?;
    let b: PatchBody =
        serde_json::from_value(body).map_err(|e| Error::validation("body", e.to_string()))?;
    let patch = TemplatePatch {
        name: b.name,
        kind: b.kind,
        body: b.body,
        header: b.header,
        footer: b.footer,
        button_text: b.button_text,
        buttons: b.buttons,
        sections: b.sections,
        media: b.media,
        status: b.status,
    };
    // Content and status change in one transaction.
    let t = service::update(&state.db, &ctx, id, patch).await?;
    Ok(Json(
        json!({ "success": true, "template": service::to_json(&t) }),
    ))
}

async fn delete_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let id = parse_uuid(&id)?;
    service::delete(&state.db, &ctx, id).await?;
    Ok(Json(
        json!({ "success": true, "message": "template deleted" }),
    ))
}

/// POST /api/templates/preview: `{templateId | templateName | template, variables, to?}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreviewBody {
    #[serde(alias = "template_id", alias = "id")]
    template_id: Option<String>,
    #[serde(alias = "template_name", alias = "name")]
    template_name: Option<String>,
    template: Option<TemplateContent>,
    #[serde(default)]
    variables: Option<Value>,
    to: Option<String>,
}

async fn preview_template(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>> {
    let b: PreviewBody =
        serde_json::from_value(body).map_err(|e| Error::validation("body", e.to_string()))?;
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
    Ok(Json(json!({
        "success": true,
        "preview": { "text": p.text, "payload": p.payload, "violations": p.violations, "variables": p.variables }
    })))
}
