//! Hub domain types. A task is stored in three parts: the [`TaskHead`] (everything that changes
//! as it moves: status, generation, holder, counters), kept in the core's memory while the task is
//! open; the [`Payload`] (description, metadata, v1 fields), written once and read from the store
//! when the task is handed out; and the [`Outcome`] (result, report), written when it completes.
//! So a queue of a million tasks costs the core a few hundred bytes each, whatever their size.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use proto::api::{AgentStatus, Answer, Priority, Question, TaskStatus, Transition};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHead {
    pub task_id: String,
    /// Submission order; first in, first out within a lane.
    pub seq: i64,
    pub priority: Priority,
    pub status: TaskStatus,
    pub generation: u64,
    #[serde(default)]
    pub needed_capabilities: Vec<String>,
    #[serde(default)]
    pub assign_to: Option<String>,
    pub max_retries: u32,
    #[serde(default)]
    pub assigned_to: Option<String>,
    #[serde(default)]
    pub assigned_at: Option<u64>,
    /// How many times the task was handed to an agent.
    #[serde(default)]
    pub attempts: u32,
    /// Counted failures (`task_failed`); above `max_retries` the task is dead-lettered.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub retry_at: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// `admin`, or the agent whose token submitted the task (it may cancel and retry it).
    pub submitted_by: String,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub completed_at: Option<u64>,
    /// The holder's open question to a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_input: Option<Question>,
    /// A person's answer, until the holder's sidecar confirms it wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// What the latest attempt that reported one committed on the task's branch (its patch is
    /// kept apart, see [`crate::store::Mutation::PutPatch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<proto::Change>,
    /// The task that created this one (`core/deps.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Tasks that must complete before this one leaves `blocked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// 0 for a task submitted without a parent, its parent's depth + 1 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// The tasks this one created, oldest first (at most `max_children_per_task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// Caps over all attempts (`budget_exceeded` past either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Attempts a provider's limit stopped; they do not count as failures.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limited_attempts: u32,
    /// Queued, but not handed out before this instant (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// The agent holding the task's session, preferred until `prefer_until` (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_until: Option<u64>,
    /// Each attempt's agent CLI session, oldest first (the newest [`SESSIONS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<proto::api::Session>,
    /// What finished attempts reported they cost, for the caps (the live attempt's is apart).
    #[serde(default, skip_serializing_if = "is_nothing")]
    pub spent_usd: f64,
    #[serde(default, skip_serializing_if = "is_none_spent")]
    pub spent_tokens: u64,
    /// One task of a key at a time, in submission order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_key: Option<String>,
    /// Its change waits for a person's approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    /// Its change's way to the target branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<proto::api::Integration>,
    /// An integration task: the task it integrates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrates: Option<String>,
    /// An integration task: the change it integrates, for the queue's listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrating: Option<IntegratingChange>,
}

/// The change an integration task integrates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegratingChange {
    pub branch: String,
    pub head_sha: String,
    pub attempt: u32,
    #[serde(default)]
    pub approved: bool,
}

fn is_nothing(c: &f64) -> bool {
    *c == 0.0
}

fn is_none_spent(n: &u64) -> bool {
    *n == 0
}

/// Sessions a task remembers.
pub const SESSIONS_KEPT: usize = 20;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What the submitter asked for; never changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub description: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Optional v1 fields passed through to `task_assign` (repo, branch, routing_decision, ...).
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// What the agent reported when it completed the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(default)]
    pub result: Option<Value>,
    /// Other fields of `task_complete` (tokens_used, verification_report, ...).
    #[serde(default)]
    pub report: Map<String, Value>,
}

/// A whole task as read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    pub head: TaskHead,
    pub payload: Payload,
    pub outcome: Option<Outcome>,
    /// The latest `task_progress` of the current generation.
    pub progress: Option<Value>,
    /// Every attempt's reported usage, added up.
    pub usage: Option<proto::Usage>,
}

impl StoredTask {
    /// The task as the API shows it.
    pub fn view(self) -> proto::api::TaskView {
        let (h, p, o) = (self.head, self.payload, self.outcome.unwrap_or_default());
        proto::api::TaskView {
            task_id: h.task_id,
            description: p.description,
            priority: h.priority,
            metadata: Value::Object(p.metadata),
            needed_capabilities: h.needed_capabilities,
            assign_to: h.assign_to,
            max_retries: h.max_retries,
            extra: p.extra,
            status: h.status,
            generation: h.generation,
            assigned_to: h.assigned_to,
            assigned_at: h.assigned_at,
            attempts: h.attempts,
            failures: h.failures,
            retry_at: h.retry_at,
            result: o.result,
            report: o.report,
            last_error: h.last_error,
            progress: self.progress,
            submitted_by: h.submitted_by,
            created_at: h.created_at,
            updated_at: h.updated_at,
            completed_at: h.completed_at,
            needs_input: h.needs_input,
            answer: h.answer,
            usage: self.usage,
            change: h.change,
            max_cost_usd: h.max_cost_usd,
            max_tokens: h.max_tokens,
            limited_attempts: h.limited_attempts,
            not_before: h.not_before,
            prefer_agent: h.prefer_agent,
            sessions: h.sessions,
            serial_key: h.serial_key,
            review: h.review,
            integration: h.integration,
            integrates: h.integrates,
            parent_task_id: h.parent_task_id,
            depends_on: h.depends_on,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex. The token itself is never stored.
    pub hash: String,
    pub agent_id: String,
    pub created_at: u64,
}

/// What the hub remembers of an agent across its own restarts: who it is and when it was
/// last seen, so `GET /api/agents` lists it (offline) before it reconnects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub client_type: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub process_info: Option<proto::ProcessInfo>,
    #[serde(default)]
    pub connected_at: Option<u64>,
    pub last_seen: u64,
    #[serde(default)]
    pub restarting: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A provider's limit: no task before this instant (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_reason: Option<String>,
    /// Limits in a row without a finished task between (the step of `limit_backoff_ms`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit_level: u32,
}

impl TaskHead {
    /// A task head for tests (submitted by admin, normal priority), every other field at its
    /// plain value: one fixture for the store's, the dashboard's and the store conformance
    /// suite's tests, so a new field is added in one place.
    #[doc(hidden)]
    pub fn for_test(id: &str, seq: i64, status: TaskStatus) -> TaskHead {
        TaskHead {
            task_id: id.into(),
            seq,
            priority: Priority::Normal,
            status,
            generation: 0,
            needed_capabilities: vec![],
            assign_to: None,
            max_retries: 3,
            assigned_to: None,
            assigned_at: None,
            attempts: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
            submitted_by: "admin".into(),
            created_at: 1,
            updated_at: 1,
            completed_at: None,
            needs_input: None,
            answer: None,
            change: None,
            max_cost_usd: None,
            max_tokens: None,
            limited_attempts: 0,
            not_before: None,
            prefer_agent: None,
            prefer_until: None,
            sessions: Vec::new(),
            spent_usd: 0.0,
            spent_tokens: 0,
            serial_key: None,
            review: false,
            integration: None,
            integrates: None,
            integrating: None,
            parent_task_id: None,
            depends_on: vec![],
            depth: 0,
            children: vec![],
        }
    }
}
