//! Audit rows, written with the caller's connection so they commit or roll back with the change.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait};
use serde_json::Value;

use crate::{
    auth::RequestContext,
    error::{Error, Result},
};
use entity::audit_log;

/// What changed: `action` like `template.update`, the target, and the before/after state.
pub struct Change<'a> {
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    pub merchant_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub async fn record<C: ConnectionTrait>(
    db: &C,
    ctx: &RequestContext,
    change: Change<'_>,
) -> Result<()> {
    audit_log::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        actor_id: Set(ctx.actor.id().map(str::to_owned)),
        actor_role: Set(ctx.actor.role_name().to_owned()),
        action: Set(change.action.to_owned()),
        target_type: Set(change.target_type.to_owned()),
        target_id: Set(Some(change.target_id)),
        merchant_id: Set(change.merchant_id),
        before_state: Set(change.before),
        after_state: Set(change.after),
        ip: Set(ctx.ip.map(|ip| ip.to_string())),
        request_id: Set(ctx.request_id.clone()),
        created_at: Set(crate::db::now()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Filters for `auditLogs`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

const CURSOR_KIND: &str = "audit";

pub fn cursor(m: &audit_log::Model) -> String {
    crate::pagination::encode_cursor(CURSOR_KIND, &m.id.to_string())
}

/// The audit trail, newest first (ids are UUIDv7, so id order is time order). Admin only.
pub async fn list(
    db: &sea_orm::DatabaseConnection,
    ctx: &RequestContext,
    filter: &AuditFilter,
    page: &crate::pagination::PageArgs,
) -> Result<crate::pagination::Page<audit_log::Model>> {
    use audit_log::{Column as C, Entity as Logs};
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};

    ctx.actor.require_admin()?;
    // An empty filter is a mistake (an unset form field), not "rows whose value is empty".
    for (field, v) in [
        ("actorId", &filter.actor_id),
        ("action", &filter.action),
        ("targetType", &filter.target_type),
        ("targetId", &filter.target_id),
    ] {
        if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(Error::validation(
                field,
                format!("{field} must not be empty: leave it out (or null) for any"),
            ));
        }
    }
    let pager = page.newest_first(CURSOR_KIND)?;
    let mut cond = Condition::all();
    if let Some(v) = &filter.actor_id {
        cond = cond.add(C::ActorId.eq(v.as_str()));
    }
    if let Some(v) = &filter.action {
        cond = cond.add(C::Action.eq(v.as_str()));
    }
    if let Some(v) = &filter.target_type {
        cond = cond.add(C::TargetType.eq(v.as_str()));
    }
    if let Some(v) = &filter.target_id {
        cond = cond.add(C::TargetId.eq(v.as_str()));
    }
    if let Some(v) = filter.since {
        cond = cond.add(C::CreatedAt.gte(v));
    }
    if let Some(v) = filter.until {
        cond = cond.add(C::CreatedAt.lt(v));
    }
    pager.fetch(db, Logs::find().filter(cond), C::Id).await
}
