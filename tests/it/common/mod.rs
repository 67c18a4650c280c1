//! Black-box test harness: a real server on 127.0.0.1:0 with a fresh database per test.
//!
//! - SQLite tests get a file in their own temp dir. PostgreSQL tests get their own database on the
//!   server at `TEST_POSTGRES_URL`, dropped when the test ends. An unreachable server fails the
//!   test loudly; it never skips.
//! - The services in use are printed once per run. A developer without `TEST_POSTGRES_URL` /
//!   `TEST_REDIS_URL` gets the local defaults; under `CI` an unset URL is a failure.
//! - `TEST_LOG=1` shows the server's log (filter with `RUST_LOG`).
//! - Callers: `app.anonymous()`, `app.as_admin()`, `app.as_merchant("m-a")`, `app.as_service()`
//!   send GraphQL and REST with their token and have domain helpers (`create_template`, `upload`);
//!   the documents live in `docs`.
#![allow(dead_code)]

pub mod docs;
mod pg;
pub mod raw;

use std::{
    future::Future,
    io::Write,
    sync::{Once, OnceLock},
    time::{Duration, Instant},
};

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use smartbot::{Config, RunningServer, auth::Role};

pub use pg::PgDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

// ---- services --------------------------------------------------------------------------------

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// `CI` set to anything but empty, `0` or `false`.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

struct Services {
    postgres: String,
    redis: String,
}

/// The service URLs, decided and printed once. Under CI an unset variable panics (every time it
/// is asked for, so each test that needs it fails, never skips).
fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    let s = SERVICES.get_or_init(|| {
        let pick = |var: &str, default: &str| match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v, "from ".to_owned() + var),
            _ => (default.to_owned(), format!("{var} unset: local default")),
        };
        let (postgres, pg_from) = pick("TEST_POSTGRES_URL", DEFAULT_POSTGRES);
        let (redis, redis_from) = pick("TEST_REDIS_URL", DEFAULT_REDIS);
        // Straight to the stderr handle: the test harness captures eprintln!, not this.
        let _ = writeln!(
            std::io::stderr().lock(),
            "test services: PostgreSQL {postgres} ({pg_from}); Redis {redis} ({redis_from}){}",
            if in_ci() { "; CI" } else { "" }
        );
        Services { postgres, redis }
    });
    if in_ci() {
        for var in ["TEST_POSTGRES_URL", "TEST_REDIS_URL"] {
            if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
                panic!(
                    "CI is set but {var} is not: CI must name its services (scripts/test.sh exports \
                     both); refusing to fall back to a local default"
                );
            }
        }
    }
    s
}

pub fn postgres_base_url() -> String {
    services().postgres.clone()
}

pub fn redis_url() -> String {
    services().redis.clone()
}

/// `TEST_LOG=1`: the server's tracing output, through the test writer (shown for failed tests, or
/// live with `--nocapture`).
fn init_test_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")) {
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn",
                    )
                });
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

// ---- waiting ---------------------------------------------------------------------------------

/// How long `eventually` waits: generous, because this box is small and shared.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Ok`, and returns that value. `Err` carries what was seen last,
/// which the panic reports when the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= EVENTUALLY => {
                panic!("{what}: not so after {EVENTUALLY:?}; last seen: {last}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

// ---- the app ---------------------------------------------------------------------------------

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
        init_test_log();
        services();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::embedded(dir.path());
        config.bind_addr = [127, 0, 0, 1].into();
        config.port = 0;
        config.rate_limit = None;
        config.jwt_secret = Some("test-secret-test-secret-test-secret".into());
        config.shutdown_grace = Duration::from_secs(1);
        // No test reaches Meta: a call a test did not set up goes to a closed loopback port.
        config.whatsapp.api_base = "http://127.0.0.1:9".into();
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

    /// The server's data directory (SQLite file, uploads).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.server.state.config.data_dir
    }

    /// `GET target` over a raw socket, the target sent exactly as written (see `raw`).
    pub async fn raw_get(&self, target: &str) -> raw::RawResponse {
        raw::get(self.server.addr, target).await
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
        self.merchant_token(id)
    }

    pub fn merchant_token(&self, id: &str) -> String {
        self.token(Role::Merchant, Some(id))
    }

    pub fn anonymous(&self) -> Caller<'_> {
        Caller {
            app: self,
            token: None,
        }
    }

    pub fn as_admin(&self) -> Caller<'_> {
        self.as_token(self.admin.clone())
    }

    pub fn as_service(&self) -> Caller<'_> {
        self.as_token(self.token(Role::Service, None))
    }

    pub fn as_merchant(&self, id: &str) -> Caller<'_> {
        self.as_token(self.merchant_token(id))
    }

    pub fn as_token(&self, token: String) -> Caller<'_> {
        Caller {
            app: self,
            token: Some(token),
        }
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

    /// `createTemplate` as `token`; returns the created template.
    pub async fn create_template(&self, token: &str, input: Value) -> Value {
        self.as_token(token.to_owned()).create_template(input).await
    }

    /// `uploadMediaBase64` as `token`; returns the media row.
    pub async fn upload(&self, token: &str, png: &[u8], merchant_id: Option<&str>) -> Value {
        self.as_token(token.to_owned())
            .upload(png, merchant_id)
            .await
    }
}

/// One caller of the API: a token (or none) and the app it talks to.
pub struct Caller<'a> {
    pub app: &'a TestApp,
    pub token: Option<String>,
}

impl Caller<'_> {
    pub async fn gql(&self, query: &str, variables: Value) -> (StatusCode, Value) {
        self.app.gql(self.token.as_deref(), query, variables).await
    }

    pub async fn gql_ok(&self, query: &str, variables: Value) -> Value {
        self.app
            .gql_ok(self.token.as_deref(), query, variables)
            .await
    }

    /// The error code of a refused request; the whole body for messages.
    pub async fn gql_err(&self, query: &str, variables: Value) -> (String, Value) {
        self.app
            .gql_err(self.token.as_deref(), query, variables)
            .await
    }

    /// Just the error code.
    pub async fn gql_code(&self, query: &str, variables: Value) -> String {
        self.gql_err(query, variables).await.0
    }

    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.app
            .rest(method, path, self.token.as_deref(), body)
            .await
    }

    /// `createTemplate`; returns the created template (id, name, status, merchantId, ...).
    pub async fn create_template(&self, input: Value) -> Value {
        let data = self
            .gql_ok(docs::CREATE_TEMPLATE, json!({ "input": input }))
            .await;
        data["createTemplate"].clone()
    }

    /// A TEXT template named `name` with `status`; returns its id.
    pub async fn text_template(&self, name: &str, status: &str) -> String {
        let t = self
            .create_template(
                json!({ "name": name, "type": "TEXT", "body": format!("{name} body"), "status": status }),
            )
            .await;
        t["id"].as_str().expect("id").to_owned()
    }

    /// `template(id)` as this caller; `Err(code)` when refused.
    pub async fn template(&self, id: &str) -> Result<Value, String> {
        let (_, body) = self.gql(docs::TEMPLATE_BY_ID, json!({ "id": id })).await;
        match body["errors"][0]["extensions"]["code"].as_str() {
            Some(code) => Err(code.to_owned()),
            None => Ok(body["data"]["template"].clone()),
        }
    }

    /// The names `templates` lists for this caller.
    pub async fn template_names(&self) -> Vec<String> {
        let data = self.gql_ok(docs::TEMPLATE_NAMES, json!({})).await;
        data["templates"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `uploadMediaBase64` of a PNG; returns the media row.
    pub async fn upload(&self, png: &[u8], merchant_id: Option<&str>) -> Value {
        let data = self
            .gql_ok(
                docs::UPLOAD_MEDIA_BASE64,
                json!({ "i": {
                    "fileData": base64::engine::general_purpose::STANDARD.encode(png),
                    "fileName": "t.png",
                    "merchantId": merchant_id,
                }}),
            )
            .await;
        data["uploadMediaBase64"].clone()
    }
}

/// A small RGB PNG whose pixels depend on `seed`, so different seeds never dedupe.
/// The embedded defaults on 127.0.0.1:0 rooted at `dir`, for tests that start and stop servers
/// themselves on one data directory (restarts). No JWT secret: the server keeps its own in `dir`.
pub fn config_in(dir: &std::path::Path) -> Config {
    let mut c = Config::embedded(dir);
    c.bind_addr = [127, 0, 0, 1].into();
    c.port = 0;
    c.run_workers = false;
    c.shutdown_grace = Duration::from_secs(1);
    c
}

pub fn tiny_png(seed: u8) -> Vec<u8> {
    let (w, h) = (16u32, 16u32);
    let px: Vec<u8> = (0..w * h * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&px).unwrap();
    wr.finish().unwrap();
    out
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

/// Under CI an unset service URL fails the test that needs it, loudly; set, the same test passes.
/// Runs this test binary again, on one SQLite test, with the environment under test.
#[test]
fn ci_refuses_unset_service_urls() {
    let exe = std::env::current_exe().expect("test binary");
    let run = |urls: Option<(String, String)>| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "explorer::explorers_are_self_contained",
            "--test-threads=1",
        ])
        .env("CI", "true");
        match urls {
            Some((pg, redis)) => cmd
                .env("TEST_POSTGRES_URL", pg)
                .env("TEST_REDIS_URL", redis),
            None => cmd
                .env_remove("TEST_POSTGRES_URL")
                .env_remove("TEST_REDIS_URL"),
        };
        let out = cmd.output().expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text.into_owned())
    };
    let (ok, text) = run(None);
    assert!(!ok, "passed without service URLs under CI:\n{text}");
    assert!(
        text.contains("CI is set but TEST_POSTGRES_URL is not"),
        "{text}"
    );
    assert!(
        text.contains("1 failed"),
        "the test ran and failed, not skipped:\n{text}"
    );

    let (ok, text) = run(Some((DEFAULT_POSTGRES.into(), DEFAULT_REDIS.into())));
    assert!(ok, "failed with both URLs set:\n{text}");
    assert!(text.contains("1 passed"), "{text}");
    assert!(
        text.contains(&format!(
            "test services: PostgreSQL {DEFAULT_POSTGRES} (from TEST_POSTGRES_URL)"
        )),
        "the services in use are printed:\n{text}"
    );
}
