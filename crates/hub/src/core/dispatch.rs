//! Scheduling: queued tasks (lane, then FIFO) matched with idle agents (longest idle first),
//! and the timers that take tasks back from agents that went quiet.

use super::agents::Agent;
use super::queue::{Class, Entry};
use super::{Core, OpenTask, SendKind, Timer};
use crate::clock::Clock;
use crate::model::{Payload, TaskStatus};
use crate::store::Store;
use proto::{HubFrame, TaskAssign};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

impl<S: Store, C: Clock> Core<S, C> {
    fn fits(class: &Class, a: &Agent) -> bool {
        // An integrator takes integration tasks only, and they go to integrators only.
        let integration = class.caps.iter().any(|c| c.starts_with("integrate:"));
        let integrator = a.capabilities.contains(proto::api::INTEGRATE_CAPABILITY);
        integration == integrator
            && class.pin.as_ref().is_none_or(|pin| pin == &a.agent_id)
            && class.caps.iter().all(|c| a.capabilities.contains(c))
    }

    /// After `task_rejected`, not offered to the same agent again during the cooldown.
    fn refused_by(t: &OpenTask, a: &Agent, now: Instant) -> bool {
        t.rejected_by.as_ref().is_some_and(|(who, until)| who == &a.agent_id && *until > now)
    }

    /// Matches queued tasks (lane, then FIFO, across classes) with idle agents (longest idle
    /// first). Each class is matched against the idle agents once; a class none of them can
    /// take is skipped whole, however many tasks it holds.
    pub(super) fn dispatch(&mut self) {
        self.tick();
        self.dispatch_needed = false;
        if self.queue.is_empty() || !self.fleet_within_budget() {
            return;
        }
        let now = self.now.mono;
        let mut idle: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| Self::available(a, now) && a.limit.is_none() && self.within_budget(&a.agent_id))
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_by(|a, b| (a.idle_since, &a.agent_id).cmp(&(b.idle_since, &b.agent_id)));
        // Per class: the idle agents (indices into `idle`) that fit it, and its next entry.
        let mut classes: Vec<(Vec<usize>, std::collections::btree_set::Iter<'_, Entry>)> = Vec::new();
        let mut heads = BinaryHeap::new();
        for (class, entries) in self.queue.classes() {
            let fits: Vec<usize> = (0..idle.len()).filter(|i| Self::fits(class, idle[*i])).collect();
            let mut entries = entries.iter();
            if let (false, Some(first)) = (fits.is_empty(), entries.next()) {
                heads.push(Reverse((first, classes.len())));
                classes.push((fits, entries));
            }
        }
        let mut taken = vec![false; idle.len()];
        let mut free = idle.len();
        let mut plan = Vec::new();
        while free > 0 {
            let Some(Reverse((entry, c))) = heads.pop() else { break };
            let (fits, rest) = &mut classes[c];
            fits.retain(|i| !taken[*i]);
            if fits.is_empty() {
                continue; // every agent that fits this class is spoken for
            }
            let task = &self.tasks[&entry.2];
            // A serial key's tasks go one at a time, in the order they were queued.
            if let Some(k) = &task.head.serial_key {
                if self.serial_held.contains_key(k) || self.queue.serial_head(k) != Some(task.head.seq) {
                    if let Some(next) = rest.next() {
                        heads.push(Reverse((next, c)));
                    }
                    continue;
                }
            }
            let preferred = self.preferred_agent(task);
            let may = |a: &Agent| preferred.is_none_or(|p| p == a.agent_id);
            if let Some(&i) = fits.iter().find(|i| !Self::refused_by(task, idle[**i], now) && may(idle[**i])) {
                taken[i] = true;
                free -= 1;
                plan.push((entry.2.clone(), idle[i].agent_id.clone()));
            }
            if let Some(next) = rest.next() {
                heads.push(Reverse((next, c)));
            }
        }
        if plan.is_empty() {
            return;
        }
        // Payloads of tasks queued in earlier batches are on disk only: one read for the plan.
        let wanted: Vec<&str> =
            plan.iter().filter(|(id, _)| self.tasks[id].payload.is_none()).map(|(id, _)| id.as_str()).collect();
        let mut loaded: HashMap<String, Payload> = if wanted.is_empty() {
            HashMap::new()
        } else {
            match self.store.payloads(&wanted) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read task payloads; dispatch retried in a second");
                    self.arm(Duration::from_secs(1), Timer::Redispatch);
                    return;
                }
            }
        };
        for (task_id, agent_id) in plan {
            let payload = match self.tasks[&task_id].payload.as_deref() {
                Some(p) => p.clone(),
                None => match loaded.remove(&task_id) {
                    Some(p) => p,
                    None => {
                        tracing::error!(task_id = %task_id, "a queued task has no stored payload; leaving it queued");
                        continue;
                    }
                },
            };
            self.assign(&task_id, &agent_id, payload);
        }
    }

    fn assign(&mut self, task_id: &str, agent_id: &str, payload: Payload) {
        let Some(conn) = self.agents.get(agent_id).and_then(|a| a.conn) else { return };
        let now = self.now.wall_ms;
        let agent = agent_id.to_string();
        let resume = self.tasks[task_id].head.sessions.iter().rev().find(|s| s.agent_id == agent_id);
        let resume_session = resume.map(|s| s.session_id.clone());
        let reason = match &resume_session {
            Some(s) => format!("assigned to {agent_id} (resuming session {s})"),
            None => format!("assigned to {agent_id}"),
        };
        self.transition(task_id, TaskStatus::Assigned, reason, |t| {
            t.generation += 1;
            t.attempts += 1;
            t.assigned_to = Some(agent);
            t.assigned_at = Some(now);
            t.prefer_agent = None;
            t.prefer_until = None;
        });
        let open = &self.tasks[task_id];
        let h = &open.head;
        let mut payload = payload;
        // A change sent back by the integration (a conflict, a red check, a reviewer's no): why.
        if let Some(feedback) = h.integration.as_ref().and_then(Self::integration_feedback) {
            payload.extra.insert("integration_feedback".into(), feedback);
        }
        let frame = HubFrame::TaskAssign(TaskAssign {
            task_id: h.task_id.clone(),
            description: payload.description,
            metadata: serde_json::Value::Object(payload.metadata),
            generation: h.generation,
            assigned_at: now,
            priority: Some(h.priority.as_str().to_string()),
            resume_session,
            extra: payload.extra,
        });
        let (generation, queued_at, integrating) = (h.generation, open.queued_at, h.integrates.is_some());
        self.send(conn, frame, SendKind::Push { dispatch_started: Some(queued_at) });
        if integrating {
            self.integration_started(task_id);
        }
        self.arm(self.t.accept_timeout, Timer::AcceptDeadline { task_id: task_id.to_string(), generation });
    }

    pub(super) fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::AcceptDeadline { task_id, generation } => {
                if self.status_of(&task_id, generation) == Some(TaskStatus::Assigned) {
                    let secs = self.t.accept_timeout.as_secs_f64();
                    self.take_back(&task_id, format!("accept_timeout: no task_accepted within {secs}s"));
                }
            }
            Timer::Grace { task_id, generation } => {
                if self.is_held(&task_id, generation) && !self.holder_online(&task_id) {
                    let secs = self.t.grace_period.as_secs_f64();
                    self.take_back(&task_id, format!("lease_expired: agent offline for {secs}s"));
                }
            }
            Timer::RetryDue { task_id, generation } => {
                if self.status_of(&task_id, generation) == Some(TaskStatus::WaitingRetry) {
                    self.transition(&task_id, TaskStatus::Queued, "retry_due".into(), |t| t.retry_at = None);
                }
            }
            Timer::Claim { task_id, generation, conn } => {
                let unclaimed = self.tasks.get(&task_id).is_some_and(|o| o.unclaimed == Some(conn));
                if unclaimed && self.is_held(&task_id, generation) {
                    let secs = self.t.grace_period.as_secs_f64();
                    let reason =
                        format!("unclaimed: agent reconnected without task_recovering or state_report within {secs}s");
                    self.take_back(&task_id, reason);
                }
            }
            Timer::Redispatch => self.dispatch_needed = true,
            Timer::NotBefore { task_id } => self.not_before_passed(&task_id),
            Timer::LimitEnds { agent_id } => self.limit_may_end(&agent_id),
            Timer::NewDay => {
                self.new_day();
                self.arm_new_day();
            }
        }
    }
}
