//! A supervisor (ours, or a pm2) with a state dir of its own, dropped with the test.

use crate::*;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A supervisor state dir of its own, and the `agentcom` process commands run against it.
/// Dropping it stops the supervisor (and so every process it runs).
pub struct Supervised {
    bin: PathBuf,
    temp: tempfile::TempDir,
    /// Extra environment for every command (and so for a supervisor they launch).
    pub env: Vec<(String, String)>,
}

impl Supervised {
    pub fn new(bin: &Path) -> Result<Supervised> {
        Ok(Supervised {
            // Absolute: commands run in the temp dir.
            bin: bin.canonicalize().with_context(|| format!("{} not found", bin.display()))?,
            temp: tempfile::tempdir()?,
            env: vec![("AGENTCOM_SUPERVISOR_MEMORY_CHECK_MS".into(), "100".into())],
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.temp.path().join("sup")
    }

    /// A command run in the temp dir, so a default path (`./agentcom-data/...`) never lands in
    /// the source tree.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(self.temp.path())
            .env("AGENTCOM_SUPERVISOR_DIR", self.dir())
            .env("AGENTCOM_LOG_FORMAT", "json");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("run agentcom")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args);
        if !out.status.success() {
            bail!("agentcom {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What `ps --json` shows, asked over the supervisor's socket from this process (a poll
    /// need not start a process); under pm2 (`AGENTCOM_BACKEND=pm2`), through the CLI.
    pub fn ps(&self) -> Result<Vec<Value>> {
        if self.env.iter().any(|(k, v)| k == "AGENTCOM_BACKEND" && v == "pm2") {
            return Ok(serde_json::from_str(&self.ok(&["ps", "--json"])?)?);
        }
        let mut c = supervisor::client::Client::connect(&self.dir())?;
        match c.call(&proto::control::Request::Ps)? {
            proto::control::Response::List { processes } => {
                Ok(serde_json::to_value(processes)?.as_array().cloned().unwrap_or_default())
            }
            other => bail!("ps: {other:?}"),
        }
    }

    pub fn proc(&self, name: &str) -> Result<Value> {
        self.ps()?.into_iter().find(|p| p["name"] == name).with_context(|| format!("no process {name}"))
    }

    /// Polls `ps` until `name` satisfies `pred`.
    pub async fn wait_for(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        eventually(&format!("{name} to become {what}"), || async {
            match self.proc(name) {
                Ok(p) if pred(&p) => Ok(p),
                Ok(p) => Err(p.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    pub fn supervisor_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir().join("supervisor.pid")).ok()?.trim().parse().ok()
    }

    /// Process ids of the live members of a process group.
    pub fn group(pgid: i32) -> Vec<i32> {
        osutil::procfs::scan_groups().remove(&pgid).map(|g| g.pids).unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(pid) = self.supervisor_pid() {
            let _ = signal(pid as u32, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + WAIT;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A pm2 of its own: `PM2_HOME` in a temp dir (any pm2 command starts a daemon in its home,
/// so never the user's `~/.pm2`), killed with `pm2 kill` when dropped.
pub struct Pm2Home {
    home: tempfile::TempDir,
}

impl Pm2Home {
    /// Fails with a clear message when pm2 is not installed.
    pub fn new() -> Result<Pm2Home> {
        let home = tempfile::tempdir()?;
        let ok = Command::new("pm2")
            .arg("--version")
            .env("PM2_HOME", home.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("pm2 is required (scripts/test installs it with npm)");
        }
        Ok(Pm2Home { home })
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// Makes every command of `s` (and the pm2 it starts) use this home.
    pub fn apply(&self, s: &mut Supervised) {
        s.env.push(("PM2_HOME".into(), self.path().display().to_string()));
    }
}

impl Drop for Pm2Home {
    fn drop(&mut self) {
        let _ = Command::new("pm2").arg("kill").env("PM2_HOME", self.path()).output();
    }
}
