//! Agents and their connections: identify, presence, bans, and the frames agents send.

use super::{ConnId, Core, Effect, Out, OutTx, SendKind, Timer};
use crate::auth;
use crate::clock::Clock;
use crate::events::Audience;
use crate::model::{AgentRecord, AgentStatus, TaskStatus, Transition};
use crate::store::{Mutation, Store};
use proto::api::EventKind;
use proto::{AgentFrame, ErrorFrame, FrameErrorCode, HubFrame, Identify, ProcessInfo, ReportAction};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub(super) struct Agent {
    pub agent_id: String,
    pub conn: Option<ConnId>,
    pub name: Option<String>,
    pub client_type: Option<String>,
    pub capabilities: BTreeSet<String>,
    pub process_info: Option<ProcessInfo>,
    /// When `process_info` was reported (its uptime counts on from there while connected).
    pub process_info_at: u64,
    pub reported_status: Option<String>,
    pub resources: Option<Map<String, Value>>,
    pub connected_at: Option<u64>,
    pub last_seen: u64,
    pub current_task: Option<String>,
    pub restarting: bool,
    /// Orders idle agents: the one idle longest gets the next task.
    pub idle_since: u64,
    /// After a `busy` rejection the agent gets no new task before this instant.
    pub paused_until: Option<Instant>,
    /// The last restart command and what became of it.
    pub restart: Option<proto::api::RestartState>,
    /// The status the last presence event told: an event goes out only when it changes.
    pub told: Option<AgentStatus>,
    /// The model provider account it shares with other agents.
    pub account: Option<String>,
    /// A provider's limit: no task before `until` (epoch ms); and why.
    pub limit: Option<super::limits::AgentLimit>,
    /// Limits in a row without a finished task between.
    pub limit_level: u32,
}

impl Agent {
    fn new(agent_id: String, now_ms: u64) -> Agent {
        Agent {
            agent_id,
            conn: None,
            name: None,
            client_type: None,
            capabilities: BTreeSet::new(),
            process_info: None,
            process_info_at: now_ms,
            reported_status: None,
            resources: None,
            connected_at: None,
            last_seen: now_ms,
            current_task: None,
            restarting: false,
            idle_since: now_ms,
            paused_until: None,
            restart: None,
            told: None,
            account: None,
            limit: None,
            limit_level: 0,
        }
    }

    pub fn from_record(r: AgentRecord) -> Agent {
        Agent {
            name: r.name,
            client_type: r.client_type,
            capabilities: r.capabilities.into_iter().collect(),
            process_info: r.process_info,
            connected_at: r.connected_at,
            restarting: r.restarting,
            account: r.account,
            limit: r
                .limited_until
                .map(|until| super::limits::AgentLimit { until, reason: r.limit_reason.unwrap_or_default() }),
            limit_level: r.limit_level,
            ..Agent::new(r.agent_id, r.last_seen)
        }
    }

    /// After a reload: what only memory knows (the socket, the last reports) carries over.
    pub fn keep_live_state(&mut self, old: Agent) {
        self.conn = old.conn;
        self.reported_status = old.reported_status;
        self.resources = old.resources;
        self.paused_until = old.paused_until;
        self.idle_since = old.idle_since;
        self.process_info_at = old.process_info_at;
        self.restart = old.restart;
        self.told = old.told;
    }

    pub fn record(&self) -> AgentRecord {
        AgentRecord {
            agent_id: self.agent_id.clone(),
            name: self.name.clone(),
            client_type: self.client_type.clone(),
            capabilities: self.capabilities.iter().cloned().collect(),
            process_info: self.process_info.clone(),
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            restarting: self.restarting,
            account: self.account.clone(),
            limited_until: self.limit.as_ref().map(|l| l.until),
            limit_reason: self.limit.as_ref().map(|l| l.reason.clone()),
            limit_level: self.limit_level,
        }
    }

    pub fn status(&self) -> AgentStatus {
        if self.restarting {
            AgentStatus::Restarting
        } else if self.conn.is_none() {
            AgentStatus::Offline
        } else if self.current_task.is_some() {
            AgentStatus::Working
        } else if self.limit.is_some() {
            AgentStatus::Limited
        } else {
            AgentStatus::Idle
        }
    }

    pub fn view(&self, spend: proto::api::Spend, needs_input: bool, now_ms: u64) -> proto::api::AgentView {
        // An uptime reported at connect counts on while the agent stays connected.
        let mut process_info = self.process_info.clone();
        if let Some(p) = process_info.as_mut().filter(|p| self.conn.is_some() && p.status.as_deref() == Some("online"))
        {
            p.uptime_ms = p.uptime_ms.map(|u| u + now_ms.saturating_sub(self.process_info_at));
        }
        proto::api::AgentView {
            agent_id: self.agent_id.clone(),
            name: self.name.clone(),
            status: self.status(),
            connected: self.conn.is_some(),
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            capabilities: self.capabilities.iter().cloned().collect(),
            client_type: self.client_type.clone(),
            current_task: self.current_task.clone(),
            reported_status: self.reported_status.clone(),
            pm2_info: process_info.clone(),
            process_info,
            resources: self.resources.clone(),
            spend,
            needs_input,
            restart: self.restart.clone(),
            account: self.account.clone(),
            limited_until: self.limit.as_ref().map(|l| l.until),
            limit_reason: self.limit.as_ref().map(|l| l.reason.clone()),
        }
    }
}

pub(super) struct Conn {
    pub tx: OutTx,
    pub agent: Option<String>,
}

pub(super) struct Ban {
    level: usize,
    until: Instant,
    last: Instant,
}

impl<S: Store, C: Clock> Core<S, C> {
    /// Records the agent's presence; it rides along with the next group commit.
    pub(super) fn record_agent(&mut self, agent_id: &str) {
        if let Some(a) = self.agents.get(agent_id) {
            self.pending.push(Mutation::PutAgent(a.record()));
        }
    }

    pub(super) fn on_banned(&mut self, conn: ConnId) {
        self.metrics.bans += 1;
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else { return };
        let now = self.now.mono;
        let ban = self.bans.entry(agent.clone()).or_insert(Ban { level: 0, until: now, last: now });
        // Escalation resets after an hour of good behaviour.
        if now.duration_since(ban.last) > Duration::from_secs(3600) {
            ban.level = 0;
        }
        let d = self.t.bans[ban.level.min(self.t.bans.len() - 1)];
        ban.until = now + d;
        ban.last = now;
        ban.level += 1;
        tracing::warn!(agent_id = %agent, ban_ms = d.as_millis() as u64, "too many protocol violations; identify refused for a while");
    }

    pub(super) fn on_disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        let Some(agent_id) = c.agent else { return };
        let Some(agent) = self.agents.get_mut(&agent_id) else { return };
        if agent.conn != Some(conn) {
            return; // replaced by a newer connection
        }
        agent.conn = None;
        agent.last_seen = self.now.wall_ms;
        tracing::info!(agent_id = %agent_id, "agent disconnected");
        if let Some(task_id) = agent.current_task.clone() {
            if let Some(generation) = self.tasks.get(&task_id).map(|o| o.head.generation) {
                self.arm(self.t.grace_period, Timer::Grace { task_id, generation });
            }
        }
        self.presence_event(&agent_id);
        self.record_agent(&agent_id);
    }

    pub(super) fn on_frame(&mut self, conn: ConnId, frame: AgentFrame) {
        let agent_id = self.conns.get(&conn).and_then(|c| c.agent.clone());
        if let AgentFrame::Identify(id) = frame {
            return self.on_identify(conn, agent_id, *id);
        }
        let Some(agent_id) = agent_id else {
            return self.send_error(conn, ErrorFrame::new(FrameErrorCode::NotIdentified));
        };
        if let Some(a) = self.agents.get_mut(&agent_id) {
            a.last_seen = self.now.wall_ms;
        }
        self.note_claim(&agent_id, &frame);
        match frame {
            AgentFrame::Identify(_) => unreachable!("handled above"),
            AgentFrame::Ping => self.send(conn, HubFrame::Pong { timestamp: self.now.wall_ms }, SendKind::Plain),
            AgentFrame::Status { status } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.reported_status = Some(status.clone());
                }
                self.send(conn, HubFrame::StatusUpdated { status }, SendKind::Plain);
            }
            AgentFrame::TaskAccepted { task_id } => self.on_accepted(conn, &agent_id, task_id),
            AgentFrame::TaskRejected { task_id, reason } => self.on_rejected(conn, &agent_id, task_id, reason),
            AgentFrame::TaskProgress { task_id, progress, execution_event } => {
                self.on_progress(&agent_id, task_id, progress.or(execution_event))
            }
            AgentFrame::WakeResult { task_id, status, attempt, error } => {
                let held = self.tasks.get(&task_id).filter(|o| o.head.assigned_to.as_deref() == Some(&agent_id));
                if let Some(o) = held {
                    let kind = EventKind::Wake {
                        task_id: task_id.clone(),
                        agent_id: agent_id.clone(),
                        status: status.clone(),
                        attempt,
                        error: error.clone(),
                    };
                    let audience = Audience::of([Some(agent_id.clone()), Some(o.head.submitted_by.clone())]);
                    let mut reason = format!("wake_result {status}");
                    if let Some(a) = attempt {
                        reason.push_str(&format!(" (attempt {a})"));
                    }
                    if let Some(e) = error {
                        reason.push_str(&format!(": {e}"));
                    }
                    let tr = Transition {
                        at: self.now.wall_ms,
                        from: Some(o.head.status),
                        to: o.head.status,
                        reason,
                        agent_id: Some(agent_id.clone()),
                        generation: o.head.generation,
                    };
                    self.pending.push(Mutation::AddTransition { task_id, transition: tr });
                    self.event(kind, audience);
                }
            }
            AgentFrame::TaskComplete {
                task_id,
                generation,
                result,
                tokens_used,
                verification_report,
                verification_history,
                usage,
                change,
                session_id,
            } => {
                let usage = super::budget::usage_of(usage, result.as_ref(), tokens_used.as_ref());
                let mut report = Map::new();
                for (k, v) in [
                    ("tokens_used", tokens_used),
                    ("verification_report", verification_report),
                    ("verification_history", verification_history),
                ] {
                    if let Some(v) = v {
                        report.insert(k.into(), v);
                    }
                }
                let attached = super::tasks::Attached { usage, change, session_id };
                self.on_report(conn, &agent_id, task_id, generation, Ok((result, report)), attached);
            }
            AgentFrame::TaskFailed { task_id, generation, reason, error, usage, change, session_id } => {
                let why = reason.or(error).unwrap_or_else(|| "unknown".into());
                let usage = super::budget::usage_of(usage, None, None);
                let attached = super::tasks::Attached { usage, change, session_id };
                self.on_report(conn, &agent_id, task_id, generation, Err(why), attached);
            }
            AgentFrame::TaskLimited { task_id, generation, limit, usage, change, session_id } => {
                let usage = super::budget::usage_of(usage, None, None);
                let attached = super::tasks::Attached { usage, change, session_id };
                self.on_limited(conn, &agent_id, task_id, generation, limit, attached);
            }
            AgentFrame::TaskUsage { task_id, generation, usage, session_id } => {
                self.on_live_usage(&agent_id, &task_id, generation, usage, session_id);
            }
            AgentFrame::TaskRecovering { task_id, .. } => {
                let frame = match self.held_by(&task_id, &agent_id) {
                    Some(generation) => HubFrame::TaskContinue { task_id: task_id.clone(), generation },
                    None => HubFrame::TaskReassign { task_id: task_id.clone() },
                };
                let continues = matches!(frame, HubFrame::TaskContinue { .. });
                self.send(conn, frame, SendKind::Plain);
                if continues {
                    // An answer the sidecar has not confirmed goes out again after a reconnect.
                    self.send_answer(conn, &task_id);
                }
            }
            AgentFrame::StateReport { task_id, generation, .. } => {
                self.on_state_report(conn, &agent_id, task_id, generation)
            }
            AgentFrame::AgentRestarting { reason } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.restarting = true;
                }
                self.record_agent(&agent_id);
                self.presence_event(&agent_id);
                self.restart_outcome(&agent_id, proto::RestartOutcome::Accepted, reason.clone());
                tracing::info!(agent_id = %agent_id, reason = reason.as_deref().unwrap_or(""), "agent restarting");
            }
            AgentFrame::RestartOutcome { outcome, reason } => {
                tracing::info!(agent_id = %agent_id, outcome = outcome.as_str(), reason = reason.as_deref().unwrap_or(""), "restart answered");
                self.restart_outcome(&agent_id, outcome, reason);
            }
            AgentFrame::NeedsInput { task_id, request_id, question, options } => {
                self.on_needs_input(conn, &agent_id, task_id, request_id, question, options)
            }
            AgentFrame::TaskInputAck { task_id, request_id } => self.on_input_ack(&agent_id, task_id, request_id),
            AgentFrame::NeedsInputClosed { task_id, request_id, reason } => {
                let reason = reason.unwrap_or_else(|| "the agent no longer asks it".into());
                self.on_input_closed(&agent_id, &task_id, &request_id, &reason)
            }
            AgentFrame::ResourceReport(map) => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    // Our sidecars send their supervisor's view here when it changes.
                    if let Some(info) = map.get("process_info").and_then(|v| serde_json::from_value(v.clone()).ok()) {
                        a.process_info = Some(info);
                        a.process_info_at = self.now.wall_ms;
                    }
                    a.resources = Some(map);
                }
            }
        }
    }

    /// Any frame about a task the agent holds (for the current attempt) claims it after a reconnect.
    fn note_claim(&mut self, agent_id: &str, frame: &AgentFrame) {
        let (task_id, generation) = match frame {
            AgentFrame::TaskAccepted { task_id }
            | AgentFrame::TaskProgress { task_id, .. }
            | AgentFrame::WakeResult { task_id, .. }
            | AgentFrame::NeedsInputClosed { task_id, .. }
            | AgentFrame::TaskRecovering { task_id, .. } => (task_id, None),
            AgentFrame::TaskComplete { task_id, generation, .. }
            | AgentFrame::TaskFailed { task_id, generation, .. } => (task_id, Some(*generation)),
            AgentFrame::StateReport { task_id: Some(task_id), generation, .. } => (task_id, *generation),
            _ => return,
        };
        if let Some(current) = self.held_by(task_id, agent_id) {
            if generation.is_none_or(|g| g == current) {
                if let Some(o) = self.tasks.get_mut(task_id) {
                    o.unclaimed = None;
                }
            }
        }
    }

    /// The generation of `task_id` if `agent_id` holds it now.
    pub(super) fn held_by(&self, task_id: &str, agent_id: &str) -> Option<u64> {
        self.tasks
            .get(task_id)
            .filter(|o| o.head.status.is_held() && o.head.assigned_to.as_deref() == Some(agent_id))
            .map(|o| o.head.generation)
    }

    fn on_identify(&mut self, conn: ConnId, bound: Option<String>, id: Identify) {
        let refuse = |core: &mut Self, e: ErrorFrame| {
            core.send_error(conn, e);
            core.effects.push(Effect::Send { conn, out: Out::IdentifyFailed, kind: SendKind::Plain });
        };
        if let Some(b) = &bound {
            if b != &id.agent_id {
                let e =
                    ErrorFrame::new(FrameErrorCode::AlreadyIdentified).message(format!("this connection is agent {b}"));
                return refuse(self, e);
            }
        }
        if let Err(e) = proto::api::check_agent_id(&id.agent_id) {
            let e = ErrorFrame::new(FrameErrorCode::ValidationFailed).message(e);
            return refuse(self, e);
        }
        if let Some(Err(e)) = id.account.as_deref().map(proto::api::check_agent_id) {
            let e = ErrorFrame::new(FrameErrorCode::ValidationFailed).message(e.replacen("agent_id", "account", 1));
            return refuse(self, e);
        }
        if let Some(ban) = self.bans.get(&id.agent_id) {
            if ban.until > self.now.mono {
                let ms = ban.until.duration_since(self.now.mono).as_millis() as u64;
                let e = ErrorFrame { retry_after_ms: Some(ms), ..ErrorFrame::new(FrameErrorCode::IdentifyRefused) };
                self.send_error(conn, e);
                self.effects.push(Effect::Send {
                    conn,
                    out: Out::Close(1008, "identify refused after protocol violations".into()),
                    kind: SendKind::Plain,
                });
                return;
            }
        }
        let hash = auth::hash_token(&id.token);
        let allowed = if auth::hashes_equal(&hash, &self.admin_hash) {
            Ok(())
        } else {
            match self.tokens.get(&hash) {
                Some(rec) if auth::hashes_equal(&rec.hash, &hash) && rec.agent_id == id.agent_id => Ok(()),
                Some(_) => Err(FrameErrorCode::TokenAgentMismatch),
                None => Err(FrameErrorCode::InvalidToken),
            }
        };
        if let Err(e) = allowed {
            tracing::warn!(agent_id = %id.agent_id, error = %e, "identify refused");
            return refuse(self, ErrorFrame::new(e));
        }
        let agent_id = id.agent_id.clone();
        let now = self.now.wall_ms;
        if !self.agents.contains_key(&agent_id) {
            // First identify since the hub started: the store may say it holds a task.
            let held = self
                .tasks
                .values()
                .find(|o| o.head.status.is_held() && o.head.assigned_to.as_deref() == Some(agent_id.as_str()))
                .map(|o| o.head.task_id.clone());
            let mut agent = Agent::new(agent_id.clone(), now);
            agent.current_task = held;
            self.agents.insert(agent_id.clone(), agent);
        }
        let agent = self.agents.get_mut(&agent_id).expect("inserted above");
        let replaced = agent.conn.filter(|c| *c != conn);
        agent.conn = Some(conn);
        agent.name = id.name;
        agent.client_type = id.client_type;
        agent.capabilities = id.capabilities.into_iter().collect();
        agent.process_info = id.process_info.or(id.pm2_info);
        agent.process_info_at = now;
        agent.reported_status = id.status;
        agent.connected_at = Some(now);
        agent.last_seen = now;
        agent.restarting = false;
        agent.paused_until = None;
        agent.account = id.account;
        if agent.current_task.is_none() {
            agent.idle_since = now;
        }
        // A new connection must claim the task the hub thinks it holds, or lose it after the
        // grace period: a sidecar that restarted with an empty queue must not block forever.
        let claim = agent.current_task.clone().filter(|_| replaced.is_some() || bound.is_none());
        if let Some(task_id) = claim {
            if let Some(o) = self.tasks.get_mut(&task_id) {
                o.unclaimed = Some(conn);
                let generation = o.head.generation;
                self.arm(self.t.grace_period, Timer::Claim { task_id, generation, conn });
            }
        }
        if let Some(old) = replaced {
            if let Some(c) = self.conns.get_mut(&old) {
                c.agent = None;
            }
            self.effects.push(Effect::Send {
                conn: old,
                out: Out::Close(1000, "replaced by a newer connection".into()),
                kind: SendKind::Plain,
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(agent_id.clone());
        }
        tracing::info!(agent_id = %agent_id, replaced = replaced.is_some(), "agent identified");
        self.inherit_account_limit(&agent_id);
        self.record_agent(&agent_id);
        self.presence_event(&agent_id);
        self.effects.push(Effect::Send { conn, out: Out::Identified(agent_id.clone()), kind: SendKind::Plain });
        self.send(conn, HubFrame::Identified { agent_id }, SendKind::Plain);
        self.dispatch_needed = true;
    }

    fn on_state_report(&mut self, conn: ConnId, agent_id: &str, task_id: Option<String>, generation: Option<u64>) {
        let Some(task_id) = task_id else {
            // The agent holds nothing. Release a task it held on an earlier connection (not yet
            // claimed on this one) now rather than after the lease; a task assigned on this
            // connection may simply still be in flight to it.
            let held = self.agents.get(agent_id).and_then(|a| a.current_task.clone());
            if let Some(held) = held.filter(|h| self.tasks.get(h).is_some_and(|o| o.unclaimed == Some(conn))) {
                self.requeue(&held, format!("released: {agent_id} reports no task"));
            }
            let ack = HubFrame::StateReportAck { task_id: None, action: ReportAction::Continue };
            return self.send(conn, ack, SendKind::Plain);
        };
        let action = match self.held_by(&task_id, agent_id) {
            Some(g) if generation.is_none_or(|r| r == g) => ReportAction::Continue,
            _ => ReportAction::Abort,
        };
        self.send(conn, HubFrame::StateReportAck { task_id: Some(task_id.clone()), action }, SendKind::Plain);
        if action == ReportAction::Continue {
            self.send_answer(conn, &task_id);
        }
    }

    /// The agent as the API shows it: with its spend and whether its task waits for a person.
    pub(super) fn agent_view(&self, a: &Agent) -> proto::api::AgentView {
        let needs_input =
            a.current_task.as_ref().and_then(|t| self.tasks.get(t)).is_some_and(|o| o.head.needs_input.is_some());
        a.view(self.spend_of(&a.agent_id), needs_input, self.now.wall_ms)
    }

    /// Tells event readers an agent's presence changed: once per change of its status (a
    /// restarting agent that then disconnects is still restarting).
    pub(super) fn presence_event(&mut self, agent_id: &str) {
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        let status = a.status();
        if a.told == Some(status) {
            return;
        }
        a.told = Some(status);
        let kind = proto::api::EventKind::Agent { agent_id: agent_id.into(), status, connected: a.conn.is_some() };
        self.event(kind, Audience::of([Some(agent_id.to_string())]));
    }

    /// Records what became of the agent's restart command, and tells event readers.
    pub(super) fn restart_outcome(&mut self, agent_id: &str, outcome: proto::RestartOutcome, reason: Option<String>) {
        let now = self.now.wall_ms;
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        let commanded_at = a.restart.as_ref().map_or(now, |r| {
            if outcome == proto::RestartOutcome::Commanded {
                now
            } else {
                r.commanded_at
            }
        });
        a.restart = Some(proto::api::RestartState { outcome, reason: reason.clone(), commanded_at, at: now });
        let kind = EventKind::Restart { agent_id: agent_id.into(), outcome, reason };
        self.event(kind, Audience::of([Some(agent_id.to_string())]));
    }

    /// The agent's numbers by status, for stats and metrics.
    pub(super) fn agent_counts(&self) -> Vec<(AgentStatus, u64)> {
        AgentStatus::ALL
            .iter()
            .map(|s| (*s, self.agents.values().filter(|a| a.status() == *s).count() as u64))
            .collect()
    }

    /// Whether a task may be offered to the agent now.
    pub(super) fn available(a: &Agent, now: Instant) -> bool {
        a.conn.is_some() && !a.restarting && a.current_task.is_none() && a.paused_until.is_none_or(|u| u <= now)
    }

    /// A task whose holder's last known state is this agent.
    pub(super) fn holder_online(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .and_then(|o| o.head.assigned_to.as_ref())
            .and_then(|a| self.agents.get(a))
            .is_some_and(|a| a.conn.is_some())
    }

    /// The statuses held tasks can be in: for `on_timer`.
    pub(super) fn is_held(&self, task_id: &str, generation: u64) -> bool {
        self.tasks.get(task_id).is_some_and(|o| o.head.generation == generation && o.head.status.is_held())
    }

    pub(super) fn status_of(&self, task_id: &str, generation: u64) -> Option<TaskStatus> {
        self.tasks.get(task_id).filter(|o| o.head.generation == generation).map(|o| o.head.status)
    }
}
