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

mod agents;
mod events;
mod family;
mod fields;
mod health;
mod integrations;
mod tasks;
mod tokens;
mod usage;
pub use agents::*;
pub use events::*;
pub use family::*;
pub use health::*;
pub use integrations::*;
pub use tasks::*;
pub use tokens::*;
pub use usage::*;

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
        f.pad(self.as_str())
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
    /// Waits for the tasks it depends on to complete (`depends_on`).
    Blocked,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::Working,
        TaskStatus::Completed,
        TaskStatus::WaitingRetry,
        TaskStatus::DeadLetter,
        TaskStatus::Cancelled,
        TaskStatus::Blocked,
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
            TaskStatus::Blocked => "blocked",
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
        f.pad(self.as_str())
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
    /// Connected and free, but a model provider's limit holds (`limited_until`).
    Limited,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 5] =
        [AgentStatus::Idle, AgentStatus::Working, AgentStatus::Restarting, AgentStatus::Offline, AgentStatus::Limited];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Working => "working",
            AgentStatus::Restarting => "restarting",
            AgentStatus::Offline => "offline",
            AgentStatus::Limited => "limited",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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
        f.pad(self.as_str())
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
    fn names_pad_to_a_width_in_tables() {
        assert_eq!(format!("[{:<8}] [{:>9}]", Priority::High, TaskStatus::Queued), "[high    ] [   queued]");
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
