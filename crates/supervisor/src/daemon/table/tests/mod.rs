//! The table without processes, sockets or a clock: a [`World`] answers its actions as the
//! shell would (spawns succeed with fresh pids unless told otherwise, reported stops complete
//! at once unless held) and time is a number that only moves when a test advances it.

mod checks;
mod ids;
mod policy;
mod reload;
mod requests;

use super::{Action, Input, Now, ReqId, State, Table, TableConfig, Timer};
use proto::control::{ProcSpec, Request, Response};
use std::collections::{BTreeMap, VecDeque};

/// 2024-01-01 00:00:30 UTC: half a minute before a minute boundary in every time zone.
const WALL0: u64 = 1_704_067_230_000;

struct World {
    t: Table,
    now: Now,
    /// Every action the table returned, in order.
    log: Vec<Action>,
    replies: BTreeMap<ReqId, Response>,
    last_id: ReqId,
    last_pid: u32,
    /// Spawns fail with this reason.
    spawn_fails: Option<String>,
    /// Spawns are left unanswered (to answer by hand).
    hold_spawns: bool,
    /// Reported stops are left unanswered (to answer by hand).
    hold_stops: bool,
}

fn cfg() -> TableConfig {
    TableConfig {
        dir: "/sup".into(),
        pid: 42,
        memory_check_ms: 5_000,
        backoff_reset_ms: 30_000,
        max_processes: 1024,
        clock_ticks: 100,
    }
}

/// A spec with the defaults of `agentcom start`.
fn spec(name: &str) -> ProcSpec {
    ProcSpec::new(name, "server", vec![])
}

impl World {
    fn new() -> World {
        let now = Now { mono_ms: 0, wall_ms: WALL0 };
        World {
            t: Table::new(cfg(), now),
            now,
            log: Vec::new(),
            replies: BTreeMap::new(),
            last_id: 0,
            last_pid: 1000,
            spawn_fails: None,
            hold_spawns: false,
            hold_stops: false,
        }
    }

    /// A world with `spec` started and online.
    fn with(spec: ProcSpec) -> World {
        let mut w = World::new();
        let r = w.ask(Request::Start { spec: Box::new(spec) });
        assert!(matches!(r, Some(Response::Ok { .. })), "{r:?}");
        w
    }

    fn feed(&mut self, input: Input) {
        let actions = self.t.handle(input, self.now);
        self.run(actions);
    }

    /// Carries the actions out as the shell would, feeding back what it would answer.
    fn run(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(a) = queue.pop_front() {
            self.log.push(a.clone());
            let answer = match a {
                Action::Reply { id, response } => {
                    assert!(self.replies.insert(id, response).is_none(), "request {id} answered twice");
                    None
                }
                Action::Spawn { name, gen, .. } if !self.hold_spawns => {
                    let result = match &self.spawn_fails {
                        Some(why) => Err(why.clone()),
                        None => {
                            self.last_pid += 1;
                            Ok(self.last_pid)
                        }
                    };
                    Some(Input::Spawned { name, gen, result })
                }
                Action::StopGroup { name, gen, report: true, .. } if !self.hold_stops => {
                    Some(Input::StopDone { name, gen })
                }
                _ => None,
            };
            if let Some(input) = answer {
                queue.extend(self.t.handle(input, self.now));
            }
        }
    }

    fn request(&mut self, req: Request) -> ReqId {
        self.last_id += 1;
        let id = self.last_id;
        self.feed(Input::Request { id, req });
        id
    }

    /// Sends a request; its answer if it came at once.
    fn ask(&mut self, req: Request) -> Option<Response> {
        let id = self.request(req);
        self.replies.remove(&id)
    }

    /// Time passes: the table wakes at each of its deadlines on the way, as the shell would.
    fn advance(&mut self, ms: u64) {
        let target = self.now.mono_ms + ms;
        while let Some(due) = self.t.next_deadline().filter(|d| *d <= target) {
            self.set_time(due.max(self.now.mono_ms));
            self.feed(Input::Tick);
        }
        self.set_time(target);
        self.feed(Input::Tick);
    }

    fn set_time(&mut self, mono_ms: u64) {
        self.now.wall_ms += mono_ms - self.now.mono_ms;
        self.now.mono_ms = mono_ms;
    }

    fn gen(&self, name: &str) -> u64 {
        self.t.procs[name].gen
    }

    /// The running process exits now.
    fn exit(&mut self, name: &str, code: Option<i32>) {
        let gen = self.gen(name);
        self.feed(Input::Exited { name: name.into(), gen, code, desc: format!("exit status: {code:?}") });
    }

    fn state(&self, name: &str) -> State {
        self.t.procs[name].state
    }

    fn restarts(&self, name: &str) -> u64 {
        self.t.procs[name].restart_count
    }

    /// In how many ms the armed restart of `name` is due, if one is.
    fn restart_in(&self, name: &str) -> Option<u64> {
        let gen = self.gen(name);
        self.t.timers.iter().find_map(|((at, _), t)| match t {
            Timer::RestartDue { name: n, gen: g } if n == name && *g == gen => Some(at - self.now.mono_ms),
            _ => None,
        })
    }

    /// The actions logged since `from`.
    fn since(&self, from: usize) -> &[Action] {
        &self.log[from..]
    }
}

fn message(r: &Option<Response>) -> String {
    match r {
        Some(Response::Ok { message }) => format!("ok: {message}"),
        Some(Response::Error { error }) => format!("error: {error}"),
        other => format!("{other:?}"),
    }
}
