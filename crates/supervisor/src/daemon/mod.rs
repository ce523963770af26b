//! The supervisor daemon, in the shape of the sidecar: a pure process table ([`table`]:
//! `handle(input, now) -> Vec<Action>`, no IO and no clock) inside a thin shell ([`shell`])
//! that carries out its actions and feeds their outcomes back as inputs. The control socket
//! ([`control`]), spawning ([`spawn`], [`tmux`]), `state.json` ([`persist`]) and file watches
//! ([`watch`]) are the IO around it. Each child runs in its own process group; a stop is
//! reported only once every process of the group is gone.

mod control;
mod persist;
mod shell;
mod spawn;
mod table;
mod tmux;
mod watch;

pub use table::checks::{next_cron, problems as spec_problems};
pub use watch::ignore_set;

pub use control::{Frame, Limits, LineReader};

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SOCKET: &str = "supervisor.sock";
pub const STATE: &str = "state.json";
/// Marks a child as ours, so it can be recognised after the supervisor restarts.
pub const ENV_NAME: &str = "AGENTCOM_PROCESS_NAME";
pub const ENV_SOCKET: &str = "AGENTCOM_SUPERVISOR_SOCKET";

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    /// How often group memory is compared with `max_memory_bytes`.
    pub memory_check: Duration,
    /// A process that stays up this long gets its backoff reset.
    pub backoff_reset: Duration,
    /// A control connection that sends nothing for this long is closed.
    pub control_idle_timeout: Duration,
    /// Control connections served at once.
    pub max_connections: usize,
    /// Processes the table holds at most (every instance counts).
    pub max_processes: usize,
}

impl DaemonConfig {
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    pub const DEFAULT_MAX_PROCESSES: usize = 1024;

    pub fn new(dir: PathBuf) -> DaemonConfig {
        DaemonConfig {
            dir,
            memory_check: Duration::from_secs(5),
            backoff_reset: Duration::from_secs(30),
            control_idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_processes: Self::DEFAULT_MAX_PROCESSES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("a supervisor is already running on {0}")]
    AlreadyRunning(String),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { context, source }
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Runs the supervisor until `shutdown` (or a `kill` request): then stops every child
/// (gracefully, whole groups) and returns, keeping the desired state so the next start brings
/// them back.
pub async fn run(cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    std::fs::create_dir_all(cfg.dir.join("logs")).map_err(io(format!("cannot create {}", cfg.dir.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700));
    }
    // One supervisor per folder: two started at once (two commands each launching one) would
    // otherwise both find no socket, or one take the other's socket between its bind and listen,
    // and one would run on unseen, its socket and pid file gone. The lock lives with the process.
    let lock_path = cfg.dir.join("supervisor.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("cannot open {}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DaemonError::AlreadyRunning(socket_path(&cfg.dir).display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(format!("cannot lock {}", lock_path.display()))(e)),
    }
    let socket = socket_path(&cfg.dir);
    if socket.exists() {
        if crate::client::Client::connect(&cfg.dir).is_ok() {
            return Err(DaemonError::AlreadyRunning(socket.display().to_string()));
        }
        let _ = std::fs::remove_file(&socket); // stale: nobody listens
    }
    let listener = UnixListener::bind(&socket).map_err(io(format!("cannot listen on {}", socket.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("cannot restrict {}", socket.display())))?;
    }
    let pid_file = cfg.dir.join("supervisor.pid");
    osutil::fs::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .map_err(io(format!("cannot write {}", pid_file.display())))?;
    let (tx, mut rx) = mpsc::channel(shell::capacity(&cfg));
    // Cancelled by a signal from `main` or by a `kill` request.
    let stop = shutdown.child_token();
    let mut sh = shell::Shell::new(cfg.clone(), socket.clone(), tx.clone(), stop.clone());
    sh.restore().await;
    tracing::info!(
        socket = %socket.display(),
        processes = sh.len(),
        pid = std::process::id(),
        idle_timeout_ms = cfg.control_idle_timeout.as_millis() as u64,
        max_connections = cfg.max_connections,
        "supervisor listening"
    );

    let conns = TaskTracker::new();
    let limits = Limits { idle_timeout: cfg.control_idle_timeout, max_connections: cfg.max_connections.max(1) };
    let acceptor = tokio::spawn(control::accept_loop(listener, tx.clone(), limits, stop.clone(), conns.clone()));
    drop(tx);
    sh.serve(&mut rx, &stop).await;
    let _ = acceptor.await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_file);
    // Stop every child, whole groups, and wait for them; the desired state stays on disk.
    sh.stop_all_for_exit(&mut rx).await;
    // Its processes are stopped: the private tmux server (if one ran) goes too.
    sh.close().await;
    // The last answers (to `kill`) are written before we go; idle connections end at once.
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    tracing::info!("supervisor stopped");
    drop(lock);
    Ok(())
}

/// Delay before the restart after `n` consecutive ones: the first is immediate (a process
/// that crashes once comes straight back), then `base`, growing x1.5, capped.
pub fn backoff(base_ms: u64, max_ms: u64, n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let ms = (base_ms as f64) * 1.5f64.powi((n - 1).min(64) as i32);
    Duration::from_millis((ms as u64).min(max_ms))
}

/// The kill signal (by name) to the whole group, SIGKILL after `timeout`, and back only when no
/// process of the group is left.
pub async fn stop_group(pgid: i32, signal: &str, timeout: Duration) {
    osutil::pgroup::stop_group(pgid, signal_of(signal), timeout).await
}

fn signal_of(name: &str) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    proto::control::signal_number(name).and_then(|n| Signal::try_from(n).ok()).unwrap_or(Signal::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_half_and_caps() {
        assert_eq!(backoff(100, 15_000, 0), Duration::ZERO);
        assert_eq!(backoff(100, 15_000, 1), Duration::from_millis(100));
        assert_eq!(backoff(100, 15_000, 2), Duration::from_millis(150));
        assert_eq!(backoff(100, 15_000, 3), Duration::from_millis(225));
        assert_eq!(backoff(100, 15_000, 40), Duration::from_millis(15_000));
    }
}
