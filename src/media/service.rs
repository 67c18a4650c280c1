//! Media persistence; GraphQL, REST and the media_processing job all call these functions.
//!
//! Who may see and change what is decided in [`super::access`]; every query here takes its scope
//! from there. Files are content-addressed by sha256 and shared between rows with the same bytes;
//! a file is removed only when no row references its sha256 any more. What a row references and
//! what is on disk change together under one lock per sha256 ([`FILES_LOCK`]): an upload checks
//! its files are there and inserts its row under it, a delete counts the rows left and removes
//! the files under it, so one merchant's delete never takes the files of another's upload of the
//! same bytes, and a size rendered for a row deleted meanwhile does not stay behind.
//!
//! Decoding is bounded by the process's [`super::budget::DecodeBudget`], and identical bytes
//! uploaded concurrently by the same merchant are decoded and stored once.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, sea_query::Expr,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    access::{self, ProductAccess},
    intake::UploadRequest,
    process::{self, Format, Limits, Output, Probe, SizeSpec},
    storage,
};
use crate::{
    AppState, audit,
    auth::{RequestContext, scope},
    error::{Error, Result},
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::{
    MediaStatus,
    media_file::{self, Column as C, Entity as Media},
    product_media::{self, Column as PC, Entity as ProductMedia},
};

const CURSOR_KIND: &str = "media";
/// The [`crate::db::lock_key`] namespace of a sha256's files.
const FILES_LOCK: i32 = 0x6d65_6469; // "medi"
/// The [`crate::db::lock_key`] namespace of a product's media list.
const PRODUCT_LOCK: i32 = 0x7072_6f64; // "prod"

/// `product_id` columns hold 128 characters.
pub const MAX_PRODUCT_ID_CHARS: usize = 128;
/// `owner_id` holds the token's subject, up to 128 characters.
const MAX_OWNER_ID_CHARS: usize = 128;
/// The most media one reorder may list.
const MAX_REORDER: usize = 1000;

/// The sizes the media_processing job makes after an upload.
pub fn processing_options() -> Value {
    json!({
        "sizes": [{ "name": "medium", "width": 600, "height": 600, "fit": "inside" }],
        "quality": 85
    })
}

/// A media row as a caller may see it, in the seed's snake_case shape (REST bodies, GraphQL's
/// `Media`). The private fields are `None` unless [`access::sees_private`].
#[derive(Debug, Clone, Serialize)]
pub struct MediaView {
    pub id: Uuid,
    pub hash: String,
    pub sha256: String,
    pub original_name: Option<String>,
    pub file_name: String,
    pub mime_type: String,
    pub size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub url: String,
    pub thumbnail_url: Option<String>,
    pub variants: Value,
    pub owner_id: Option<String>,
    pub merchant_id: Option<String>,
    pub status: MediaStatus,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl MediaView {
    /// Everything, for audit rows and privileged callers.
    fn full(m: media_file::Model) -> Self {
        Self {
            id: m.id,
            hash: m.hash,
            sha256: m.sha256,
            original_name: Some(m.original_name),
            file_name: m.file_name,
            mime_type: m.mime_type,
            size: m.size,
            width: m.width,
            height: m.height,
            url: m.url,
            thumbnail_url: m.thumbnail_url,
            variants: m.variants,
            owner_id: m.owner_id,
            merchant_id: m.merchant_id,
            status: m.status,
            error: m.error.map(|e| public_reason_of_stored(&e)),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }

    /// The row as `ctx`'s caller may see it.
    pub fn for_caller(ctx: &RequestContext, m: media_file::Model) -> Self {
        let private = access::sees_private(&ctx.actor, &m);
        let mut v = Self::full(m);
        if !private {
            v.original_name = None;
            v.owner_id = None;
            v.error = None;
        }
        v
    }
}

/// The reason a processing failure shows to the owner: the message of an input error (written
/// for clients), never internal detail.
pub fn failure_reason(e: &Error) -> String {
    match e {
        Error::Validation { .. } | Error::UnsupportedMedia(_) | Error::PayloadTooLarge(_) => {
            e.to_string()
        }
        _ => "processing failed; the upload can be retried".into(),
    }
}

/// Rows written before [`failure_reason`] existed may hold internal text.
fn public_reason_of_stored(e: &str) -> String {
    if e.starts_with("internal error") || e.starts_with("database") || e.starts_with("io:") {
        "processing failed; the upload can be retried".into()
    } else {
        e.to_owned()
    }
}

/// The seed's row shape (snake_case), with every field: for audit rows.
pub fn to_json(m: &media_file::Model) -> Value {
    serde_json::to_value(MediaView::full(m.clone())).unwrap_or(Value::Null)
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

/// Removes every file of the bytes `sha256` when no row references them any more (after a
/// delete, or an upload that failed). Under the files' lock: an upload of the same bytes either
/// committed its row before this counts (and the files stay), or checks its files after this
/// removed them (and writes them again).
async fn drop_unreferenced(state: &AppState, sha256: &str) -> Result<()> {
    let txn = crate::db::begin_write(&state.db).await?;
    crate::db::lock_key(&txn, FILES_LOCK, sha256).await?;
    drop_if_unreferenced(&txn, state, sha256).await?;
    txn.commit().await?;
    Ok(())
}

/// [`drop_unreferenced`]'s count and removal, in a transaction that holds the files' lock.
async fn drop_if_unreferenced(
    txn: &sea_orm::DatabaseTransaction,
    state: &AppState,
    sha256: &str,
) -> Result<()> {
    let rows = Media::find()
        .filter(C::Sha256.eq(sha256))
        .count(txn)
        .await?;
    if rows == 0 {
        state.storage.delete_content(sha256).await?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
}

/// Uploads an image: validated by content, deduplicated per merchant, stored with a thumbnail;
/// further sizes are queued. Concurrent uploads of the same bytes by the same merchant are
/// decoded and stored once, and all answer with the same row.
pub async fn upload(
    state: &AppState,
    ctx: &RequestContext,
    req: UploadRequest,
) -> Result<MediaView> {
    let merchant_id = access::upload_merchant(&ctx.actor, req.merchant_id)?;
    if ctx
        .actor
        .id()
        .is_some_and(|id| id.chars().count() > MAX_OWNER_ID_CHARS)
    {
        return Err(Error::validation(
            "token",
            format!("the token's subject must be at most {MAX_OWNER_ID_CHARS} characters"),
        ));
    }
    let limits = Limits {
        max_bytes: state.config.media_max_bytes,
        ..Limits::default()
    };
    let bytes = std::sync::Arc::new(req.bytes);
    let b = bytes.clone();
    let (probe, sha256, md5) = blocking(move || {
        let probe = process::probe(&b, &limits)?;
        use sha2::Digest as _;
        let sha = hex::encode(sha2::Sha256::digest(&b[..]));
        let md5 = hex::encode(md5::Md5::digest(&b[..]));
        Ok((probe, sha, md5))
    })
    .await?;
    if let Some(claimed) = req.claimed_mime.as_deref()
        && Format::from_mime(claimed) != Some(probe.format)
    {
        return Err(Error::UnsupportedMedia(format!(
            "claimed {claimed} but the content is {}",
            format_name(probe.format)
        )));
    }
    if let Some(existing) = find_duplicate(&state.db, merchant_id.as_deref(), &md5, &sha256).await?
        && existing.status != MediaStatus::Failed
    {
        return Ok(MediaView::for_caller(ctx, existing));
    }
    let new = NewUpload {
        state: state.clone(),
        ctx: ctx.clone(),
        bytes,
        probe,
        sha256: sha256.clone(),
        md5,
        original_name: req.original_name,
        merchant_id: merchant_id.clone(),
    };
    let row = state
        .media
        .uploads
        .run((merchant_id, sha256), new.store())
        .await?;
    Ok(MediaView::for_caller(ctx, row))
}

/// Decodes `bytes` within the decode budget and renders `specs`.
pub async fn render(
    state: &AppState,
    bytes: std::sync::Arc<Vec<u8>>,
    probe: Probe,
    specs: Vec<SizeSpec>,
    quality: u8,
) -> Result<Vec<Output>> {
    let cost = process::decode_cost(&probe, &specs);
    state
        .media
        .budget
        .run(cost, move || {
            process::render(&bytes, &probe, &specs, quality)
        })
        .await
}

/// An upload that passed every check and was not a duplicate when it was checked.
struct NewUpload {
    state: AppState,
    ctx: RequestContext,
    bytes: std::sync::Arc<Vec<u8>>,
    probe: Probe,
    sha256: String,
    md5: String,
    original_name: String,
    merchant_id: Option<String>,
}

impl NewUpload {
    /// Renders the thumbnail, writes the files and inserts the row. The same bytes stored
    /// before in a row now FAILED (its sizes could not be made) are stored again in that row,
    /// and processed again.
    async fn store(self) -> Result<media_file::Model> {
        let state = &self.state;
        let merchant_id = self.merchant_id.as_deref();
        // A flight that just finished may have stored these bytes.
        let failed = match find_duplicate(&state.db, merchant_id, &self.md5, &self.sha256).await? {
            Some(existing) if existing.status != MediaStatus::Failed => return Ok(existing),
            Some(existing) => Some(existing),
            None => None,
        };
        let thumb = render(
            state,
            self.bytes.clone(),
            self.probe,
            vec![SizeSpec::thumbnail()],
            85,
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("no thumbnail rendered"))?;
        let key = storage::key_for(&self.sha256, None, self.probe.format.ext());
        let thumb_key = storage::key_for(&self.sha256, Some("thumbnail"), thumb.format.ext());

        let files = [(&key, &self.bytes[..]), (&thumb_key, &thumb.bytes[..])];
        let result = async {
            // Written before the row's transaction, outside the files' lock: each write syncs
            // to disk, and the lock (on SQLite, every writer's) is held only to check them.
            for (k, data) in files {
                if !state.storage.exists(k).await? {
                    state.storage.put(k, data).await?;
                }
            }
            self.insert_row(&files, failed.as_ref()).await
        }
        .await;
        let row = match result {
            Ok(row) => row,
            Err(e) => {
                if let Err(e) = drop_unreferenced(state, &self.sha256).await {
                    tracing::warn!(error = %e, "could not remove the files of a failed upload");
                }
                // Lost a race with the same upload on another instance: answer like a duplicate.
                if matches!(e, Error::Conflict(_))
                    && let Some(existing) =
                        find_duplicate(&state.db, merchant_id, &self.md5, &self.sha256).await?
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
            // Without its job the row would never get its further sizes, and an upload of the
            // same bytes would be answered with it as a duplicate: the upload is undone and
            // refused (UNAVAILABLE when the queue did not answer), so sending it again works.
            tracing::warn!(media_id = %row.id, error = %e, "could not queue media processing; the upload is undone");
            if let Err(undo) = self.undo(&row, failed.as_ref()).await {
                tracing::error!(media_id = %row.id, error = %undo, "could not undo an upload whose processing was not queued");
            }
            return Err(e);
        }
        Ok(row)
    }

    /// Takes back an upload: a new row goes (and its files, when nothing else holds them); a
    /// FAILED row stored again goes back to what it was.
    async fn undo(
        &self,
        row: &media_file::Model,
        failed: Option<&media_file::Model>,
    ) -> Result<()> {
        let state = &self.state;
        let txn = crate::db::begin_write(&state.db).await?;
        crate::db::lock_key(&txn, FILES_LOCK, &self.sha256).await?;
        match failed {
            Some(before) => {
                let am: media_file::ActiveModel = before.clone().into();
                am.reset_all().update(&txn).await?;
            }
            None => {
                Media::delete_by_id(row.id).exec(&txn).await?;
                drop_if_unreferenced(&txn, state, &self.sha256).await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Inserts the row (or stores `failed` again), with its files checked under the files' lock:
    /// a delete of the same bytes may have removed them since they were written.
    async fn insert_row(
        &self,
        files: &[(&String, &[u8]); 2],
        failed: Option<&media_file::Model>,
    ) -> Result<media_file::Model> {
        let (key, thumb_key) = (files[0].0, files[1].0);
        let now = crate::db::now();
        let txn = crate::db::begin_write(&self.state.db).await?;
        crate::db::lock_key(&txn, FILES_LOCK, &self.sha256).await?;
        for &(k, data) in files {
            if !self.state.storage.exists(k).await? {
                self.state.storage.put(k, data).await?;
            }
        }
        let row = match failed {
            Some(failed) => {
                let mut again: media_file::ActiveModel = failed.clone().into();
                again.url = Set(storage::url_for(key));
                again.thumbnail_url = Set(Some(storage::url_for(thumb_key)));
                // Its sizes are made again: those it listed may be gone with its files.
                again.variants = Set(json!([]));
                again.status = Set(MediaStatus::Ready);
                again.error = Set(None);
                again.updated_at = Set(now);
                again.update(&txn).await?
            }
            None => {
                media_file::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    hash: Set(self.md5.clone()),
                    sha256: Set(self.sha256.clone()),
                    original_name: Set(self.original_name.clone()),
                    file_name: Set(key.rsplit('/').next().unwrap_or(key).to_owned()),
                    mime_type: Set(self.probe.format.mime().to_owned()),
                    size: Set(self.bytes.len() as i64),
                    width: Set(Some(self.probe.width as i32)),
                    height: Set(Some(self.probe.height as i32)),
                    url: Set(storage::url_for(key)),
                    thumbnail_url: Set(Some(storage::url_for(thumb_key))),
                    variants: Set(json!([])),
                    owner_id: Set(self.ctx.actor.id().map(str::to_owned)),
                    merchant_id: Set(self.merchant_id.clone()),
                    status: Set(MediaStatus::Ready),
                    error: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&txn)
                .await?
            }
        };
        audit::record(
            &txn,
            &self.ctx,
            audit::Change {
                action: "media.upload",
                target_type: "media",
                target_id: row.id.to_string(),
                merchant_id: row.merchant_id.clone(),
                before: failed.map(to_json),
                after: Some(to_json(&row)),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(row)
    }
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

/// A row the caller may read, else NOT_FOUND.
async fn find_readable(
    db: &impl ConnectionTrait,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<media_file::Model> {
    scope::one_visible::<Media, _>(db, &ctx.actor, Condition::all().add(C::Id.eq(id))).await
}

/// A row the caller may change: NOT_FOUND when it may not even read it, else FORBIDDEN.
async fn find_writable(
    db: &impl ConnectionTrait,
    ctx: &RequestContext,
    id: Uuid,
) -> Result<media_file::Model> {
    scope::one_writable::<Media, _>(db, &ctx.actor, Condition::all().add(C::Id.eq(id))).await
}

/// One media row, as the caller may see it.
pub async fn get(db: &DatabaseConnection, ctx: &RequestContext, id: Uuid) -> Result<MediaView> {
    Ok(MediaView::for_caller(
        ctx,
        find_readable(db, ctx, id).await?,
    ))
}

#[derive(Debug, Clone, Default)]
pub struct MediaFilter {
    pub merchant_id: Option<String>,
    pub status: Option<MediaStatus>,
}

pub fn cursor(m: &MediaView) -> String {
    encode_cursor(CURSOR_KIND, &m.id.to_string())
}

/// The caller's media (everyone's for admin and service), newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    filter: &MediaFilter,
    page: &PageArgs,
) -> Result<Page<MediaView>> {
    let merchant = access::list_scope(&ctx.actor, filter.merchant_id.clone())?;
    let pager = page.newest_first(CURSOR_KIND)?;
    let mut cond = Condition::all();
    if let Some(m) = &merchant {
        cond = cond.add(C::MerchantId.eq(m.as_str()));
    }
    if let Some(s) = filter.status {
        cond = cond.add(C::Status.eq(s));
    }
    let page = pager.fetch(db, Media::find().filter(cond), C::Id).await?;
    Ok(page.map(|m| MediaView::for_caller(ctx, m)))
}

/// Deletes a row (detaching it from products) and its files when nothing else references them.
pub async fn delete(state: &AppState, ctx: &RequestContext, id: Uuid) -> Result<()> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(&state.db).await?;
    let m = find_writable(&txn, ctx, id).await?;
    // The products it leaves change too: their media close up, keep a primary, and each gets
    // `product_updated`, as a detach would.
    let mut products: Vec<ProductRef> = ProductMedia::find()
        .filter(PC::MediaId.eq(id))
        .all(&txn)
        .await?
        .into_iter()
        .filter_map(|r| {
            Some(ProductRef {
                merchant_id: r.merchant_id?,
                product_id: r.product_id,
            })
        })
        .collect();
    // Locked in one order, so two deletes never wait on each other's products.
    products.sort_by(|a, b| (&a.merchant_id, &a.product_id).cmp(&(&b.merchant_id, &b.product_id)));
    products.dedup();
    for product in &products {
        product.lock(&txn).await?;
    }
    ProductMedia::delete_many()
        .filter(PC::MediaId.eq(id))
        .exec(&txn)
        .await?;
    Media::delete_by_id(id).exec(&txn).await?;
    for product in &products {
        close_gaps(&txn, product).await?;
    }
    // The events after every other write: on PostgreSQL recording one takes the event lock
    // until the commit (migration 000011), and nothing after it should wait on a row lock.
    let mut events = Vec::with_capacity(products.len());
    for product in &products {
        events.push(product_updated(&txn, product, "media_detached").await?);
    }
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
    for event in events {
        state.events.publish(event).await;
    }
    // The row is gone for good: a failure here leaves files, never a row without them.
    if let Err(e) = drop_unreferenced(state, &m.sha256).await {
        tracing::warn!(media_id = %id, error = %e, "could not remove a deleted media's files");
    }
    Ok(())
}

/// Records sizes the media_processing job rendered and stored for row `id`: the row is READY
/// with them. `None` when the row was deleted meanwhile; then the files go too, unless another
/// row has the same bytes (under the files' lock, like a delete).
pub async fn record_sizes(
    state: &AppState,
    id: Uuid,
    sha256: &str,
    sizes: Vec<Value>,
) -> Result<Option<media_file::Model>> {
    let txn = crate::db::begin_write(&state.db).await?;
    crate::db::lock_key(&txn, FILES_LOCK, sha256).await?;
    let Some(row) = Media::find_by_id(id).one(&txn).await? else {
        drop_if_unreferenced(&txn, state, sha256).await?;
        txn.commit().await?;
        return Ok(None);
    };
    let names: Vec<&str> = sizes
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    // The row's list as it is now, with these sizes in place of any of the same name.
    let mut variants: Vec<Value> = row
        .variants
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            !v.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        })
        .collect();
    variants.extend(sizes);
    let mut am: media_file::ActiveModel = row.into();
    am.status = Set(MediaStatus::Ready);
    am.error = Set(None);
    am.variants = Set(Value::Array(variants));
    am.updated_at = Set(crate::db::now());
    let row = am.update(&txn).await?;
    txn.commit().await?;
    Ok(Some(row))
}

// ---- product media ----

/// A product: `productId` within one merchant's catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRef {
    pub merchant_id: String,
    pub product_id: String,
}

impl ProductRef {
    /// The product `ctx`'s caller addresses: its own for merchants, the named merchant's for
    /// admin, service and public reads.
    pub fn resolve(
        ctx: &RequestContext,
        merchant_id: Option<String>,
        product_id: &str,
        access: ProductAccess,
    ) -> Result<Self> {
        let merchant_id = access::product_merchant(&ctx.actor, merchant_id, access)?;
        if product_id.trim().is_empty()
            || product_id.chars().count() > MAX_PRODUCT_ID_CHARS
            || product_id.chars().any(char::is_control)
        {
            return Err(Error::validation(
                "productId",
                format!("productId must be 1 to {MAX_PRODUCT_ID_CHARS} printable characters"),
            ));
        }
        Ok(Self {
            merchant_id,
            product_id: product_id.to_owned(),
        })
    }

    /// Takes this product's lock until `txn` ends: changes to one product's media take turns,
    /// so positions stay 0..n and one primary (PostgreSQL; SQLite's writer lock does it there).
    /// Taken before the product's rows are read, and after any media row's lock.
    async fn lock(&self, txn: &sea_orm::DatabaseTransaction) -> Result<()> {
        crate::db::lock_key(
            txn,
            PRODUCT_LOCK,
            &format!("{}\n{}", self.merchant_id, self.product_id),
        )
        .await
    }

    /// The scope of every product_media query about this product.
    fn rows(&self) -> Condition {
        Condition::all()
            .add(PC::MerchantId.eq(self.merchant_id.as_str()))
            .add(PC::ProductId.eq(self.product_id.as_str()))
    }
}

/// Records `product_updated` in the change's own transaction, so the event is durable exactly
/// when the change is; the caller publishes it after the commit.
async fn product_updated(
    txn: &impl ConnectionTrait,
    product: &ProductRef,
    change: &str,
) -> Result<crate::events::Event> {
    let merchant = crate::auth::MerchantId::parse("merchantId", &product.merchant_id)?;
    crate::events::service::record(
        txn,
        crate::events::EventType::ProductUpdated,
        &merchant,
        json!({ "productId": product.product_id, "change": change }),
    )
    .await
}

async fn rows_of(
    db: &impl ConnectionTrait,
    product: &ProductRef,
) -> Result<Vec<product_media::Model>> {
    Ok(ProductMedia::find()
        .filter(product.rows())
        .order_by_asc(PC::Position)
        .order_by_asc(PC::CreatedAt)
        .all(db)
        .await?)
}

/// A position as stored.
fn position_of(index: usize) -> Result<i32> {
    i32::try_from(index).map_err(|_| Error::validation("position", "too many media on one product"))
}

/// Gives the product's media the positions 0..n in `order` (its media ids), writing only the rows
/// whose position changes. `rows` are the rows as they were read.
async fn renumber(
    db: &impl ConnectionTrait,
    product: &ProductRef,
    rows: &[product_media::Model],
    order: &[Uuid],
) -> Result<()> {
    for (index, id) in order.iter().enumerate() {
        let pos = position_of(index)?;
        if rows.iter().any(|r| r.media_id == *id && r.position == pos) {
            continue;
        }
        ProductMedia::update_many()
            .col_expr(PC::Position, Expr::value(pos))
            .filter(product.rows())
            .filter(PC::MediaId.eq(*id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// A product with media has exactly one primary. When none is (its first attachment, or the
/// primary was detached, deleted or unset), the first by position becomes it; returns that row.
async fn ensure_primary(db: &impl ConnectionTrait, product: &ProductRef) -> Result<Option<Uuid>> {
    // One read: the primary if there is one, else the first by position.
    let Some(first) = ProductMedia::find()
        .filter(product.rows())
        .order_by_desc(PC::IsPrimary)
        .order_by_asc(PC::Position)
        .order_by_asc(PC::CreatedAt)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if first.is_primary {
        return Ok(None);
    }
    ProductMedia::update_many()
        .col_expr(PC::IsPrimary, Expr::value(true))
        .filter(PC::Id.eq(first.id))
        .exec(db)
        .await?;
    Ok(Some(first.id))
}

/// The media attached to a product, by position. Anyone may read; the caller names the merchant
/// (a merchant's own by default).
pub async fn product_media(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    merchant_id: Option<String>,
    product_id: &str,
) -> Result<Vec<product_media::Model>> {
    let product = ProductRef::resolve(ctx, merchant_id, product_id, ProductAccess::Read)?;
    rows_of(db, &product).await
}

/// Attaches media to a product (or updates the attachment). One primary per product: `isPrimary`
/// moves it here, and a product's first media becomes it (see [`ensure_primary`]).
pub async fn attach(
    state: &AppState,
    ctx: &RequestContext,
    product: &ProductRef,
    media_id: Uuid,
    position: Option<i32>,
    is_primary: Option<bool>,
) -> Result<product_media::Model> {
    ctx.actor.require_authenticated()?;
    if position.is_some_and(|p| p < 0) {
        return Err(Error::validation(
            "position",
            "position must not be negative",
        ));
    }
    let txn = crate::db::begin_write(&state.db).await?;
    let media = find_writable(&txn, ctx, media_id).await?;
    if media.merchant_id.as_deref() != Some(product.merchant_id.as_str()) {
        return Err(Error::validation(
            "mediaId",
            "the media must belong to the product's merchant",
        ));
    }
    product.lock(&txn).await?;
    // Positions are the dense order 0..n: `position` puts the media at that index (the end at
    // most), the others keep their order around it; without one, a new attachment goes last
    // and an existing one stays where it is.
    let rows = rows_of(&txn, product).await?;
    let existing = rows.iter().find(|r| r.media_id == media_id).cloned();
    let mut order: Vec<Uuid> = rows
        .iter()
        .map(|r| r.media_id)
        .filter(|m| *m != media_id)
        .collect();
    let at = match (position, rows.iter().position(|r| r.media_id == media_id)) {
        (Some(p), _) => usize::try_from(p).unwrap_or(0).min(order.len()),
        (None, Some(i)) => i.min(order.len()),
        (None, None) => order.len(),
    };
    order.insert(at, media_id);
    let at = position_of(at)?;
    if is_primary == Some(true) {
        ProductMedia::update_many()
            .col_expr(PC::IsPrimary, Expr::value(false))
            .filter(product.rows())
            .filter(PC::IsPrimary.eq(true))
            .exec(&txn)
            .await?;
    }
    let row = match existing.clone() {
        Some(e) => {
            let mut am: product_media::ActiveModel = e.into();
            am.position = Set(at);
            if let Some(p) = is_primary {
                am.is_primary = Set(p);
            }
            am.update(&txn).await?
        }
        None => {
            product_media::ActiveModel {
                id: Set(Uuid::now_v7()),
                product_id: Set(product.product_id.clone()),
                media_id: Set(media_id),
                merchant_id: Set(Some(product.merchant_id.clone())),
                position: Set(at),
                is_primary: Set(is_primary.unwrap_or(false)),
                created_at: Set(crate::db::now()),
            }
            .insert(&txn)
            .await?
        }
    };
    renumber(&txn, product, &rows, &order).await?;
    let mut row = row;
    if ensure_primary(&txn, product).await? == Some(row.id) {
        row.is_primary = true;
    }
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
    let event = product_updated(&txn, product, "media_attached").await?;
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(row)
}

/// Detaches media from a product. NOT_FOUND when it is not attached to this product.
pub async fn detach(
    state: &AppState,
    ctx: &RequestContext,
    product: &ProductRef,
    media_id: Uuid,
) -> Result<()> {
    ctx.actor.require_authenticated()?;
    let txn = crate::db::begin_write(&state.db).await?;
    product.lock(&txn).await?;
    let row = ProductMedia::find()
        .filter(product.rows())
        .filter(PC::MediaId.eq(media_id))
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("product media"))?;
    ProductMedia::delete_by_id(row.id).exec(&txn).await?;
    // The others close the gap.
    close_gaps(&txn, product).await?;
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
    let event = product_updated(&txn, product, "media_detached").await?;
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(())
}

/// After media left a product: the others close the gap, and one of them is primary.
async fn close_gaps(db: &impl ConnectionTrait, product: &ProductRef) -> Result<()> {
    let rest = rows_of(db, product).await?;
    let order: Vec<Uuid> = rest.iter().map(|r| r.media_id).collect();
    renumber(db, product, &rest, &order).await?;
    ensure_primary(db, product).await?;
    Ok(())
}

/// Sets positions 0..n in the order given; `media_ids` must list exactly the attached media.
pub async fn reorder(
    state: &AppState,
    ctx: &RequestContext,
    product: &ProductRef,
    media_ids: &[Uuid],
) -> Result<Vec<product_media::Model>> {
    ctx.actor.require_authenticated()?;
    if media_ids.len() > MAX_REORDER {
        return Err(Error::validation(
            "mediaIds",
            format!("mediaIds may list at most {MAX_REORDER} media"),
        ));
    }
    let txn = crate::db::begin_write(&state.db).await?;
    product.lock(&txn).await?;
    let rows = rows_of(&txn, product).await?;
    if rows.is_empty() {
        return Err(Error::not_found("product media"));
    }
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
    let before: Vec<Value> = rows.iter().map(product_media_json).collect();
    renumber(&txn, product, &rows, media_ids).await?;
    let after = rows_of(&txn, product).await?;
    audit::record(
        &txn,
        ctx,
        audit::Change {
            action: "product_media.reorder",
            target_type: "product",
            target_id: product.product_id.clone(),
            merchant_id: Some(product.merchant_id.clone()),
            before: Some(Value::Array(before)),
            after: Some(Value::Array(after.iter().map(product_media_json).collect())),
        },
    )
    .await?;
    let event = product_updated(&txn, product, "media_reordered").await?;
    txn.commit().await?;
    state.events.publish(event).await;
    Ok(after)
}
