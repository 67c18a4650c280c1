//! `product_media`: media attached to a product, ordered by `position`. A product is
//! `(merchant_id, product_id)`: two merchants' `sku-1` are different products. At most one primary
//! per product (a partial unique index). Deleting the media detaches it.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "product_media")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub product_id: String,
    pub media_id: Uuid,
    /// The product's merchant (always the media's merchant); NULL only on legacy platform rows.
    pub merchant_id: Option<String>,
    pub position: i32,
    pub is_primary: bool,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "media_id", to = "id", on_delete = "Cascade")]
    pub media: HasOne<super::media_file::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
