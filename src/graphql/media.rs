//! Media and product media over GraphQL: thin resolvers over [`crate::media::service`].

use async_graphql::{Context, ID, InputObject, Json, Object, Upload, connection::Connection};
use serde_json::Value;

use super::{audit::CountFields, parse_id, req};
use crate::{
    error::Error,
    media::{
        access::ProductAccess,
        intake,
        service::{self, MediaFilter, MediaView, ProductRef},
    },
    pagination::PageArgs,
};
use entity::{MediaStatus, product_media};

/// A media row as the caller may see it: `ownerId`, `originalName` and `error` are null unless
/// the caller owns the media or is an admin.
pub struct Media(pub MediaView);

#[Object]
impl Media {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The md5 of the content (hex).
    async fn hash(&self) -> &str {
        &self.0.hash
    }
    async fn sha256(&self) -> &str {
        &self.0.sha256
    }
    /// The name it was uploaded under; only for its owner and admins.
    async fn original_name(&self) -> Option<&str> {
        self.0.original_name.as_deref()
    }
    async fn file_name(&self) -> &str {
        &self.0.file_name
    }
    async fn mime_type(&self) -> &str {
        &self.0.mime_type
    }
    async fn size(&self) -> i64 {
        self.0.size
    }
    async fn width(&self) -> Option<i32> {
        self.0.width
    }
    async fn height(&self) -> Option<i32> {
        self.0.height
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn thumbnail_url(&self) -> Option<&str> {
        self.0.thumbnail_url.as_deref()
    }
    /// Further sizes: `[{name, width, height, url}]`, filled in by the media_processing queue.
    async fn variants(&self) -> Json<Value> {
        Json(self.0.variants.clone())
    }
    /// Who uploaded it; only for its owner and admins.
    async fn owner_id(&self) -> Option<&str> {
        self.0.owner_id.as_deref()
    }
    async fn merchant_id(&self) -> Option<&str> {
        self.0.merchant_id.as_deref()
    }
    async fn status(&self) -> MediaStatus {
        self.0.status
    }
    /// Why processing failed, in words for the owner (never internal detail); only for its owner
    /// and admins.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

pub struct ProductMedia(pub product_media::Model);

#[Object]
impl ProductMedia {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn product_id(&self) -> &str {
        &self.0.product_id
    }
    async fn media_id(&self) -> ID {
        ID(self.0.media_id.to_string())
    }
    async fn merchant_id(&self) -> Option<&str> {
        self.0.merchant_id.as_deref()
    }
    async fn position(&self) -> i32 {
        self.0.position
    }
    async fn is_primary(&self) -> bool {
        self.0.is_primary
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// The media; null when the caller may not read it (a failed upload of another merchant).
    async fn media(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Media>> {
        let (state, rc) = req(ctx);
        match service::get(&state.db, rc, self.0.media_id).await {
            Ok(m) => Ok(Some(Media(m))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The seed's base64 upload.
#[derive(InputObject)]
pub struct UploadMediaBase64Input {
    /// Base64, or a `data:` URL.
    pub file_data: String,
    pub file_name: Option<String>,
    pub mime_type: Option<String>,
    pub merchant_id: Option<String>,
}

#[derive(Default)]
pub struct MediaQuery;

#[Object]
impl MediaQuery {
    async fn media(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Media> {
        let (state, rc) = req(ctx);
        Ok(Media(
            service::get(&state.db, rc, parse_id(&id, "id")?).await?,
        ))
    }

    /// Media, newest first: a merchant's own; admin and service see every merchant's and may
    /// filter by `merchantId`. Needs a token.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn media_list(
        &self,
        ctx: &Context<'_>,
        merchant_id: Option<String>,
        status: Option<MediaStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Media, CountFields>> {
        let (state, rc) = req(ctx);
        let page_args = PageArgs { first, after };
        let page = service::list(
            &state.db,
            rc,
            &MediaFilter {
                merchant_id,
                status,
            },
            &page_args,
        )
        .await?;
        Ok(super::connection(
            page,
            page_args.after.is_some(),
            service::cursor,
            Media,
        ))
    }

    /// The media attached to a merchant's product, by position. Public; `merchantId` names the
    /// product's merchant (a merchant token defaults to its own).
    async fn product_media(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<Vec<ProductMedia>> {
        let (state, rc) = req(ctx);
        Ok(
            service::product_media(&state.db, rc, merchant_id, &product_id)
                .await?
                .into_iter()
                .map(ProductMedia)
                .collect(),
        )
    }
}

#[derive(Default)]
pub struct MediaMutation;

#[Object]
impl MediaMutation {
    /// Uploads an image (GraphQL multipart request). JPEG, PNG or WebP.
    async fn upload_media(
        &self,
        ctx: &Context<'_>,
        file: Upload,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<Media> {
        let (state, rc) = req(ctx);
        rc.actor.require_authenticated()?;
        let value = file
            .value(ctx)
            .map_err(|e| Error::validation("file", e.to_string()))?;
        let (name, claimed) = (value.filename.clone(), value.content_type.clone());
        // One file variable may feed several fields (`a: uploadMedia(file: $f) b: …`). The
        // handles async-graphql gives share one offset, which the first field read to the end:
        // each field reads the file from its start (the second then finds the first's row).
        let mut content = value.content;
        std::io::Seek::rewind(&mut content).map_err(Error::internal)?;
        let req = intake::from_reader(
            content,
            &name,
            claimed,
            crate::media::access::not_blank(merchant_id)?,
            state.config.media_max_bytes,
        )
        .await?;
        Ok(Media(service::upload(state, rc, req).await?))
    }

    /// The seed's base64 upload.
    async fn upload_media_base64(
        &self,
        ctx: &Context<'_>,
        input: UploadMediaBase64Input,
    ) -> async_graphql::Result<Media> {
        let (state, rc) = req(ctx);
        rc.actor.require_authenticated()?;
        let req = intake::from_base64(
            &input.file_data,
            input.file_name.as_deref(),
            input.mime_type,
            crate::media::access::not_blank(input.merchant_id)?,
            state.config.media_max_bytes,
        )?;
        Ok(Media(service::upload(state, rc, req).await?))
    }

    async fn delete_media(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let (state, rc) = req(ctx);
        service::delete(state, rc, parse_id(&id, "id")?).await?;
        Ok(true)
    }

    /// Attaches the merchant's media to one of its products; `isPrimary: true` unsets the
    /// product's previous primary. Admin and service callers name the merchant. Positions are
    /// always 0..n: `position` puts the media at that index (the end at most) and shifts the
    /// others; without it a new attachment goes last and an attached one keeps its place.
    async fn attach_media_to_product(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        media_id: ID,
        position: Option<i32>,
        is_primary: Option<bool>,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<ProductMedia> {
        let (state, rc) = req(ctx);
        rc.actor.require_authenticated()?;
        let product = ProductRef::resolve(rc, merchant_id, &product_id, ProductAccess::Write)?;
        let media_id = parse_id(&media_id, "mediaId")?;
        Ok(ProductMedia(
            service::attach(state, rc, &product, media_id, position, is_primary).await?,
        ))
    }

    /// Detaches media from one of the merchant's products. Admin and service callers name the
    /// merchant.
    async fn detach_media_from_product(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        media_id: ID,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<bool> {
        let (state, rc) = req(ctx);
        rc.actor.require_authenticated()?;
        let product = ProductRef::resolve(rc, merchant_id, &product_id, ProductAccess::Write)?;
        let media_id = parse_id(&media_id, "mediaId")?;
        service::detach(state, rc, &product, media_id).await?;
        Ok(true)
    }

    /// Sets the order of a product's media; `mediaIds` lists every attached media once. Admin and
    /// service callers name the merchant.
    async fn reorder_product_media(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        media_ids: Vec<ID>,
        merchant_id: Option<String>,
    ) -> async_graphql::Result<Vec<ProductMedia>> {
        let (state, rc) = req(ctx);
        rc.actor.require_authenticated()?;
        let product = ProductRef::resolve(rc, merchant_id, &product_id, ProductAccess::Write)?;
        let ids = media_ids
            .iter()
            .map(|id| parse_id(id, "mediaIds"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(service::reorder(state, rc, &product, &ids)
            .await?
            .into_iter()
            .map(ProductMedia)
            .collect())
    }
}
