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
