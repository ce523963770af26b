//! AgentCom v1 wire types: the frames agents and the hub exchange, and their validation. No IO.
//!
//! Only types from this crate cross the wire. Parsing is two-step: a frame is first checked
//! against a per-type field schema (so errors name the field, as the v1 hub did with
//! `validation_failed`), then deserialized into a typed [`AgentFrame`]. Unknown fields are
//! allowed, because v1 sidecars send extras such as `protocol_version` on every frame.

pub mod api;
pub mod control;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const PROTOCOL_VERSION: u32 = 1;
/// A standby hub (several hubs on one PostgreSQL, one leader) closes an agent's socket with this
/// code; the close reason is the leader's WebSocket URL, or empty when no leader is known yet.
/// A sidecar moves to the named URL only if it is one of its configured `hub_url`s.
pub const CLOSE_NOT_LEADER: u16 = 4001;
/// Largest frame the hub accepts; bigger frames close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
pub const MAX_AGENT_ID: usize = 128;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_TOKEN: usize = 256;
pub const MAX_REASON: usize = 2_000;
/// Upper bound for short free-text fields the sheet does not name (status, name...).
pub const MAX_SHORT: usize = 256;
/// Longest task id either side accepts.
pub const MAX_TASK_ID: usize = 128;
/// A question an agent asks a person (`needs_input`), and the answer it gets (`task_input`).
pub const MAX_QUESTION: usize = 8_000;
pub const MAX_ANSWER: usize = 8_000;
/// Choices offered with a question, and the length of each.
pub const MAX_OPTIONS: usize = 20;
/// Most tokens one attempt may report in one count: far above any real session, and low enough
/// that sums over millions of attempts stay within the stores' 64-bit signed integers.
pub const MAX_USAGE_TOKENS: u64 = 10_000_000_000;
/// Most dollars one attempt may report.
pub const MAX_USAGE_COST_USD: f64 = 1_000_000.0;

/// Whether `id` is a task id both sides accept: 1 to [`MAX_TASK_ID`] ASCII letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit. A sidecar builds file names from task ids, so
/// an id can never be a path (`/`, `..`), a hidden file or carry control characters.
pub fn check_task_id(id: &str) -> Result<(), String> {
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.len() > MAX_TASK_ID || !first_ok || !chars_ok {
        return Err(format!(
            "task_id: must be 1 to {MAX_TASK_ID} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// What an attempt at a task cost (our extension of `task_complete` and `task_failed`). AgentCom
/// v1 sidecars send only `tokens_used`, which the hub reads as `total_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Usage {
    /// Input and output tokens, or the total when that is all there is.
    pub fn tokens(&self) -> u64 {
        match (self.input_tokens, self.output_tokens) {
            (None, None) => self.total_tokens.unwrap_or(0),
            (i, o) => i.unwrap_or(0).saturating_add(o.unwrap_or(0)),
        }
    }
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// Only the fields within the limits ([`MAX_USAGE_TOKENS`], [`MAX_USAGE_COST_USD`],
    /// [`MAX_SHORT`]): for usage read from places no schema checked (a result's own `usage`,
    /// v1's `tokens_used`).
    pub fn within_limits(self) -> Usage {
        let count = |n: Option<u64>| n.filter(|n| *n <= MAX_USAGE_TOKENS);
        Usage {
            input_tokens: count(self.input_tokens),
            output_tokens: count(self.output_tokens),
            total_tokens: count(self.total_tokens),
            cost_usd: self.cost_usd.filter(|c| (0.0..=MAX_USAGE_COST_USD).contains(c)),
            model: self.model.filter(|m| m.chars().count() <= MAX_SHORT),
        }
    }
}

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
            AgentFrame::NeedsInput { .. } => "needs_input",
            AgentFrame::TaskInputAck { .. } => "task_input_ack",
            AgentFrame::NeedsInputClosed { .. } => "needs_input_closed",
            AgentFrame::TaskRecovering { .. } => "task_recovering",
            AgentFrame::StateReport { .. } => "state_report",
            AgentFrame::AgentRestarting { .. } => "agent_restarting",
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

/// Why an incoming frame was refused. Each variant maps to one `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// Not JSON, or JSON that is not an object.
    Malformed(String),
    /// No `type`, or a `type` that is not a string.
    MissingType,
    UnknownType(String),
    Invalid {
        message_type: String,
        errors: Vec<String>,
    },
}

impl FrameError {
    pub fn to_frame(&self) -> HubFrame {
        let e = match self {
            FrameError::Malformed(m) => ErrorFrame::new(FrameErrorCode::InvalidJson).message(m.clone()),
            FrameError::MissingType => ErrorFrame {
                errors: vec!["type: required string".into()],
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
            FrameError::UnknownType(t) => ErrorFrame {
                message_type: Some(t.clone()),
                errors: vec![format!("type: unknown message type {t:?}")],
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
            FrameError::Invalid { message_type, errors } => ErrorFrame {
                message_type: Some(message_type.clone()),
                errors: errors.clone(),
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
        };
        HubFrame::Error(e)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str(usize),
    UInt,
    Num,
    Obj,
    StrArray(usize),
    /// A task id ([`check_task_id`]).
    TaskId,
    /// A task id or null.
    OptTaskId,
    /// A [`Usage`] object: every field optional, each of its type.
    UsageObj,
    Any,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

// Macros rather than const fns: struct literals are promoted to `'static`, calls are not.
macro_rules! req {
    ($name:literal, $kind:expr) => {
        Field { name: $name, kind: $kind, required: true }
    };
}
macro_rules! opt {
    ($name:literal, $kind:expr) => {
        Field { name: $name, kind: $kind, required: false }
    };
}

const ID: Kind = Kind::TaskId;
const REASON: Kind = Kind::Str(MAX_REASON);

fn schema(message_type: &str) -> Option<&'static [Field]> {
    use Kind::*;
    Some(match message_type {
        "identify" => &[
            req!("agent_id", Str(MAX_AGENT_ID)),
            req!("token", Str(MAX_TOKEN)),
            opt!("name", Str(MAX_SHORT)),
            opt!("status", Str(MAX_SHORT)),
            opt!("capabilities", StrArray(MAX_SHORT)),
            opt!("client_type", Str(MAX_SHORT)),
            opt!("protocol_version", UInt),
            opt!("pm2_info", Obj),
            opt!("process_info", Obj),
            opt!("ollama_url", Str(MAX_REASON)),
        ],
        "ping" => &[],
        "status" => &[req!("status", Str(MAX_SHORT))],
        "task_accepted" => &[req!("task_id", ID)],
        "task_rejected" => &[req!("task_id", ID), opt!("reason", REASON)],
        "task_progress" => &[req!("task_id", ID), opt!("progress", Any), opt!("execution_event", Any)],
        "wake_result" => {
            &[req!("task_id", ID), req!("status", Str(MAX_SHORT)), opt!("attempt", UInt), opt!("error", REASON)]
        }
        "task_complete" => &[
            req!("task_id", ID),
            req!("generation", UInt),
            opt!("result", Any),
            opt!("tokens_used", Any),
            opt!("verification_report", Any),
            opt!("verification_history", Any),
            opt!("usage", UsageObj),
        ],
        "task_failed" => &[
            req!("task_id", ID),
            req!("generation", UInt),
            opt!("reason", REASON),
            opt!("error", REASON),
            opt!("usage", UsageObj),
        ],
        "needs_input" => &[
            req!("task_id", ID),
            req!("request_id", Str(64)),
            req!("question", Str(MAX_QUESTION)),
            opt!("options", StrArray(MAX_SHORT)),
        ],
        "task_input_ack" => &[req!("task_id", ID), req!("request_id", Str(64))],
        "needs_input_closed" => &[req!("task_id", ID), req!("request_id", Str(64)), opt!("reason", REASON)],
        "task_recovering" => &[req!("task_id", ID), opt!("last_status", Str(MAX_SHORT))],
        "state_report" => &[
            opt!("task_id", OptTaskId),
            opt!("status", Str(MAX_SHORT)),
            opt!("generation", UInt),
            opt!("assigned_at", UInt),
        ],
        "agent_restarting" => &[opt!("reason", REASON)],
        "resource_report" => &[opt!("cpu_percent", Num), opt!("ram_used_bytes", Num), opt!("ram_total_bytes", Num)],
        _ => return None,
    })
}

/// Most items a string array in a frame may hold (capabilities, options).
const MAX_ARRAY: usize = 64;

fn usage_kind(field: &str) -> &'static str {
    match field {
        "cost_usd" => "a number from 0 to 1000000",
        "model" => "a string of at most 256 characters",
        _ => "an integer from 0 to 10000000000",
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(field: &Field, v: &Value, errors: &mut Vec<String>) {
    let name = field.name;
    let str_len = |s: &str, max: usize, errors: &mut Vec<String>| {
        if s.chars().count() > max {
            errors.push(format!("{name}: longer than {max} characters"));
        }
    };
    match (field.kind, v) {
        (Kind::Any, _) => {}
        (Kind::Str(max), Value::String(s)) => str_len(s, max, errors),
        (Kind::OptTaskId, Value::Null) => {}
        (Kind::TaskId | Kind::OptTaskId, Value::String(s)) => {
            if let Err(e) = check_task_id(s) {
                errors.push(e);
            }
        }
        (Kind::UInt, Value::Number(n)) if n.is_u64() => {}
        (Kind::UInt, other) => {
            errors.push(format!("{name}: expected a non-negative integer, got {}", kind_name(other)))
        }
        (Kind::Num, Value::Number(_)) => {}
        (Kind::UsageObj, Value::Object(m)) => {
            for (k, v) in m {
                let ok = match (k.as_str(), v) {
                    (_, Value::Null) => true,
                    ("input_tokens" | "output_tokens" | "total_tokens", Value::Number(n)) => {
                        n.as_u64().is_some_and(|n| n <= MAX_USAGE_TOKENS)
                    }
                    ("cost_usd", Value::Number(n)) => {
                        n.as_f64().is_some_and(|c| (0.0..=MAX_USAGE_COST_USD).contains(&c))
                    }
                    ("model", Value::String(s)) => s.chars().count() <= MAX_SHORT,
                    ("input_tokens" | "output_tokens" | "total_tokens" | "cost_usd" | "model", _) => false,
                    // Other keys are the agent's own; they are dropped.
                    _ => true,
                };
                if !ok {
                    errors.push(format!("{name}.{k}: expected {}", usage_kind(k)));
                }
            }
        }
        (Kind::Obj, Value::Object(_)) => {}
        (Kind::StrArray(max), Value::Array(items)) => {
            if items.len() > MAX_ARRAY {
                errors.push(format!("{name}: more than {MAX_ARRAY} items"));
            }
            for (i, item) in items.iter().enumerate().take(MAX_ARRAY) {
                match item {
                    Value::String(s) if s.chars().count() <= max => {}
                    Value::String(_) => errors.push(format!("{name}[{i}]: longer than {max} characters")),
                    other => errors.push(format!("{name}[{i}]: expected string, got {}", kind_name(other))),
                }
            }
        }
        (kind, other) => {
            let want = match kind {
                Kind::Str(_) | Kind::TaskId | Kind::OptTaskId => "string",
                Kind::Num => "number",
                Kind::Obj | Kind::UsageObj => "object",
                Kind::StrArray(_) => "array of strings",
                Kind::UInt | Kind::Any => unreachable!("handled above"),
            };
            errors.push(format!("{name}: expected {want}, got {}", kind_name(other)));
        }
    }
}

/// Parses and validates one text frame from an agent.
pub fn parse_agent_frame(text: &str) -> Result<AgentFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(FrameError::Malformed("frame must be a JSON object".into()));
    };
    let Some(Value::String(t)) = obj.get("type") else {
        return Err(FrameError::MissingType);
    };
    let t = t.clone();
    let fields = schema(&t).ok_or_else(|| FrameError::UnknownType(truncate(&t, 64)))?;
    let mut errors = Vec::new();
    for f in fields {
        match obj.get(f.name) {
            None => {
                if f.required {
                    errors.push(format!("{}: required", f.name));
                }
            }
            Some(Value::Null) if !f.required && !matches!(f.kind, Kind::OptTaskId) => {}
            Some(v) => check(f, v, &mut errors),
        }
    }
    if !errors.is_empty() {
        return Err(FrameError::Invalid { message_type: t, errors });
    }
    let mut obj = strip_nulls(obj, fields);
    if t == "resource_report" {
        // The report is a free-form map; the transport's own field is not part of it.
        obj.remove("protocol_version");
    }
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| FrameError::Invalid { message_type: t, errors: vec![e.to_string()] })
}

/// Optional fields sent as `null` mean "absent"; the typed structs expect them missing.
fn strip_nulls(mut obj: Map<String, Value>, fields: &[Field]) -> Map<String, Value> {
    for f in fields {
        let nullable = matches!(f.kind, Kind::OptTaskId | Kind::Any);
        if !f.required && !nullable && obj.get(f.name) == Some(&Value::Null) {
            obj.remove(f.name);
        }
    }
    obj
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Parses a hub frame leniently (used by sidecars and test clients).
pub fn parse_hub_frame(text: &str) -> Result<HubFrame, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identify_roundtrips_with_extras() {
        let f = parse_agent_frame(
            r#"{"type":"identify","agent_id":"a1","token":"t","capabilities":["rust"],"protocol_version":1,
                "pm2_info":{"name":"s","status":"online","uptime_ms":5,"restart_count":1,"memory_bytes":9},"extra":true}"#,
        )
        .unwrap();
        let AgentFrame::Identify(id) = f else { panic!() };
        assert_eq!(id.agent_id, "a1");
        assert_eq!(id.capabilities, vec!["rust"]);
        assert_eq!(id.pm2_info.unwrap().restart_count, Some(1));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_agent_frame(r#"{"type":"task_complete","task_id":5}"#).unwrap_err();
        let FrameError::Invalid { message_type, errors } = e else { panic!() };
        assert_eq!(message_type, "task_complete");
        assert!(errors.contains(&"task_id: expected string, got number".to_string()), "{errors:?}");
        assert!(errors.contains(&"generation: required".to_string()), "{errors:?}");
    }

    #[test]
    fn limits_are_enforced() {
        let long = "x".repeat(MAX_AGENT_ID + 1);
        let e = parse_agent_frame(&json!({"type":"identify","agent_id":long,"token":"t"}).to_string()).unwrap_err();
        assert!(matches!(e, FrameError::Invalid { ref errors, .. } if errors[0].starts_with("agent_id: longer")));
        let reason = "r".repeat(MAX_REASON + 1);
        let e =
            parse_agent_frame(&json!({"type":"task_failed","task_id":"t","generation":1,"reason":reason}).to_string());
        assert!(e.is_err());
    }

    #[test]
    fn unknown_and_malformed() {
        assert!(matches!(parse_agent_frame("{nope"), Err(FrameError::Malformed(_))));
        assert!(matches!(parse_agent_frame("[1]"), Err(FrameError::Malformed(_))));
        assert_eq!(parse_agent_frame(r#"{"a":1}"#), Err(FrameError::MissingType));
        assert!(matches!(parse_agent_frame(r#"{"type":"launch"}"#), Err(FrameError::UnknownType(t)) if t == "launch"));
    }

    #[test]
    fn nulls_and_state_report_without_task() {
        let f = parse_agent_frame(r#"{"type":"task_failed","task_id":"t","generation":2,"reason":null}"#).unwrap();
        assert!(matches!(f, AgentFrame::TaskFailed { reason: None, generation: 2, .. }));
        let f = parse_agent_frame(r#"{"type":"state_report","task_id":null}"#).unwrap();
        assert!(matches!(f, AgentFrame::StateReport { task_id: None, .. }));
    }

    #[test]
    fn task_ids_can_never_be_paths() {
        for ok in ["task-0123abcd", "T1", "a.b_c-d", &"x".repeat(MAX_TASK_ID)] {
            assert_eq!(check_task_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "../../victim/data", "a/b", ".hidden", "-x", "a\nb", "a b", "é", &"x".repeat(129)] {
            assert!(check_task_id(bad).is_err(), "{bad:?}");
        }
        let e = parse_agent_frame(r#"{"type":"task_accepted","task_id":"../../etc/passwd"}"#).unwrap_err();
        assert!(matches!(e, FrameError::Invalid { ref errors, .. } if errors[0].starts_with("task_id: must be")));
        let e = parse_agent_frame(r#"{"type":"state_report","task_id":"a/b"}"#).unwrap_err();
        assert!(matches!(e, FrameError::Invalid { .. }));
    }

    #[test]
    fn hub_frames_serialize_like_v1() {
        let f = HubFrame::TaskAck { task_id: "t".into(), status: AckStatus::Accepted };
        assert_eq!(serde_json::to_value(&f).unwrap(), json!({"type":"task_ack","task_id":"t","status":"accepted"}));
        let mut extra = Map::new();
        extra.insert("repo".into(), json!("r"));
        let a = HubFrame::TaskAssign(TaskAssign {
            task_id: "t".into(),
            description: "d".into(),
            metadata: json!({}),
            generation: 1,
            assigned_at: 2,
            priority: None,
            extra,
        });
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["type"], "task_assign");
        assert_eq!(v["repo"], "r");
        assert_eq!(parse_hub_frame(&a.to_text()).unwrap(), a);
    }

    #[test]
    fn closed_sets_are_enums_with_v1_strings() {
        let f = HubFrame::StateReportAck { task_id: None, action: ReportAction::Abort };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"type":"state_report_ack","task_id":null,"action":"abort"})
        );
        let f = HubFrame::TaskAck { task_id: "t".into(), status: AckStatus::DeadLetter };
        assert_eq!(serde_json::to_value(&f).unwrap()["status"], "dead_letter");
        let e: HubFrame = parse_hub_frame(r#"{"type":"error","error":"stale_generation"}"#).unwrap();
        assert!(matches!(e, HubFrame::Error(ErrorFrame { error: FrameErrorCode::StaleGeneration, .. })));
        let e: HubFrame = parse_hub_frame(r#"{"type":"error","error":"brand_new"}"#).unwrap();
        assert!(matches!(e, HubFrame::Error(ErrorFrame { error: FrameErrorCode::Unknown, .. })));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        const TYPES: &[&str] = &[
            "identify",
            "ping",
            "status",
            "task_accepted",
            "task_rejected",
            "task_progress",
            "wake_result",
            "task_complete",
            "task_failed",
            "task_recovering",
            "state_report",
            "agent_restarting",
            "resource_report",
            "teleport",
        ];
        const FIELDS: &[&str] = &[
            "agent_id",
            "token",
            "task_id",
            "generation",
            "status",
            "reason",
            "error",
            "result",
            "progress",
            "capabilities",
            "attempt",
            "process_info",
            "pm2_info",
            "cpu_percent",
            "last_status",
            "name",
        ];

        /// Any JSON value, a few levels deep.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                // Binary fractions: serde_json (without float_roundtrip) may round other decimals.
                any::<i32>().prop_map(|n| Value::from(n as f64 / 1024.0)),
                "\\PC{0,40}".prop_map(Value::from),
                "[a-z0-9./-]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A frame-shaped object: a known (or unknown) type and known fields with any values.
        fn frame() -> impl Strategy<Value = Value> {
            (0..TYPES.len(), proptest::collection::vec((0..FIELDS.len(), json_value()), 0..6)).prop_map(
                |(t, fields)| {
                    let mut m = Map::new();
                    m.insert("type".into(), json!(TYPES[t]));
                    for (f, v) in fields {
                        m.insert(FIELDS[f].into(), v);
                    }
                    Value::Object(m)
                },
            )
        }

        proptest! {
            // Failures are reported, not written into the source tree.
            #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any text: parsed or refused with an error frame, never a panic.
            #[test]
            fn any_text_is_parsed_or_refused(text in "\\PC{0,200}") {
                if let Err(e) = parse_agent_frame(&text) {
                    prop_assert!(matches!(e.to_frame(), HubFrame::Error(_)));
                }
            }

            /// Any frame-shaped object: a valid frame survives a round trip unchanged, and an
            /// invalid one is refused with every error naming a field.
            #[test]
            fn any_frame_roundtrips_or_names_its_fields(v in frame()) {
                match parse_agent_frame(&v.to_string()) {
                    Ok(f) => prop_assert_eq!(parse_agent_frame(&f.to_text()).ok(), Some(f)),
                    Err(FrameError::Invalid { errors, .. }) => {
                        prop_assert!(!errors.is_empty());
                        for e in &errors {
                            prop_assert!(FIELDS.iter().chain(["type"].iter()).any(|f| e.starts_with(f)) || e.contains("missing field") || e.contains("invalid"), "{}", e);
                        }
                    }
                    Err(FrameError::UnknownType(t)) => prop_assert_eq!(t, "teleport"),
                    Err(other) => prop_assert!(false, "{:?}", other),
                }
            }

            /// The hub's frames, as a sidecar reads them: anything parses or errors, never panics.
            #[test]
            fn any_hub_text_is_parsed_or_refused(v in json_value()) {
                let _ = parse_hub_frame(&v.to_string());
            }

            /// Task ids: accepted only in the safe form, whatever the input.
            #[test]
            fn task_ids_are_safe_or_refused(id in "\\PC{0,140}") {
                if check_task_id(&id).is_ok() {
                    prop_assert!(!id.contains('/') && !id.starts_with('.') && id.len() <= MAX_TASK_ID);
                    prop_assert!(id.chars().all(|c| c.is_ascii_graphic()));
                }
            }
        }
    }

    #[test]
    fn agent_frames_carry_protocol_version() {
        let v: Value = serde_json::from_str(&AgentFrame::Ping.to_text()).unwrap();
        assert_eq!(v, json!({"type":"ping","protocol_version":1}));
    }
}
