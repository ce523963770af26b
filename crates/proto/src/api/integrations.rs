//! The integration queue: a finished task's change on its way to its target branch (rebased or
//! merged, checked, pushed by `agentcom integrate`), what the task shows of it, what the
//! integrator reports, and a person's review.

use super::*;

/// Where a task's change stands on its way to the target branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationStatus {
    /// Waiting for the integrator.
    Queued,
    /// The integrator is rebasing (or merging) and checking it.
    Testing,
    /// On the target branch (`merged_sha`).
    Merged,
    /// It does not apply to the target: back to an agent with the conflicting paths.
    Conflict,
    /// The check failed on it: back to an agent with the check's output.
    CheckFailed,
    /// Waiting for a person: review asked for, or too many attempts.
    WaitingReview,
    /// A person rejected it: back to an agent with the reason.
    Rejected,
}

impl IntegrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationStatus::Queued => "queued",
            IntegrationStatus::Testing => "testing",
            IntegrationStatus::Merged => "merged",
            IntegrationStatus::Conflict => "conflict",
            IntegrationStatus::CheckFailed => "check_failed",
            IntegrationStatus::WaitingReview => "waiting_review",
            IntegrationStatus::Rejected => "rejected",
        }
    }
}

impl fmt::Display for IntegrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a task shows of its change's integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    pub status: IntegrationStatus,
    /// The branch it goes to.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_sha: Option<String>,
    /// Integration attempts so far (each after the agent finished the task).
    pub attempts: u32,
    /// The conflicting paths, the check's last lines, a reviewer's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// The integration task working on it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_task: Option<String>,
    /// The check passed on this commit; a person's approval merges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tested_sha: Option<String>,
    /// When it last changed (epoch ms).
    pub updated_at: u64,
}

/// What the integrator found, in its result (`result.integration`); read as hostile input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationReport {
    pub outcome: IntegrationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tested_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// The integrator's `max_integration_attempts` is reached: a person decides.
    #[serde(default)]
    pub give_up: bool,
    /// `after_merge_command` failed (the merge stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_merge_error: Option<String>,
}

/// Longest output tail kept.
pub const MAX_OUTPUT_TAIL: usize = 8_000;
/// Conflicting paths kept.
pub const MAX_CONFLICTS: usize = 100;

impl IntegrationReport {
    /// Reads `result.integration`, bounded; `None` when it is not one.
    pub fn from_result(result: &Value) -> Option<IntegrationReport> {
        let mut r: IntegrationReport = serde_json::from_value(result.get("integration")?.clone()).ok()?;
        let sha = |s: &Option<String>| {
            s.as_ref().is_none_or(|s| (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if !sha(&r.merged_sha) || !sha(&r.tested_sha) {
            return None;
        }
        r.conflicts.truncate(MAX_CONFLICTS);
        for c in &mut r.conflicts {
            *c = c.chars().take(crate::MAX_CHANGE_PATH).collect();
        }
        let tail = |s: &mut Option<String>| {
            if let Some(t) = s {
                let n = t.chars().count();
                *t = t.chars().skip(n.saturating_sub(MAX_OUTPUT_TAIL)).collect();
            }
        };
        tail(&mut r.output_tail);
        tail(&mut r.after_merge_error);
        Some(r)
    }
}

/// `POST /api/tasks/:task_id/approve`: a person approves the change waiting for review (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproveTask {
    #[serde(skip)]
    pub task_id: String,
}

impl Endpoint for ApproveTask {
    type Response = TaskIntegration;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/tasks/{}/approve", encode(&self.task_id))
    }
    fn body(&self) -> Option<Value> {
        Some(Value::Object(Map::new()))
    }
}

/// `POST /api/tasks/:task_id/reject`: a person sends the change back to an agent (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectTask {
    #[serde(skip)]
    pub task_id: String,
    pub reason: String,
}

impl RejectTask {
    pub fn from_json(task_id: &str, m: Map<String, Value>) -> Result<RejectTask, Vec<String>> {
        let mut f = super::fields::Fields::new(m);
        let reason = f.string("reason", true, crate::MAX_REASON).unwrap_or_default();
        f.done(RejectTask { task_id: task_id.to_string(), reason })
    }
}

impl Endpoint for RejectTask {
    type Response = TaskIntegration;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/tasks/{}/reject", encode(&self.task_id))
    }
    fn body(&self) -> Option<Value> {
        Some(json_of(self))
    }
}

fn json_of<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializes")
}

/// A task's integration after a review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskIntegration {
    pub task_id: String,
    pub integration: Integration,
}

/// `GET /api/integrations`: the integration queue, per target branch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListIntegrations {
    /// Only this target's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Endpoint for ListIntegrations {
    type Response = IntegrationList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        match &self.target {
            Some(t) => format!("/api/integrations?target={}", encode(t)),
            None => "/api/integrations".into(),
        }
    }
}

/// The changes on their way to each target, in the order they will be integrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationList {
    pub targets: Vec<IntegrationQueue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationQueue {
    pub target: String,
    pub changes: Vec<QueuedChange>,
}

/// One change waiting for (or in) integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedChange {
    /// The integration task.
    pub task_id: String,
    /// The task whose change it is.
    pub integrates: String,
    pub branch: String,
    pub head_sha: String,
    pub status: TaskStatus,
    pub attempt: u32,
    #[serde(default)]
    pub approved: bool,
}
