//! `jobs`: the embedded (SQL) job queue. Times are epoch milliseconds so the same SQL compares
//! them on SQLite and PostgreSQL. `(queue, id)` is the key, so a caller-chosen id is idempotent.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub queue: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// waiting | delayed | active | completed | failed
    pub state: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: i16,
    pub attempts_made: i32,
    pub max_attempts: i32,
    pub backoff_ms: i64,
    pub timeout_ms: i64,
    pub run_at: i64,
    pub lease_until: Option<i64>,
    pub lease_token: Option<String>,
    /// JSON array of `{attempt, error, at}`.
    #[sea_orm(column_type = "Text")]
    pub errors: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub result: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}
