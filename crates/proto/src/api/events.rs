//! The event stream: what `GET /api/events` sends.

use super::*;

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
    Progress {
        task_id: String,
        agent_id: String,
        generation: u64,
        progress: Value,
        /// The line as people read it ([`progress_text`]).
        #[serde(default)]
        text: String,
    },
    /// A wake of the task's agent ended (as its history says): `success`, `failed` or `timeout`.
    Wake {
        task_id: String,
        agent_id: String,
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A restart command, and what became of it.
    Restart {
        agent_id: String,
        outcome: crate::RestartOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A model provider's limit: the agent (and every agent of its account) gets no task until
    /// `until` (epoch ms).
    Limited {
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        until: u64,
        reason: String,
    },
    /// A task's change moved on its way to the target branch.
    Integration { task_id: String, integration: Integration },
    /// The limit ended (`by`: `expired`, or who lifted it).
    Unlimited { agent_id: String, by: String },
    /// An agent connected, disconnected, or announced a restart.
    Agent { agent_id: String, status: AgentStatus, connected: bool },
    /// An agent asked a person something.
    NeedsInput { task_id: String, agent_id: String, question: Question },
    /// A person answered.
    InputAnswered { task_id: String, request_id: String, answered_by: String },
    /// The agent's sidecar wrote the answer for the agent.
    InputDelivered { task_id: String, request_id: String },
    /// The question closed unanswered: its attempt ended, or the agent stopped asking it.
    InputClosed { task_id: String, request_id: String, reason: String },
    /// An answer was given but will never reach the agent: its attempt ended first, or the agent
    /// no longer asks that question.
    InputUndelivered { task_id: String, request_id: String, reason: String },
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
            EventKind::Wake { .. } => "wake",
            EventKind::Restart { .. } => "restart",
            EventKind::Limited { .. } => "limited",
            EventKind::Unlimited { .. } => "unlimited",
            EventKind::Integration { .. } => "integration",
            EventKind::Agent { .. } => "agent",
            EventKind::NeedsInput { .. } => "needs_input",
            EventKind::InputAnswered { .. } => "input_answered",
            EventKind::InputDelivered { .. } => "input_delivered",
            EventKind::InputClosed { .. } => "input_closed",
            EventKind::InputUndelivered { .. } => "input_undelivered",
            EventKind::Usage { .. } => "usage",
            EventKind::BudgetExhausted { .. } => "budget_exhausted",
            EventKind::Resync { .. } => "resync",
            EventKind::Dropped { .. } => "dropped",
        }
    }
}

/// A progress line as people read it: a string as it is; `run-agent`'s `{"line", "stream"}` as
/// its line (marked when from stderr); an object with `text`, `message` or `step` as that;
/// anything else as compact JSON.
pub fn progress_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => match m.get("line").and_then(Value::as_str) {
            Some(line) if m.get("stream").and_then(Value::as_str) == Some("stderr") => format!("[stderr] {line}"),
            Some(line) => line.to_string(),
            None => ["text", "message", "step"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_str))
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()),
        },
        other => other.to_string(),
    }
}
