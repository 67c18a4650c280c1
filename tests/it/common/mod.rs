//! Black-box test harness: a real server on 127.0.0.1:0 with a fresh database per test.
//!
//! SQLite tests get a file in their own temp dir. PostgreSQL tests get their own database,
//! created on the server at `TEST_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/test)
//! and dropped when the test ends. An unreachable PostgreSQL fails the test loudly; it never skips.
#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use smartbot::{Config, RunningServer, auth::Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn postgres_base_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
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

/// A fresh PostgreSQL database for one test. Stale ones from crashed runs (older than an hour)
/// are dropped on the way.
pub struct PgDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        let admin_url = postgres_base_url();
        let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for this test but {admin_url} is unreachable ({e}). \
                 Run ./scripts/test.sh, which starts it, or set TEST_POSTGRES_URL."
            )
        });
        let now = chrono::Utc::now().timestamp();
        let name = format!("smartbot_t_{now}_{}", uuid::Uuid::new_v4().simple());
        let stale = admin
            .query_all_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                "SELECT datname FROM pg_database WHERE datname LIKE 'smartbot_t_%'",
            ))
            .await
            .unwrap_or_default();
        for row in stale {
            let Ok(db) = row.try_get::<String>("", "datname") else {
                continue;
            };
            let ts: i64 = db
                .split('_')
                .nth(2)
                .and_then(|t| t.parse().ok())
                .unwrap_or(now);
            if now - ts > 3600 {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .await;
            }
        }
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
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

pub struct TestApp {
    pub server: RunningServer,
    pub client: reqwest::Client,
    pub admin: String,
    pub db: Db,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    /// Spawns with the embedded defaults (rate limit off, fixed secret) after `tweak` adjusts them.
    pub async fn spawn_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::embedded(dir.path());
        config.bind_addr = [127, 0, 0, 1].into();
        config.port = 0;
        config.rate_limit = None;
        config.jwt_secret = Some("test-secret-test-secret-test-secret".into());
        config.shutdown_grace = Duration::from_secs(1);
        let pg = match db {
            Db::Sqlite => None,
            Db::Postgres => {
                let pg = PgDatabase::create().await;
                config.database_url = pg.url.clone();
                Some(pg)
            }
        };
        tweak(&mut config);
        let server = smartbot::spawn(config).await.expect("server starts");
        let admin = server
            .state
            .keys
            .issue("admin-1", Role::Admin, None, Duration::from_secs(3600))
            .unwrap();
        Self {
            server,
            client: reqwest::Client::new(),
            admin,
            db,
            _dir: dir,
            _pg: pg,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn token(&self, role: Role, merchant_id: Option<&str>) -> String {
        let sub = format!("{}-{}", role.as_str(), merchant_id.unwrap_or("x"));
        self.server
            .state
            .keys
            .issue(&sub, role, merchant_id, Duration::from_secs(3600))
            .unwrap()
    }

    pub fn merchant(&self, id: &str) -> String {
        self.token(Role::Merchant, Some(id))
    }

    /// POST /graphql; returns the status and the JSON body.
    pub async fn gql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json().await.expect("json body"))
    }

    /// POST /graphql and expect no errors; returns `data`.
    pub async fn gql_ok(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(token, query, variables).await;
        assert!(
            status.is_success() && body.get("errors").is_none(),
            "expected success, got {status}: {body:#}"
        );
        body["data"].clone()
    }

    /// POST /graphql and expect an error; returns the first error's `extensions.code`
    /// and the whole body.
    pub async fn gql_err(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (String, Value) {
        let (_, body) = self.gql(token, query, variables).await;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code, got {body:#}"))
            .to_owned();
        (code, body)
    }

    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Runs an `async fn(Db)` test case against SQLite and PostgreSQL, as two tests.
#[macro_export]
macro_rules! both_dbs {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Db::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::Db::Postgres).await
                }
            }
        )+
    };
}
