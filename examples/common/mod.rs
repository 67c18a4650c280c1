//! What the benchmarks share.

use sea_orm::ConnectionTrait;

/// A PostgreSQL database of one run's own, created beside the one `TEST_POSTGRES_URL` (or
/// `DATABASE_URL`) names and dropped by [`ScratchDb::drop`]. A run on a shared database
/// measures what earlier runs left behind (dead rows, bloated indexes), not this build.
pub struct ScratchDb {
    pub url: String,
    admin: sea_orm::DatabaseConnection,
    name: String,
}

impl ScratchDb {
    pub async fn create(prefix: &str) -> Self {
        let base = std::env::var("TEST_POSTGRES_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let (server, _) = base.rsplit_once('/').expect("a database URL");
        let name = format!("{prefix}_{}", std::process::id());
        let admin = sea_orm::Database::connect(&base).await.expect("postgres");
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: format!("{server}/{name}"),
            admin,
            name,
        }
    }

    /// Drops the database (once the servers using it have stopped).
    pub async fn drop(self) {
        if let Err(e) = self
            .admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
        {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

/// Deletes every Redis key under `prefix` (a run's own, so nothing else is touched): a run
/// that ends leaves nothing behind on a shared Redis, such as the completed jobs the queue
/// keeps for inspection.
#[allow(dead_code)] // Not every benchmark that shares this module uses Redis.
pub async fn drop_redis_prefix(url: &str, prefix: &str) {
    use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
    use futures::TryStreamExt;
    assert!(
        !prefix.is_empty() && !prefix.contains(['*', '?', '[', ']', '\\']),
        "a literal, non-empty prefix"
    );
    let client = Builder::from_config(Config::from_url(url).expect("a Redis URL"))
        .build()
        .expect("a Redis client");
    if let Err(e) = client.init().await {
        eprintln!("could not clean up {prefix}*: {e}");
        return;
    }
    let keys: Vec<fred::types::Key> = match client
        .scan_buffered(format!("{prefix}*"), Some(1000), None)
        .try_collect()
        .await
    {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("could not list {prefix}*: {e}");
            Vec::new()
        }
    };
    for chunk in keys.chunks(500) {
        if let Err(e) = client.unlink::<i64, _>(chunk.to_vec()).await {
            eprintln!("could not delete {prefix}*: {e}");
            break;
        }
    }
    let _ = client.quit().await;
}
