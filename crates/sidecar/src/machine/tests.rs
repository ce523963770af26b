//! The machine against a simulated world: a fake hub with the real hub's rules (generation
//! fencing, idempotent acks of a re-sent report, continue/reassign), a results dir in memory,
//! and wakes that run scripted agents. Every crash point of every scenario is tested: the run
//! is cut after each action, the machine rebuilt from the `queue.json` the executor would have
//! left, restarted and reconnected, and the task must end exactly once with nothing left over.

use super::*;
use crate::config::FileConfig;
use crate::files::{Found, ProgressLines, ResultBytes};
use crate::queue::QueueFile;
use proto::TaskAssign;
use std::collections::{BTreeMap, VecDeque};

const ID: &str = "task-1";

fn cfg(wake: bool) -> Arc<SidecarConfig> {
    let f = FileConfig {
        agent_id: Some("a1".into()),
        token: Some("t".into()),
        hub_url: Some("ws://127.0.0.1:1/ws".into()),
        wake_command: wake.then(|| "agent --task \"${TASK_JSON}\"".into()),
        results_dir: Some("/r".into()),
        state_dir: Some("/s".into()),
        confirmation_timeout_ms: Some(1000),
        wake_timeout_ms: Some(5000),
        wake_retry_delays_ms: Some(vec![10, 20]),
        rescan_interval_ms: Some(100),
        max_result_bytes: Some(1000),
        ..FileConfig::default()
    };
    Arc::new(SidecarConfig::from_file(f, std::path::Path::new("/")).unwrap())
}

/// What a scripted agent does, one step at a time.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Started,
    Progress(&'static str),
    Result(Vec<u8>),
    /// The wake command exits (the agent may go on in the background: later steps still run).
    Exit(bool),
}

#[derive(Debug)]
struct Proc {
    task_id: String,
    attempt: u32,
    pgid: i32,
    /// Which run of the sidecar spawned it: only that one sees its exit.
    epoch: u32,
    steps: VecDeque<Step>,
    exited: bool,
    /// Killed, or done with its steps after its exit.
    dead: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HubStatus {
    Assigned,
    Working,
    Completed,
    DeadLetter,
    Cancelled,
}

/// The hub's side, with its rules for one task assigned to our agent.
#[derive(Debug)]
struct FakeHub {
    status: HubStatus,
    generation: u64,
    /// How many times the task reached an end state (must be exactly once).
    ends: u32,
    received: Vec<AgentFrame>,
}

impl FakeHub {
    fn assign(&self) -> HubFrame {
        HubFrame::TaskAssign(TaskAssign {
            task_id: ID.into(),
            description: "do it".into(),
            metadata: serde_json::json!({}),
            generation: self.generation,
            assigned_at: 1,
            priority: None,
            extra: Default::default(),
        })
    }
    fn held(&self) -> bool {
        matches!(self.status, HubStatus::Assigned | HubStatus::Working)
    }
    fn requeue(&mut self) -> Vec<HubFrame> {
        self.generation += 1;
        self.status = HubStatus::Assigned;
        vec![self.assign()]
    }
    fn receive(&mut self, f: AgentFrame) -> Vec<HubFrame> {
        self.received.push(f.clone());
        let ack = |status: proto::AckStatus| vec![HubFrame::TaskAck { task_id: ID.into(), status }];
        match f {
            AgentFrame::TaskAccepted { .. } if self.held() => {
                self.status = HubStatus::Working;
                ack(proto::AckStatus::Accepted)
            }
            AgentFrame::TaskRejected { .. } if self.held() => self.requeue(),
            AgentFrame::TaskRecovering { .. } => match self.held() {
                true => vec![HubFrame::TaskContinue { task_id: ID.into(), generation: self.generation }],
                false => vec![HubFrame::TaskReassign { task_id: ID.into() }],
            },
            AgentFrame::StateReport { task_id: None, .. } => {
                // The agent holds nothing: the hub releases the task and assigns it again.
                let mut replies =
                    vec![HubFrame::StateReportAck { task_id: None, action: proto::ReportAction::Continue }];
                if self.held() {
                    replies.extend(self.requeue());
                }
                replies
            }
            AgentFrame::StateReport { task_id: Some(id), generation, .. } => {
                let ok = self.held() && generation.is_none_or(|g| g == self.generation);
                vec![HubFrame::StateReportAck {
                    task_id: Some(id),
                    action: if ok { proto::ReportAction::Continue } else { proto::ReportAction::Abort },
                }]
            }
            AgentFrame::TaskComplete { generation, .. } | AgentFrame::TaskFailed { generation, .. }
                if generation != self.generation =>
            {
                vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::StaleGeneration).task(ID))]
            }
            AgentFrame::TaskComplete { .. } => match self.status {
                HubStatus::Completed => ack(proto::AckStatus::Complete),
                s if self.held() || s == HubStatus::Assigned => {
                    self.status = HubStatus::Completed;
                    self.ends += 1;
                    ack(proto::AckStatus::Complete)
                }
                _ => vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::InvalidState).task(ID))],
            },
            AgentFrame::TaskFailed { .. } => match self.status {
                HubStatus::DeadLetter => ack(proto::AckStatus::DeadLetter),
                _ if self.held() => {
                    self.status = HubStatus::DeadLetter;
                    self.ends += 1;
                    ack(proto::AckStatus::DeadLetter)
                }
                _ => vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::InvalidState).task(ID))],
            },
            _ => vec![],
        }
    }
}

/// A scenario: the agent's script for each wake attempt, and whether the hub cancels once the
/// agent has confirmed.
struct Scenario {
    name: &'static str,
    wake: bool,
    script: fn(u32) -> Vec<Step>,
    cancel_after_start: bool,
    /// The end the hub must record (None: cancelled, no report counts).
    want: HubStatus,
}

struct World {
    cfg: Arc<SidecarConfig>,
    script: fn(u32) -> Vec<Step>,
    now: Now,
    machine: Option<Machine>,
    epoch: u32,
    connected: bool,
    /// `queue.json` as the executor last wrote it.
    disk: String,
    files: BTreeMap<String, Vec<u8>>,
    hub: FakeHub,
    procs: Vec<Proc>,
    next_pgid: i32,
    /// Events for the machine, delivered before anything else happens.
    pending: VecDeque<Event>,
    /// Actions carried out so far (the crash points are counted in these).
    actions: usize,
    crash_at: Vec<usize>,
    spawns: Vec<u32>,
    confirmed_before_spawn: usize,
    scenario_cancelled: bool,
    exited: bool,
}

impl World {
    fn new(s: &Scenario, crash_at: Vec<usize>) -> World {
        World {
            cfg: cfg(s.wake),
            script: s.script,
            now: Duration::ZERO,
            machine: None,
            epoch: 0,
            connected: false,
            disk: serde_json::to_string(&QueueFile::default()).unwrap(),
            files: BTreeMap::new(),
            hub: FakeHub { status: HubStatus::Assigned, generation: 1, ends: 0, received: Vec::new() },
            procs: Vec::new(),
            next_pgid: 100,
            pending: VecDeque::new(),
            actions: 0,
            crash_at,
            spawns: Vec::new(),
            confirmed_before_spawn: 0,
            scenario_cancelled: false,
            exited: false,
        }
    }

    /// Starts (or restarts) the sidecar from what is on disk, and connects it.
    fn boot(&mut self) {
        self.epoch += 1;
        self.pending.clear();
        let queue: QueueFile = serde_json::from_str(&self.disk).expect("queue.json parses");
        self.machine = Some(Machine::new(self.cfg.clone(), true, queue, None, self.now));
        self.connected = false;
        self.deliver(Event::Start);
        self.connected = true;
        self.deliver(Event::Connected);
    }

    fn crash(&mut self) {
        self.machine = None;
        self.connected = false;
        self.pending.clear();
    }

    /// Hands one event to the machine and carries out its actions like the executor.
    fn deliver(&mut self, ev: Event) {
        let Some(m) = self.machine.as_mut() else { return };
        let actions = m.handle(ev, self.now);
        for a in actions {
            if self.crash_at.first() == Some(&self.actions) {
                self.crash_at.remove(0);
                self.actions += 1;
                self.crash();
                self.boot();
                return;
            }
            self.actions += 1;
            self.execute(a);
            if self.machine.is_none() {
                return;
            }
        }
    }

    fn execute(&mut self, a: Action) {
        match a {
            Action::Persist { queue, .. } => {
                // Through the serde edge, as the executor writes it.
                self.disk = serde_json::to_string(&queue).unwrap();
            }
            Action::Send(f) => {
                for reply in self.hub.receive(f) {
                    self.pending.push_back(Event::Frame(reply));
                }
            }
            Action::SpawnWake { task_id, attempt, .. } => {
                if self.files.contains_key(&format!("{task_id}.started")) {
                    self.confirmed_before_spawn += 1;
                }
                self.spawns.push(attempt);
                let pgid = self.next_pgid;
                self.next_pgid += 1;
                let steps = (self.script)(attempt).into();
                self.procs.push(Proc {
                    task_id: task_id.clone(),
                    attempt,
                    pgid,
                    epoch: self.epoch,
                    steps,
                    exited: false,
                    dead: false,
                });
                self.pending.push_back(Event::WakeSpawned { task_id, attempt, pgid });
            }
            Action::StopGroup { pgid, task_id } => self.kill(|p| p.pgid == pgid && p.task_id == task_id),
            Action::StopOrphans { task_id, .. } => self.kill(|p| p.task_id == task_id),
            Action::ClearResults { task_id } => {
                for ext in ["started", "json", "progress"] {
                    self.files.remove(&format!("{task_id}.{ext}"));
                }
            }
            Action::RemoveFiles { task_id, keep_result_as } => {
                if let (Some(kept), Some(r)) = (keep_result_as, self.files.remove(&format!("{task_id}.json"))) {
                    self.files.insert(kept.file_name().unwrap().to_string_lossy().into_owned(), r);
                }
                for ext in ["started", "json", "progress"] {
                    self.files.remove(&format!("{task_id}.{ext}"));
                }
            }
            Action::Observe { task_id, progress, result_closed, look, check_agent } => {
                let agent_alive = check_agent.map(|_| self.procs.iter().any(|p| p.task_id == task_id && !p.dead));
                let file = |ext: &str| self.files.get(&format!("{task_id}.{ext}")).cloned();
                let started = if file("started").is_some() { Found::Regular(()) } else { Found::Missing };
                let progress = match file("progress") {
                    None => Found::Missing,
                    Some(bytes) => {
                        let rest = &bytes[(progress.offset as usize).min(bytes.len())..];
                        let lines: Vec<Vec<u8>> = rest.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                        let complete = lines.len() - 1;
                        Found::Regular(ProgressLines {
                            lines: lines[..complete].to_vec(),
                            cursor: ProgressCursor {
                                offset: progress.offset
                                    + rest.iter().rposition(|b| *b == b'\n').map_or(0, |i| i as u64 + 1),
                                skipping: false,
                            },
                            skipped: 0,
                        })
                    }
                };
                let result = match file("json") {
                    None => Found::Missing,
                    Some(b) if b.len() > self.cfg.max_result_bytes => Found::TooLarge(b.len() as u64),
                    Some(bytes) => Found::Regular(ResultBytes { bytes, age: None }),
                };
                let observation = Observation { task_id, started, progress, result, result_closed, agent_alive };
                self.pending.push_back(Event::Observed { look, observation });
            }
            Action::Exit => {
                self.exited = true;
                self.crash();
            }
        }
    }

    fn kill(&mut self, which: impl Fn(&Proc) -> bool) {
        let epoch = self.epoch;
        for p in self.procs.iter_mut().filter(|p| which(p) && !p.dead) {
            p.steps.clear();
            p.dead = true;
            if !p.exited && p.epoch == epoch {
                p.exited = true;
                let outcome = WakeOutcome::Exited { success: false, desc: "signal: 15 (SIGTERM)".into() };
                let ev = Event::WakeExited {
                    task_id: p.task_id.clone(),
                    attempt: p.attempt,
                    outcome,
                    started: false,
                    log_tail: String::new(),
                };
                self.pending.push_back(ev);
            }
        }
    }

    /// Runs one step of an agent; false if none is left to run.
    fn agent_step(&mut self, cancel_after_start: bool) -> bool {
        let Some(i) = self.procs.iter().position(|p| !p.steps.is_empty()) else { return false };
        let step = self.procs[i].steps.pop_front().unwrap();
        if self.procs[i].steps.is_empty() && (self.procs[i].exited || matches!(step, Step::Exit(_))) {
            self.procs[i].dead = true;
        }
        let id = self.procs[i].task_id.clone();
        let (name, closed) = match step {
            Step::Started => {
                self.files.insert(format!("{id}.started"), Vec::new());
                if cancel_after_start && !self.scenario_cancelled {
                    self.scenario_cancelled = true;
                    self.hub.status = HubStatus::Cancelled;
                    if self.connected {
                        self.pending
                            .push_back(Event::Frame(HubFrame::TaskCancelled { task_id: id.clone(), timestamp: 0 }));
                    }
                }
                (format!("{id}.started"), false)
            }
            Step::Progress(line) => {
                self.files
                    .entry(format!("{id}.progress"))
                    .or_default()
                    .extend_from_slice(format!("{line}\n").as_bytes());
                (format!("{id}.progress"), false)
            }
            Step::Result(bytes) => {
                self.files.insert(format!("{id}.json"), bytes);
                (format!("{id}.json"), true)
            }
            Step::Exit(success) => {
                let p = &mut self.procs[i];
                p.exited = true;
                if p.epoch == self.epoch {
                    let ev = Event::WakeExited {
                        task_id: id.clone(),
                        attempt: p.attempt,
                        outcome: WakeOutcome::Exited { success, desc: format!("exit status: {}", u8::from(!success)) },
                        started: self.files.contains_key(&format!("{id}.started")),
                        log_tail: String::new(),
                    };
                    self.pending.push_back(ev);
                }
                return true;
            }
        };
        if self.machine.is_some() {
            self.pending.push_back(Event::FileChanged { name, closed });
        }
        true
    }

    /// Runs the world until nothing is left to happen.
    fn run(&mut self, s: &Scenario) {
        self.boot();
        // The periodic rescan, run when nothing else happens (a few per quiet spell).
        let mut rescans = 0;
        for _ in 0..10_000 {
            if self.exited {
                return;
            }
            if let Some(ev) = self.pending.pop_front() {
                self.deliver(ev);
            } else if self.agent_step(s.cancel_after_start) {
                rescans = 0;
            } else if let Some(due) = self.machine.as_ref().and_then(Machine::next_deadline) {
                rescans = 0;
                self.now = self.now.max(due);
                self.deliver(Event::Tick);
            } else if rescans < 3 {
                rescans += 1;
                self.now += self.cfg.rescan_interval;
                self.deliver(Event::Rescan);
            } else {
                return;
            }
        }
        panic!("{}: the world never settled (crashes at {:?})", s.name, self.crash_at);
    }

    fn check(&self, s: &Scenario, crash_at: &[usize]) {
        let what = format!("{} with crashes at {crash_at:?}", s.name);
        let want_ends = u32::from(s.want != HubStatus::Cancelled);
        assert_eq!(self.hub.ends, want_ends, "{what}: ended {} times; hub saw {:#?}", self.hub.ends, self.hub.received);
        assert_eq!(self.hub.status, s.want, "{what}");
        assert_eq!(self.confirmed_before_spawn, 0, "{what}: a confirmed wake ran again ({:?})", self.spawns);
        let m = self.machine.as_ref().expect("running");
        assert_eq!(m.slot(), &Slot::Idle, "{what}");
        assert_eq!(serde_json::from_str::<QueueFile>(&self.disk).unwrap(), QueueFile::default(), "{what}");
        let left: Vec<&String> = self.files.keys().filter(|k| !k.contains("too-large")).collect();
        assert!(left.is_empty(), "{what}: files left {left:?}");
        assert!(self.procs.iter().all(|p| p.steps.is_empty()), "{what}: an agent still runs");
    }
}

fn success() -> Vec<u8> {
    br#"{"status":"success","answer":42}"#.to_vec()
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "foreground agent succeeds",
            wake: true,
            script: |_| vec![Step::Started, Step::Progress("{\"step\":1}"), Step::Result(success()), Step::Exit(true)],
            cancel_after_start: false,
            want: HubStatus::Completed,
        },
        Scenario {
            name: "background agent succeeds after its wake exits",
            wake: true,
            script: |_| vec![Step::Exit(true), Step::Started, Step::Progress("p"), Step::Result(success())],
            cancel_after_start: false,
            want: HubStatus::Completed,
        },
        Scenario {
            name: "two failed wakes, then success",
            wake: true,
            script: |attempt| match attempt {
                1 | 2 => vec![Step::Exit(false)],
                _ => vec![Step::Started, Step::Result(success()), Step::Exit(true)],
            },
            cancel_after_start: false,
            want: HubStatus::Completed,
        },
        Scenario {
            name: "every wake fails",
            wake: true,
            script: |_| vec![Step::Exit(false)],
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "the agent reports a failure",
            wake: true,
            script: |_| {
                vec![Step::Started, Step::Result(br#"{"status":"failed","reason":"no"}"#.to_vec()), Step::Exit(true)]
            },
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "the agent never confirms",
            wake: true,
            script: |_| vec![Step::Exit(true)],
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "the agent exits without a result",
            wake: true,
            script: |_| vec![Step::Started, Step::Exit(true)],
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "a result too large to send",
            wake: true,
            script: |_| {
                let big = format!("{{\"status\":\"success\",\"x\":\"{}\"}}", "y".repeat(2000));
                vec![Step::Started, Step::Result(big.into_bytes()), Step::Exit(true)]
            },
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "cancelled while working",
            wake: true,
            script: |_| vec![Step::Started, Step::Progress("p"), Step::Result(success()), Step::Exit(true)],
            cancel_after_start: true,
            want: HubStatus::Cancelled,
        },
        Scenario {
            name: "every wake hangs until the wake timeout",
            wake: true,
            script: |_| vec![],
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
        Scenario {
            name: "no wake command",
            wake: false,
            script: |_| vec![],
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
        },
    ]
}

fn run(s: &Scenario, crash_at: Vec<usize>) -> World {
    let mut w = World::new(s, crash_at.clone());
    w.run(s);
    w
}

/// Each scenario runs in a thread of its own.
fn each_scenario(f: impl Fn(&Scenario) + Send + Sync + Copy + 'static) {
    let handles: Vec<_> = scenarios().into_iter().map(|s| std::thread::spawn(move || f(&s))).collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn every_scenario_ends_once_without_a_crash() {
    each_scenario(|s| {
        let w = run(s, vec![]);
        w.check(s, &[]);
    });
}

#[test]
fn every_single_crash_point_of_every_scenario() {
    each_scenario(|s| {
        let total = run(s, vec![]).actions;
        assert!(total > 3, "{}: {total} actions", s.name);
        eprintln!("{}: {total} crash points", s.name);
        for k in 0..total {
            let w = run(s, vec![k]);
            w.check(s, &[k]);
        }
    });
}

#[test]
fn every_pair_of_crash_points_of_every_scenario() {
    each_scenario(|s| {
        let total = run(s, vec![]).actions;
        for k1 in 0..total {
            // After a crash the run is longer (recovery); cover its first points too.
            for k2 in k1 + 1..total + 8 {
                let w = run(s, vec![k1, k2]);
                w.check(s, &[k1, k2]);
            }
        }
    });
}

// ---- single transitions, with the clock as a number -----------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connected machine that has accepted `ID` and spawned its first wake (pgid 7) at t = 0.
fn waking() -> Machine {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let hub = FakeHub { status: HubStatus::Assigned, generation: 4, ends: 0, received: vec![] };
    let actions = m.handle(Event::Frame(hub.assign()), ms(0));
    assert!(matches!(actions[0], Action::Persist { required: true, .. }), "{actions:?}");
    assert!(matches!(&actions[1], Action::Send(AgentFrame::TaskAccepted { .. })), "ack after the persist: {actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::SpawnWake { attempt: 1, .. })));
    m.handle(Event::WakeSpawned { task_id: ID.into(), attempt: 1, pgid: 7 }, ms(1));
    m
}

fn sent(actions: &[Action]) -> Vec<&AgentFrame> {
    actions.iter().filter_map(|a| if let Action::Send(f) = a { Some(f) } else { None }).collect()
}

#[test]
fn a_wake_that_runs_too_long_is_stopped_and_counted_as_a_timeout() {
    let mut m = waking();
    assert_eq!(m.next_deadline(), Some(ms(5000)));
    assert!(m.handle(Event::Tick, ms(4999)).is_empty(), "not due yet");
    let stop = m.handle(Event::Tick, ms(5000));
    assert_eq!(stop, vec![Action::StopGroup { pgid: 7, task_id: ID.into() }]);
    assert_eq!(m.next_deadline(), None, "stopping, not ticking again");
    let outcome = WakeOutcome::Exited { success: false, desc: "signal: 15".into() };
    let exit = Event::WakeExited { task_id: ID.into(), attempt: 1, outcome, started: false, log_tail: String::new() };
    let a = m.handle(exit, ms(5100));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::WakeResult { status, error: Some(e), .. }] if status == "timeout" && e.contains("5000ms")),
        "{a:?}"
    );
    // The first retry waits 10 ms.
    assert_eq!(m.next_deadline(), Some(ms(5110)));
    let a = m.handle(Event::Tick, ms(5110));
    assert!(a.iter().any(|a| matches!(a, Action::SpawnWake { attempt: 2, .. })), "{a:?}");
}

#[test]
fn confirmation_deadline_fails_only_without_started() {
    let mut m = waking();
    let outcome = WakeOutcome::Exited { success: true, desc: "exit status: 0".into() };
    m.handle(
        Event::WakeExited { task_id: ID.into(), attempt: 1, outcome, started: false, log_tail: String::new() },
        ms(10),
    );
    assert_eq!(m.next_deadline(), Some(ms(1010)));
    let look = m.handle(Event::Tick, ms(1010));
    assert!(matches!(look[..], [Action::Observe { look: Look::ConfirmationDue, .. }]), "{look:?}");
    let observation = Observation {
        task_id: ID.into(),
        started: Found::Missing,
        progress: Found::Missing,
        result: Found::Missing,
        result_closed: false,
        agent_alive: None,
    };
    let a = m.handle(Event::Observed { look: Look::ConfirmationDue, observation }, ms(1010));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::TaskFailed { reason: Some(r), generation: 4, .. }] if r == "confirmation_timeout"),
        "{a:?}"
    );
}

#[test]
fn storage_unavailable_resends_the_report_a_second_later() {
    let mut m = waking();
    let observation = Observation {
        task_id: ID.into(),
        started: Found::Regular(()),
        progress: Found::Missing,
        result: Found::Regular(ResultBytes { bytes: success(), age: None }),
        result_closed: true,
        agent_alive: None,
    };
    let a = m.handle(Event::Observed { look: Look::Watch, observation }, ms(20));
    assert!(sent(&a).iter().any(|f| matches!(f, AgentFrame::TaskComplete { .. })), "{a:?}");
    let err = proto::ErrorFrame::new(proto::FrameErrorCode::StorageUnavailable).task(ID);
    assert!(m.handle(Event::Frame(HubFrame::Error(err)), ms(30)).is_empty());
    assert_eq!(m.next_deadline(), Some(ms(1030)));
    let a = m.handle(Event::Tick, ms(1030));
    assert!(matches!(sent(&a)[..], [AgentFrame::TaskComplete { generation: 4, .. }]), "{a:?}");
    // The ack finishes it: files removed before the queue is emptied.
    let a =
        m.handle(Event::Frame(HubFrame::TaskAck { task_id: ID.into(), status: proto::AckStatus::Complete }), ms(1040));
    assert!(matches!(a[..], [Action::RemoveFiles { keep_result_as: None, .. }, Action::Persist { .. }]), "{a:?}");
    assert_eq!(m.slot(), &Slot::Idle);
}

#[test]
fn unsafe_task_ids_are_rejected_or_ignored_and_never_reach_a_path() {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let mut hub = FakeHub { status: HubStatus::Assigned, generation: 1, ends: 0, received: vec![] };
    let HubFrame::TaskAssign(mut a) = hub.assign() else { unreachable!() };
    a.task_id = "../../victim/data".into();
    let actions = m.handle(Event::Frame(HubFrame::TaskAssign(a)), ms(0));
    assert!(
        matches!(&actions[..], [Action::Send(AgentFrame::TaskRejected { reason: Some(r), .. })] if r.starts_with("invalid_task_id")),
        "{actions:?}"
    );
    for f in [
        HubFrame::TaskCancelled { task_id: "../x".into(), timestamp: 0 },
        HubFrame::TaskContinue { task_id: "a/b".into(), generation: 1 },
        HubFrame::TaskAck { task_id: ".hidden".into(), status: proto::AckStatus::Complete },
    ] {
        assert!(m.handle(Event::Frame(f), ms(1)).is_empty());
    }
    assert_eq!(m.slot(), &Slot::Idle);
    assert!(hub.received.is_empty());
    hub.received.clear();
}

#[test]
fn a_failed_accept_persist_rejects_the_task_and_acks_nothing() {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let hub = FakeHub { status: HubStatus::Assigned, generation: 1, ends: 0, received: vec![] };
    m.handle(Event::Frame(hub.assign()), ms(0));
    // The executor dropped everything after the failed persist and says so.
    let a = m.handle(Event::PersistFailed, ms(1));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::TaskRejected { reason: Some(r), .. }] if r.starts_with("storage_error")),
        "{a:?}"
    );
    assert_eq!(m.slot(), &Slot::Idle);
}

#[test]
fn restart_waits_for_the_working_task_unless_forced() {
    let mut m = waking();
    let restart = |force| Event::Frame(HubFrame::RestartSidecar { reason: "upgrade".into(), force });
    assert!(m.handle(restart(false), ms(10)).is_empty(), "deferred while a wake runs");
    let a = m.handle(restart(true), ms(11));
    assert!(a.contains(&Action::StopGroup { pgid: 7, task_id: ID.into() }), "{a:?}");
    assert!(matches!(a.last(), Some(Action::Exit)), "{a:?}");
    let Slot::Active(h) = m.slot() else { panic!() };
    assert_eq!((&h.phase, h.wakes), (&Phase::Accepted, 0), "kept, to be woken again after task_recovering");
    // Without a supervisor it refuses: exiting would stop the agent.
    let mut alone = Machine::new(cfg(true), false, QueueFile::default(), None, Duration::ZERO);
    alone.handle(Event::Connected, ms(0));
    let a = alone.handle(restart(true), ms(1));
    assert!(matches!(sent(&a)[..], [AgentFrame::Status { status }] if status.starts_with("restart_refused")), "{a:?}");
}
