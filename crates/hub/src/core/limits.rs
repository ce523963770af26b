//! When the model provider says "stop": a limited attempt is not a failure. Its task goes back
//! to the queue for after the limit (preferring the agent that holds its session), the agent
//! and every agent of its account get nothing until then (freed spread over
//! `limit_wake_spread_ms`, not all at once), and a reset time unknown means a backoff that grows
//! with each limit in a row. Also the live usage of an attempt against the task's caps and the
//! agent's budget, and each attempt's session.

use super::tasks::Attached;
use super::{ConnId, Core, OpenTask, SendKind, Timer};
use crate::auth::Role;
use crate::authz;
use crate::clock::Clock;
use crate::events::Audience;
use crate::model::{TaskStatus, Transition, SESSIONS_KEPT};
use crate::store::{Mutation, Store};
use proto::api::{ApiError, ErrorCode, EventKind, Session, Unlimited};
use proto::{AckStatus, ErrorFrame, FrameErrorCode, HubFrame, Limit, Usage};
use std::time::Duration;

/// A provider's limit on one agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentLimit {
    /// No task before this instant (epoch ms).
    pub until: u64,
    pub reason: String,
}

impl<S: Store, C: Clock> Core<S, C> {
    /// The agents sharing `agent_id`'s provider account, itself first, the rest by id; without
    /// an account, itself alone.
    fn account_peers(&self, agent_id: &str) -> Vec<String> {
        let account = self.agents.get(agent_id).and_then(|a| a.account.clone());
        let mut peers = vec![agent_id.to_string()];
        if let Some(account) = account {
            peers.extend(
                self.agents
                    .values()
                    .filter(|a| a.agent_id != agent_id && a.account.as_deref() == Some(account.as_str()))
                    .map(|a| a.agent_id.clone()),
            );
        }
        peers
    }

    /// `task_limited`: fenced like a report; the task is queued again for after the limit
    /// without counting a failure, and the agent (with its account) is limited until then.
    pub(super) fn on_limited(
        &mut self,
        conn: ConnId,
        agent_id: &str,
        task_id: String,
        generation: u64,
        limit: Limit,
        attached: Attached,
    ) {
        let Some(o) = self.tasks.get(&task_id) else {
            return self.send_error(conn, ErrorFrame::new(FrameErrorCode::NotFound).task(&task_id));
        };
        let head = &o.head;
        if head.generation != generation {
            return self.send_error(conn, super::tasks::stale(&task_id, generation, head.generation));
        }
        let mine = head.assigned_to.as_deref() == Some(agent_id);
        // Our ack was lost and the report came again: the task already waits for the limit.
        if head.status == TaskStatus::Queued && mine && head.prefer_agent.as_deref() == Some(agent_id) {
            let ack = HubFrame::TaskAck { task_id, status: AckStatus::Requeued };
            return self.send(conn, ack, SendKind::Plain);
        }
        if !head.status.is_held() || !mine {
            return self.send_error(conn, super::tasks::not_held(&task_id, head.status));
        }
        let submitted_by = head.submitted_by.clone();
        let Attached { usage, change, session_id } = attached;
        if let Some(u) = usage {
            self.record_usage(&task_id, agent_id, generation, u, &submitted_by);
        }
        self.note_session(&task_id, generation, agent_id, session_id);
        let change = self.keep_change(&task_id, generation, change);
        let now = self.now.wall_ms;
        let level = self.account_peers(agent_id).iter().filter_map(|p| self.agents.get(p)).map(|a| a.limit_level).max();
        let backoff = || {
            let steps = &self.t.limit_backoff;
            let step = steps[(level.unwrap_or(0) as usize).min(steps.len() - 1)];
            now.saturating_add(step.as_millis() as u64)
        };
        let until = match (limit.reset_at_ms, limit.retry_after_ms) {
            (Some(reset), _) => reset.max(now),
            (None, Some(after)) => now.saturating_add(after),
            (None, None) => backoff(),
        }
        .min(now.saturating_add(proto::MAX_LIMIT_WAIT_MS));
        let message = limit.message.clone().unwrap_or_else(|| "rate limited".into());
        let reason = format!(
            "limited by the model provider on {agent_id} ({}); queued again for {} (not a failure)",
            message,
            human::utc(until)
        );
        tracing::warn!(task_id = %task_id, agent_id, until, message = %message, "model provider limit");
        let prefer_until = until + (self.t.limit_wake_spread + self.t.limit_prefer).as_millis() as u64;
        let agent = agent_id.to_string();
        self.transition(&task_id, TaskStatus::Queued, reason, |t| {
            t.limited_attempts += 1;
            t.not_before = Some(until);
            t.prefer_agent = Some(agent);
            t.prefer_until = Some(prefer_until);
            t.change = change;
        });
        self.arm(Duration::from_millis(prefer_until.saturating_sub(now)), Timer::Redispatch);
        let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: AckStatus::Requeued };
        self.send(conn, ack, SendKind::Ack { task_id });
        self.limit_agents(agent_id, until, message);
    }

    /// Limits the agent and every agent of its account until `until`, each freed a little later
    /// than the one before (spread over `limit_wake_spread_ms`), and steps their backoff up.
    fn limit_agents(&mut self, agent_id: &str, until: u64, reason: String) {
        let peers = self.account_peers(agent_id);
        let n = peers.len() as u64;
        let spread = self.t.limit_wake_spread.as_millis() as u64;
        let level = peers.iter().filter_map(|p| self.agents.get(p)).map(|a| a.limit_level).max().unwrap_or(0);
        let now = self.now.wall_ms;
        for (i, peer) in peers.iter().enumerate() {
            let Some(a) = self.agents.get_mut(peer) else { continue };
            let mine = until + spread * i as u64 / n;
            let until = a.limit.as_ref().map_or(mine, |l| l.until.max(mine));
            a.limit = Some(super::limits::AgentLimit { until, reason: reason.clone() });
            a.limit_level = level.saturating_add(1);
            let account = a.account.clone();
            self.arm(Duration::from_millis(until.saturating_sub(now)), Timer::LimitEnds { agent_id: peer.clone() });
            let kind = EventKind::Limited { agent_id: peer.clone(), account, until, reason: reason.clone() };
            self.event(kind, Audience::of([Some(peer.clone())]));
            self.record_agent(peer);
            self.presence_event(peer);
        }
    }

    /// An agent that joins an account limited now is limited with it.
    pub(super) fn inherit_account_limit(&mut self, agent_id: &str) {
        let peers = self.account_peers(agent_id);
        let now = self.now.wall_ms;
        let Some(limit) = peers[1..]
            .iter()
            .filter_map(|p| self.agents.get(p)?.limit.clone())
            .filter(|l| l.until > now)
            .max_by_key(|l| l.until)
        else {
            return;
        };
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        if a.limit.as_ref().is_some_and(|l| l.until >= limit.until) {
            return;
        }
        let (until, account) = (limit.until, a.account.clone());
        a.limit = Some(limit.clone());
        self.arm(Duration::from_millis(until - now), Timer::LimitEnds { agent_id: agent_id.to_string() });
        let kind = EventKind::Limited { agent_id: agent_id.into(), account, until, reason: limit.reason };
        self.event(kind, Audience::of([Some(agent_id.to_string())]));
    }

    /// The timer of an agent's limit: it ends if its time has come (a later limit re-armed it).
    pub(super) fn limit_may_end(&mut self, agent_id: &str) {
        let now = self.now.wall_ms;
        let Some(a) = self.agents.get_mut(agent_id) else { return };
        if a.limit.as_ref().is_none_or(|l| l.until > now) {
            return;
        }
        a.limit = None;
        tracing::info!(agent_id, "model provider limit over");
        self.event(
            EventKind::Unlimited { agent_id: agent_id.into(), by: "expired".into() },
            Audience::of([Some(agent_id.into())]),
        );
        self.record_agent(agent_id);
        self.presence_event(agent_id);
        self.dispatch_needed = true;
    }

    /// A task held back for a limit enters the queue.
    pub(super) fn not_before_passed(&mut self, task_id: &str) {
        let now = self.now.wall_ms;
        let Some(o) = self.tasks.get_mut(task_id) else { return };
        if o.head.status != TaskStatus::Queued || o.head.not_before.is_some_and(|t| t > now) {
            return;
        }
        o.head.not_before = None;
        o.queued_at = self.now.mono;
        self.queue.insert(&o.head);
        self.dispatch_needed = true;
    }

    /// A task finished on this agent: its account's next limit starts from the first backoff.
    pub(super) fn limit_level_reset(&mut self, agent_id: &str) {
        for peer in self.account_peers(agent_id) {
            if let Some(a) = self.agents.get_mut(&peer).filter(|a| a.limit_level > 0) {
                a.limit_level = 0;
                self.record_agent(&peer);
            }
        }
    }

    /// `agentcom agent unlimit`: lifts the limit of the agent's whole account at once, and lets
    /// the tasks that waited for it into the queue.
    pub(super) fn unlimit(&mut self, agent_id: &str, role: &Role) -> Result<Unlimited, ApiError> {
        authz::admin_only(role, "lifting limits")?;
        if !self.agents.contains_key(agent_id) {
            return Err(
                ApiError::new(ErrorCode::UnknownAgent).msg(format!("no agent {agent_id} was ever seen by this hub"))
            );
        }
        let peers = self.account_peers(agent_id);
        let mut lifted = Vec::new();
        for peer in &peers {
            let Some(a) = self.agents.get_mut(peer) else { continue };
            a.limit_level = 0;
            if a.limit.take().is_some() {
                lifted.push(peer.clone());
                let kind = EventKind::Unlimited { agent_id: peer.clone(), by: role.name().to_string() };
                self.event(kind, Audience::of([Some(peer.clone())]));
                self.presence_event(peer);
            }
            self.record_agent(peer);
        }
        let waiting: Vec<String> = self
            .tasks
            .values()
            .filter(|o| o.head.status == TaskStatus::Queued && o.head.not_before.is_some())
            .filter(|o| o.head.prefer_agent.as_ref().is_some_and(|p| peers.contains(p)))
            .map(|o| o.head.task_id.clone())
            .collect();
        let now = self.now.wall_ms;
        for id in waiting {
            if let Some(o) = self.tasks.get_mut(&id) {
                o.head.not_before = Some(now);
            }
            self.not_before_passed(&id);
        }
        tracing::info!(agent_id, by = role.name(), lifted = ?lifted, "model provider limit lifted");
        self.dispatch_needed = true;
        Ok(Unlimited { agent_id: agent_id.to_string(), unlimited: lifted })
    }

    /// After a reload: the timers of the limits on record (those already over end at once).
    pub(super) fn arm_limits(&mut self) {
        let now = self.now.wall_ms;
        let limited: Vec<(String, u64)> =
            self.agents.values().filter_map(|a| a.limit.as_ref().map(|l| (a.agent_id.clone(), l.until))).collect();
        for (agent_id, until) in limited {
            self.arm(Duration::from_millis(until.saturating_sub(now)), Timer::LimitEnds { agent_id });
        }
    }

    /// The agent a queued task waits for: the one with its session, while it is connected and
    /// the preference lasts.
    pub(super) fn preferred_agent<'a>(&'a self, task: &'a OpenTask) -> Option<&'a str> {
        let p = task.head.prefer_agent.as_deref()?;
        let lasts = task.head.prefer_until.is_some_and(|t| t > self.now.wall_ms);
        let connected = self.agents.get(p).is_some_and(|a| a.conn.is_some());
        (lasts && connected).then_some(p)
    }

    /// Records the attempt's session (once per attempt and id), with a history line.
    pub(super) fn note_session(&mut self, task_id: &str, generation: u64, agent_id: &str, session: Option<String>) {
        let Some(session_id) = session else { return };
        let now = self.now.wall_ms;
        let Some(o) = self.tasks.get_mut(task_id) else { return };
        let h = &mut o.head;
        if h.sessions.iter().any(|s| s.generation == generation && s.session_id == session_id) {
            return;
        }
        h.sessions.retain(|s| s.generation != generation);
        h.sessions.push(Session {
            generation,
            agent_id: agent_id.to_string(),
            session_id: session_id.clone(),
            at: now,
        });
        let excess = h.sessions.len().saturating_sub(SESSIONS_KEPT);
        h.sessions.drain(..excess);
        let tr = Transition {
            at: now,
            from: Some(h.status),
            to: h.status,
            reason: format!("session {session_id} on {agent_id} (attempt {generation})"),
            agent_id: Some(agent_id.to_string()),
            generation,
        };
        h.updated_at = now;
        self.pending.push(Mutation::PutHead(Box::new(h.clone())));
        self.pending.push(Mutation::AddTransition { task_id: task_id.to_string(), transition: tr });
    }

    /// `task_usage`: what the attempt has cost so far. An attempt that crosses its task's cap, or
    /// its agent's daily budget, is stopped; the task fails with `budget_exceeded`, not retried.
    pub(super) fn on_live_usage(
        &mut self,
        agent_id: &str,
        task_id: &str,
        generation: u64,
        usage: Usage,
        session: Option<String>,
    ) {
        if self.held_by(task_id, agent_id) != Some(generation) {
            return;
        }
        self.note_session(task_id, generation, agent_id, session);
        let usage = usage.within_limits();
        let Some(why) = self.over_budget(task_id, agent_id, &usage) else { return };
        let Some(o) = self.tasks.get(task_id) else { return };
        let submitted_by = o.head.submitted_by.clone();
        tracing::warn!(task_id, agent_id, reason = %why, "stopping an attempt over budget");
        self.record_usage(task_id, agent_id, generation, usage, &submitted_by);
        let reason = format!("budget_exceeded: {why}");
        let last = reason.clone();
        self.transition(task_id, TaskStatus::DeadLetter, reason.clone(), |t| t.last_error = Some(last));
        if let Some(conn) = self.agents.get(agent_id).and_then(|a| a.conn) {
            let frame = HubFrame::TaskCancelled {
                task_id: task_id.to_string(),
                timestamp: self.now.wall_ms,
                reason: Some(reason),
            };
            self.send(conn, frame, SendKind::Push { dispatch_started: None });
        }
    }

    /// Why the attempt's cost so far (`live`) puts it over a cap: the task's (with what its
    /// earlier attempts cost) or its agent's budget for the day.
    fn over_budget(&self, task_id: &str, agent_id: &str, live: &Usage) -> Option<String> {
        if let Some(why) = self.over_task_cap(task_id, live) {
            return Some(why);
        }
        let spend = self.spend_of(agent_id);
        let (day_cost, day_tokens) =
            (spend.cost_usd + live.cost_usd.unwrap_or(0.0), spend.tokens.saturating_add(live.tokens()));
        if let Some(b) = spend.budget_usd.filter(|b| day_cost > *b) {
            return Some(format!("agent {agent_id} at ${day_cost:.4} today, over its daily budget ${b}"));
        }
        if let Some(b) = spend.budget_tokens.filter(|b| day_tokens > *b) {
            return Some(format!("agent {agent_id} at {day_tokens} tokens today, over its daily budget {b}"));
        }
        None
    }

    /// Why the task's cost (its finished attempts' and `live`) is over one of its caps.
    pub(super) fn over_task_cap(&self, task_id: &str, live: &Usage) -> Option<String> {
        let h = &self.tasks.get(task_id)?.head;
        let (cost, tokens) = (h.spent_usd + live.cost_usd.unwrap_or(0.0), h.spent_tokens.saturating_add(live.tokens()));
        if let Some(cap) = h.max_cost_usd.filter(|cap| cost > *cap) {
            return Some(format!("${cost:.4} spent, over the task's max_cost_usd ${cap}"));
        }
        if let Some(cap) = h.max_tokens.filter(|cap| tokens > *cap) {
            return Some(format!("{tokens} tokens used, over the task's max_tokens {cap}"));
        }
        None
    }
}
