//! Child processes the tests own: killed when dropped, their JSON logs collected as they come.

use crate::*;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};

/// A child process we own: killed with SIGKILL when dropped, unless stopped before.
pub struct Owned {
    child: Option<Child>,
    what: &'static str,
}

impl Owned {
    pub fn new(child: Child, what: &'static str) -> Owned {
        Owned { child: Some(child), what }
    }

    /// The child's piped stdout, to read it as it runs.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().with_context(|| format!("{} already stopped", self.what))?;
        signal(c.id(), nix::sys::signal::Signal::SIGTERM)?;
        wait_exit(&mut c)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A daemon's log lines, collected as they come.
pub type Logs = Arc<Mutex<Vec<String>>>;

/// Spawns an `agentcom` daemon with JSON logs on stderr and waits for its ready line
/// (`message`); returns the process, its log lines so far and onward, and the line's `field`.
pub(crate) fn spawn_until(
    mut cmd: Command,
    what: &'static str,
    message: &'static str,
    field: &'static str,
) -> Result<(Owned, Logs, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let logs = Arc::new(Mutex::new(Vec::new()));
    let value = watch_logs(child.stderr.take().expect("piped"), logs.clone(), message, field).map_err(|e| {
        let _ = child.kill();
        anyhow!("{what} did not start: {e}")
    })?;
    Ok((Owned::new(child, what), logs, value))
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).context("send signal")
}

/// Waits for `c` to exit (killing it if it has not after [`WAIT`]).
pub fn wait_exit(c: &mut Child) -> Result<ExitStatus> {
    let pid = c.id();
    let r = eventually_blocking(&format!("process {pid} to exit"), || match c.try_wait() {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err("still running".into()),
        Err(e) => Err(e.to_string()),
    });
    if r.is_err() {
        let _ = c.kill();
    }
    r
}

/// Reads JSON log lines into `logs`; returns the `field` of the first line whose message is
/// `message`. Keeps draining afterwards so the child never blocks on a full pipe.
pub fn watch_logs(
    stderr: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
    message: &'static str,
    field: &'static str,
) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == message {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(v[field].as_str().unwrap_or_default().to_string()));
                    }
                }
            }
            logs.lock().unwrap().push(line);
        }
        if let Some(tx) = tx.take() {
            let all = logs.lock().unwrap().join("\n");
            let _ = tx.send(Err(anyhow!("process exited before {message:?}; its log:\n{all}")));
        }
    });
    rx.recv_timeout(WAIT).map_err(|_| anyhow!("no {message:?} log line within {WAIT:?}"))?
}

/// Whether a process is still alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}
