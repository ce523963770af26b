//! Tasks: submission, the one place a task changes status, reports, retry and cancel.

use super::{ConnId, Core, OpenTask, SendKind, Timer};
use crate::auth::{self, Role};
use crate::clock::Clock;
use crate::events::Audience;
use crate::model::{Outcome, Payload, TaskHead, TaskStatus, Transition};
use crate::store::{Mutation, Store, StoreError, StoredPatch};
use proto::api::{ApiError, ErrorCode, EventKind, SubmitTask, TaskChanged, TaskSubmitted};
use proto::{AckStatus, ErrorFrame, FrameErrorCode, HubFrame};
use serde_json::{Map, Value};
use std::time::Duration;

/// How a report ended: the result and the rest of `task_complete`, or the failure reason.
pub(super) type ReportOutcome = Result<(Option<Value>, Map<String, Value>), String>;

/// What came with a report: its cost and what the attempt changed on its branch.
pub(super) struct Attached {
    pub usage: Option<proto::Usage>,
    pub change: Option<Box<proto::Change>>,
    /// The agent CLI's session of the attempt.
    pub session_id: Option<String>,
}

impl<S: Store, C: Clock> Core<S, C> {
    pub(super) fn submit(&mut self, n: SubmitTask, role: &Role) -> Result<TaskSubmitted, ApiError> {
        if self.tasks.len() >= self.limits.max_open_tasks {
            return Err(ApiError::new(ErrorCode::QueueFull).msg(format!(
                "the hub holds {} open tasks, its limit (max_open_tasks); try again when some have finished",
                self.tasks.len()
            )));
        }
        let placement = self.place(n.parent_task_id.as_deref(), &n.depends_on, role)?;
        let status = placement.status;
        let now = self.now.wall_ms;
        let task_id = format!("task-{}", auth::random_hex(8));
        let seq = self.next_seq;
        self.next_seq += 1;
        let head = TaskHead {
            task_id: task_id.clone(),
            seq,
            priority: n.priority,
            status,
            generation: 0,
            needed_capabilities: n.needed_capabilities,
            assign_to: n.assign_to,
            max_retries: n.max_retries,
            assigned_to: None,
            assigned_at: None,
            attempts: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
            submitted_by: role.name().to_string(),
            created_at: now,
            updated_at: now,
            completed_at: None,
            needs_input: None,
            answer: None,
            change: None,
            max_cost_usd: n.max_cost_usd,
            max_tokens: n.max_tokens,
            limited_attempts: 0,
            not_before: None,
            prefer_agent: None,
            prefer_until: None,
            sessions: Vec::new(),
            spent_usd: 0.0,
            spent_tokens: 0,
            serial_key: n.serial_key,
            review: n.review,
            integration: None,
            integrates: None,
            integrating: None,
            parent_task_id: n.parent_task_id,
            depends_on: n.depends_on,
            depth: placement.depth,
            children: Vec::new(),
        };
        let payload = Payload { description: n.description, metadata: n.metadata, extra: n.extra };
        let priority = head.priority;
        self.pending.push(Mutation::InsertTask { head: Box::new(head.clone()), payload: Box::new(payload.clone()) });
        self.pending.push(Mutation::AddTransition {
            task_id: task_id.clone(),
            transition: Transition {
                at: now,
                from: None,
                to: status,
                reason: format!("submitted by {}", role.name()),
                agent_id: None,
                generation: 0,
            },
        });
        *self.counts.entry(status).or_default() += 1;
        self.metrics.submitted += 1;
        self.event(
            EventKind::Task {
                task_id: task_id.clone(),
                from: None,
                to: status,
                reason: format!("submitted by {}", role.name()),
                agent_id: None,
                generation: 0,
                priority,
            },
            Audience::of([Some(role.name().to_string())]),
        );
        if status == TaskStatus::Queued {
            self.queue.insert(&head);
            self.dispatch_needed = true;
        }
        self.placed(&head, placement.pending);
        let mut open = OpenTask::new(head, self.now.mono);
        open.payload = Some(Box::new(payload));
        self.tasks.insert(task_id.clone(), open);
        self.fresh.push(task_id.clone());
        Ok(TaskSubmitted { status, task_id, priority, created_at: now })
    }

    /// The one place a task changes status: persists the head and a history row, keeps the
    /// queue index, the holder's `current_task` and the status counts in step.
    pub(super) fn transition(
        &mut self,
        task_id: &str,
        to: TaskStatus,
        reason: String,
        change: impl FnOnce(&mut TaskHead),
    ) {
        let (now_ms, now) = (self.now.wall_ms, self.now.mono);
        let Some(open) = self.tasks.get_mut(task_id) else { return };
        let head = &mut open.head;
        let from = head.status;
        let old_holder = from.is_held().then(|| head.assigned_to.clone()).flatten();
        if from == TaskStatus::Queued {
            self.queue.remove(head);
        }
        change(head);
        head.status = to;
        head.updated_at = now_ms;
        if to.is_terminal() {
            head.completed_at = Some(now_ms);
        }
        let deferred = if to == TaskStatus::Queued {
            open.queued_at = now;
            match head.not_before.filter(|t| *t > now_ms) {
                // Not before a limit's reset: into the queue when its timer fires.
                Some(t) => Some(t - now_ms),
                None => {
                    head.not_before = None;
                    self.queue.insert(head);
                    self.dispatch_needed = true;
                    None
                }
            }
        } else {
            None
        };
        let new_holder = to.is_held().then(|| head.assigned_to.clone()).flatten();
        if let Some(k) = head.serial_key.clone().filter(|_| from.is_held() != to.is_held()) {
            let held = self.serial_held.entry(k.clone()).or_default();
            if to.is_held() {
                *held += 1;
            } else {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    self.serial_held.remove(&k);
                }
                self.dispatch_needed = true;
            }
        }
        // A question and its answer belong to the attempt that asked: they close with it.
        let closed = if old_holder != new_holder {
            let asked = head.needs_input.take().map(|q| (q.request_id, false));
            asked.or(head.answer.take().map(|a| (a.request_id, true)))
        } else {
            None
        };
        head.answer = head.answer.take().filter(|_| old_holder == new_holder);
        let transition = Transition {
            at: now_ms,
            from: Some(from),
            to,
            reason,
            agent_id: head.assigned_to.clone(),
            generation: head.generation,
        };
        tracing::debug!(task_id, from = %from, to = %to, reason = %transition.reason, "task transition");
        let audience = Audience::of([Some(head.submitted_by.clone()), old_holder.clone(), new_holder.clone()]);
        let event = EventKind::Task {
            task_id: task_id.to_string(),
            from: Some(from),
            to,
            reason: transition.reason.clone(),
            agent_id: transition.agent_id.clone(),
            generation: head.generation,
            priority: head.priority,
        };
        self.events.push((event, audience));
        self.pending.push(Mutation::PutHead(Box::new(head.clone())));
        let closing = closed.map(|(request_id, answered)| {
            let why = format!("its attempt ended ({from} -> {to}: {})", transition.reason);
            let line = Transition {
                reason: super::questions::closing_line(&request_id, answered, &why),
                ..transition.clone()
            };
            (request_id, answered, why, line)
        });
        self.pending.push(Mutation::AddTransition { task_id: task_id.to_string(), transition });
        if let Some((request_id, answered, why, line)) = closing {
            let head = head.clone();
            self.pending.push(Mutation::AddTransition { task_id: task_id.to_string(), transition: line });
            self.closed_event(&head, &request_id, answered, why);
        }
        if from != to {
            let c = self.counts.entry(from).or_default();
            *c = c.saturating_sub(1);
            *self.counts.entry(to).or_default() += 1;
        }
        if old_holder != new_holder {
            if let Some(a) = old_holder.and_then(|h| self.agents.get_mut(&h)) {
                if a.current_task.as_deref() == Some(task_id) {
                    a.current_task = None;
                    a.idle_since = now_ms;
                    self.dispatch_needed = true;
                }
            }
            if let Some(a) = new_holder.and_then(|h| self.agents.get_mut(&h)) {
                a.current_task = Some(task_id.to_string());
            }
        }
        if to.is_terminal() {
            if let Some(o) = self.tasks.remove(task_id) {
                self.settled(o.head);
            }
        }
        if let Some(wait) = deferred {
            self.arm(Duration::from_millis(wait), Timer::NotBefore { task_id: task_id.to_string() });
        }
    }

    /// The hub takes a task back from its holder (lease, claim or accept timeout): logged, and
    /// the attempt remembered so its finished work is not thrown away if it reports late.
    pub(super) fn take_back(&mut self, task_id: &str, reason: String) {
        let Some(o) = self.tasks.get_mut(task_id) else { return };
        let (holder, generation) = (o.head.assigned_to.clone(), o.head.generation);
        tracing::warn!(task_id, agent_id = holder.as_deref().unwrap_or(""), generation, reason = %reason, "taking a task back from its agent");
        o.taken_from = holder.map(|h| (h, generation));
        self.requeue(task_id, reason);
    }

    pub(super) fn requeue(&mut self, task_id: &str, reason: String) {
        self.transition(task_id, TaskStatus::Queued, reason, |t| {
            t.generation += 1;
            t.assigned_to = None;
            t.assigned_at = None;
            t.retry_at = None;
        });
    }

    /// Brings a terminal task back into memory so it can be retried; `None` if it never existed.
    pub(super) fn reopen(&mut self, task_id: &str) -> Result<Option<TaskHead>, StoreError> {
        if let Some(t) = self.tasks.get(task_id) {
            return Ok(Some(t.head.clone()));
        }
        // A task that ended in this batch: its head is not committed yet; the batch's is the truth.
        let written = self.pending.iter().rev().find_map(|m| match m {
            Mutation::PutHead(h) if h.task_id == task_id => Some((**h).clone()),
            Mutation::InsertTask { head, .. } if head.task_id == task_id => Some((**head).clone()),
            _ => None,
        });
        let head = match written {
            Some(h) => h,
            None => match self.store.head(task_id)? {
                Some(h) => h,
                None => return Ok(None),
            },
        };
        self.tasks.insert(task_id.to_string(), OpenTask::new(head.clone(), self.now.mono));
        Ok(Some(head))
    }

    /// A terminal task loaded by `reopen` that was not changed goes back out of memory.
    pub(super) fn drop_if_terminal(&mut self, id: &str) {
        if self.tasks.get(id).is_some_and(|o| o.head.status.is_terminal()) {
            self.tasks.remove(id);
        }
    }

    /// The head of a task that `role` asks to `verb` (`retry`, `cancel`), loaded if it was
    /// finished; or why it may not.
    fn head_to_change(&mut self, id: &str, role: &Role, verb: &str) -> Result<TaskHead, ApiError> {
        let head = self.reopen(id).map_err(store_err)?;
        let Some(head) = head else {
            return Err(ApiError::new(ErrorCode::NotFound).msg(format!("no task {id}")));
        };
        if let Err(e) = crate::authz::may_change(role, &head.submitted_by, verb) {
            self.drop_if_terminal(id);
            return Err(e);
        }
        Ok(head)
    }

    pub(super) fn retry(&mut self, id: &str, role: &Role) -> Result<TaskChanged, ApiError> {
        let head = self.head_to_change(id, role, "retry")?;
        match head.status {
            TaskStatus::DeadLetter | TaskStatus::Cancelled | TaskStatus::WaitingRetry => {
                let placement = match self.retry_placement(&head) {
                    Ok(p) => p,
                    Err(e) => {
                        self.drop_if_terminal(id);
                        return Err(e);
                    }
                };
                let to = placement.status;
                self.transition(id, to, format!("retried by {}", role.name()), |t| {
                    t.generation += 1;
                    t.failures = 0;
                    t.retry_at = None;
                    t.assigned_to = None;
                    t.assigned_at = None;
                    t.completed_at = None;
                });
                if let Some(h) = self.tasks.get(id).map(|o| o.head.clone()) {
                    self.placed(&TaskHead { parent_task_id: None, ..h }, placement.pending);
                }
                Ok(TaskChanged { status: to, task_id: id.to_string() })
            }
            s => {
                self.drop_if_terminal(id);
                Err(ApiError::new(ErrorCode::InvalidState)
                    .msg(format!("task is {s}; only dead_letter, cancelled or waiting_retry tasks can be retried")))
            }
        }
    }

    pub(super) fn cancel(&mut self, id: &str, role: &Role) -> Result<TaskChanged, ApiError> {
        let head = self.head_to_change(id, role, "cancel")?;
        match head.status {
            s @ (TaskStatus::Completed | TaskStatus::Cancelled) => {
                self.drop_if_terminal(id);
                Err(ApiError::new(ErrorCode::InvalidState).msg(format!("task is already {s}")))
            }
            _ => {
                self.cancel_open(id, format!("cancelled by {}", role.name()));
                Ok(TaskChanged { status: TaskStatus::Cancelled, task_id: id.to_string() })
            }
        }
    }

    pub(super) fn on_accepted(&mut self, conn: ConnId, agent_id: &str, task_id: String) {
        let ack = |task_id: &str| HubFrame::TaskAck { task_id: task_id.to_string(), status: AckStatus::Accepted };
        match self.tasks.get(&task_id).map(|o| (o.head.status, o.head.assigned_to.as_deref() == Some(agent_id))) {
            Some((TaskStatus::Assigned, true)) => {
                self.transition(&task_id, TaskStatus::Working, format!("accepted by {agent_id}"), |_| {});
                self.send(conn, ack(&task_id), SendKind::Ack { task_id });
            }
            Some((TaskStatus::Working, true)) => self.send(conn, ack(&task_id), SendKind::Plain),
            Some(_) => self.send_error(conn, ErrorFrame::new(FrameErrorCode::InvalidState).task(&task_id)),
            None => self.send_error(conn, ErrorFrame::new(FrameErrorCode::NotFound).task(&task_id)),
        }
    }

    pub(super) fn on_rejected(&mut self, conn: ConnId, agent_id: &str, task_id: String, reason: Option<String>) {
        if self.held_by(&task_id, agent_id).is_none() {
            return self.send_error(conn, ErrorFrame::new(FrameErrorCode::InvalidState).task(&task_id));
        }
        let reason = reason.unwrap_or_else(|| "unspecified".into());
        let until = self.now.mono + self.t.reject_cooldown;
        self.requeue(&task_id, format!("rejected by {agent_id}: {reason}"));
        if let Some(o) = self.tasks.get_mut(&task_id) {
            o.rejected_by = Some((agent_id.to_string(), until));
        }
        if reason == "busy" {
            if let Some(a) = self.agents.get_mut(agent_id) {
                a.paused_until = Some(until);
            }
        }
        self.arm(self.t.reject_cooldown, Timer::Redispatch);
        let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: AckStatus::Requeued };
        self.send(conn, ack, SendKind::Ack { task_id });
    }

    /// Stores the holder's progress line, cut down to the configured size.
    pub(super) fn on_progress(&mut self, agent_id: &str, task_id: String, progress: Option<Value>) {
        let Some(generation) = self.held_by(&task_id, agent_id) else { return };
        let Some(body) = progress else { return };
        let body = self.limits.bounded_progress(body);
        let submitter = self.tasks[&task_id].head.submitted_by.clone();
        let audience = Audience::of([Some(agent_id.to_string()), Some(submitter)]);
        let event = EventKind::Progress {
            task_id: task_id.clone(),
            agent_id: agent_id.into(),
            generation,
            text: proto::api::progress_text(&body),
            progress: body.clone(),
        };
        self.event(event, audience);
        self.pending.push(Mutation::AddProgress { task_id, generation, at: self.now.wall_ms, body });
    }

    /// `task_complete` (Ok) or `task_failed` (Err), fenced by generation.
    pub(super) fn on_report(
        &mut self,
        conn: ConnId,
        agent_id: &str,
        task_id: String,
        generation: u64,
        outcome: ReportOutcome,
        attached: Attached,
    ) {
        let Attached { usage, change, session_id } = attached;
        let current = match self.tasks.get(&task_id) {
            Some(o) => Some(o.head.clone()),
            None => match self.store.head(&task_id) {
                Ok(t) => t,
                Err(e) => {
                    let e = ErrorFrame::new(FrameErrorCode::StorageUnavailable).task(&task_id).message(e.to_string());
                    return self.send_error(conn, e);
                }
            },
        };
        let Some(task) = current else {
            return self.send_error(conn, ErrorFrame::new(FrameErrorCode::NotFound).task(&task_id));
        };
        if task.generation != generation && self.late_completion(&task_id, agent_id, generation, &outcome) {
            if let Some(u) = usage {
                self.record_usage(&task_id, agent_id, generation, u, &task.submitted_by);
            }
            self.note_session(&task_id, generation, agent_id, session_id);
            let Ok((result, report)) = outcome else { unreachable!("only completions are taken late") };
            let outcome_result = result.clone();
            let outcome = Outcome { result, report };
            self.pending.push(Mutation::SetOutcome { task_id: task_id.clone(), outcome: Box::new(outcome) });
            let reason = format!("completed by {agent_id} (generation {generation}, reported after the hub took it back; nobody else held it)");
            tracing::info!(task_id = %task_id, agent_id, generation, "taking a late completion: the task was queued again, but nobody else holds it");
            let change = self.keep_change(&task_id, generation, change);
            self.complete(&task_id, reason, change, outcome_result);
            let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: AckStatus::Complete };
            return self.send(conn, ack, SendKind::Ack { task_id });
        }
        if task.generation != generation {
            return self.send_error(conn, stale(&task_id, generation, task.generation));
        }
        let mine = task.assigned_to.as_deref() == Some(agent_id);
        // A re-sent report for the same attempt (the sidecar did not see our ack) is acked again.
        let repeat = match (&outcome, task.status) {
            (Ok(_), TaskStatus::Completed) if mine => Some(AckStatus::Complete),
            (Err(_), TaskStatus::WaitingRetry) if mine => Some(AckStatus::Retried),
            (Err(_), TaskStatus::DeadLetter) if mine => Some(AckStatus::DeadLetter),
            _ => None,
        };
        if let Some(status) = repeat {
            return self.send(conn, HubFrame::TaskAck { task_id, status }, SendKind::Plain);
        }
        if !task.status.is_held() || !mine {
            return self.send_error(conn, not_held(&task_id, task.status));
        }
        if let Some(u) = usage {
            self.record_usage(&task_id, agent_id, generation, u, &task.submitted_by);
        }
        self.note_session(&task_id, generation, agent_id, session_id);
        let change = self.keep_change(&task_id, generation, change);
        let ack_status = match outcome {
            Ok((result, report)) => {
                // Finished work: the provider takes this agent's requests again.
                self.limit_level_reset(agent_id);
                let kept = result.clone();
                let outcome = Outcome { result, report };
                self.pending.push(Mutation::SetOutcome { task_id: task_id.clone(), outcome: Box::new(outcome) });
                self.complete(&task_id, format!("completed by {agent_id}"), change, kept);
                AckStatus::Complete
            }
            Err(why) => {
                let failures = task.failures + 1;
                // Another attempt would start over a cap the task has already reached.
                let why = match self.over_task_cap(&task_id, &proto::Usage::default()) {
                    Some(cap) => format!("budget_exceeded: {cap} (after: {why})"),
                    None => why,
                };
                let over_cap = why.starts_with("budget_exceeded: ");
                if over_cap || failures > task.max_retries {
                    let reason = match over_cap {
                        true => why.clone(),
                        false => format!("dead_letter after {failures} failures: {why}"),
                    };
                    let integrates = task.integrates.clone();
                    let last = why.clone();
                    self.transition(&task_id, TaskStatus::DeadLetter, reason, |t| {
                        t.failures = failures;
                        t.last_error = Some(last);
                        t.change = change;
                    });
                    if let Some(original) = integrates {
                        self.integration_ended(&original, None, Some(&why));
                    }
                    AckStatus::DeadLetter
                } else {
                    let backoff = self.backoff(failures);
                    let retry_at = self.now.wall_ms + backoff.as_millis() as u64;
                    let reason =
                        format!("failed ({why}); retry {failures}/{} in {}ms", task.max_retries, backoff.as_millis());
                    self.transition(&task_id, TaskStatus::WaitingRetry, reason, |t| {
                        t.failures = failures;
                        t.last_error = Some(why);
                        t.retry_at = Some(retry_at);
                        t.change = change;
                    });
                    self.arm(backoff, Timer::RetryDue { task_id: task_id.clone(), generation });
                    AckStatus::Retried
                }
            }
        };
        self.send(conn, HubFrame::TaskAck { task_id: task_id.clone(), status: ack_status }, SendKind::Ack { task_id });
    }

    /// A task completes: with a change, its integration is queued; an integration task's report
    /// moves the change it integrates.
    fn complete(&mut self, task_id: &str, reason: String, change: Option<proto::Change>, result: Option<Value>) {
        let integrates = self.tasks.get(task_id).and_then(|o| o.head.integrates.clone());
        let integration = match (&integrates, &change) {
            (None, Some(c)) => self.queue_integration(task_id, c, false),
            _ => None,
        };
        self.transition(task_id, TaskStatus::Completed, reason, |t| {
            t.change = change;
            if integration.is_some() {
                t.integration = integration;
            }
        });
        if let Some(original) = integrates {
            self.integration_ended(&original, result.as_ref(), None);
        }
    }

    /// Stores the patch of an accepted report's change and returns the change as the task
    /// shows it (without the patch).
    pub(super) fn keep_change(
        &mut self,
        task_id: &str,
        generation: u64,
        change: Option<Box<proto::Change>>,
    ) -> Option<proto::Change> {
        let mut change = *change?;
        if let Some(patch) = change.patch.take() {
            let stored = StoredPatch { generation, at: self.now.wall_ms, patch, cut: change.patch_cut };
            self.pending.push(Mutation::PutPatch { task_id: task_id.to_string(), patch: Box::new(stored) });
        }
        Some(change)
    }

    /// A `task_complete` for the attempt the hub took back from `agent_id`, while nobody else
    /// holds the task (it waits in the queue, or went back to that same agent): finished work is
    /// worth more than a second run of the same task.
    fn late_completion(&self, task_id: &str, agent_id: &str, generation: u64, outcome: &ReportOutcome) -> bool {
        let Some(o) = self.tasks.get(task_id) else { return false };
        let nobody_else = match o.head.status {
            TaskStatus::Queued | TaskStatus::WaitingRetry => true,
            s => s.is_held() && o.head.assigned_to.as_deref() == Some(agent_id),
        };
        outcome.is_ok() && nobody_else && o.taken_from.as_ref().is_some_and(|(a, g)| a == agent_id && *g == generation)
    }

    /// 1 s doubling per failure, capped (5 min by default).
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.t.retry_base.saturating_mul(factor).min(self.t.retry_max)
    }
}

pub(super) fn store_err(e: StoreError) -> ApiError {
    ApiError::new(ErrorCode::StorageUnavailable).msg(e.to_string())
}

/// The refusal of a report (a result, a limit) of an attempt that is not the task's current one.
pub(super) fn stale(task_id: &str, generation: u64, current: u64) -> ErrorFrame {
    ErrorFrame::new(FrameErrorCode::StaleGeneration)
        .task(task_id)
        .message(format!("generation {generation} is stale; current is {current}"))
}

/// The refusal of a report from an agent that does not hold the task (or of a task not held).
pub(super) fn not_held(task_id: &str, status: TaskStatus) -> ErrorFrame {
    ErrorFrame::new(FrameErrorCode::InvalidState).task(task_id).message(format!("task is {status}"))
}
