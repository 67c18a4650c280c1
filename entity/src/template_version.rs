//! `template_versions`: the content a template had before each update. Deleted with its template.

use sea_orm::entity::prelude::*;

use crate::TemplateStatus;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "template_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub template_id: Uuid,
    pub version: i32,
    /// The whole content (type, body, header, footer, buttons, sections, media) at that version.
    pub content: Json,
    pub status: TemplateStatus,
    pub created_by: Option<String>,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "template_id", to = "id", on_delete = "Cascade")]
    pub template: HasOne<super::message_template::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
