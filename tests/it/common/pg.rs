//! One fresh PostgreSQL database per test, and the cleanup of databases left by crashed runs.
//!
//! Several runs may share one server (two worktrees, two CI jobs). A database is only dropped as
//! stale when all of these hold, so a live run's database is never dropped under it:
//! - its name says it was made more than an hour ago (`smartbot_t_<unix time>_<uuid>`);
//! - no session is connected to it (`pg_stat_activity`), and `DROP DATABASE` runs without FORCE,
//!   so a session that connects in between makes the drop fail instead;
//! - its advisory lock can be taken. Each live `PgDatabase` holds a session-level advisory lock on
//!   its name, taken before the database is created and kept on a dedicated connection until it is
//!   dropped. (Advisory locks are per database: every run takes them while connected to the
//!   database of `TEST_POSTGRES_URL`.)

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use super::postgres_base_url;

/// Older than this, and unlocked and unused, a `smartbot_t_*` database is a crashed run's.
const STALE_AFTER_SECS: i64 = 3600;

pub struct PgDatabase {
    pub url: String,
    name: String,
    admin_url: String,
    /// The session holding this database's advisory lock; closing it releases the lock.
    lock: Option<DatabaseConnection>,
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn try_lock(conn: &DatabaseConnection, name: &str) -> bool {
    let row = conn
        .query_one_raw(stmt(
            "SELECT pg_try_advisory_lock(hashtext('smartbot_t'), hashtext($1)) AS ok",
            vec![name.into()],
        ))
        .await
        .expect("pg_try_advisory_lock")
        .expect("one row");
    row.try_get::<bool>("", "ok").expect("bool")
}

async fn unlock(conn: &DatabaseConnection, name: &str) {
    let _ = conn
        .execute_raw(stmt(
            "SELECT pg_advisory_unlock(hashtext('smartbot_t'), hashtext($1))",
            vec![name.into()],
        ))
        .await;
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = base.rsplit_once('/').map(|(h, _)| h).unwrap_or(base);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Drops crashed runs' databases: old, unused and unlocked (see the module doc).
async fn drop_stale(conn: &DatabaseConnection, now: i64) {
    let rows = conn
        .query_all_raw(stmt(
            "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'smartbot\\_t\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            vec![],
        ))
        .await
        .unwrap_or_default();
    for row in rows {
        let Ok(db) = row.try_get::<String>("", "datname") else {
            continue;
        };
        let made: Option<i64> = db.split('_').nth(2).and_then(|t| t.parse().ok());
        let old = made.is_some_and(|t| now - t > STALE_AFTER_SECS);
        if !old || !try_lock(conn, &db).await {
            continue;
        }
        // No FORCE: a session that connected since the check above makes this fail.
        let _ = conn
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{db}\""))
            .await;
        unlock(conn, &db).await;
    }
}

impl PgDatabase {
    pub async fn create() -> Self {
        let admin_url = postgres_base_url();
        // One connection that never idles out: the advisory lock lives as long as it does.
        let mut opts = ConnectOptions::new(admin_url.clone());
        opts.max_connections(1)
            .min_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .sqlx_logging(false);
        let conn = Database::connect(opts).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for this test but {admin_url} is unreachable ({e}). \
                 Run ./scripts/test.sh, which starts it, or set TEST_POSTGRES_URL."
            )
        });
        let now = chrono::Utc::now().timestamp();
        let name = format!("smartbot_t_{now}_{}", uuid::Uuid::new_v4().simple());
        assert!(try_lock(&conn, &name).await, "fresh name {name} is locked");
        drop_stale(&conn, now).await;
        conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            lock: Some(conn),
        }
    }

    /// The database's name (`smartbot_t_<unix time>_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Closing the session releases the lock. Dropped here, in the test's runtime.
        drop(self.lock.take());
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async: use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let admin = Database::connect(&admin_url).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::eventually;

    async fn session(url: &str) -> DatabaseConnection {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        Database::connect(opts).await.expect("connect")
    }

    async fn exists(conn: &DatabaseConnection, name: &str) -> bool {
        let sql = "SELECT 1 AS one FROM pg_database WHERE datname = $1";
        let row = conn.query_one_raw(stmt(sql, vec![name.into()])).await;
        row.expect("query").is_some()
    }

    /// Two runs on one server: the cleanup drops an old, unused, unlocked database, and spares
    /// one whose lock a live run holds and one a session is connected to.
    #[tokio::test]
    async fn stale_cleanup_spares_live_databases() {
        let url = postgres_base_url();
        let (cleaner, holder) = (session(&url).await, session(&url).await);
        let now = chrono::Utc::now().timestamp();
        let old = now - 2 * STALE_AFTER_SECS;
        let name = |what: &str| format!("smartbot_t_{old}_{what}{}", uuid::Uuid::new_v4().simple());
        let (locked, connected, abandoned) = (name("l"), name("c"), name("a"));
        // Locked before creation, as the harness does, so no other test's cleanup races us.
        for db in [&locked, &connected, &abandoned] {
            assert!(try_lock(&holder, db).await);
            holder
                .execute_unprepared(&format!("CREATE DATABASE \"{db}\""))
                .await
                .unwrap();
        }
        let user = session(&with_database(&url, &connected)).await;
        user.execute_unprepared("SELECT 1").await.unwrap();
        unlock(&holder, &connected).await;
        unlock(&holder, &abandoned).await;

        // Another test's cleanup may hold the abandoned one's lock at this moment (and drop it
        // itself): it goes, by this cleanup or by that one.
        let (c, gone) = (&cleaner, abandoned.as_str());
        eventually("the abandoned one is dropped", move || async move {
            drop_stale(c, now).await;
            if exists(c, gone).await {
                Err("still there".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        assert!(
            exists(&cleaner, &locked).await,
            "a locked database was dropped"
        );
        assert!(
            exists(&cleaner, &connected).await,
            "a database in use was dropped"
        );

        // Released, they are stale too.
        unlock(&holder, &locked).await;
        user.close().await.unwrap();
        let (cleaner, dbs) = (&cleaner, [locked.as_str(), connected.as_str()]);
        eventually("released databases are cleaned up", move || async move {
            drop_stale(cleaner, now).await;
            let mut left = Vec::new();
            for db in dbs {
                if exists(cleaner, db).await {
                    left.push(db);
                }
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        })
        .await;
    }
}
