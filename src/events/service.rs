//! Emitting, replaying and paging events. Every domain emits through [`Events::emit`] (or
//! [`record`] inside its own transaction, then [`Events::publish`] after commit); nothing else
//! writes the `events` table or touches the bus.
//!
//! Emit stores first and publishes second: when it returns the event is durable, and a
//! subscriber that missed the live copy finds it in the history. A subscription with `after`
//! listens to the bus *before* it reads the history, then skips live events it already replayed,
//! so the seam between history and live has no gap and no duplicate.
//!
//! The event row is also the webhook outbox: `record` leaves `webhooks_dispatched_at` NULL, and
//! `publish` hands the event to the [`Outbox`] (webhook fan-out), which marks it dispatched. A
//! crash in between leaves it for the outbox's sweeper; see `webhooks::delivery`.

use std::collections::HashMap;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures::Stream;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{
    Event, EventType,
    bus::{Delivery, EventBus},
    validate_payload,
};
use crate::{
    auth::{MerchantId, MerchantScope, scope::Scoped as _},
    db::{BatchInserter, SeenGeneration},
    error::{Error, Result},
    pagination::{Page, PageArgs, encode_cursor},
};
use entity::event::{self, Column as C, Entity as Events_};

const CURSOR_KIND: &str = "evt";
/// Trim one merchant's history every this many emits (per process) at least: the history never
/// holds fewer than the configured length. Trims run in the background.
const TRIM_EVERY_MIN: u64 = 32;
/// A trim finds its cut-off by skipping the newest `history` ids, so its cost grows with the
/// history: trimming every `history / TRIM_SLACK` emits keeps the cost per emit the same whatever
/// the length, and lets a merchant's history run past it by about `1 / TRIM_SLACK`.
const TRIM_SLACK: u64 = 8;

/// How many emits of a process go between two trims.
fn trim_every(history: u64) -> u64 {
    (history / TRIM_SLACK).max(TRIM_EVERY_MIN)
}
/// Merchants waiting for a trim, at most.
const TRIM_QUEUE: usize = 256;
/// Merchants whose emits are counted towards their next trim, at most.
const TRIM_COUNTED_MERCHANTS: usize = 100_000;
const REPLAY_PAGE: u64 = 500;
/// How long an event may take from its id (taken in its transaction) to being published. Only
/// events replayed with an id this recent can also arrive live, so only they are remembered to
/// drop their live copy.
const SEAM: chrono::Duration = chrono::Duration::minutes(2);

/// Where committed events go besides the bus: the webhook fan-out. It marks what it dispatched.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Hands over committed events. `seen`: the [`Outbox::generation`] counter as these events'
    /// own INSERTs read it, when they did (`None`: the outbox reads it itself if it needs it).
    async fn dispatch(&self, events: &[Event], seen: Option<SeenGeneration>) -> Result<()>;

    /// A `cache_generations` counter the outbox needs seen no earlier than each event's INSERT
    /// began. [`Events::emit`] on PostgreSQL reads it in that INSERT (`RETURNING`), which saves
    /// the outbox a read per batch.
    fn generation(&self) -> Option<&'static str> {
        None
    }

    /// Writes now the marks of what was already dispatched, if the outbox defers them.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// The event service held in the app state.
pub struct Events {
    db: DatabaseConnection,
    bus: Arc<dyn EventBus>,
    history: u64,
    /// Emits since each merchant's last trim, in this process. Counted per merchant: a count
    /// shared by all merchants trims only whichever merchant's emit lands on the turn, and a
    /// merchant that never does would keep its whole history.
    emitted: std::sync::Mutex<HashMap<String, u64>>,
    /// Subscriptions opened by this process so far (they are live from the moment they count).
    opened: AtomicU64,
    outbox: Option<Arc<dyn Outbox>>,
    /// Merchants whose history is due a trim, for the trimmer task; started on first use.
    trims: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
    /// The rows of [`Events::emit`] on SQLite, written in shared commits; started on first use.
    writer: std::sync::OnceLock<BatchInserter<event::ActiveModel>>,
}

/// Emitted events per INSERT at most (6 columns each: far under SQLite's parameter limit).
const EMIT_BATCH: usize = 500;

fn to_event(m: event::Model) -> Result<Event> {
    Ok(Event {
        id: m.id,
        kind: m.event_type.parse()?,
        merchant_id: m.merchant_id,
        occurred_at: m.occurred_at,
        payload: m.payload,
    })
}

/// Validates and stores an event in the caller's transaction. Publish it after the commit.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    kind: EventType,
    merchant: &MerchantId,
    payload: Value,
) -> Result<Event> {
    let e = new_event(kind, merchant, payload)?;
    store(db, &e).await?;
    Ok(e)
}

/// One INSERT of one event. Without RETURNING: the row is what was just built, so nothing
/// needs reading back.
async fn store<C: ConnectionTrait>(db: &C, e: &Event) -> Result<()> {
    Events_::insert(row(e)).exec_without_returning(db).await?;
    Ok(())
}

/// [`store`], returning the `cache_generations` counter `name` as the INSERT's snapshot saw it:
/// a value committed no later than the INSERT began (PostgreSQL).
async fn store_seeing(
    db: &DatabaseConnection,
    e: &Event,
    name: &str,
) -> Result<Option<SeenGeneration>> {
    use sea_orm::{QueryTrait, sea_query::Query};
    let mut insert = Events_::insert(row(e)).into_query();
    insert.returning(Query::returning().expr(crate::db::generation_query(name)));
    let read_from = std::time::Instant::now();
    let row = db.query_one(&insert).await?;
    let value = match row {
        Some(r) => r.try_get_by_index::<Option<i64>>(0)?,
        None => None,
    };
    Ok(value.map(|value| SeenGeneration { value, read_from }))
}

/// A new event, its payload validated.
fn new_event(kind: EventType, merchant: &MerchantId, mut payload: Value) -> Result<Event> {
    super::normalize_payload(kind, &mut payload);
    validate_payload(kind, &payload)?;
    Ok(Event {
        id: Uuid::now_v7(),
        kind,
        merchant_id: merchant.as_str().to_owned(),
        occurred_at: chrono::Utc::now(),
        payload,
    })
}

fn row(e: &Event) -> event::ActiveModel {
    event::ActiveModel {
        id: Set(e.id),
        event_type: Set(e.kind.as_str().to_owned()),
        merchant_id: Set(e.merchant_id.clone()),
        payload: Set(e.payload.clone()),
        occurred_at: Set(e.occurred_at),
        // NULL: the webhook fan-out is still to be dispatched (the outbox).
        webhooks_dispatched_at: sea_orm::ActiveValue::NotSet,
    }
}

fn filter(scope: &MerchantScope, types: &[EventType]) -> Condition {
    let mut cond = Events_::scope_condition(scope);
    if !types.is_empty() {
        cond = cond.add(C::EventType.is_in(types.iter().map(|t| t.as_str())));
    }
    cond
}

fn wanted(scope: &MerchantScope, types: &[EventType], e: &Event) -> bool {
    scope.allows(&e.merchant_id) && (types.is_empty() || types.contains(&e.kind))
}

/// Trims the histories it is sent, one at a time, until the [`Events`] that started it is gone.
async fn trimmer(
    db: DatabaseConnection,
    outbox: Option<Arc<dyn Outbox>>,
    history: u64,
    mut due: tokio::sync::mpsc::Receiver<String>,
) {
    let mut merchants = Vec::new();
    while due.recv_many(&mut merchants, TRIM_QUEUE).await > 0 {
        merchants.sort_unstable();
        merchants.dedup();
        for merchant in merchants.drain(..) {
            if let Err(err) = trim(&db, outbox.as_deref(), history, &merchant).await {
                tracing::warn!(error = %err, "event history trim failed");
            }
        }
    }
}

/// Keeps the newest `history` events of `merchant`.
async fn trim(
    db: &DatabaseConnection,
    outbox: Option<&dyn Outbox>,
    history: u64,
    merchant: &str,
) -> Result<()> {
    // Marks the outbox still holds back would keep fanned-out events from being trimmed.
    if let Some(outbox) = outbox
        && let Err(e) = outbox.flush().await
    {
        tracing::warn!(error = %e, "outbox marks not flushed before the history trim");
    }
    let cutoff = Events_::find()
        .select_only()
        .column(C::Id)
        .filter(C::MerchantId.eq(merchant))
        .order_by_desc(C::Id)
        .offset(history)
        .limit(1)
        .into_tuple::<Uuid>()
        .one(db)
        .await?;
    if let Some(cutoff) = cutoff {
        Events_::delete_many()
            .filter(C::MerchantId.eq(merchant))
            .filter(C::Id.lte(cutoff))
            // An event still waiting for its webhook fan-out stays until it is dispatched.
            .filter(C::WebhooksDispatchedAt.is_not_null())
            .exec(db)
            .await?;
    }
    Ok(())
}

impl Events {
    pub fn new(db: DatabaseConnection, bus: Arc<dyn EventBus>, history: usize) -> Self {
        Self {
            db,
            bus,
            history: history.max(1) as u64,
            emitted: std::sync::Mutex::default(),
            opened: AtomicU64::new(0),
            outbox: None,
            trims: std::sync::OnceLock::new(),
            writer: std::sync::OnceLock::new(),
        }
    }

    /// Sends every published event through `outbox` too (the webhook fan-out).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// How many subscriptions this process has opened since it started. A subscription receives
    /// every event published after it counted here (tests wait on this instead of sleeping).
    pub fn subscriptions_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Counts a subscription that listens through another's stream (a shared subscription,
    /// `graphql::shared`): live from now on.
    pub fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// The one entry point: validates, stores, publishes. Durable when it returns.
    ///
    /// On SQLite, events emitted together share one INSERT and one commit (group commit,
    /// [`BatchInserter`]). Each emit still returns only once its own row is committed, but a
    /// burst no longer has every emit wait its turn for SQLite's one write lock: at 1,000 events
    /// a second that took the webhook benchmark's delivery p99 from 17–36 ms to 10–14 ms. On
    /// PostgreSQL each emit stays one INSERT on its own connection: concurrent commits already
    /// share a WAL flush there, and a single writer made the emit wait for the batch ahead of it
    /// (p50 1.9 → 2.5 ms when it was tried). That INSERT also returns the counter the outbox
    /// asks for ([`Outbox::generation`]), so the webhook fan-out does not read it again.
    pub async fn emit(
        &self,
        kind: EventType,
        merchant: &MerchantId,
        payload: Value,
    ) -> Result<Event> {
        let e = new_event(kind, merchant, payload)?;
        let seen = if self.db.get_database_backend() == DbBackend::Sqlite {
            self.writer
                .get_or_init(|| BatchInserter::spawn(self.db.clone(), EMIT_BATCH, None, "events"))
                .insert(row(&e))
                .await?;
            None
        } else if let Some(name) = self.outbox.as_ref().and_then(|o| o.generation()) {
            store_seeing(&self.db, &e, name).await?
        } else {
            store(&self.db, &e).await?;
            None
        };
        self.hand_over(e.clone(), seen).await;
        Ok(e)
    }

    /// Counts one emit of `merchant`; true on every `trim_every(history)`-th.
    fn trim_due(&self, merchant: &str) -> bool {
        let mut emitted = self.emitted.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: past this many merchants the counts start over (each merchant then waits at
        // most one more round for its trim).
        if emitted.len() >= TRIM_COUNTED_MERCHANTS && !emitted.contains_key(merchant) {
            emitted.clear();
        }
        // The key is copied only for a merchant not counted yet, not on every emit.
        let n = match emitted.get_mut(merchant) {
            Some(n) => n,
            None => emitted.entry(merchant.to_owned()).or_insert(0),
        };
        *n += 1;
        if *n >= trim_every(self.history) {
            *n = 0;
            true
        } else {
            false
        }
    }

    /// Has `merchant`'s history trimmed in the background: an emit never waits for it (on
    /// PostgreSQL its DELETE could wait on the outbox's marks, and the emit with it).
    fn trim_later(&self, merchant: &str) {
        let due = self.trims.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(TRIM_QUEUE);
            tokio::spawn(trimmer(
                self.db.clone(),
                self.outbox.clone(),
                self.history,
                rx,
            ));
            tx
        });
        // Full: trims are already due, and this merchant's turn comes again.
        let _ = due.try_send(merchant.to_owned());
    }

    /// Hands a stored event to live subscribers and to the outbox. Failures are logged, not
    /// raised: the event is already in the history, where subscribers resume from, and an
    /// undispatched row is picked up by the outbox's sweeper.
    pub async fn publish(&self, event: Event) {
        self.hand_over(event, None).await;
    }

    /// [`Events::publish`], with the outbox's generation when the event's INSERT read it.
    async fn hand_over(&self, event: Event, seen: Option<SeenGeneration>) {
        // Every stored event counts towards its merchant's next trim, emitted here or recorded
        // in a domain's transaction and published after it.
        if self.trim_due(&event.merchant_id) {
            self.trim_later(&event.merchant_id);
        }
        let event = Arc::new(event);
        // The outbox first: handing over is immediate, while the bus may be a Redis round trip.
        if let Some(outbox) = &self.outbox
            && let Err(e) = outbox.dispatch(std::slice::from_ref(&*event), seen).await
        {
            tracing::warn!(error = %e, event = %event.id, "webhook fan-out deferred to the sweeper");
        }
        if let Err(e) = self.bus.publish(event.clone()).await {
            tracing::warn!(error = %e, "event stored but not published live");
        }
    }

    /// `recentEvents`: the history, newest first.
    pub async fn recent(
        &self,
        scope: &MerchantScope,
        types: &[EventType],
        page: &PageArgs,
    ) -> Result<Page<Event>> {
        let pager = page.newest_first(CURSOR_KIND)?;
        let cond = filter(scope, types);
        let rows = pager
            .fetch(&self.db, Events_::find().filter(cond), C::Id)
            .await?;
        rows.try_map(to_event)
    }

    pub fn cursor(e: &Event) -> String {
        encode_cursor(CURSOR_KIND, &e.id.to_string())
    }

    /// Whether some merchant's history may have lost events newer than `after`: it is full (a
    /// trim keeps the newest `history`) and its oldest event is newer than `after`. `after`
    /// itself being in the history proves nothing about other merchants, each trimmed on its
    /// own: a replay across merchants needs this too. (A merchant whose first `history` events
    /// all came after `after` counts as trimmed: the answer is then HISTORY_EXPIRED where a
    /// replay might have been whole, never a silent gap.)
    async fn trimmed_past(&self, after: Uuid) -> Result<bool> {
        use sea_orm::{
            ExprTrait, QuerySelect,
            sea_query::{Expr, Func},
        };
        let cap = i64::try_from(self.history).unwrap_or(i64::MAX);
        let full: Option<String> = Events_::find()
            .select_only()
            .column(C::MerchantId)
            .group_by(C::MerchantId)
            .having(Expr::expr(Func::min(Expr::col(C::Id))).gt(after))
            .having(Expr::expr(Func::count(Expr::col(C::Id))).gte(cap))
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(full.is_some())
    }

    /// The live stream for one subscriber: the history after `after` (when given), then every
    /// new event, filtered by scope and types. Ends with HISTORY_EXPIRED when `after` is no
    /// longer in the history, and with LAGGED when the subscriber fell a whole buffer behind.
    pub fn stream(
        self: &Arc<Self>,
        scope: MerchantScope,
        types: Vec<EventType>,
        after: Option<Uuid>,
    ) -> impl Stream<Item = Result<Arc<Event>>> + Send + 'static {
        let this = self.clone();
        // Listen before reading the history, so nothing published meanwhile is missed.
        let mut rx = self.bus.subscribe();
        self.opened.fetch_add(1, Ordering::Relaxed);
        async_stream::try_stream! {
            // Replayed events that may also arrive live (see `SEAM`), to drop their live copy.
            let mut replayed = std::collections::HashSet::new();
            if let Some(after) = after {
                let known = Events_::find()
                    .filter(C::Id.eq(after))
                    .filter(filter(&scope, &[]))
                    .count(&this.db)
                    .await?;
                if known == 0 || (scope.merchant().is_none() && this.trimmed_past(after).await?) {
                    Err(Error::HistoryExpired(
                        "`after` is older than the history holds (or not an event you can see); \
                         reload with recentEvents and subscribe without `after`"
                            .into(),
                    ))?;
                }
                let seam = chrono::Utc::now() - SEAM;
                let mut last = after;
                loop {
                    let rows = Events_::find()
                        .filter(filter(&scope, &types))
                        .filter(C::Id.gt(last))
                        .order_by_asc(C::Id)
                        .limit(REPLAY_PAGE)
                        .all(&this.db)
                        .await?;
                    let n = rows.len() as u64;
                    for row in rows {
                        let e = to_event(row)?;
                        last = e.id;
                        if e.occurred_at >= seam {
                            replayed.insert(e.id);
                        }
                        yield Arc::new(e);
                    }
                    if n < REPLAY_PAGE {
                        break;
                    }
                }
            }
            loop {
                match rx.recv().await {
                    Ok(Delivery::Gap(missed)) => {
                        let how_many = if missed == 0 {
                            "events".to_owned()
                        } else {
                            format!("{missed} events")
                        };
                        Err(Error::Lagged(format!(
                            "this instance may have missed {how_many} from the event bus; \
                             resubscribe with `after` set to the last event id you received"
                        )))?;
                    }
                    Ok(Delivery::Event(e)) => {
                        // Already replayed from the history (the seam), or not for this caller.
                        // Not by id order: events are published in commit order, and an id is
                        // taken before its transaction commits, so a later event may come first.
                        if (!replayed.is_empty() && replayed.remove(&e.id))
                            || !wanted(&scope, &types, &e)
                        {
                            continue;
                        }
                        // Shared, not copied: every subscriber holds the same event.
                        yield e;
                    }
                    Err(RecvError::Lagged(missed)) => {
                        Err(Error::Lagged(format!(
                            "this subscriber fell {missed} events behind and was cut off; \
                             resubscribe with `after` set to the last event id you received"
                        )))?;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trim_every;

    /// Short histories are trimmed every 32 emits; long ones every eighth of their length, so a
    /// trim's scan over the history costs each emit the same.
    #[test]
    fn trims_come_less_often_for_longer_histories() {
        assert_eq!(trim_every(3), 32);
        assert_eq!(trim_every(256), 32);
        assert_eq!(trim_every(1000), 125);
        assert_eq!(trim_every(100_000), 12_500);
    }
}
