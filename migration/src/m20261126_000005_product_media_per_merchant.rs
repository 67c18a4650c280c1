//! Products belong to merchants: a product is `(merchant_id, product_id)`, so the one-primary rule
//! and the position index are per merchant. Two merchants may both have a `sku-1`.
//!
//! Rows written before this migration whose `merchant_id` is NULL (platform media) keep one primary
//! per product among themselves: the index key is `COALESCE(merchant_id, '')`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        // Rows always carried their media's merchant; fill any gap from the media row.
        db.execute_unprepared(
            "UPDATE product_media SET merchant_id = (SELECT mf.merchant_id FROM media_files mf \
             WHERE mf.id = product_media.media_id) WHERE merchant_id IS NULL",
        )
        .await?;
        for sql in [
            "DROP INDEX IF EXISTS ux_product_media_one_primary",
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_product_media_one_primary_per_merchant \
             ON product_media (COALESCE(merchant_id, ''), product_id) WHERE is_primary",
            "DROP INDEX IF EXISTS ix_product_media_product_position",
            "CREATE INDEX IF NOT EXISTS ix_product_media_merchant_product_position \
             ON product_media (merchant_id, product_id, position)",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    /// Fails when two merchants now both have a primary for the same product id.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for sql in [
            "DROP INDEX IF EXISTS ix_product_media_merchant_product_position",
            "CREATE INDEX IF NOT EXISTS ix_product_media_product_position \
             ON product_media (product_id, position)",
            "DROP INDEX IF EXISTS ux_product_media_one_primary_per_merchant",
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_product_media_one_primary \
             ON product_media (product_id) WHERE is_primary",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
