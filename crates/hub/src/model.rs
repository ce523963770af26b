//! Hub domain types: tasks, their statuses and priorities, transitions and tokens.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Urgent,
    High,
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Urgent, Priority::High, Priority::Normal, Priority::Low];
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?} (expected urgent, high, normal or low)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Assigned,
    /// Accepted by the agent (`task_accepted`).
    Working,
    Completed,
    /// Failed, waiting for its backoff before it is queued again.
    WaitingRetry,
    DeadLetter,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::Working,
        TaskStatus::Completed,
        TaskStatus::WaitingRetry,
        TaskStatus::DeadLetter,
        TaskStatus::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Working => "working",
            TaskStatus::Completed => "completed",
            TaskStatus::WaitingRetry => "waiting_retry",
            TaskStatus::DeadLetter => "dead_letter",
            TaskStatus::Cancelled => "cancelled",
        }
    }
    /// Terminal tasks leave the hub's memory; they live only in the store.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::DeadLetter | TaskStatus::Cancelled)
    }
    /// Held by an agent.
    pub fn is_held(self) -> bool {
        matches!(self, TaskStatus::Assigned | TaskStatus::Working)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = TaskStatus::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown status {s:?} (expected one of {})", all.join(", "))
        })
    }
}

/// A task as stored. Serialized whole into the store's `body` column and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    /// Submission order; first in, first out within a lane.
    pub seq: i64,
    pub description: String,
    pub priority: Priority,
    pub metadata: Value,
    pub needed_capabilities: Vec<String>,
    pub assign_to: Option<String>,
    pub max_retries: u32,
    /// Optional v1 fields passed through to `task_assign` (repo, branch, routing_decision, ...).
    pub extra: Map<String, Value>,
    pub status: TaskStatus,
    pub generation: u64,
    pub assigned_to: Option<String>,
    pub assigned_at: Option<u64>,
    /// How many times the task was handed to an agent.
    pub attempts: u32,
    /// Counted failures (`task_failed`); above `max_retries` the task is dead-lettered.
    pub failures: u32,
    pub retry_at: Option<u64>,
    pub result: Option<Value>,
    /// Other fields of `task_complete` (tokens_used, verification_report, ...).
    pub report: Map<String, Value>,
    pub last_error: Option<String>,
    /// The agent's last `task_progress`; saved with the task's next transition.
    #[serde(default)]
    pub progress: Option<Value>,
    pub submitted_by: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub completed_at: Option<u64>,
}

/// One status change in a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: u64,
    pub from: Option<TaskStatus>,
    pub to: TaskStatus,
    pub reason: String,
    pub agent_id: Option<String>,
    pub generation: u64,
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
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
