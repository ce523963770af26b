//! agentcom sidecar: sits beside one AI agent, holds its WebSocket to the hub, and carries each
//! task from `task_assign` to `task_complete` so that no crash, restart or network cut loses or
//! duplicates it.
//!
//! [`run`] starts three pieces: the [`conn`] task (the socket), a file watcher on the results
//! dir, and the [`executor`], which runs the [`machine`] (the pure state machine that owns the
//! active task) and carries out its actions.

pub mod config;
pub mod conn;
pub mod executor;
pub mod files;
pub mod local;
pub mod machine;
pub mod question;
pub mod queue;
pub mod task;
pub mod usage;
pub mod wake;
pub mod watch;
pub mod workspace;
pub mod wrap;

use notify::Watcher;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::SidecarConfig;

/// What the sidecar knows of whatever supervises it. The binary fills it in from the supervisor
/// crate, so the sidecar never depends on a daemon crate.
#[derive(Clone)]
pub struct Host {
    /// "native", "pm2", "systemd" or "none", for logs and for the hub.
    pub kind: &'static str,
    /// Whether exiting hands the restart to a supervisor (without one, exiting stops the agent).
    pub restarts_us: bool,
    /// Our process numbers as the supervisor sees them. Blocking: it may ask the supervisor.
    pub process_info: Arc<dyn Fn() -> proto::ProcessInfo + Send + Sync>,
}

impl Host {
    /// No supervisor: a restart command is refused, and our numbers are our own.
    pub fn unsupervised() -> Host {
        Host {
            kind: "none",
            restarts_us: false,
            process_info: Arc::new(|| {
                let me = std::process::id() as i32;
                proto::ProcessInfo {
                    supervisor: Some("none".into()),
                    status: Some("online".into()),
                    uptime_ms: osutil::procfs::uptime_ms(me),
                    memory_bytes: osutil::procfs::rss_bytes(me),
                    ..Default::default()
                }
            }),
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("kind", &self.kind).field("restarts_us", &self.restarts_us).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("cannot watch {path}: {message}")]
    Watch { path: String, message: String },
    #[error("{0}")]
    Workspace(String),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> SidecarError {
    move |source| SidecarError::Io { context, source }
}

/// Creates `dir` if missing and proves it writable with a probe file.
fn writable_dir(dir: &Path, what: &str) -> Result<(), SidecarError> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create the {what} {}", dir.display())))?;
    let probe = dir.join(".agentcom-write-test");
    std::fs::write(&probe, b"ok").map_err(io(format!("the {what} {} is not writable", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs the sidecar until `shutdown` is cancelled. The active task stays on disk.
pub async fn run(cfg: SidecarConfig, host: Host, shutdown: CancellationToken) -> Result<(), SidecarError> {
    writable_dir(&cfg.results_dir, "results dir")?;
    writable_dir(&cfg.state_dir.join("tasks"), "state dir")?;
    // Worktree mode: repo_dir must be a repository, its base branch known, before anything runs.
    let workspace = match &cfg.workspace {
        workspace::Mode::Worktree(w) => {
            let rt =
                workspace::ops::Runtime::start(w.as_ref().clone(), &cfg.state_dir).map_err(SidecarError::Workspace)?;
            tracing::info!(repo_dir = %w.repo_dir.display(), base_branch = %rt.base_branch, worktrees_dir = %w.worktrees_dir.display(), "each task in a worktree of its own");
            Some(Arc::new(rt))
        }
        workspace::Mode::RepoDir => None,
    };
    let store = queue::QueueStore::new(&cfg.state_dir);
    let loaded = store.load().map_err(io(format!("cannot read {}", store.path().display())))?;
    let corrupt = loaded.moved_aside.map(|(aside, why)| {
        tracing::error!(path = %aside.display(), error = %why, "queue.json was corrupt; moved it aside and starting with an empty queue");
        format!("queue_corrupt: moved aside to {} ({why})", aside.display())
    });
    let cfg = Arc::new(cfg);

    let files = watch::FileChanges::new();
    let noted = files.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => noted.note(&ev),
        Err(_) => noted.note_overflow(),
    })
    .map_err(|e| SidecarError::Watch { path: cfg.results_dir.display().to_string(), message: e.to_string() })?;
    watcher
        .watch(&cfg.results_dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| SidecarError::Watch { path: cfg.results_dir.display().to_string(), message: e.to_string() })?;

    // Who restarts us, and our numbers as it sees them: in identify, and refreshed after.
    let probe = host.process_info.clone();
    let info = tokio::task::spawn_blocking(move || probe())
        .await
        .map_err(|e| SidecarError::Io { context: "asking the supervisor".into(), source: std::io::Error::other(e) })?;
    tracing::info!(
        supervisor = host.kind,
        name = info.name.as_deref().unwrap_or(""),
        restart_count = info.restart_count,
        "process self-awareness"
    );
    let (identify_tx, identify_rx) = tokio::sync::watch::channel(executor::empty_identify());
    let started = tokio::time::Instant::now();
    let machine = machine::Machine::new(cfg.clone(), host.restarts_us, loaded.queue, corrupt, started.elapsed());
    let (exits_tx, exits_rx) = mpsc::channel(executor::INCOMING_EVENTS);
    let executor =
        executor::Executor::new(cfg.clone(), store, machine, started, identify_tx, exits_tx, shutdown.clone())
            .with_workspace(workspace);
    let (holding_tx, holding_rx) = tokio::sync::watch::channel(local::Holding::default());
    let executor = match local::start(cfg.clone(), holding_rx, shutdown.clone()) {
        Ok(path) => {
            tracing::info!(socket = %path.display(), "local socket for agentcom mcp");
            executor.with_local(Some((path, holding_tx)))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot open the local socket; agentcom mcp will not reach this sidecar");
            executor
        }
    };
    let mut executor = executor;
    executor.set_process_info(info);
    let (info_tx, info_rx) = tokio::sync::watch::channel(None);
    let refresh_every = cfg.ping_interval;
    let refresher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(refresh_every).await;
            let probe = host.process_info.clone();
            let Ok(info) = tokio::task::spawn_blocking(move || probe()).await else {
                break;
            };
            if info_tx.send(Some(info)).is_err() {
                break;
            }
        }
    });

    let (conn_tx, conn_rx) = mpsc::channel(executor::INCOMING_EVENTS);
    let conn = tokio::spawn(conn::run(cfg.clone(), identify_rx, conn_tx, shutdown.clone()));
    tracing::info!(agent_id = %cfg.agent_id, hub_url = %cfg.hub_urls.join(", "), results_dir = %cfg.results_dir.display(), "sidecar started");
    let inputs = executor::Inputs { conn: conn_rx, machine: exits_rx, files, process_info: info_rx };
    executor.run(inputs).await;
    let _ = conn.await;
    refresher.abort();
    drop(watcher);
    tracing::info!("sidecar stopped");
    Ok(())
}
