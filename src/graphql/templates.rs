//! Templates over GraphQL. The names here are a contract with the dashboard's codegen.

use async_graphql::{
    Context, ID, InputObject, Json, MaybeUndefined, Object, SimpleObject, connection::Connection,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{audit::CountFields, parse_id, req};
use crate::{
    error::{Error, FieldError},
    pagination::PageArgs,
    templates::{
        engine::{Button, Media, Section, TemplateContent},
        service::{self, NewTemplate, PreviewSource, TemplateFilter, TemplatePatch, TemplateRef},
    },
};
use entity::{TemplateStatus, TemplateType, message_template, template_version};

pub struct Template(pub message_template::Model);

#[Object]
impl Template {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> TemplateType {
        self.0.kind
    }
    async fn body(&self) -> &str {
        &self.0.body
    }
    async fn header(&self) -> Option<&str> {
        self.0.header.as_deref()
    }
    async fn footer(&self) -> Option<&str> {
        self.0.footer.as_deref()
    }
    /// The label of the button that opens a LIST message.
    async fn button_text(&self) -> Option<&str> {
        self.0.button_text.as_deref()
    }
    // Each column is read in place (no clone of the others, no intermediate content).
    async fn buttons(&self) -> Vec<Button> {
        Vec::<Button>::deserialize(&self.0.buttons).unwrap_or_default()
    }
    async fn sections(&self) -> Vec<Section> {
        Vec::<Section>::deserialize(&self.0.sections).unwrap_or_default()
    }
    async fn media(&self) -> Option<Media> {
        self.0
            .media
            .as_ref()
            .and_then(|v| Media::deserialize(v).ok())
    }
    /// The variable names the template uses, in order of first use.
    async fn variables(&self) -> Vec<String> {
        Vec::<String>::deserialize(&self.0.variables).unwrap_or_default()
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn status(&self) -> TemplateStatus {
        self.0.status
    }
    async fn merchant_id(&self) -> Option<&str> {
        self.0.merchant_id.as_deref()
    }
    /// Who wrote it (a token's `sub`); only for the template's own merchant, admins and the
    /// service, null for everyone else.
    async fn created_by(&self, ctx: &Context<'_>) -> Option<&str> {
        let (_, rc) = super::req(ctx);
        crate::templates::service::sees_author(&rc.actor, &self.0)
            .then_some(self.0.created_by.as_deref())
            .flatten()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// A previous version of a template's content.
pub struct TemplateVersion(template_version::Model);

#[Object]
impl TemplateVersion {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn template_id(&self) -> ID {
        ID(self.0.template_id.to_string())
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn status(&self) -> TemplateStatus {
        self.0.status
    }
    /// `{ name, content: { type, body, header, footer, button_text, buttons, sections, media } }`.
    async fn content(&self) -> Json<Value> {
        Json(self.0.content.clone())
    }
    async fn created_by(&self) -> Option<&str> {
        self.0.created_by.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(SimpleObject)]
pub struct TemplatePreview {
    /// The message as a person reads it: header, body and footer of a BUTTONS or LIST message;
    /// the body of a TEXT message and the caption of a MEDIA one (the Cloud API sends those
    /// without a header or footer, so a template's header and footer are not shown for them).
    text: String,
    /// The WhatsApp Cloud API message body.
    payload: Json<Value>,
    /// Limits the rendered message breaks; empty when it can be sent.
    violations: Vec<FieldError>,
    variables: Vec<String>,
}

#[derive(InputObject)]
pub struct CreateTemplateInput {
    pub name: String,
    #[graphql(name = "type")]
    pub kind: TemplateType,
    pub body: String,
    pub header: Option<String>,
    pub footer: Option<String>,
    pub button_text: Option<String>,
    #[graphql(default)]
    pub buttons: Vec<Button>,
    #[graphql(default)]
    pub sections: Vec<Section>,
    pub media: Option<Media>,
    /// Defaults to ACTIVE.
    pub status: Option<TemplateStatus>,
    /// Admin and service only; a merchant's templates are always its own.
    pub merchant_id: Option<String>,
}

/// An inline template for `previewTemplate`.
#[derive(InputObject)]
pub struct TemplateInput {
    pub name: Option<String>,
    #[graphql(name = "type")]
    pub kind: TemplateType,
    pub body: String,
    pub header: Option<String>,
    pub footer: Option<String>,
    pub button_text: Option<String>,
    #[graphql(default)]
    pub buttons: Vec<Button>,
    #[graphql(default)]
    pub sections: Vec<Section>,
    pub media: Option<Media>,
}

/// Absent fields keep their value; `null` clears an optional one (header, footer, buttonText,
/// media) and is VALIDATION for the others, which a template always has.
#[derive(InputObject, Default)]
pub struct UpdateTemplateInput {
    pub name: MaybeUndefined<String>,
    #[graphql(name = "type")]
    pub kind: MaybeUndefined<TemplateType>,
    pub body: MaybeUndefined<String>,
    pub header: MaybeUndefined<String>,
    pub footer: MaybeUndefined<String>,
    pub button_text: MaybeUndefined<String>,
    pub buttons: MaybeUndefined<Vec<Button>>,
    pub sections: MaybeUndefined<Vec<Section>>,
    pub media: MaybeUndefined<Media>,
}

use super::maybe;

impl TryFrom<UpdateTemplateInput> for TemplatePatch {
    type Error = crate::error::Error;

    fn try_from(i: UpdateTemplateInput) -> Result<Self, Self::Error> {
        Ok(TemplatePatch {
            name: Error::not_null("name", maybe(i.name))?,
            kind: Error::not_null("type", maybe(i.kind))?,
            body: Error::not_null("body", maybe(i.body))?,
            header: maybe(i.header),
            footer: maybe(i.footer),
            button_text: maybe(i.button_text),
            buttons: Error::not_null("buttons", maybe(i.buttons))?,
            sections: Error::not_null("sections", maybe(i.sections))?,
            media: maybe(i.media),
            status: None,
            merchant_id: None,
        })
    }
}

impl From<TemplateInput> for TemplateContent {
    fn from(i: TemplateInput) -> Self {
        TemplateContent {
            kind: i.kind,
            body: i.body,
            header: i.header,
            footer: i.footer,
            button_text: i.button_text,
            buttons: i.buttons,
            sections: i.sections,
            media: i.media,
        }
    }
}

impl From<CreateTemplateInput> for NewTemplate {
    fn from(i: CreateTemplateInput) -> Self {
        NewTemplate {
            name: i.name,
            content: TemplateContent {
                kind: i.kind,
                body: i.body,
                header: i.header,
                footer: i.footer,
                button_text: i.button_text,
                buttons: i.buttons,
                sections: i.sections,
                media: i.media,
            },
            status: i.status,
            merchant_id: i.merchant_id,
        }
    }
}

/// `variables` must be a JSON object (or absent).
pub(crate) fn variables_object(v: Option<Json<Value>>) -> crate::error::Result<Map<String, Value>> {
    match v.map(|j| j.0) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(Error::validation(
            "variables",
            "variables must be a JSON object",
        )),
    }
}

#[derive(Default)]
pub struct TemplateQuery;

#[Object]
impl TemplateQuery {
    /// Templates the caller may see, ordered by name.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn templates(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "type")] kind: Option<TemplateType>,
        status: Option<TemplateStatus>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Template, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        // COUNT only when the query selects `totalCount`.
        let with_count = ctx.look_ahead().field("totalCount").exists();
        let page = service::list(
            &state.db,
            rc,
            &TemplateFilter {
                kind,
                status,
                search,
            },
            &page_args,
            with_count,
        )
        .await?;
        Ok(super::connection(
            page,
            page_args.after.is_some(),
            service::cursor,
            Template,
        ))
    }

    /// One template by `id` or `name`.
    async fn template(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
        name: Option<String>,
    ) -> async_graphql::Result<Template> {
        let (state, rc) = req(ctx);
        let r = match (id, name) {
            (Some(id), None) => TemplateRef::Id(parse_id(&id, "id")?),
            (None, Some(name)) => TemplateRef::Name(name),
            _ => return Err(Error::validation("id", "give exactly one of id or name").into()),
        };
        Ok(Template(service::get(&state.db, rc, &r).await?))
    }

    /// Previous versions of a template, newest first.
    async fn template_versions(
        &self,
        ctx: &Context<'_>,
        template_id: ID,
    ) -> async_graphql::Result<Vec<TemplateVersion>> {
        let (state, rc) = req(ctx);
        let id = parse_id(&template_id, "templateId")?;
        Ok(service::versions(&state.db, rc, id)
            .await?
            .into_iter()
            .map(TemplateVersion)
            .collect())
    }
}

#[derive(Default)]
pub struct TemplateMutation;

#[Object]
impl TemplateMutation {
    async fn create_template(
        &self,
        ctx: &Context<'_>,
        input: CreateTemplateInput,
    ) -> async_graphql::Result<Template> {
        let (state, rc) = req(ctx);
        Ok(Template(
            service::create(&state.db, rc, input.into()).await?,
        ))
    }

    /// Bumps `version` and keeps the previous content in `templateVersions`.
    async fn update_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateTemplateInput,
    ) -> async_graphql::Result<Template> {
        let (state, rc) = req(ctx);
        let id = parse_id(&id, "id")?;
        Ok(Template(
            service::update(&state.db, rc, id, input.try_into()?).await?,
        ))
    }

    async fn set_template_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
        status: TemplateStatus,
    ) -> async_graphql::Result<Template> {
        let (state, rc) = req(ctx);
        let id = parse_id(&id, "id")?;
        Ok(Template(
            service::set_status(&state.db, rc, id, status).await?,
        ))
    }

    /// Deletes the template and its versions; returns the deleted template.
    async fn delete_template(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Template> {
        let (state, rc) = req(ctx);
        let id = parse_id(&id, "id")?;
        Ok(Template(service::delete(&state.db, rc, id).await?))
    }

    /// Renders a stored (`templateId`) or inline (`template`) template with `variables`.
    /// `to` fills the payload's recipient when given.
    async fn preview_template(
        &self,
        ctx: &Context<'_>,
        template_id: Option<ID>,
        template: Option<TemplateInput>,
        variables: Option<Json<Value>>,
        to: Option<String>,
    ) -> async_graphql::Result<TemplatePreview> {
        let (state, rc) = req(ctx);
        let source = match (template_id, template) {
            (Some(id), None) => {
                PreviewSource::Stored(TemplateRef::Id(parse_id(&id, "templateId")?))
            }
            (None, Some(t)) => PreviewSource::Inline(t.into()),
            _ => {
                return Err(Error::validation(
                    "templateId",
                    "give exactly one of templateId or template",
                )
                .into());
            }
        };
        let vars = variables_object(variables)?;
        let p = service::preview(&state.db, rc, source, &vars, to.as_deref()).await?;
        Ok(TemplatePreview {
            text: p.text,
            payload: Json(p.payload),
            violations: p.violations,
            variables: p.variables,
        })
    }
}
