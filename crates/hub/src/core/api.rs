//! The HTTP requests the core answers, as domain requests and results: the HTTP layer parses
//! and validates, the core decides, and only the HTTP layer knows status codes.

use super::{Core, Effect, Out, SendKind};
use crate::auth::{self, Role};
use crate::authz;
use crate::clock::Clock;
use crate::model::{TaskStatus, TokenRecord};
use crate::paging;
use crate::store::{Mutation, Store};
use proto::api::{
    AgentList, AgentView, AnswerTask, Answered, ApiError, CheckpointStored, Done, ErrorCode, RestartAgent,
    RestartCommanded, Stats, SubmitTask, TaskChanged, TaskSubmitted, TokenCreated, TokenInfo, TokenList, TokensRevoked,
};
use proto::HubFrame;
use serde_json::{Map, Value};

#[derive(Debug)]
pub enum ApiRequest {
    /// Who holds this token. Reads are served off the core thread; they ask this first.
    Authenticate,
    Submit(SubmitTask),
    Retry(String),
    Cancel(String),
    Stats,
    Agents {
        limit: Option<u32>,
        cursor: Option<String>,
    },
    Agent(String),
    CreateToken(String),
    ListTokens {
        limit: Option<u32>,
        cursor: Option<String>,
    },
    RevokeToken(String),
    RestartAgent(RestartAgent),
    PutCheckpoint {
        agent_id: String,
        body: Map<String, Value>,
    },
    Answer(AnswerTask),
    Metrics,
}

/// What the core answers; each variant is one route's response type.
#[derive(Debug)]
pub enum Reply {
    Role(Role),
    Submitted(TaskSubmitted),
    Changed(TaskChanged),
    Stats(Stats),
    Agents(AgentList),
    Agent(Box<AgentView>),
    TokenCreated(TokenCreated),
    Tokens(TokenList),
    Revoked(TokensRevoked),
    Restart(RestartCommanded),
    CheckpointStored(CheckpointStored),
    Answered(Answered),
    Metrics(String),
}

pub type ApiResult = Result<Reply, ApiError>;

impl<S: Store, C: Clock> Core<S, C> {
    fn authenticate(&self, bearer: Option<&str>) -> Result<Role, ApiError> {
        let token = bearer.ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized)
                .msg("missing Authorization: Bearer token (the admin token or an agent token)")
        })?;
        let hash = auth::hash_token(token);
        if auth::hashes_equal(&hash, &self.admin_hash) {
            return Ok(Role::Admin);
        }
        match self.tokens.get(&hash) {
            Some(rec) if auth::hashes_equal(&rec.hash, &hash) => Ok(Role::Agent(rec.agent_id.clone())),
            _ => Err(ApiError::new(ErrorCode::InvalidToken)
                .msg("the token is neither this hub's admin token nor a current agent token")),
        }
    }

    pub(super) fn on_api(&mut self, bearer: Option<String>, req: ApiRequest) -> Result<Reply, ApiError> {
        if let ApiRequest::Metrics = req {
            return Ok(Reply::Metrics(self.render_metrics()));
        }
        let role = self.authenticate(bearer.as_deref())?;
        match req {
            ApiRequest::Metrics => unreachable!("handled above"),
            ApiRequest::Authenticate => Ok(Reply::Role(role)),
            ApiRequest::Submit(n) => self.submit(n, &role).map(Reply::Submitted),
            ApiRequest::Retry(id) => self.retry(&id, &role).map(Reply::Changed),
            ApiRequest::Cancel(id) => self.cancel(&id, &role).map(Reply::Changed),
            ApiRequest::Answer(a) => self.answer(a, &role).map(Reply::Answered),
            ApiRequest::Stats => {
                let by_status: std::collections::BTreeMap<TaskStatus, u64> =
                    TaskStatus::ALL.iter().map(|s| (*s, self.counts.get(s).copied().unwrap_or(0))).collect();
                let total = by_status.values().sum();
                Ok(Reply::Stats(Stats { total, by_status, agents: self.agent_counts().into_iter().collect() }))
            }
            ApiRequest::Agents { limit, cursor } => {
                let limit = paging::page_size(limit)?;
                let after: Option<String> = paging::decode(cursor.as_deref())?;
                let range = match &after {
                    Some(a) => {
                        self.agents.range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    }
                    None => self.agents.range::<String, _>(..),
                };
                let mut agents: Vec<_> = range.take(limit + 1).map(|(_, a)| self.agent_view(a)).collect();
                let next_cursor = (agents.len() > limit).then(|| {
                    agents.truncate(limit);
                    paging::encode(&agents[limit - 1].agent_id)
                });
                Ok(Reply::Agents(AgentList { count: agents.len(), agents, next_cursor }))
            }
            ApiRequest::Agent(agent_id) => match self.agents.get(&agent_id) {
                Some(a) => Ok(Reply::Agent(Box::new(self.agent_view(a)))),
                None => Err(ApiError::new(ErrorCode::UnknownAgent)
                    .msg(format!("no agent {agent_id} was ever seen by this hub"))),
            },
            ApiRequest::CreateToken(agent_id) => {
                authz::admin_only(&role, "creating tokens")?;
                let token = auth::generate_token();
                let rec = TokenRecord {
                    hash: auth::hash_token(&token),
                    agent_id: agent_id.clone(),
                    created_at: self.now.wall_ms,
                };
                self.pending.push(Mutation::PutToken(rec.clone()));
                self.tokens.insert(rec.hash.clone(), rec.clone());
                Ok(Reply::TokenCreated(TokenCreated { agent_id, token, created_at: rec.created_at }))
            }
            ApiRequest::ListTokens { limit, cursor } => {
                authz::admin_only(&role, "listing tokens")?;
                let limit = paging::page_size(limit)?;
                let after: Option<(String, u64, String)> = paging::decode(cursor.as_deref())?;
                let mut list: Vec<&TokenRecord> = self.tokens.values().collect();
                list.sort_by(|a, b| (&a.agent_id, a.created_at, &a.hash).cmp(&(&b.agent_id, b.created_at, &b.hash)));
                let start = match &after {
                    Some((a, c, h)) => list.partition_point(|r| (&r.agent_id, r.created_at, &r.hash) <= (a, *c, h)),
                    None => 0,
                };
                let page = &list[start..];
                let more = page.len() > limit;
                let page = &page[..page.len().min(limit)];
                let next_cursor =
                    more.then(|| page.last().map(|r| paging::encode(&(&r.agent_id, r.created_at, &r.hash)))).flatten();
                let tokens: Vec<TokenInfo> = page
                    .iter()
                    .map(|r| TokenInfo {
                        agent_id: r.agent_id.clone(),
                        created_at: r.created_at,
                        fingerprint: r.hash.chars().take(12).collect(),
                    })
                    .collect();
                Ok(Reply::Tokens(TokenList { count: tokens.len(), tokens, next_cursor }))
            }
            ApiRequest::RevokeToken(agent_id) => {
                authz::admin_only(&role, "revoking tokens")?;
                let before = self.tokens.len();
                self.tokens.retain(|_, r| r.agent_id != agent_id);
                let revoked = before - self.tokens.len();
                if revoked == 0 {
                    return Err(ApiError::new(ErrorCode::NotFound).msg(format!("no token for agent {agent_id}")));
                }
                self.pending.push(Mutation::DeleteTokens { agent_id: agent_id.clone() });
                if let Some(conn) = self.agents.get(&agent_id).and_then(|a| a.conn) {
                    let out = Out::Close(1008, "token revoked".into());
                    self.effects.push(Effect::Send { conn, out, kind: SendKind::Plain });
                }
                Ok(Reply::Revoked(TokensRevoked { status: Done::Revoked, agent_id, revoked }))
            }
            ApiRequest::RestartAgent(r) => {
                authz::admin_only(&role, "restarting agents")?;
                let Some(agent) = self.agents.get(&r.agent_id) else {
                    return Err(ApiError::new(ErrorCode::UnknownAgent)
                        .msg(format!("no agent {} was ever seen by this hub", r.agent_id)));
                };
                let Some(conn) = agent.conn else {
                    return Err(ApiError::new(ErrorCode::AgentNotConnected).msg(format!(
                        "agent {} is {}; it gets no commands until it reconnects",
                        r.agent_id,
                        agent.status()
                    )));
                };
                let reason = r.reason.unwrap_or_else(|| "admin_commanded".into());
                let frame = HubFrame::RestartSidecar { reason: reason.clone(), force: r.force };
                self.send(conn, frame, SendKind::Plain);
                Ok(Reply::Restart(RestartCommanded {
                    status: Done::RestartCommanded,
                    agent_id: r.agent_id,
                    reason,
                    force: r.force,
                }))
            }
            ApiRequest::PutCheckpoint { agent_id, body } => {
                authz::may_checkpoint(&role, &agent_id, "write")?;
                let at = self.now.wall_ms;
                self.pending.push(Mutation::PutCheckpoint {
                    agent_id: agent_id.clone(),
                    body: Value::Object(body),
                    at,
                });
                Ok(Reply::CheckpointStored(CheckpointStored { status: Done::Stored, agent_id, updated_at: at }))
            }
        }
    }

    fn render_metrics(&self) -> String {
        let mut by_status: Vec<(&str, u64)> =
            TaskStatus::ALL.iter().map(|s| (s.as_str(), self.counts.get(s).copied().unwrap_or(0))).collect();
        by_status.sort();
        let agents: Vec<(&str, u64)> = self.agent_counts().into_iter().map(|(s, n)| (s.as_str(), n)).collect();
        self.metrics.render(&by_status, &agents, self.conns.len() as u64)
    }
}
