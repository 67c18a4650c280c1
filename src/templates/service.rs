//! Template persistence and access rules. GraphQL resolvers and REST handlers both call these
//! functions, so the two APIs cannot disagree.
//!
//! Access rules (the seed's row-level security, made explicit):
//! * anonymous callers read ACTIVE templates only and cannot write;
//! * a merchant reads its own templates in any status plus every ACTIVE template, and writes only
//!   its own; another merchant's draft is NOT_FOUND, another merchant's active template FORBIDDEN
//!   to change;
//! * admin and service tokens read and write everything (service is the bot, like Supabase's
//!   service role). Templates created by an admin without `merchantId` are platform templates.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::engine::{self, TemplateContent};
use crate::{
    audit,
    auth::{
        Actor, RequestContext,
        scope::{self, Scoped},
    },
    error::{Error, FieldError, Result},
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::{
    TemplateStatus, TemplateType,
    message_template::{self, Column as C, Entity as Templates},
    template_version::{self, Entity as Versions},
};

const CURSOR_KIND: &str = "tpl";

/// A new template, parsed from GraphQL or the seed's REST body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTemplate {
    pub name: String,
    #[serde(flatten)]
    pub content: TemplateContent,
    #[serde(default)]
    pub status: Option<TemplateStatus>,
    #[serde(default, alias = "merchant_id")]
    pub merchant_id: Option<String>,
}

/// A partial update: absent fields keep their value; `Some(None)` clears an optional text.
#[derive(Debug, Clone, Default)]
pub struct TemplatePatch {
    pub name: Option<String>,
    pub kind: Option<TemplateType>,
    pub body: Option<String>,
    pub header: Option<Option<String>>,
    pub footer: Option<Option<String>>,
    pub button_text: Option<Option<String>>,
    pub buttons: Option<Vec<engine::Button>>,
    pub sections: Option<Vec<engine::Section>>,
    pub media: Option<Option<engine::Media>>,
    /// A status change applied in the same transaction (REST PUT carries both).
    pub status: Option<TemplateStatus>,
    /// The merchant the caller names (REST PUT's `merchantId`): a template never moves between
    /// merchants, so naming another one is refused, not ignored.
    pub merchant_id: Option<String>,
}

impl TemplatePatch {
    fn is_empty(&self) -> bool {
        let Self {
            name,
            kind,
            body,
            header,
            footer,
            button_text,
            buttons,
            sections,
            media,
            status,
            merchant_id: _,
        } = self;
        name.is_none()
            && kind.is_none()
            && body.is_none()
            && header.is_none()
            && footer.is_none()
            && button_text.is_none()
            && buttons.is_none()
            && sections.is_none()
            && media.is_none()
            && status.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct TemplateFilter {
    pub kind: Option<TemplateType>,
    pub status: Option<TemplateStatus>,
    pub search: Option<String>,
}

/// How a caller names a template.
#[derive(Debug, Clone)]
pub enum TemplateRef {
    Id(Uuid),
    Name(String),
}

/// What `previewTemplate` returns.
#[derive(Debug, Clone)]
pub struct Preview {
    pub text: String,
    pub payload: Value,
    pub violations: Vec<FieldError>,
    pub variables: Vec<String>,
}

pub enum PreviewSource {
    Stored(TemplateRef),
    Inline(TemplateContent),
}

/// The content columns of a stored template.
pub fn content_of(m: &message_template::Model) -> TemplateContent {
    TemplateContent {
        kind: m.kind,
        body: m.body.clone(),
        header: m.header.clone(),
        footer: m.footer.clone(),
        button_text: m.button_text.clone(),
        buttons: serde_json::from_value(m.buttons.clone()).unwrap_or_default(),
        sections: serde_json::from_value(m.sections.clone()).unwrap_or_default(),
        media: m.media.clone().and_then(|v| serde_json::from_value(v).ok()),
    }
}

/// The seed's row shape (snake_case), used by REST responses and audit rows. Serialized straight
/// from the borrowed row: no intermediate `serde_json::Value` tree on the read path.
#[derive(Debug, Serialize)]
pub struct TemplateRow<'a> {
    pub id: Uuid,
    pub name: &'a str,
    #[serde(rename = "type")]
    pub kind: TemplateType,
    pub body: &'a str,
    pub header: Option<&'a str>,
    pub footer: Option<&'a str>,
    pub button_text: Option<&'a str>,
    pub buttons: &'a Value,
    pub sections: &'a Value,
    pub media: Option<&'a Value>,
    pub variables: &'a Value,
    pub version: i32,
    pub status: TemplateStatus,
    pub merchant_id: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a message_template::Model> for TemplateRow<'a> {
    fn from(m: &'a message_template::Model) -> Self {
        TemplateRow {
            id: m.id,
            name: &m.name,
            kind: m.kind,
            body: &m.body,
            header: m.header.as_deref(),
            footer: m.footer.as_deref(),
            button_text: m.button_text.as_deref(),
            buttons: &m.buttons,
            sections: &m.sections,
            media: m.media.as_ref(),
            variables: &m.variables,
            version: m.version,
            status: m.status,
            merchant_id: m.merchant_id.as_deref(),
            created_by: m.created_by.as_deref(),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl<'a> TemplateRow<'a> {
    /// The row as `actor` may see it: `created_by` only for those who see the author.
    pub fn for_caller(actor: &Actor, m: &'a message_template::Model) -> Self {
        let mut row = Self::from(m);
        if !sees_author(actor, m) {
            row.created_by = None;
        }
        row
    }
}

/// Whether `actor` may see who wrote `m` (`created_by`, a user's `sub`): admin and service,
/// and the template's own merchant. Everyone may read an ACTIVE template, not who on another
/// merchant's staff (or the platform's) wrote it; media keeps `ownerId` the same way.
pub fn sees_author(actor: &Actor, m: &message_template::Model) -> bool {
    match actor {
        Actor::Admin { .. } | Actor::Service { .. } => true,
        Actor::Merchant { merchant_id, .. } => m.merchant_id.as_deref() == Some(merchant_id),
        Actor::Anonymous => false,
    }
}

/// [`TemplateRow`] as a JSON value, for audit rows (before/after state).
pub fn to_json(m: &message_template::Model) -> Value {
    serde_json::to_value(TemplateRow::from(m)).expect("a template row always serializes")
}

fn validate_name(name: &str) -> Result<String> {
    let name = crate::input::normalize_name(name);
    let name = name.as_str();
    if name.is_empty() {
        return Err(Error::validation("name", "name must not be empty"));
    }
    if name.chars().count() > engine::limits::NAME {
        return Err(Error::validation(
            "name",
            format!("name must be at most {} characters", engine::limits::NAME),
        ));
    }
    if name.chars().any(crate::input::is_hidden_in_names) {
        return Err(Error::validation(
            "name",
            "name must not contain control characters, or invisible or direction-changing \
             ones (zero-width spaces, BOM, bidi controls): two names must look different to \
             be different",
        ));
    }
    Ok(name.to_owned())
}

fn check_content(content: &TemplateContent) -> Result<()> {
    let violations = engine::validate(content);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::violations(violations))
    }
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The longest `search`, in characters: longer than any name (100) and far past what a person
/// types. A pattern past SQLite's limit (50,000 bytes) was an internal error there; every
/// database now answers the same VALIDATION.
pub const MAX_SEARCH_CHARS: usize = 200;

/// The rows `ctx` may see that match `filter`.
fn list_condition(
    backend: DbBackend,
    ctx: &RequestContext,
    filter: &TemplateFilter,
) -> Result<Condition> {
    let mut cond = Templates::read_condition(&ctx.actor);
    if let Some(kind) = filter.kind {
        cond = cond.add(C::Kind.eq(kind));
    }
    if let Some(status) = filter.status {
        cond = cond.add(C::Status.eq(status));
    }
    if let Some(search) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if search.chars().count() > MAX_SEARCH_CHARS {
            return Err(Error::validation(
                "search",
                format!("search must be at most {MAX_SEARCH_CHARS} characters"),
            ));
        }
        // In Unicode's composed form, as names are stored: `é` typed as `e` and a combining
        // accent finds `é`.
        let search: String = unicode_normalization::UnicodeNormalization::nfc(search).collect();
        let matches = |col: C| -> sea_orm::sea_query::SimpleExpr {
            match backend {
                // SQLite's lower() and LIKE fold ASCII only (`Ω` never found `ω`): a
                // case-insensitive regex of the literal text folds by Unicode.
                DbBackend::Sqlite => Expr::cust_with_exprs(
                    "? REGEXP ?",
                    [
                        Expr::col(col),
                        Expr::val(format!("(?i){}", regex::escape(&search))),
                    ],
                ),
                // PostgreSQL's lower() folds by the database's LC_CTYPE (C.UTF-8, en_US.UTF-8),
                // and it folds both sides: a pattern folded by Rust's rules (final sigma, `İ`)
                // did not find a name's own text.
                _ => Expr::cust_with_exprs(
                    "lower($1) LIKE lower($2) ESCAPE '\\'",
                    [
                        Expr::col(col),
                        Expr::val(format!("%{}%", escape_like(&search))),
                    ],
                ),
            }
        };
        cond = cond.add(Condition::any().add(matches(C::Name)).add(matches(C::Body)));
    }
    Ok(cond)
}

/// `templates(type, status, search, first, after)`, ordered by name. The COUNT query runs only
/// when `with_count` is set (GraphQL asks for it when `totalCount` is selected); otherwise
/// `total_count` is 0.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    filter: &TemplateFilter,
    page: &PageArgs,
    with_count: bool,
) -> Result<Page<message_template::Model>> {
    let limit = page.limit()?;
    let cond = list_condition(db.get_database_backend(), ctx, filter)?;
    let total_count = if with_count {
        Templates::find().filter(cond.clone()).count(db).await?
    } else {
        0
    };
    let mut q = Templates::find().filter(cond);
    if let Some(after) = page.after_key(CURSOR_KIND)? {
        q = q.filter(match after_position(&after) {
            (name, Some(id)) => Condition::any()
                .add(C::Name.gt(name))
                .add(Condition::all().add(C::Name.eq(name)).add(C::Id.gt(id))),
            // A cursor from before ids were in it: the next name.
            (name, None) => Condition::all().add(C::Name.gt(name)),
        });
    }
    let mut items = q
        .order_by_asc(C::Name)
        .order_by_asc(C::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let has_next_page = items.len() as u64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        items,
        total_count,
        has_next_page,
    })
}

/// Every row `ctx` may see that matches `filter`, ordered by name, in one query: the seed's REST
/// list, which is not paged.
pub async fn list_all(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    filter: &TemplateFilter,
) -> Result<Vec<message_template::Model>> {
    Ok(Templates::find()
        .filter(list_condition(db.get_database_backend(), ctx, filter)?)
        .order_by_asc(C::Name)
        .order_by_asc(C::Id)
        .all(db)
        .await?)
}

/// A template's place in the list: its name and, since names repeat across merchants (and the
/// platform), its id: `{id}:{name}`.
pub fn cursor(m: &message_template::Model) -> String {
    encode_cursor(CURSOR_KIND, &format!("{}:{}", m.id, m.name))
}

/// The name and id a cursor holds; a cursor from before ids were in it holds the name alone.
fn after_position(key: &str) -> (&str, Option<Uuid>) {
    key.split_once(':')
        .and_then(|(id, name)| Some((name, Some(Uuid::parse_str(id).ok()?))))
        .unwrap_or((key, None))
}

fn by_id(id: Uuid) -> Condition {
    Condition::all().add(C::Id.eq(id))
}

async fn find_visible<Db: ConnectionTrait>(
    db: &Db,
    actor: &Actor,
    r: &TemplateRef,
) -> Result<message_template::Model> {
    let q = Templates::visible_to(actor);
    let found = match r {
        TemplateRef::Id(id) => q.filter(C::Id.eq(*id)).one(db).await?,
        // Names are unique per namespace: a merchant's own first, then the platform's.
        TemplateRef::Name(name) => {
            // No template has an empty name: asking for one is a mistake, not a miss.
            if crate::input::normalize_name(name).is_empty() {
                return Err(Error::validation("name", "name must not be empty"));
            }
            let mut namespaces = Condition::any().add(C::MerchantId.is_null());
            if let Some(m) = actor.merchant_id() {
                namespaces = namespaces.add(C::MerchantId.eq(m));
            }
            q.filter(C::Name.eq(crate::input::normalize_name(name)))
                .filter(namespaces)
                .order_by(C::MerchantId.is_null(), sea_orm::Order::Asc)
                .one(db)
                .await?
        }
    };
    found.ok_or_else(|| Error::not_found("template"))
}

/// `template(id | name)`.
pub async fn get(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    r: &TemplateRef,
) -> Result<message_template::Model> {
    find_visible(db, &ctx.actor, r).await
}

/// `templateVersions(templateId)`: the stored previous versions, newest first.
pub async fn versions(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    template_id: Uuid,
) -> Result<Vec<template_version::Model>> {
    // The history holds drafts and past wording: only those who may write the template see it.
    scope::one_writable::<Templates, _>(db, &ctx.actor, by_id(template_id)).await?;
    Ok(Versions::find()
        .filter(template_version::Column::TemplateId.eq(template_id))
        .order_by_desc(template_version::Column::Version)
        .all(db)
        .await?)
}

fn content_columns(am: &mut message_template::ActiveModel, c: &TemplateContent) {
    am.kind = Set(c.kind);
    am.body = Set(c.body.clone());
    // Blank is absent: a header or footer of spaces would go out as one.
    am.header = Set(c.header.clone().filter(|s| !s.trim().is_empty()));
    am.footer = Set(c.footer.clone().filter(|s| !s.trim().is_empty()));
    am.button_text = Set(c.button_text.clone().filter(|s| !s.is_empty()));
    am.buttons = Set(json!(c.buttons));
    am.sections = Set(json!(c.sections));
    am.media = Set(c.media.as_ref().map(|m| json!(m)));
    am.variables = Set(json!(engine::extract_variables(c)));
}

/// Whether `name` is taken in `merchant`'s namespace (`None`: the platform's).
async fn name_taken<Db: ConnectionTrait>(
    db: &Db,
    merchant: Option<&str>,
    name: &str,
    except: Option<Uuid>,
) -> Result<bool> {
    let mut q = Templates::find()
        .filter(C::Name.eq(name))
        .filter(match merchant {
            Some(m) => C::MerchantId.eq(m),
            None => C::MerchantId.is_null(),
        });
    if let Some(id) = except {
        q = q.filter(C::Id.ne(id));
    }
    Ok(q.count(db).await? > 0)
}

fn conflict(name: &str) -> Error {
    Error::Conflict(format!("a template named {name:?} already exists"))
}

/// `createTemplate`: validates, inserts, and audits in one transaction.
pub async fn create(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    input: NewTemplate,
) -> Result<message_template::Model> {
    ctx.actor.require_authenticated()?;
    let name = validate_name(&input.name)?;
    check_content(&input.content)?;
    let merchant_id = match &ctx.actor {
        Actor::Merchant { merchant_id, .. } => {
            if input
                .merchant_id
                .as_deref()
                .is_some_and(|m| m != merchant_id)
            {
                return Err(Error::Forbidden(
                    "a merchant can only create its own templates".into(),
                ));
            }
            Some(merchant_id.clone())
        }
        // An empty `merchantId` is VALIDATION, not the platform: leave it out (or null) for a
        // platform template.
        _ => input
            .merchant_id
            .map(|m| crate::auth::parse_merchant_id("merchantId", &m))
            .transpose()?,
    };
    let now = crate::db::now();
    let mut am = message_template::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.clone()),
        version: Set(1),
        status: Set(input.status.unwrap_or(TemplateStatus::Active)),
        merchant_id: Set(merchant_id.clone()),
        created_by: Set(ctx.actor.id().map(str::to_owned)),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    content_columns(&mut am, &input.content);

    let txn = crate::db::begin_write(db).await?;
    if name_taken(&txn, merchant_id.as_deref(), &name, None).await? {
        return Err(conflict(&name));
    }
    let model = am.insert(&txn).await.map_err(|e| match Error::from(e) {
        Error::Conflict(_) => conflict(&name),
        other => other,
    })?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "template.create",
            target_type: "template",
            target_id: model.id.to_string(),
            merchant_id,
            before: None,
            after: Some(to_json(&model)),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(model)
}

/// `updateTemplate`: applies the patch, stores the previous content as a version, bumps
/// `version`, and audits. A patch that changes nothing changes nothing.
pub async fn update(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
    patch: TemplatePatch,
) -> Result<message_template::Model> {
    ctx.actor.require_authenticated()?;
    if patch.is_empty() {
        return Err(Error::validation(
            "input",
            "nothing to update: give at least one of name, type, body, header, footer, \
             buttonText, buttons, sections, media, status",
        ));
    }
    if let (Actor::Merchant { merchant_id, .. }, Some(m)) = (&ctx.actor, &patch.merchant_id)
        && m != merchant_id
    {
        return Err(Error::Forbidden(
            "a merchant may change only its own templates".into(),
        ));
    }
    let txn = crate::db::begin_write(db).await?;
    let current = scope::one_writable::<Templates, _>(&txn, &ctx.actor, by_id(id)).await?;
    if let Some(m) = &patch.merchant_id
        && current.merchant_id.as_deref() != Some(m.as_str())
    {
        return Err(Error::validation(
            "merchantId",
            "a template's merchant cannot change: create the template under the other merchant",
        ));
    }

    let mut content = content_of(&current);
    let name = match &patch.name {
        Some(n) => validate_name(n)?,
        None => current.name.clone(),
    };
    if let Some(k) = patch.kind {
        content.kind = k;
    }
    if let Some(b) = patch.body {
        content.body = b;
    }
    if let Some(h) = patch.header {
        content.header = h;
    }
    if let Some(f) = patch.footer {
        content.footer = f;
    }
    if let Some(t) = patch.button_text {
        content.button_text = t;
    }
    if let Some(b) = patch.buttons {
        content.buttons = b;
    }
    if let Some(s) = patch.sections {
        content.sections = s;
    }
    if let Some(m) = patch.media {
        content.media = m;
    }
    check_content(&content)?;
    let mut model = current.clone();
    if name != current.name || content != content_of(&current) {
        model = store_new_version(&txn, ctx, current, name, &content).await?;
    }
    if let Some(status) = patch.status {
        model = apply_status(&txn, ctx, model, status).await?;
    }
    txn.commit().await?;
    Ok(model)
}

/// Snapshots `current` as a version and writes the new name and content as the next one.
async fn store_new_version(
    txn: &sea_orm::DatabaseTransaction,
    ctx: &RequestContext,
    current: message_template::Model,
    name: String,
    content: &TemplateContent,
) -> Result<message_template::Model> {
    if name != current.name
        && name_taken(txn, current.merchant_id.as_deref(), &name, Some(current.id)).await?
    {
        return Err(conflict(&name));
    }
    template_version::ActiveModel {
        id: Set(Uuid::now_v7()),
        template_id: Set(current.id),
        version: Set(current.version),
        content: Set(json!({ "name": current.name, "content": content_of(&current) })),
        status: Set(current.status),
        created_by: Set(ctx.actor.id().map(str::to_owned)),
        created_at: Set(crate::db::now()),
    }
    .insert(txn)
    .await?;

    let mut am: message_template::ActiveModel = current.clone().into();
    am.name = Set(name.clone());
    content_columns(&mut am, content);
    am.version = Set(current.version + 1);
    am.updated_at = Set(crate::db::now());
    let model = am.update(txn).await.map_err(|e| match Error::from(e) {
        Error::Conflict(_) => conflict(&name),
        other => other,
    })?;
    audit::record(
        txn,
        ctx,
        audit::Change {
            action: "template.update",
            target_type: "template",
            target_id: model.id.to_string(),
            merchant_id: model.merchant_id.clone(),
            before: Some(to_json(&current)),
            after: Some(to_json(&model)),
        },
    )
    .await?;
    Ok(model)
}

/// Changes the status (no new version: not a content change) and audits it; a no-op when equal.
async fn apply_status(
    txn: &sea_orm::DatabaseTransaction,
    ctx: &RequestContext,
    current: message_template::Model,
    status: TemplateStatus,
) -> Result<message_template::Model> {
    if current.status == status {
        return Ok(current);
    }
    let mut am: message_template::ActiveModel = current.clone().into();
    am.status = Set(status);
    am.updated_at = Set(crate::db::now());
    let model = am.update(txn).await?;
    audit::record(
        txn,
        ctx,
        audit::Change {
            action: "template.set_status",
            target_type: "template",
            target_id: model.id.to_string(),
            merchant_id: model.merchant_id.clone(),
            before: Some(json!({ "status": current.status.as_str() })),
            after: Some(json!({ "status": model.status.as_str() })),
        },
    )
    .await?;
    Ok(model)
}

/// `setTemplateStatus`: draft, active or archived. Not a content change, so no new version.
pub async fn set_status(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
    status: TemplateStatus,
) -> Result<message_template::Model> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(db).await?;
    let current = scope::one_writable::<Templates, _>(&txn, &ctx.actor, by_id(id)).await?;
    let model = apply_status(&txn, ctx, current, status).await?;
    txn.commit().await?;
    Ok(model)
}

/// `deleteTemplate`: removes the template and (by cascade) its versions.
pub async fn delete(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<message_template::Model> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(db).await?;
    let current = scope::one_writable::<Templates, _>(&txn, &ctx.actor, by_id(id)).await?;
    Templates::delete_by_id(current.id).exec(&txn).await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "template.delete",
            target_type: "template",
            target_id: current.id.to_string(),
            merchant_id: current.merchant_id.clone(),
            before: Some(to_json(&current)),
            after: None,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(current)
}

/// Renders `content` with `vars`: a missing variable is a VALIDATION error on `variables` that
/// names every missing one; limit violations of the rendered message are returned, not raised.
/// The variables are checked against the engine's caps first, and the output is capped.
pub fn render_preview(
    content: &TemplateContent,
    vars: &Map<String, Value>,
    to: Option<&str>,
) -> Result<Preview> {
    // The payload is what would go to the Cloud API: its recipient is held to what sending
    // holds it to.
    let to = to
        .map(|t| crate::whatsapp::parse_phone("to", t))
        .transpose()?;
    engine::check_variables(vars).map_err(|e| Error::violations(vec![e]))?;
    let rendered = engine::render(content, vars).map_err(|e| match &e {
        engine::RenderError::Missing(names) => Error::violations(
            names
                .iter()
                .map(|n| FieldError {
                    field: "variables".into(),
                    message: format!("missing template variable {n:?}"),
                })
                .collect(),
        )
        .with_message(e.to_string()),
        engine::RenderError::NotText(names) => Error::violations(
            names
                .iter()
                .map(|n| FieldError {
                    field: "variables".into(),
                    message: format!(
                        "template variable {n:?} is an array or an object; \
                         give text, a number or a boolean"
                    ),
                })
                .collect(),
        )
        .with_message(e.to_string()),
        engine::RenderError::TooLarge => Error::validation("variables", e.to_string()),
    })?;
    Ok(Preview {
        text: engine::text(&rendered),
        payload: engine::payload(&rendered, to.as_deref()),
        violations: engine::validate(&rendered),
        variables: engine::extract_variables(content),
    })
}

/// `previewTemplate`: a stored template (visible to the caller) or an inline one. An inline
/// template is held to the same size limits as a stored one before anything is rendered.
pub async fn preview(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    source: PreviewSource,
    vars: &Map<String, Value>,
    to: Option<&str>,
) -> Result<Preview> {
    let content = match source {
        PreviewSource::Stored(r) => content_of(&find_visible(db, &ctx.actor, &r).await?),
        PreviewSource::Inline(c) => {
            let too_large = engine::size_violations(&c);
            if !too_large.is_empty() {
                return Err(Error::violations(
                    too_large
                        .into_iter()
                        .map(|e| FieldError {
                            field: format!("template.{}", e.field),
                            message: e.message,
                        })
                        .collect(),
                ));
            }
            c
        }
    };
    render_preview(&content, vars, to)
}

impl Error {
    /// Replaces a VALIDATION error's message, keeping its field and details.
    fn with_message(self, message: String) -> Self {
        match self {
            Error::Validation { field, details, .. } => Error::Validation {
                field,
                message,
                details,
            },
            other => other,
        }
    }
}
