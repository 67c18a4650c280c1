//! The GraphQL WebSocket protocols, `graphql-transport-ws` (graphql-ws) and the legacy
//! `graphql-ws` (subscriptions-transport-ws), as a stream of server messages.
//!
//! It follows async-graphql's own `http::WebSocket` message for message (the same client
//! messages, replies, close codes and texts), except where graphql-ws's protocol says otherwise
//! and async-graphql does not: a refused `connection_init` closes with 4403 (not 1002), a
//! `subscribe` before the acknowledgement with 4401, a second `subscribe` with a running id with
//! 4409, and an invalid message with 4400; and with one difference: an operation's responses are
//! [`Payload`]s, and a shared execution's response arrives already serialized. Its `next` (or
//! `data`) message is that text inside this operation's envelope, built by concatenation, so a
//! response fanned out to ten thousand sockets is serialized once, not ten thousand times.
//! [`crate::http::graphql::serve_ws`] wraps it with the socket rules (auth, limits, timeouts).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use async_graphql::{
    Data, Response,
    http::{ClientMessage, WebSocketProtocols},
};
use futures::{FutureExt, Stream, future::BoxFuture, stream::BoxStream};

use crate::graphql::shared::{Payload, SharedExecutor, SocketBudget};

/// A message from the server to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    /// An operation's `complete` message, with the id of the operation that ended.
    Complete {
        id: String,
        text: String,
    },
    Close(u16, String),
}

/// One running operation: its responses and the start of its envelope.
struct Operation {
    /// `{"type":"next","id":"…","payload":` (or `data` in the legacy protocol).
    prefix: String,
    responses: BoxStream<'static, Payload>,
    /// Whether a response went out yet: only the first can be a refusal of the request.
    started: bool,
}

type OnInit =
    Box<dyn FnOnce(serde_json::Value) -> BoxFuture<'static, async_graphql::Result<Data>> + Send>;

/// Where the connection is with `connection_init`.
enum Init {
    /// Not received yet: this checks it.
    Waiting(OnInit),
    /// Received, and its check is running.
    Checking(BoxFuture<'static, async_graphql::Result<Data>>),
    /// Accepted or refused; a second one is refused.
    Done,
}

/// The server side of one GraphQL WebSocket: client frames in, server messages out.
pub struct Session<S> {
    input: S,
    executor: SharedExecutor,
    protocol: WebSocketProtocols,
    init: Init,
    /// The connection's data, once `connection_init` was accepted.
    data: Option<Arc<Data>>,
    operations: HashMap<String, Operation>,
    closed: bool,
    /// The bytes its operations' buffers hold (see [`SocketBudget`]).
    budget: Arc<SocketBudget>,
    /// The client's frames are polled with a waker of their own, so the socket's task reads
    /// only when the client may have sent something, not at every response it sends.
    input_wake: Arc<InputWake>,
}

/// Whether the client's frames were woken since they were last polled, and the task to wake.
///
/// Ten thousand sockets that each send one shared response are ten thousand wake-ups of their
/// tasks. Polling the client's side at each of them (through the WebSocket's read half, its
/// lock, tungstenite's reader and the socket's readiness) was about a twelfth of the server's
/// CPU in a fan-out profile, for frames that had not arrived.
struct InputWake {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl Wake for InputWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> Session<S>
where
    S: Stream<Item = Vec<u8>> + Unpin,
{
    /// `on_init` checks the `connection_init` payload and gives the connection's data, or an
    /// error that refuses the connection.
    pub fn new<F, R>(
        executor: SharedExecutor,
        input: S,
        protocol: WebSocketProtocols,
        on_init: F,
    ) -> Self
    where
        F: FnOnce(serde_json::Value) -> R + Send + 'static,
        R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
    {
        // Woken to begin with: the first poll reads.
        let input_wake = Arc::new(InputWake {
            woken: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        Self {
            input,
            executor,
            protocol,
            init: Init::Waiting(Box::new(move |payload| on_init(payload).boxed())),
            data: None,
            operations: HashMap::new(),
            closed: false,
            budget: Arc::default(),
            input_wake,
        }
    }

    fn legacy(&self) -> bool {
        self.protocol == WebSocketProtocols::SubscriptionsTransportWS
    }

    /// Refuses the connection: the legacy protocol says so in a message, graphql-ws closes.
    fn refuse(&mut self, code: u16, message: String) -> WsMessage {
        self.closed = true;
        if self.legacy() {
            let payload = serde_json::json!({ "message": message });
            WsMessage::Text(format!(
                r#"{{"type":"connection_error","payload":{payload}}}"#
            ))
        } else {
            WsMessage::Close(code, message)
        }
    }

    /// Handles one client message; `Some` is the reply to send at once.
    fn receive(&mut self, message: ClientMessage) -> Option<WsMessage> {
        match message {
            ClientMessage::ConnectionInit { payload } => {
                match std::mem::replace(&mut self.init, Init::Done) {
                    Init::Waiting(on_init) => {
                        self.init = Init::Checking(on_init(payload.unwrap_or_default()));
                        None
                    }
                    // A second init ends the connection. (`Checking` cannot be seen here: the
                    // client's frames are not read while the check runs.)
                    Init::Checking(_) | Init::Done => {
                        Some(self.refuse(4429, "Too many initialisation requests.".into()))
                    }
                }
            }
            ClientMessage::Start { id, payload } => {
                let Some(data) = self.data.clone() else {
                    self.closed = true;
                    // graphql-ws: a subscribe before the acknowledgement is 4401 Unauthorized.
                    return Some(if self.legacy() {
                        WsMessage::Close(1011, "The handshake is not completed.".into())
                    } else {
                        WsMessage::Close(4401, "Unauthorized".into())
                    });
                };
                // graphql-ws: an id already running is 4409. (The legacy protocol's server
                // replaced the running operation, as this does.)
                if !self.legacy() && self.operations.contains_key(&id) {
                    self.closed = true;
                    return Some(WsMessage::Close(
                        4409,
                        format!("Subscriber for {id} already exists"),
                    ));
                }
                // The socket rules refuse this before it gets here; the parser must never see
                // a document that nests deeper than it can recurse.
                if let Err(e) = crate::graphql::check_document(&payload.query) {
                    let errors = e.graphql_body()["errors"].clone();
                    let payload = if self.legacy() {
                        errors[0].clone()
                    } else {
                        errors
                    };
                    return Some(WsMessage::Text(
                        serde_json::json!({ "type": "error", "id": id, "payload": payload })
                            .to_string(),
                    ));
                }
                let kind = if self.legacy() { "data" } else { "next" };
                let prefix = format!(
                    r#"{{"type":"{kind}","id":{},"payload":"#,
                    serde_json::Value::from(id.as_str())
                );
                let responses = self.executor.execute_stream(payload, data, &self.budget);
                self.operations.insert(
                    id,
                    Operation {
                        prefix,
                        responses,
                        started: false,
                    },
                );
                None
            }
            ClientMessage::Stop { id } => self.operations.remove(&id).map(|_| complete(id)),
            // The legacy protocol's way to hang up.
            ClientMessage::ConnectionTerminate => {
                self.closed = true;
                None
            }
            // Answered at once, as graphql-ws asks.
            ClientMessage::Ping { .. } => Some(WsMessage::Text(r#"{"type":"pong"}"#.into())),
            ClientMessage::Pong { .. } => None,
        }
    }
}

/// A close for a client message of the other protocol (`start` on graphql-transport-ws,
/// `subscribe` on the legacy graphql-ws); `None` for the socket's own messages and for frames
/// that do not parse (those get the parser's own error).
fn foreign_message(legacy: bool, frame: &[u8]) -> Option<WsMessage> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let kind = serde_json::from_slice::<Kind>(frame).ok()?.kind;
    let (own, code, name): (&[&str], u16, &str) = if legacy {
        (
            &[
                "connection_init",
                "start",
                "stop",
                "connection_terminate",
                "ping",
                "pong",
            ],
            1002,
            "graphql-ws",
        )
    } else {
        (
            &["connection_init", "subscribe", "complete", "ping", "pong"],
            4400,
            "graphql-transport-ws",
        )
    };
    (!own.contains(&kind.as_ref()))
        .then(|| WsMessage::Close(code, format!("`{kind}` is not a {name} message")))
}

/// Messages are written with `type` first, as async-graphql writes them.
fn complete(id: String) -> WsMessage {
    let text = format!(
        r#"{{"type":"complete","id":{}}}"#,
        serde_json::Value::from(id.as_str())
    );
    WsMessage::Complete { id, text }
}

/// An operation's response inside its envelope.
fn envelope(prefix: &str, payload: Payload) -> WsMessage {
    let own;
    let json = match &payload {
        Payload::Shared(json) => json.as_ref(),
        Payload::Own(response) => {
            own = serialize(response);
            own.as_str()
        }
    };
    let mut out = String::with_capacity(prefix.len() + json.len() + 1);
    out.push_str(prefix);
    out.push_str(json);
    out.push('}');
    WsMessage::Text(out)
}

/// The errors of a response that refuses the request itself: no data, and no error that
/// belongs to a field (a field's error has a path). Those are the parser's, the validation's
/// and the request checks'. A shared response is looked into only when it carries no data.
fn refusal(payload: &Payload) -> Option<serde_json::Value> {
    let refused = |errors: &[async_graphql::ServerError]| {
        !errors.is_empty() && errors.iter().all(|e| e.path.is_empty())
    };
    match payload {
        Payload::Own(response) => (response.data == async_graphql::Value::Null
            && refused(&response.errors))
        .then(|| serde_json::to_value(&response.errors).ok())
        .flatten(),
        Payload::Shared(json) if json.starts_with(r#"{"data":null,"#) => {
            let response: Response = serde_json::from_str(json).ok()?;
            refused(&response.errors)
                .then(|| serde_json::to_value(&response.errors).ok())
                .flatten()
        }
        Payload::Shared(_) => None,
    }
}

fn serialize(response: &Response) -> String {
    // A `Response` always serializes: its maps have string keys.
    serde_json::to_string(response).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a subscription response did not serialize");
        r#"{"data":null,"errors":[{"message":"the response could not be serialized"}]}"#.into()
    })
}

impl<S> Stream for Session<S>
where
    S: Stream<Item = Vec<u8>> + Unpin,
{
    type Item = WsMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WsMessage>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(None);
        }
        // Client messages first, until one needs an answer or the init check is pending; only
        // when the input was woken since it last said Pending. The task's waker is registered
        // before the flag is read, so a wake-up in between is not lost.
        this.input_wake.task.register(cx.waker());
        if !matches!(this.init, Init::Checking(_)) {
            // Cleared before each poll: a wake-up during or after it sets it again.
            while this.input_wake.woken.swap(false, Ordering::AcqRel) {
                // Made here, not kept: a socket's state is its memory while idle, and reads are
                // rare next to responses.
                let waker = Waker::from(this.input_wake.clone());
                let mut input_cx = Context::from_waker(&waker);
                let Poll::Ready(frame) = Pin::new(&mut this.input).poll_next(&mut input_cx) else {
                    break;
                };
                // More frames may be buffered: read again next time, whatever happens below.
                this.input_wake.woken.store(true, Ordering::Release);
                let Some(frame) = frame else {
                    return Poll::Ready(None);
                };
                // async-graphql reads both protocols' messages on either socket: each protocol
                // takes its own only.
                if let Some(refusal) = foreign_message(this.legacy(), &frame) {
                    this.closed = true;
                    return Poll::Ready(Some(refusal));
                }
                let message = match ClientMessage::from_bytes(&frame) {
                    Ok(message) => message,
                    Err(e) => {
                        this.closed = true;
                        // graphql-ws: an invalid or unknown message is 4400.
                        let code = if this.legacy() { 1002 } else { 4400 };
                        return Poll::Ready(Some(WsMessage::Close(code, e.to_string())));
                    }
                };
                if let Some(reply) = this.receive(message) {
                    return Poll::Ready(Some(reply));
                }
                if this.closed {
                    return Poll::Ready(None);
                }
                if matches!(this.init, Init::Checking(_)) {
                    break;
                }
            }
        }
        if let Init::Checking(init) = &mut this.init {
            let Poll::Ready(res) = init.poll_unpin(cx) else {
                return Poll::Pending;
            };
            this.init = Init::Done;
            return Poll::Ready(Some(match res {
                Ok(data) => {
                    this.data = Some(Arc::new(data));
                    WsMessage::Text(r#"{"type":"connection_ack"}"#.into())
                }
                Err(e) => this.refuse(super::graphql::CLOSE_FORBIDDEN, e.message),
            }));
        }
        let legacy = this.legacy();
        let mut ended = None;
        for (id, op) in &mut this.operations {
            match op.responses.as_mut().poll_next(cx) {
                Poll::Ready(Some(payload)) => {
                    // graphql-transport-ws: a request refused before it ran (it does not
                    // validate, or is not allowed to start) is one `error` message, with no
                    // `complete` after it, as the reference server sends it. The legacy
                    // protocol's server sent those as `data`, then `complete`.
                    if !std::mem::replace(&mut op.started, true)
                        && !legacy
                        && let Some(errors) = refusal(&payload)
                    {
                        ended = Some((id.clone(), Some(errors)));
                        break;
                    }
                    return Poll::Ready(Some(envelope(&op.prefix, payload)));
                }
                Poll::Ready(None) => {
                    ended = Some((id.clone(), None));
                    break;
                }
                Poll::Pending => {}
            }
        }
        if let Some((id, refused)) = ended {
            this.operations.remove(&id);
            return Poll::Ready(Some(match refused {
                None => complete(id),
                Some(errors) => {
                    let text = serde_json::json!({ "type": "error", "id": id, "payload": errors })
                        .to_string();
                    WsMessage::Complete { id, text }
                }
            }));
        }
        Poll::Pending
    }
}
