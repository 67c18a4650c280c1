//! Media persistence and access rules; GraphQL and REST both call these functions.
//!
//! Access rules (the seed's: "a merchant manages only its own media, and others may read"):
//! * anyone may read media rows (the files are public under `/uploads` anyway);
//! * uploading needs a token; a merchant's uploads are always its own;
//! * only the owning merchant, an admin or the service may delete media or attach it to products.
//!
//! Files are content-addressed by sha256 and shared between rows with the same bytes; a file is
//! removed only when no row references its sha256 any more.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait, sea_query::Expr,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    process::{self, Format, Limits, Probe, SizeSpec},
    storage,
};
use crate::{
    AppState, audit,
    auth::{Actor, RequestContext},
    error::{Error, Result},
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::{
    MediaStatus,
    media_file::{self, Column as C, Entity as Media},
    product_media::{self, Column as PC, Entity as ProductMedia},
};

const CURSOR_KIND: &str = "media";

/// The sizes the media_processing job makes after an upload.
pub fn processing_options() -> Value {
    json!({
        "sizes": [{ "name": "medium", "width": 600, "height": 600, "fit": "inside" }],
        "quality": 85
    })
}

/// The seed's row shape (snake_case), used by REST responses and audit rows.
pub fn to_json(m: &media_file::Model) -> Value {
    json!({
        "id": m.id,
        "hash": m.hash,
        "sha256": m.sha256,
        "original_name": m.original_name,
        "file_name": m.file_name,
        "mime_type": m.mime_type,
        "size": m.size,
        "width": m.width,
        "height": m.height,
        "url": m.url,
        "thumbnail_url": m.thumbnail_url,
        "variants": m.variants,
        "owner_id": m.owner_id,
        "merchant_id": m.merchant_id,
        "status": m.status.as_str(),
        "error": m.error,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

pub fn product_media_json(m: &product_media::Model) -> Value {
    json!({
        "id": m.id,
        "product_id": m.product_id,
        "media_id": m.media_id,
        "merchant_id": m.merchant_id,
        "position": m.position,
        "is_primary": m.is_primary,
        "created_at": m.created_at,
    })
}

fn can_manage(actor: &Actor, merchant_id: Option<&str>) -> Result<()> {
    match actor {
        Actor::Admin { .. } | Actor::Service { .. } => Ok(()),
        Actor::Merchant {
            merchant_id: own, ..
        } if merchant_id == Some(own.as_str()) => Ok(()),
        Actor::Merchant { .. } => Err(Error::Forbidden(
            "this media belongs to another merchant".into(),
        )),
        Actor::Anonymous => Err(Error::Unauthenticated(
            "this operation requires a bearer token".into(),
        )),
    }
}

/// What an upload is stored as: a file name that never reaches a path.
fn clean_name(name: &str) -> String {
    let name: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    if name.is_empty() {
        "upload".into()
    } else {
        name
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
}

/// Removes the keys a failed upload wrote, unless a row now references the same bytes.
async fn cleanup(state: &AppState, sha256: &str, written: &[String]) {
    let referenced = Media::find()
        .filter(C::Sha256.eq(sha256))
        .count(&state.db)
        .await
        .map(|n| n > 0)
        .unwrap_or(true);
    if referenced {
        return;
    }
    for key in written {
        if let Err(e) = state.storage.delete(key).await {
            tracing::warn!(key, error = %e, "could not remove a file of a failed upload");
        }
    }
}

/// Uploads an image: validated by content, deduplicated per merchant, stored with a thumbnail;
/// further sizes are queued.
pub async fn upload(
    state: &AppState,
    ctx: &RequestContext,
    bytes: Vec<u8>,
    original_name: &str,
    claimed_mime: Option<String>,
    merchant_id: Option<String>,
) -> Result<media_file::Model> {
    ctx.actor.require_authenticated()?;
    let merchant_id = match (&ctx.actor, merchant_id.filter(|m| !m.trim().is_empty())) {
        (
            Actor::Merchant {
                merchant_id: own, ..
            },
            Some(m),
        ) if &m != own => {
            return Err(Error::Forbidden(
                "a merchant may upload only its own media".into(),
            ));
        }
        (
            Actor::Merchant {
                merchant_id: own, ..
            },
            _,
        ) => Some(own.clone()),
        (_, m) => m,
    };
    let limits = Limits {
        max_bytes: state.config.media_max_bytes,
        ..Limits::default()
    };
    let bytes = std::sync::Arc::new(bytes);
    let b = bytes.clone();
    let (probe, sha256, md5) = blocking(move || {
        let probe = process::probe(&b, &limits)?;
        use sha2::Digest as _;
        let sha = hex::encode(sha2::Sha256::digest(&b[..]));
        let md5 = hex::encode(md5::Md5::digest(&b[..]));
        Ok((probe, sha, md5))
    })
    .await?;
    if let Some(claimed) = claimed_mime
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let ok = Format::from_mime(claimed) == Some(probe.format);
        if !ok {
            return Err(Error::UnsupportedMedia(format!(
                "claimed {claimed} but the content is {}",
                format_name(probe.format)
            )));
        }
    }
    if let Some(existing) = find_duplicate(&state.db, merchant_id.as_deref(), &md5, &sha256).await?
    {
        return Ok(existing);
    }

    let b = bytes.clone();
    let outputs =
        blocking(move || process::render(&b, &probe, &[SizeSpec::thumbnail()], 85)).await?;
    let thumb = outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("no thumbnail rendered"))?;
    let key = storage::key_for(&sha256, None, probe.format.ext());
    let thumb_key = storage::key_for(&sha256, Some("thumbnail"), thumb.format.ext());

    let mut written = Vec::new();
    let result = async {
        for (k, data) in [(&key, &bytes[..]), (&thumb_key, &thumb.bytes[..])] {
            if !state.storage.exists(k).await? {
                state.storage.put(k, data).await?;
                written.push(k.clone());
            }
        }
        insert_row(
            state,
            ctx,
            &bytes,
            &probe,
            &sha256,
            &md5,
            &key,
            &thumb_key,
            original_name,
            merchant_id.clone(),
        )
        .await
    }
    .await;
    let row = match result {
        Ok(row) => row,
        Err(e) => {
            cleanup(state, &sha256, &written).await;
            // Lost a race with the same upload: answer like a duplicate.
            if matches!(e, Error::Conflict(_))
                && let Some(existing) =
                    find_duplicate(&state.db, merchant_id.as_deref(), &md5, &sha256).await?
            {
                return Ok(existing);
            }
            return Err(e);
        }
    };
    if let Err(e) = state
        .queue
        .queue_media_processing(&row.id.to_string(), &key, processing_options())
        .await
    {
        tracing::warn!(media_id = %row.id, error = %e, "could not queue media processing");
    }
    Ok(row)
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Jpeg => "JPEG",
        Format::Png => "PNG",
        Format::Webp => "WebP",
    }
}

async fn find_duplicate(
    db: &DatabaseConnection,
    merchant_id: Option<&str>,
    md5: &str,
    sha256: &str,
) -> Result<Option<media_file::Model>> {
    let owner = match merchant_id {
        Some(m) => C::MerchantId.eq(m),
        None => C::MerchantId.is_null(),
    };
    Ok(Media::find()
        .filter(owner)
        .filter(C::Hash.eq(md5))
        .filter(C::Sha256.eq(sha256))
        .one(db)
        .await?)
}

#[allow(clippy::too_many_arguments)]
async fn insert_row(
    state: &AppState,
    ctx: &RequestContext,
    bytes: &[u8],
    probe: &Probe,
    sha256: &str,
    md5: &str,
    key: &str,
    thumb_key: &str,
    original_name: &str,
    merchant_id: Option<String>,
) -> Result<media_file::Model> {
    let now = chrono::Utc::now();
    let txn = state.db.begin().await?;
    let row = media_file::ActiveModel {
        id: Set(Uuid::now_v7()),
        hash: Set(md5.to_owned()),
        sha256: Set(sha256.to_owned()),
        original_name: Set(clean_name(original_name)),
        file_name: Set(key.rsplit('/').next().unwrap_or(key).to_owned()),
        mime_type: Set(probe.format.mime().to_owned()),
        size: Set(bytes.len() as i64),
        width: Set(Some(probe.width as i32)),
        height: Set(Some(probe.height as i32)),
        url: Set(storage::url_for(key)),
        thumbnail_url: Set(Some(storage::url_for(thumb_key))),
        variants: Set(json!([])),
        owner_id: Set(ctx.actor.id().map(str::to_owned)),
        merchant_id: Set(merchant_id),
        status: Set(MediaStatus::Ready),
        error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "media.upload",
            target_type: "media",
            target_id: row.id.to_string(),
            merchant_id: row.merchant_id.clone(),
            before: None,
            after: Some(to_json(&row)),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// One media row; anyone may read.
pub async fn get(
    db: &DatabaseConnection,
    _ctx: &RequestContext,
    id: Uuid,
) -> Result<media_file::Model> {
    Media::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("media"))
}

#[derive(Debug, Clone, Default)]
pub struct MediaFilter {
    pub merchant_id: Option<String>,
    pub status: Option<MediaStatus>,
}

pub fn cursor(m: &media_file::Model) -> String {
    encode_cursor(CURSOR_KIND, &m.id.to_string())
}

/// Media rows, newest first.
pub async fn list(
    db: &DatabaseConnection,
    _ctx: &RequestContext,
    filter: &MediaFilter,
    page: &PageArgs,
) -> Result<Page<media_file::Model>> {
    let limit = page.limit()?;
    let mut cond = Condition::all();
    if let Some(m) = &filter.merchant_id {
        cond = cond.add(C::MerchantId.eq(m.as_str()));
    }
    if let Some(s) = filter.status {
        cond = cond.add(C::Status.eq(s));
    }
    let total_count = Media::find().filter(cond.clone()).count(db).await?;
    let mut q = Media::find().filter(cond);
    if let Some(after) = page.after_key(CURSOR_KIND)? {
        let id = Uuid::parse_str(&after)
            .map_err(|_| Error::validation("after", "after is not a valid cursor"))?;
        q = q.filter(C::Id.lt(id));
    }
    let mut items = q.order_by_desc(C::Id).limit(limit + 1).all(db).await?;
    let has_next_page = items.len() as u64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        items,
        total_count,
        has_next_page,
    })
}

/// The storage keys a row's files live under.
pub fn keys_of(m: &media_file::Model) -> Vec<String> {
    let mut urls = vec![m.url.clone()];
    urls.extend(m.thumbnail_url.clone());
    if let Some(vs) = m.variants.as_array() {
        urls.extend(
            vs.iter()
                .filter_map(|v| v.get("url").and_then(Value::as_str).map(str::to_owned)),
        );
    }
    urls.iter()
        .filter_map(|u| storage::key_of_url(u).map(str::to_owned))
        .collect()
}

/// Deletes a row (detaching it from products) and its files when nothing else references them.
pub async fn delete(state: &AppState, ctx: &RequestContext, id: Uuid) -> Result<()> {
    ctx.actor.require_authenticated()?;
    let txn = state.db.begin().await?;
    let m = Media::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("media"))?;
    can_manage(&ctx.actor, m.merchant_id.as_deref())?;
    ProductMedia::delete_many()
        .filter(PC::MediaId.eq(id))
        .exec(&txn)
        .await?;
    Media::delete_by_id(id).exec(&txn).await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "media.delete",
            target_type: "media",
            target_id: id.to_string(),
            merchant_id: m.merchant_id.clone(),
            before: Some(to_json(&m)),
            after: None,
        },
    )
    .await?;
    txn.commit().await?;
    let others = Media::find()
        .filter(C::Sha256.eq(m.sha256.as_str()))
        .count(&state.db)
        .await?;
    if others == 0 {
        for key in keys_of(&m) {
            if let Err(e) = state.storage.delete(&key).await {
                tracing::warn!(key, error = %e, "could not remove a deleted media file");
            }
        }
    }
    Ok(())
}

// ---- product media ----

/// The media attached to a product, by position. Anyone may read.
pub async fn product_media(
    db: &impl ConnectionTrait,
    product_id: &str,
) -> Result<Vec<product_media::Model>> {
    Ok(ProductMedia::find()
        .filter(PC::ProductId.eq(product_id))
        .order_by_asc(PC::Position)
        .order_by_asc(PC::CreatedAt)
        .all(db)
        .await?)
}

fn check_product_id(product_id: &str) -> Result<()> {
    if product_id.trim().is_empty() || product_id.len() > 255 {
        return Err(Error::validation(
            "productId",
            "productId must be 1 to 255 characters",
        ));
    }
    Ok(())
}

async fn unset_primary(db: &impl ConnectionTrait, product_id: &str) -> Result<()> {
    ProductMedia::update_many()
        .col_expr(PC::IsPrimary, Expr::value(false))
        .filter(PC::ProductId.eq(product_id))
        .filter(PC::IsPrimary.eq(true))
        .exec(db)
        .await?;
    Ok(())
}

/// Attaches media to a product (or updates the attachment). One primary per product.
pub async fn attach(
    state: &AppState,
    ctx: &RequestContext,
    product_id: &str,
    media_id: Uuid,
    position: Option<i32>,
    is_primary: Option<bool>,
) -> Result<product_media::Model> {
    ctx.actor.require_authenticated()?;
    check_product_id(product_id)?;
    if position.is_some_and(|p| p < 0) {
        return Err(Error::validation(
            "position",
            "position must not be negative",
        ));
    }
    let txn = state.db.begin().await?;
    let media = Media::find_by_id(media_id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("media"))?;
    can_manage(&ctx.actor, media.merchant_id.as_deref())?;
    let existing = ProductMedia::find()
        .filter(PC::ProductId.eq(product_id))
        .filter(PC::MediaId.eq(media_id))
        .one(&txn)
        .await?;
    if is_primary == Some(true) {
        unset_primary(&txn, product_id).await?;
    }
    let row = match existing.clone() {
        Some(e) => {
            let mut am: product_media::ActiveModel = e.into();
            if let Some(p) = position {
                am.position = Set(p);
            }
            if let Some(p) = is_primary {
                am.is_primary = Set(p);
            }
            am.update(&txn).await?
        }
        None => {
            let position = match position {
                Some(p) => p,
                None => {
                    let last = ProductMedia::find()
                        .filter(PC::ProductId.eq(product_id))
                        .order_by_desc(PC::Position)
                        .one(&txn)
                        .await?;
                    last.map_or(0, |l| l.position + 1)
                }
            };
            product_media::ActiveModel {
                id: Set(Uuid::now_v7()),
                product_id: Set(product_id.to_owned()),
                media_id: Set(media_id),
                merchant_id: Set(media.merchant_id.clone()),
                position: Set(position),
                is_primary: Set(is_primary.unwrap_or(false)),
                created_at: Set(chrono::Utc::now()),
            }
            .insert(&txn)
            .await?
        }
    };
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "product_media.attach",
            target_type: "product_media",
            target_id: row.id.to_string(),
            merchant_id: row.merchant_id.clone(),
            before: existing.as_ref().map(product_media_json),
            after: Some(product_media_json(&row)),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// Detaches media from a product. NOT_FOUND when it was not attached.
pub async fn detach(
    state: &AppState,
    ctx: &RequestContext,
    product_id: &str,
    media_id: Uuid,
) -> Result<()> {
    ctx.actor.require_authenticated()?;
    let txn = state.db.begin().await?;
    let row = ProductMedia::find()
        .filter(PC::ProductId.eq(product_id))
        .filter(PC::MediaId.eq(media_id))
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("product media"))?;
    can_manage(&ctx.actor, row.merchant_id.as_deref())?;
    ProductMedia::delete_by_id(row.id).exec(&txn).await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "product_media.detach",
            target_type: "product_media",
            target_id: row.id.to_string(),
            merchant_id: row.merchant_id.clone(),
            before: Some(product_media_json(&row)),
            after: None,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Sets positions 0..n in the order given; `media_ids` must list exactly the attached media.
pub async fn reorder(
    state: &AppState,
    ctx: &RequestContext,
    product_id: &str,
    media_ids: &[Uuid],
) -> Result<Vec<product_media::Model>> {
    ctx.actor.require_authenticated()?;
    let txn = state.db.begin().await?;
    let rows = product_media(&txn, product_id).await?;
    let mut have: Vec<Uuid> = rows.iter().map(|r| r.media_id).collect();
    let mut want = media_ids.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Err(Error::validation(
            "mediaIds",
            "mediaIds must list each media attached to the product exactly once",
        ));
    }
    for r in &rows {
        can_manage(&ctx.actor, r.merchant_id.as_deref())?;
    }
    let before: Vec<Value> = rows.iter().map(product_media_json).collect();
    for (pos, id) in media_ids.iter().enumerate() {
        ProductMedia::update_many()
            .col_expr(PC::Position, Expr::value(pos as i32))
            .filter(PC::ProductId.eq(product_id))
            .filter(PC::MediaId.eq(*id))
            .exec(&txn)
            .await?;
    }
    let after = product_media(&txn, product_id).await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "product_media.reorder",
            target_type: "product",
            target_id: product_id.to_owned(),
            merchant_id: after.first().and_then(|r| r.merchant_id.clone()),
            before: Some(Value::Array(before)),
            after: Some(Value::Array(after.iter().map(product_media_json).collect())),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(after)
}
