//! Tasks: submit, list, show, cancel, retry, and answer a task's question.

use super::*;

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
    /// The most the task may cost, over all its attempts: the attempt that crosses it is
    /// stopped and the task fails with `budget_exceeded` (not retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// The most tokens (input and output) the task may use, over all its attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Tasks of one key are handed out one at a time, in the order they were queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_key: Option<String>,
    /// Its change waits for a person's approval before it is merged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    /// The task that created this one (see `family.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Tasks that must complete before this one is queued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}

/// Fields the hub owns; a submission may not set them.
const RESERVED: &[&str] = &[
    "task_id",
    "status",
    "generation",
    "assigned_at",
    "assigned_to",
    "type",
    "attempts",
    "failures",
    "resume_session",
    "kind",
    "integrates",
    "integration",
    "integration_feedback",
];

/// Capabilities only the hub's own integration tasks need (an agent could otherwise have the
/// integrator merge a branch of its choosing).
pub const INTEGRATE_CAPABILITY: &str = "integrate";

impl SubmitTask {
    pub fn new(description: impl Into<String>) -> SubmitTask {
        SubmitTask {
            description: description.into(),
            priority: Priority::Normal,
            metadata: Map::new(),
            max_retries: DEFAULT_MAX_RETRIES,
            needed_capabilities: Vec::new(),
            assign_to: None,
            max_cost_usd: None,
            max_tokens: None,
            serial_key: None,
            review: false,
            parent_task_id: None,
            depends_on: Vec::new(),
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
        let assign_to = fields::optional_id(&mut m, &mut errors, "assign_to", check_agent_id, "agent_id");
        let max_cost_usd = match m.remove("max_cost_usd") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|c| c > 0.0 && c <= crate::MAX_USAGE_COST_USD) => {
                n.as_f64()
            }
            Some(_) => {
                errors.push(format!("max_cost_usd: expected a number above 0, at most {}", crate::MAX_USAGE_COST_USD));
                None
            }
        };
        let max_tokens = match m.remove("max_tokens") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|t| t > 0 && t <= crate::MAX_USAGE_TOKENS) => n.as_u64(),
            Some(_) => {
                errors.push(format!("max_tokens: expected an integer from 1 to {}", crate::MAX_USAGE_TOKENS));
                None
            }
        };
        let serial_key = match m.remove("serial_key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k))
                if !k.is_empty() && k.chars().count() <= crate::MAX_SHORT && !k.chars().any(char::is_control) =>
            {
                Some(k)
            }
            Some(_) => {
                errors.push(format!("serial_key: expected 1 to {} printable characters", crate::MAX_SHORT));
                None
            }
        };
        let review = match m.remove("review") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                errors.push("review: expected true or false".into());
                false
            }
        };
        if needed_capabilities.iter().any(|c| c == INTEGRATE_CAPABILITY || c.starts_with("integrate:")) {
            errors.push("needed_capabilities: integrate capabilities are the hub's own integration tasks'".into());
        }
        if serial_key.as_deref().is_some_and(|k| k.starts_with("integrate:")) {
            errors.push("serial_key: keys starting with integrate: are the hub's own".into());
        }
        let super::Family { parent_task_id, depends_on } = super::read_family(&mut m, &mut errors);
        for k in RESERVED {
            if m.contains_key(*k) {
                errors.push(format!("{k}: set by the hub, not by a submission"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SubmitTask {
            description,
            priority,
            metadata,
            max_retries,
            needed_capabilities,
            assign_to,
            max_cost_usd,
            max_tokens,
            serial_key,
            review,
            parent_task_id,
            depends_on,
            extra: m,
        })
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
    /// What the latest attempt committed on the task's branch (without its patch: see
    /// [`TaskDiff`]); `null` when it changed nothing or ran outside a worktree.
    #[serde(default)]
    pub change: Option<crate::Change>,
    /// The task that created this one, if an agent (or a person) made it a child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Tasks that had to complete before this one was queued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The task's caps over all its attempts (`budget_exceeded` past either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Attempts a model provider's limit stopped (they do not count against `max_retries`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limited_attempts: u32,
    /// Queued, but not handed out before this instant (epoch ms): a limit's reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// The agent whose session the next attempt resumes, preferred for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_agent: Option<String>,
    /// The agent CLI's conversation of each attempt that reported one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<Session>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_key: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    /// Its change on the way to its target branch (the integration queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<Integration>,
    /// An integration task: the task whose change it integrates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrates: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One attempt's conversation with its model (the agent CLI's session id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub generation: u64,
    pub agent_id: String,
    pub session_id: String,
    /// When it was reported (epoch ms).
    pub at: u64,
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
    /// The tasks this one created, oldest first, with their status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildTask>,
}

/// `GET /api/tasks/:task_id/diff`: the patch of the latest change an attempt reported (admin,
/// the submitter or the holder). `?format=patch` answers the patch alone, as `text/x-diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetTaskDiff {
    pub task_id: String,
}

impl Endpoint for GetTaskDiff {
    type Response = TaskDiff;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        format!("/api/tasks/{}/diff", encode(&self.task_id))
    }
}

/// A task's change and its patch; `change: null` and an empty patch when it changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDiff {
    pub task_id: String,
    pub change: Option<crate::Change>,
    /// The attempt the patch is from.
    pub generation: Option<u64>,
    /// `git diff base_sha head_sha`, at most [`crate::MAX_PATCH_BYTES`].
    pub patch: String,
    /// The patch was cut at that bound: the branch has the rest.
    pub cut: bool,
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

impl AnswerTask {
    /// An answer to `task_id`'s question, checked: not empty, at most [`crate::MAX_ANSWER`]
    /// characters, and a `request_id` a sidecar could have made.
    pub fn new(task_id: &str, answer: &str, request_id: Option<&str>) -> Result<AnswerTask, Vec<String>> {
        let mut m = Map::new();
        m.insert("answer".into(), Value::String(answer.to_string()));
        if let Some(r) = request_id {
            m.insert("request_id".into(), Value::String(r.to_string()));
        }
        AnswerTask::from_json(task_id, m)
    }

    /// Validates the JSON body of `POST /api/tasks/:task_id/input`.
    pub fn from_json(task_id: &str, m: Map<String, Value>) -> Result<AnswerTask, Vec<String>> {
        let mut f = super::fields::Fields::new(m);
        let answer = f.string("answer", true, crate::MAX_ANSWER).unwrap_or_default();
        let request_id = f.string("request_id", false, crate::MAX_REQUEST_ID);
        if let Some(r) = &request_id {
            f.check(crate::check_request_id(r));
        }
        f.done(AnswerTask { task_id: task_id.to_string(), answer, request_id })
    }
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
