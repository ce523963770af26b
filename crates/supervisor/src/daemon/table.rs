//! The process table: the one owner of every process's state. Requests, exits, stop
//! completions, health results and timers come in; processes are spawned, signalled and
//! persisted in reaction.

use super::persist::{self, Persisted, PersistedProc};
use super::watch::Watches;
use super::{backoff, kill_group_now, stop_group, DaemonConfig, Ev, ENV_NAME};
use super::{spawn, tmux};
use crate::logs::{SharedSink, Stream};
use osutil::procfs;
use proto::control::{ProcSpec, Request, Response, RestartPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Launching,
    Online,
    Stopping,
    Stopped,
    Errored,
    WaitingRestart,
}

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            State::Launching => "launching",
            State::Online => "online",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Errored => "errored",
            State::WaitingRestart => "waiting-restart",
        }
    }
    pub(super) fn running(self) -> bool {
        matches!(self, State::Online | State::Launching | State::Stopping)
    }
}

/// What to do once a stop completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Stay,
    Restart,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Timer {
    RestartDue {
        name: String,
        gen: u64,
    },
    HealthDue {
        name: String,
        gen: u64,
    },
    MemoryCheck,
    /// `watch_delay_ms` after the first change of a watched path.
    WatchDue {
        name: String,
        path: PathBuf,
    },
    /// The next time of a `cron_restart` schedule; `seq` tells schedules of earlier specs apart.
    CronDue {
        name: String,
        seq: u64,
    },
}

pub(super) struct Proc {
    pub(super) spec: ProcSpec,
    /// Should run: survives supervisor restarts.
    pub(super) desired: bool,
    pub(super) state: State,
    pub(super) pid: Option<u32>,
    pub(super) pgid: Option<i32>,
    pub(super) started: Option<Instant>,
    pub(super) started_at_ms: Option<u64>,
    pub(super) restart_count: u64,
    pub(super) unstable_restarts: u32,
    /// Consecutive restarts, for the backoff; reset after `backoff_reset` of uptime.
    pub(super) consecutive: u32,
    pub(super) exit_code: Option<i32>,
    pub(super) gen: u64,
    pub(super) then: Then,
    pub(super) waiters: Vec<oneshot::Sender<Response>>,
    pub(super) health_failures: u32,
    pub(super) last_reason: Option<String>,
    pub(super) cpu_sample: Option<(u64, Instant)>,
    pub(super) cpu_percent: f64,
    /// The log files, open for the life of this spec (every restart appends to them).
    pub(super) sink: Option<SharedSink>,
    /// For a tmux process: the FIFO its panes write into.
    pub(super) tmux_output: Option<tmux::Output>,
    /// Stopped by `stop` or `kill`, not by exiting: a cron schedule leaves it alone.
    pub(super) user_stopped: bool,
    /// A watch restart is armed.
    pub(super) watch_armed: bool,
    pub(super) cron_seq: u64,
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
        sink: None,
        tmux_output: None,
        user_stopped: false,
        watch_armed: false,
        cron_seq: 0,
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(super) fn err(e: String) -> Response {
    Response::Error { error: e }
}

pub(super) fn ok(message: String) -> Response {
    Response::Ok { message }
}

pub struct Daemon {
    pub(super) cfg: DaemonConfig,
    pub(super) socket: PathBuf,
    pub(super) procs: BTreeMap<String, Proc>,
    pub(super) timers: BTreeMap<(Instant, u64), Timer>,
    pub(super) timer_seq: u64,
    pub(super) tx: mpsc::UnboundedSender<Ev>,
    /// Cancelled to make the daemon exit (after a `kill` is answered).
    pub(super) exit: CancellationToken,
    /// A `kill` waiting for every stop to complete.
    pub(super) killing: Option<oneshot::Sender<Response>>,
    pub(super) watches: Watches,
}

impl Daemon {
    pub fn new(cfg: DaemonConfig, socket: PathBuf, tx: mpsc::UnboundedSender<Ev>, exit: CancellationToken) -> Daemon {
        let mut d = Daemon {
            cfg,
            socket,
            procs: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            watches: Watches::new(tx.clone()),
            tx,
            exit,
            killing: None,
        };
        d.arm(d.cfg.memory_check, Timer::MemoryCheck);
        d
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    pub(super) fn arm(&mut self, after: Duration, t: Timer) {
        self.timer_seq += 1;
        self.timers.insert((Instant::now() + after, self.timer_seq), t);
    }

    pub fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(e) = self.timers.first_entry() {
            if e.key().0 > now {
                break;
            }
            let t = e.remove();
            match t {
                Timer::RestartDue { name, gen } => {
                    if self.procs.get(&name).is_some_and(|p| p.gen == gen && p.state == State::WaitingRestart) {
                        let _ = self.spawn(&name);
                    }
                }
                Timer::HealthDue { name, gen } => self.health_check(&name, gen),
                Timer::MemoryCheck => {
                    self.memory_check();
                    self.arm(self.cfg.memory_check, Timer::MemoryCheck);
                }
                Timer::WatchDue { name, path } => self.on_watch_due(&name, &path),
                Timer::CronDue { name, seq } => self.on_cron_due(&name, seq),
            }
        }
    }

    pub(super) fn persist(&self) {
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
        persist::save(&self.cfg.dir, &p);
    }

    /// Loads the desired state. Groups left from a previous run (the supervisor was killed)
    /// are stopped, then every process that should run is started afresh: we restart rather
    /// than re-adopt, because only a parent can wait for a child's exit status.
    pub fn restore(&mut self) {
        tmux::kill_server(&self.cfg.dir);
        for pp in persist::load(&self.cfg.dir, now_ms()).processes {
            if let Some(pg) = pp.pgid.filter(|pg| procfs::group_has_env(*pg, ENV_NAME, &pp.spec.name)) {
                tracing::warn!(name = %pp.spec.name, pgid = pg, "stopping a process left from before the supervisor restarted");
                kill_group_now(pg, &pp.spec.kill_signal, Duration::from_millis(pp.spec.kill_timeout_ms));
            }
            let name = pp.spec.name.clone();
            let mut p = new_proc(pp.spec);
            p.desired = pp.desired;
            p.restart_count = pp.restart_count;
            self.procs.insert(name.clone(), p);
            self.arm_cron(&name);
            if pp.desired {
                let _ = self.spawn(&name);
            }
        }
        self.sync_watches();
        self.persist();
    }

    pub fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Req(req, reply) => self.on_request(req, reply),
            Ev::Exited { name, gen, code, desc } => self.on_exit(&name, gen, code, desc),
            Ev::StopDone { name, gen } => self.on_stop_done(&name, gen),
            Ev::Health { name, gen, ok, detail } => self.on_health(&name, gen, ok, detail),
            Ev::Watched { name, path } => self.on_watched(&name, path),
        }
        self.check_killed();
    }

    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let resp = match req {
            Request::Ping => Response::Pong { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into() },
            Request::Ps => Response::List { processes: self.statuses() },
            Request::Describe { name } => match self.describe(&name) {
                Some(d) => Response::Described(Box::new(d)),
                None => err(format!("no process named {name}")),
            },
            Request::Start { spec } => self.start(*spec),
            Request::Stop { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = false;
                p.user_stopped = true;
                if p.state.running() {
                    self.persist();
                    return self.begin_stop(&name, Then::Stay, Some(reply));
                }
                p.state = State::Stopped;
                p.gen += 1; // cancels a pending restart
                self.persist();
                ok(format!("stopped {name}"))
            }
            Request::Restart { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = true;
                p.user_stopped = false;
                p.unstable_restarts = 0;
                p.consecutive = 0;
                if p.state.running() {
                    p.restart_count += 1;
                    p.last_reason = Some("restarted on request".into());
                    self.persist();
                    return self.begin_stop(&name, Then::Restart, Some(reply));
                }
                if p.state == State::WaitingRestart || p.pid.is_some() {
                    p.restart_count += 1;
                }
                match self.spawn(&name) {
                    Ok(()) => ok(format!("restarted {name}")),
                    Err(e) => err(format!("cannot start {name}: {e}")),
                }
            }
            Request::Delete { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return drop(reply.send(err(format!("no process named {name}"))));
                };
                p.desired = false;
                if p.state.running() {
                    return self.begin_stop(&name, Then::Delete, Some(reply));
                }
                self.procs.remove(&name);
                self.sync_watches();
                self.persist();
                ok(format!("deleted {name}"))
            }
            Request::Kill => {
                let running: Vec<String> =
                    self.procs.iter().filter(|(_, p)| p.state.running()).map(|(n, _)| n.clone()).collect();
                for p in self.procs.values_mut() {
                    p.desired = false;
                    p.user_stopped = true;
                    if !p.state.running() {
                        p.state = State::Stopped;
                        p.gen += 1;
                    }
                }
                self.persist();
                tracing::info!(count = running.len(), "kill: stopping every process, then the supervisor");
                for name in &running {
                    self.begin_stop(name, Then::Stay, None);
                }
                self.killing = Some(reply);
                return;
            }
            Request::Send { name, text, enter } => {
                match self.procs.get(&name) {
                    None => err(format!("no process named {name}")),
                    Some(p) if !p.spec.tmux => err(format!("{name} does not run in tmux (start it with --tmux)")),
                    Some(p) if p.state != State::Online => err(format!("{name} is {}", p.state.as_str())),
                    Some(_) => {
                        // tmux answers in milliseconds, but off the table's task all the same.
                        let dir = self.cfg.dir.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = reply.send(match tmux::send(&dir, &name, &text, enter) {
                                Ok(()) => ok(format!("sent {} bytes to {name}", text.len())),
                                Err(e) => err(e),
                            });
                        });
                        return;
                    }
                }
            }
        };
        let _ = reply.send(resp);
    }

    /// Answers a `kill` once no process is stopping any more, then makes the daemon exit.
    fn check_killed(&mut self) {
        if self.killing.is_some() && !self.procs.values().any(|p| p.state == State::Stopping) {
            let n = self.procs.len();
            if let Some(reply) = self.killing.take() {
                let _ = reply.send(ok(format!("stopped {n} processes; the supervisor exits")));
            }
            self.exit.cancel();
        }
    }

    fn start(&mut self, spec: ProcSpec) -> Response {
        let mut problems = spec.validate();
        problems.extend(super::checks::problems(&spec));
        if !problems.is_empty() {
            return err(problems.join("; "));
        }
        let all = spec.expand_instances();
        for s in &all {
            if let Some(p) = self.procs.get(&s.name).filter(|p| !matches!(p.state, State::Stopped | State::Errored)) {
                return err(format!("{} already exists ({}); stop or delete it first", s.name, p.state.as_str()));
            }
        }
        let new = all.iter().filter(|s| !self.procs.contains_key(&s.name)).count();
        if self.procs.len() + new > self.cfg.max_processes {
            return err(format!(
                "the supervisor holds {} processes and its limit is {} (--max-processes)",
                self.procs.len(),
                self.cfg.max_processes
            ));
        }
        let mut previous = Vec::new();
        for s in &all {
            let old = self.procs.remove(&s.name);
            let mut p = new_proc(s.clone());
            if let Some(old) = &old {
                p.restart_count = old.restart_count;
                p.gen = old.gen;
                p.cron_seq = old.cron_seq + 1;
            }
            previous.push((s.name.clone(), old));
            self.procs.insert(s.name.clone(), p);
        }
        for s in &all {
            if let Err(e) = self.spawn(&s.name) {
                // Nothing keeps running: the table is as it was before the request.
                for (name, old) in previous {
                    if let Some(p) = self.procs.get(&name).filter(|p| p.state.running()) {
                        if let Some(pg) = p.pgid {
                            let (sig, t) = (p.spec.kill_signal.clone(), Duration::from_millis(p.spec.kill_timeout_ms));
                            tokio::spawn(async move { stop_group(pg, &sig, t).await });
                        }
                    }
                    self.procs.remove(&name);
                    if let Some(old) = old {
                        self.procs.insert(name, old);
                    }
                }
                self.persist();
                return err(format!("cannot start {}: {e}", s.name));
            }
        }
        for s in &all {
            self.arm_cron(&s.name);
        }
        self.sync_watches();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        ok(format!("started {}", names.join(", ")))
    }

    /// The processes that watch files now: those that should run.
    pub(super) fn sync_watches(&mut self) {
        let specs: Vec<ProcSpec> = self.procs.values().filter(|p| p.desired).map(|p| p.spec.clone()).collect();
        self.watches.sync(specs.iter());
    }

    /// Starts the process now. A command that cannot be executed counts as an exit (the
    /// restart policy applies) and its reason goes to the error log, so `logs` and `ps` show it.
    pub(super) fn spawn(&mut self, name: &str) -> Result<(), String> {
        let (socket, tx, dir) = (self.socket.clone(), self.tx.clone(), self.cfg.dir.clone());
        let Some(p) = self.procs.get_mut(name) else { return Err(format!("no process named {name}")) };
        p.gen += 1;
        p.state = State::Launching;
        p.health_failures = 0;
        p.cpu_sample = None;
        p.cpu_percent = 0.0;
        p.started = Some(Instant::now());
        let gen = p.gen;
        let sink = match &p.sink {
            Some(s) => Ok(s.clone()),
            None => spawn::open_sink(&dir, &p.spec).map_err(|e| format!("cannot open its log files: {e}")),
        };
        let result = sink.and_then(|sink| {
            p.sink = Some(sink.clone());
            let started = if p.spec.tmux {
                if p.tmux_output.is_none() {
                    p.tmux_output = Some(tmux::open_output(&dir, name, &sink)?);
                }
                let output = p.tmux_output.as_ref().expect("just opened");
                tmux::spawn(&dir, &p.spec, &socket, output, gen, &tx)
            } else {
                spawn::spawn_fork(&p.spec, &socket, &sink, gen, &tx)
            };
            if let Err(why) = &started {
                let line = format!("agentcom: cannot start {name}: {why}");
                let _ = sink.lock().unwrap_or_else(|p| p.into_inner()).write(Stream::Err, line.as_bytes());
            }
            started
        });
        let health = match &result {
            Err(why) => {
                tracing::error!(name, error = %why, "spawn failed");
                let _ =
                    tx.send(Ev::Exited { name: name.into(), gen, code: None, desc: format!("cannot start: {why}") });
                None
            }
            Ok(pid) => {
                p.pid = Some(*pid);
                p.pgid = Some(*pid as i32);
                p.started_at_ms = Some(now_ms());
                p.state = State::Online;
                tracing::info!(name, pid, tmux = p.spec.tmux, restart_count = p.restart_count, "process started");
                p.spec.health_cmd.as_ref().map(|_| Duration::from_millis(p.spec.health_interval_ms))
            }
        };
        if let Some(interval) = health {
            self.arm(interval, Timer::HealthDue { name: name.into(), gen });
        }
        self.persist();
        result.map(drop)
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
        let exited = if desc.starts_with("cannot start") { desc.clone() } else { format!("exited ({desc})") };
        if !restart {
            p.state = State::Stopped;
            p.desired = false;
            p.last_reason = Some(exited);
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
            p.last_reason = Some(format!("exited {} times within min_uptime ({exited})", p.unstable_restarts));
            self.persist();
            return;
        }
        let delay = backoff(p.spec.restart_backoff_ms, p.spec.restart_backoff_max_ms, p.consecutive)
            .max(Duration::from_millis(p.spec.restart_delay_ms));
        p.consecutive += 1;
        p.restart_count += 1;
        p.state = State::WaitingRestart;
        p.last_reason = Some(exited);
        let gen = p.gen;
        self.arm(delay, Timer::RestartDue { name: name.into(), gen });
        self.persist();
    }

    /// Sends the kill signal to the group, SIGKILL after the timeout, and reports back
    /// (`StopDone`) only when no process of the group is left.
    pub(super) fn begin_stop(&mut self, name: &str, then: Then, reply: Option<oneshot::Sender<Response>>) {
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
            Then::Stay => Ok(format!("stopped {name}")),
            Then::Restart => self.spawn(name).map(|_| format!("restarted {name}")),
            Then::Delete => {
                self.procs.remove(name);
                self.sync_watches();
                Ok(format!("deleted {name}"))
            }
        };
        self.persist();
        for w in waiters {
            let _ = w.send(match &message {
                Ok(m) => ok(m.clone()),
                Err(e) => err(format!("cannot start {name}: {e}")),
            });
        }
    }

    /// At exit: stops every running group, waits for them (60 s at most), and keeps the desired
    /// state on disk so the next start brings them back.
    pub async fn stop_all_for_exit(&mut self, rx: &mut mpsc::UnboundedReceiver<Ev>) {
        let running: Vec<String> =
            self.procs.iter().filter(|(_, p)| p.pgid.is_some()).map(|(n, _)| n.clone()).collect();
        tracing::info!(count = running.len(), "supervisor stopping its processes");
        for name in &running {
            self.begin_stop(name, Then::Stay, None);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.procs.values().any(|p| p.state == State::Stopping) && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev @ (Ev::Exited { .. } | Ev::StopDone { .. }))) => self.on_event(ev),
                Ok(Some(Ev::Req(_, reply))) => drop(reply.send(err("supervisor shutting down".into()))),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}
