//! Smartbot's backend: config -> backends -> [`AppState`] -> Router.
//!
//! Backends are picked once, here, from [`Config`]; nothing else branches on them.

pub mod audit;
pub mod auth;
pub mod bots;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod input;
pub mod jobs;
pub mod media;
pub mod orders;
pub mod pagination;
pub mod products;
pub mod queue;
pub mod templates;
pub mod webhooks;
pub mod whatsapp;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::{
    auth::{Role, rate_limit::RateLimiter, token::TokenKeys},
    error::{Error, Result},
    graphql::AppSchema,
    queue::{
        JobQueue, QueueBackend, QueueName,
        worker::{WorkerConfig, Workers},
    },
};

/// Everything a request handler or resolver needs. Cheap to clone: it is cloned for every
/// request and middleware (axum's `State`), so every field is a shared handle, never a copy of
/// keys or tables.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub keys: Arc<TokenKeys>,
    pub rate_limiter: RateLimiter,
    pub queue: JobQueue,
    pub storage: Arc<dyn media::storage::Storage>,
    /// The decode budget and in-flight uploads, shared by every request and job of the process.
    pub media: Arc<media::MediaRuntime>,
    pub events: Arc<events::service::Events>,
    /// Encrypts secrets at rest (webhook secrets, merchants' WhatsApp credentials).
    pub cipher: Arc<crypto::Cipher>,
    /// The webhook delivery client, address policy and retry schedule.
    pub webhooks: Arc<webhooks::WebhookRuntime>,
    /// The WhatsApp Cloud API client and the platform number, picked at start-up.
    pub whatsapp: Arc<whatsapp::Outbound>,
    /// Serialized template reads, checked against the database's generation on every request.
    pub template_cache: Arc<templates::cache::ReadCache>,
    /// Live `events` subscriptions that ask the same thing share one execution.
    pub subscriptions: Arc<graphql::shared::Hubs>,
    /// The open WebSockets, which a shutdown closes with 1001.
    pub websockets: http::graphql::OpenSockets,
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
    // Before connecting: on SQLite, connecting changes the file too (its journal mode).
    let lock = db::startup_lock(&config).await?;
    let db = db::connect(&config).await?;
    db::migrate(&db).await?;
    if config.seed_templates {
        let n = templates::seed::seed_defaults(&db).await?;
        if n > 0 {
            tracing::info!(count = n, "seeded default templates");
        }
    }
    lock.release().await?;
    let (secret, generated) =
        auth::token::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let keys = TokenKeys::new(&secret);
    let cipher =
        crypto::Cipher::load_or_create(config.encryption_key.as_deref(), &config.data_dir)?;
    let admin_token = if generated {
        Some(keys.issue("admin", Role::Admin, None, ADMIN_TOKEN_TTL)?)
    } else {
        None
    };
    // With Redis the limit holds across instances; without, per process.
    let rate_limiter = match &config.redis_url {
        Some(url) => {
            RateLimiter::connect_redis(config.rate_limit, url, &config.redis_prefix).await?
        }
        None => RateLimiter::new(config.rate_limit),
    };
    let schema = graphql::build_schema(&config);
    let queue = JobQueue::new(queue_backend(&config, &db).await?);
    let storage = Arc::new(media::storage::LocalStorage::new(config.media_dir()));
    let media = Arc::new(media::MediaRuntime::new(config.media_decode_budget));
    let webhooks = Arc::new(webhooks::WebhookRuntime::new(&config)?);
    // The event row is the webhook outbox; publishing fans it out into delivery jobs.
    let outbox = webhooks::delivery::Dispatcher::new(db.clone(), queue.clone(), webhooks.clone());
    let events = Arc::new(
        events::service::Events::start(
            db.clone(),
            event_bus(&config).await?,
            config.event_history,
            config.event_buffer,
        )
        .await?
        .with_outbox(Arc::new(outbox)),
    );
    let whatsapp = Arc::new(whatsapp::Outbound::new(&config.whatsapp)?);
    Ok(App {
        state: AppState {
            template_cache: Arc::new(templates::cache::ReadCache::new(
                config.template_cache_bytes,
            )),
            subscriptions: graphql::shared::Hubs::new(config.event_buffer),
            websockets: Default::default(),
            whatsapp,
            queue,
            storage,
            media,
            events,
            cipher: Arc::new(cipher),
            webhooks,
            config: Arc::new(config),
            db,
            keys: Arc::new(keys),
            rate_limiter,
            schema,
        },
        admin_token,
    })
}

/// Redis when `REDIS_URL` is set, else the embedded SQL queue in the app database.
pub async fn queue_backend(
    config: &Config,
    db: &DatabaseConnection,
) -> Result<Arc<dyn QueueBackend>> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(queue::redis::RedisQueue::connect(url, &config.redis_prefix).await?),
        None => Arc::new(queue::sql::SqlQueue::new(
            db.clone(),
            config.queue_poll_interval,
        )),
    })
}

/// Redis pub/sub between instances when `REDIS_URL` is set, else in-process.
pub async fn event_bus(config: &Config) -> Result<Arc<dyn events::bus::EventBus>> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(
            events::bus::RedisBus::connect(url, &config.redis_prefix, config.event_buffer).await?,
        ),
        None => Arc::new(events::bus::LocalBus::new(config.event_buffer)),
    })
}

/// Worker settings from Config; `queues` empty means every queue with a handler.
pub fn worker_config(config: &Config, queues: Vec<QueueName>) -> WorkerConfig {
    WorkerConfig {
        queues,
        concurrency: config.queue_concurrency.clone(),
        lease: config.job_lease,
        stall_interval: (config.job_lease / 4).max(Duration::from_millis(250)),
        shutdown_grace: config.shutdown_grace,
        ..WorkerConfig::default()
    }
}

/// Starts this process's workers for `queues` (all with handlers when empty).
pub fn start_workers(state: &AppState, queues: Vec<QueueName>) -> Workers {
    let handlers = jobs::handlers(state);
    let mut config = worker_config(&state.config, queues);
    config.metrics = state.queue.metrics().clone();
    webhooks::delivery::spawn_sweeper(state);
    Workers::start(state.queue.backend().clone(), &handlers, config)
}

/// Serves on an already-bound listener until `shutdown` resolves, then drains in-flight requests.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    state.rate_limiter.spawn_janitor();
    webhooks::delivery::spawn_sweeper(&state);
    // Every serving instance sweeps; the conditional UPDATE makes exactly one emit per flip.
    let sweeper = state
        .config
        .bot_stale_after
        .map(|after| bots::spawn_sweeper(state.clone(), after));
    let read_timeout = state.config.http_read_timeout;
    let max_connections = http::serve::max_connections(state.config.http_max_connections);
    let websockets = state.websockets.clone();
    let app = http::router(state);
    // WebSockets close (1001) while in-flight requests drain.
    let closing = websockets.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close_all();
    };
    http::serve::serve(listener, app, read_timeout, max_connections, shutdown).await;
    websockets.closed().await;
    if let Some(s) = sweeper {
        s.abort();
    }
    Ok(())
}

/// A server running in the background (tests, examples), with its workers when
/// `config.run_workers` is set.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub admin_token: Option<String>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<()>>,
    workers: Option<Workers>,
}

impl RunningServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting, lets in-flight requests and jobs finish, and waits.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.state.webhooks.stop();
        if let Some(w) = self.workers {
            w.stop().await;
        }
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
    let workers = state
        .config
        .run_workers
        .then(|| start_workers(&state, vec![]));
    let handle = tokio::spawn(serve_on(listener, state.clone(), async move {
        token.cancelled().await
    }));
    Ok(RunningServer {
        addr,
        state,
        admin_token,
        shutdown,
        handle,
        workers,
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
