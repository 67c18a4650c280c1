//! `whatsapp_accounts`: a merchant's own WhatsApp number. The access token is encrypted at rest
//! (`crypto::Cipher`); the phone number id routes inbound webhooks to the merchant.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "whatsapp_accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub merchant_id: String,
    #[sea_orm(unique)]
    pub phone_number_id: String,
    /// Ciphertext of the Cloud API access token.
    pub access_token: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
