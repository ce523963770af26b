//! Usage as agents report it, spend per UTC day, and budgets: an agent over its budget (or
//! everyone, over the fleet's) gets no new task until midnight UTC; its tasks stay queued for
//! others. Each budget that runs out says so once a day (event, log, webhook).

use super::{Core, Timer};
use crate::clock::Clock;
use crate::config::Budget;
use crate::events::Audience;
use crate::store::{Mutation, Store, DAY_MS};
use proto::api::{EventKind, Spend};
use proto::Usage;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub(super) fn day_of(wall_ms: u64) -> u64 {
    wall_ms / DAY_MS
}

pub(super) fn day_start(wall_ms: u64) -> u64 {
    day_of(wall_ms) * DAY_MS
}

/// Today's spend, fleet-wide and per agent, and which budgets have run out.
#[derive(Debug, Default)]
pub(super) struct Spending {
    day: u64,
    fleet: (f64, u64),
    agents: HashMap<String, (f64, u64)>,
    fleet_exhausted: bool,
    exhausted: HashSet<String>,
}

impl Spending {
    pub fn restore(&mut self, day: u64, by_agent: HashMap<String, (f64, u64)>) {
        *self = Spending::default();
        self.day = day;
        for (agent, (cost, tokens)) in by_agent {
            self.fleet.0 += cost;
            self.fleet.1 = self.fleet.1.saturating_add(tokens);
            self.agents.insert(agent, (cost, tokens));
        }
    }
}

/// The usage of a report: the sidecar's `usage`, else the result's own `usage`, else AgentCom
/// v1's `tokens_used` (a number, read as total tokens).
pub(super) fn usage_of(usage: Option<Usage>, result: Option<&Value>, tokens_used: Option<&Value>) -> Option<Usage> {
    let from_result =
        || result.and_then(|r| r.get("usage")).and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
    let from_v1 = || tokens_used.and_then(Value::as_u64).map(|n| Usage { total_tokens: Some(n), ..Usage::default() });
    // Nonsense from the wire (a negative, infinite or absurd count or cost) is not spend.
    let u = usage.or_else(from_result).or_else(from_v1)?.within_limits();
    (!u.is_empty()).then_some(u)
}

impl<S: Store, C: Clock> Core<S, C> {
    fn budget_of(&self, agent_id: &str) -> Budget {
        self.limits.budgets.agents.get(agent_id).copied().unwrap_or_default()
    }

    /// Today's spend of an agent against its budget.
    pub(super) fn spend_of(&self, agent_id: &str) -> Spend {
        let (cost_usd, tokens) = self.spending.agents.get(agent_id).copied().unwrap_or((0.0, 0));
        let b = self.budget_of(agent_id);
        Spend {
            cost_usd,
            tokens,
            budget_usd: b.daily_usd,
            budget_tokens: b.daily_tokens,
            exhausted: self.spending.exhausted.contains(agent_id),
        }
    }

    /// The fleet's spend today against the fleet's budget.
    pub(super) fn fleet_spend(&self) -> Spend {
        let b = self.limits.budgets.fleet;
        Spend {
            cost_usd: self.spending.fleet.0,
            tokens: self.spending.fleet.1,
            budget_usd: b.daily_usd,
            budget_tokens: b.daily_tokens,
            exhausted: self.spending.fleet_exhausted,
        }
    }

    /// Whether the agent may be given a task today.
    pub(super) fn within_budget(&self, agent_id: &str) -> bool {
        !self.spending.fleet_exhausted && !self.spending.exhausted.contains(agent_id)
    }

    pub(super) fn fleet_within_budget(&self) -> bool {
        !self.spending.fleet_exhausted
    }

    /// Stores one attempt's usage, adds it to today's spend, and stops what ran out of budget.
    pub(super) fn record_usage(
        &mut self,
        task_id: &str,
        agent_id: &str,
        generation: u64,
        usage: Usage,
        submitted_by: &str,
    ) {
        if day_of(self.now.wall_ms) != self.spending.day {
            self.new_day();
        }
        let at = self.now.wall_ms;
        self.pending.push(Mutation::AddUsage {
            task_id: task_id.to_string(),
            agent_id: agent_id.to_string(),
            generation,
            at,
            usage: usage.clone(),
        });
        self.metrics.record_usage(&usage);
        let (cost, tokens) = (usage.cost_usd.unwrap_or(0.0), usage.tokens());
        // The task's own tally, for its caps (saved with the transition that follows).
        if let Some(o) = self.tasks.get_mut(task_id) {
            o.head.spent_usd += cost;
            o.head.spent_tokens = o.head.spent_tokens.saturating_add(tokens);
        }
        let spent = self.spending.agents.entry(agent_id.to_string()).or_default();
        spent.0 += cost;
        spent.1 = spent.1.saturating_add(tokens);
        let agent_total = *spent;
        self.spending.fleet.0 += cost;
        self.spending.fleet.1 = self.spending.fleet.1.saturating_add(tokens);
        let audience = Audience::of([Some(agent_id.to_string()), Some(submitted_by.to_string())]);
        self.event(EventKind::Usage { task_id: task_id.into(), agent_id: agent_id.into(), usage }, audience);
        let b = self.budget_of(agent_id);
        if b.is_set() && b.exceeded_by(agent_total.0, agent_total.1) && self.spending.exhausted.insert(agent_id.into())
        {
            tracing::warn!(
                agent_id,
                cost_usd = agent_total.0,
                tokens = agent_total.1,
                "agent over its daily budget; no new task until midnight UTC"
            );
            let spend = self.spend_of(agent_id);
            self.event(
                EventKind::BudgetExhausted { agent_id: Some(agent_id.into()), spend },
                Audience::of([Some(agent_id.into())]),
            );
        }
        let f = self.limits.budgets.fleet;
        if f.is_set() && !self.spending.fleet_exhausted && f.exceeded_by(self.spending.fleet.0, self.spending.fleet.1) {
            self.spending.fleet_exhausted = true;
            tracing::warn!(
                cost_usd = self.spending.fleet.0,
                tokens = self.spending.fleet.1,
                "fleet over its daily budget; no new task until midnight UTC"
            );
            self.event(EventKind::BudgetExhausted { agent_id: None, spend: self.fleet_spend() }, Audience::default());
        }
    }

    /// Arms the midnight timer (UTC).
    pub(super) fn arm_new_day(&mut self) {
        let next = (day_of(self.now.wall_ms) + 1) * DAY_MS;
        self.arm(Duration::from_millis(next.saturating_sub(self.now.wall_ms)), Timer::NewDay);
    }

    /// Midnight UTC: every budget starts over, and agents held back may work again.
    pub(super) fn new_day(&mut self) {
        let day = day_of(self.now.wall_ms);
        if day != self.spending.day {
            if !self.spending.exhausted.is_empty() || self.spending.fleet_exhausted {
                tracing::info!("a new UTC day: budgets start over");
            }
            self.spending.restore(day, HashMap::new());
            self.dispatch_needed = true;
        }
    }
}
