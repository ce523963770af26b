//! The v1 frames themselves: what an agent sends (`AgentFrame`), what the hub sends (`HubFrame`),
//! and the closed sets they carry.

use crate::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Process information an agent reports about itself (AgentCom's `pm2_info`, extended).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identify {
    pub agent_id: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm2_info: Option<ProcessInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_info: Option<ProcessInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ollama_url: Option<String>,
    /// The model provider account the agent uses (our extension): a limit on one agent of an
    /// account limits all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// Frames an agent (sidecar) sends to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    Identify(Box<Identify>),
    Ping,
    Status {
        status: String,
    },
    TaskAccepted {
        task_id: String,
    },
    TaskRejected {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    TaskProgress {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_event: Option<Value>,
    },
    WakeResult {
        task_id: String,
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    TaskComplete {
        task_id: String,
        generation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_used: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification_report: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification_history: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// What the attempt committed on its task's branch (our extension).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<Box<Change>>,
        /// The agent CLI's conversation, which a later attempt may resume (our extension).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    TaskFailed {
        task_id: String,
        generation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// What the attempt committed on its task's branch (our extension).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<Box<Change>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    /// The model provider stopped the attempt (a rate or usage limit; our extension): not a
    /// failure. The hub queues the task again for after the limit and gives the agent (and its
    /// account) nothing until then.
    TaskLimited {
        task_id: String,
        generation: u64,
        #[serde(default)]
        limit: Limit,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<Box<Change>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    /// What the attempt has cost so far, cumulative (our extension): the hub checks it against
    /// the task's caps and the agent's budget, and stops the attempt that crosses one.
    TaskUsage {
        task_id: String,
        generation: u64,
        usage: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    /// The agent asks a person something (our extension): from `<task_id>.needs-input`. A new
    /// `request_id` replaces an earlier question of the same task.
    NeedsInput {
        task_id: String,
        request_id: String,
        question: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
    },
    /// `<task_id>.input` holds the answer to `request_id`, durably (our extension).
    TaskInputAck {
        task_id: String,
        request_id: String,
    },
    /// The agent no longer asks `request_id` (our extension): its attempt was restarted before an
    /// answer came, or an answer came for a question it does not have. The hub closes the
    /// question, and an answer given to it is shown as undelivered. Sent again after every
    /// reconnect while the task is held (the hub treats a repeat as nothing new).
    NeedsInputClosed {
        task_id: String,
        request_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    TaskRecovering {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_status: Option<String>,
    },
    /// `task_id: null` is our extension: "I hold no task", so the hub can release a lease at once.
    StateReport {
        #[serde(default)]
        task_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assigned_at: Option<u64>,
    },
    AgentRestarting {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The answer to `restart_sidecar` when it is not "restarting now" (`agent_restarting`): the
    /// sidecar refuses (no supervisor would start it again) or waits for its task to end (our
    /// extension; a v1 hub answers it with an error and carries on).
    RestartOutcome {
        outcome: RestartOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ResourceReport(Map<String, Value>),
}

impl AgentFrame {
    pub fn type_name(&self) -> &'static str {
        match self {
            AgentFrame::Identify(_) => "identify",
            AgentFrame::Ping => "ping",
            AgentFrame::Status { .. } => "status",
            AgentFrame::TaskAccepted { .. } => "task_accepted",
            AgentFrame::TaskRejected { .. } => "task_rejected",
            AgentFrame::TaskProgress { .. } => "task_progress",
            AgentFrame::WakeResult { .. } => "wake_result",
            AgentFrame::TaskComplete { .. } => "task_complete",
            AgentFrame::TaskFailed { .. } => "task_failed",
            AgentFrame::TaskLimited { .. } => "task_limited",
            AgentFrame::TaskUsage { .. } => "task_usage",
            AgentFrame::NeedsInput { .. } => "needs_input",
            AgentFrame::TaskInputAck { .. } => "task_input_ack",
            AgentFrame::NeedsInputClosed { .. } => "needs_input_closed",
            AgentFrame::TaskRecovering { .. } => "task_recovering",
            AgentFrame::StateReport { .. } => "state_report",
            AgentFrame::AgentRestarting { .. } => "agent_restarting",
            AgentFrame::RestartOutcome { .. } => "restart_outcome",
            AgentFrame::ResourceReport(_) => "resource_report",
        }
    }

    /// Serializes the frame with `protocol_version`, as a v1 sidecar does on every frame.
    pub fn to_text(&self) -> String {
        let mut v = serde_json::to_value(self).expect("frames always serialize");
        if let Value::Object(m) = &mut v {
            m.insert("protocol_version".into(), PROTOCOL_VERSION.into());
        }
        v.to_string()
    }
}

/// What became of a restart command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartOutcome {
    /// Sent to the agent; no answer yet.
    Commanded,
    /// The sidecar restarts now (`agent_restarting`).
    Accepted,
    /// It restarts once its task has ended.
    Deferred,
    /// It does not restart (and says why).
    Refused,
}

impl RestartOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartOutcome::Commanded => "commanded",
            RestartOutcome::Accepted => "accepted",
            RestartOutcome::Deferred => "deferred",
            RestartOutcome::Refused => "refused",
        }
    }
}

/// The task as pushed to an agent in `task_assign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssign {
    pub task_id: String,
    pub description: String,
    #[serde(default)]
    pub metadata: Value,
    pub generation: u64,
    pub assigned_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The agent CLI's conversation of an earlier attempt on this agent, to resume (our
    /// extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<String>,
    /// Optional v1 fields (repo, branch, file_hints, routing_decision, ...), passed through as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Frames the hub sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubFrame {
    Identified {
        agent_id: String,
    },
    Pong {
        timestamp: u64,
    },
    StatusUpdated {
        status: String,
    },
    TaskAssign(TaskAssign),
    TaskAck {
        task_id: String,
        status: AckStatus,
    },
    TaskContinue {
        task_id: String,
        generation: u64,
    },
    TaskReassign {
        task_id: String,
    },
    StateReportAck {
        #[serde(default)]
        task_id: Option<String>,
        action: ReportAction,
    },
    TaskCancelled {
        task_id: String,
        timestamp: u64,
        /// Why, when the hub stopped the attempt itself (`budget_exceeded: ...`; our extension).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A person's answer to the agent's `needs_input` (our extension); re-sent until acked.
    TaskInput {
        task_id: String,
        request_id: String,
        answer: String,
    },
    RestartSidecar {
        reason: String,
        #[serde(default)]
        force: bool,
    },
    Error(ErrorFrame),
}

/// What a `task_ack` confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// `task_accepted` was recorded.
    Accepted,
    /// `task_rejected` was recorded; the task is queued again.
    Requeued,
    /// `task_complete` was recorded.
    Complete,
    /// `task_failed` was recorded; the task will be retried.
    Retried,
    /// `task_failed` was recorded; the task is in the dead letter queue.
    DeadLetter,
}

/// The hub's answer to a `state_report` about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportAction {
    /// The agent holds the task: go on.
    Continue,
    /// The agent does not hold it (any more): drop it.
    Abort,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Requeued => "requeued",
            AckStatus::Complete => "complete",
            AckStatus::Retried => "retried",
            AckStatus::DeadLetter => "dead_letter",
        }
    }
}

impl std::fmt::Display for AckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameErrorCode {
    InvalidJson,
    ValidationFailed,
    NotIdentified,
    AlreadyIdentified,
    InvalidToken,
    TokenAgentMismatch,
    /// Identify refused for a while after too many protocol violations (`retry_after_ms`).
    IdentifyRefused,
    InvalidState,
    NotFound,
    StaleGeneration,
    StorageUnavailable,
    /// A code this side does not know (a newer peer).
    #[serde(other)]
    Unknown,
}

impl FrameErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameErrorCode::InvalidJson => "invalid_json",
            FrameErrorCode::ValidationFailed => "validation_failed",
            FrameErrorCode::NotIdentified => "not_identified",
            FrameErrorCode::AlreadyIdentified => "already_identified",
            FrameErrorCode::InvalidToken => "invalid_token",
            FrameErrorCode::TokenAgentMismatch => "token_agent_mismatch",
            FrameErrorCode::IdentifyRefused => "identify_refused",
            FrameErrorCode::InvalidState => "invalid_state",
            FrameErrorCode::NotFound => "not_found",
            FrameErrorCode::StaleGeneration => "stale_generation",
            FrameErrorCode::StorageUnavailable => "storage_unavailable",
            FrameErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FrameErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub error: FrameErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame {
    pub fn new(error: FrameErrorCode) -> Self {
        ErrorFrame { error, message_type: None, task_id: None, errors: Vec::new(), message: None, retry_after_ms: None }
    }
    pub fn task(mut self, task_id: &str) -> Self {
        self.task_id = Some(task_id.to_string());
        self
    }
    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }
}

impl HubFrame {
    pub fn error(e: ErrorFrame) -> Self {
        HubFrame::Error(e)
    }
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("frames always serialize")
    }
}
