//! The sidecar's core: a state machine that does no IO. [`Machine::handle`] takes an
//! [`Event`] (a hub frame, the connection going up or down, a wake spawned or exited, what the
//! agent's files hold, a timer) and the time, changes the state and returns the [`Action`]s to
//! carry out, in order: persist the queue, send a frame, spawn a wake, stop a process group,
//! remove files, look at the files, write an answer for the agent, exit. The executor (`executor.rs`) does the IO and feeds
//! the results back as events. Time is a number ([`Now`]), so timers are tested by advancing it.
//!
//! Invariants: `task_accepted` is only ever after the persist of the accepted task (a required
//! persist: if it fails nothing after it runs); a report is persisted before it is sent and
//! re-sent until the hub acknowledges it; a task's files are removed only after that. A
//! question is persisted before it is forwarded, an answer written and persisted before it is
//! acknowledged (`input.rs`).

mod events;
mod frames;
mod hub;
mod input;
mod observe;
mod report;
mod workspace;

use crate::config::SidecarConfig;
use crate::files::ProgressCursor;
use crate::question::Asking;
use crate::queue::{QueueFile, QueuedTask};
use crate::task::{Held, Phase, Task};
use crate::wake;
use proto::{AgentFrame, Usage};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use events::{Action, Event, Look, TaskFile, WakeOutcome};
pub use frames::clip;

/// The machine's clock: time since the executor started.
pub type Now = Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    Idle,
    Active(Held),
    /// Held before a restart; waiting for the hub's `task_continue` or `task_reassign`.
    Recovering(Held),
}

#[derive(Debug)]
pub struct Machine {
    cfg: Arc<SidecarConfig>,
    /// Whether exiting hands the restart to a supervisor.
    restarts_us: bool,
    slot: Slot,
    connected: bool,
    pending_restart: Option<String>,
    /// A corrupt queue.json moved aside at start, to tell the hub once.
    corrupt_note: Option<String>,
    progress: ProgressCursor,
    /// Problems with the active task's files already logged (each is logged once).
    warned: Vec<&'static str>,
    /// What the last batch's required persist would confirm: if the executor answers
    /// `PersistFailed`, it is undone (nothing after it ran).
    unconfirmed: Option<Unconfirmed>,
    /// The last bad `.needs-input` reported (each is reported once).
    bad_question: Option<String>,
    /// An answer dropped because the question looked changed: if a look finds the same question
    /// still open, it is asked again (same request id) so the hub delivers the answer again.
    redeliver: Option<String>,
    /// Questions answered of tasks no longer held, newest last: a re-delivery is acknowledged.
    recent_answers: VecDeque<(String, String)>,
    /// What the attempt cost, from the last `<id>.usage` read.
    usage: Option<Usage>,
    /// The usage last sent to the hub in `task_usage` (a new reading is sent when it differs).
    usage_sent: Option<Usage>,
    /// The agent CLI's session of the attempt (from `.usage` or the result).
    session: Option<String>,
}

/// A change made in memory whose required persist is on its way.
#[derive(Debug, Clone, PartialEq)]
enum Unconfirmed {
    /// A task just accepted: on failure it is dropped and rejected.
    Accept,
    /// A question forwarded or an answer written: on failure the questions are as before.
    Asking(Asking),
}

/// How long after a `storage_unavailable` error the report is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

impl Machine {
    /// The machine over what `queue.json` held. A record that cannot be used (an unsafe task
    /// id) is dropped with an error: the hub requeues its task after the grace period.
    pub fn new(
        cfg: Arc<SidecarConfig>,
        restarts_us: bool,
        queue: QueueFile,
        corrupt_note: Option<String>,
        now: Now,
    ) -> Machine {
        let load = |t: Option<QueuedTask>| {
            t.and_then(|t| {
                let id = t.task_id.clone();
                t.into_held(now)
                    .map_err(|e| tracing::error!(task_id = %clip(&id, 200), error = %e, "dropping an unusable task from queue.json"))
                    .ok()
            })
        };
        let (active, recovering) = (load(queue.active), load(queue.recovering));
        let slot = match (active, recovering) {
            (Some(a), other) => {
                if let Some(o) = other {
                    tracing::warn!(task_id = %o.task.id, "queue.json held a second task being recovered; dropping it (the hub requeues it after its grace period)");
                }
                Slot::Recovering(a)
            }
            (None, Some(r)) => Slot::Recovering(r),
            (None, None) => Slot::Idle,
        };
        Machine {
            cfg,
            restarts_us,
            slot,
            connected: false,
            pending_restart: None,
            corrupt_note,
            progress: ProgressCursor::default(),
            warned: Vec::new(),
            unconfirmed: None,
            bad_question: None,
            redeliver: None,
            recent_answers: VecDeque::new(),
            usage: None,
            usage_sent: None,
            session: None,
        }
    }

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// Busy while it holds a task, active or being recovered (for `identify`).
    pub fn is_busy(&self) -> bool {
        !matches!(self.slot, Slot::Idle)
    }

    /// What `queue.json` should hold now.
    pub fn queue(&self) -> QueueFile {
        match &self.slot {
            Slot::Idle => QueueFile::default(),
            Slot::Active(h) => QueueFile { active: Some(QueuedTask::from_held(h)), recovering: None },
            Slot::Recovering(h) => QueueFile { active: None, recovering: Some(QueuedTask::from_held(h)) },
        }
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<Now> {
        let Slot::Active(h) = &self.slot else { return None };
        // `Duration::MAX` marks a deadline that has fired and is being acted on.
        let due = match &h.phase {
            Phase::Waking { deadline, timed_out: false } => Some(*deadline),
            Phase::WakeBackoff { at } => Some(*at),
            Phase::WakingConfirmation { deadline } => Some(*deadline),
            Phase::Working { exited: Some((at, _)), .. } => Some(*at),
            Phase::Reporting { resend_at, .. } => *resend_at,
            _ => None,
        };
        due.filter(|d| *d != Duration::MAX)
    }

    /// Where the result file of a report that keeps it goes.
    pub fn kept_result_path(&self, task: &Task) -> PathBuf {
        self.cfg.results_dir.join(format!("{}.json.too-large-g{}", task.id, task.generation))
    }

    pub fn handle(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        let unconfirmed = self.unconfirmed.take();
        match event {
            Event::Start => {
                if let Slot::Recovering(h) = &self.slot {
                    tracing::info!(task_id = %h.task.id, status = h.phase.status(), "found a task from before the restart; recovering it");
                    out.push(self.persist(false));
                }
            }
            Event::Connected => self.on_connected(&mut out),
            Event::Disconnected => self.connected = false,
            Event::Frame(f) => self.on_frame(f, now, &mut out),
            Event::WakeSpawned { task_id, attempt, pgid } => {
                if let Some(h) = self.active_wake(&task_id, attempt) {
                    h.group = Some(pgid);
                    tracing::info!(task_id = %task_id, attempt, pgid, "wake command started");
                    out.push(self.persist(false));
                }
            }
            Event::WakeExited { task_id, attempt, outcome, started, log_tail } => {
                self.on_wake_exit(&task_id, attempt, outcome, started, log_tail, now, &mut out)
            }
            Event::FileChanged { name, closed } => {
                if let Slot::Active(h) = &self.slot {
                    let id = &h.task.id;
                    let ours = name.strip_prefix(id.as_str()).is_some_and(|ext| {
                        matches!(ext, ".json" | ".started" | ".progress" | ".needs-input" | ".usage")
                    });
                    if ours && h.phase.watches_files() {
                        let closed = closed && name.ends_with(".json");
                        out.push(self.observe(closed, Look::Watch));
                    }
                }
            }
            Event::Rescan => match &self.slot {
                Slot::Active(h) if matches!(h.phase, Phase::Working { foreground: false, exited: None }) => {
                    out.push(self.observe_checking_agent(h.group))
                }
                Slot::Active(h) if h.phase.watches_files() => out.push(self.observe(false, Look::Watch)),
                _ => {}
            },
            Event::Observed { look, observation } => self.on_observed(look, observation, now, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
            Event::AnswerSuperseded { task_id, request_id } => {
                self.on_answer_superseded(&task_id, &request_id, unconfirmed, &mut out)
            }
            Event::WorkspaceReady { task_id, workspace } => self.on_workspace_ready(&task_id, workspace, now, &mut out),
            Event::WorkspaceFailed { task_id, reason } => self.on_workspace_failed(&task_id, &reason, &mut out),
            Event::Committed { task_id, change } => self.on_committed(&task_id, change, &mut out),
            Event::CommitFailed { task_id, reason } => self.on_commit_failed(&task_id, &reason, &mut out),
            Event::PersistFailed => {
                if let Some(Unconfirmed::Asking(before)) = unconfirmed {
                    return self.undo_asking(before, out);
                }
                if let Slot::Active(h) = &self.slot {
                    if unconfirmed == Some(Unconfirmed::Accept) {
                        let task_id = h.task.id.clone();
                        tracing::error!(task_id = %task_id, "cannot persist the accepted task; rejecting it");
                        self.slot = Slot::Idle;
                        let reason =
                            format!("storage_error: cannot write {}", self.cfg.state_dir.join("queue.json").display());
                        self.send(
                            &mut out,
                            AgentFrame::TaskRejected { task_id, reason: Some(clip(&reason, proto::MAX_REASON)) },
                        );
                    }
                }
            }
        }
        out
    }

    // ---- plumbing ------------------------------------------------------------------------

    fn persist(&self, required: bool) -> Action {
        Action::Persist { queue: Box::new(self.queue()), required }
    }

    /// Frames go out only while connected; whatever must reach the hub is sent again on the
    /// next connect (reports, recovery).
    fn send(&self, out: &mut Vec<Action>, frame: AgentFrame) {
        if self.connected {
            out.push(Action::Send(frame));
        }
    }

    fn active(&mut self) -> Option<&mut Held> {
        match &mut self.slot {
            Slot::Active(h) => Some(h),
            _ => None,
        }
    }

    /// The task held, active or being recovered, if it is `task_id`.
    fn held(&mut self, task_id: &str) -> Option<&mut Held> {
        match &mut self.slot {
            Slot::Active(h) | Slot::Recovering(h) if h.task.id == task_id => Some(h),
            _ => None,
        }
    }

    /// The active task if `task_id` is it and its current wake is `attempt`.
    fn active_wake(&mut self, task_id: &str, attempt: u32) -> Option<&mut Held> {
        self.active().filter(|h| h.task.id == task_id && h.wakes == attempt)
    }

    /// A look that also asks whether the task's agent still runs: after a restart, or for an
    /// agent running in the background, its exit is never seen as a wake exit.
    fn observe_checking_agent(&self, recorded: Option<i32>) -> Action {
        let mut look = self.observe(false, Look::Watch);
        if let Action::Observe { check_agent, .. } = &mut look {
            *check_agent = Some(recorded);
        }
        look
    }

    fn observe(&self, result_closed: bool, look: Look) -> Action {
        let task_id = match &self.slot {
            Slot::Active(h) | Slot::Recovering(h) => h.task.id.clone(),
            Slot::Idle => String::new(),
        };
        Action::Observe { task_id, progress: self.progress, result_closed, look, check_agent: None }
    }

    fn warn_once(&mut self, key: &'static str) -> bool {
        if self.warned.contains(&key) {
            return false;
        }
        self.warned.push(key);
        true
    }

    fn set_phase(&mut self, phase: Phase, out: &mut Vec<Action>) {
        if let Some(h) = self.active() {
            tracing::info!(task_id = %h.task.id, from = h.phase.status(), to = phase.status(), "task phase");
            h.phase = phase;
        }
        out.push(self.persist(false));
    }

    // ---- the connection ------------------------------------------------------------------

    fn on_connected(&mut self, out: &mut Vec<Action>) {
        self.connected = true;
        if let Some(note) = self.corrupt_note.take() {
            self.send(out, AgentFrame::Status { status: clip(&note, proto::MAX_SHORT) });
        }
        let frame = match &self.slot {
            Slot::Recovering(h) => {
                AgentFrame::TaskRecovering { task_id: h.task.id.clone(), last_status: Some(h.phase.status().into()) }
            }
            Slot::Active(h) => AgentFrame::StateReport {
                task_id: Some(h.task.id.clone()),
                status: Some(h.phase.status().into()),
                generation: Some(h.task.generation),
                assigned_at: Some(h.task.assigned_at),
            },
            Slot::Idle => AgentFrame::StateReport {
                task_id: None,
                status: Some("idle".into()),
                generation: None,
                assigned_at: None,
            },
        };
        self.send(out, frame);
        self.resend_answer_ack(out);
        if let Slot::Active(Held { task, phase: Phase::Reporting { report, .. }, .. }) = &self.slot {
            let frame = report.frame(task);
            self.send(out, frame);
        }
        self.resend_question(out);
    }

    // ---- wakes ---------------------------------------------------------------------------

    /// Starts wake number `attempt` of the active task.
    fn start_wake(&mut self, attempt: u32, now: Now, out: &mut Vec<Action>) {
        let Some(command) = self.cfg.wake_command.clone() else {
            return self.report_failure("no_wake_command_configured".into(), out);
        };
        let repo_dir = self.cfg.repo_dir.clone();
        let Some(h) = self.active() else { return };
        let task_json = h.task.to_json().to_string();
        let session_id = h.task.resume_session.clone().unwrap_or_default();
        let values = wake::TaskValues {
            task_id: &h.task.id,
            task_json: &task_json,
            description: &h.task.description,
            session_id: &session_id,
        };
        let mut vars = match wake::task_environment(&command, &values) {
            Ok((vars, omitted)) => {
                for note in omitted {
                    tracing::warn!(task_id = %h.task.id, note = %note, "wake environment");
                }
                vars
            }
            Err(reason) => return self.report_failure(reason, out),
        };
        // In its worktree: where it is, its branch, and the commit it started from.
        let cwd = match &h.workspace {
            Some(ws) => {
                vars.push(("AGENTCOM_WORKTREE", ws.path.display().to_string()));
                vars.push(("AGENTCOM_BRANCH", ws.branch.clone()));
                vars.push(("AGENTCOM_BASE_SHA", ws.base_sha.clone()));
                Some(ws.path.clone())
            }
            None => repo_dir,
        };
        h.wakes = attempt;
        h.group = None;
        let (task_id, generation) = (h.task.id.clone(), h.task.generation);
        self.withdraw_question(out);
        self.set_phase(Phase::Waking { deadline: now + self.cfg.wake_timeout, timed_out: false }, out);
        out.push(Action::SpawnWake { task_id, attempt, generation, task_json, vars, cwd });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_wake_exit(
        &mut self,
        task_id: &str,
        attempt: u32,
        outcome: WakeOutcome,
        started: bool,
        log_tail: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let rescan = self.cfg.rescan_interval;
        let Some(h) = self.active_wake(task_id, attempt) else { return };
        let desc = match &outcome {
            WakeOutcome::Exited { desc, .. } => desc.clone(),
            WakeOutcome::SpawnFailed { reason, .. } => format!("cannot start: {reason}"),
        };
        let exited = Some((now + rescan, format!("agent_exited_without_result: {desc}; output: {log_tail}")));
        match h.phase.clone() {
            Phase::Waking { timed_out, .. } => {
                let spawn_failed = matches!(outcome, WakeOutcome::SpawnFailed { .. });
                if started && !spawn_failed {
                    // The command was the agent itself, and it has already finished.
                    self.send(out, frames::wake_result(task_id, "success", attempt, None));
                    // Give the result file's event a moment before calling it missing.
                    self.set_phase(Phase::Working { foreground: false, exited }, out);
                    out.push(self.observe(false, Look::Watch));
                    return;
                }
                let (status, error) = match outcome {
                    _ if timed_out => {
                        ("timeout", Some(format!("no exit within {}ms", self.cfg.wake_timeout.as_millis())))
                    }
                    WakeOutcome::Exited { success: true, .. } => ("success", None),
                    WakeOutcome::Exited { ref desc, .. } => ("failed", Some(format!("{desc}; output: {log_tail}"))),
                    WakeOutcome::SpawnFailed { ref reason, .. } => ("failed", Some(format!("cannot start: {reason}"))),
                };
                tracing::info!(task_id = %task_id, attempt, status, error = error.as_deref().unwrap_or(""), "wake finished");
                self.send(out, frames::wake_result(task_id, status, attempt, error));
                if status == "success" {
                    self.set_phase(Phase::WakingConfirmation { deadline: now + self.cfg.confirmation_timeout }, out);
                    out.push(self.observe(false, Look::Watch));
                } else if let Some(why) = outcome.lasting_failure().filter(|_| !timed_out) {
                    // Waiting cannot cure it: fail now, saying why, instead of after every retry.
                    let output =
                        if log_tail.trim().is_empty() { String::new() } else { format!("; output: {log_tail}") };
                    self.report_failure(format!("wake_failed: {why}{output}"), out);
                } else {
                    self.back_off_or_fail(attempt, now, out);
                }
            }
            Phase::Working { foreground: true, .. } => {
                h.phase = Phase::Working { foreground: false, exited };
                out.push(self.observe(false, Look::Watch));
            }
            _ => {}
        }
    }

    /// After failed wake number `attempt`: the next one after its delay (on record, so a
    /// restart goes on from there), or the task fails when the retries are used up.
    fn back_off_or_fail(&mut self, attempt: u32, now: Now, out: &mut Vec<Action>) {
        match self.cfg.wake_retry_delays.get(attempt.saturating_sub(1) as usize).copied() {
            Some(delay) => self.set_phase(Phase::WakeBackoff { at: now + delay }, out),
            None => {
                let retries = self.cfg.wake_retry_delays.len();
                self.report_failure(format!("wake_failed_after_{retries}_attempts"), out);
            }
        }
    }

    // ---- timers --------------------------------------------------------------------------

    fn on_tick(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let Some(h) = self.active() else { return };
        match h.phase.clone() {
            Phase::Waking { deadline, .. } => {
                h.phase = Phase::Waking { deadline, timed_out: true };
                tracing::warn!(task_id = %h.task.id, attempt = h.wakes, "the wake command ran too long; stopping it");
                if let Some(pgid) = h.group {
                    out.push(Action::StopGroup { pgid, task_id: h.task.id.clone() });
                }
            }
            Phase::WakeBackoff { .. } => {
                let next = h.wakes + 1;
                self.start_wake(next, now, out);
            }
            Phase::WakingConfirmation { .. } => {
                h.phase = Phase::WakingConfirmation { deadline: Duration::MAX };
                out.push(self.observe(false, Look::ConfirmationDue));
            }
            Phase::Working { foreground, exited: Some((_, why)) } => {
                h.phase = Phase::Working { foreground, exited: Some((Duration::MAX, why)) };
                out.push(self.observe(false, Look::ExitCheckDue));
            }
            Phase::Reporting { report, .. } => {
                let frame = report.frame(&h.task);
                h.phase = Phase::Reporting { report, resend_at: None };
                self.send(out, frame);
            }
            _ => {}
        }
    }

    /// Continues a recovered task from the phase it was in.
    fn resume(&mut self, now: Now, out: &mut Vec<Action>) {
        self.progress = ProgressCursor::default();
        self.warned.clear();
        self.bad_question = None;
        self.resend_answer_ack(out);
        self.resend_question(out);
        let confirmation_timeout = self.cfg.confirmation_timeout;
        let Some(h) = self.active() else { return };
        let task_id = h.task.id.clone();
        match h.phase.clone() {
            Phase::Accepted => {
                // We may have died between spawning a wake and recording it.
                out.push(Action::StopOrphans { task_id, recorded: h.group });
                if self.worktrees() {
                    self.prepare_workspace(out);
                } else {
                    self.start_wake(1, now, out);
                }
            }
            // A step on the worktree cut short: run again (each is idempotent).
            Phase::Preparing => self.prepare_workspace(out),
            Phase::Committing { report } => {
                if let Some(report) = self.commit_then_report(report, out) {
                    self.send_report(report, out);
                }
            }
            // The agent may have ended while we were down: if nothing of it runs any more when
            // it has confirmed, its result must show up soon, as after any exit we see.
            // A failed wake waited for its retry: the next attempt, after the delay again.
            Phase::WakeBackoff { .. } => {
                let (attempt, recorded) = (h.wakes, h.group);
                out.push(Action::StopOrphans { task_id, recorded });
                self.back_off_or_fail(attempt, now, out);
            }
            Phase::Waking { .. } | Phase::WakingRecovered => {
                // Whether the wake confirmed decides, once the files are read (`on_observed`).
                h.phase = Phase::WakingRecovered;
                let recorded = h.group;
                out.push(self.observe_checking_agent(recorded));
            }
            Phase::WakingConfirmation { .. } => {
                h.phase = Phase::WakingConfirmation { deadline: now + confirmation_timeout };
                let recorded = h.group;
                out.push(self.observe_checking_agent(recorded));
            }
            Phase::Working { .. } => {
                h.phase = Phase::Working { foreground: false, exited: None };
                let recorded = h.group;
                out.push(self.observe_checking_agent(recorded));
            }
            Phase::Reporting { report, .. } => {
                let frame = report.frame(&h.task);
                self.send(out, frame);
            }
        }
    }
}

#[cfg(test)]
mod tests;
