//! The integration queue: when a task completes with a change, an integration task (for the
//! agents with the capability `integrate:<target>`, i.e. `agentcom integrate`) is queued under
//! the serial key `integrate:<target>`, so one change per target is integrated at a time, in the
//! order they finished. Its report moves the original task's `integration`: merged; waiting for
//! a person; or, on a conflict or a red check, the original task goes back to an agent with the
//! feedback. A person approves or rejects a change waiting for review.

use super::Core;
use crate::auth::Role;
use crate::authz;
use crate::clock::Clock;
use crate::events::Audience;
use crate::model::TaskStatus;
use crate::store::{Mutation, Store};
use proto::api::{
    ApiError, ErrorCode, EventKind, Integration, IntegrationList, IntegrationQueue, IntegrationReport,
    IntegrationStatus, QueuedChange, SubmitTask, TaskIntegration,
};
use serde_json::{json, Map, Value};

/// The branch a change goes to when the task does not say.
pub const DEFAULT_TARGET: &str = "main";

fn serial_key(target: &str) -> String {
    format!("integrate:{target}")
}

impl<S: Store, C: Clock> Core<S, C> {
    /// A task completed with `change`: its integration task, and the `integration` the task
    /// shows (to be set with its completion). `None` when integration is off or the task is an
    /// integration task itself.
    pub(super) fn queue_integration(
        &mut self,
        task_id: &str,
        change: &proto::Change,
        approved: bool,
    ) -> Option<Integration> {
        if !self.limits.integrate_changes {
            return None;
        }
        let o = self.tasks.get(task_id)?;
        if o.head.integrates.is_some() {
            return None;
        }
        let target = change.base_branch.clone().unwrap_or_else(|| DEFAULT_TARGET.to_string());
        let previous = o.head.integration.as_ref();
        // A new change (the agent worked again) is a new attempt; an approval is the same one.
        let attempts = match (previous, approved) {
            (Some(p), true) => p.attempts,
            (Some(p), false) => p.attempts + 1,
            (None, _) => 1,
        };
        let review = o.head.review;
        let mut extra = Map::new();
        for (k, v) in [
            ("kind", json!("integrate")),
            ("integrates", json!(task_id)),
            ("branch", json!(change.branch)),
            ("head_sha", json!(change.head_sha)),
            ("base_sha", json!(change.base_sha)),
            ("target", json!(target)),
            ("attempt", json!(attempts)),
            ("approved", json!(approved)),
            ("review", json!(review)),
        ] {
            extra.insert(k.into(), v);
        }
        let submit = SubmitTask {
            needed_capabilities: vec![format!("{}:{target}", proto::api::INTEGRATE_CAPABILITY)],
            serial_key: Some(serial_key(&target)),
            extra,
            ..SubmitTask::new(format!("Integrate {task_id} ({}) into {target}", change.branch))
        };
        let submitted = match self.submit(submit, &Role::Admin) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(task_id, error = %e.message.clone().unwrap_or_default(), "cannot queue the change's integration");
                return None;
            }
        };
        if let Some(i) = self.tasks.get_mut(&submitted.task_id) {
            i.head.integrates = Some(task_id.to_string());
            i.head.integrating = Some(crate::model::IntegratingChange {
                branch: change.branch.clone(),
                head_sha: change.head_sha.clone(),
                attempt: attempts,
                approved,
            });
            self.pending.push(Mutation::PutHead(Box::new(i.head.clone())));
        }
        Some(Integration {
            status: IntegrationStatus::Queued,
            target,
            merged_sha: None,
            attempts,
            output_tail: None,
            conflicts: Vec::new(),
            integration_task: Some(submitted.task_id),
            tested_sha: None,
            updated_at: self.now.wall_ms,
        })
    }

    /// Changes the integration of `task_id` (whatever its status), saved with the batch and told
    /// to event readers; returns it.
    fn update_integration(&mut self, task_id: &str, f: impl FnOnce(&mut Integration)) -> Option<Integration> {
        let head = self.reopen(task_id).ok().flatten()?;
        let o = self.tasks.get_mut(task_id)?;
        let Some(i) = o.head.integration.as_mut() else {
            self.drop_if_terminal(task_id);
            return None;
        };
        f(i);
        i.updated_at = self.now.wall_ms;
        let shown = i.clone();
        o.head.updated_at = self.now.wall_ms;
        self.pending.push(Mutation::PutHead(Box::new(o.head.clone())));
        self.drop_if_terminal(task_id);
        let audience = Audience::of([Some(head.submitted_by.clone()), head.assigned_to.clone()]);
        self.event(EventKind::Integration { task_id: task_id.into(), integration: shown.clone() }, audience);
        Some(shown)
    }

    /// An integration task was handed to an integrator: its change is being tested.
    pub(super) fn integration_started(&mut self, integration_task: &str) {
        let Some(original) = self.tasks.get(integration_task).and_then(|o| o.head.integrates.clone()) else { return };
        let me = integration_task.to_string();
        self.update_integration(&original, |i| {
            i.status = IntegrationStatus::Testing;
            i.integration_task = Some(me);
        });
    }

    /// The integrator's report on `original`'s change (its integration task completed, or
    /// failed for good with `failure`).
    pub(super) fn integration_ended(&mut self, original: &str, result: Option<&Value>, failure: Option<&str>) {
        let report = result.and_then(IntegrationReport::from_result);
        let report = match (report, failure) {
            (Some(r), _) => r,
            (None, why) => IntegrationReport {
                outcome: IntegrationStatus::WaitingReview,
                merged_sha: None,
                tested_sha: None,
                conflicts: Vec::new(),
                output_tail: Some(match why {
                    Some(w) => format!("the integration could not run: {w}"),
                    None => "the integrator's result has no integration report".into(),
                }),
                give_up: true,
                after_merge_error: None,
            },
        };
        let back_to_agent =
            matches!(report.outcome, IntegrationStatus::Conflict | IntegrationStatus::CheckFailed) && !report.give_up;
        let outcome = match report.outcome {
            IntegrationStatus::Conflict | IntegrationStatus::CheckFailed if report.give_up => {
                IntegrationStatus::WaitingReview
            }
            o => o,
        };
        let shown = self.update_integration(original, |i| {
            i.status = outcome;
            i.merged_sha = report.merged_sha.clone().or(i.merged_sha.take());
            i.tested_sha = report.tested_sha.clone();
            i.conflicts = report.conflicts.clone();
            i.output_tail = match (&report.output_tail, &report.after_merge_error) {
                (_, Some(e)) => Some(format!("merged; after_merge_command failed: {e}")),
                (t, None) => t.clone(),
            };
            i.integration_task = None;
        });
        tracing::info!(task_id = original, outcome = %outcome, "integration report");
        if back_to_agent && shown.is_some() {
            let why = match outcome {
                IntegrationStatus::Conflict => format!("integration conflict on {}", report.conflicts.join(", ")),
                _ => "the integration check failed".to_string(),
            };
            self.back_to_agent(original, why);
        }
    }

    /// The original task goes to an agent again, continuing from its branch, with the feedback
    /// in its integration (sent with the task).
    fn back_to_agent(&mut self, original: &str, why: String) {
        let Ok(Some(head)) = self.reopen(original) else { return };
        if head.status != TaskStatus::Completed {
            self.drop_if_terminal(original);
            return;
        }
        self.transition(original, TaskStatus::Queued, format!("{why}; back to an agent with the feedback"), |t| {
            t.generation += 1;
            t.assigned_to = None;
            t.assigned_at = None;
            t.completed_at = None;
        });
    }

    /// What an agent is told with a task whose change came back from integration.
    pub(super) fn integration_feedback(i: &Integration) -> Option<Value> {
        matches!(i.status, IntegrationStatus::Conflict | IntegrationStatus::CheckFailed | IntegrationStatus::Rejected)
            .then(|| {
                json!({
                    "status": i.status, "target": i.target, "attempts": i.attempts,
                    "conflicts": i.conflicts, "output_tail": i.output_tail,
                })
            })
    }

    /// `POST /api/tasks/:id/approve`: the change waiting for review goes to the integrator to be
    /// merged (tested again against the target as it is then).
    pub(super) fn approve(&mut self, task_id: &str, role: &Role) -> Result<TaskIntegration, ApiError> {
        authz::admin_only(role, "approving changes")?;
        let head = self.waiting_review(task_id)?;
        let Some(change) = head.change.clone() else {
            self.drop_if_terminal(task_id);
            return Err(ApiError::new(ErrorCode::InvalidState).msg(format!("task {task_id} has no change")));
        };
        let Some(next) = self.queue_integration(task_id, &change, true) else {
            self.drop_if_terminal(task_id);
            return Err(
                ApiError::new(ErrorCode::InvalidState).msg("integration is off on this hub (integrate_changes)")
            );
        };
        let by = role.name().to_string();
        let integration = self
            .update_integration(task_id, |i| {
                *i = Integration { output_tail: Some(format!("approved by {by}")), ..next };
            })
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidState).msg("the task has no integration"))?;
        Ok(TaskIntegration { task_id: task_id.to_string(), integration })
    }

    /// `POST /api/tasks/:id/reject`: the change goes back to an agent, the reason as feedback.
    pub(super) fn reject(&mut self, task_id: &str, reason: &str, role: &Role) -> Result<TaskIntegration, ApiError> {
        authz::admin_only(role, "rejecting changes")?;
        self.waiting_review(task_id)?;
        let by = role.name().to_string();
        let integration = self
            .update_integration(task_id, |i| {
                i.status = IntegrationStatus::Rejected;
                i.output_tail = Some(format!("rejected by {by}: {reason}"));
            })
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidState).msg("the task has no integration"))?;
        self.back_to_agent(task_id, format!("change rejected by {by}: {reason}"));
        Ok(TaskIntegration { task_id: task_id.to_string(), integration })
    }

    fn waiting_review(&mut self, task_id: &str) -> Result<crate::model::TaskHead, ApiError> {
        let head = self.reopen(task_id).map_err(super::tasks::store_err)?;
        let Some(head) = head else {
            return Err(ApiError::new(ErrorCode::NotFound).msg(format!("no task {task_id}")));
        };
        match head.integration.as_ref().map(|i| i.status) {
            Some(IntegrationStatus::WaitingReview) => Ok(head),
            other => {
                self.drop_if_terminal(task_id);
                let is = other.map(|s| s.to_string()).unwrap_or_else(|| "not integrated".into());
                Err(ApiError::new(ErrorCode::InvalidState).msg(format!(
                    "task {task_id}'s change is {is}; only a change waiting_review is approved or rejected"
                )))
            }
        }
    }

    /// `GET /api/integrations`: the open integration tasks per target, in the order they go.
    pub(super) fn integrations(&self, target: Option<&str>) -> IntegrationList {
        let mut by_target: std::collections::BTreeMap<String, Vec<(i64, QueuedChange)>> = Default::default();
        for o in self.tasks.values() {
            let h = &o.head;
            let (Some(original), Some(key), Some(c)) = (&h.integrates, &h.serial_key, &h.integrating) else { continue };
            let t = key.strip_prefix("integrate:").unwrap_or(key).to_string();
            if target.is_some_and(|want| want != t) {
                continue;
            }
            let change = QueuedChange {
                task_id: h.task_id.clone(),
                integrates: original.clone(),
                branch: c.branch.clone(),
                head_sha: c.head_sha.clone(),
                status: h.status,
                attempt: c.attempt,
                approved: c.approved,
            };
            by_target.entry(t).or_default().push((h.seq, change));
        }
        let targets = by_target
            .into_iter()
            .map(|(target, mut changes)| {
                changes.sort_by_key(|(seq, _)| *seq);
                IntegrationQueue { target, changes: changes.into_iter().map(|(_, c)| c).collect() }
            })
            .collect();
        IntegrationList { targets }
    }
}
