//! Agents: listing, one agent, restart, and checkpoints.

use super::*;

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
    /// The last restart command and what became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartState>,
    /// The model provider account it shares with other agents (its `account` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A provider's limit: no task for it before this instant (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_reason: Option<String>,
}

impl AgentView {
    /// Whether a restart can be asked of it: a supervisor (native, pm2, systemd) would start it
    /// again. An agent that never said, or says `none`, would only stop.
    pub fn restartable(&self) -> bool {
        self.process_info.as_ref().and_then(|p| p.supervisor.as_deref()).is_some_and(|s| s != "none")
    }
}

/// A restart command and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartState {
    pub outcome: crate::RestartOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the command was given (epoch ms).
    pub commanded_at: u64,
    /// When the outcome was known.
    pub at: u64,
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

impl RestartAgent {
    /// Validates the JSON body of `POST /api/admin/agents/:agent_id/restart`.
    pub fn from_json(agent_id: &str, m: Map<String, Value>) -> Result<RestartAgent, Vec<String>> {
        let mut f = super::fields::Fields::new(m);
        let reason = f.string("reason", false, crate::MAX_REASON);
        let force = f.bool("force").unwrap_or(false);
        f.done(RestartAgent { agent_id: agent_id.to_string(), reason, force })
    }
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

/// `POST /api/admin/agents/:agent_id/unlimit`: lifts a provider's limit from the agent and
/// every agent of its account, at once (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlimitAgent {
    #[serde(skip)]
    pub agent_id: String,
}

impl Endpoint for UnlimitAgent {
    type Response = Unlimited;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        format!("/api/admin/agents/{}/unlimit", encode(&self.agent_id))
    }
    fn body(&self) -> Option<Value> {
        Some(Value::Object(Map::new()))
    }
}

/// The agents whose limit was lifted (none were limited: empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unlimited {
    pub agent_id: String,
    pub unlimited: Vec<String>,
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
