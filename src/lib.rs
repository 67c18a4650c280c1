//! Smartbot's backend: config -> backends -> [`AppState`] -> Router.
//!
//! Backends are picked once, here, from [`Config`]; nothing else branches on them.

pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod graphql;
pub mod http;
pub mod pagination;
pub mod templates;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::{
    auth::{Role, rate_limit::RateLimiter, token::TokenKeys},
    error::{Error, Result},
    graphql::AppSchema,
};

/// Everything a request handler or resolver needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub keys: TokenKeys,
    pub rate_limiter: RateLimiter,
    schema: AppSchema,
}

impl AppState {
    pub fn schema(&self) -> &AppSchema {
        &self.schema
    }
}

/// A built application: state plus the admin token to print when the secret was generated.
pub struct App {
    pub state: AppState,
    pub admin_token: Option<String>,
}

/// How long the printed admin token lives.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Connects to the database, migrates, seeds, and assembles the state.
pub async fn build(config: Config) -> Result<App> {
    let db = db::connect(&config).await?;
    db::migrate(&db).await?;
    if config.seed_templates {
        let n = templates::seed::seed_defaults(&db).await?;
        if n > 0 {
            tracing::info!(count = n, "seeded default templates");
        }
    }
    let (secret, generated) =
        auth::token::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let keys = TokenKeys::new(&secret);
    let admin_token = if generated {
        Some(keys.issue("admin", Role::Admin, None, ADMIN_TOKEN_TTL)?)
    } else {
        None
    };
    let rate_limiter = RateLimiter::new(config.rate_limit);
    let schema = graphql::build_schema(&config);
    Ok(App {
        state: AppState {
            config: Arc::new(config),
            db,
            keys,
            rate_limiter,
            schema,
        },
        admin_token,
    })
}

/// Serves on an already-bound listener until `shutdown` resolves, then drains in-flight requests.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    state.rate_limiter.spawn_janitor();
    let app = http::router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(Error::from)
}

/// A server running in the background (tests, examples).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub admin_token: Option<String>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.handle.await.map_err(Error::internal)?
    }
}

/// Builds the app and serves it on `config.bind_addr:config.port` in the background.
pub async fn spawn(config: Config) -> Result<RunningServer> {
    let listener = TcpListener::bind((config.bind_addr, config.port)).await?;
    let addr = listener.local_addr()?;
    let App { state, admin_token } = build(config).await?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(serve_on(listener, state.clone(), async move {
        token.cancelled().await
    }));
    Ok(RunningServer {
        addr,
        state,
        admin_token,
        shutdown,
        handle,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
