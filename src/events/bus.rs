//! The event bus: one trait, two backends, picked once at start-up.
//!
//! * [`LocalBus`]: a tokio broadcast channel, for one process (the embedded default).
//! * [`RedisBus`]: Redis pub/sub between instances. An event is published only to Redis, and
//!   every instance (the publisher included) receives it once from its own subscriber connection
//!   and hands it to its local broadcast: each subscriber on each instance sees it exactly once.
//!
//! The bus is the live path only. The history in the database is the durable one: an event is
//! stored before it is published, and a subscriber that missed something (a lag, a reconnect, a
//! Redis outage) resumes from the history with `after`.
//!
//! The bus carries events in the order they were published. Its one listener per instance is the
//! `Events` service's sequencer, which puts them back in commit order before subscribers see
//! them (`events::service`).

use std::sync::Arc;

use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::{Builder, Config as RedisConfig, ReconnectPolicy},
};
use tokio::sync::broadcast;

use super::Event;
use crate::error::{Error, Result};

/// What the bus hands to each local subscriber.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Event>),
    /// This instance lost events on their way from Redis (its subscription fell behind, or
    /// its connection dropped): a subscriber cannot know which, so it ends with LAGGED and
    /// resumes from the history. How many, when known (0: unknown).
    Gap(u64),
}

#[async_trait::async_trait]
pub trait EventBus: Send + Sync {
    /// Hands a stored event to the subscribers on every instance.
    async fn publish(&self, event: Arc<Event>) -> Result<()>;
    /// A receiver of every event published from now on (on any instance).
    fn subscribe(&self) -> broadcast::Receiver<Delivery>;
    /// `local` or `redis`, for /ready and the logs.
    fn backend(&self) -> &'static str;
}

/// In-process fan-out.
pub struct LocalBus {
    tx: broadcast::Sender<Delivery>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: Arc<Event>) -> Result<()> {
        // No receiver is not an error: nobody is listening right now.
        let _ = self.tx.send(Delivery::Event(event));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}

/// Fan-out between instances over Redis pub/sub.
pub struct RedisBus {
    publisher: Client,
    _subscriber: SubscriberClient,
    channel: String,
    tx: broadcast::Sender<Delivery>,
}

/// The JSON on the wire between instances: the envelope, with the type's seed name.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: super::EventType,
    merchant_id: String,
    occurred_at: chrono::DateTime<chrono::Utc>,
    payload: serde_json::Value,
    seq: i64,
}

impl RedisBus {
    pub async fn connect(url: &str, prefix: &str, capacity: usize) -> Result<Self> {
        let config = RedisConfig::from_url(url)
            .map_err(|e| Error::validation("REDIS_URL", format!("invalid REDIS_URL: {e}")))?;
        let builder = {
            let mut b = Builder::from_config(config);
            b.with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(5);
            })
            .with_performance_config(|p| {
                // fred's buffer between its connection and our forwarding task (default 32).
                p.broadcast_channel_capacity = capacity.max(32);
                // A publish to a Redis that is down fails instead of waiting for it to return
                // (the event is already in the history; subscribers resume from it).
                p.default_command_timeout = crate::queue::redis::COMMAND_TIMEOUT;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2));
            b
        };
        let publisher = builder.build().map_err(redis)?;
        let subscriber = builder.build_subscriber_client().map_err(redis)?;
        publisher.init().await.map_err(redis)?;
        subscriber.init().await.map_err(redis)?;
        // Re-subscribes by itself after a reconnect.
        drop(subscriber.manage_subscriptions());
        let channel = format!("{prefix}events");
        let (tx, _) = broadcast::channel(capacity.max(1));
        tokio::spawn(forward(subscriber.message_rx(), tx.clone(), |msg| {
            msg.value.as_str().map(|text| text.into_owned())
        }));
        // Pub/sub keeps nothing for a subscriber that is away: whatever was published while the
        // connection was down is lost, so a reconnect is a gap of unknown size.
        let mut reconnects = subscriber.reconnect_rx();
        let gap = tx.clone();
        tokio::spawn(async move {
            while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = reconnects.recv().await
            {
                tracing::warn!(
                    "event bus reconnected to Redis; live subscribers resume from the history"
                );
                let _ = gap.send(Delivery::Gap(0));
            }
        });
        subscriber
            .subscribe(channel.as_str())
            .await
            .map_err(redis)?;
        Ok(Self {
            publisher,
            _subscriber: subscriber,
            channel,
            tx,
        })
    }
}

/// Hands what arrives from Redis to this instance's subscribers. When fred's own buffer
/// overflowed, events were lost on the way: the subscribers are told (a [`Delivery::Gap`]), never
/// left to miss them silently.
async fn forward<M: Clone>(
    mut messages: broadcast::Receiver<M>,
    to: broadcast::Sender<Delivery>,
    text: impl Fn(M) -> Option<String>,
) {
    loop {
        match messages.recv().await {
            Ok(msg) => {
                let Some(text) = text(msg) else { continue };
                match serde_json::from_str::<Wire>(&text) {
                    Ok(w) => {
                        let _ = to.send(Delivery::Event(Arc::new(Event {
                            id: w.id,
                            kind: w.kind,
                            merchant_id: w.merchant_id,
                            occurred_at: w.occurred_at,
                            payload: w.payload,
                            seq: w.seq,
                        })));
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable event on the bus"),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "event bus subscriber lagged; live subscribers resume from the history"
                );
                let _ = to.send(Delivery::Gap(n));
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

fn redis(e: fred::error::Error) -> Error {
    Error::redis("the event bus", &e)
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: Arc<Event>) -> Result<()> {
        let wire = Wire {
            id: event.id,
            kind: event.kind,
            merchant_id: event.merchant_id.clone(),
            occurred_at: event.occurred_at,
            payload: event.payload.clone(),
            seq: event.seq,
        };
        let text = serde_json::to_string(&wire).map_err(Error::internal)?;
        let _: i64 = self
            .publisher
            .publish(self.channel.as_str(), text)
            .await
            .map_err(redis)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(n: u32) -> String {
        serde_json::json!({
            "id": uuid::Uuid::now_v7(), "type": "bot_connected", "merchant_id": "m",
            "occurred_at": crate::db::now(), "payload": { "n": n }, "seq": n,
        })
        .to_string()
    }

    /// Messages lost in the Redis client's buffer reach subscribers as a gap, in their place:
    /// never a silent skip.
    #[tokio::test]
    async fn a_lagging_redis_subscription_is_reported_as_a_gap() {
        let (from_redis, messages) = broadcast::channel::<String>(2);
        let (to, mut subscriber) = broadcast::channel(16);
        for n in 0..5 {
            from_redis.send(wire(n)).unwrap();
        }
        drop(from_redis);
        forward(messages, to, Some).await;
        let mut got = vec![];
        while let Ok(d) = subscriber.try_recv() {
            got.push(match d {
                Delivery::Event(e) => format!("event {}", e.payload["n"]),
                Delivery::Gap(n) => format!("gap {n}"),
            });
        }
        assert_eq!(got, ["gap 3", "event 3", "event 4"]);
    }
}
