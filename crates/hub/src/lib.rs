//! agentcom hub: a durable task queue that hands tasks to connected agents over WebSocket.
//!
//! [`run`] wires the pieces: the [`store`] (SQLite, or PostgreSQL shared by several hubs: a writer
//! for the core, a reader for the API),
//! the single-owner [`core`] thread, the axum [`http`] routes whose `/ws` hands each socket to a
//! [`ws`] task, the [`console`] (the dashboard at `/`), and the [`server`] that accepts
//! connections and bounds them.

pub mod auth;
pub mod authz;
pub mod clock;
pub mod config;
pub mod console;
pub mod core;
pub mod events;
pub mod feed;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod model;
pub mod paging;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhooks;
pub mod ws;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{HubConfig, Overrides};

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DB_FILE: &str = "hub.db";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0}")]
    Refused(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HubError {
    let context = context.into();
    move |cause| HubError::Io { context, cause }
}

/// The admin token: from the configuration, else `<data-dir>/admin.token`, else a new one
/// written there with mode 0600.
fn admin_token(cfg: &HubConfig) -> Result<String, HubError> {
    if let Some(t) = &cfg.admin_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => {
            Err(HubError::Refused(format!("{} is empty; delete it to generate a new admin token", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = auth::generate_token();
            osutil::fs::write_atomic_mode(&path, format!("{token}\n").as_bytes(), Some(0o600))
                .map_err(io(format!("cannot write {}", path.display())))?;
            tracing::info!(path = %path.display(), "generated a new admin token");
            Ok(token)
        }
        Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
    }
}

/// Path of the admin token file for a data dir (used by the CLI to find a default token).
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// The data dir is private (0700) and so are its files (0600): the database holds checkpoints,
/// which hold agents' conversations. An older, more open install is tightened, and says so.
fn private_data_dir(dir: &Path) -> Result<(), HubError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create data dir {}", dir.display())))?;
    let tighten = |p: &Path, mode: u32| -> Result<(), HubError> {
        let Ok(meta) = std::fs::metadata(p) else { return Ok(()) };
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("cannot make {} private", p.display())))?;
            tracing::warn!(path = %p.display(), mode = format!("{mode:o}"), "tightened permissions");
        }
        Ok(())
    };
    tighten(dir, 0o700)?;
    for name in [DB_FILE, "hub.db-wal", "hub.db-shm", ADMIN_TOKEN_FILE] {
        tighten(&dir.join(name), 0o600)?;
    }
    Ok(())
}

/// Refuses to start over a database that was lost: an empty `hub.db` beside an existing admin
/// token means the data (tasks, tokens) was truncated, not that this is a first start. Creates
/// the file 0600 on a real first start, so SQLite's WAL and shm files are private too.
fn check_database_file(dir: &Path) -> Result<PathBuf, HubError> {
    let db = dir.join(DB_FILE);
    let token = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::metadata(&db) {
        Ok(m) if m.len() == 0 && token.exists() => Err(HubError::Refused(format!(
            "{} is empty but {} exists: the hub's data (tasks, tokens, checkpoints) was lost or truncated. \
             Refusing to start an empty hub in its place. Restore {} from a backup, or remove both files \
             to start a new hub deliberately.",
            db.display(),
            token.display(),
            DB_FILE
        ))),
        Ok(_) => Ok(db),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if token.exists() {
                tracing::warn!(db = %db.display(), "no database beside an existing admin token; starting a new, empty one");
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db)
                .map_err(io(format!("cannot create {}", db.display())))?;
            Ok(db)
        }
        Err(e) => Err(io(format!("cannot read {}", db.display()))(e)),
    }
}

/// What runs the core: this hub's own (SQLite), or the lease keeper's (PostgreSQL).
enum Leadership {
    Single {
        core: core::CoreHandle,
        thread: std::thread::JoinHandle<()>,
        /// Kept so the role channel stays open for the hub's life.
        _tx: tokio::sync::watch::Sender<ha::Role>,
    },
    Shared {
        thread: std::thread::JoinHandle<()>,
    },
}

/// Runs the hub until `shutdown` is cancelled: stops accepting, closes sockets with 1001,
/// commits every pending write, then returns.
pub async fn run(cfg: HubConfig, shutdown: CancellationToken) -> Result<(), HubError> {
    run_reporting(cfg, shutdown, None).await
}

/// Like [`run`], and sends the bound address on `ready` once the hub accepts connections.
pub async fn run_reporting(
    cfg: HubConfig,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), HubError> {
    // Bind first: a hub that cannot listen must not touch the data dir (or mint a token).
    let listener = server::listen(&cfg.listen).await.map_err(io(format!("cannot listen on {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(io("cannot read the bound address"))?;
    let fd_limit = server::raise_nofile_limit();
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let bus = events::EventBus::new(clock::wall_ms(), cfg.events.window, cfg.events.reader_buffer);
    // Who serves: this hub alone on SQLite, or whichever hub leads on PostgreSQL.
    let keeper_stop = CancellationToken::new();
    let (role, leadership) = match cfg.ha.clone() {
        None => {
            private_data_dir(&cfg.data_dir)?;
            let db_path = check_database_file(&cfg.data_dir)?;
            let admin = admin_token(&cfg)?;
            let store = store::SqliteStore::open(&db_path)?;
            let reader: Arc<dyn store::Reader> = Arc::new(store.reader(cfg.net.reader_connections)?);
            let core = core::Core::new(
                store,
                clock::SystemClock,
                cfg.timings.clone(),
                cfg.limits.clone(),
                &admin,
                bus.clone(),
            )?;
            let open = core.open_task_count();
            let (handle, core_thread) = core::spawn(core);
            tracing::info!(data_dir = %cfg.data_dir.display(), open_tasks = open, "state loaded");
            let serving = ha::Serving { core: handle.clone(), reader, term: 0 };
            let (_tx, rx) = tokio::sync::watch::channel(ha::Role::Leader(serving));
            (rx, Leadership::Single { core: handle, thread: core_thread, _tx })
        }
        Some(mut h) => {
            if h.advertise_url.is_empty() {
                h.advertise_url = format!("{scheme}://{addr}");
            }
            let parts = ha::CoreParts {
                timings: cfg.timings.clone(),
                limits: cfg.limits.clone(),
                admin_token: cfg.admin_token.clone().unwrap_or_default(),
                bus: bus.clone(),
                reader_connections: cfg.net.reader_connections,
            };
            tracing::info!(database = %h.database.redacted(), sslmode = h.database.ssl_mode().name(), "storing in PostgreSQL");
            let (rx, thread) = ha::start(h, parts, keeper_stop.clone());
            (rx, Leadership::Shared { thread })
        }
    };

    let limits = server::ConnLimits::new(&cfg.net, fd_limit);
    tracing::info!(addr = %addr, url = %format!("{scheme}://{addr}"), max_connections = limits.max, "hub listening");
    if let Some(r) = ready {
        let _ = r.send(addr);
    }

    let tracker = TaskTracker::new();
    webhooks::spawn(cfg.webhooks.clone(), &bus, shutdown.clone(), &tracker);
    let state = http::AppState {
        role,
        timings: cfg.timings.clone(),
        limits: cfg.limits.clone(),
        net: cfg.net.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
        conns: limits.clone(),
        bus: bus.clone(),
        event_readers: feed::ReaderSlots::new(cfg.events.max_readers),
        election_wait: cfg.ha.as_ref().map_or(std::time::Duration::ZERO, |h| h.election_wait),
        console: Arc::new(console::Console::new(cfg.console.clone(), cfg.tls.is_some())),
    };
    let server = server::Server {
        listener,
        app: http::router(state),
        tls: cfg.tls.clone(),
        net: cfg.net.clone(),
        limits,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    server.run().await;
    // Sockets see the same token and close with 1001; wait for them to say goodbye.
    tracker.close();
    tracker.wait().await;
    match leadership {
        Leadership::Single { core, thread, _tx } => {
            core.send(core::Event::Shutdown).await;
            drop(core);
            drop(_tx);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Leadership::Shared { thread } => {
            keeper_stop.cancel();
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
    tracing::info!("hub stopped");
    Ok(())
}
