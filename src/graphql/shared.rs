//! Shared subscriptions: one execution per distinct live `events` subscription.
//!
//! Ten thousand dashboards watching the same feed ask the same question. Run one by one, each
//! subscription listens to the bus, filters, resolves its selection set and builds a response for
//! every event, so one event costs ten thousand executions. [`SharedExecutor`] runs each distinct
//! live subscription once and hands its responses to every subscriber that asked the same thing.
//!
//! "The same thing" is the key of a [`Hub`]: the query text, the operation name, the variables,
//! and the caller's visibility class (one merchant, or admin and service, who see everything).
//! Resolvers of `Event` read nothing else of the caller, so two subscribers with one key get the
//! same responses.
//!
//! Shared are only subscriptions whose one root field is `events` without `after`. A replay from
//! the history is each subscriber's own; anything else runs as before. A subscriber reads the
//! shared stream through its own bounded buffer (`EVENT_BUFFER` responses): one that falls a
//! whole buffer behind is cut off with LAGGED, exactly as on its own stream, and resumes with
//! `after`. The hub stops when its last subscriber leaves.
//!
//! A shared response is serialized once, in the hub, and every subscriber's socket writes the
//! same JSON text inside its own protocol envelope ([`Payload::Shared`]): one event to ten
//! thousand subscribers is one serialization, not ten thousand copies and serializations.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use async_graphql::{
    PathSegment, Request, Response, Value,
    parser::types::{OperationType, Selection},
};
use futures::channel::mpsc;
use futures::{StreamExt, stream::BoxStream};
use tokio_util::sync::CancellationToken;

use super::{AppSchema, chosen_operation};
use crate::{
    auth::{Actor, RequestContext},
    error::Error,
    events::service::Events,
    templates::cache::Reader,
};

/// The bytes of shared responses one socket's operations may hold between them, written to
/// no one yet. A socket whose peer stops reading holds what arrives meanwhile; with a hundred
/// operations of a thousand 16 KB events each, that was over a gigabyte. The operation whose
/// next response would pass it is cut off with LAGGED, as one a whole buffer behind is.
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;

/// What one socket's operations hold in their buffers, in bytes (see [`SOCKET_BUFFER_BYTES`]).
#[derive(Debug, Default)]
pub struct SocketBudget {
    used: AtomicUsize,
}

impl SocketBudget {
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= SOCKET_BUFFER_BYTES)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now (tests, metrics).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The live subscriptions of one process, by key.
pub struct Hubs {
    map: Mutex<HashMap<HubKey, Weak<Hub>>>,
    /// Each subscriber's buffer, in responses.
    capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HubKey {
    reader: Reader,
    query: String,
    operation: Option<String>,
    variables: String,
}

/// One shared execution. Subscribers hold it; when the last one leaves it stops the execution.
struct Hub {
    /// Where the execution's task delivers (the task holds them too, not the hub).
    members: Arc<Mutex<Members>>,
    stop: CancellationToken,
    key: HubKey,
    hubs: Weak<Hubs>,
}

/// The subscribers of one execution, each with its own bounded buffer. A buffer is a `futures`
/// bounded channel, which allocates per queued response: an idle subscriber costs a couple of
/// hundred bytes, whatever `EVENT_BUFFER` allows.
#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// The execution ended: nobody joins any more.
    ended: bool,
}

struct Member {
    tx: mpsc::Sender<Arc<str>>,
    /// Set when the buffer overflowed and the subscriber was dropped from the list.
    lagged: Arc<AtomicBool>,
    /// Its socket's bytes held, which its buffer counts against.
    budget: Arc<SocketBudget>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(hubs) = self.hubs.upgrade() {
            let mut map = hubs.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.key);
            }
        }
    }
}

impl Hub {
    /// A new subscriber's buffer, or `None` when the execution has ended.
    fn join(
        &self,
        capacity: usize,
        budget: Arc<SocketBudget>,
    ) -> Option<(mpsc::Receiver<Arc<str>>, Arc<AtomicBool>)> {
        // A futures channel holds `buffer` + one per sender.
        let buffer = capacity.saturating_sub(1);
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if members.ended {
            return None;
        }
        let (tx, rx) = mpsc::channel(buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        members.list.push(Member {
            tx,
            lagged: lagged.clone(),
            budget,
        });
        Some((rx, lagged))
    }
}

impl Hubs {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::default(),
            capacity: capacity.max(1),
        })
    }

    /// How many shared executions are running (for tests and metrics).
    pub fn running(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One response of an operation on a WebSocket.
pub enum Payload {
    /// A shared execution's response, already serialized as JSON: the same text for every
    /// subscriber of the execution.
    Shared(Arc<str>),
    /// A response of this operation's own.
    Own(Box<Response>),
}

/// The WebSocket's executor: the schema, with live `events` subscriptions shared.
#[derive(Clone)]
pub struct SharedExecutor {
    pub schema: AppSchema,
    pub hubs: Arc<Hubs>,
    pub events: Arc<Events>,
}

impl SharedExecutor {
    /// Runs one operation of a socket whose `connection_init` gave `data`.
    pub fn execute_stream(
        &self,
        request: Request,
        data: Arc<async_graphql::Data>,
        budget: &Arc<SocketBudget>,
    ) -> BoxStream<'static, Payload> {
        let Some((key, field)) = shareable(&request, &data) else {
            return self
                .schema
                .execute_stream_with_session_data(request, data)
                .map(|r| Payload::Own(Box::new(r)))
                .boxed();
        };
        // The map's lock is never held while a hub may drop: its Drop takes the same lock.
        let live = self
            .hubs
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(Weak::upgrade);
        if let Some(hub) = live
            && let Some((rx, lagged)) = hub.join(self.hubs.capacity, budget.clone())
        {
            // Listening from now on, like a subscription of its own.
            self.events.count_opened();
            return member(hub, rx, lagged, budget.clone(), field);
        }
        let hub = Arc::new(Hub {
            members: Arc::default(),
            stop: CancellationToken::new(),
            key: key.clone(),
            hubs: Arc::downgrade(&self.hubs),
        });
        let (rx, lagged) = hub
            .join(self.hubs.capacity, budget.clone())
            .expect("a new execution has not ended");
        // Two first subscribers at once may both start one; the later entry wins, and the other
        // serves its own subscriber until it leaves.
        self.hubs
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::downgrade(&hub));
        let inner = self
            .schema
            .execute_stream_with_session_data(request, data)
            .boxed();
        tokio::spawn(run(inner, hub.members.clone(), hub.stop.clone()));
        member(hub, rx, lagged, budget.clone(), field)
    }
}

/// Drives one shared execution until it ends or its last subscriber leaves, handing each
/// response, serialized once, to every subscriber's buffer. A full buffer drops its subscriber
/// (LAGGED).
async fn run(
    mut inner: BoxStream<'static, Response>,
    members: Arc<Mutex<Members>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = inner.next() => match next {
                Some(resp) => {
                    // A `Response` always serializes (its maps have string keys); were it ever
                    // not to, the subscribers' streams end and they resubscribe with `after`.
                    let resp: Arc<str> = match serde_json::to_string(&resp) {
                        Ok(json) => json.into(),
                        Err(e) => {
                            tracing::error!(error = %e, "a shared subscription response did not serialize");
                            break;
                        }
                    };
                    let mut members = members.lock().unwrap_or_else(|e| e.into_inner());
                    let len = resp.len();
                    members.list.retain_mut(|m| {
                        if !m.budget.try_take(len) {
                            m.lagged.store(true, Ordering::Relaxed);
                            return false;
                        }
                        match m.tx.try_send(resp.clone()) {
                            Ok(()) => true,
                            Err(e) => {
                                m.budget.give(len);
                                if e.is_full() {
                                    m.lagged.store(true, Ordering::Relaxed);
                                }
                                false
                            }
                        }
                    });
                }
                None => break,
            },
        }
    }
    // Dropping the senders ends every subscriber's stream once it has read its buffer.
    let mut members = members.lock().unwrap_or_else(|e| e.into_inner());
    members.ended = true;
    members.list.clear();
}

/// Where the root field sits, for an error of this subscriber's own (LAGGED).
#[derive(Clone)]
struct RootField {
    key: String,
    pos: async_graphql::Pos,
}

/// One subscriber's view of a shared execution: its buffer, then LAGGED if it overflowed.
fn member(
    hub: Arc<Hub>,
    rx: mpsc::Receiver<Arc<str>>,
    lagged: Arc<AtomicBool>,
    budget: Arc<SocketBudget>,
    field: RootField,
) -> BoxStream<'static, Payload> {
    let capacity = hub.hubs.upgrade().map_or(0, |h| h.capacity);
    let mut buffer = Buffer { rx, budget };
    async_stream::stream! {
        let _hub = hub;
        while let Some(resp) = buffer.rx.next().await {
            buffer.budget.give(resp.len());
            yield Payload::Shared(resp);
        }
        if lagged.load(Ordering::Relaxed) {
            let err = Error::Lagged(format!(
                "this subscriber fell more than {capacity} events (or its socket more than \
                 {} MiB) behind and was cut off; resubscribe with `after` set to the last \
                 event id you received",
                SOCKET_BUFFER_BYTES >> 20
            ));
            let err = async_graphql::Error::from(err)
                .into_server_error(field.pos)
                .with_path(vec![PathSegment::Field(field.key.clone())]);
            yield Payload::Own(Box::new(Response::from_errors(vec![err])));
        }
    }
    .boxed()
}

/// A subscriber's buffer; what it still holds when the subscriber leaves goes back to its
/// socket's budget.
struct Buffer {
    rx: mpsc::Receiver<Arc<str>>,
    budget: Arc<SocketBudget>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(resp) = self.rx.try_recv() {
            self.budget.give(resp.len());
        }
    }
}

/// The hub key and root field of a request that may share an execution, or `None`.
fn shareable(request: &Request, data: &async_graphql::Data) -> Option<(HubKey, RootField)> {
    if !request.uploads.is_empty() || !request.extensions.0.is_empty() {
        return None;
    }
    let ctx = data
        .get(&std::any::TypeId::of::<RequestContext>())
        .and_then(|d| d.downcast_ref::<RequestContext>())?;
    if matches!(ctx.actor, Actor::Anonymous) {
        return None;
    }
    let doc = async_graphql::parser::parse_query(&request.query).ok()?;
    let op = chosen_operation(&doc, request.operation_name.as_deref())?;
    if op.node.ty != OperationType::Subscription {
        return None;
    }
    let [root] = op.node.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &root.node else {
        return None;
    };
    if field.node.name.node != "events" {
        return None;
    }
    // `after` replays the history: that part is each subscriber's own.
    let replays = field.node.get_argument("after").is_some_and(|v| {
        let after = v.node.clone().into_const_with(|name| {
            Ok::<_, std::convert::Infallible>(
                request.variables.get(&name).cloned().unwrap_or(Value::Null),
            )
        });
        !matches!(after, Ok(Value::Null))
    });
    if replays {
        return None;
    }
    let key = HubKey {
        reader: Reader::of(&ctx.actor),
        query: request.query.clone(),
        operation: request.operation_name.clone(),
        variables: serde_json::to_string(&request.variables).ok()?,
    };
    let root = RootField {
        key: field.node.response_key().node.to_string(),
        pos: field.pos,
    };
    Some((key, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sockets_buffers_share_one_bound_and_give_back_what_they_held() {
        let budget = Arc::new(SocketBudget::default());
        assert!(budget.try_take(SOCKET_BUFFER_BYTES - 10));
        assert!(!budget.try_take(11), "past the bound");
        assert!(budget.try_take(10));
        budget.give(SOCKET_BUFFER_BYTES);
        assert_eq!(budget.used(), 0);
        // A subscriber that leaves with responses still buffered gives their bytes back.
        let (mut tx, rx) = mpsc::channel::<Arc<str>>(4);
        for text in ["abc", "defgh"] {
            assert!(budget.try_take(text.len()));
            tx.try_send(Arc::from(text)).unwrap();
        }
        assert_eq!(budget.used(), 8);
        drop(Buffer {
            rx,
            budget: budget.clone(),
        });
        assert_eq!(budget.used(), 0);
    }
}
