//! The hub's HTTP API: one request and one response type per route, and one error body with a
//! code enum. The hub serializes them; the client, the CLI and the tests deserialize them.
//! HTTP status codes are not here: they belong to the hub's HTTP layer alone.
//!
//! Each request type implements [`Endpoint`], which names its method, its path (with its
//! parameters percent-encoded) and its response type, so a client has one generic `call`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Default page size of every listing.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page a listing returns.
pub const MAX_PAGE: u32 = 1_000;
/// `max_retries` of a submission when it names none.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Most capabilities a task may require.
pub const MAX_CAPABILITIES: usize = 64;

// ---- routes -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// A request the client can send: where to, and what comes back.
pub trait Endpoint {
    type Response: Serialize + DeserializeOwned;
    const METHOD: Method;
    /// Path and query, parameters percent-encoded.
    fn path(&self) -> String;
    /// The JSON body, for methods that carry one.
    fn body(&self) -> Option<Value> {
        None
    }
}

/// Percent-encodes one path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` of the pairs whose value is set.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

// ---- shared types ---------------------------------------------------------------------------

/// A task's lane; urgent first, first in first out within a lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Urgent,
    High,
    #[default]
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

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Idle,
    Working,
    Restarting,
    Offline,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 4] =
        [AgentStatus::Idle, AgentStatus::Working, AgentStatus::Restarting, AgentStatus::Offline];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Working => "working",
            AgentStatus::Restarting => "restarting",
            AgentStatus::Offline => "offline",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---- errors --------------------------------------------------------------------------------

/// What went wrong, as a closed set of codes (the HTTP layer maps each to a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token was sent.
    Unauthorized,
    /// The token is neither the admin token nor a current agent token.
    InvalidToken,
    /// The token is valid but its role may not do this.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The body or query is well-formed but a field is wrong (`errors` names each).
    ValidationFailed,
    InvalidJson,
    InvalidBody,
    InvalidQuery,
    /// The whole body is over the limit.
    BodyTooLarge,
    /// One field is over its configured limit (`message` names it).
    FieldTooLarge,
    /// The task's status does not allow this.
    InvalidState,
    /// The store refused a write; nothing was changed.
    StorageUnavailable,
    /// The agent is known but not connected.
    AgentNotConnected,
    /// No agent with this id was ever seen.
    UnknownAgent,
    /// The hub holds as many open tasks as it is configured to.
    QueueFull,
    /// Too many connections or requests right now; try again.
    Overloaded,
    /// This hub is a standby: the leader (if one is known) is named in `leader`.
    NotLeader,
    ShuttingDown,
    /// A code this client does not know (a newer hub).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::FieldTooLarge => "field_too_large",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::AgentNotConnected => "agent_not_connected",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error body: `{"error": code, "message"?: ..., "errors"?: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per invalid field, each starting with the field's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// With `not_leader`: the leading hub's base URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(error: ErrorCode) -> ApiError {
        ApiError { error, message: None, errors: Vec::new(), leader: None }
    }
    pub fn msg(mut self, m: impl Into<String>) -> ApiError {
        self.message = Some(m.into());
        self
    }
    pub fn fields(errors: Vec<String>) -> ApiError {
        ApiError { error: ErrorCode::ValidationFailed, message: None, errors, leader: None }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error.as_str())?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if !self.errors.is_empty() {
            write!(f, ": {}", self.errors.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

// ---- tasks ---------------------------------------------------------------------------------

/// `POST /api/tasks`: a new task. Fields other than these (v1's repo, branch, file_hints,
/// routing_decision, ...) are kept in `extra` and passed to the agent in `task_assign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTask {
    pub description: String,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needed_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_to: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}

/// Fields the hub owns; a submission may not set them.
const RESERVED: &[&str] =
    &["task_id", "status", "generation", "assigned_at", "assigned_to", "type", "attempts", "failures"];

impl SubmitTask {
    pub fn new(description: impl Into<String>) -> SubmitTask {
        SubmitTask {
            description: description.into(),
            priority: Priority::Normal,
            metadata: Map::new(),
            max_retries: DEFAULT_MAX_RETRIES,
            needed_capabilities: Vec::new(),
            assign_to: None,
            extra: Map::new(),
        }
    }

    /// Validates a submitted JSON object, naming every wrong field at once (serde would stop at
    /// the first). Sizes are the hub's configured limits and are checked there.
    pub fn from_json(mut m: Map<String, Value>) -> Result<SubmitTask, Vec<String>> {
        let mut errors = Vec::new();
        let description = match m.remove("description") {
            Some(Value::String(s)) if s.trim().is_empty() => {
                errors.push("description: must not be empty".into());
                String::new()
            }
            Some(Value::String(s)) => s,
            Some(_) => {
                errors.push("description: expected string".into());
                String::new()
            }
            None => {
                errors.push("description: required".into());
                String::new()
            }
        };
        let priority = match m.remove("priority") {
            None | Some(Value::Null) => Priority::Normal,
            Some(Value::String(p)) => p.parse().unwrap_or_else(|e| {
                errors.push(format!("priority: {e}"));
                Priority::Normal
            }),
            Some(_) => {
                errors.push("priority: expected string".into());
                Priority::Normal
            }
        };
        let metadata = match m.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o,
            Some(_) => {
                errors.push("metadata: expected object".into());
                Map::new()
            }
        };
        let max_retries = match m.remove("max_retries") {
            None | Some(Value::Null) => DEFAULT_MAX_RETRIES,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 100) => {
                n.as_u64().unwrap_or(DEFAULT_MAX_RETRIES as u64) as u32
            }
            Some(_) => {
                errors.push("max_retries: expected an integer from 0 to 100".into());
                DEFAULT_MAX_RETRIES
            }
        };
        let needed_capabilities = match m.remove("needed_capabilities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() <= MAX_CAPABILITIES => {
                let mut caps = Vec::new();
                for (i, c) in items.into_iter().enumerate() {
                    match c {
                        Value::String(s) if !s.is_empty() && s.chars().count() <= crate::MAX_SHORT => caps.push(s),
                        _ => errors.push(format!(
                            "needed_capabilities[{i}]: expected a non-empty string up to {} characters",
                            crate::MAX_SHORT
                        )),
                    }
                }
                caps
            }
            Some(_) => {
                errors.push(format!("needed_capabilities: expected an array of at most {MAX_CAPABILITIES} strings"));
                Vec::new()
            }
        };
        let assign_to = match m.remove("assign_to") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => match check_agent_id(&a) {
                Ok(()) => Some(a),
                Err(e) => {
                    errors.push(e.replacen("agent_id", "assign_to", 1));
                    None
                }
            },
            Some(_) => {
                errors.push("assign_to: expected string".into());
                None
            }
        };
        for k in RESERVED {
            if m.contains_key(*k) {
                errors.push(format!("{k}: set by the hub, not by a submission"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SubmitTask { description, priority, metadata, max_retries, needed_capabilities, assign_to, extra: m })
    }
}

impl Endpoint for SubmitTask {
    type Response = TaskSubmitted;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        "/api/tasks".into()
    }
    fn body(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("a submission serializes"))
    }
}

/// Whether `id` is an acceptable agent id: 1 to [`crate::MAX_AGENT_ID`] characters, none of
/// them a control character (ids appear in logs, tables and URLs).
/// The name the admin token acts under (as a task's `submitted_by`, an answer's `answered_by`).
pub const ADMIN_NAME: &str = "admin";

pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > crate::MAX_AGENT_ID || id.chars().any(char::is_control) {
        return Err(format!("agent_id: must be 1 to {} printable characters", crate::MAX_AGENT_ID));
    }
    // Tasks the admin token submits are recorded as submitted by `admin`: an agent of that name
    // would own them.
    if id == ADMIN_NAME {
        return Err(format!("agent_id: {ADMIN_NAME:?} is reserved for the admin token"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSubmitted {
    pub status: TaskStatus,
    pub task_id: String,
    pub priority: Priority,
    pub created_at: u64,
}

/// `GET /api/tasks`: newest first, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTasks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Rows per page, 1 to [`MAX_PAGE`]; [`DEFAULT_PAGE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Endpoint for ListTasks {
    type Response = TaskList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let q = query(&[
            ("status", self.status.map(|s| s.as_str().to_string())),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ]);
        format!("/api/tasks{q}")
    }
}

/// `GET /api/tasks/dead-letter`: the dead letter queue, paged like [`ListTasks`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListDeadLetter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Endpoint for ListDeadLetter {
    type Response = TaskList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let q = query(&[("limit", self.limit.map(|l| l.to_string())), ("cursor", self.cursor.clone())]);
        format!("/api/tasks/dead-letter{q}")
    }
}

/// One page of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub count: usize,
    pub tasks: Vec<TaskView>,
    /// Set when there are more rows: pass it as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: String,
    pub description: String,
    pub priority: Priority,
    pub metadata: Value,
    pub needed_capabilities: Vec<String>,
    pub assign_to: Option<String>,
    pub max_retries: u32,
    /// v1 fields passed through to the agent (repo, branch, routing_decision, ...).
    pub extra: Map<String, Value>,
    pub status: TaskStatus,
    pub generation: u64,
    pub assigned_to: Option<String>,
    pub assigned_at: Option<u64>,
    /// How many times the task was handed to an agent.
    pub attempts: u32,
    /// Counted failures; above `max_retries` the task is dead-lettered.
    pub failures: u32,
    pub retry_at: Option<u64>,
    pub result: Option<Value>,
    /// Other fields of `task_complete` (tokens_used, verification_report, ...).
    pub report: Map<String, Value>,
    pub last_error: Option<String>,
    /// The agent's latest `task_progress` for the current attempt.
    pub progress: Option<Value>,
    /// `admin`, or the id of the agent whose token submitted it.
    pub submitted_by: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub completed_at: Option<u64>,
    /// The question the agent is waiting on a person for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_input: Option<Question>,
    /// An answer given but not yet confirmed written by the agent's sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// What every attempt together cost, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::Usage>,
}

/// A question an agent asked (`<task_id>.needs-input`), waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub request_id: String,
    pub question: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// When the agent asked (epoch ms).
    pub since: u64,
}

/// A person's answer to a [`Question`], on its way to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub request_id: String,
    pub answer: String,
    pub answered_by: String,
    pub answered_at: u64,
}

/// `GET /api/tasks/:task_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetTask {
    pub task_id: String,
}

impl Endpoint for GetTask {
    type Response = TaskDetail;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        format!("/api/tasks/{}", encode(&self.task_id))
    }
}

/// A task with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: TaskView,
    pub history: Vec<Transition>,
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

/// `POST /api/tasks/:task_id/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelTask {
    pub task_id: String,
}

impl Endpoint for CancelTask {
    type Response = TaskChanged;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/tasks/{}/cancel", encode(&self.task_id))
    }
    fn body(&self) -> Option<Value> {
        Some(Value::Object(Map::new()))
    }
}

/// `POST /api/tasks/:task_id/retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryTask {
    pub task_id: String,
}

impl Endpoint for RetryTask {
    type Response = TaskChanged;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/tasks/{}/retry", encode(&self.task_id))
    }
    fn body(&self) -> Option<Value> {
        Some(Value::Object(Map::new()))
    }
}

/// `POST /api/tasks/:task_id/input`: the answer to the task's open question (admin, or the
/// agent that submitted the task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerTask {
    #[serde(skip)]
    pub task_id: String,
    pub answer: String,
    /// The question answered; when given, it must be the open one (a stale page cannot answer a
    /// newer question by mistake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Endpoint for AnswerTask {
    type Response = Answered;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/tasks/{}/input", encode(&self.task_id))
    }
    fn body(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("serializes"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answered {
    pub status: Done,
    pub task_id: String,
    pub request_id: String,
    /// Whether the agent's sidecar was connected to be sent the answer now (it gets it when it
    /// reconnects otherwise).
    pub sent: bool,
}

/// The task's new status after a cancel or a retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskChanged {
    pub status: TaskStatus,
    pub task_id: String,
}

/// `GET /api/tasks/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GetStats;

impl Endpoint for GetStats {
    type Response = Stats;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        "/api/tasks/stats".into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub total: u64,
    pub by_status: BTreeMap<TaskStatus, u64>,
    pub agents: BTreeMap<AgentStatus, u64>,
}

// ---- agents --------------------------------------------------------------------------------

/// `GET /api/agents`: every agent seen, by id, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListAgents {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Endpoint for ListAgents {
    type Response = AgentList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let q = query(&[("limit", self.limit.map(|l| l.to_string())), ("cursor", self.cursor.clone())]);
        format!("/api/agents{q}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub count: usize,
    pub agents: Vec<AgentView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent_id: String,
    pub name: Option<String>,
    pub status: AgentStatus,
    pub connected: bool,
    pub connected_at: Option<u64>,
    pub last_seen: u64,
    pub capabilities: Vec<String>,
    pub client_type: Option<String>,
    pub current_task: Option<String>,
    /// What the agent last said about itself (`status` frame, or identify's `status`).
    pub reported_status: Option<String>,
    pub process_info: Option<crate::ProcessInfo>,
    /// AgentCom v1's name for `process_info`.
    pub pm2_info: Option<crate::ProcessInfo>,
    /// The last `resource_report`.
    pub resources: Option<Map<String, Value>>,
    /// Today's (UTC) spend, and the agent's budget if one is set.
    #[serde(default)]
    pub spend: Spend,
    /// A task of this agent is waiting for a person.
    #[serde(default)]
    pub needs_input: bool,
}

/// Spend over one UTC day against its budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub cost_usd: f64,
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Over its budget: gets no new task until midnight UTC.
    #[serde(default)]
    pub exhausted: bool,
}

// ---- usage ---------------------------------------------------------------------------------

/// How usage is grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    #[default]
    Agent,
    Model,
    /// UTC day, `YYYY-MM-DD`.
    Day,
}

/// `GET /api/usage`: usage aggregated by agent, model or day, over whole UTC days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetUsage {
    #[serde(default)]
    pub by: UsageBy,
    /// First day (`YYYY-MM-DD`, UTC) included; default 30 days ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Last day included; default today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl Endpoint for GetUsage {
    type Response = UsageReport;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let by = match self.by {
            UsageBy::Agent => "agent",
            UsageBy::Model => "model",
            UsageBy::Day => "day",
        };
        let q = query(&[("by", Some(by.into())), ("since", self.since.clone()), ("until", self.until.clone())]);
        format!("/api/usage{q}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub by: UsageBy,
    pub since: String,
    pub until: String,
    pub rows: Vec<UsageRow>,
    pub total: UsageRow,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The agent id, model name (`unknown` when not reported) or day; empty for the total.
    pub key: String,
    /// Attempts that reported usage.
    pub reports: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
}

// ---- events --------------------------------------------------------------------------------

/// `GET /api/events`: Server-Sent Events of [`Event`]s, each `id` usable as `Last-Event-ID`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowEvents {
    /// Resume after this event id (the `Last-Event-ID` header does the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}

impl FollowEvents {
    pub fn path(&self) -> String {
        format!("/api/events{}", query(&[("last_event_id", self.last_event_id.clone())]))
    }
}

/// One event of the stream. Ids are `<hub run>-<sequence>`: increasing within a hub run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// When it happened (epoch ms); events are sent only once what they say is durable.
    pub at: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A task changed status (`from` is absent for a submission).
    Task {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<TaskStatus>,
        to: TaskStatus,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
        generation: u64,
        priority: Priority,
    },
    /// A progress line of the task's current attempt.
    Progress { task_id: String, agent_id: String, generation: u64, progress: Value },
    /// An agent connected, disconnected, or announced a restart.
    Agent { agent_id: String, status: AgentStatus, connected: bool },
    /// An agent asked a person something.
    NeedsInput { task_id: String, agent_id: String, question: Question },
    /// A person answered.
    InputAnswered { task_id: String, request_id: String, answered_by: String },
    /// The agent's sidecar wrote the answer for the agent.
    InputDelivered { task_id: String, request_id: String },
    /// An attempt reported what it cost.
    Usage { task_id: String, agent_id: String, usage: crate::Usage },
    /// A budget ran out for the day: `agent_id` absent for the whole fleet.
    BudgetExhausted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
        spend: Spend,
    },
    /// Events were lost for this reader (the resume point is older than the hub's window, or
    /// from before a hub restart): reload what you show.
    Resync { reason: String },
    /// The reader fell too far behind and is being disconnected.
    Dropped { reason: String },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Task { .. } => "task",
            EventKind::Progress { .. } => "progress",
            EventKind::Agent { .. } => "agent",
            EventKind::NeedsInput { .. } => "needs_input",
            EventKind::InputAnswered { .. } => "input_answered",
            EventKind::InputDelivered { .. } => "input_delivered",
            EventKind::Usage { .. } => "usage",
            EventKind::BudgetExhausted { .. } => "budget_exhausted",
            EventKind::Resync { .. } => "resync",
            EventKind::Dropped { .. } => "dropped",
        }
    }
}

/// `GET /api/agents/:agent_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetAgent {
    pub agent_id: String,
}

impl Endpoint for GetAgent {
    type Response = AgentView;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        format!("/api/agents/{}", encode(&self.agent_id))
    }
}

/// `POST /api/admin/agents/:agent_id/restart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartAgent {
    #[serde(skip)]
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restart even while a task is working (the task is recovered after the restart).
    #[serde(default)]
    pub force: bool,
}

impl Endpoint for RestartAgent {
    type Response = RestartCommanded;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/admin/agents/{}/restart", encode(&self.agent_id))
    }
    fn body(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("serializes"))
    }
}

/// A fixed word in a response that says what was done (v1 clients read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Done {
    RestartCommanded,
    Revoked,
    Stored,
    Answered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartCommanded {
    pub status: Done,
    pub agent_id: String,
    pub reason: String,
    pub force: bool,
}

/// `PUT /api/agents/:agent_id/checkpoint`: the body is the checkpoint, any JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutCheckpoint {
    #[serde(skip)]
    pub agent_id: String,
    #[serde(flatten)]
    pub checkpoint: Map<String, Value>,
}

impl Endpoint for PutCheckpoint {
    type Response = CheckpointStored;
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        format!("/api/agents/{}/checkpoint", encode(&self.agent_id))
    }
    fn body(&self) -> Option<Value> {
        Some(Value::Object(self.checkpoint.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStored {
    pub status: Done,
    pub agent_id: String,
    pub updated_at: u64,
}

/// `GET /api/agents/:agent_id/checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetCheckpoint {
    pub agent_id: String,
}

impl Endpoint for GetCheckpoint {
    type Response = Checkpoint;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        format!("/api/agents/{}/checkpoint", encode(&self.agent_id))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub agent_id: String,
    pub updated_at: u64,
    pub checkpoint: Value,
}

// ---- tokens (admin) ------------------------------------------------------------------------

/// `POST /admin/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    pub agent_id: String,
}

impl Endpoint for CreateToken {
    type Response = TokenCreated;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        "/admin/tokens".into()
    }
    fn body(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("serializes"))
    }
}

/// The new token: shown this once, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub agent_id: String,
    pub token: String,
    pub created_at: u64,
}

/// `GET /admin/tokens`: by agent, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Endpoint for ListTokens {
    type Response = TokenList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let q = query(&[("limit", self.limit.map(|l| l.to_string())), ("cursor", self.cursor.clone())]);
        format!("/admin/tokens{q}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub count: usize,
    pub tokens: Vec<TokenInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub agent_id: String,
    pub created_at: u64,
    /// The first 12 hex digits of the token's hash: enough to tell tokens apart, useless to an attacker.
    pub fingerprint: String,
}

/// `DELETE /admin/tokens/:agent_id`: every token of the agent, which is disconnected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeTokens {
    pub agent_id: String,
}

impl Endpoint for RevokeTokens {
    type Response = TokensRevoked;
    const METHOD: Method = Method::Delete;
    fn path(&self) -> String {
        format!("/admin/tokens/{}", encode(&self.agent_id))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensRevoked {
    pub status: Done,
    pub agent_id: String,
    pub revoked: usize,
}

// ---- health --------------------------------------------------------------------------------

/// `GET /health`: no token needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GetHealth;

impl Endpoint for GetHealth {
    type Response = Health;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        "/health".into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub version: String,
    /// `leader` (a single hub always leads), or `standby` when several hubs share PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<HubRole>,
    /// The leading hub's base URL, when this one is a standby and knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's term (increases with every takeover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubRole {
    Leader,
    Standby,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn submission_errors_name_every_field() {
        let m = json!({"priority": "asap", "max_retries": -1, "needed_capabilities": ["ok", 3], "status": "done",
                       "assign_to": "a\nb"});
        let errors = SubmitTask::from_json(m.as_object().unwrap().clone()).unwrap_err();
        for f in
            ["description: required", "priority:", "max_retries:", "needed_capabilities[1]:", "status:", "assign_to:"]
        {
            assert!(errors.iter().any(|e| e.starts_with(f)), "{f} in {errors:?}");
        }
    }

    #[test]
    fn v1_fields_pass_through_and_roundtrip() {
        let m = json!({"description": "d", "repo": "r", "routing_decision": {"target_type": "wake"}});
        let t = SubmitTask::from_json(m.as_object().unwrap().clone()).unwrap();
        assert_eq!(t.extra["repo"], "r");
        assert_eq!((t.priority, t.max_retries), (Priority::Normal, 3));
        let body = t.body().unwrap();
        assert_eq!(body["repo"], "r");
        let back = SubmitTask::from_json(body.as_object().unwrap().clone()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn paths_encode_their_parameters() {
        assert_eq!(GetTask { task_id: "a b/c".into() }.path(), "/api/tasks/a%20b%2Fc");
        let l = ListTasks { status: Some(TaskStatus::DeadLetter), limit: Some(5), cursor: Some("x&y".into()) };
        assert_eq!(l.path(), "/api/tasks?status=dead_letter&limit=5&cursor=x%26y");
        assert_eq!(ListTasks::default().path(), "/api/tasks");
    }

    #[test]
    fn errors_keep_v1_strings_and_tolerate_new_codes() {
        let e = ApiError::new(ErrorCode::AgentNotConnected).msg("x");
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"error": "agent_not_connected", "message": "x"}));
        let newer: ApiError = serde_json::from_value(json!({"error": "from_the_future"})).unwrap();
        assert_eq!(newer.error, ErrorCode::Unknown);
        for c in [ErrorCode::InvalidToken, ErrorCode::FieldTooLarge, ErrorCode::QueueFull] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn field() -> impl Strategy<Value = (String, Value)> {
            let keys = prop_oneof![
                Just("description"),
                Just("priority"),
                Just("metadata"),
                Just("max_retries"),
                Just("needed_capabilities"),
                Just("assign_to"),
                Just("status"),
                Just("repo"),
                Just("routing_decision"),
            ];
            let values = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,30}".prop_map(Value::from),
                prop_oneof![Just("urgent"), Just("low"), Just("soon")].prop_map(Value::from),
                proptest::collection::vec("\\PC{0,10}", 0..3).prop_map(|v| json!(v)),
                Just(json!({"k": 1})),
            ];
            (keys, values).prop_map(|(k, v)| (k.to_string(), v))
        }

        proptest! {
            // Failures are reported, not written into the source tree.
            #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any submission: a valid one survives the client's round trip unchanged; an
            /// invalid one names each field it refuses.
            #[test]
            fn any_submission_roundtrips_or_names_its_fields(fields in proptest::collection::vec(field(), 0..6)) {
                let m: Map<String, Value> = fields.into_iter().collect();
                match SubmitTask::from_json(m) {
                    Ok(t) => {
                        let body = t.body().unwrap();
                        prop_assert_eq!(SubmitTask::from_json(body.as_object().unwrap().clone()), Ok(t));
                    }
                    Err(errors) => {
                        for e in errors {
                            let named = ["description", "priority", "metadata", "max_retries", "needed_capabilities", "assign_to", "status"]
                                .iter()
                                .any(|f| e.starts_with(f));
                            prop_assert!(named, "{}", e);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stats_maps_use_status_names() {
        let s = Stats {
            total: 1,
            by_status: [(TaskStatus::WaitingRetry, 1)].into_iter().collect(),
            agents: [(AgentStatus::Idle, 2)].into_iter().collect(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v, json!({"total": 1, "by_status": {"waiting_retry": 1}, "agents": {"idle": 2}}));
        assert_eq!(serde_json::from_value::<Stats>(v).unwrap(), s);
    }
}
