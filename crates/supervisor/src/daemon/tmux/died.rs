//! How the supervisor learns that a pane's process ended, and with what status.
//!
//! tmux, not the supervisor, is the pane's parent: only tmux reaps it and reads its status. A
//! zombie is not yet reaped, so reading `pane_dead_status` when the pid turns into one races
//! tmux (the status is empty until tmux has handled SIGCHLD). Instead tmux tells us: a global
//! `pane-died` hook, which tmux runs only once the status is recorded, appends
//! `pane_id pid status signal` to a FIFO of ours ([`Deaths`]).
//!
//! tmux up to 3.5 can miss the SIGCHLD of a pane's process altogether when it is built with
//! utempter (Debian's is): removing the utmp record waits for a helper process, whose SIGCHLD
//! the pane's merges into, and the zombie then waits for the next SIGCHLD, for ever if none
//! comes (tmux's own fix, issue 4559, sends itself a SIGCHLD there). So the pid is watched too:
//! a zombie left unreaped gets the server a SIGCHLD. For a pane that goes without dying (a
//! person killed it), once the pid is reaped and no report came, the status is asked for a few
//! times; a pane whose status stays unknown is left for a person to look at, never thrown away.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

/// The variable (in the server's global environment) naming the FIFO the hook writes to.
pub const ENV_EVENTS: &str = "AGENTCOM_TMUX_EVENTS";
/// How often a pane's pid is looked at: only a fallback, the hook comes first.
const POLL: Duration = Duration::from_millis(100);
/// A zombie this old was missed by tmux: the server gets a SIGCHLD (and again this often).
const NUDGE: Duration = Duration::from_millis(300);
/// After the pid is reaped, how long the hook's report may take (tmux runs the hook in the same
/// turn as the reaping; this is room for a loaded machine).
const REPORT_GRACE: Duration = Duration::from_secs(2);
/// Asking tmux for the status: attempts, and the pause between them.
const ASK: (u32, Duration) = (10, Duration::from_millis(50));
/// Reports for panes nobody waits for yet are kept, up to this many.
const EARLY_MAX: usize = 1024;

/// The `pane-died` hook: formats are expanded by `run-shell` for the pane that died; the FIFO's
/// path comes from the environment, so no path of ours is parsed by tmux.
pub fn hook() -> String {
    format!(
        "run-shell -b 'echo \"#{{pane_id}} #{{pane_pid}} #{{pane_dead_status}} #{{pane_dead_signal}}\" >> \"${ENV_EVENTS}\"'"
    )
}

/// How a pane's process ended, as tmux recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Died {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Died {
    /// The exit code as a forked child's would read (128 + signal), and words for the log.
    pub fn describe(self) -> Option<(i32, String)> {
        match (self.code, self.signal) {
            (_, Some(sig)) if sig > 0 => Some((128 + sig, format!("signal: {sig}"))),
            (Some(c), _) => Some((c, format!("exit status: {c}"))),
            _ => None,
        }
    }
}

/// One line of the hook: `%3 1234 0 ` or `%3 1234  9`.
fn parse(line: &str) -> Option<((String, u32), Died)> {
    let mut w = line.trim_end_matches('\n').split(' ');
    let pane = w.next().filter(|p| p.starts_with('%'))?.to_string();
    let pid = w.next()?.parse().ok()?;
    let code = w.next().and_then(|c| c.parse().ok());
    let signal = w.next().and_then(|c| c.parse().ok());
    Some(((pane, pid), Died { code, signal }))
}

#[derive(Default)]
struct Registry {
    waiting: HashMap<(String, u32), oneshot::Sender<Died>>,
    /// Reports that came before their pane was registered (a process that ended at once).
    early: HashMap<(String, u32), Died>,
}

/// The reports of the `pane-died` hook, routed to whoever waits for each pane.
pub struct Deaths {
    fifo: PathBuf,
    registry: Arc<Mutex<Registry>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Deaths {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.fifo);
    }
}

/// A FIFO at `path` (made afresh), opened for reading and writing: no EOF between writers.
pub fn open_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver, String> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

impl Deaths {
    /// Makes the FIFO in `<dir>/tmux/` and reads it on the current runtime.
    pub fn open(dir: &Path) -> Result<Deaths, String> {
        let d = dir.join("tmux");
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        let fifo = d.join("events.fifo");
        let rx = open_fifo(&fifo)?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let reader = tokio::spawn(read(rx, registry.clone())).abort_handle();
        Ok(Deaths { fifo, registry, reader })
    }

    pub fn fifo(&self) -> &Path {
        &self.fifo
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The report for `pane` running `pid`, when it comes (or already came).
    pub fn watch(&self, pane: &str, pid: u32) -> oneshot::Receiver<Died> {
        let (tx, rx) = oneshot::channel();
        let key = (pane.to_string(), pid);
        let mut r = self.registry();
        match r.early.remove(&key) {
            Some(d) => drop(tx.send(d)),
            None => drop(r.waiting.insert(key, tx)),
        }
        rx
    }

    fn forget(&self, pane: &str, pid: u32) {
        self.registry().waiting.remove(&(pane.to_string(), pid));
    }
}

async fn read(rx: tokio::net::unix::pipe::Receiver, registry: Arc<Mutex<Registry>>) {
    let mut lines = tokio::io::BufReader::new(rx).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((key, died)) = parse(&line) else {
            tracing::warn!(line = %line, "unreadable pane-died report");
            continue;
        };
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        match r.waiting.remove(&key) {
            Some(tx) => drop(tx.send(died)),
            None => {
                // A pane we did not start (a person's) or one not registered yet.
                if r.early.len() >= EARLY_MAX {
                    r.early.clear();
                }
                r.early.insert(key, died);
            }
        }
    }
}

/// Resolves once the pane's process is reaped: gone from `/proc`, or another process under
/// its pid. A zombie is not reaped yet; one that stays a zombie gets the tmux server (its
/// parent, which missed its SIGCHLD) a SIGCHLD, so tmux reaps it and records its status.
async fn reaped(pane: &super::Pane) {
    let Some(ticks) = pane.start_ticks else { return };
    let mut zombie = None;
    loop {
        match osutil::procfs::stat(pane.pid as i32) {
            None => return,
            Some(s) if s.start_ticks != ticks => return,
            Some(s) if s.state == 'Z' && s.ppid == pane.server => {
                let since = *zombie.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= NUDGE {
                    tracing::info!(pane = %pane.id, pid = pane.pid, "tmux left its pane's process unreaped; SIGCHLD to tmux");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pane.server),
                        nix::sys::signal::Signal::SIGCHLD,
                    );
                    zombie = Some(tokio::time::Instant::now());
                }
            }
            Some(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks tmux for the pane's status, a few times while tmux has not recorded it yet.
async fn ask(dir: &Path, pane: &str) -> Option<Died> {
    for attempt in 0..ASK.0 {
        if attempt > 0 {
            tokio::time::sleep(ASK.1).await;
        }
        let (dir, pane) = (dir.to_path_buf(), pane.to_string());
        let out = tokio::task::spawn_blocking(move || {
            let mut c = super::tmux(&dir);
            c.args(["display-message", "-p", "-t", &pane, "#{pane_dead_status},#{pane_dead_signal}"]);
            super::run(c)
        })
        .await
        .ok()?;
        // No such pane: nothing will tell us any more.
        let s = out.ok()?;
        let mut parts = s.trim().split(',');
        let died =
            Died { code: parts.next().and_then(|c| c.parse().ok()), signal: parts.next().and_then(|c| c.parse().ok()) };
        if died.describe().is_some() {
            return Some(died);
        }
    }
    None
}

/// Waits for the pane's process to end and returns its exit code and description. With the
/// status known, the dead pane (and so its session) is closed first, by its id: a session of
/// the same name may already hold the process's next run.
pub async fn wait_exit(dir: PathBuf, pane: super::Pane, deaths: Arc<Deaths>) -> (Option<i32>, String) {
    let mut report = deaths.watch(&pane.id, pane.pid);
    let died = tokio::select! {
        d = &mut report => d.ok(),
        _ = reaped(&pane) => {
            match tokio::time::timeout(REPORT_GRACE, &mut report).await {
                Ok(Ok(d)) => Some(d),
                _ => {
                    deaths.forget(&pane.id, pane.pid);
                    ask(&dir, &pane.id).await
                }
            }
        }
    };
    let Some((code, desc)) = died.and_then(Died::describe) else {
        tracing::warn!(pane = %pane.id, pid = pane.pid, "a tmux pane's process ended and tmux recorded no status");
        return (None, "status unknown".to_string());
    };
    let id = pane.id.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut c = super::tmux(&dir);
        c.args(["kill-pane", "-t", &id]).stderr(std::process::Stdio::null());
        let _ = c.output();
    })
    .await;
    (Some(code), desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_reports_parse_into_statuses() {
        let (key, d) = parse("%3 1234 0 \n").unwrap();
        assert_eq!((key, d.describe()), (("%3".to_string(), 1234), Some((0, "exit status: 0".to_string()))));
        let (_, d) = parse("%12 99  9").unwrap();
        assert_eq!(d.describe(), Some((137, "signal: 9".to_string())));
        let (_, d) = parse("%1 5  ").unwrap();
        assert_eq!(d.describe(), None, "no status recorded: unknown, never made up");
        assert!(parse("garbage").is_none());
        assert!(hook().starts_with("run-shell -b '") && hook().contains("#{pane_dead_status}"));
    }
}
