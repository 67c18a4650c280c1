//! The database connection: SQLite (embedded default) or PostgreSQL, chosen once from Config.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::{
    config::Config,
    error::{Error, Result},
};

/// Connects, creating the SQLite file and its directory when needed.
pub async fn connect(config: &Config) -> Result<DatabaseConnection> {
    let url = &config.database_url;
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(Error::validation(
            "DATABASE_URL",
            "DATABASE_URL must start with sqlite: or postgres://",
        ));
    }
    if config.is_sqlite() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(config.database_max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if config.is_sqlite() {
        opts.map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            // WAL lets readers run beside the single writer; writers wait instead of failing.
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    let db = Database::connect(opts)
        .await
        .map_err(|e| Error::Internal(format!("cannot connect to the database: {e}")))?;
    Ok(db)
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    Migrator::up(db, None).await?;
    Ok(())
}

/// A cheap round trip, for /ready.
pub async fn ping(db: &DatabaseConnection) -> Result<()> {
    db.ping()
        .await
        .map_err(|e| Error::Internal(format!("database: {e}")))
}

/// Starts a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: it takes the write
/// lock up front (waiting up to the busy timeout), because a deferred transaction that reads and
/// then writes cannot wait for the lock and fails with "database is locked". PostgreSQL ignores
/// the mode.
pub async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}
