//! The simulated world of the crash-point tests: a fake hub with the real hub's rules, a
//! results dir in memory (each write a new file, as an agent's rename makes one), and wakes
//! that run scripted agents, which may ask a person and wait for the answer.

use super::*;
use crate::files::{Found, ProgressLines, ResultBytes, SmallFile};
use crate::queue::QueueFile;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a scripted agent does, one step at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Started,
    Progress(&'static str),
    Result(Vec<u8>),
    /// The wake command exits (the agent may go on in the background: later steps still run).
    Exit(bool),
    /// Writes `.needs-input` with this question.
    Ask(&'static str),
    /// Waits until `.needs-input` is gone, then reads `.input` (which must answer this
    /// question) and deletes it.
    Await(&'static str),
    /// Writes `.usage` with this JSON.
    Usage(&'static str),
    /// Edits a file of its working directory (worktree mode: the task's worktree).
    Edit(String),
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

/// A scenario: the agent's script for each wake attempt, and whether the hub cancels once the
/// agent has confirmed.
#[derive(Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub wake: bool,
    /// Each task in a worktree of its own; each attempt first edits a file `f<attempt>`.
    pub worktree: bool,
    pub script: fn(u32) -> Vec<Step>,
    pub cancel_after_start: bool,
    /// The end the hub must record (None: cancelled, no report counts).
    pub want: HubStatus,
    /// The cost the final report must carry.
    pub want_cost: Option<f64>,
}

/// The task's worktree and branch, as git would keep them: the files the agent edited and
/// nobody committed yet, those on the branch, those saved to `refs/agentcom/orphans`.
#[derive(Debug, Default)]
pub struct Git {
    /// The worktree's uncommitted edits, while it exists.
    pub worktree: Option<BTreeSet<String>>,
    /// Kept for a person to look at (a failed attempt): the janitor leaves it until it expires.
    pub kept: bool,
    pub branch: BTreeSet<String>,
    pub orphans: BTreeSet<String>,
    /// Every edit the agent made in the worktree.
    pub edited: BTreeSet<String>,
    pub commits: u32,
}

impl Git {
    /// Saves the uncommitted edits to the orphans ref and removes the worktree.
    fn save_and_remove(&mut self) {
        if let Some(dirty) = self.worktree.take() {
            self.orphans.extend(dirty);
        }
        self.kept = false;
    }
}

pub struct World {
    pub cfg: Arc<SidecarConfig>,
    worktree: bool,
    pub git: Git,
    script: fn(u32) -> Vec<Step>,
    cancel_after_start: bool,
    now: Now,
    pub machine: Option<Machine>,
    epoch: u32,
    connected: bool,
    /// `queue.json` as the executor last wrote it.
    disk: String,
    /// The results dir: each file's bytes and its identity (a new one per write).
    files: BTreeMap<String, (Vec<u8>, u64)>,
    writes: u64,
    pub hub: FakeHub,
    procs: Vec<Proc>,
    next_pgid: i32,
    /// Events for the machine, delivered before anything else happens.
    pending: VecDeque<Event>,
    /// Actions carried out so far (the crash points are counted in these).
    pub actions: usize,
    crash_at: Vec<usize>,
    spawns: Vec<u32>,
    confirmed_before_spawn: usize,
    scenario_cancelled: bool,
    exited: bool,
    /// The questions the agent asked, and the answers it read, in order.
    asked: Vec<String>,
    read: Vec<(String, String)>,
    /// A timer left at or before the time of the event that armed it: the executor's loop
    /// would find it due at once, again and again (it never parks).
    past_deadlines: Vec<String>,
}

impl World {
    pub fn new(s: &Scenario, crash_at: Vec<usize>) -> World {
        World {
            cfg: cfg_in(s.wake, s.worktree),
            worktree: s.worktree,
            git: Git::default(),
            script: s.script,
            cancel_after_start: s.cancel_after_start,
            now: Duration::ZERO,
            machine: None,
            epoch: 0,
            connected: false,
            disk: serde_json::to_string(&QueueFile::default()).unwrap(),
            files: BTreeMap::new(),
            writes: 0,
            hub: FakeHub::new(1),
            procs: Vec::new(),
            next_pgid: 100,
            pending: VecDeque::new(),
            actions: 0,
            crash_at,
            spawns: Vec::new(),
            confirmed_before_spawn: 0,
            scenario_cancelled: false,
            exited: false,
            asked: Vec::new(),
            read: Vec::new(),
            past_deadlines: Vec::new(),
        }
    }

    fn write(&mut self, name: String, bytes: Vec<u8>) {
        self.writes += 1;
        self.files.insert(name, (bytes, self.writes));
    }

    fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.files.get(name).map(|(b, _)| b.clone())
    }

    /// Starts (or restarts) the sidecar from what is on disk, and connects it; the hub re-sends
    /// an answer not acknowledged yet before anything else (the sidecar is still recovering).
    fn boot(&mut self) {
        self.epoch += 1;
        self.pending.clear();
        let queue: QueueFile = serde_json::from_str(&self.disk).expect("queue.json parses");
        // The janitor at start: a worktree no task holds any more (its release was cut short)
        // is saved and removed, unless it is kept for a while.
        if queue.active.is_none() && queue.recovering.is_none() && !self.git.kept {
            self.git.save_and_remove();
        }
        self.machine = Some(Machine::new(self.cfg.clone(), true, queue, None, self.now));
        self.connected = false;
        self.deliver(Event::Start);
        self.connected = true;
        for f in self.hub.on_reconnect().into_iter().rev() {
            self.pending.push_front(Event::Frame(f));
        }
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
        let kind = event_kind(&ev);
        let actions = m.handle(ev, self.now);
        // Time never passes a deadline without a tick here (`run`), so after any event every
        // armed timer must lie in the future.
        if let Some(due) = m.next_deadline().filter(|due| *due <= self.now) {
            self.past_deadlines.push(format!("after {kind} at {:?}: deadline {due:?}", self.now));
        }
        for a in actions {
            if self.crash_at.first() == Some(&self.actions) {
                self.crash_at.remove(0);
                self.actions += 1;
                self.crash();
                // The agents go on while the sidecar is down, as far as they can.
                for _ in 0..100 {
                    if !self.agent_step(self.cancel_after_start) {
                        break;
                    }
                }
                self.boot();
                return;
            }
            self.actions += 1;
            let go_on = self.execute(a);
            if self.machine.is_none() || !go_on {
                return;
            }
        }
    }

    fn small(&self, name: &str) -> Found<SmallFile> {
        match self.files.get(name) {
            None => Found::Missing,
            Some((bytes, id)) => Found::Regular(SmallFile { bytes: bytes.clone(), id: format!("w{id}"), age: None }),
        }
    }

    /// Carries out one action; false when the rest of the batch is dropped.
    fn execute(&mut self, a: Action) -> bool {
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
                let mut steps: VecDeque<Step> = (self.script)(attempt).into();
                if self.worktree {
                    steps.push_front(Step::Edit(format!("f{attempt}")));
                }
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
            Action::ClearResults { task_id } => self.remove_agent_files(&task_id),
            Action::RemoveTaskFile { task_id, file } => {
                self.files.remove(&format!("{task_id}.{}", file.ext()));
            }
            Action::WriteAnswer { task_id, request_id, answer, asked } => {
                if let Found::Regular(f) = self.small(&format!("{task_id}.needs-input")) {
                    if crate::question::parse(&f.bytes).as_ref() != Ok(&asked) {
                        self.pending.push_back(Event::AnswerSuperseded { task_id, request_id });
                        return false;
                    }
                }
                self.write(format!("{task_id}.input"), crate::question::answer_file(&answer));
            }
            Action::RemoveFiles { task_id, keep_result_as } => {
                if let (Some(kept), Some(r)) = (keep_result_as, self.files.remove(&format!("{task_id}.json"))) {
                    self.files.insert(kept.file_name().unwrap().to_string_lossy().into_owned(), r);
                }
                self.remove_agent_files(&task_id);
            }
            Action::Observe { task_id, progress, result_closed, look, check_agent } => {
                let agent_alive = check_agent.map(|_| self.procs.iter().any(|p| p.task_id == task_id && !p.dead));
                let file = |ext: &str| self.file(&format!("{task_id}.{ext}"));
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
                let needs_input = self.small(&format!("{task_id}.needs-input"));
                let usage = self.small(&format!("{task_id}.usage"));
                let observation =
                    Observation { task_id, started, progress, result, needs_input, usage, result_closed, agent_alive };
                self.pending.push_back(Event::Observed { look, observation });
            }
            Action::PrepareWorkspace { task_id, .. } => {
                // Made, or adopted as it is (with what an earlier attempt left uncommitted).
                self.git.worktree.get_or_insert_with(BTreeSet::new);
                self.git.kept = false;
                let workspace = crate::workspace::Workspace {
                    path: format!("/w/{task_id}").into(),
                    branch: format!("agentcom/{task_id}"),
                    base_sha: "0".repeat(40),
                    base_branch: Some("main".into()),
                };
                self.pending.push_back(Event::WorkspaceReady { task_id, workspace });
            }
            Action::CommitWorkspace { task_id, workspace, .. } => {
                let Some(dirty) = self.git.worktree.as_mut() else {
                    let reason = "the worktree is gone".to_string();
                    self.pending.push_back(Event::CommitFailed { task_id, reason });
                    return true;
                };
                if !dirty.is_empty() {
                    self.git.commits += 1;
                }
                self.git.branch.append(dirty);
                let change = (!self.git.branch.is_empty()).then(|| proto::Change {
                    branch: workspace.branch.clone(),
                    base_sha: workspace.base_sha.clone(),
                    head_sha: format!("{:040x}", self.git.commits),
                    base_branch: workspace.base_branch.clone(),
                    commits: u64::from(self.git.commits),
                    files_changed: self.git.branch.len() as u64,
                    insertions: 0,
                    deletions: 0,
                    files: self.git.branch.iter().cloned().collect(),
                    patch: None,
                    patch_cut: false,
                });
                self.pending.push_back(Event::Committed { task_id, change });
            }
            Action::ReleaseWorkspace { keep, .. } => match keep {
                true => self.git.kept = self.git.worktree.is_some(),
                false => self.git.save_and_remove(),
            },
            Action::Exit => {
                self.exited = true;
                self.crash();
            }
        }
        true
    }

    fn remove_agent_files(&mut self, task_id: &str) {
        for ext in ["started", "json", "progress", "needs-input", "input", "usage"] {
            self.files.remove(&format!("{task_id}.{ext}"));
        }
    }

    fn kill(&mut self, which: impl Fn(&Proc) -> bool) {
        let epoch = self.epoch;
        for p in self.procs.iter_mut().filter(|p| which(p) && !p.dead) {
            p.steps.clear();
            p.dead = true;
            if !p.exited && p.epoch == epoch {
                p.exited = true;
                let outcome = WakeOutcome::Exited { success: false, code: None, desc: "signal: 15 (SIGTERM)".into() };
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

    /// Whether a process can take its next step now (an agent waiting for an answer cannot).
    fn can_step(&self, p: &Proc) -> bool {
        match p.steps.front() {
            None => false,
            Some(Step::Await(_)) => !self.files.contains_key(&format!("{}.needs-input", p.task_id)),
            Some(_) => true,
        }
    }

    /// Runs one step of an agent; false if none can run.
    fn agent_step(&mut self, cancel_after_start: bool) -> bool {
        let Some(i) = self.procs.iter().position(|p| self.can_step(p)) else { return false };
        let step = self.procs[i].steps.pop_front().unwrap();
        if self.procs[i].steps.is_empty() && (self.procs[i].exited || matches!(step, Step::Exit(_))) {
            self.procs[i].dead = true;
        }
        let id = self.procs[i].task_id.clone();
        let (name, closed) = match step {
            Step::Started => {
                self.write(format!("{id}.started"), Vec::new());
                if cancel_after_start && !self.scenario_cancelled {
                    self.scenario_cancelled = true;
                    self.hub.status = HubStatus::Cancelled;
                    if self.connected {
                        self.pending.push_back(Event::Frame(HubFrame::TaskCancelled {
                            task_id: id.clone(),
                            timestamp: 0,
                            reason: None,
                        }));
                    }
                }
                (format!("{id}.started"), false)
            }
            Step::Progress(line) => {
                let mut bytes = self.file(&format!("{id}.progress")).unwrap_or_default();
                bytes.extend_from_slice(format!("{line}\n").as_bytes());
                self.write(format!("{id}.progress"), bytes);
                (format!("{id}.progress"), false)
            }
            Step::Result(bytes) => {
                self.write(format!("{id}.json"), bytes);
                (format!("{id}.json"), true)
            }
            Step::Ask(question) => {
                self.asked.push(question.into());
                self.write(
                    format!("{id}.needs-input"),
                    serde_json::json!({ "question": question }).to_string().into_bytes(),
                );
                (format!("{id}.needs-input"), true)
            }
            Step::Await(question) => {
                let got = self.files.remove(&format!("{id}.input")).map(|(b, _)| String::from_utf8(b).unwrap());
                self.read.push((question.into(), got.unwrap_or_else(|| "(no .input)".into())));
                return true;
            }
            Step::Usage(json) => {
                self.write(format!("{id}.usage"), json.as_bytes().to_vec());
                (format!("{id}.usage"), true)
            }
            Step::Edit(name) => {
                // In a worktree that is gone the agent's write fails (its folder went with it).
                if let Some(dirty) = self.git.worktree.as_mut() {
                    dirty.insert(name.clone());
                    self.git.edited.insert(name);
                }
                return true;
            }
            Step::Exit(success) => {
                let p = &mut self.procs[i];
                p.exited = true;
                if p.epoch == self.epoch {
                    let ev = Event::WakeExited {
                        task_id: id.clone(),
                        attempt: p.attempt,
                        outcome: WakeOutcome::Exited {
                            success,
                            code: Some(i32::from(!success)),
                            desc: format!("exit status: {}", u8::from(!success)),
                        },
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
    pub fn run(&mut self, s: &Scenario) {
        self.boot();
        // The periodic rescan, run when nothing else happens (a few per quiet spell).
        let mut rescans = 0;
        for _ in 0..10_000 {
            if self.exited {
                return;
            }
            if let Some(ev) = self.pending.pop_front() {
                self.deliver(ev);
            } else if self.agent_step(self.cancel_after_start) {
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

    pub fn check(&self, s: &Scenario, crash_at: &[usize]) {
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
        // Questions: the hub saw those the agent asked, in order, each under one request id and
        // none twice (one replaced before anyone looked is not asked), and the agent read the
        // answer to each question it waited on, its own.
        assert!(self.hub.violations.is_empty(), "{what}: {:?}", self.hub.violations);
        assert!(self.past_deadlines.is_empty(), "{what}: {:?}", self.past_deadlines);
        let mut asked = self.asked.iter();
        let in_order = self.hub.questions.iter().all(|(_, q)| asked.any(|a| a == q));
        assert!(in_order, "{what}: asked {:?}, the hub saw {:?}", self.asked, self.hub.questions);
        let mut answers = std::collections::BTreeSet::new();
        for (question, got) in &self.read {
            let request = got.strip_prefix(&format!("answer to {question} #")).and_then(|r| r.strip_suffix('\n'));
            let Some(request) = request else { panic!("{what}: the agent asked {question:?} and read {got:?}") };
            assert!(answers.insert(request), "{what}: the agent read the answer to {request} twice");
        }
        self.check_git(s, &what);
        if s.want != HubStatus::Cancelled {
            assert!(self.hub.pending_answer.is_none(), "{what}");
            let report = self.hub.received.iter().rev().find_map(|f| match f {
                AgentFrame::TaskComplete { usage, .. } | AgentFrame::TaskFailed { usage, .. } => Some(usage),
                _ => None,
            });
            let cost = report.and_then(|u| u.as_ref()).and_then(|u| u.cost_usd);
            assert_eq!(cost, s.want_cost, "{what}: the report's cost");
        }
    }
}

impl World {
    /// Worktree mode: no worktree left but a failed one kept a while, nothing the agent edited
    /// lost (on the branch, saved as an orphan, or in the kept worktree), and a completed
    /// task's report carries what is on its branch.
    fn check_git(&self, s: &Scenario, what: &str) {
        let g = &self.git;
        if !self.worktree {
            assert!(g.worktree.is_none() && g.edited.is_empty(), "{what}: no worktree in repo_dir mode");
            return;
        }
        if let Some(dirty) = &g.worktree {
            assert!(g.kept, "{what}: a worktree left behind, not kept: {dirty:?}");
            assert_ne!(s.want, HubStatus::Completed, "{what}: the worktree of a completed task is kept");
        }
        let kept = g.worktree.clone().unwrap_or_default();
        for f in &g.edited {
            let found = g.branch.contains(f) || g.orphans.contains(f) || kept.contains(f);
            assert!(found, "{what}: the edit {f} was lost ({g:?})");
        }
        let reported = self.hub.received.iter().rev().find_map(|f| match f {
            AgentFrame::TaskComplete { change, .. } | AgentFrame::TaskFailed { change, .. } => Some(change.clone()),
            _ => None,
        });
        if s.want == HubStatus::Completed {
            let change = reported.flatten().unwrap_or_else(|| panic!("{what}: the completed task's change is missing"));
            let on_branch: Vec<String> = g.branch.iter().cloned().collect();
            assert_eq!(change.files, on_branch, "{what}: the change is what the branch has");
            assert!(s.wake && g.edited.iter().all(|f| g.branch.contains(f)), "{what}: all edits on the branch ({g:?})");
        }
    }
}

/// The event's variant, for messages (cheap: the crash-point runs deliver millions).
fn event_kind(ev: &Event) -> &'static str {
    match ev {
        Event::Start => "Start",
        Event::Connected => "Connected",
        Event::Disconnected => "Disconnected",
        Event::Frame(_) => "Frame",
        Event::WakeSpawned { .. } => "WakeSpawned",
        Event::WakeExited { .. } => "WakeExited",
        Event::FileChanged { .. } => "FileChanged",
        Event::Rescan => "Rescan",
        Event::Observed { .. } => "Observed",
        Event::Tick => "Tick",
        Event::PersistFailed => "PersistFailed",
        Event::AnswerSuperseded { .. } => "AnswerSuperseded",
        Event::WorkspaceReady { .. } => "WorkspaceReady",
        Event::WorkspaceFailed { .. } => "WorkspaceFailed",
        Event::Committed { .. } => "Committed",
        Event::CommitFailed { .. } => "CommitFailed",
    }
}
