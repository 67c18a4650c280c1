//! `message_templates`: a merchant's (or the platform's, when `merchant_id` is NULL) WhatsApp
//! message template. `version` starts at 1 and each content update stores the previous content
//! in `template_versions`.

use sea_orm::entity::prelude::*;

use crate::{TemplateStatus, TemplateType};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "message_templates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    #[sea_orm(column_name = "type")]
    pub kind: TemplateType,
    #[sea_orm(column_type = "Text")]
    pub body: String,
    pub header: Option<String>,
    pub footer: Option<String>,
    pub button_text: Option<String>,
    pub buttons: Json,
    pub sections: Json,
    pub media: Option<Json>,
    pub variables: Json,
    pub version: i32,
    pub status: TemplateStatus,
    pub merchant_id: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub versions: HasMany<super::template_version::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
