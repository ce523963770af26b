//! The runner: one task owns the queue and carries the active task through its phases.
//! Every phase change is persisted (fsynced) before it is acted on or acknowledged.

use crate::config::SidecarConfig;
use crate::conn::ConnEvent;
use crate::queue::{Phase, QueueFile, QueueStore, QueuedTask};
use crate::wake;
use proto::{AgentFrame, HubFrame, Identify, ProcessInfo, TaskAssign};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub enum Event {
    Conn(ConnEvent),
    WakeExit {
        task_id: String,
        attempt: u32,
        outcome: WakeOutcome,
    },
    /// A file in the results dir changed; `complete` when it was closed after writing or renamed in.
    File {
        path: PathBuf,
        complete: bool,
    },
    /// Fresh numbers from our supervisor.
    ProcessInfo(ProcessInfo),
}

#[derive(Debug)]
pub enum WakeOutcome {
    Exited { success: bool, desc: String },
    Timeout,
    SpawnFailed(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Deadline {
    Confirmation,
    WakeRetry,
    /// The agent process exited after confirming; fail the task if no result appears.
    ExitCheck(String),
    Resend,
}

struct RunningWake {
    task_id: String,
    attempt: u32,
    pgid: Option<i32>,
    /// Dropping or sending disarms the wake timeout (the agent confirmed while running).
    disarm: Option<oneshot::Sender<()>>,
    /// `.started` appeared while the command still ran: the command is the agent itself.
    foreground: bool,
}

pub struct Runner {
    cfg: Arc<SidecarConfig>,
    store: QueueStore,
    q: QueueFile,
    hub: Option<mpsc::UnboundedSender<AgentFrame>>,
    identify: watch::Sender<Identify>,
    events: mpsc::UnboundedSender<Event>,
    wake: Option<RunningWake>,
    deadline: Option<(Instant, Deadline)>,
    progress_offset: u64,
    /// A corrupt queue.json moved aside at start, not yet reported to the hub.
    corrupt_report: Option<String>,
    /// Who restarts us when we exit (detected at start).
    host: crate::Host,
    /// A `restart_sidecar` waiting for the working task to end.
    pending_restart: Option<String>,
    /// Cancelled to stop the whole sidecar (shutdown, or a commanded restart).
    stop: CancellationToken,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<SidecarConfig>,
        store: QueueStore,
        q: QueueFile,
        corrupt_report: Option<String>,
        identify: watch::Sender<Identify>,
        events: mpsc::UnboundedSender<Event>,
        host: crate::Host,
        stop: CancellationToken,
    ) -> Runner {
        let mut r = Runner {
            cfg,
            store,
            q,
            hub: None,
            identify,
            events,
            wake: None,
            deadline: None,
            progress_offset: 0,
            corrupt_report,
            host,
            pending_restart: None,
            stop,
        };
        // Whatever was active when we stopped is settled with the hub before it goes on.
        if let Some(t) = r.q.active.take() {
            tracing::info!(task_id = %t.task_id, status = t.status.as_str(), "found a task from before the restart; recovering it");
            r.q.recovering = Some(t);
            r.persist();
        }
        r.update_identify();
        r
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>, shutdown: CancellationToken) {
        let mut rescan = tokio::time::interval(self.cfg.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.deadline.as_ref().map(|(at, _)| *at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(ev) = rx.recv() => self.on_event(ev),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    if let Some((_, d)) = self.deadline.take() {
                        self.on_deadline(d);
                    }
                }
                _ = rescan.tick() => self.check_files(None),
            }
        }
        // Every change was persisted when it happened; the task stays on disk for recovery.
        tracing::info!(active = self.q.active.is_some() || self.q.recovering.is_some(), "sidecar stopping");
    }

    // ---- plumbing ------------------------------------------------------------------------

    /// Writes queue.json durably. Returns false (after logging) when the disk refuses.
    fn persist(&mut self) -> bool {
        match self.store.save(&self.q) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(path = %self.store.path().display(), error = %e, "cannot write the queue");
                false
            }
        }
    }

    fn send(&self, f: AgentFrame) {
        if let Some(h) = &self.hub {
            let _ = h.send(f);
        }
    }

    fn update_identify(&self) {
        let busy = self.q.active.is_some() || self.q.recovering.is_some();
        let cfg = &self.cfg;
        self.identify.send_modify(|i| {
            i.agent_id = cfg.agent_id.clone();
            i.token = cfg.token.clone();
            i.name = Some(cfg.name.clone().unwrap_or_else(|| cfg.agent_id.clone()));
            i.capabilities = cfg.capabilities.clone();
            i.client_type = Some("sidecar".into());
            i.protocol_version = Some(proto::PROTOCOL_VERSION as u64);
            i.status = Some(if busy { "busy" } else { "idle" }.into());
        });
    }

    fn path(&self, task_id: &str, ext: &str) -> PathBuf {
        self.cfg.results_dir.join(format!("{task_id}.{ext}"))
    }
    fn task_file(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(format!("{task_id}.json"))
    }
    fn wake_log(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(format!("{task_id}.wake.log"))
    }

    fn active_mut(&mut self) -> Option<&mut QueuedTask> {
        self.q.active.as_mut()
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(t) = self.active_mut() {
            tracing::info!(task_id = %t.task_id, from = t.status.as_str(), to = phase.as_str(), "task phase");
            t.status = phase;
        }
        self.persist();
    }

    // ---- events --------------------------------------------------------------------------

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Conn(ConnEvent::Identified(tx)) => {
                self.hub = Some(tx);
                self.on_identified();
            }
            Event::Conn(ConnEvent::Lost) => self.hub = None,
            Event::Conn(ConnEvent::Frame(f)) => self.on_frame(f),
            Event::WakeExit { task_id, attempt, outcome } => self.on_wake_exit(task_id, attempt, outcome),
            Event::File { path, complete } => self.check_files(Some((path, complete))),
            Event::ProcessInfo(info) => self.set_process_info(info),
        }
    }

    fn on_identified(&mut self) {
        if let Some(note) = self.corrupt_report.take() {
            self.send(AgentFrame::Status { status: note });
        }
        if let Some(t) = &self.q.recovering {
            self.send(AgentFrame::TaskRecovering {
                task_id: t.task_id.clone(),
                last_status: Some(t.status.as_str().into()),
            });
        } else if let Some(t) = &self.q.active {
            self.send(AgentFrame::StateReport {
                task_id: Some(t.task_id.clone()),
                status: Some(t.status.as_str().into()),
                generation: Some(t.generation),
                assigned_at: Some(t.assigned_at),
            });
            self.resend_report();
        } else {
            self.send(AgentFrame::StateReport {
                task_id: None,
                status: Some("idle".into()),
                generation: None,
                assigned_at: None,
            });
        }
    }

    fn on_frame(&mut self, f: HubFrame) {
        match f {
            HubFrame::TaskAssign(a) => self.on_assign(a),
            HubFrame::TaskAck { task_id, status } => {
                let reporting =
                    self.q.active.as_ref().is_some_and(|t| t.task_id == task_id && t.status == Phase::Reporting);
                if reporting && status != proto::AckStatus::Accepted {
                    tracing::info!(task_id = %task_id, status = ?status, "hub acknowledged the report");
                    self.finish_task();
                }
            }
            HubFrame::TaskContinue { task_id, generation } => {
                let Some(mut t) = self.q.recovering.take().filter(|t| t.task_id == task_id) else {
                    return tracing::warn!(task_id = %task_id, "task_continue for a task we are not recovering");
                };
                t.generation = generation;
                tracing::info!(task_id = %task_id, status = t.status.as_str(), "hub says continue");
                self.q.active = Some(t);
                self.persist();
                self.resume();
            }
            HubFrame::TaskReassign { task_id } => {
                if let Some(t) = self.q.recovering.take().filter(|t| t.task_id == task_id) {
                    tracing::info!(task_id = %task_id, "hub reassigned the task; dropping it");
                    self.drop_task(t);
                }
            }
            HubFrame::StateReportAck { task_id: Some(task_id), action: proto::ReportAction::Abort } => {
                if self.q.active.as_ref().is_some_and(|t| t.task_id == task_id) {
                    if let Some(t) = self.q.active.take() {
                        tracing::warn!(task_id = %task_id, "hub says abort; dropping the task");
                        self.drop_task(t);
                    }
                }
            }
            HubFrame::TaskCancelled { task_id, .. } => {
                let active = self.q.active.as_ref().is_some_and(|t| t.task_id == task_id);
                let recovering = self.q.recovering.as_ref().is_some_and(|t| t.task_id == task_id);
                let t = if active {
                    self.q.active.take()
                } else if recovering {
                    self.q.recovering.take()
                } else {
                    None
                };
                if let Some(t) = t {
                    tracing::info!(task_id = %task_id, "task cancelled by the hub");
                    self.drop_task(t);
                }
            }
            HubFrame::Error(e) => {
                let ours = e.task_id.as_ref().zip(self.q.active.as_ref()).is_some_and(|(id, t)| id == &t.task_id);
                let reporting = ours && self.q.active.as_ref().is_some_and(|t| t.status == Phase::Reporting);
                match e.error.as_str() {
                    "stale_generation" | "invalid_state" | "not_found" if reporting => {
                        tracing::warn!(error = %e.error, message = e.message.as_deref().unwrap_or(""), "hub refused our report; dropping the task");
                        self.finish_task();
                    }
                    "storage_unavailable" if reporting => {
                        self.deadline = Some((Instant::now() + Duration::from_secs(1), Deadline::Resend));
                    }
                    _ => {
                        tracing::warn!(error = %e.error, message = e.message.as_deref().unwrap_or(""), "error from the hub")
                    }
                }
            }
            HubFrame::RestartSidecar { reason, force } => self.on_restart_command(reason, force),
            HubFrame::Identified { .. }
            | HubFrame::Pong { .. }
            | HubFrame::StatusUpdated { .. }
            | HubFrame::StateReportAck { .. } => {}
        }
    }

    /// `restart_sidecar`: exit so our supervisor restarts us, when that loses no work.
    fn on_restart_command(&mut self, reason: String, force: bool) {
        if !self.host.restarts_us {
            tracing::warn!(reason = %reason, "restart refused: no supervisor detected, and exiting would stop this agent");
            let status =
                "restart_refused: no supervisor detected (native, pm2 or systemd); exiting would stop the agent".into();
            return self.send(AgentFrame::Status { status });
        }
        let phase = self.q.active.as_ref().map(|t| t.status);
        match phase {
            None | Some(Phase::Accepted) => self.restart_now(reason),
            Some(_) if force => {
                // Stop the agent's work and keep the task; after the restart `task_recovering`
                // settles it, and a continued task is woken again from the start.
                if let Some(t) = self.q.active.as_mut() {
                    if let Some(pg) = t.wake_pgid.filter(|pg| wake::group_runs_task(*pg, &t.task_id)) {
                        let grace = self.cfg.kill_timeout;
                        tokio::spawn(wake::stop_group(pg, grace));
                    }
                    t.status = Phase::Accepted;
                    t.wake_attempts = 0;
                    t.wake_pgid = None;
                    t.report = None;
                }
                let files: Vec<PathBuf> = self
                    .q
                    .active
                    .as_ref()
                    .map(|t| vec![self.path(&t.task_id, "started"), self.path(&t.task_id, "json")])
                    .unwrap_or_default();
                for f in files {
                    let _ = osutil::fs::remove_durable(&f);
                }
                self.persist();
                self.restart_now(reason);
            }
            Some(p) => {
                tracing::info!(reason = %reason, phase = p.as_str(), "restart deferred until the task ends");
                self.pending_restart = Some(reason);
            }
        }
    }

    fn restart_now(&mut self, reason: String) {
        tracing::info!(reason = %reason, supervisor = self.host.kind, "restarting on the hub's command");
        self.send(AgentFrame::AgentRestarting { reason: Some(reason) });
        self.stop.cancel();
    }

    fn maybe_deferred_restart(&mut self) {
        if self.q.active.is_none() {
            if let Some(reason) = self.pending_restart.take() {
                self.restart_now(reason);
            }
        }
    }

    fn on_assign(&mut self, a: TaskAssign) {
        if let Some(t) = self.q.active.as_mut().filter(|t| t.task_id == a.task_id) {
            // The hub re-issued the task we hold (a new generation after a reconnect): keep
            // working on it under the new generation.
            tracing::info!(task_id = %a.task_id, from = t.generation, to = a.generation, "task re-assigned to us; adopting the new generation");
            t.generation = a.generation;
            t.assigned_at = a.assigned_at;
            if let Some(Value::Object(r)) = t.report.as_mut() {
                r.insert("generation".into(), json!(a.generation));
            }
            if self.persist() {
                self.send(AgentFrame::TaskAccepted { task_id: a.task_id });
                self.resend_report();
            }
            return;
        }
        if self.q.active.is_some() || self.q.recovering.is_some() {
            tracing::info!(task_id = %a.task_id, "busy; rejecting task_assign");
            return self.send(AgentFrame::TaskRejected { task_id: a.task_id, reason: Some("busy".into()) });
        }
        let task = QueuedTask {
            task_id: a.task_id.clone(),
            description: a.description,
            metadata: a.metadata,
            generation: a.generation,
            assigned_at: a.assigned_at,
            status: Phase::Accepted,
            wake_attempts: 0,
            wake_pgid: None,
            report: None,
            extra: a.extra,
        };
        self.q.active = Some(task);
        // Persist, fsync, then ack: a crash after this line finds the task on disk.
        if !self.persist() {
            self.q.active = None;
            let reason = format!("storage_error: cannot write {}", self.store.path().display());
            return self.send(AgentFrame::TaskRejected { task_id: a.task_id, reason: Some(reason) });
        }
        self.progress_offset = 0;
        self.update_identify();
        tracing::info!(task_id = %a.task_id, generation = a.generation, "task accepted");
        self.send(AgentFrame::TaskAccepted { task_id: a.task_id.clone() });
        let target =
            self.q.active.as_ref().and_then(|t| t.extra.get("routing_decision")).and_then(|r| r.get("target_type"));
        match target.and_then(Value::as_str) {
            None | Some("wake") => self.start_wake(1),
            Some(other) => {
                let reason = format!("unsupported_routing_target: {other}");
                self.report_failure(reason);
            }
        }
    }

    /// Continues a recovered task from the phase it was in.
    fn resume(&mut self) {
        let Some(t) = self.q.active.clone() else { return };
        self.progress_offset = 0;
        match t.status {
            Phase::Accepted => {
                // We may have died between spawning a wake and recording it.
                self.stop_orphaned_wakes(&t);
                self.start_wake(1)
            }
            Phase::Waking => {
                if self.path(&t.task_id, "started").exists() {
                    self.set_phase(Phase::Working);
                    self.check_files(None);
                } else {
                    // The wake never confirmed: stop what may be left of it and run it again.
                    self.stop_orphaned_wakes(&t);
                    self.start_wake(t.wake_attempts.max(1));
                }
            }
            Phase::WakingConfirmation => {
                self.deadline = Some((Instant::now() + self.cfg.confirmation_timeout, Deadline::Confirmation));
                self.check_files(None);
            }
            Phase::Working => self.check_files(None),
            Phase::Reporting => self.resend_report(),
        }
    }

    // ---- wake ----------------------------------------------------------------------------

    /// Stops every wake of `t` left by an earlier run of this sidecar: the recorded group, and
    /// any group carrying this task and agent in its environment.
    fn stop_orphaned_wakes(&self, t: &QueuedTask) {
        let mut groups = wake::groups_running(&t.task_id, &self.cfg.agent_id);
        groups.extend(t.wake_pgid.filter(|pg| !groups.contains(pg) && wake::group_runs_task(*pg, &t.task_id)));
        for pg in groups {
            tracing::info!(task_id = %t.task_id, pgid = pg, "stopping a wake left by an earlier run");
            tokio::spawn(wake::stop_group(pg, self.cfg.kill_timeout));
        }
    }

    fn start_wake(&mut self, attempt: u32) {
        let Some(command) = self.cfg.wake_command.clone() else {
            return self.report_failure("no_wake_command_configured".into());
        };
        let Some(task) = self.q.active.clone() else { return };
        let task_file = self.task_file(&task.task_id);
        let task_json = serde_json::to_string(&task_json(&task)).expect("task serializes");
        let _ = std::fs::create_dir_all(task_file.parent().expect("has a parent"));
        if let Err(e) = osutil::fs::write_atomic(&task_file, task_json.as_bytes()) {
            tracing::error!(path = %task_file.display(), error = %e, "cannot write the task file");
        }
        let log = self.wake_log(&task.task_id);
        let spec = wake::WakeSpec {
            command: &command,
            task: &task,
            task_json: &task_json,
            task_file: &task_file,
            results_dir: &self.cfg.results_dir,
            log_file: &log,
            cwd: self.cfg.repo_dir.as_deref(),
            agent_id: &self.cfg.agent_id,
        };
        let spawned = wake::spawn(&spec);
        if let Some(t) = self.active_mut() {
            t.status = Phase::Waking;
            t.wake_attempts = attempt;
            t.wake_pgid = spawned.as_ref().ok().and_then(|c| c.id()).map(|p| p as i32);
        }
        self.persist();
        let events = self.events.clone();
        let task_id = task.task_id.clone();
        match spawned {
            Err(e) => {
                let _ =
                    events.send(Event::WakeExit { task_id, attempt, outcome: WakeOutcome::SpawnFailed(e.to_string()) });
            }
            Ok(mut child) => {
                let pgid = child.id().map(|p| p as i32);
                tracing::info!(task_id = %task_id, attempt, pgid, "wake command started");
                let (disarm_tx, mut disarm_rx) = oneshot::channel::<()>();
                let timeout = self.cfg.wake_timeout;
                let grace = self.cfg.kill_timeout;
                self.wake = Some(RunningWake {
                    task_id: task_id.clone(),
                    attempt,
                    pgid,
                    disarm: Some(disarm_tx),
                    foreground: false,
                });
                tokio::spawn(async move {
                    let mut armed = true;
                    let deadline = tokio::time::sleep(timeout);
                    tokio::pin!(deadline);
                    let outcome = loop {
                        tokio::select! {
                            status = child.wait() => break match status {
                                Ok(s) => WakeOutcome::Exited { success: s.success(), desc: s.to_string() },
                                Err(e) => WakeOutcome::Exited { success: false, desc: e.to_string() },
                            },
                            _ = &mut deadline, if armed => {
                                if let Some(pg) = pgid {
                                    wake::stop_group(pg, grace).await;
                                }
                                let _ = child.wait().await;
                                break WakeOutcome::Timeout;
                            }
                            _ = &mut disarm_rx, if armed => armed = false,
                        }
                    };
                    let _ = events.send(Event::WakeExit { task_id, attempt, outcome });
                });
            }
        }
    }

    fn on_wake_exit(&mut self, task_id: String, attempt: u32, outcome: WakeOutcome) {
        let current = self.wake.as_ref().is_some_and(|w| w.task_id == task_id && w.attempt == attempt);
        let spawn_failed = matches!(outcome, WakeOutcome::SpawnFailed(_));
        if !current && !spawn_failed {
            return; // a wake of a task we no longer hold
        }
        let Some(t) = self.q.active.clone().filter(|t| t.task_id == task_id) else { return };
        // `.started` existing when the command ends means the command was the agent itself,
        // even if its file event has not reached us yet.
        let seen_running = self.wake.take().is_some_and(|w| w.foreground);
        let foreground = seen_running || (!spawn_failed && self.path(&task_id, "started").exists());
        if foreground && t.status == Phase::Waking {
            self.send(AgentFrame::WakeResult {
                task_id: task_id.clone(),
                status: "success".into(),
                attempt: Some(attempt as u64),
                error: None,
            });
            self.check_files(None);
        }
        let t = self.q.active.clone().filter(|t| t.task_id == task_id).unwrap_or(t);
        let log_tail = wake::log_tail(&self.wake_log(&task_id), 400);
        match t.status {
            Phase::Waking if !foreground => {
                let (ok, status, error) = match &outcome {
                    WakeOutcome::Exited { success: true, .. } => (true, "success", None),
                    WakeOutcome::Exited { desc, .. } => (false, "failed", Some(format!("{desc}; output: {log_tail}"))),
                    WakeOutcome::Timeout => {
                        (false, "timeout", Some(format!("no exit within {}ms", self.cfg.wake_timeout.as_millis())))
                    }
                    WakeOutcome::SpawnFailed(e) => (false, "failed", Some(format!("cannot start: {e}"))),
                };
                tracing::info!(task_id = %task_id, attempt, status, error = error.as_deref().unwrap_or(""), "wake finished");
                self.send(AgentFrame::WakeResult {
                    task_id: task_id.clone(),
                    status: status.into(),
                    attempt: Some(attempt as u64),
                    error: error.clone(),
                });
                if ok {
                    self.set_phase(Phase::WakingConfirmation);
                    self.deadline = Some((Instant::now() + self.cfg.confirmation_timeout, Deadline::Confirmation));
                    self.check_files(None);
                } else if let Some(delay) = self.cfg.wake_retry_delays.get(attempt as usize - 1) {
                    self.deadline = Some((Instant::now() + *delay, Deadline::WakeRetry));
                } else {
                    let retries = self.cfg.wake_retry_delays.len();
                    self.report_failure(format!("wake_failed_after_{retries}_attempts"));
                }
            }
            Phase::Working | Phase::WakingConfirmation if foreground => {
                let desc = match outcome {
                    WakeOutcome::Exited { desc, .. } => desc,
                    WakeOutcome::Timeout => "timed out".into(),
                    WakeOutcome::SpawnFailed(e) => e,
                };
                // Give the result file's event a moment to arrive before calling it missing.
                self.deadline = Some((Instant::now() + self.cfg.rescan_interval, Deadline::ExitCheck(desc)));
                self.check_files(None);
            }
            _ => {}
        }
    }

    fn on_deadline(&mut self, d: Deadline) {
        let Some(t) = self.q.active.clone() else { return };
        match d {
            Deadline::Confirmation if t.status == Phase::WakingConfirmation => {
                self.check_files(None);
                if self.q.active.as_ref().is_some_and(|t| t.status == Phase::WakingConfirmation) {
                    self.report_failure("confirmation_timeout".into());
                }
            }
            Deadline::WakeRetry if t.status == Phase::Waking => self.start_wake(t.wake_attempts + 1),
            Deadline::ExitCheck(desc) if t.status == Phase::Working || t.status == Phase::WakingConfirmation => {
                self.check_files(None);
                if self.q.active.as_ref().is_some_and(|x| x.status != Phase::Reporting) {
                    let log_tail = wake::log_tail(&self.wake_log(&t.task_id), 400);
                    self.report_failure(format!("agent_exited_without_result: {desc}; output: {log_tail}"));
                }
            }
            Deadline::Resend => self.resend_report(),
            _ => {}
        }
    }

    // ---- files ---------------------------------------------------------------------------

    /// Looks at the active task's files: `.started` confirms, `.json` is the result,
    /// `.progress` lines are forwarded. `trigger` is the file event that prompted the look.
    fn check_files(&mut self, trigger: Option<(PathBuf, bool)>) {
        let Some(t) = self.q.active.clone() else { return };
        if !matches!(t.status, Phase::Waking | Phase::WakingConfirmation | Phase::Working) {
            return;
        }
        let id = &t.task_id;
        if let Some((p, _)) = &trigger {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with(id.as_str()) {
                return;
            }
        }
        let started = self.path(id, "started").exists();
        if started && t.status != Phase::Working {
            if let Some(w) = self.wake.as_mut().filter(|w| &w.task_id == id && !w.foreground) {
                // The command is still running and the agent confirmed: it is the agent itself.
                w.foreground = true;
                if let Some(d) = w.disarm.take() {
                    let _ = d.send(());
                }
                let attempt = Some(w.attempt as u64);
                self.send(AgentFrame::WakeResult {
                    task_id: id.clone(),
                    status: "success".into(),
                    attempt,
                    error: None,
                });
            }
            if matches!(self.deadline, Some((_, Deadline::Confirmation))) {
                self.deadline = None;
            }
            tracing::info!(task_id = %id, "agent confirmed (.started)");
            self.set_phase(Phase::Working);
        }
        // Progress first: an agent writes its progress before its result, so reading in this
        // order never reports a result without the progress that preceded it.
        self.forward_progress(id);
        let result = self.path(id, "json");
        let Ok(meta) = std::fs::metadata(&result) else { return };
        let complete_event = trigger.as_ref().is_some_and(|(p, complete)| *complete && p == &result);
        let bytes = match std::fs::read(&result) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(path = %result.display(), error = %e, "cannot read the result file"),
        };
        let parsed: Result<Value, String> = serde_json::from_slice(&bytes).map_err(|e| e.to_string());
        let settled =
            meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > self.cfg.rescan_interval * 2);
        match parsed {
            Err(_) if !complete_event && !settled => {} // may still be being written; the close event or a later rescan decides
            Err(e) => self.report_failure(format!("result_parse_error: {e}")),
            Ok(v) => {
                if v.get("status").and_then(Value::as_str) == Some("success") {
                    let tokens_used = v.get("tokens_used").cloned();
                    self.report(AgentFrame::TaskComplete {
                        task_id: id.clone(),
                        generation: t.generation,
                        result: Some(v),
                        tokens_used,
                        verification_report: None,
                        verification_history: None,
                    });
                } else {
                    let reason = ["reason", "error", "message"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(Value::as_str))
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            format!("status: {}", v.get("status").map(Value::to_string).unwrap_or("missing".into()))
                        });
                    self.report_failure(reason);
                }
            }
        }
    }

    fn forward_progress(&mut self, id: &str) {
        let path = self.path(id, "progress");
        let Ok(bytes) = std::fs::read(&path) else { return };
        let start = (self.progress_offset as usize).min(bytes.len());
        let Some(end) = bytes[start..].iter().rposition(|b| *b == b'\n').map(|i| start + i + 1) else { return };
        for line in bytes[start..end].split(|b| *b == b'\n') {
            let text = String::from_utf8_lossy(line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let progress = serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!(text));
            self.send(AgentFrame::TaskProgress {
                task_id: id.to_string(),
                progress: Some(progress),
                execution_event: None,
            });
        }
        self.progress_offset = end as u64;
    }

    // ---- reports -------------------------------------------------------------------------

    fn report_failure(&mut self, reason: String) {
        let Some(t) = &self.q.active else { return };
        tracing::warn!(task_id = %t.task_id, reason = %reason, "task failed");
        let frame = AgentFrame::TaskFailed {
            task_id: t.task_id.clone(),
            generation: t.generation,
            reason: Some(reason),
            error: None,
        };
        self.report(frame);
    }

    /// Persists the report with the task, then sends it; it is re-sent until the hub acks.
    fn report(&mut self, frame: AgentFrame) {
        let value = serde_json::to_value(&frame).expect("frames serialize");
        if let Some(t) = self.active_mut() {
            t.report = Some(value);
            t.status = Phase::Reporting;
        }
        if matches!(self.deadline, Some((_, Deadline::Confirmation | Deadline::WakeRetry | Deadline::ExitCheck(_)))) {
            self.deadline = None;
        }
        self.persist();
        tracing::info!(frame = frame.type_name(), "reporting to the hub");
        self.send(frame);
    }

    fn resend_report(&mut self) {
        let Some(report) = self.q.active.as_ref().and_then(|t| t.report.clone()) else { return };
        match serde_json::from_value::<AgentFrame>(report) {
            Ok(f) => self.send(f),
            Err(e) => tracing::error!(error = %e, "stored report cannot be decoded"),
        }
    }

    /// The hub has the report: remove the task's files (result files only now) and forget it.
    fn finish_task(&mut self) {
        if let Some(t) = self.q.active.take() {
            self.remove_files(&t.task_id);
        }
        self.persist();
        self.update_identify();
        self.maybe_deferred_restart();
    }

    /// Cancelled, reassigned or aborted: stop its wake, remove its files, forget it.
    fn drop_task(&mut self, t: QueuedTask) {
        let pgid = self.wake.take().filter(|w| w.task_id == t.task_id).and_then(|w| w.pgid).or(t.wake_pgid);
        if let Some(pg) = pgid.filter(|pg| wake::group_runs_task(*pg, &t.task_id)) {
            let grace = self.cfg.kill_timeout;
            tokio::spawn(wake::stop_group(pg, grace));
        }
        if self.q.active.is_none() {
            self.deadline = None;
        }
        self.remove_files(&t.task_id);
        self.persist();
        self.update_identify();
        self.maybe_deferred_restart();
    }

    fn remove_files(&self, id: &str) {
        for p in [
            self.path(id, "json"),
            self.path(id, "started"),
            self.path(id, "progress"),
            self.task_file(id),
            self.wake_log(id),
        ] {
            if let Err(e) = osutil::fs::remove_durable(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a task file");
            }
        }
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
                m.insert("ram_used_bytes".into(), json!(mem));
            }
            self.send(AgentFrame::ResourceReport(m));
        }
    }
}

/// The task as handed to the agent (`${TASK_JSON}`, `AGENTCOM_TASK_FILE`).
fn task_json(t: &QueuedTask) -> Value {
    let mut v = json!({
        "task_id": t.task_id,
        "description": t.description,
        "metadata": t.metadata,
        "generation": t.generation,
        "assigned_at": t.assigned_at,
    });
    for (k, x) in &t.extra {
        v[k] = x.clone();
    }
    v
}

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
    }
}
