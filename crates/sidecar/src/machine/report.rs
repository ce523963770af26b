//! The end of a task: its report (persisted, then sent, re-sent until the hub acknowledges
//! it), its files removed only after that, or the task dropped (cancelled, reassigned,
//! aborted); then a restart the hub asked for, if one waits.

use super::{clip, Action, Machine, Slot};
use crate::files::ProgressCursor;
use crate::task::{Held, Phase, Report};
use proto::AgentFrame;

impl Machine {
    pub(super) fn report_failure(&mut self, reason: String, out: &mut Vec<Action>) {
        if let Some(h) = self.active() {
            tracing::warn!(task_id = %h.task.id, reason = %reason, "task failed");
        }
        let (usage, session_id) = (self.usage.clone(), self.session.clone());
        let reason = clip(&reason, proto::MAX_REASON);
        self.report(Report::Failed { reason, keep_result: false, usage, change: None, session_id }, out);
    }

    /// The attempt is over: what the agent left is committed first (worktree mode), then the
    /// report goes out.
    pub(super) fn report(&mut self, report: Report, out: &mut Vec<Action>) {
        let report = if self.worktrees() { self.commit_then_report(report, out) } else { Some(report) };
        if let Some(report) = report {
            self.send_report(report, out);
        }
    }

    /// Persists the report with the task, then sends it; it is re-sent until the hub acks.
    pub(super) fn send_report(&mut self, report: Report, out: &mut Vec<Action>) {
        let Some(h) = self.active() else { return };
        let frame = report.frame(&h.task);
        tracing::info!(task_id = %h.task.id, frame = frame.type_name(), "reporting to the hub");
        self.set_phase(Phase::Reporting { report, resend_at: None }, out);
        self.send(out, frame);
    }

    /// The hub has the report: remove the task's files (the result only now) and forget it.
    pub(super) fn finish(&mut self, out: &mut Vec<Action>) {
        let Slot::Active(h) = std::mem::replace(&mut self.slot, Slot::Idle) else { return };
        let failed = matches!(&h.phase, Phase::Reporting { report, .. } if report.failed());
        self.release_workspace(&h.task.id, h.workspace.as_ref(), failed, out);
        out.push(self.remove_files(&h));
        out.push(self.persist(false));
        self.remember_answers(&h);
        self.after_task(out);
    }

    /// Cancelled, reassigned or aborted: stop its wake (the recorded group, and any found by
    /// environment: one spawned just before a crash was never recorded), remove its files, forget it.
    pub(super) fn drop_task(&mut self, h: Held, out: &mut Vec<Action>) {
        out.push(Action::StopOrphans { task_id: h.task.id.clone(), recorded: h.group });
        // A person may want to look at the work of an attempt cut short; a finished one's is
        // on its branch already.
        let finished = matches!(&h.phase, Phase::Reporting { report, .. } if !report.failed());
        self.release_workspace(&h.task.id, h.workspace.as_ref(), !finished, out);
        out.push(self.remove_files(&h));
        self.slot = Slot::Idle;
        out.push(self.persist(false));
        self.remember_answers(&h);
        self.after_task(out);
    }

    pub(super) fn remove_files(&self, h: &Held) -> Action {
        let keep = matches!(&h.phase, Phase::Reporting { report: Report::Failed { keep_result: true, .. }, .. });
        Action::RemoveFiles { task_id: h.task.id.clone(), keep_result_as: keep.then(|| self.kept_result_path(&h.task)) }
    }

    pub(super) fn after_task(&mut self, out: &mut Vec<Action>) {
        self.progress = ProgressCursor::default();
        self.warned.clear();
        self.bad_question = None;
        self.redeliver = None;
        self.usage = None;
        self.usage_sent = None;
        self.session = None;
        if let Some(reason) = self.pending_restart.take() {
            self.restart_now(reason, out);
        }
    }

    pub(super) fn restart_now(&mut self, reason: String, out: &mut Vec<Action>) {
        tracing::info!(reason = %reason, "restarting on the hub's command");
        self.send(out, AgentFrame::AgentRestarting { reason: Some(clip(&reason, proto::MAX_REASON)) });
        out.push(Action::Exit);
    }
}
