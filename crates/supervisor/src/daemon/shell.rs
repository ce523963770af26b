//! The thin shell around the [`Table`]: it turns the world into inputs (control requests, the
//! outcomes of spawns, exits, stops, health commands, `/proc` scans, watched changes, tmux
//! commands, the clock), hands them to the table and carries out the actions it returns. Nothing
//! is decided here, and nothing that blocks runs on the event loop: forks, tmux commands,
//! health commands, stops and scans run in tasks (or `spawn_blocking`) and come back as inputs;
//! `state.json` is written off the runtime's threads and awaited, so it is on disk before what
//! follows it in the batch (replies, stops) is carried out.

use super::persist::{self, Persisted};
use super::table::{Action, Input, Now, ReqId, Table};
use super::watch::Watches;
use super::{spawn, stop_group, tmux, DaemonConfig, ENV_NAME};
use crate::logs::{SharedSink, Stream};
use osutil::procfs;
use proto::control::{ProcSpec, Request, Response};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything that reaches the shell.
#[derive(Debug)]
pub enum Ev {
    /// A control request and where its answer goes.
    Req(Request, oneshot::Sender<Response>),
    /// The outcome of some IO, for the table.
    Input(Input),
    /// A spawn's outcome, with the log sink and tmux output it opened (the shell keeps them).
    Spawned { input: Input, opened: Opened },
}

/// What a spawn opened for its process, to keep for the process's life.
#[derive(Default)]
pub struct Opened {
    sink: Option<SharedSink>,
    output: Option<tmux::Output>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("sink", &self.sink.is_some()).field("output", &self.output.is_some()).finish()
    }
}

/// Room in the shell's channel. Every sender waits for room (or, on notify's thread, drops a
/// change it can send again) and the shell never sends into its own channel, so a full channel
/// slows producers and cannot deadlock. This much room means they do not even wait: a request
/// in flight per connection (each waits for its answer before reading the next line) with its
/// scan or tmux outcome, and per process one spawn outcome, one exit, one stop completion, one
/// health result and one watched change (pending until the table handled it).
pub fn capacity(cfg: &DaemonConfig) -> usize {
    2 * cfg.max_connections + 5 * cfg.max_processes + 16
}

pub struct Shell {
    cfg: DaemonConfig,
    socket: PathBuf,
    table: Table,
    started: Instant,
    tx: mpsc::Sender<Ev>,
    replies: HashMap<ReqId, oneshot::Sender<Response>>,
    last_id: ReqId,
    /// Each process's log sink and tmux output, for the life of its spec.
    io: HashMap<String, Opened>,
    watches: Watches,
    /// The `pane-died` reports of the tmux server, once a tmux process ran.
    deaths: Option<Arc<tmux::died::Deaths>>,
    /// Cancelled after a `kill` is answered.
    exit: CancellationToken,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Shell {
    pub fn new(cfg: DaemonConfig, socket: PathBuf, tx: mpsc::Sender<Ev>, exit: CancellationToken) -> Shell {
        let started = Instant::now();
        let table_cfg = super::table::TableConfig {
            dir: cfg.dir.clone(),
            pid: std::process::id(),
            memory_check_ms: cfg.memory_check.as_millis() as u64,
            backoff_reset_ms: cfg.backoff_reset.as_millis() as u64,
            max_processes: cfg.max_processes,
            clock_ticks: procfs::clock_ticks(),
        };
        let now = Now { mono_ms: 0, wall_ms: wall_ms() };
        Shell {
            table: super::table::Table::new(table_cfg, now),
            watches: Watches::new(tx.clone()),
            cfg,
            socket,
            started,
            tx,
            replies: HashMap::new(),
            last_id: 0,
            io: HashMap::new(),
            deaths: None,
            exit,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.started.elapsed().as_millis() as u64, wall_ms: wall_ms() }
    }

    /// Stops what an earlier supervisor left (its tmux server, the groups recorded in
    /// `state.json` that still carry their name) off the runtime's threads, then hands the
    /// desired state to the table.
    pub async fn restore(&mut self) {
        let dir = self.cfg.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            tmux::kill_server(&dir);
            let state = persist::load(&dir, wall_ms());
            // Its groups, and those of a reload that was under way (successor, or old process).
            let left: Vec<(String, i32, String, u64)> = state
                .processes
                .iter()
                .flat_map(|pp| pp.pgid.iter().chain(&pp.extra_pgids).map(move |pg| (pp, *pg)))
                .filter(|(pp, pg)| procfs::group_has_env(*pg, ENV_NAME, &pp.spec.name))
                .map(|(pp, pg)| (pp.spec.name.clone(), pg, pp.spec.kill_signal.clone(), pp.spec.kill_timeout_ms))
                .collect();
            (state, left)
        })
        .await;
        let (state, left) = loaded.unwrap_or_default();
        let mut stops = tokio::task::JoinSet::new();
        for (name, pg, signal, timeout_ms) in left {
            tracing::warn!(name = %name, pgid = pg, "stopping a process left from before the supervisor restarted");
            stops.spawn(async move { stop_group(pg, &signal, Duration::from_millis(timeout_ms)).await });
        }
        while stops.join_next().await.is_some() {}
        self.feed(Input::Restore { procs: state.processes }).await;
    }

    /// Serves until `stop` is cancelled (a signal, or a `kill` answered).
    pub async fn serve(&mut self, rx: &mut mpsc::Receiver<Ev>, stop: &CancellationToken) {
        loop {
            let due = self.table.next_deadline().map(|ms| self.started + Duration::from_millis(ms));
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(ev) = rx.recv() => self.on_ev(ev).await,
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => self.feed(Input::Tick).await,
            }
        }
    }

    /// At exit: stops every running group and waits for them (60 s at most); the desired state
    /// stays on disk so the next start brings them back.
    pub async fn stop_all_for_exit(&mut self, rx: &mut mpsc::Receiver<Ev>) {
        self.feed(Input::Shutdown).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.table.stopping() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => self.on_ev(ev).await,
                _ => break,
            }
        }
        self.deaths = None;
    }

    async fn on_ev(&mut self, ev: Ev) {
        match ev {
            Ev::Req(req, reply) => {
                self.last_id += 1;
                let id = self.last_id;
                self.replies.insert(id, reply);
                self.feed(Input::Request { id, req }).await;
            }
            Ev::Input(input) => self.feed(input).await,
            Ev::Spawned { input, opened } => {
                if let Input::Spawned { name, .. } = &input {
                    if self.table.has(name) {
                        let io = self.io.entry(name.clone()).or_default();
                        io.sink = io.sink.take().or(opened.sink);
                        io.output = io.output.take().or(opened.output);
                    }
                }
                self.feed(input).await;
            }
        }
    }

    async fn feed(&mut self, input: Input) {
        let now = self.now();
        for action in self.table.handle(input, now) {
            self.execute(action).await;
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Persist(state) => self.persist(state).await,
            Action::Reply { id, response } => {
                if let Some(tx) = self.replies.remove(&id) {
                    let _ = tx.send(response);
                }
            }
            Action::Spawn { name, gen, spec } => self.spawn(name, gen, *spec),
            Action::StopGroup { name, gen, pgid, signal, timeout_ms, report } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    stop_group(pgid, &signal, Duration::from_millis(timeout_ms)).await;
                    if report {
                        let _ = tx.send(Ev::Input(Input::StopDone { name, gen })).await;
                    }
                });
            }
            Action::Health { name, gen, cmd, timeout_ms } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let (ok, detail) = health(&cmd, Duration::from_millis(timeout_ms)).await;
                    let _ = tx.send(Ev::Input(Input::Health { name, gen, ok, detail })).await;
                });
            }
            Action::Scan(scan) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let groups = tokio::task::spawn_blocking(procfs::scan_groups).await.unwrap_or_default();
                    let _ = tx.send(Ev::Input(Input::Scanned { scan, groups })).await;
                });
            }
            Action::TmuxSend { id, name, text, enter } => {
                let (tx, dir) = (self.tx.clone(), self.cfg.dir.clone());
                tokio::spawn(async move {
                    let bytes = text.len();
                    let sent =
                        tokio::task::spawn_blocking(move || tmux::send(&dir, &name, &text, enter).map(|()| name));
                    let result = match sent.await {
                        Ok(Ok(name)) => Ok(format!("sent {bytes} bytes to {name}")),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(format!("tmux send failed: {e}")),
                    };
                    let _ = tx.send(Ev::Input(Input::Sent { id, result })).await;
                });
            }
            Action::Flush { id, name, files, keep } => {
                // Through the open sink when there is one, so no line is half written meanwhile.
                let sink = self.io.get(&name).and_then(|io| io.sink.clone());
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let cleared = tokio::task::spawn_blocking(move || match sink {
                        Some(sink) => sink.lock().unwrap_or_else(|p| p.into_inner()).clear(),
                        None => files.iter().try_for_each(|f| crate::logs::clear_file(f, keep)),
                    });
                    let result = match cleared.await {
                        Ok(Ok(())) => Ok(format!("flushed the logs of {name}")),
                        Ok(Err(e)) => Err(format!("cannot flush the logs of {name}: {e}")),
                        Err(e) => Err(format!("cannot flush the logs of {name}: {e}")),
                    };
                    let _ = tx.send(Ev::Input(Input::Flushed { id, result })).await;
                });
            }
            Action::Watch(specs) => self.watches.sync(specs.iter()),
            Action::WatchHandled { name } => self.watches.handled(&name),
            Action::Forget { name } => drop(self.io.remove(&name)),
            Action::Exit => self.exit.cancel(),
        }
    }

    async fn persist(&self, state: Persisted) {
        let dir = self.cfg.dir.clone();
        let _ = tokio::task::spawn_blocking(move || persist::save(&dir, &state)).await;
    }

    /// Starts a process in a task of its own (a fork, or tmux commands off the runtime's
    /// threads): `Spawned` comes back first, then `Exited` when it ends.
    fn spawn(&mut self, name: String, gen: u64, spec: ProcSpec) {
        let io = self.io.get(&name);
        let sink = io.and_then(|io| io.sink.clone());
        // The output stays with the shell; the job needs its paths only.
        let output = io.and_then(|io| io.output.as_ref()).map(|o| (o.fifo.clone(), o.exec.clone()));
        let deaths = if spec.tmux { self.deaths() } else { Ok(None) };
        let job = Job { dir: self.cfg.dir.clone(), socket: self.socket.clone(), tx: self.tx.clone() };
        tokio::spawn(job.run(name, gen, spec, sink, output, deaths));
    }

    /// The tmux server's death reports, opened with the first tmux process.
    fn deaths(&mut self) -> Result<Option<Arc<tmux::died::Deaths>>, String> {
        if self.deaths.is_none() {
            self.deaths = Some(Arc::new(tmux::died::Deaths::open(&self.cfg.dir)?));
        }
        Ok(self.deaths.clone())
    }

    /// After the last stop: the private tmux server (if one ran) goes too.
    pub async fn close(self) {
        let dir = self.cfg.dir.clone();
        drop(self.io);
        let _ = tokio::task::spawn_blocking(move || tmux::kill_server(&dir)).await;
    }
}

/// Runs a health command: `sh -c`, within `timeout`.
async fn health(cmd: &str, timeout: Duration) -> (bool, String) {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(o)) if o.status.success() => (true, String::new()),
        Ok(Ok(o)) => (false, format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// One spawn, carried out in its own task.
struct Job {
    dir: PathBuf,
    socket: PathBuf,
    tx: mpsc::Sender<Ev>,
}

/// How the spawned process will tell us it ended.
enum Waiter {
    Child(tokio::process::Child),
    Pane(tmux::Pane, Arc<tmux::died::Deaths>),
}

impl Job {
    async fn run(
        self,
        name: String,
        gen: u64,
        spec: ProcSpec,
        sink: Option<SharedSink>,
        output: Option<(PathBuf, PathBuf)>,
        deaths: Result<Option<Arc<tmux::died::Deaths>>, String>,
    ) {
        let mut opened = Opened::default();
        let started = self.start(&name, &spec, sink, output, deaths, &mut opened).await;
        let (result, waiter) = match started {
            Ok((pid, waiter)) => (Ok(pid), Some(waiter)),
            Err(why) => (Err(why), None),
        };
        let input = Input::Spawned { name: name.clone(), gen, result };
        if self.tx.send(Ev::Spawned { input, opened }).await.is_err() {
            return;
        }
        let (code, desc) = match waiter {
            None => return,
            Some(Waiter::Child(child)) => spawn::wait(child).await,
            Some(Waiter::Pane(pane, deaths)) => tmux::died::wait_exit(self.dir.clone(), pane, deaths).await,
        };
        let _ = self.tx.send(Ev::Input(Input::Exited { name, gen, code, desc })).await;
    }

    /// Opens what the process needs (its log files, its tmux output) and starts it. A failure
    /// goes to its error log too, so `logs` explains it.
    async fn start(
        &self,
        name: &str,
        spec: &ProcSpec,
        sink: Option<SharedSink>,
        output: Option<(PathBuf, PathBuf)>,
        deaths: Result<Option<Arc<tmux::died::Deaths>>, String>,
        opened: &mut Opened,
    ) -> Result<(u32, Waiter), String> {
        let sink = match sink {
            Some(s) => s,
            None => {
                let (dir, s) = (self.dir.clone(), spec.clone());
                let s = tokio::task::spawn_blocking(move || spawn::open_sink(&dir, &s))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|e| format!("cannot open its log files: {e}"))?;
                opened.sink = Some(s.clone());
                s
            }
        };
        let started = if spec.tmux {
            self.start_tmux(name, spec, &sink, output, deaths, opened).await
        } else {
            spawn::spawn_fork(spec, &self.socket, &sink).and_then(|child| {
                let pid = child.id().ok_or("the child exited before its pid was read")?;
                Ok((pid, Waiter::Child(child)))
            })
        };
        if let Err(why) = &started {
            let line = format!("agentcom: cannot start {name}: {why}");
            let _ = sink.lock().unwrap_or_else(|p| p.into_inner()).write(Stream::Err, line.as_bytes());
        }
        started
    }

    async fn start_tmux(
        &self,
        name: &str,
        spec: &ProcSpec,
        sink: &SharedSink,
        output: Option<(PathBuf, PathBuf)>,
        deaths: Result<Option<Arc<tmux::died::Deaths>>, String>,
        opened: &mut Opened,
    ) -> Result<(u32, Waiter), String> {
        let deaths = deaths?.ok_or("no tmux death reports")?;
        let paths = match output {
            Some(p) => p,
            None => {
                let o = tmux::open_output(&self.dir, name, sink)?;
                let paths = (o.fifo.clone(), o.exec.clone());
                opened.output = Some(o);
                paths
            }
        };
        let (dir, socket, spec, d) = (self.dir.clone(), self.socket.clone(), spec.clone(), deaths.clone());
        let pane = tokio::task::spawn_blocking(move || tmux::spawn(&dir, &spec, &socket, &paths.0, &paths.1, &d))
            .await
            .map_err(|e| format!("tmux spawn failed: {e}"))??;
        Ok((pane.pid, Waiter::Pane(pane, deaths)))
    }
}
