//! `media_files`: one uploaded file, content-addressed. `hash` is the seed's md5; `sha256`
//! addresses storage. Deduplicated per merchant.

use sea_orm::entity::prelude::*;

use crate::MediaStatus;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "media_files")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub hash: String,
    pub sha256: String,
    pub original_name: String,
    pub file_name: String,
    pub mime_type: String,
    pub size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub url: String,
    pub thumbnail_url: Option<String>,
    /// Further sizes made by the media_processing queue: `[{name, width, height, url}]`.
    pub variants: Json,
    pub owner_id: Option<String>,
    pub merchant_id: Option<String>,
    pub status: MediaStatus,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub product_media: HasMany<super::product_media::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
