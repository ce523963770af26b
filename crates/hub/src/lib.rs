//! agentcom hub: a durable task queue that hands tasks to connected agents over WebSocket.
//!
//! [`run`] wires the pieces: the SQLite [`store`], the single-owner [`core`] thread, and the
//! axum [`http`] server whose `/ws` route hands each socket to a [`ws`] connection task.

pub mod auth;
pub mod config;
pub mod core;
pub mod http;
pub mod metrics;
pub mod model;
pub mod store;
pub mod tls;
pub mod ws;

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
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HubError {
    let context = context.into();
    move |source| HubError::Io { context, source }
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
        Ok(_) => Err(HubError::Io {
            context: format!("{} is empty; delete it to generate a new admin token", path.display()),
            source: std::io::ErrorKind::InvalidData.into(),
        }),
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

/// Lets one process hold many sockets: raise the soft open-files limit to the hard limit.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
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
    raise_nofile_limit();
    std::fs::create_dir_all(&cfg.data_dir).map_err(io(format!("cannot create data dir {}", cfg.data_dir.display())))?;
    let admin = admin_token(&cfg)?;
    let db_path = cfg.data_dir.join(DB_FILE);
    let store = store::SqliteStore::open(&db_path)?;
    let core = core::Core::new(store, cfg.timings.clone(), &admin)?;
    let open = core.open_task_count();
    let (handle, core_thread) = core::spawn(core);

    let listener =
        tokio::net::TcpListener::bind(&cfg.listen).await.map_err(io(format!("cannot listen on {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(io("cannot read the bound address"))?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %addr, url = %format!("{scheme}://{addr}"), data_dir = %cfg.data_dir.display(), open_tasks = open, "hub listening");
    if let Some(r) = ready {
        let _ = r.send(addr);
    }

    let tracker = TaskTracker::new();
    let state = http::AppState {
        core: handle.clone(),
        timings: cfg.timings.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let app = http::router(state);
    let stop = shutdown.clone().cancelled_owned();
    let served = match cfg.tls.clone() {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls, shutdown.clone());
            axum::serve(listener, app).with_graceful_shutdown(stop).await
        }
        None => {
            // Frames are small and latency matters: no Nagle delay.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(stop).await
        }
    };
    // Sockets see the same token and close with 1001; wait for them to say goodbye.
    tracker.close();
    tracker.wait().await;
    handle.send(core::Event::Shutdown);
    drop(handle);
    let _ = tokio::task::spawn_blocking(move || core_thread.join()).await;
    served.map_err(io("the HTTP server failed"))?;
    tracing::info!("hub stopped");
    Ok(())
}
