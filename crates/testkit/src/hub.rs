//! A real `agentcom hub` on port 0 in a temp dir, and its test settings.

use crate::*;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

/// A running `agentcom hub` child process.
pub struct Hub {
    child: Owned,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub admin_token: String,
    /// The hub's certificate files and their CA, when it serves TLS.
    pub tls: Option<tls::TlsFiles>,
    logs: Arc<Mutex<Vec<String>>>,
    _temp: Option<tempfile::TempDir>,
}

/// Hub settings for tests: short timings so nothing waits on 60 s defaults.
pub fn fast_config() -> String {
    "grace_period_ms = 30000\naccept_timeout_ms = 30000\nheartbeat_timeout_ms = 30000\nretry_base_ms = 50\nretry_max_ms = 400\nreject_cooldown_ms = 2000\n".into()
}

/// `base` with every key that `extra` sets replaced by `extra`'s line.
pub fn merge_config(base: &str, extra: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra.lines().filter(|l| l.contains('=')).map(key).collect();
    let mut out: String = base.lines().filter(|l| !overridden.contains(&key(l))).map(|l| format!("{l}\n")).collect();
    out.push_str(extra);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

impl Hub {
    /// Starts a hub in a fresh temp dir with `extra_config` appended to [`fast_config`].
    pub fn start(bin: &Path, extra_config: &str) -> Result<Hub> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut hub = Hub::start_in(bin, &dir, &merge_config(&fast_config(), extra_config))?;
        hub._temp = Some(temp);
        Ok(hub)
    }

    /// Starts a hub whose data dir is `dir` (reused across restarts). Writes `hub.toml` there.
    pub fn start_in(bin: &Path, dir: &Path, config: &str) -> Result<Hub> {
        Hub::start_at(bin, dir, config, "127.0.0.1:0")
    }

    /// Like [`Hub::start_in`] on a given address (to restart a hub on the port it had).
    pub fn start_at(bin: &Path, dir: &Path, config: &str, listen: &str) -> Result<Hub> {
        let admin_token = "test-admin-token-0123456789abcdef".to_string();
        let cfg_path = dir.join("hub.toml");
        std::fs::create_dir_all(dir)?;
        std::fs::write(&cfg_path, format!("admin_token = \"{admin_token}\"\n{config}"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["hub", "--log-format", "json", "--listen", listen, "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(&cfg_path)
            .env("AGENTCOM_LOG", std::env::var("TESTKIT_HUB_LOG").unwrap_or_else(|_| "info".into()));
        let (child, logs, addr) = spawn_until(cmd, "hub", "hub listening", "addr")?;
        let addr = addr.parse().context("listening address")?;
        Ok(Hub { child, addr, dir: dir.to_path_buf(), admin_token, tls: None, logs, _temp: None })
    }

    /// SIGKILLs the hub and starts a new one on the same address and data dir, in place: the
    /// temp dir stays owned (dropping the old `Hub` would delete the new hub's data under it).
    pub fn restart_after_kill(&mut self, bin: &Path, config: &str) -> Result<()> {
        self.kill9();
        self.start_again(bin, config)
    }

    /// Stops the hub with SIGTERM (it commits what is pending and closes its sockets) and starts
    /// a new one in its place, as [`Hub::restart_after_kill`] does.
    pub fn restart(&mut self, bin: &Path, config: &str) -> Result<()> {
        self.terminate()?;
        self.start_again(bin, config)
    }

    fn start_again(&mut self, bin: &Path, config: &str) -> Result<()> {
        let mut next = Hub::start_at(bin, &self.dir, config, &self.addr.to_string())?;
        next._temp = self._temp.take();
        *self = next;
        Ok(())
    }

    /// Like [`Hub::start`], serving `https://` and `wss://` with a certificate from a fresh CA.
    pub fn start_tls(bin: &Path, extra_config: &str) -> Result<Hub> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().join("hub");
        let files = tls::tls_files(&temp.path().join("certs"))?;
        let tls_config = format!(
            "tls_cert = {}\ntls_key = {}\n",
            toml_string(&files.cert.display().to_string()),
            toml_string(&files.key.display().to_string())
        );
        let config = merge_config(&merge_config(&fast_config(), &tls_config), extra_config);
        let mut hub = Hub::start_in(bin, &dir, &config)?;
        hub.tls = Some(files);
        hub._temp = Some(temp);
        Ok(hub)
    }

    /// The base URL; a TLS hub is named `localhost`, as its certificate says.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }
    pub fn ws_url(&self) -> String {
        match self.tls {
            Some(_) => format!("wss://localhost:{}/ws", self.addr.port()),
            None => format!("ws://{}/ws", self.addr),
        }
    }
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The TLS client configuration that trusts this hub's CA, for a TLS hub.
    fn tls_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        let tls = self.tls.as_ref()?;
        Some(osutil::tls::client_config(Some(&tls.ca)).expect("the test CA is usable"))
    }

    /// What a WebSocket client needs to reach this hub: for a TLS hub, a connector that
    /// trusts its CA; `None` for a plain one.
    pub fn ws_connector(&self) -> Option<tokio_tungstenite::Connector> {
        self.tls_client().map(tokio_tungstenite::Connector::Rustls)
    }

    pub fn admin(&self) -> Api {
        self.api(Some(&self.admin_token))
    }
    pub fn api(&self, token: Option<&str>) -> Api {
        let mut http = reqwest::Client::builder();
        if let Some(tls) = self.tls_client() {
            http = http.use_preconfigured_tls(rustls::ClientConfig::clone(&tls));
        }
        let http = http.build().expect("an HTTP client builds");
        Api { base: self.url(), token: token.map(str::to_string), http }
    }

    /// The typed API client, with `token` (and this hub's CA for a TLS hub).
    pub fn client(&self, token: Option<&str>) -> client::Client {
        let ca = self.tls.as_ref().map(|t| t.ca.clone());
        client::Client::new(&self.url(), token.map(str::to_string), ca.as_deref()).expect("a client of the test hub")
    }

    /// The typed API client with the admin token.
    pub fn admin_client(&self) -> client::Client {
        self.client(Some(&self.admin_token))
    }

    /// Creates an agent token through the admin API.
    pub async fn token(&self, agent_id: &str) -> Result<String> {
        Ok(self.admin_client().call(&proto::api::CreateToken { agent_id: agent_id.into() }).await?.token)
    }

    /// Creates a token and connects an identified agent with the given capabilities.
    pub async fn agent(&self, agent_id: &str, caps: &[&str]) -> Result<WsAgent> {
        let token = self.token(agent_id).await?;
        WsAgent::identify(&self.ws_url(), agent_id, &token, caps).await
    }

    /// Submits a task as admin; returns its id.
    pub async fn submit(&self, task: proto::api::SubmitTask) -> Result<String> {
        Ok(self.admin_client().call(&task).await?.task_id)
    }

    /// Submits a task with only a description.
    pub async fn submit_text(&self, description: &str) -> Result<String> {
        self.submit(proto::api::SubmitTask::new(description)).await
    }

    pub async fn task(&self, id: &str) -> Result<proto::api::TaskDetail> {
        Ok(self.admin_client().call(&proto::api::GetTask { task_id: id.into() }).await?)
    }

    /// Polls until the task has `status` (the hub changes it on a timer we do not observe).
    pub async fn wait_status(&self, id: &str, status: proto::api::TaskStatus) -> Result<proto::api::TaskDetail> {
        self.wait_status_within(crate::WAIT, id, status).await
    }

    /// [`Hub::wait_status`] for at most `limit` (a real agent CLI's work: [`crate::AGENT_WAIT`]).
    pub async fn wait_status_within(
        &self,
        limit: std::time::Duration,
        id: &str,
        status: proto::api::TaskStatus,
    ) -> Result<proto::api::TaskDetail> {
        crate::eventually_within(limit, &format!("task {id} to be {status}"), || async {
            let t = self.task(id).await.map_err(|e| e.to_string())?;
            if t.task.status == status {
                Ok(t)
            } else {
                Err(format!("{:?}", t.task))
            }
        })
        .await
    }

    pub fn kill9(&mut self) {
        self.child.kill9()
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.child.terminate()
    }
}
