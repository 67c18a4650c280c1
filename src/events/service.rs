//! Emitting, replaying and paging events. Every domain emits through [`Events::emit`] (or
//! [`record`] inside its own transaction, then [`Events::publish`] after commit); nothing else
//! writes the `events` table or touches the bus.
//!
//! Emit stores first and publishes second: when it returns the event is durable, and a
//! subscriber that missed the live copy finds it in the history.
//!
//! Every stored event has a position, `seq`, numbered in commit order without gaps (migration
//! 000011). Live subscribers get events in that order: the bus carries them in the order they
//! were published, which is not always the order they committed, so a [`Sequencer`] holds back
//! an event until the ones before it have come (or reads them from the history when they do not
//! come soon). A subscription with `after` listens *before* it reads the history, replays in
//! `seq` order, then skips live events at or before the last one replayed: the seam between
//! history and live has no gap and no duplicate, and "everything after the last event I got" is
//! exact even when emits overlap.
//!
//! The event row is also the webhook outbox: `record` leaves `webhooks_dispatched_at` NULL, and
//! `publish` hands the event to the [`Outbox`] (webhook fan-out), which marks it dispatched. A
//! crash in between leaves it for the outbox's sweeper; see `webhooks::delivery`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use futures::Stream;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::{
    Event, EventType,
    bus::{Delivery, EventBus},
    validate_payload,
};
use crate::{
    auth::{MerchantId, MerchantScope, scope::Scoped as _},
    db::{BatchWriter, SeenGeneration},
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
/// How long the [`Sequencer`] waits for a missing position before it reads it from the history.
/// Events published out of commit order arrive within a few milliseconds of each other; a
/// position that takes longer was not published (its emitter failed after the commit, or the
/// bus lost it), and the history has it.
const REORDER_WAIT: Duration = Duration::from_millis(20);
/// How long the [`Sequencer`] waits with nothing on the bus before it looks in the history for
/// events committed but never published (their emitter failed after the commit, the bus refused
/// them), which no later event would reveal as missing.
const QUIET_POLL: Duration = Duration::from_millis(250);

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
    /// The rows of [`Events::emit`], written in shared commits; started on first use. Each
    /// write answers its event's position, and the outbox's generation as its INSERT saw it.
    writer: std::sync::OnceLock<BatchWriter<Event, (i64, Option<SeenGeneration>)>>,
    /// Live events in commit order, from the [`Sequencer`]: what subscribers listen to. Its
    /// capacity is each subscriber's bounded buffer.
    ordered: broadcast::Sender<Delivery>,
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
        seq: m.seq.unwrap_or_default(),
    })
}

/// Validates and stores an event in the caller's transaction. Publish it after the commit.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    kind: EventType,
    merchant: &MerchantId,
    payload: Value,
) -> Result<Event> {
    let mut e = new_event(kind, merchant, payload)?;
    let (seqs, _) = insert_events(db, std::slice::from_ref(&e), None).await?;
    e.seq = seqs[0];
    Ok(e)
}

/// One INSERT of `events`; answers each one's position (`seq`), in order, and when `generation`
/// names a `cache_generations` counter, that counter as the INSERT's snapshot saw it: a value
/// committed no later than the INSERT began.
///
/// The position is taken by the INSERT itself, under the database's write serialization (see
/// migration 000011): on SQLite as `MAX(seq) + k` for the statement's k-th row, in the write
/// lock; on PostgreSQL by the table's trigger, under its advisory lock.
pub(crate) async fn insert_events<Db: ConnectionTrait>(
    db: &Db,
    events: &[Event],
    generation: Option<&str>,
) -> Result<(Vec<i64>, Option<SeenGeneration>)> {
    use sea_orm::{
        ActiveModelTrait, EntityName,
        sea_query::{Expr, Query},
    };
    const COLUMNS: [C; 5] = [
        C::Id,
        C::EventType,
        C::MerchantId,
        C::Payload,
        C::OccurredAt,
    ];
    let sqlite = db.get_database_backend() == DbBackend::Sqlite;
    let mut columns = COLUMNS.to_vec();
    if sqlite {
        columns.push(C::Seq);
    }
    let mut insert = Query::insert();
    insert.into_table(Events_.table_ref()).columns(columns);
    for (k, e) in events.iter().enumerate() {
        let am = row(e);
        let mut values: Vec<Expr> = COLUMNS
            .iter()
            .map(|&c| Expr::val(am.get(c).into_value().expect("every column is set")))
            .collect();
        if sqlite {
            values.push(Expr::cust(format!(
                r#"(SELECT COALESCE(MAX("seq"), 0) FROM "events") + {}"#,
                k + 1
            )));
        }
        insert.values_panic(values);
    }
    let mut returning = vec![Expr::col(C::Id), Expr::col(C::Seq)];
    if let Some(name) = generation {
        returning.push(crate::db::generation_query(name).into());
    }
    insert.returning(Query::returning().exprs(returning));
    let read_from = std::time::Instant::now();
    let rows = db.query_all(&insert).await?;
    let mut seen = None;
    let mut by_id = HashMap::with_capacity(rows.len());
    for r in rows {
        let id: Uuid = r.try_get_by_index(0)?;
        let seq: i64 = r.try_get_by_index(1)?;
        if generation.is_some() {
            seen = r
                .try_get_by_index::<Option<i64>>(2)?
                .map(|value| SeenGeneration { value, read_from });
        }
        by_id.insert(id, seq);
    }
    let seqs = events
        .iter()
        .map(|e| {
            by_id
                .get(&e.id)
                .copied()
                .ok_or_else(|| Error::Internal("an event's INSERT returned no position".into()))
        })
        .collect::<Result<_>>()?;
    Ok((seqs, seen))
}

/// A new event, its payload validated.
fn new_event(kind: EventType, merchant: &MerchantId, mut payload: Value) -> Result<Event> {
    super::normalize_payload(kind, &mut payload);
    validate_payload(kind, &payload)?;
    Ok(Event {
        id: Uuid::now_v7(),
        kind,
        merchant_id: merchant.as_str().to_owned(),
        occurred_at: crate::db::now(),
        payload,
        seq: 0,
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
        // Taken by the INSERT (`insert_events`).
        seq: sea_orm::ActiveValue::NotSet,
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
        .column(C::Seq)
        .filter(C::MerchantId.eq(merchant))
        .order_by_desc(C::Seq)
        .offset(history)
        .limit(1)
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    // An event still waiting for its webhook fan-out stays until it is dispatched, and so does
    // every event after it: a trim deletes only the oldest events, never one with older events
    // left before it. A resume relies on that: `after` still held means nothing after it has
    // gone. (Deleting the events around a kept one left an island of old events before a hole,
    // and a resume from the island skipped the hole without a word.)
    let waiting: Option<i64> = Events_::find()
        .select_only()
        .expr(sea_orm::sea_query::Func::min(
            sea_orm::sea_query::Expr::col(C::Seq),
        ))
        .filter(C::MerchantId.eq(merchant))
        .filter(C::WebhooksDispatchedAt.is_null())
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let cutoff = match waiting {
        Some(first) => cutoff.min(first - 1),
        None => cutoff,
    };
    Events_::delete_many()
        .filter(C::MerchantId.eq(merchant))
        .filter(C::Seq.lte(cutoff))
        .exec(db)
        .await?;
    Ok(())
}

impl Events {
    /// The service, its [`Sequencer`] started: it listens to the bus from now on, and releases
    /// the events committed after the newest one stored now. `buffer`: each subscriber's
    /// bounded buffer, in events.
    pub async fn start(
        db: DatabaseConnection,
        bus: Arc<dyn EventBus>,
        history: usize,
        buffer: usize,
    ) -> Result<Self> {
        let raw = bus.subscribe();
        let newest = newest_seq(&db).await?;
        let (ordered, _) = broadcast::channel(buffer.max(1));
        tokio::spawn(
            Sequencer {
                db: db.clone(),
                out: ordered.clone(),
                next: newest + 1,
                held: BTreeMap::new(),
                most_held: buffer.max(1),
            }
            .run(raw),
        );
        Ok(Self {
            db,
            bus,
            history: history.max(1) as u64,
            emitted: std::sync::Mutex::default(),
            opened: AtomicU64::new(0),
            outbox: None,
            trims: std::sync::OnceLock::new(),
            writer: std::sync::OnceLock::new(),
            ordered,
        })
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
    /// Events emitted together share one INSERT and one commit (group commit, [`BatchWriter`]).
    /// Each emit still returns only once its own row is committed, but a burst no longer has
    /// every emit wait its turn for the write lock: SQLite's one writer, and on PostgreSQL the
    /// event lock that keeps positions in commit order (migration 000011), held from an event's
    /// INSERT to its commit. On SQLite that took the webhook benchmark's delivery p99 at 1,000
    /// events a second from 17–36 ms to 10–14 ms; on PostgreSQL, where one INSERT per emit had
    /// every emit commit in turn, see the README's emit figures. On PostgreSQL the INSERT also
    /// returns the counter the outbox asks for ([`Outbox::generation`]), so the webhook fan-out
    /// does not read it again.
    pub async fn emit(
        self: &Arc<Self>,
        kind: EventType,
        merchant: &MerchantId,
        payload: Value,
    ) -> Result<Event> {
        let e = new_event(kind, merchant, payload)?;
        // Written and handed over on a task of its own: a caller that goes away meanwhile (an
        // HTTP client that timed out) does not leave the event stored but never published.
        let this = self.clone();
        tokio::spawn(async move { this.store(e).await })
            .await
            .map_err(|e| Error::Internal(format!("the emit task failed: {e}")))?
    }

    async fn store(&self, mut e: Event) -> Result<Event> {
        let (seq, seen) = self
            .writer
            .get_or_init(|| {
                // Read in the INSERT on PostgreSQL; on SQLite the outbox reads it itself.
                let generation = match self.db.get_database_backend() {
                    DbBackend::Sqlite => None,
                    _ => self.outbox.as_ref().and_then(|o| o.generation()),
                };
                BatchWriter::spawn_with(
                    self.db.clone(),
                    EMIT_BATCH,
                    None,
                    "events",
                    Box::new(move |db, rows| {
                        Box::pin(async move {
                            let (seqs, seen) = insert_events(&db, &rows, generation).await?;
                            Ok(seqs.into_iter().map(|seq| (seq, seen)).collect())
                        })
                    }),
                )
            })
            .write(e.clone())
            .await?;
        e.seq = seq;
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
    ///
    /// Handed over on a task of its own, so a caller that goes away while it waits does not
    /// leave the event unpublished (the [`Sequencer`] would still find it in the history, later).
    pub async fn publish(self: &Arc<Self>, event: Event) {
        let this = self.clone();
        let _ = tokio::spawn(async move { this.hand_over(event, None).await }).await;
    }

    /// [`Events::publish`], with the outbox's generation when the event's INSERT read it.
    async fn hand_over(&self, event: Event, seen: Option<SeenGeneration>) {
        // Every stored event counts towards its merchant's next trim, emitted here or recorded
        // in a domain's transaction and published after it.
        if self.trim_due(&event.merchant_id) {
            self.trim_later(&event.merchant_id);
        }
        let event = Arc::new(event);
        // The outbox is handed over before this returns; the bus publish is not waited for.
        if let Some(outbox) = &self.outbox
            && let Err(e) = outbox.dispatch(std::slice::from_ref(&*event), seen).await
        {
            tracing::warn!(error = %e, event = %event.id, "webhook fan-out deferred to the sweeper");
        }
        // Not waited for: the event is stored, and the sequencers deliver it from the history
        // if the bus fails, so an emit does not wait out a hung Redis's command timeout (5 s).
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish(event).await {
                tracing::warn!(error = %e, "event stored but not published live");
            }
        });
    }

    /// `recentEvents`: the history, newest first.
    pub async fn recent(
        &self,
        scope: &MerchantScope,
        types: &[EventType],
        page: &PageArgs,
    ) -> Result<Page<Event>> {
        let pager = page.newest_first(CURSOR_KIND)?;
        // The cursor is the event's id, not its position: positions count every merchant's
        // events, and a merchant's cursors would tell how many the others had in between.
        let after = match pager.after()? {
            Some(cursor) => {
                let id = Uuid::parse_str(&cursor)
                    .map_err(|_| Error::validation("after", "after is not a valid cursor"))?;
                Some(self.position_of(scope, id).await?.ok_or_else(|| {
                    Error::HistoryExpired(
                        "the page's `after` event is no longer in the history; start again \
                         from the first page"
                            .into(),
                    )
                })?)
            }
            None => None,
        };
        let cond = filter(scope, types);
        let rows = pager
            .fetch_after(&self.db, Events_::find().filter(cond), C::Seq, after)
            .await?;
        rows.try_map(to_event)
    }

    /// `recentEvents` pages in commit order, the order subscribers get events in: the newest
    /// event a page shows is a resume point that replays exactly what came after it.
    pub fn cursor(e: &Event) -> String {
        encode_cursor(CURSOR_KIND, &e.id.to_string())
    }

    /// The position to replay after for a resume after event `after`, or HISTORY_EXPIRED when
    /// the history no longer holds it (or it is not the caller's), or, across merchants, some
    /// merchant's history was trimmed past it.
    async fn resumable(&self, scope: &MerchantScope, after: Uuid) -> Result<i64> {
        let from = self.position_of(scope, after).await?.ok_or_else(expired)?;
        if scope.merchant().is_none() && self.trimmed_past(from).await? {
            return Err(expired());
        }
        Ok(from)
    }

    /// The position of event `id`, if `scope` may see it and the history still holds it.
    async fn position_of(&self, scope: &MerchantScope, id: Uuid) -> Result<Option<i64>> {
        Ok(Events_::find()
            .select_only()
            .column(C::Seq)
            .filter(C::Id.eq(id))
            .filter(filter(scope, &[]))
            .into_tuple::<Option<i64>>()
            .one(&self.db)
            .await?
            .flatten())
    }

    /// Whether some merchant's history may have lost events newer than `after`: it is full (a
    /// trim keeps the newest `history`) and its oldest event is newer than `after`. `after`
    /// itself being in the history proves nothing about other merchants, each trimmed on its
    /// own: a replay across merchants needs this too. (A merchant whose first `history` events
    /// all came after `after` counts as trimmed: the answer is then HISTORY_EXPIRED where a
    /// replay might have been whole, never a silent gap.)
    async fn trimmed_past(&self, after: i64) -> Result<bool> {
        use sea_orm::{
            ExprTrait, QuerySelect,
            sea_query::{Expr, Func},
        };
        let cap = i64::try_from(self.history).unwrap_or(i64::MAX);
        let full: Option<String> = Events_::find()
            .select_only()
            .column(C::MerchantId)
            .group_by(C::MerchantId)
            .having(Expr::expr(Func::min(Expr::col(C::Seq))).gt(after))
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
        let mut rx = self.ordered.subscribe();
        self.opened.fetch_add(1, Ordering::Relaxed);
        async_stream::try_stream! {
            // The newest position delivered: live events at or before it were replayed.
            let mut last = 0;
            if let Some(after) = after {
                // Held at all; whether other histories were trimmed past it is checked with
                // each page below, after its read (a check before it would only be repeated).
                last = this.position_of(&scope, after).await?.ok_or_else(expired)?;
                loop {
                    let rows = Events_::find()
                        .filter(filter(&scope, &types))
                        .filter(C::Seq.gt(last))
                        .order_by_asc(C::Seq)
                        .limit(REPLAY_PAGE)
                        .all(&this.db)
                        .await?;
                    // A trim before this read may have deleted events after `after`. A trim
                    // deletes a merchant's oldest events, so while `after` (and across
                    // merchants, every history past it) is still held after the read, none
                    // after it had gone: checked before the page goes out, so a client never
                    // gets a replay with a hole in it.
                    this.resumable(&scope, after).await?;
                    let n = rows.len() as u64;
                    for row in rows {
                        let e = to_event(row)?;
                        last = e.seq;
                        yield Arc::new(e);
                    }
                    if n < REPLAY_PAGE {
                        break;
                    }
                }
            }
            loop {
                match rx.recv().await {
                    // No counts in these messages: they count every merchant's events.
                    Ok(Delivery::Gap(_)) => {
                        Err(Error::Lagged(
                            "this instance may have missed events from the event bus; \
                             resubscribe with `after` set to the last event id you received"
                                .into(),
                        ))?;
                    }
                    Ok(Delivery::Event(e)) => {
                        // Live events come in commit order: those at or before `last` were
                        // replayed from the history (the seam).
                        if e.seq <= last || !wanted(&scope, &types, &e) {
                            continue;
                        }
                        last = e.seq;
                        // Shared, not copied: every subscriber holds the same event.
                        yield e;
                    }
                    Err(RecvError::Lagged(_)) => {
                        Err(Error::Lagged(
                            "this subscriber fell a whole buffer behind and was cut off; \
                             resubscribe with `after` set to the last event id you received"
                                .into(),
                        ))?;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }
}

fn expired() -> Error {
    Error::HistoryExpired(
        "`after` is older than the history holds (or not an event you can see); \
         reload with recentEvents and subscribe without `after`"
            .into(),
    )
}

/// The newest position stored (0 when there is none).
async fn newest_seq(db: &DatabaseConnection) -> Result<i64> {
    use sea_orm::sea_query::{Expr, Func};
    let newest: Option<Option<i64>> = Events_::find()
        .select_only()
        .expr(Func::max(Expr::col(C::Seq)))
        .into_tuple()
        .one(db)
        .await?;
    Ok(newest.flatten().unwrap_or(0))
}

/// Puts live events back in commit order. The bus delivers them in the order they were
/// published, and two emits that overlap may publish in the other order from the one they
/// committed in. Positions are numbered without gaps, so the sequencer knows exactly which one
/// it is waiting for: it holds later events back until it comes, and when it does not come
/// within [`REORDER_WAIT`] (its emitter failed after the commit, the bus lost it, or another
/// process without a shared bus stored it) it reads it from the history, where a later
/// position being committed proves it is. An event lost that way with nothing after it shows
/// no gap: when the bus has been quiet for [`QUIET_POLL`], the sequencer looks in the history
/// for anything committed past what it released.
struct Sequencer {
    db: DatabaseConnection,
    out: broadcast::Sender<Delivery>,
    /// The position released next.
    next: i64,
    /// Events that came before their turn, by position.
    held: BTreeMap<i64, Arc<Event>>,
    /// Held events at most: past this the missing ones are read from the history at once.
    most_held: usize,
}

impl Sequencer {
    async fn run(mut self, mut raw: broadcast::Receiver<Delivery>) {
        use tokio::time::Instant;
        let mut deadline: Option<Instant> = None;
        let mut quiet_until = Instant::now() + QUIET_POLL;
        loop {
            let wake = deadline.map_or(quiet_until, |d| d.min(quiet_until));
            match tokio::time::timeout_at(wake, raw.recv()).await {
                Ok(Ok(Delivery::Event(e))) => {
                    if e.seq >= self.next {
                        self.held.insert(e.seq, e);
                    }
                    self.release();
                    if self.held.len() > self.most_held {
                        self.fill().await;
                    }
                }
                // Lost on the way: subscribers end with LAGGED and resume from the history.
                Ok(Ok(Delivery::Gap(n))) | Ok(Err(RecvError::Lagged(n))) => {
                    let _ = self.out.send(Delivery::Gap(n));
                }
                Ok(Err(RecvError::Closed)) => break,
                // The wait for a missing position ran out.
                Err(_) if deadline.is_some_and(|d| d <= Instant::now()) => self.fill().await,
                // Nothing on the bus for a while.
                Err(_) => self.poll().await,
            }
            let now = Instant::now();
            quiet_until = now + QUIET_POLL;
            deadline = match deadline {
                _ if self.held.is_empty() => None,
                Some(at) if at > now => Some(at),
                _ => Some(now + REORDER_WAIT),
            };
        }
    }

    /// Hands over the held events whose turn it is.
    fn release(&mut self) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let e = entry.remove();
            if e.seq == self.next {
                self.next += 1;
                let _ = self.out.send(Delivery::Event(e));
            }
        }
    }

    /// Reads the missing positions below the first held event from the history and hands them
    /// over, then the held ones. A position the history does not have was trimmed: there is
    /// nothing left to wait for. When the history cannot be read, subscribers are told they
    /// missed events (LAGGED) and resume from it.
    async fn fill(&mut self) {
        let Some(&upto) = self.held.keys().next() else {
            return;
        };
        if let Err(err) = self.read_history(Some(upto)).await {
            tracing::warn!(error = %err, "missing live events not read from the history");
            let _ = self.out.send(Delivery::Gap(0));
        }
        self.next = self.next.max(upto);
        self.release();
    }

    /// Hands over what the history holds from the next position on: events committed and never
    /// published. Nothing is known to be missing, so a failed read is only logged.
    async fn poll(&mut self) {
        if let Err(err) = self.read_history(None).await {
            tracing::debug!(error = %err, "the event history could not be polled");
        }
        self.release();
    }

    /// Hands over the stored events from the next position on, up to `upto` (excluded).
    async fn read_history(&mut self, upto: Option<i64>) -> Result<()> {
        loop {
            let mut q = Events_::find().filter(C::Seq.gte(self.next));
            if let Some(upto) = upto {
                q = q.filter(C::Seq.lt(upto));
            }
            let rows = q
                .order_by_asc(C::Seq)
                .limit(REPLAY_PAGE)
                .all(&self.db)
                .await?;
            let n = rows.len() as u64;
            for e in rows.into_iter().filter_map(|r| to_event(r).ok()) {
                self.next = e.seq + 1;
                let _ = self.out.send(Delivery::Event(Arc::new(e)));
            }
            if n < REPLAY_PAGE {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trim_every;

    /// A trim deletes only the oldest events: one still waiting for its webhook fan-out keeps
    /// itself and every event after it, never an island of old events before a hole.
    #[tokio::test]
    async fn a_trim_deletes_only_the_oldest_events() {
        use super::{C, Events_, record, trim};
        use crate::{auth::MerchantId, events::EventType};
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&crate::config::Config::embedded(dir.path()))
            .await
            .unwrap();
        crate::db::migrate(&db).await.unwrap();
        let m = MerchantId::parse("m", "m-trim").unwrap();
        let mut ids = Vec::new();
        for _ in 0..10 {
            let e = record(&db, EventType::BotConnected, &m, serde_json::json!({}))
                .await
                .unwrap();
            ids.push(e.id);
        }
        let dispatch = |except: Option<uuid::Uuid>| {
            let db = db.clone();
            async move {
                let mut q = Events_::update_many()
                    .col_expr(C::WebhooksDispatchedAt, Expr::value(crate::db::now()));
                if let Some(id) = except {
                    q = q.filter(C::Id.ne(id));
                }
                q.exec(&db).await.unwrap();
            }
        };
        let kept = || {
            let db = db.clone();
            async move {
                Events_::find()
                    .filter(C::MerchantId.eq("m-trim"))
                    .order_by_asc(C::Seq)
                    .all(&db)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        // Every event dispatched but the third.
        dispatch(Some(ids[2])).await;
        trim(&db, None, 3, "m-trim").await.unwrap();
        assert_eq!(
            kept().await,
            ids[2..],
            "only the two before the waiting one go"
        );
        // Once it is dispatched, the next trim keeps the newest three.
        dispatch(None).await;
        trim(&db, None, 3, "m-trim").await.unwrap();
        assert_eq!(kept().await, ids[7..]);
    }

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
