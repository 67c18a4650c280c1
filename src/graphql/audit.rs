//! `auditLogs(filter, first, after)`: admin only.

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject, connection::Connection};

use super::req;
use crate::{
    audit::{self, AuditFilter},
    pagination::PageArgs,
};
use entity::audit_log;

#[derive(InputObject, Default)]
pub struct AuditLogFilter {
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct AuditLog(audit_log::Model);

#[Object]
impl AuditLog {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn actor_id(&self) -> Option<&str> {
        self.0.actor_id.as_deref()
    }
    async fn actor_role(&self) -> &str {
        &self.0.actor_role
    }
    async fn action(&self) -> &str {
        &self.0.action
    }
    async fn target_type(&self) -> &str {
        &self.0.target_type
    }
    async fn target_id(&self) -> Option<&str> {
        self.0.target_id.as_deref()
    }
    async fn merchant_id(&self) -> Option<&str> {
        self.0.merchant_id.as_deref()
    }
    async fn before_state(&self) -> Option<Json<serde_json::Value>> {
        self.0.before_state.clone().map(Json)
    }
    async fn after_state(&self) -> Option<Json<serde_json::Value>> {
        self.0.after_state.clone().map(Json)
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(SimpleObject)]
pub struct CountFields {
    pub total_count: u64,
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The audit trail, newest first. Admin only.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn audit_logs(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditLog, CountFields>> {
        let (state, rc) = req(ctx);
        let f = filter.unwrap_or_default();
        let filter = AuditFilter {
            actor_id: f.actor_id,
            action: f.action,
            target_type: f.target_type,
            target_id: f.target_id,
            since: f.since,
            until: f.until,
        };
        let page_args = PageArgs { first, after };
        let page = audit::list(&state.db, rc, &filter, &page_args).await?;
        Ok(super::connection(
            page,
            page_args.after.is_some(),
            audit::cursor,
            AuditLog,
        ))
    }
}
