//! Dev-only helpers for end-to-end tests and benchmarks: start the real `agentcom` binary on
//! port 0 in a temp dir, talk HTTP to it, and speak AgentCom v1 frames over a real WebSocket.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A headless Chromium over WebDriver, for the dashboard's tests.
pub mod browser;
/// Certificates for TLS tests.
pub mod tls;

/// A real PostgreSQL cluster and fresh databases for tests.
pub mod postgres;
pub use postgres::Postgres;

/// Several real hubs on one PostgreSQL database.
pub mod cluster;
pub use cluster::HubCluster;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `probe` every few milliseconds until it returns `Ok`, for at most [`WAIT`]: the one way
/// tests wait for a condition (never a fixed sleep, never a hand-written deadline loop).
/// `Err` carries what the probe saw, so a failure says what it was waiting for and what it got.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {WAIT:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`eventually`] for code outside a runtime.
pub fn eventually_blocking<T>(what: &str, mut probe: impl FnMut() -> std::result::Result<T, String>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(seen) if Instant::now() >= deadline => {
                bail!("timed out after {WAIT:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(5);

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
fn spawn_until(
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
        eventually(&format!("task {id} to be {status}"), || async {
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

/// A small HTTP client returning (status, JSON body).
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        Api { base: base.to_string(), token: token.map(str::to_string), http: reqwest::Client::new() }
    }

    pub async fn raw(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::POST, path, Some(body.to_string())).await
    }
    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::DELETE, path, None).await
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks exactly AgentCom v1 frames (with `protocol_version: 1`).
pub struct WsAgent {
    ws: Ws,
    pub agent_id: String,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    /// The TCP stream ended without a close frame.
    Dropped,
}

impl WsAgent {
    pub async fn connect(url: &str) -> Result<WsAgent> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("connect {url}"))?;
        Ok(WsAgent { ws, agent_id: String::new() })
    }

    /// Connects and identifies the way an AgentCom v1 sidecar does; expects `identified`.
    pub async fn identify(url: &str, agent_id: &str, token: &str, caps: &[&str]) -> Result<WsAgent> {
        let mut a = WsAgent::connect(url).await?;
        a.agent_id = agent_id.to_string();
        a.send(json!({
            "type": "identify", "agent_id": agent_id, "token": token, "name": agent_id,
            "status": "idle", "capabilities": caps, "client_type": "sidecar",
        }))
        .await?;
        let v = a.recv().await?;
        if v["type"] != "identified" {
            bail!("expected identified, got {v}");
        }
        Ok(a)
    }

    /// Sends a frame, adding `protocol_version: 1` as the v1 sidecar does.
    pub async fn send(&mut self, mut v: Value) -> Result<()> {
        v["protocol_version"] = json!(1);
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await.context("send frame")
    }

    /// The next text frame, within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {limit:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// The next frame, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Result<Value> {
        let v = self.recv().await?;
        if v["type"] != ty {
            bail!("expected {ty}, got {v}");
        }
        Ok(v)
    }

    /// Asserts that no frame arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) -> Result<()> {
        match self.recv_within(d).await {
            Ok(v) => bail!("expected silence, got {v}"),
            Err(e) if e.to_string().starts_with("no frame") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads until the connection closes; returns how.
    pub async fn closed(&mut self) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("not closed within {WAIT:?}"))?;
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return Ok(Closed::Code(u16::from(f.code), f.reason.to_string())),
                Some(Ok(Message::Close(None))) => return Ok(Closed::Code(u16::from(CloseCode::Status), String::new())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Closed::Dropped),
            }
        }
    }

    /// Accepts the next `task_assign`; returns (task_id, generation).
    pub async fn take_task(&mut self) -> Result<(String, u64)> {
        let a = self.expect("task_assign").await?;
        let id = a["task_id"].as_str().context("task_id")?.to_string();
        let generation = a["generation"].as_u64().context("generation")?;
        self.send(json!({ "type": "task_accepted", "task_id": id })).await?;
        let ack = self.expect("task_ack").await?;
        if ack["status"] != "accepted" {
            bail!("accept not acked: {ack}");
        }
        Ok((id, generation))
    }

    pub async fn complete(&mut self, task_id: &str, generation: u64) -> Result<Value> {
        self.send(json!({ "type": "task_complete", "task_id": task_id, "generation": generation, "result": { "status": "success" } }))
            .await?;
        self.recv().await
    }

    /// Sends one text frame of `bytes` bytes from a separate writer while reading, so the hub's
    /// close frame is seen even though the hub stops reading mid-frame. Returns how it closed.
    pub async fn send_oversized(self, bytes: usize) -> Result<Closed> {
        let (mut tx, mut rx) = self.ws.split();
        let payload =
            format!("{{\"type\":\"task_progress\",\"task_id\":\"t\",\"progress\":\"{}\"}}", "x".repeat(bytes));
        let writer = tokio::spawn(async move {
            let _ = tx.send(Message::text(payload)).await;
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        let closed = loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => bail!("not closed within {WAIT:?}"),
                Ok(Some(Ok(Message::Close(Some(f))))) => break Closed::Code(u16::from(f.code), f.reason.to_string()),
                Ok(Some(Err(_)) | None) | Ok(Some(Ok(Message::Close(None)))) => break Closed::Dropped,
                Ok(Some(Ok(_))) => continue,
            }
        };
        writer.abort();
        Ok(closed)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close frame (a network cut or crash).
    pub fn cut(self) {
        drop(self.ws);
    }
}

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
        let mut cmd = Command::new(bin);
        cmd.args(["sidecar", "--log-format", "json", "--config"]).arg(config).env("AGENTCOM_LOG", "info");
        let (child, logs, _) = spawn_until(cmd, "sidecar", "sidecar started", "agent_id")?;
        Ok(Sidecar { child, dir: dir.to_path_buf(), config: config.to_path_buf(), logs })
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

/// A TCP proxy on loopback whose link can be cut (connections dropped, new ones refused)
/// and restored: a network outage between a sidecar and its hub.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                // The generation first: a cut between the two reads still reaches this link.
                let mut cut = gen_rx.clone();
                let born = *cut.borrow_and_update();
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound); // refused while the link is down
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    // Biased: once cut, not one more byte is forwarded, even if data is waiting.
                    tokio::select! {
                        biased;
                        _ = cut.wait_for(|g| *g != born) => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, up, generation, task })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port where nothing listens, held so no one else takes it: every connection to it
/// is refused, as to a hub machine that died.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl RefusingPort {
    pub fn new() -> Result<RefusingPort> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // Bound, never listening: the kernel answers connections with a reset.
        socket.bind("127.0.0.1:0".parse()?)?;
        let addr = socket.local_addr()?;
        Ok(RefusingPort { _socket: socket, addr })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Whether a process is still alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}

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

    pub fn ps(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.ok(&["ps", "--json"])?)?)
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

/// The hub's side of a socket, scripted by a test: for what our hub never sends (hostile or
/// malformed frames), and to time the sidecar alone. It speaks real WebSocket on loopback.
pub struct ScriptedHub {
    listener: tokio::net::TcpListener,
}

/// One sidecar connection to a [`ScriptedHub`].
pub struct ScriptedConn {
    ws: WebSocketStream<TcpStream>,
}

impl ScriptedHub {
    pub async fn bind() -> Result<ScriptedHub> {
        Ok(ScriptedHub { listener: tokio::net::TcpListener::bind("127.0.0.1:0").await? })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().expect("bound"))
    }

    /// Accepts the next WebSocket connection and returns it as is (its `identify` unread).
    pub async fn accept_ws(&self) -> Result<ScriptedConn> {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept()).await.context("no connection")??;
        tcp.set_nodelay(true)?;
        Ok(ScriptedConn { ws: tokio_tungstenite::accept_async(tcp).await? })
    }

    /// Whether a connection is waiting to be accepted (taking it if so): to check that a
    /// sidecar never connected here.
    pub fn has_pending_connection(&self) -> bool {
        use futures_util::FutureExt;
        self.listener.accept().now_or_never().is_some()
    }

    /// Accepts the next connection, reads its `identify` and answers `identified`.
    pub async fn accept_identified(&self) -> Result<ScriptedConn> {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept()).await.context("no connection")??;
        tcp.set_nodelay(true)?;
        let ws = tokio_tungstenite::accept_async(tcp).await?;
        let mut conn = ScriptedConn { ws };
        let hello = conn.recv().await?;
        if hello["type"] != "identify" {
            bail!("expected identify, got {hello}");
        }
        conn.send(json!({"type": "identified", "agent_id": hello["agent_id"]})).await?;
        Ok(conn)
    }
}

impl ScriptedConn {
    pub async fn send(&mut self, v: Value) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await.context("send frame")
    }

    /// The next text frame, within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.context("no frame from the sidecar")? {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// Closes the socket with `code` and `reason` (as a standby hub does with 4001).
    pub async fn close_with(mut self, code: u16, reason: &str) -> Result<()> {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: code.into(), reason: reason.into() };
        self.ws.close(Some(frame)).await.context("close")?;
        // Drain until the peer's close reply, so the close handshake completes.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
        Ok(())
    }

    /// Reads frames until one of type `ty`; returns it and the frames before it.
    pub async fn wait_for(&mut self, ty: &str) -> Result<(Value, Vec<Value>)> {
        let mut before = Vec::new();
        loop {
            let v = self.recv().await?;
            if v["type"] == ty {
                return Ok((v, before));
            }
            before.push(v);
        }
    }
}
