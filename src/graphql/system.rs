//! Small system fields: the server version, and a heartbeat subscription that lets clients
//! check their WebSocket end to end.

use std::time::Duration;

use async_graphql::{Object, Subscription};
use futures::Stream;

#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// The server's version.
    async fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

#[derive(Default)]
pub struct SystemSubscription;

#[Subscription]
impl SystemSubscription {
    /// Emits the server time every `intervalMs` milliseconds (100..=60000, default 1000).
    async fn heartbeat(
        &self,
        #[graphql(default = 1000, validator(minimum = 100, maximum = 60000))] interval_ms: u64,
    ) -> impl Stream<Item = chrono::DateTime<chrono::Utc>> {
        let every = Duration::from_millis(interval_ms);
        futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some((crate::db::now(), ()))
        })
    }
}
