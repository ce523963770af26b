//! The thin shell around the [`Machine`]: it turns the world into events (hub frames, file
//! events, wake exits, the clock), hands them to the machine, and carries out the actions it
//! returns — file, process and socket IO, nothing decided here. Answers the IO gives at once
//! (a spawned wake's pid, what the files hold, a failed persist) are fed back as events right
//! after the batch that asked for them.

use crate::config::SidecarConfig;
use crate::conn::ConnEvent;
use crate::files::{self, Observation};
use crate::machine::{Action, Event, Machine, Now, WakeOutcome};
use crate::queue::QueueStore;
use crate::watch::{Changes, FileChanges};
use crate::{question, usage, wake};
use proto::{AgentFrame, Identify, ProcessInfo};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pauses between tries to release a finished task's worktree.
const RELEASE_RETRIES: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(2),
    std::time::Duration::ZERO,
];

/// The files in the results dir that belong to a task's attempt (the result aside).
const AGENT_FILES: [&str; 6] = ["started", "json", "progress", "needs-input", "input", "usage"];

/// Everything that reaches the executor from outside, each source bounded on its own: the
/// hub's frames (the connection waits when the executor is behind), wake exits, file changes
/// (coalesced by name in [`FileChanges`]) and the supervisor's latest numbers (only the latest
/// is kept).
#[derive(Debug)]
pub struct Inputs {
    pub conn: mpsc::Receiver<ConnEvent>,
    pub machine: mpsc::Receiver<Event>,
    pub files: Arc<FileChanges>,
    pub process_info: watch::Receiver<Option<ProcessInfo>>,
}

/// Room for frames on their way from the executor to the socket. A connection that cannot take
/// this many is broken or far too slow: it is dropped, and what must reach the hub (the claim of
/// the task, a report, a question) is sent again on the next connection.
pub const OUTGOING_FRAMES: usize = 256;
/// Room for the hub's frames and wake exits waiting for the executor.
pub const INCOMING_EVENTS: usize = 64;
/// How often the worktree janitor looks (worktree mode).
const JANITOR_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct Executor {
    cfg: Arc<SidecarConfig>,
    store: QueueStore,
    machine: Machine,
    started: Instant,
    hub: Option<mpsc::Sender<AgentFrame>>,
    identify: watch::Sender<Identify>,
    /// Where wake exits and the worktree steps' answers come back.
    wake_exits: mpsc::Sender<Event>,
    stop: CancellationToken,
    /// Worktree mode: the git side of each task's worktree.
    workspace: Option<Arc<crate::workspace::ops::Runtime>>,
    /// The local socket for `agentcom mcp` (`local/`): where it is, and what it is told.
    local: Option<(PathBuf, watch::Sender<crate::local::Holding>)>,
    /// An answer was written or a question file removed in this step.
    answers_moved: bool,
}

impl Executor {
    pub fn new(
        cfg: Arc<SidecarConfig>,
        store: QueueStore,
        machine: Machine,
        started: Instant,
        identify: watch::Sender<Identify>,
        wake_exits: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) -> Executor {
        let e = Executor {
            cfg,
            store,
            machine,
            started,
            hub: None,
            identify,
            wake_exits,
            stop,
            workspace: None,
            local: None,
            answers_moved: false,
        };
        e.update_identify();
        e
    }

    /// Worktree mode: the runtime that carries out the worktree steps.
    pub fn with_workspace(mut self, workspace: Option<Arc<crate::workspace::ops::Runtime>>) -> Executor {
        self.workspace = workspace;
        self
    }

    /// The local socket at `path` (its wakes are told where), and the channel it learns from.
    pub fn with_local(mut self, local: Option<(PathBuf, watch::Sender<crate::local::Holding>)>) -> Executor {
        self.local = local;
        self.publish_holding();
        self
    }

    /// Tells the local socket which task (and attempt) is held, and whether the question
    /// files moved.
    fn publish_holding(&mut self) {
        let moved = std::mem::take(&mut self.answers_moved);
        let Some((_, tx)) = &self.local else { return };
        let task = match self.machine.slot() {
            // Held before a restart and being claimed again: a question asked before the
            // restart is waited for meanwhile (the hub's reassignment would end it).
            crate::machine::Slot::Active(h) | crate::machine::Slot::Recovering(h) => {
                Some((h.task.id.clone(), h.task.generation))
            }
            _ => None,
        };
        tx.send_if_modified(|h| {
            let changed = h.task != task || moved;
            h.task = task;
            h.answers += u64::from(moved);
            changed
        });
    }

    fn now(&self) -> Now {
        self.started.elapsed()
    }

    /// Runs until stopped. Sources are taken in order of urgency (the hub's frames first, so a
    /// reconnect's claim and a person's answer never wait behind the agent's file activity), and
    /// the loop sleeps whenever nothing is due.
    pub async fn run(mut self, mut inputs: Inputs) {
        self.handle(Event::Start).await;
        let mut rescan = tokio::time::interval(self.cfg.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Worktrees no task holds, and failed ones whose time is up: saved and removed at start,
        // then every hour.
        let mut janitor = tokio::time::interval(JANITOR_EVERY);
        janitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.machine.next_deadline().and_then(|d| self.started.checked_add(d));
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(ev) = inputs.conn.recv() => self.on_conn(ev).await,
                Some(ev) = inputs.machine.recv() => self.handle(ev).await,
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => self.handle(Event::Tick).await,
                _ = inputs.files.changed() => self.on_files(inputs.files.drain()).await,
                Ok(()) = inputs.process_info.changed() => {
                    let info = inputs.process_info.borrow_and_update().clone();
                    if let Some(info) = info {
                        self.set_process_info(info);
                    }
                }
                _ = rescan.tick() => self.handle(Event::Rescan).await,
                _ = janitor.tick(), if self.workspace.is_some() => self.janitor(),
            }
        }
        // Every change was persisted when it happened; the task stays on disk for recovery.
        tracing::info!(busy = self.machine.is_busy(), "sidecar stopping");
    }

    async fn on_conn(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Identified(tx) => {
                self.hub = Some(tx);
                self.handle(Event::Connected).await;
            }
            ConnEvent::Lost => {
                self.hub = None;
                self.handle(Event::Disconnected).await;
            }
            ConnEvent::Frame(f) => self.handle(Event::Frame(f)).await,
        }
    }

    async fn on_files(&mut self, changes: Changes) {
        if changes.overflow {
            return self.handle(Event::Rescan).await;
        }
        for (name, closed) in changes.names {
            self.handle(Event::FileChanged { name, closed }).await;
        }
    }

    /// Hands `event` to the machine and carries out its actions, then those of the events
    /// the IO answered with, in order. After the first frame of a batch it lets the socket
    /// task run, so an ack (`task_accepted`) leaves before the rest of the batch's IO.
    async fn handle(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        let mut flushed = false;
        while let Some(event) = events.pop_front() {
            let actions = self.machine.handle(event, self.now());
            let mut actions = actions.into_iter().peekable();
            while let Some(action) = actions.next() {
                let is_send = matches!(action, Action::Send(_));
                let step = self.execute(action);
                if is_send && !flushed && actions.peek().is_some() {
                    flushed = true;
                    tokio::task::yield_now().await;
                }
                match step {
                    Step::Done => {}
                    Step::Answer(ev) => events.push_back(ev),
                    Step::Abort(ev) => {
                        events.push_back(ev);
                        break;
                    }
                }
            }
        }
        self.update_identify();
        self.publish_holding();
    }

    fn execute(&mut self, action: Action) -> Step {
        match action {
            Action::Persist { queue, required } => {
                if let Err(e) = self.store.save(&queue) {
                    tracing::error!(path = %self.store.path().display(), error = %e, "cannot write the queue");
                    if required {
                        return Step::Abort(Event::PersistFailed);
                    }
                }
            }
            Action::Send(frame) => {
                if let Some(hub) = &self.hub {
                    if let Err(mpsc::error::TrySendError::Full(f)) = hub.try_send(frame) {
                        tracing::warn!(
                            frame = f.type_name(),
                            queued = OUTGOING_FRAMES,
                            "the hub connection does not keep up; dropping it to connect again"
                        );
                        // The rest of the batch still runs (its frames are skipped); the machine
                        // learns after it that it is offline.
                        self.hub = None;
                        return Step::Answer(Event::Disconnected);
                    }
                }
            }
            Action::SpawnWake { task_id, attempt, generation, task_json, vars, cwd } => {
                return Step::Answer(self.spawn_wake(task_id, attempt, generation, &task_json, &vars, cwd));
            }
            Action::PrepareWorkspace { task_id, from_branch, previous, vars } => {
                let mut env: Vec<(String, String)> = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                env.push(("AGENTCOM_AGENT_ID".into(), self.cfg.agent_id.clone()));
                self.on_workspace(move |rt| {
                    match rt.prepare(&task_id, from_branch.as_deref(), previous.as_ref(), &env) {
                        Ok(workspace) => Event::WorkspaceReady { task_id, workspace },
                        Err(reason) => Event::WorkspaceFailed { task_id, reason },
                    }
                });
            }
            Action::CommitWorkspace { task_id, workspace, message, generation } => {
                self.on_workspace(move |rt| match rt.commit(&task_id, &workspace, &message, generation) {
                    Ok(change) => Event::Committed { task_id, change },
                    Err(reason) => Event::CommitFailed { task_id, reason },
                });
            }
            Action::ReleaseWorkspace { task_id, keep } => {
                if let Some(rt) = self.workspace.clone() {
                    // Nothing waits for it. Sidecars sharing a repository contend for git's
                    // locks, so a failure is tried again a few times; then it is the janitor's.
                    tokio::task::spawn_blocking(move || {
                        for (n, pause) in RELEASE_RETRIES.iter().enumerate() {
                            match rt.release(&task_id, keep) {
                                Ok(()) => return,
                                Err(e) if n + 1 == RELEASE_RETRIES.len() => {
                                    tracing::warn!(task_id = %task_id, error = %e, "cannot release the worktree; the janitor will");
                                }
                                Err(e) => {
                                    tracing::info!(task_id = %task_id, error = %e, "cannot release the worktree yet; trying again");
                                    std::thread::sleep(*pause);
                                }
                            }
                        }
                    });
                }
            }
            Action::StopGroup { pgid, task_id } => {
                // A pgid from queue.json is only a hint: the group must still run this task.
                if pgid > 1 && wake::group_runs_task(pgid, &task_id) {
                    tokio::spawn(wake::stop_group(pgid, self.cfg.kill_timeout));
                }
            }
            Action::StopOrphans { task_id, recorded } => {
                let mut groups = wake::groups_running(&task_id, &self.cfg.agent_id);
                groups.extend(
                    recorded.filter(|pg| *pg > 1 && !groups.contains(pg) && wake::group_runs_task(*pg, &task_id)),
                );
                for pgid in groups {
                    tracing::info!(task_id = %task_id, pgid, "stopping a wake left by an earlier run");
                    tokio::spawn(wake::stop_group(pgid, self.cfg.kill_timeout));
                }
            }
            Action::ClearResults { task_id } => {
                for ext in AGENT_FILES {
                    self.remove(&self.result_path(&task_id, ext));
                }
            }
            Action::RemoveTaskFile { task_id, file } => {
                self.answers_moved = true;
                self.remove(&self.result_path(&task_id, file.ext()))
            }
            Action::WriteAnswer { task_id, request_id, answer, asked } => {
                self.answers_moved = true;
                // The agent may have asked something else since: that question is the one to answer.
                let now_asked =
                    files::read_small(&self.result_path(&task_id, "needs-input"), question::MAX_NEEDS_INPUT_BYTES);
                if let files::Found::Regular(f) = now_asked {
                    if question::parse(&f.bytes).as_ref() != Ok(&asked) {
                        return Step::Abort(Event::AnswerSuperseded { task_id, request_id });
                    }
                }
                let name = format!("{task_id}.input");
                if let Err(e) = files::write_for_agent(&self.cfg.results_dir, &name, &question::answer_file(&answer)) {
                    tracing::error!(path = %self.cfg.results_dir.join(&name).display(), error = %e, "cannot write the answer for the agent");
                    return Step::Abort(Event::PersistFailed);
                }
            }
            Action::RemoveFiles { task_id, keep_result_as } => {
                let result = self.result_path(&task_id, "json");
                if let Some(kept) = keep_result_as {
                    match std::fs::rename(&result, &kept) {
                        Ok(()) => {
                            let _ = osutil::fs::sync_dir(&self.cfg.results_dir);
                            tracing::warn!(path = %kept.display(), "kept the result file that was too large to send");
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::error!(path = %result.display(), error = %e, "cannot set the result file aside")
                        }
                    }
                }
                self.remove(&result);
                for ext in AGENT_FILES {
                    self.remove(&self.result_path(&task_id, ext));
                }
                self.remove(&self.task_file(&task_id));
                self.remove(&self.wake_log(&task_id));
            }
            Action::Observe { task_id, progress, result_closed, look, check_agent } => {
                let agent_alive = check_agent.map(|recorded| {
                    recorded.is_some_and(|pg| wake::group_runs_task(pg, &task_id))
                        || !wake::groups_running(&task_id, &self.cfg.agent_id).is_empty()
                });
                let observation = Observation {
                    agent_alive,
                    started: files::marker(&self.result_path(&task_id, "started")),
                    progress: files::read_progress(
                        &self.result_path(&task_id, "progress"),
                        progress,
                        self.cfg.max_progress_bytes,
                    ),
                    result: files::read_result(&self.result_path(&task_id, "json"), self.cfg.max_result_bytes),
                    needs_input: files::read_small(
                        &self.result_path(&task_id, "needs-input"),
                        question::MAX_NEEDS_INPUT_BYTES,
                    ),
                    usage: files::read_small(&self.result_path(&task_id, "usage"), usage::MAX_USAGE_FILE_BYTES),
                    result_closed,
                    task_id,
                };
                return Step::Answer(Event::Observed { look, observation });
            }
            Action::Exit => self.stop.cancel(),
        }
        Step::Done
    }

    /// Runs a step of the worktree off the event loop (it may take as long as a setup
    /// command); its answer comes back as an event.
    fn on_workspace(&self, step: impl FnOnce(&crate::workspace::ops::Runtime) -> Event + Send + 'static) {
        let Some(rt) = self.workspace.clone() else { return };
        let answers = self.wake_exits.clone();
        tokio::spawn(async move {
            if let Ok(ev) = tokio::task::spawn_blocking(move || step(&rt)).await {
                let _ = answers.send(ev).await;
            }
        });
    }

    fn janitor(&self) {
        let Some(rt) = self.workspace.clone() else { return };
        let active = match self.machine.slot() {
            crate::machine::Slot::Active(h) | crate::machine::Slot::Recovering(h) => Some(h.task.id.clone()),
            crate::machine::Slot::Idle => None,
        };
        tokio::task::spawn_blocking(move || {
            for line in rt.janitor(active.as_deref(), osutil::clock::epoch_ms()) {
                tracing::info!(note = %line, "worktree janitor");
            }
        });
    }

    fn spawn_wake(
        &mut self,
        task_id: String,
        attempt: u32,
        generation: u64,
        task_json: &str,
        vars: &[(&'static str, String)],
        cwd: Option<PathBuf>,
    ) -> Event {
        let Some(command) = self.cfg.wake_command.as_ref() else {
            let outcome = WakeOutcome::SpawnFailed { reason: "no wake command".into(), lasting: true };
            return Event::WakeExited { task_id, attempt, outcome, started: false, log_tail: String::new() };
        };
        let task_file = self.task_file(&task_id);
        if let Err(e) = osutil::fs::write_atomic(&task_file, task_json.as_bytes()) {
            tracing::error!(path = %task_file.display(), error = %e, "cannot write the task file");
        }
        let log = self.wake_log(&task_id);
        let spec = wake::WakeSpec {
            command,
            vars,
            generation,
            task_file: &task_file,
            results_dir: &self.cfg.results_dir,
            log_file: &log,
            cwd: cwd.as_deref(),
            agent_id: &self.cfg.agent_id,
            socket: self.local.as_ref().map(|(p, _)| p.as_path()),
        };
        let mut child = match wake::spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                use std::io::ErrorKind::{NotADirectory, NotFound, PermissionDenied};
                let lasting = matches!(e.kind(), NotFound | PermissionDenied | NotADirectory);
                let outcome = WakeOutcome::SpawnFailed { reason: e.to_string(), lasting };
                return Event::WakeExited { task_id, attempt, outcome, started: false, log_tail: String::new() };
            }
        };
        let pgid = child.id().map(|p| p as i32);
        let exits = self.wake_exits.clone();
        let started_file = self.result_path(&task_id, "started");
        let id = task_id.clone();
        tokio::spawn(async move {
            let outcome = match child.wait().await {
                Ok(s) => WakeOutcome::Exited { success: s.success(), code: s.code(), desc: s.to_string() },
                Err(e) => WakeOutcome::Exited { success: false, code: None, desc: e.to_string() },
            };
            // Whether `.started` exists as the command ends tells whether it was the agent itself.
            let started = files::marker(&started_file) == files::Found::Regular(());
            let log_tail = wake::log_tail(&log, 400);
            let _ = exits.send(Event::WakeExited { task_id: id, attempt, outcome, started, log_tail }).await;
        });
        match pgid {
            Some(pgid) => Event::WakeSpawned { task_id, attempt, pgid },
            // Already reaped (it cannot be yet): its exit is on its way; no group to record.
            None => Event::Rescan,
        }
    }

    fn remove(&self, p: &std::path::Path) {
        if let Err(e) = osutil::fs::remove_durable(p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove a task file");
        }
    }

    fn result_path(&self, task_id: &str, ext: &str) -> PathBuf {
        self.cfg.results_dir.join(format!("{task_id}.{ext}"))
    }
    fn task_file(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(format!("{task_id}.json"))
    }
    fn wake_log(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(format!("{task_id}.wake.log"))
    }

    fn update_identify(&self) {
        let busy = self.machine.is_busy();
        let cfg = &self.cfg;
        self.identify.send_if_modified(|i| {
            let status = Some(if busy { "busy" } else { "idle" }.to_string());
            let changed = i.status != status || i.agent_id.is_empty();
            i.agent_id = cfg.agent_id.clone();
            i.token = cfg.token.clone();
            i.name = Some(cfg.name.clone().unwrap_or_else(|| cfg.agent_id.clone()));
            i.capabilities = cfg.capabilities.clone();
            i.account = cfg.account.clone();
            i.client_type = Some("sidecar".into());
            i.protocol_version = Some(proto::PROTOCOL_VERSION as u64);
            i.status = status;
            changed
        });
    }

    /// New process info from the supervisor: kept for the next identify, and sent now if it
    /// changed in a way the hub shows (status, restart count).
    pub fn set_process_info(&mut self, info: ProcessInfo) {
        let before = self.identify.borrow().process_info.clone();
        let changed = before.as_ref().is_none_or(|b| b.status != info.status || b.restart_count != info.restart_count);
        self.identify.send_modify(|i| {
            i.process_info = Some(info.clone());
            i.pm2_info = Some(info.clone());
        });
        if changed && before.is_some() {
            let mut m = serde_json::Map::new();
            m.insert("process_info".into(), serde_json::to_value(&info).expect("serializes"));
            if let Some(mem) = info.memory_bytes {
                m.insert("ram_used_bytes".into(), mem.into());
            }
            if let Some(hub) = &self.hub {
                let _ = hub.try_send(AgentFrame::ResourceReport(m));
            }
        }
    }
}

/// What carrying out one action gave.
enum Step {
    Done,
    /// An event to hand to the machine after this batch.
    Answer(Event),
    /// A required persist failed: drop the rest of the batch and hand the machine this.
    Abort(Event),
}

/// The identify frame before the executor fills it in.
pub fn empty_identify() -> Identify {
    Identify {
        agent_id: String::new(),
        token: String::new(),
        name: None,
        status: None,
        capabilities: Vec::new(),
        client_type: None,
        protocol_version: None,
        pm2_info: None,
        process_info: None,
        ollama_url: None,
        account: None,
    }
}
