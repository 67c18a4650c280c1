//! The `smartbot` command line: serve | worker | migrate | schema | token.

use std::time::Duration;

use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};
use mimalloc::MiMalloc;
use smartbot::{
    Config,
    auth::{
        Role,
        token::{TokenKeys, load_or_create_secret},
    },
    config::LogFormat,
};

// glibc's malloc was about a third of the read path's CPU under load (issue 8 §5); mimalloc's
// per-thread free lists make the many small short-lived allocations of a request cheap.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "smartbot",
    version,
    about = "Smartbot backend: templates, media, jobs and events for a WhatsApp commerce bot"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve GraphQL, REST and WebSockets (the default), with the queue workers in-process.
    /// Migrates the database first.
    Serve {
        /// Do not run queue workers in this process (run `smartbot worker` elsewhere).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run queue workers only (no HTTP), so workers scale out to other machines.
    Worker {
        /// Comma-separated queues to work (default: all with a handler), e.g. media_processing.
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// Per-queue concurrency for this process, e.g. media_processing=4,message_sending=10.
        #[arg(long)]
        concurrency: Option<String>,
    },
    /// Run database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print the GraphQL SDL (the content of schema.graphql).
    Schema,
    /// Issue a bearer token signed with JWT_SECRET (or the generated secret under DATA_DIR).
    /// The token is printed alone on the last line.
    Token {
        /// admin, merchant or service.
        #[arg(long, value_enum)]
        role: Role,
        /// Required for merchant tokens: the merchant the token acts for.
        #[arg(long)]
        merchant_id: Option<String>,
        /// The token's subject (user id). Defaults to the role name.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime, e.g. 15m, 24h, 30d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum MigrateAction {
    /// Apply all pending migrations (the default).
    Up,
    /// Roll back the last migration.
    Down,
    /// List migrations and whether each is applied.
    Status,
}

/// Logs: JSON lines on stdout, or the pretty format on stderr (stdout then carries only what
/// the program prints: the admin token at first start). A `RUST_LOG` that does not parse stops
/// start-up naming it, as any other bad setting does.
fn init_tracing(format: LogFormat) -> Result<(), smartbot::error::Error> {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| smartbot::config::invalid("RUST_LOG", format!("{v:?}: {e}")))?,
        _ => EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn"),
    };
    match format {
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

fn main() {
    let command = Cli::parse()
        .command
        .unwrap_or(Command::Serve { no_workers: false });
    // tokio reads TOKIO_WORKER_THREADS itself and panics on a value it cannot use: checked
    // first, refused like any other bad setting.
    if let Some(v) = std::env::var_os("TOKIO_WORKER_THREADS")
        && v.to_str()
            .and_then(|v| v.parse::<usize>().ok())
            .is_none_or(|n| n < 1)
    {
        eprintln!("error: invalid TOKIO_WORKER_THREADS: {v:?} is not a whole number of at least 1");
        std::process::exit(1);
    }
    // The runtime's shape is picked from the command and the machine: `serve` takes every core
    // for its sockets, the rest one fewer (see `queue::worker::runtime` and `serve_runtime`).
    let runtime = match command {
        Command::Serve { .. } => smartbot::queue::worker::serve_runtime(),
        _ => smartbot::queue::worker::runtime(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(command)) {
        eprintln!("error: {}", e);
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<(), smartbot::error::Error> {
    if let Command::Schema = command {
        print!("{}", smartbot::graphql::sdl());
        return Ok(());
    }
    let config = Config::from_env()?;
    init_tracing(config.log_format)?;
    match command {
        Command::Schema => unreachable!("handled above"),
        Command::Serve { no_workers } => {
            let mut config = config;
            if no_workers {
                config.run_workers = false;
            }
            serve(config).await
        }
        Command::Worker {
            queues,
            concurrency,
        } => {
            let mut config = config;
            if let Some(c) = concurrency {
                config
                    .queue_concurrency
                    .extend(smartbot::config::parse_concurrency("--concurrency", &c)?);
            }
            let mut queues = queues
                .iter()
                .map(|q| q.parse())
                .collect::<Result<Vec<smartbot::queue::QueueName>, _>>()?;
            // A queue named twice is one queue (it started two pools, doubling its concurrency).
            queues.sort_by_key(|q| q.as_str());
            queues.dedup();
            worker(config, queues).await
        }
        Command::Migrate { action } => {
            // Taking turns with instances that are starting (and migrating) meanwhile.
            let lock = smartbot::db::startup_lock(&config).await?;
            let db = smartbot::db::connect(&config).await?;
            match action.unwrap_or(MigrateAction::Up) {
                MigrateAction::Up => Migrator::up(&db, None).await?,
                MigrateAction::Down => Migrator::down(&db, Some(1)).await?,
                MigrateAction::Status => {}
            }
            lock.release().await?;
            for m in Migrator::get_migration_with_status(&db).await? {
                println!("{:<40} {:?}", m.name(), m.status());
            }
            Ok(())
        }
        Command::Token {
            role,
            merchant_id,
            sub,
            ttl,
        } => {
            let (secret, _) =
                load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
            let keys = TokenKeys::new(&secret);
            let sub = sub.unwrap_or_else(|| role.as_str().to_owned());
            let token = keys.issue(&sub, role, merchant_id.as_deref(), ttl)?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> Result<(), smartbot::error::Error> {
    let listener = tokio::net::TcpListener::bind((config.bind_addr, config.port)).await?;
    let addr = listener.local_addr()?;
    let backend = if config.is_sqlite() {
        "sqlite"
    } else {
        "postgres"
    };
    let log_format = config.log_format;
    let smartbot::App { state, admin_token } = smartbot::build(config).await?;
    tracing::info!(%addr, database = backend, "smartbot listening");
    let port = addr.port();
    let banner = format!(
        "GraphiQL:   http://localhost:{port}/graphql\nPlayground: http://localhost:{port}/playground"
    );
    // The token is shown once, when the secret was just generated, and never through the log:
    // with JSON logs on stdout it goes to stderr, outside the log stream.
    let token = admin_token.map(|token| {
        format!(
            "Admin token (valid 24h; paste {{\"Authorization\": \"Bearer <token>\"}} into GraphiQL's Headers):\n{token}"
        )
    });
    match log_format {
        LogFormat::Pretty => {
            println!("{banner}");
            if let Some(t) = token {
                println!("{t}");
            }
        }
        LogFormat::Json => {
            if let Some(t) = token {
                eprintln!("{t}");
            }
        }
    }
    let workers = state
        .config
        .run_workers
        .then(|| smartbot::start_workers(&state, vec![]));
    let served = smartbot::serve_on(listener, state, smartbot::shutdown_signal()).await;
    if let Some(w) = workers {
        w.stop().await;
    }
    served
}

async fn worker(
    config: Config,
    queues: Vec<smartbot::queue::QueueName>,
) -> Result<(), smartbot::error::Error> {
    let smartbot::App { state, .. } = smartbot::build(config).await?;
    tracing::info!(
        backend = state.queue.backend().kind(),
        "smartbot worker running"
    );
    let workers = smartbot::start_workers(&state, queues);
    smartbot::shutdown_signal().await;
    workers.stop().await;
    Ok(())
}
