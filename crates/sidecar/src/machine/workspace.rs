//! The task's worktree around its wake (worktree mode): made before the first wake, what the
//! agent left committed before the report goes out, released once the hub has the report.
//! Each step is an action the executor carries out and answers as an event; the phase that
//! waits for it (`Preparing`, `Committing`) is on record first, so a crash in any step runs it
//! again on recovery, and each step is idempotent.

use super::{clip, Action, Machine, Now};
use crate::task::{Phase, Report};
use crate::workspace::{Mode, Workspace};
use proto::Change;

impl Machine {
    pub(super) fn worktrees(&self) -> bool {
        matches!(self.cfg.workspace, Mode::Worktree(_))
    }

    /// The first thing an accepted task does in worktree mode: its worktree.
    pub(super) fn prepare_workspace(&mut self, out: &mut Vec<Action>) {
        self.set_phase(Phase::Preparing, out);
        let Some(h) = self.active() else { return };
        let from_branch = h.task.extra.get("branch").and_then(|b| b.as_str()).map(str::to_string);
        let (task_id, previous) = (h.task.id.clone(), h.workspace.clone());
        let vars =
            vec![("AGENTCOM_TASK_ID", task_id.clone()), ("AGENTCOM_TASK_DESCRIPTION", h.task.description.clone())];
        out.push(Action::PrepareWorkspace { task_id, from_branch, previous, vars });
    }

    pub(super) fn on_workspace_ready(&mut self, task_id: &str, workspace: Workspace, now: Now, out: &mut Vec<Action>) {
        let Some(h) = self.active().filter(|h| h.task.id == task_id && h.phase == Phase::Preparing) else { return };
        tracing::info!(task_id, path = %workspace.path.display(), branch = %workspace.branch, base = %workspace.base_sha, "worktree ready");
        h.workspace = Some(workspace);
        self.start_wake(1, now, out);
    }

    pub(super) fn on_workspace_failed(&mut self, task_id: &str, reason: &str, out: &mut Vec<Action>) {
        if !self.active().is_some_and(|h| h.task.id == task_id && h.phase == Phase::Preparing) {
            return;
        }
        self.report_failure(format!("worktree_setup_failed: {reason}"), out);
    }

    /// The report waits for the commit of what the agent left (worktree mode with a worktree).
    pub(super) fn commit_then_report(&mut self, report: Report, out: &mut Vec<Action>) -> Option<Report> {
        let h = self.active()?;
        let Some(workspace) = h.workspace.clone() else { return Some(report) };
        let first = h.task.description.lines().find(|l| !l.trim().is_empty()).unwrap_or("agentcom task");
        let message = format!("{}\n\nagentcom-task: {}", clip(first.trim(), 200), h.task.id);
        let (task_id, generation) = (h.task.id.clone(), h.task.generation);
        self.set_phase(Phase::Committing { report }, out);
        out.push(Action::CommitWorkspace { task_id, workspace, message, generation });
        None
    }

    pub(super) fn on_committed(&mut self, task_id: &str, change: Option<Change>, out: &mut Vec<Action>) {
        let Some(Phase::Committing { report }) =
            self.active().filter(|h| h.task.id == task_id).map(|h| h.phase.clone())
        else {
            return;
        };
        self.send_report(report.with_change(change), out);
    }

    pub(super) fn on_commit_failed(&mut self, task_id: &str, reason: &str, out: &mut Vec<Action>) {
        let Some(Phase::Committing { report }) =
            self.active().filter(|h| h.task.id == task_id).map(|h| h.phase.clone())
        else {
            return;
        };
        tracing::error!(task_id, reason, "cannot commit what the agent left; the worktree is kept as it is");
        let (usage, session_id) = (report.usage(), report.session_id());
        let reason = clip(&format!("workspace_commit_failed: {reason}"), proto::MAX_REASON);
        self.send_report(Report::Failed { reason, keep_result: false, usage, change: None, session_id }, out);
    }

    /// The worktree of a task that leaves: removed once its work is on the branch, kept a while
    /// when the attempt failed or the task was taken away (its work is still there).
    pub(super) fn release_workspace(
        &self,
        task_id: &str,
        workspace: Option<&Workspace>,
        keep: bool,
        out: &mut Vec<Action>,
    ) {
        if workspace.is_some() {
            out.push(Action::ReleaseWorkspace { task_id: task_id.to_string(), keep });
        }
    }
}
