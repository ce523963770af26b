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
    AgentList, AgentView, AnswerTask, Answered, ApiError, ApproveTask, CancelTask, CheckpointStored, CreateToken, Done,
    Endpoint, ErrorCode, GetAgent, GetStats, IntegrationList, ListAgents, ListIntegrations, ListTokens, PutCheckpoint,
    RejectTask, RestartAgent, RestartCommanded, RetryTask, RevokeTokens, Stats, SubmitTask, TaskChanged,
    TaskIntegration, TaskSubmitted, TokenCreated, TokenInfo, TokenList, TokensRevoked, UnlimitAgent, Unlimited,
};
use proto::HubFrame;
use serde_json::Value;
use tokio::sync::oneshot;

/// Where the core sends one request's answer: its own type, so no caller ever matches a reply it
/// did not ask for.
pub type Tx<T> = oneshot::Sender<Result<T, ApiError>>;

/// The API requests the core answers, each with the channel of its typed answer.
#[derive(Debug)]
pub enum ApiRequest {
    /// Who holds this token. Reads are served off the core thread; they ask this first.
    Authenticate(Tx<Role>),
    Submit(SubmitTask, Tx<TaskSubmitted>),
    Retry(RetryTask, Tx<TaskChanged>),
    Cancel(CancelTask, Tx<TaskChanged>),
    Stats(Tx<Stats>),
    Agents(ListAgents, Tx<AgentList>),
    Agent(GetAgent, Tx<AgentView>),
    CreateToken(CreateToken, Tx<TokenCreated>),
    ListTokens(ListTokens, Tx<TokenList>),
    RevokeToken(RevokeTokens, Tx<TokensRevoked>),
    RestartAgent(RestartAgent, Tx<RestartCommanded>),
    Unlimit(UnlimitAgent, Tx<Unlimited>),
    Approve(ApproveTask, Tx<TaskIntegration>),
    Reject(RejectTask, Tx<TaskIntegration>),
    Integrations(ListIntegrations, Tx<IntegrationList>),
    PutCheckpoint(PutCheckpoint, Tx<CheckpointStored>),
    Answer(AnswerTask, Tx<Answered>),
    /// Prometheus text of the core's counters (no token needed).
    Metrics(Tx<String>),
}

/// A request the core answers, and the type of its answer: the route's own request type of
/// `proto::api` (its `Endpoint::Response`), or one of the two the core alone answers.
pub trait CoreRequest: Send + 'static {
    type Answer: Send + 'static;
    fn into_request(self, tx: Tx<Self::Answer>) -> ApiRequest;
}

/// Who holds a token.
#[derive(Debug)]
pub struct Authenticate;
/// The core's counters as Prometheus text.
#[derive(Debug)]
pub struct Metrics;

macro_rules! core_requests {
    ($($req:ty => $variant:ident;)*) => {$(
        impl CoreRequest for $req {
            type Answer = <$req as Endpoint>::Response;
            fn into_request(self, tx: Tx<Self::Answer>) -> ApiRequest {
                ApiRequest::$variant(self, tx)
            }
        }
    )*};
}

core_requests! {
    SubmitTask => Submit;
    RetryTask => Retry;
    CancelTask => Cancel;
    ListAgents => Agents;
    GetAgent => Agent;
    CreateToken => CreateToken;
    ListTokens => ListTokens;
    RevokeTokens => RevokeToken;
    RestartAgent => RestartAgent;
    UnlimitAgent => Unlimit;
    ApproveTask => Approve;
    RejectTask => Reject;
    ListIntegrations => Integrations;
    PutCheckpoint => PutCheckpoint;
    AnswerTask => Answer;
}

impl CoreRequest for Authenticate {
    type Answer = Role;
    fn into_request(self, tx: Tx<Role>) -> ApiRequest {
        ApiRequest::Authenticate(tx)
    }
}

impl CoreRequest for GetStats {
    type Answer = Stats;
    fn into_request(self, tx: Tx<Stats>) -> ApiRequest {
        ApiRequest::Stats(tx)
    }
}

impl CoreRequest for Metrics {
    type Answer = String;
    fn into_request(self, tx: Tx<String>) -> ApiRequest {
        ApiRequest::Metrics(tx)
    }
}

/// An answer on its way, whatever its type: released once its batch is durable, or turned into
/// the batch's error if the commit failed.
pub(super) trait PendingReply: Send {
    /// Sends the answer; with `failed`, an answer that was not an error becomes that error.
    fn send(self: Box<Self>, failed: Option<ApiError>);
}

struct Pending<T> {
    tx: Tx<T>,
    result: Result<T, ApiError>,
}

impl<T: Send> PendingReply for Pending<T> {
    fn send(self: Box<Self>, failed: Option<ApiError>) {
        let result = match failed {
            Some(e) => self.result.and(Err(e)),
            None => self.result,
        };
        let _ = self.tx.send(result);
    }
}

impl std::fmt::Debug for dyn PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingReply")
    }
}

fn pending<T: Send + 'static>(tx: Tx<T>, result: Result<T, ApiError>) -> Box<dyn PendingReply> {
    Box::new(Pending { tx, result })
}

impl ApiRequest {
    /// The request answered with `e` (a token that does not authenticate).
    fn refused(self, e: ApiError) -> Box<dyn PendingReply> {
        match self {
            ApiRequest::Authenticate(tx) => pending(tx, Err(e)),
            ApiRequest::Submit(_, tx) => pending(tx, Err(e)),
            ApiRequest::Retry(_, tx) | ApiRequest::Cancel(_, tx) => pending(tx, Err(e)),
            ApiRequest::Stats(tx) => pending(tx, Err(e)),
            ApiRequest::Agents(_, tx) => pending(tx, Err(e)),
            ApiRequest::Agent(_, tx) => pending(tx, Err(e)),
            ApiRequest::CreateToken(_, tx) => pending(tx, Err(e)),
            ApiRequest::ListTokens(_, tx) => pending(tx, Err(e)),
            ApiRequest::RevokeToken(_, tx) => pending(tx, Err(e)),
            ApiRequest::RestartAgent(_, tx) => pending(tx, Err(e)),
            ApiRequest::Unlimit(_, tx) => pending(tx, Err(e)),
            ApiRequest::Approve(_, tx) | ApiRequest::Reject(_, tx) => pending(tx, Err(e)),
            ApiRequest::Integrations(_, tx) => pending(tx, Err(e)),
            ApiRequest::PutCheckpoint(_, tx) => pending(tx, Err(e)),
            ApiRequest::Answer(_, tx) => pending(tx, Err(e)),
            ApiRequest::Metrics(tx) => pending(tx, Err(e)),
        }
    }
}

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

    /// Answers one request; the answer is released with the batch's effects.
    pub(super) fn on_api(&mut self, bearer: Option<String>, req: ApiRequest) -> Box<dyn PendingReply> {
        if let ApiRequest::Metrics(tx) = req {
            return pending(tx, Ok(self.render_metrics()));
        }
        let role = match self.authenticate(bearer.as_deref()) {
            Ok(r) => r,
            Err(e) => return req.refused(e),
        };
        match req {
            ApiRequest::Metrics(_) => unreachable!("answered above"),
            ApiRequest::Authenticate(tx) => pending(tx, Ok(role)),
            ApiRequest::Submit(n, tx) => pending(tx, self.submit(n, &role)),
            ApiRequest::Retry(r, tx) => pending(tx, self.retry(&r.task_id, &role)),
            ApiRequest::Cancel(c, tx) => pending(tx, self.cancel(&c.task_id, &role)),
            ApiRequest::Answer(a, tx) => pending(tx, self.answer(a, &role)),
            ApiRequest::Stats(tx) => pending(tx, Ok(self.stats())),
            ApiRequest::Agents(q, tx) => pending(tx, self.agent_page(q)),
            ApiRequest::Agent(q, tx) => pending(tx, self.agent(&q.agent_id)),
            ApiRequest::CreateToken(c, tx) => pending(tx, self.create_token(c.agent_id, &role)),
            ApiRequest::ListTokens(q, tx) => pending(tx, self.token_page(q, &role)),
            ApiRequest::RevokeToken(r, tx) => pending(tx, self.revoke_tokens(r.agent_id, &role)),
            ApiRequest::RestartAgent(r, tx) => pending(tx, self.restart_agent(r, &role)),
            ApiRequest::Unlimit(r, tx) => pending(tx, self.unlimit(&r.agent_id, &role)),
            ApiRequest::Approve(r, tx) => pending(tx, self.approve(&r.task_id, &role)),
            ApiRequest::Reject(r, tx) => pending(tx, self.reject(&r.task_id, &r.reason, &role)),
            ApiRequest::Integrations(q, tx) => pending(tx, Ok(self.integrations(q.target.as_deref()))),
            ApiRequest::PutCheckpoint(c, tx) => pending(tx, self.put_checkpoint(c, &role)),
        }
    }

    fn stats(&self) -> Stats {
        let by_status: std::collections::BTreeMap<TaskStatus, u64> =
            TaskStatus::ALL.iter().map(|s| (*s, self.counts.get(s).copied().unwrap_or(0))).collect();
        let total = by_status.values().sum();
        Stats { total, by_status, agents: self.agent_counts().into_iter().collect() }
    }

    fn agent_page(&self, q: ListAgents) -> Result<AgentList, ApiError> {
        let limit = paging::page_size(q.limit)?;
        let after: Option<String> = paging::decode(q.cursor.as_deref())?;
        let range = match &after {
            Some(a) => self.agents.range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.agents.range::<String, _>(..),
        };
        let mut agents: Vec<_> = range.take(limit + 1).map(|(_, a)| self.agent_view(a)).collect();
        let next_cursor = (agents.len() > limit).then(|| {
            agents.truncate(limit);
            paging::encode(&agents[limit - 1].agent_id)
        });
        Ok(AgentList { count: agents.len(), agents, next_cursor })
    }

    fn agent(&self, agent_id: &str) -> Result<AgentView, ApiError> {
        match self.agents.get(agent_id) {
            Some(a) => Ok(self.agent_view(a)),
            None => {
                Err(ApiError::new(ErrorCode::UnknownAgent)
                    .msg(format!("no agent {agent_id} was ever seen by this hub")))
            }
        }
    }

    fn create_token(&mut self, agent_id: String, role: &Role) -> Result<TokenCreated, ApiError> {
        authz::admin_only(role, "creating tokens")?;
        let token = auth::generate_token();
        let rec =
            TokenRecord { hash: auth::hash_token(&token), agent_id: agent_id.clone(), created_at: self.now.wall_ms };
        self.pending.push(Mutation::PutToken(rec.clone()));
        self.tokens.insert(rec.hash.clone(), rec.clone());
        Ok(TokenCreated { agent_id, token, created_at: rec.created_at })
    }

    fn token_page(&self, q: ListTokens, role: &Role) -> Result<TokenList, ApiError> {
        authz::admin_only(role, "listing tokens")?;
        let limit = paging::page_size(q.limit)?;
        let after: Option<(String, u64, String)> = paging::decode(q.cursor.as_deref())?;
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
        Ok(TokenList { count: tokens.len(), tokens, next_cursor })
    }

    fn revoke_tokens(&mut self, agent_id: String, role: &Role) -> Result<TokensRevoked, ApiError> {
        authz::admin_only(role, "revoking tokens")?;
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
        Ok(TokensRevoked { status: Done::Revoked, agent_id, revoked })
    }

    fn restart_agent(&mut self, r: RestartAgent, role: &Role) -> Result<RestartCommanded, ApiError> {
        authz::admin_only(role, "restarting agents")?;
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
        self.restart_outcome(&r.agent_id, proto::RestartOutcome::Commanded, Some(reason.clone()));
        Ok(RestartCommanded { status: Done::RestartCommanded, agent_id: r.agent_id, reason, force: r.force })
    }

    fn put_checkpoint(&mut self, c: PutCheckpoint, role: &Role) -> Result<CheckpointStored, ApiError> {
        authz::may_checkpoint(role, &c.agent_id, "write")?;
        let at = self.now.wall_ms;
        let agent_id = c.agent_id;
        self.pending.push(Mutation::PutCheckpoint {
            agent_id: agent_id.clone(),
            body: Value::Object(c.checkpoint),
            at,
        });
        Ok(CheckpointStored { status: Done::Stored, agent_id, updated_at: at })
    }

    fn render_metrics(&self) -> String {
        let mut by_status: Vec<(&str, u64)> =
            TaskStatus::ALL.iter().map(|s| (s.as_str(), self.counts.get(s).copied().unwrap_or(0))).collect();
        by_status.sort();
        let agents: Vec<(&str, u64)> = self.agent_counts().into_iter().map(|(s, n)| (s.as_str(), n)).collect();
        self.metrics.render(&by_status, &agents, self.conns.len() as u64)
    }
}
