//! The supervisor daemon: one task owns the process table and receives a closed [`Ev`] enum
//! (control requests, child exits, timers). Each child runs in its own process group; a stop
//! is reported only once every process of the group is gone.

use crate::logs::{self, LogFile};
use osutil::procfs;
use proto::control::{Describe, ProcSpec, ProcStatus, Request, Response, RestartPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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

#[derive(Debug)]
enum Ev {
    Req(Request, oneshot::Sender<Response>),
    Exited {
        name: String,
        gen: u64,
        code: Option<i32>,
        desc: String,
    },
    /// Every process of the group is gone after a stop.
    StopDone {
        name: String,
        gen: u64,
    },
    Health {
        name: String,
        gen: u64,
        ok: bool,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Launching,
    Online,
    Stopping,
    Stopped,
    Errored,
    WaitingRestart,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Launching => "launching",
            State::Online => "online",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Errored => "errored",
            State::WaitingRestart => "waiting-restart",
        }
    }
}

/// What to do once a stop completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Stay,
    Restart,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    RestartDue { name: String, gen: u64 },
    HealthDue { name: String, gen: u64 },
    MemoryCheck,
}

struct Proc {
    spec: ProcSpec,
    /// Should run: survives supervisor restarts.
    desired: bool,
    state: State,
    pid: Option<u32>,
    pgid: Option<i32>,
    started: Option<Instant>,
    started_at_ms: Option<u64>,
    restart_count: u64,
    unstable_restarts: u32,
    /// Consecutive restarts, for the backoff; reset after `backoff_reset` of uptime.
    consecutive: u32,
    exit_code: Option<i32>,
    gen: u64,
    then: Then,
    waiters: Vec<oneshot::Sender<Response>>,
    health_failures: u32,
    last_reason: Option<String>,
    cpu_sample: Option<(u64, Instant)>,
    cpu_percent: f64,
}

/// `state.json`: desired state and the groups we last ran, written atomically.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    processes: Vec<PersistedProc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedProc {
    spec: ProcSpec,
    desired: bool,
    pgid: Option<i32>,
    restart_count: u64,
}

struct Daemon {
    cfg: DaemonConfig,
    socket: PathBuf,
    procs: BTreeMap<String, Proc>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    tx: mpsc::UnboundedSender<Ev>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Runs the supervisor until `shutdown`: then stops every child (gracefully, whole groups) and
/// returns, keeping the desired state so the next start brings them back.
pub async fn run(cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    std::fs::create_dir_all(cfg.dir.join("logs")).map_err(io(format!("cannot create {}", cfg.dir.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700));
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut d = Daemon {
        cfg: cfg.clone(),
        socket: socket.clone(),
        procs: BTreeMap::new(),
        timers: BTreeMap::new(),
        timer_seq: 0,
        tx: tx.clone(),
    };
    d.restore();
    d.arm(d.cfg.memory_check, Timer::MemoryCheck);
    tracing::info!(socket = %socket.display(), processes = d.procs.len(), pid = std::process::id(), "supervisor listening");

    let accept_tx = tx.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { break };
            let tx = accept_tx.clone();
            tokio::spawn(serve_conn(stream, tx));
        }
    });
    loop {
        let due = d.timers.keys().next().map(|(at, _)| *at);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ev) = rx.recv() => d.on_event(ev),
            _ = tokio::time::sleep_until(due.map(tokio::time::Instant::from_std).unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => d.fire_timers(),
        }
    }
    acceptor.abort();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_file);
    // Stop every child, whole groups, and wait for them; the desired state stays on disk.
    let running: Vec<String> = d.procs.iter().filter(|(_, p)| p.pgid.is_some()).map(|(n, _)| n.clone()).collect();
    tracing::info!(count = running.len(), "supervisor stopping its processes");
    for name in &running {
        d.begin_stop(name, Then::Stay, None);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while d.procs.values().any(|p| p.state == State::Stopping) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev @ (Ev::Exited { .. } | Ev::StopDone { .. }))) => d.on_event(ev),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    tracing::info!("supervisor stopped");
    Ok(())
}

async fn serve_conn(stream: tokio::net::UnixStream, tx: mpsc::UnboundedSender<Ev>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (rtx, rrx) = oneshot::channel();
                if tx.send(Ev::Req(req, rtx)).is_err() {
                    break;
                }
                rrx.await.unwrap_or(Response::Error { error: "supervisor shutting down".into() })
            }
            Err(e) => Response::Error { error: format!("bad request: {e}") },
        };
        let mut out = serde_json::to_vec(&resp).expect("responses serialize");
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            break;
        }
    }
}

impl Daemon {
    fn arm(&mut self, after: Duration, t: Timer) {
        self.timer_seq += 1;
        self.timers.insert((Instant::now() + after, self.timer_seq), t);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(e) = self.timers.first_entry() {
            if e.key().0 > now {
                break;
            }
            let t = e.remove();
            match t {
                Timer::RestartDue { name, gen } => {
                    if self.procs.get(&name).is_some_and(|p| p.gen == gen && p.state == State::WaitingRestart) {
                        self.spawn(&name);
                    }
                }
                Timer::HealthDue { name, gen } => self.health_check(&name, gen),
                Timer::MemoryCheck => {
                    self.memory_check();
                    self.arm(self.cfg.memory_check, Timer::MemoryCheck);
                }
            }
        }
    }

    fn persist(&self) {
        let p = Persisted {
            processes: self
                .procs
                .values()
                .map(|p| PersistedProc {
                    spec: p.spec.clone(),
                    desired: p.desired,
                    pgid: p.pgid,
                    restart_count: p.restart_count,
                })
                .collect(),
        };
        let path = self.cfg.dir.join(STATE);
        if let Err(e) = osutil::fs::write_atomic(&path, &serde_json::to_vec_pretty(&p).expect("state serializes")) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the supervisor state");
        }
    }

    /// Loads the desired state. Groups left from a previous run (the supervisor was killed)
    /// are stopped, then every process that should run is started afresh: we restart rather
    /// than re-adopt, because only a parent can wait for a child's exit status.
    fn restore(&mut self) {
        let path = self.cfg.dir.join(STATE);
        let persisted: Persisted = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(p) => p,
                Err(e) => {
                    let aside = path.with_file_name(format!("{STATE}.corrupt-{}", now_ms()));
                    let _ = std::fs::rename(&path, &aside);
                    tracing::error!(path = %aside.display(), error = %e, "supervisor state was corrupt; moved aside");
                    Persisted::default()
                }
            },
            Err(_) => Persisted::default(),
        };
        for pp in persisted.processes {
            if let Some(pg) = pp.pgid.filter(|pg| procfs::group_has_env(*pg, ENV_NAME, &pp.spec.name)) {
                tracing::warn!(name = %pp.spec.name, pgid = pg, "stopping a process left from before the supervisor restarted");
                kill_group_now(pg, &pp.spec.kill_signal, Duration::from_millis(pp.spec.kill_timeout_ms));
            }
            let name = pp.spec.name.clone();
            let mut p = new_proc(pp.spec);
            p.desired = pp.desired;
            p.restart_count = pp.restart_count;
            self.procs.insert(name.clone(), p);
            if pp.desired {
                self.spawn(&name);
            }
        }
        self.persist();
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Req(req, reply) => self.on_request(req, reply),
            Ev::Exited { name, gen, code, desc } => self.on_exit(&name, gen, code, desc),
            Ev::StopDone { name, gen } => self.on_stop_done(&name, gen),
            Ev::Health { name, gen, ok, detail } => self.on_health(&name, gen, ok, detail),
        }
    }

    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let err = |e: String| Response::Error { error: e };
        let resp = match req {
            Request::Ping => Response::Pong { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into() },
            Request::Ps => Response::List { processes: self.statuses() },
            Request::Describe { name } => match self.describe(&name) {
                Some(d) => Response::Described(Box::new(d)),
                None => err(format!("no process named {name}")),
            },
            Request::Start { spec } => {
                let problems = spec.validate();
                if !problems.is_empty() {
                    err(problems.join("; "))
                } else if let Some(p) = self.procs.get_mut(&spec.name) {
                    if matches!(p.state, State::Stopped | State::Errored) {
                        p.spec = *spec.clone();
                        p.desired = true;
                        p.unstable_restarts = 0;
                        p.consecutive = 0;
                        self.spawn(&spec.name);
                        self.persist();
                        Response::Ok { message: format!("started {}", spec.name) }
                    } else {
                        err(format!("{} already exists ({}); stop or delete it first", spec.name, p.state.as_str()))
                    }
                } else {
                    let name = spec.name.clone();
                    self.procs.insert(name.clone(), new_proc(*spec));
                    self.spawn(&name);
                    self.persist();
                    Response::Ok { message: format!("started {name}") }
                }
            }
            Request::Stop { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = false;
                match p.state {
                    State::Online | State::Launching | State::Stopping => {
                        self.persist();
                        return self.begin_stop(&name, Then::Stay, Some(reply));
                    }
                    _ => {
                        p.state = State::Stopped;
                        p.gen += 1; // cancels a pending restart
                        self.persist();
                        Response::Ok { message: format!("stopped {name}") }
                    }
                }
            }
            Request::Restart { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = true;
                p.unstable_restarts = 0;
                p.consecutive = 0;
                match p.state {
                    State::Online | State::Launching | State::Stopping => {
                        p.restart_count += 1;
                        p.last_reason = Some("restarted on request".into());
                        self.persist();
                        return self.begin_stop(&name, Then::Restart, Some(reply));
                    }
                    _ => {
                        if p.state == State::WaitingRestart || p.pid.is_some() {
                            p.restart_count += 1;
                        }
                        self.spawn(&name);
                        self.persist();
                        Response::Ok { message: format!("restarted {name}") }
                    }
                }
            }
            Request::Delete { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = false;
                if matches!(p.state, State::Online | State::Launching | State::Stopping) {
                    return self.begin_stop(&name, Then::Delete, Some(reply));
                }
                self.procs.remove(&name);
                self.persist();
                Response::Ok { message: format!("deleted {name}") }
            }
        };
        let _ = reply.send(resp);
    }

    fn spawn(&mut self, name: &str) {
        let socket = self.socket.clone();
        let logs_dir = self.cfg.dir.join("logs");
        let tx = self.tx.clone();
        let Some(p) = self.procs.get_mut(name) else { return };
        p.gen += 1;
        p.state = State::Launching;
        p.health_failures = 0;
        p.cpu_sample = None;
        p.cpu_percent = 0.0;
        let spec = &p.spec;
        let mut c = tokio::process::Command::new(&spec.command);
        c.args(&spec.args)
            .envs(&spec.env)
            .env(ENV_NAME, &spec.name)
            .env(ENV_SOCKET, &socket)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            c.current_dir(cwd);
        }
        let gen = p.gen;
        match c.spawn() {
            Err(e) => {
                let desc = format!("cannot start {}: {e}", spec.command);
                tracing::error!(name, error = %desc, "spawn failed");
                let _ = tx.send(Ev::Exited { name: name.into(), gen, code: None, desc });
                p.started = Some(Instant::now());
            }
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                p.pid = Some(pid);
                p.pgid = Some(pid as i32);
                p.started = Some(Instant::now());
                p.started_at_ms = Some(now_ms());
                p.state = State::Online;
                for (stream, suffix) in [
                    (child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), "out"),
                    (child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), "err"),
                ] {
                    let path = logs_dir.join(format!("{name}-{suffix}.log"));
                    match (stream, LogFile::open(&path, p.spec.log_max_bytes, p.spec.log_keep)) {
                        (Some(s), Ok(log)) => {
                            tokio::spawn(logs::pump(s, log));
                        }
                        (_, Err(e)) => tracing::error!(path = %path.display(), error = %e, "cannot open log"),
                        _ => {}
                    }
                }
                let n = name.to_string();
                tokio::spawn(async move {
                    let (code, desc) = match child.wait().await {
                        Ok(s) => (
                            s.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig)),
                            s.to_string(),
                        ),
                        Err(e) => (None, e.to_string()),
                    };
                    let _ = tx.send(Ev::Exited { name: n, gen, code, desc });
                });
                tracing::info!(name, pid, restart_count = p.restart_count, "process started");
                if p.spec.health_cmd.is_some() {
                    let interval = Duration::from_millis(p.spec.health_interval_ms);
                    self.arm(interval, Timer::HealthDue { name: name.into(), gen });
                }
            }
        }
        self.persist();
    }

    fn on_exit(&mut self, name: &str, gen: u64, code: Option<i32>, desc: String) {
        let Some(p) = self.procs.get_mut(name) else { return };
        if p.gen != gen {
            return;
        }
        p.exit_code = code;
        p.pid = None;
        let uptime = p.started.map(|s| s.elapsed()).unwrap_or_default();
        if !matches!(p.state, State::Online | State::Launching) {
            // Stopping or already stopped: the stop task reports when the whole group is gone,
            // and the leader may be reaped after that.
            return;
        }
        // The leader is gone on its own: take the rest of its group with it.
        if let Some(pg) = p.pgid.take() {
            let (sig, t) = (p.spec.kill_signal.clone(), Duration::from_millis(p.spec.kill_timeout_ms));
            tokio::spawn(async move { stop_group(pg, &sig, t).await });
        }
        let stop_code = code.is_some_and(|c| p.spec.stop_exit_codes.contains(&c));
        let restart = match p.spec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => code != Some(0) && !stop_code,
            RestartPolicy::Always => !stop_code,
        };
        tracing::info!(name, code, desc = %desc, uptime_ms = uptime.as_millis() as u64, restart, "process exited");
        if !restart {
            p.state = State::Stopped;
            p.desired = false;
            self.persist();
            return;
        }
        if uptime < Duration::from_millis(p.spec.min_uptime_ms) {
            p.unstable_restarts += 1;
        } else {
            p.unstable_restarts = 0;
        }
        if uptime >= self.cfg.backoff_reset {
            p.consecutive = 0;
        }
        if p.unstable_restarts > p.spec.max_restarts {
            tracing::error!(
                name,
                unstable_restarts = p.unstable_restarts,
                "crash loop: errored (use restart to try again)"
            );
            p.state = State::Errored;
            p.last_reason = Some(format!("exited {} times within min_uptime ({desc})", p.unstable_restarts));
            self.persist();
            return;
        }
        let delay = backoff(p.spec.restart_backoff_ms, p.spec.restart_backoff_max_ms, p.consecutive);
        p.consecutive += 1;
        p.restart_count += 1;
        p.state = State::WaitingRestart;
        p.last_reason = Some(format!("exited ({desc})"));
        let gen = p.gen;
        self.arm(delay, Timer::RestartDue { name: name.into(), gen });
        self.persist();
    }

    /// Sends the kill signal to the group, SIGKILL after the timeout, and reports back
    /// (`StopDone`) only when no process of the group is left.
    fn begin_stop(&mut self, name: &str, then: Then, reply: Option<oneshot::Sender<Response>>) {
        let Some(p) = self.procs.get_mut(name) else { return };
        if let Some(r) = reply {
            p.waiters.push(r);
        }
        p.then = then;
        if p.state == State::Stopping {
            return;
        }
        p.state = State::Stopping;
        let (gen, pg) = (p.gen, p.pgid);
        let (sig, t) = (p.spec.kill_signal.clone(), Duration::from_millis(p.spec.kill_timeout_ms));
        let tx = self.tx.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            if let Some(pg) = pg {
                stop_group(pg, &sig, t).await;
            }
            let _ = tx.send(Ev::StopDone { name: n, gen });
        });
    }

    fn on_stop_done(&mut self, name: &str, gen: u64) {
        let Some(p) = self.procs.get_mut(name) else { return };
        if p.gen != gen || p.state != State::Stopping {
            return;
        }
        p.pgid = None;
        p.pid = None;
        p.state = State::Stopped;
        let waiters = std::mem::take(&mut p.waiters);
        let then = p.then;
        tracing::info!(name, "process stopped (whole group gone)");
        let message = match then {
            Then::Stay => format!("stopped {name}"),
            Then::Restart => {
                self.spawn(name);
                format!("restarted {name}")
            }
            Then::Delete => {
                self.procs.remove(name);
                format!("deleted {name}")
            }
        };
        self.persist();
        for w in waiters {
            let _ = w.send(Response::Ok { message: message.clone() });
        }
    }

    fn health_check(&mut self, name: &str, gen: u64) {
        let Some(p) = self.procs.get(name).filter(|p| p.gen == gen && p.state == State::Online) else { return };
        let Some(cmd) = p.spec.health_cmd.clone() else { return };
        let timeout = Duration::from_millis(p.spec.health_interval_ms.clamp(100, 30_000));
        let (tx, n) = (self.tx.clone(), name.to_string());
        tokio::spawn(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .output();
            let (ok, detail) = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(o)) if o.status.success() => (true, String::new()),
                Ok(Ok(o)) => (false, format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, format!("no answer within {}ms", timeout.as_millis())),
            };
            let _ = tx.send(Ev::Health { name: n, gen, ok, detail });
        });
    }

    fn on_health(&mut self, name: &str, gen: u64, ok: bool, detail: String) {
        let Some(p) = self.procs.get_mut(name).filter(|p| p.gen == gen && p.state == State::Online) else { return };
        if ok {
            p.health_failures = 0;
        } else {
            p.health_failures += 1;
            tracing::warn!(name, failures = p.health_failures, detail = %detail, "health check failed");
        }
        if p.health_failures > p.spec.health_failures {
            p.restart_count += 1;
            p.last_reason = Some(format!("health check failed {} times: {detail}", p.health_failures));
            tracing::warn!(name, "restarting after failed health checks");
            return self.begin_stop(name, Then::Restart, None);
        }
        let interval = Duration::from_millis(p.spec.health_interval_ms);
        self.arm(interval, Timer::HealthDue { name: name.into(), gen });
    }

    fn memory_check(&mut self) {
        let limited: Vec<(String, i32, u64)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.state == State::Online)
            .filter_map(|(n, p)| Some((n.clone(), p.pgid?, p.spec.max_memory_bytes?)))
            .collect();
        if limited.is_empty() {
            return;
        }
        let groups = procfs::scan_groups();
        for (name, pg, max) in limited {
            let rss = groups.get(&pg).map(|g| g.rss_bytes).unwrap_or(0);
            if rss > max {
                if let Some(p) = self.procs.get_mut(&name) {
                    p.restart_count += 1;
                    p.last_reason = Some(format!("memory {rss} bytes over the limit of {max}"));
                }
                tracing::warn!(name = %name, rss, max, "memory over the limit; restarting");
                self.begin_stop(&name, Then::Restart, None);
            }
        }
    }

    fn statuses(&mut self) -> Vec<ProcStatus> {
        let groups = procfs::scan_groups();
        let ticks = procfs::clock_ticks() as f64;
        let now = Instant::now();
        self.procs
            .iter_mut()
            .map(|(name, p)| {
                let usage = p.pgid.and_then(|pg| groups.get(&pg));
                let (rss, cpu) = usage.map(|g| (g.rss_bytes, g.cpu_ticks)).unwrap_or((0, 0));
                if let Some((last, at)) = p.cpu_sample {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs > 0.05 {
                        p.cpu_percent = (cpu.saturating_sub(last) as f64 / ticks) / secs * 100.0;
                        p.cpu_sample = Some((cpu, now));
                    }
                } else if usage.is_some() {
                    p.cpu_sample = Some((cpu, now));
                }
                let running = matches!(p.state, State::Online | State::Stopping | State::Launching);
                ProcStatus {
                    name: name.clone(),
                    pid: if running { p.pid.unwrap_or(0) } else { 0 },
                    status: p.state.as_str().into(),
                    uptime_ms: if running { p.started.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0) } else { 0 },
                    restart_count: p.restart_count,
                    memory_bytes: rss,
                    cpu_percent: (p.cpu_percent * 10.0).round() / 10.0,
                    exit_code: p.exit_code,
                    unstable_restarts: p.unstable_restarts,
                    spec_hash: p.spec.env.get("AGENTCOM_SPEC_HASH").cloned(),
                    daemon_root: p.spec.env.get("AGENTCOM_DAEMON_ROOT").cloned(),
                }
            })
            .collect()
    }

    fn describe(&mut self, name: &str) -> Option<Describe> {
        let status = self.statuses().into_iter().find(|s| s.name == name)?;
        let p = self.procs.get(name)?;
        let logs = self.cfg.dir.join("logs");
        Some(Describe {
            status,
            spec: p.spec.clone(),
            pgid: p.pgid,
            out_log: logs.join(format!("{name}-out.log")).display().to_string(),
            err_log: logs.join(format!("{name}-err.log")).display().to_string(),
            last_restart_reason: p.last_reason.clone(),
            started_at_ms: p.started_at_ms,
        })
    }
}

fn new_proc(spec: ProcSpec) -> Proc {
    Proc {
        spec,
        desired: true,
        state: State::Stopped,
        pid: None,
        pgid: None,
        started: None,
        started_at_ms: None,
        restart_count: 0,
        unstable_restarts: 0,
        consecutive: 0,
        exit_code: None,
        gen: 0,
        then: Then::Stay,
        waiters: Vec::new(),
        health_failures: 0,
        last_reason: None,
        cpu_sample: None,
        cpu_percent: 0.0,
    }
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

/// Blocking variant for start-up, before the runtime serves anything.
fn kill_group_now(pgid: i32, signal: &str, timeout: Duration) {
    osutil::pgroup::kill_group_now(pgid, signal_of(signal), timeout)
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
