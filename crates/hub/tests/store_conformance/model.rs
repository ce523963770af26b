//! The store's contract as plain data: what every backend must answer after a sequence of
//! committed batches. Small on purpose: each rule is one line a reader can check.

use super::{Page, Probe, Snap, State};
use hub::model::{AgentRecord, Outcome, Payload, StoredTask, TaskHead, TokenRecord, Transition};
use hub::store::{Mutation, StoredPatch, HISTORY_SHOWN, PROGRESS_KEPT};
use proto::api::{TaskStatus, UsageBy, UsageRow};
use serde_json::Value;
use std::collections::BTreeMap;

struct Task {
    head: TaskHead,
    payload: Payload,
    outcome: Option<Outcome>,
}

struct UsageRecord {
    task_id: String,
    agent_id: String,
    at: u64,
    usage: proto::Usage,
}

#[derive(Default)]
pub struct Model {
    tasks: BTreeMap<String, Task>,
    /// Every transition, in commit order.
    transitions: Vec<(String, Transition)>,
    /// Progress lines kept: (task, generation, body), oldest first.
    progress: Vec<(String, u64, Value)>,
    tokens: BTreeMap<String, TokenRecord>,
    checkpoints: BTreeMap<String, (Value, u64)>,
    agents: BTreeMap<String, AgentRecord>,
    usage: Vec<UsageRecord>,
    /// The latest patch of each task.
    patches: BTreeMap<String, StoredPatch>,
}

/// What a store keeps of a text column: PostgreSQL's text cannot hold NUL, so every store
/// keeps U+FFFD in its place.
pub fn stored_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

impl Model {
    /// One batch, in order (a batch the stores refuse is never applied here).
    pub fn commit(&mut self, batch: &[Mutation]) {
        for m in batch {
            match m.clone() {
                Mutation::InsertTask { head, payload } => {
                    let task = Task { head: *head, payload: *payload, outcome: None };
                    self.tasks.insert(task.head.task_id.clone(), task);
                }
                Mutation::PutHead(head) => {
                    if let Some(t) = self.tasks.get_mut(&head.task_id) {
                        t.head = *head;
                    }
                }
                Mutation::SetOutcome { task_id, outcome } => {
                    if let Some(t) = self.tasks.get_mut(&task_id) {
                        t.outcome = Some(*outcome);
                    }
                }
                Mutation::AddTransition { task_id, mut transition } => {
                    transition.reason = stored_text(&transition.reason);
                    self.transitions.push((task_id, transition));
                }
                Mutation::AddProgress { task_id, generation, body, .. } => {
                    self.progress.push((task_id.clone(), generation, body));
                    let of_task = self.progress.iter().filter(|p| p.0 == task_id).count();
                    let mut drop = of_task.saturating_sub(PROGRESS_KEPT as usize);
                    self.progress.retain(|p| {
                        let old = p.0 == task_id && drop > 0;
                        drop -= usize::from(old);
                        !old
                    });
                }
                Mutation::PutToken(t) => {
                    self.tokens.insert(t.hash.clone(), t);
                }
                Mutation::DeleteTokens { agent_id } => self.tokens.retain(|_, t| t.agent_id != agent_id),
                Mutation::PutCheckpoint { agent_id, body, at } => {
                    self.checkpoints.insert(agent_id, (body, at));
                }
                Mutation::PutAgent(a) => {
                    self.agents.insert(a.agent_id.clone(), a);
                }
                Mutation::PutPatch { task_id, mut patch } => {
                    patch.patch = stored_text(&patch.patch);
                    self.patches.insert(task_id, *patch);
                }
                Mutation::AddUsage { task_id, agent_id, at, mut usage, .. } => {
                    usage.model = usage.model.as_deref().map(stored_text);
                    self.usage.push(UsageRecord { task_id, agent_id, at, usage });
                }
            }
        }
    }

    pub fn state(&self, probe: &Probe) -> State {
        State {
            snapshot: self.snapshot(probe.day_start),
            heads: probe.task_ids.iter().map(|id| self.tasks.get(id).map(|t| t.head.clone())).collect(),
            payloads: probe
                .task_ids
                .iter()
                .filter_map(|id| Some((id.clone(), self.tasks.get(id)?.payload.clone())))
                .collect(),
            tasks: probe.task_ids.iter().map(|id| self.task(id)).collect(),
            transitions: probe
                .task_ids
                .iter()
                .map(|id| {
                    let all: Vec<Transition> =
                        self.transitions.iter().filter(|t| &t.0 == id).map(|t| t.1.clone()).collect();
                    // The newest HISTORY_SHOWN, oldest first.
                    all[all.len().saturating_sub(HISTORY_SHOWN as usize)..].to_vec()
                })
                .collect(),
            pages: super::statuses().map(|s| (s, self.pages(s, probe.page))).collect(),
            checkpoints: probe.agents.iter().map(|a| self.checkpoints.get(a).cloned()).collect(),
            patches: probe.task_ids.iter().map(|id| self.patches.get(id).cloned()).collect(),
            usage: probe
                .usage_queries()
                .map(|(by, since, until, agent)| self.report(by, since, until, agent))
                .collect(),
        }
    }

    fn snapshot(&self, day_start: u64) -> Snap {
        let mut by_seq: Vec<&Task> = self.tasks.values().collect();
        by_seq.sort_by_key(|t| t.head.seq);
        let mut counts = BTreeMap::new();
        for t in &by_seq {
            *counts.entry(t.head.status).or_insert(0) += 1;
        }
        let mut spend_today: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for u in self.usage.iter().filter(|u| u.at >= day_start) {
            let e = spend_today.entry(u.agent_id.clone()).or_default();
            e.0 += u.usage.cost_usd.unwrap_or(0.0);
            e.1 += u.usage.tokens();
        }
        Snap {
            open: by_seq.iter().filter(|t| !t.head.status.is_terminal()).map(|t| t.head.clone()).collect(),
            max_seq: by_seq.last().map_or(0, |t| t.head.seq),
            counts,
            tokens: super::canonical_tokens(self.tokens.values().cloned().collect()),
            agents: self.agents.values().cloned().collect(),
            spend_today,
        }
    }

    fn task(&self, id: &str) -> Option<StoredTask> {
        let t = self.tasks.get(id)?;
        let progress = self.progress.iter().rev().find(|p| p.0 == id && p.1 == t.head.generation).map(|p| p.2.clone());
        let rows: Vec<&proto::Usage> = self.usage.iter().filter(|u| u.task_id == id).map(|u| &u.usage).collect();
        let sum = |f: fn(&proto::Usage) -> Option<u64>| rows.iter().filter_map(|u| f(u)).reduce(|a, b| a + b);
        let usage = (!rows.is_empty()).then(|| proto::Usage {
            input_tokens: sum(|u| u.input_tokens),
            output_tokens: sum(|u| u.output_tokens),
            total_tokens: sum(|u| u.total_tokens),
            cost_usd: rows.iter().filter_map(|u| u.cost_usd).reduce(|a, b| a + b),
            model: None,
        });
        Some(StoredTask {
            head: t.head.clone(),
            payload: t.payload.clone(),
            outcome: t.outcome.clone(),
            progress,
            usage,
        })
    }

    /// Every page of a listing, newest first.
    fn pages(&self, status: Option<TaskStatus>, limit: usize) -> Vec<Page> {
        let mut rows: Vec<&TaskHead> =
            self.tasks.values().map(|t| &t.head).filter(|h| status.is_none_or(|s| h.status == s)).collect();
        rows.sort_by_key(|h| std::cmp::Reverse(h.seq));
        let mut pages: Vec<Page> =
            rows.chunks(limit).map(|c| (c.iter().map(|h| h.task_id.clone()).collect(), true)).collect();
        match pages.last_mut() {
            Some(last) => last.1 = false,
            None => pages.push((Vec::new(), false)),
        }
        pages
    }

    fn report(&self, by: UsageBy, since: u64, until: u64, agent: Option<&str>) -> Vec<UsageRow> {
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        let chosen = self.usage.iter().filter(|u| u.at >= since && u.at < until);
        for u in chosen.filter(|u| agent.is_none_or(|a| u.agent_id == a)) {
            let key = match by {
                UsageBy::Agent => u.agent_id.clone(),
                UsageBy::Model => u.usage.model.clone().unwrap_or_else(|| "unknown".into()),
                UsageBy::Day => super::day(u.at),
            };
            let (input, output) = (u.usage.input_tokens.unwrap_or(0), u.usage.output_tokens.unwrap_or(0));
            let row = rows.entry(key.clone()).or_insert_with(|| UsageRow { key, ..UsageRow::default() });
            row.reports += 1;
            row.input_tokens += input;
            row.output_tokens += output;
            row.total_tokens += u.usage.total_tokens.unwrap_or(input + output);
            row.cost_usd += u.usage.cost_usd.unwrap_or(0.0);
        }
        rows.into_values().collect()
    }
}
