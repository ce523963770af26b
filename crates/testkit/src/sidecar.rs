//! A real `agentcom sidecar` with its own folder, and its test settings.

use crate::*;
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

/// Sidecar settings for tests: every delay in milliseconds.
pub fn sidecar_config(agent_id: &str, token: &str, hub_ws_url: &str, wake_command: Option<&str>) -> String {
    let mut c = format!(
        "agent_id = \"{agent_id}\"\ntoken = \"{token}\"\nhub_url = \"{hub_ws_url}\"\ncapabilities = []\n\
         confirmation_timeout_ms = 5000\nwake_timeout_ms = 10000\nwake_retry_delays_ms = [50, 50, 50]\n\
         ping_interval_ms = 1000\npong_timeout_ms = 2000\nreconnect_base_ms = 20\nreconnect_max_ms = 200\n\
         rescan_interval_ms = 200\nkill_timeout_ms = 300\n"
    );
    if let Some(w) = wake_command {
        c.push_str(&format!("wake_command = {}\n", toml_string(w)));
    }
    c
}

/// `agentcom integrate` settings: agent `agent_id` merging on `repo_dir` (a clone of the
/// remote), its state in `state_dir`, then `extra` (the check, the batch size...).
pub fn integrator_config(
    agent_id: &str,
    token: &str,
    hub_ws_url: &str,
    repo_dir: &Path,
    state_dir: &Path,
    extra: &str,
) -> String {
    format!(
        "agent_id = {}\ntoken = {}\nhub_url = {}\nrepo_dir = {}\nstate_dir = {}\n{extra}",
        toml_string(agent_id),
        toml_string(token),
        toml_string(hub_ws_url),
        toml_string(&repo_dir.display().to_string()),
        toml_string(&state_dir.display().to_string()),
    )
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running `agentcom sidecar` child process with its own folder.
pub struct Sidecar {
    child: Owned,
    pub dir: PathBuf,
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Writes `config` to `<dir>/sidecar.toml` and starts the sidecar on it.
    pub fn start(bin: &Path, dir: &Path, config: &str) -> Result<Sidecar> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, config)?;
        Sidecar::start_file(bin, dir, &path)
    }

    /// Starts a sidecar on an existing config file (TOML or AgentCom JSON).
    pub fn start_file(bin: &Path, dir: &Path, config: &Path) -> Result<Sidecar> {
        Sidecar::launch(bin, dir, config, None, &[])
    }

    /// Starts a sidecar as a person would: `agentcom sidecar --config CONFIG` run in `cwd` (so
    /// `CONFIG` may be a bare file name), with `env` added (what its agent needs).
    pub fn launch(
        bin: &Path,
        dir: &Path,
        config: &Path,
        cwd: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Sidecar> {
        let mut cmd = Command::new(bin);
        cmd.args(["sidecar", "--log-format", "json", "--config"]).arg(config).env("AGENTCOM_LOG", "info");
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let (child, logs, _) = spawn_until(cmd, "sidecar", "sidecar started", "agent_id")?;
        let config = cwd.map(|c| c.join(config)).unwrap_or_else(|| config.to_path_buf());
        Ok(Sidecar { child, dir: dir.to_path_buf(), config, logs })
    }

    /// Starts `cmd`, a program that runs a sidecar (such as `agentcom integrate`, with
    /// `--log-format json`), with `dir` as its folder; waits until its sidecar started.
    pub fn spawn(cmd: Command, dir: &Path) -> Result<Sidecar> {
        let (child, logs, _) = spawn_until(cmd, "sidecar", "sidecar started", "agent_id")?;
        Ok(Sidecar { child, dir: dir.to_path_buf(), config: dir.to_path_buf(), logs })
    }

    pub fn results(&self) -> PathBuf {
        self.dir.join("results")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The parsed `queue.json` (null when missing).
    pub fn queue(&self) -> Value {
        std::fs::read(self.state().join("queue.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the active (or recovering) task in queue.json has `status`.
    pub async fn wait_phase(&self, status: &str) -> Result<Value> {
        eventually(&format!("the queue to reach {status}"), || async {
            let q = self.queue();
            ["active", "recovering"]
                .iter()
                .find(|slot| q[**slot]["status"] == status)
                .map(|slot| q[*slot].clone())
                .ok_or_else(|| format!("{q}\nlogs:\n{}", self.logs().join("\n")))
        })
        .await
    }

    /// Waits for a log line whose message is `message`.
    pub async fn wait_log(&self, message: &str) -> Result<Value> {
        eventually(&format!("a log line {message:?}"), || async {
            let logs = self.logs();
            logs.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == message)
                .ok_or_else(|| logs.join("\n"))
        })
        .await
    }

    pub fn kill9(&mut self) {
        self.child.kill9()
    }

    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.child.terminate()
    }
}
