//! The machine's answers to the hub's frames. Every task id from the hub is checked with
//! [`proto::check_task_id`] before anything else: an unsafe one is never used to build a path.

use super::{clip, Action, Machine, Now, Slot, Unconfirmed};
use crate::task::{Held, Phase, Task};
use proto::{AgentFrame, HubFrame, TaskAssign};

impl Machine {
    pub(super) fn on_frame(&mut self, frame: HubFrame, now: Now, out: &mut Vec<Action>) {
        let task_id = match &frame {
            HubFrame::TaskAssign(a) => Some(&a.task_id),
            HubFrame::TaskAck { task_id, .. }
            | HubFrame::TaskContinue { task_id, .. }
            | HubFrame::TaskReassign { task_id }
            | HubFrame::TaskCancelled { task_id, .. }
            | HubFrame::TaskInput { task_id, .. } => Some(task_id),
            HubFrame::StateReportAck { task_id, .. } => task_id.as_ref(),
            HubFrame::Error(e) => e.task_id.as_ref(),
            _ => None,
        };
        if let Some(Err(e)) = task_id.map(|id| proto::check_task_id(id)) {
            let shown = clip(task_id.map(String::as_str).unwrap_or(""), 200);
            if let HubFrame::TaskAssign(_) = frame {
                tracing::warn!(task_id = %shown, error = %e, "rejecting a task_assign with an unsafe task id");
                let reason = Some(clip(&format!("invalid_task_id: {e}"), proto::MAX_REASON));
                return self.send(out, AgentFrame::TaskRejected { task_id: shown, reason });
            }
            return tracing::warn!(frame = frame_type(&frame), task_id = %shown, error = %e, "ignoring a frame with an unsafe task id");
        }
        match frame {
            HubFrame::TaskAssign(a) => self.on_assign(a, now, out),
            HubFrame::TaskAck { task_id, status } => {
                let reporting = matches!(&self.slot, Slot::Active(h) if h.task.id == task_id && matches!(h.phase, Phase::Reporting { .. }));
                if reporting && status != proto::AckStatus::Accepted {
                    tracing::info!(task_id = %task_id, status = %status, "hub acknowledged the report");
                    self.finish(out);
                }
            }
            HubFrame::TaskContinue { task_id, generation } => {
                let Slot::Recovering(h) = &self.slot else {
                    return tracing::warn!(task_id = %task_id, "task_continue for a task we are not recovering");
                };
                if h.task.id != task_id {
                    return tracing::warn!(task_id = %task_id, "task_continue for a task we are not recovering");
                }
                let Slot::Recovering(mut h) = std::mem::replace(&mut self.slot, Slot::Idle) else { return };
                tracing::info!(task_id = %task_id, status = h.phase.status(), "hub says continue");
                h.task.generation = generation;
                self.slot = Slot::Active(h);
                out.push(self.persist(false));
                self.resume(now, out);
            }
            HubFrame::TaskReassign { task_id } => {
                if matches!(&self.slot, Slot::Recovering(h) if h.task.id == task_id) {
                    tracing::info!(task_id = %task_id, "hub reassigned the task; dropping it");
                    self.drop_held(out);
                }
            }
            HubFrame::StateReportAck { task_id: Some(task_id), action: proto::ReportAction::Abort } => {
                if matches!(&self.slot, Slot::Active(h) if h.task.id == task_id) {
                    tracing::warn!(task_id = %task_id, "hub says abort; dropping the task");
                    self.drop_held(out);
                }
            }
            HubFrame::TaskCancelled { task_id, reason, .. } => {
                if matches!(&self.slot, Slot::Active(h) | Slot::Recovering(h) if h.task.id == task_id) {
                    let reason = reason.as_deref().map(|r| clip(r, 500)).unwrap_or_else(|| "cancelled".into());
                    tracing::info!(task_id = %task_id, reason = %reason, "task stopped by the hub");
                    self.drop_held(out);
                }
            }
            HubFrame::Error(e) => {
                let reporting = matches!(&self.slot, Slot::Active(h)
                    if e.task_id.as_ref() == Some(&h.task.id) && matches!(h.phase, Phase::Reporting { .. }));
                let message = clip(e.message.as_deref().unwrap_or(""), 500);
                use proto::FrameErrorCode as Code;
                match e.error {
                    Code::StaleGeneration | Code::InvalidState | Code::NotFound if reporting => {
                        tracing::warn!(error = %e.error, message = %message, "hub refused our report; dropping the task");
                        self.finish(out);
                    }
                    Code::StorageUnavailable if reporting => {
                        if let Some(Held { phase: Phase::Reporting { resend_at, .. }, .. }) = self.active() {
                            *resend_at = Some(now + super::RESEND_AFTER);
                        }
                    }
                    _ => tracing::warn!(error = %e.error, message = %message, "error from the hub"),
                }
            }
            HubFrame::RestartSidecar { reason, force } => self.on_restart_command(reason, force, out),
            HubFrame::TaskInput { task_id, request_id, answer } => self.on_answer(task_id, request_id, answer, out),
            HubFrame::Identified { .. }
            | HubFrame::Pong { .. }
            | HubFrame::StatusUpdated { .. }
            | HubFrame::StateReportAck { .. } => {}
        }
    }

    fn on_assign(&mut self, a: TaskAssign, now: Now, out: &mut Vec<Action>) {
        if let Some(h) = self.active().filter(|h| h.task.id == a.task_id) {
            // The hub re-issued the task we hold (a new generation after a reconnect): keep
            // working on it under the new generation; a pending report now quotes it.
            tracing::info!(task_id = %a.task_id, from = h.task.generation, to = a.generation, "task re-assigned to us; adopting the new generation");
            h.task.generation = a.generation;
            h.task.assigned_at = a.assigned_at;
            let report = match &h.phase {
                Phase::Reporting { report, .. } => Some(report.frame(&h.task)),
                _ => None,
            };
            out.push(self.persist(true));
            self.send(out, AgentFrame::TaskAccepted { task_id: a.task_id });
            self.resend_answer_ack(out);
            if let Some(frame) = report {
                self.send(out, frame);
            }
            self.resend_question(out);
            return;
        }
        if self.is_busy() {
            tracing::info!(task_id = %a.task_id, "busy; rejecting task_assign");
            return self.send(out, AgentFrame::TaskRejected { task_id: a.task_id, reason: Some("busy".into()) });
        }
        let mut extra = a.extra;
        let collide: Vec<&str> =
            crate::queue::RESERVED_KEYS.iter().copied().filter(|k| extra.remove(*k).is_some()).collect();
        if !collide.is_empty() {
            tracing::warn!(task_id = %a.task_id, fields = ?collide, "dropping task fields named like the sidecar's own");
        }
        let resume_session = match a.resume_session {
            Some(s) if proto::check_session_id(&s).is_ok() => Some(s),
            Some(s) => {
                tracing::warn!(task_id = %a.task_id, session = %clip(&s, 100), "ignoring a session id to resume that is not one");
                None
            }
            None => None,
        };
        let task = Task {
            id: a.task_id.clone(),
            description: a.description,
            metadata: a.metadata,
            generation: a.generation,
            assigned_at: a.assigned_at,
            extra,
            resume_session,
        };
        self.slot = Slot::Active(Held {
            task,
            phase: Phase::Accepted,
            wakes: 0,
            group: None,
            asking: Default::default(),
            workspace: None,
        });
        // Persist, fsync, then ack: if the persist fails, nothing after it runs.
        out.push(self.persist(true));
        self.unconfirmed = Some(Unconfirmed::Accept);
        tracing::info!(task_id = %a.task_id, generation = a.generation, "task accepted");
        self.send(out, AgentFrame::TaskAccepted { task_id: a.task_id.clone() });
        // Whatever an earlier attempt of this task left (a wake, its files) is not this attempt's.
        out.push(Action::StopOrphans { task_id: a.task_id.clone(), recorded: None });
        out.push(Action::ClearResults { task_id: a.task_id.clone() });
        let target = match &self.slot {
            Slot::Active(h) => h.task.extra.get("routing_decision").and_then(|r| r.get("target_type")).cloned(),
            _ => None,
        };
        match target.as_ref().map(|t| t.as_str()) {
            None | Some(Some("wake")) if self.worktrees() => self.prepare_workspace(out),
            None | Some(Some("wake")) => self.start_wake(1, now, out),
            Some(other) => {
                let shown =
                    other.map(str::to_string).unwrap_or_else(|| target.map(|t| t.to_string()).unwrap_or_default());
                self.report_failure(format!("unsupported_routing_target: {}", clip(&shown, 200)), out)
            }
        }
    }

    /// Drops the held task (active or recovering).
    fn drop_held(&mut self, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.slot, Slot::Idle) {
            Slot::Active(h) | Slot::Recovering(h) => self.drop_task(h, out),
            Slot::Idle => {}
        }
    }

    /// `restart_sidecar`: exit so our supervisor restarts us, when that loses no work.
    fn on_restart_command(&mut self, reason: String, force: bool, out: &mut Vec<Action>) {
        if !self.restarts_us {
            tracing::warn!(reason = %clip(&reason, 200), "restart refused: no supervisor detected, and exiting would stop this agent");
            let why = "no supervisor detected (native, pm2 or systemd): exiting would stop the agent";
            let frame =
                AgentFrame::RestartOutcome { outcome: proto::RestartOutcome::Refused, reason: Some(why.into()) };
            return self.send(out, frame);
        }
        let phase = match &self.slot {
            Slot::Active(h) => Some(h.phase.clone()),
            _ => None,
        };
        match phase {
            // Nothing of the agent's runs, or only our own steps, all on record: at once.
            None | Some(Phase::Accepted | Phase::Preparing | Phase::Committing { .. } | Phase::Reporting { .. }) => {
                self.restart_now(reason, out)
            }
            Some(_) if force => {
                // Stop the agent's work and keep the task; after the restart `task_recovering`
                // settles it, and a continued task is woken again from the start.
                if let Some(h) = self.active() {
                    if let Some(pgid) = h.group.take() {
                        out.push(Action::StopGroup { pgid, task_id: h.task.id.clone() });
                    }
                    h.phase = Phase::Accepted;
                    h.wakes = 0;
                    let task_id = h.task.id.clone();
                    // Its files go with the work: a question asked is no longer asked.
                    self.withdraw_question(out);
                    out.push(Action::ClearResults { task_id });
                }
                out.push(self.persist(false));
                self.restart_now(reason, out);
            }
            Some(p) => {
                tracing::info!(reason = %clip(&reason, 200), phase = p.status(), "restart deferred until the task ends");
                self.pending_restart = Some(reason);
                let why =
                    format!("until its task ends (it is {}); --force restarts now and wakes it again", p.status());
                let frame = AgentFrame::RestartOutcome { outcome: proto::RestartOutcome::Deferred, reason: Some(why) };
                self.send(out, frame);
            }
        }
    }
}

fn frame_type(f: &HubFrame) -> &'static str {
    match f {
        HubFrame::TaskAssign(_) => "task_assign",
        HubFrame::TaskAck { .. } => "task_ack",
        HubFrame::TaskContinue { .. } => "task_continue",
        HubFrame::TaskReassign { .. } => "task_reassign",
        HubFrame::TaskCancelled { .. } => "task_cancelled",
        HubFrame::StateReportAck { .. } => "state_report_ack",
        HubFrame::TaskInput { .. } => "task_input",
        HubFrame::Error(_) => "error",
        _ => "other",
    }
}
