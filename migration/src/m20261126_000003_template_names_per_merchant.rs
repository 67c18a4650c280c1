//! Template names are unique per merchant, and platform templates (no merchant) have a namespace
//! of their own. Before, one global UNIQUE on `name` let a merchant's CONFLICT reveal that some
//! other merchant had a (draft) template of that name.
//!
//! PostgreSQL drops the column constraint. SQLite cannot drop a column constraint, so the table
//! is rebuilt from its own stored DDL, minus the UNIQUE, inside the migration's transaction; its
//! child `template_versions` is rebuilt with it so that dropping the old parent cascades nothing.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbBackend, Statement},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME_COLUMN: &str = r#""name" varchar(100) NOT NULL UNIQUE"#;

async fn table_sql(db: &SchemaManagerConnection<'_>, table: &str) -> Result<String, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
            [table.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("table {table} not found")))?;
    row.try_get::<String>("", "sql")
}

/// Index DDL of `table` (the automatic UNIQUE index has none and is not kept).
async fn index_sql(db: &SchemaManagerConnection<'_>, table: &str) -> Result<Vec<String>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            [table.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "sql"))
        .collect()
}

async fn rebuild_sqlite(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    let templates = table_sql(db, "message_templates").await?;
    if !templates.contains(NAME_COLUMN) {
        return Ok(()); // created without the global UNIQUE already
    }
    let versions = table_sql(db, "template_versions").await?;
    let mut indexes = index_sql(db, "message_templates").await?;
    indexes.extend(index_sql(db, "template_versions").await?);
    let templates = templates
        .replacen(NAME_COLUMN, r#""name" varchar(100) NOT NULL"#, 1)
        .replacen(
            r#"CREATE TABLE "message_templates""#,
            r#"CREATE TABLE "message_templates_new""#,
            1,
        );
    let versions = versions.replacen(
        r#"CREATE TABLE "template_versions""#,
        r#"CREATE TABLE "template_versions_new""#,
        1,
    );
    for sql in [
        templates.as_str(),
        "INSERT INTO message_templates_new SELECT * FROM message_templates",
        versions.as_str(),
        "INSERT INTO template_versions_new SELECT * FROM template_versions",
        // Child first, so dropping the parent has nothing to cascade to.
        "DROP TABLE template_versions",
        "DROP TABLE message_templates",
        "ALTER TABLE message_templates_new RENAME TO message_templates",
        "ALTER TABLE template_versions_new RENAME TO template_versions",
    ] {
        db.execute_unprepared(sql).await?;
    }
    for sql in indexes {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Sqlite => rebuild_sqlite(db).await?,
            _ => {
                db.execute_unprepared(
                    "ALTER TABLE message_templates DROP CONSTRAINT IF EXISTS message_templates_name_key",
                )
                .await?;
            }
        }
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_message_templates_merchant_name \
             ON message_templates (merchant_id, name) WHERE merchant_id IS NOT NULL",
        )
        .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_message_templates_platform_name \
             ON message_templates (name) WHERE merchant_id IS NULL",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ux_message_templates_platform_name")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS ux_message_templates_merchant_name")
            .await?;
        // Going back to one global namespace fails loudly if two merchants now share a name.
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_message_templates_name ON message_templates (name)",
        )
        .await?;
        Ok(())
    }
}
