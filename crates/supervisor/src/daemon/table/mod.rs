//! The process table: the one owner of every process's state, and no IO. [`Table::handle`]
//! takes an [`Input`] (a control request, a spawn's result, an exit, a stop completion, a health
//! result, a `/proc` scan, a watched change, a tmux outcome, a flush, a timer tick) and the time, changes
//! the state and returns the [`Action`]s to carry out, in order. The shell (`shell.rs`) does the
//! IO and feeds its outcomes back as inputs. Time is a parameter ([`Now`]), and every timer is
//! data with a deadline in it, so the restart policy is tested by advancing a number.

pub(super) mod checks;
mod life;
mod reload;
mod requests;
mod status;
#[cfg(test)]
mod tests;

use super::persist::{Persisted, PersistedProc};
use osutil::procfs::GroupUsage;
use proto::control::{ProcSpec, Request, Response};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The time as the table sees it: handed in by the shell, never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds: uptime, backoff and every timer.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch: `started_at_ms`, and cron schedules (in local time).
    pub wall_ms: u64,
}

/// Names a control request until its reply.
pub type ReqId = u64;

/// Why `/proc` is scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Group memory against `max_memory_bytes`.
    Memory,
    /// Memory and CPU for `ps` (`describe: None`) or `describe`.
    Status { id: ReqId, describe: Option<String> },
}

#[derive(Debug, Clone)]
pub enum Input {
    Request {
        id: ReqId,
        req: Request,
    },
    /// At start: the desired state from `state.json`, the groups left from before already gone.
    Restore {
        procs: Vec<PersistedProc>,
    },
    /// The outcome of [`Action::Spawn`]: the pid (the leader of its own group), or why not.
    Spawned {
        name: String,
        gen: u64,
        result: Result<u32, String>,
    },
    Exited {
        name: String,
        gen: u64,
        code: Option<i32>,
        desc: String,
    },
    /// Every process of the group is gone after a reported [`Action::StopGroup`].
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
    Scanned {
        scan: Scan,
        groups: HashMap<i32, GroupUsage>,
    },
    /// A watched path of the process changed (once until [`Action::WatchHandled`]).
    Watched {
        name: String,
        path: PathBuf,
    },
    /// The outcome of [`Action::TmuxSend`].
    Sent {
        id: ReqId,
        result: Result<String, String>,
    },
    /// The outcome of [`Action::Flush`].
    Flushed {
        id: ReqId,
        result: Result<String, String>,
    },
    /// A deadline may have passed.
    Tick,
    /// The supervisor is stopping: stop every group, keep the desired state, take no new work.
    Shutdown,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Write `state.json`. It comes first in a batch: what the rest acts on is on disk before.
    Persist(Persisted),
    Reply {
        id: ReqId,
        response: Response,
    },
    /// Start generation `gen`: answer `Spawned`, then `Exited` when it ends.
    Spawn {
        name: String,
        gen: u64,
        spec: Box<ProcSpec>,
    },
    /// `signal` to the whole group, SIGKILL after `timeout_ms`; with `report`, answer
    /// `StopDone` once no process of the group is left.
    StopGroup {
        name: String,
        gen: u64,
        pgid: i32,
        signal: String,
        timeout_ms: u64,
        report: bool,
    },
    /// Run the health command (`sh -c`) within `timeout_ms`; answer `Health`.
    Health {
        name: String,
        gen: u64,
        cmd: String,
        timeout_ms: u64,
    },
    /// Read the process groups' usage from `/proc`; answer `Scanned`.
    Scan(Scan),
    /// Type into a tmux process; answer `Sent`.
    TmuxSend {
        id: ReqId,
        name: String,
        text: String,
        enter: bool,
    },
    /// Watch the paths of exactly these specs.
    Watch(Vec<ProcSpec>),
    /// Empty the process's log files (`files`, each with its `keep` rotated ones); answer
    /// `Flushed`.
    Flush {
        id: ReqId,
        name: String,
        files: Vec<PathBuf>,
        keep: u32,
    },
    /// A change of `name` was handled: the next one counts again.
    WatchHandled {
        name: String,
    },
    /// The process left the table or got a new spec: close its log files and tmux output.
    Forget {
        name: String,
    },
    /// A `kill` is answered: the supervisor exits.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Launching,
    Online,
    Stopping,
    Stopped,
    Errored,
    WaitingRestart,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Launching => "launching",
            State::Online => "online",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Errored => "errored",
            State::WaitingRestart => "waiting-restart",
        }
    }
    pub fn running(self) -> bool {
        matches!(self, State::Online | State::Launching | State::Stopping)
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
    /// The next time of a `cron_restart` schedule (`at_ms`, wall time); `seq` tells schedules of
    /// earlier specs apart.
    CronDue {
        name: String,
        seq: u64,
        at_ms: u64,
    },
    /// Whether the successor of a reload (generation `gen`) is healthy yet.
    ReloadCheck {
        name: String,
        gen: u64,
    },
    /// The reload's bound: a successor not healthy by now fails it.
    ReloadTimeout {
        name: String,
        gen: u64,
    },
}

#[derive(Debug)]
struct Proc {
    /// pm2's `pm_id`: see [`proto::control::ProcStatus::id`].
    id: u32,
    spec: ProcSpec,
    /// Should run: survives supervisor restarts.
    desired: bool,
    state: State,
    pid: Option<u32>,
    pgid: Option<i32>,
    /// Monotonic ms of the last start.
    started: Option<u64>,
    started_at_ms: Option<u64>,
    restart_count: u64,
    unstable_restarts: u32,
    /// Consecutive restarts, for the backoff; reset after `backoff_reset_ms` of uptime.
    consecutive: u32,
    exit_code: Option<i32>,
    gen: u64,
    /// A spawn is out and its `Spawned` has not come back: a stop waits for it.
    spawning: bool,
    then: Then,
    /// Requests answered when the stop completes.
    waiters: Vec<ReqId>,
    /// Requests answered when the spawn comes back, with the verb of their answer.
    spawn_waiters: Vec<(ReqId, &'static str)>,
    /// The `start` whose instances are spawned one after the other, this one next to answer.
    batch: Option<ReqId>,
    health_failures: u32,
    last_reason: Option<String>,
    /// CPU ticks of the group and when they were read.
    cpu_sample: Option<(u64, u64)>,
    cpu_percent: f64,
    /// Stopped by `stop` or `kill`, not by exiting: a cron schedule leaves it alone.
    user_stopped: bool,
    /// A watch restart is armed.
    watch_armed: bool,
    cron_seq: u64,
    /// A reload in progress: its successor runs beside this process until it is healthy.
    reload: Option<reload::Successor>,
}

fn new_proc(spec: ProcSpec, id: u32) -> Proc {
    Proc {
        id,
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
        spawning: false,
        then: Then::Stay,
        waiters: Vec::new(),
        spawn_waiters: Vec::new(),
        batch: None,
        health_failures: 0,
        last_reason: None,
        cpu_sample: None,
        cpu_percent: 0.0,
        user_stopped: false,
        watch_armed: false,
        cron_seq: 0,
        reload: None,
    }
}

fn err(e: String) -> Response {
    Response::Error { error: e }
}

fn ok(message: String) -> Response {
    Response::Ok { message }
}

/// What the table needs to know of its supervisor.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The supervisor's folder (log paths and the tmux socket, as `describe` shows them).
    pub dir: PathBuf,
    /// Our pid, for `ping`.
    pub pid: u32,
    /// How often group memory is compared with `max_memory_bytes`.
    pub memory_check_ms: u64,
    /// A process up this long gets its backoff reset.
    pub backoff_reset_ms: u64,
    pub max_processes: usize,
    /// Clock ticks per second, the unit of the CPU times in a scan.
    pub clock_ticks: u64,
}

/// A `start` in progress: its instances are spawned one by one, and the first that cannot
/// start puts the table back as it was.
#[derive(Debug)]
struct Starting {
    names: Vec<String>,
    next: usize,
    previous: Vec<(String, Option<Proc>)>,
}

#[derive(Debug)]
pub struct Table {
    cfg: TableConfig,
    procs: BTreeMap<String, Proc>,
    /// Deadlines in monotonic ms, in firing order (the sequence number keeps equal ones apart).
    timers: BTreeMap<(u64, u64), Timer>,
    timer_seq: u64,
    /// Generations are unique across the table, so a late report of a replaced process never
    /// matches its successor.
    last_gen: u64,
    starts: BTreeMap<ReqId, Starting>,
    /// Groups stopped on their way out, by generation: a reload's old process, or a successor
    /// that failed. Their requests are answered once they are gone.
    retiring: BTreeMap<u64, reload::Retiring>,
    /// A `kill` waiting for every stop to complete.
    killing: Option<ReqId>,
    /// Shutting down: timers do not fire, requests are refused.
    closing: bool,
    out: Vec<Action>,
    dirty: bool,
}

impl Table {
    pub fn new(cfg: TableConfig, now: Now) -> Table {
        let mut t = Table {
            cfg,
            procs: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            last_gen: 0,
            starts: BTreeMap::new(),
            retiring: BTreeMap::new(),
            killing: None,
            closing: false,
            out: Vec::new(),
            dirty: false,
        };
        t.arm(now, t.cfg.memory_check_ms, Timer::MemoryCheck);
        t
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the table holds `name` (the shell keeps IO only for processes it holds).
    pub fn has(&self, name: &str) -> bool {
        self.procs.contains_key(name)
    }

    /// A process is being stopped (or its stop waits for its spawn), or a group is on its way
    /// out.
    pub fn stopping(&self) -> bool {
        self.procs.values().any(|p| p.state == State::Stopping) || !self.retiring.is_empty()
    }

    /// When the table wants a `Tick`, in monotonic ms.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.closing {
            return None;
        }
        self.timers.keys().next().map(|(at, _)| *at)
    }

    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Action> {
        match input {
            Input::Request { id, req } => self.on_request(id, req, now),
            Input::Restore { procs } => self.restore(procs, now),
            Input::Spawned { name, gen, result } => self.on_spawned(&name, gen, result, now),
            Input::Exited { name, gen, code, desc } => self.on_exit(&name, gen, code, desc, now),
            Input::StopDone { name, gen } => self.on_stop_done(&name, gen, now),
            Input::Health { name, gen, ok, detail } => self.on_health(&name, gen, ok, detail, now),
            Input::Scanned { scan, groups } => self.on_scanned(scan, &groups, now),
            Input::Watched { name, path } => self.on_watched(&name, path, now),
            Input::Sent { id, result } | Input::Flushed { id, result } => self.reply(id, result.map_or_else(err, ok)),
            Input::Tick => self.fire_timers(now),
            Input::Shutdown => self.shutdown(now),
        }
        self.check_killed();
        let mut out = std::mem::take(&mut self.out);
        if std::mem::take(&mut self.dirty) {
            out.insert(0, Action::Persist(self.snapshot()));
        }
        out
    }

    fn reply(&mut self, id: ReqId, response: Response) {
        self.out.push(Action::Reply { id, response });
    }

    fn arm(&mut self, now: Now, after_ms: u64, t: Timer) {
        self.timer_seq += 1;
        self.timers.insert((now.mono_ms.saturating_add(after_ms), self.timer_seq), t);
    }

    fn fire_timers(&mut self, now: Now) {
        if self.closing {
            return;
        }
        while let Some(e) = self.timers.first_entry() {
            if e.key().0 > now.mono_ms {
                break;
            }
            match e.remove() {
                Timer::RestartDue { name, gen } => {
                    if self.procs.get(&name).is_some_and(|p| p.gen == gen && p.state == State::WaitingRestart) {
                        self.spawn(&name, now);
                    }
                }
                Timer::HealthDue { name, gen } => self.health_check(&name, gen),
                Timer::MemoryCheck => {
                    self.memory_check();
                    self.arm(now, self.cfg.memory_check_ms, Timer::MemoryCheck);
                }
                Timer::WatchDue { name, path } => self.on_watch_due(&name, &path, now),
                Timer::CronDue { name, seq, at_ms } => self.on_cron_due(&name, seq, at_ms, now),
                Timer::ReloadCheck { name, gen } => self.reload_check(&name, gen, now),
                Timer::ReloadTimeout { name, gen } => self.reload_timeout(&name, gen),
            }
        }
    }

    /// What `state.json` holds: the desired state and the groups that run.
    fn snapshot(&self) -> Persisted {
        Persisted {
            processes: self
                .procs
                .values()
                .map(|p| PersistedProc {
                    id: Some(p.id),
                    spec: p.spec.clone(),
                    desired: p.desired,
                    pgid: p.pgid,
                    restart_count: p.restart_count,
                    extra_pgids: self.extra_groups(&p.spec.name),
                })
                .collect(),
        }
    }

    /// The processes that watch files now: those that should run.
    fn sync_watches(&mut self) {
        let specs: Vec<ProcSpec> = self.procs.values().filter(|p| p.desired).map(|p| p.spec.clone()).collect();
        self.out.push(Action::Watch(specs));
    }

    fn next_gen(&mut self) -> u64 {
        self.last_gen += 1;
        self.last_gen
    }

    /// The smallest id no process holds (pm2 counts up; reusing a deleted process's id keeps
    /// them small and is safe, since nothing holds it any more).
    fn free_id(&self) -> u32 {
        let taken: std::collections::BTreeSet<u32> = self.procs.values().map(|p| p.id).collect();
        (0..).find(|i| !taken.contains(i)).unwrap_or(u32::MAX)
    }
}
