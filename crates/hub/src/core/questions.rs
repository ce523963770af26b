//! Agents that ask a person: the holder's `needs_input` opens a question on its task; a person's
//! answer (admin, or the agent that submitted the task) is stored and pushed to the holder's
//! sidecar until it confirms, with `task_input_ack`, that the answer is written for the agent.
//! Both survive hub restarts (they are part of the task's head).

use super::{ConnId, Core, SendKind};
use crate::auth::Role;
use crate::clock::Clock;
use crate::events::Audience;
use crate::model::{Answer, Question, TaskHead, Transition};
use crate::store::{Mutation, Store};
use proto::api::{AnswerTask, Answered, ApiError, Done, ErrorCode, EventKind};
use proto::{ErrorFrame, FrameErrorCode, HubFrame};

/// Questions one attempt may ask. Each is a history line, an event and a webhook notification;
/// a holder asking in a loop (a bug, or an agent told to) would otherwise grow them without end.
pub const MAX_PER_ATTEMPT: u32 = 32;

impl<S: Store, C: Clock> Core<S, C> {
    /// Persists a head change that is not a status change, with a line in the history.
    fn note(&mut self, task_id: &str, reason: String, change: impl FnOnce(&mut TaskHead)) -> Option<TaskHead> {
        let now = self.now.wall_ms;
        let open = self.tasks.get_mut(task_id)?;
        change(&mut open.head);
        open.head.updated_at = now;
        let h = open.head.clone();
        let tr = Transition {
            at: now,
            from: Some(h.status),
            to: h.status,
            reason,
            agent_id: h.assigned_to.clone(),
            generation: h.generation,
        };
        self.pending.push(Mutation::PutHead(Box::new(h.clone())));
        self.pending.push(Mutation::AddTransition { task_id: task_id.to_string(), transition: tr });
        Some(h)
    }

    pub(super) fn on_needs_input(
        &mut self,
        conn: ConnId,
        agent_id: &str,
        task_id: String,
        request_id: String,
        question: String,
        options: Vec<String>,
    ) {
        if self.held_by(&task_id, agent_id).is_none() {
            return;
        }
        let head = &self.tasks[&task_id].head;
        // A re-sent question (after a reconnect) changes nothing; if it was answered, the answer
        // goes out again.
        if head.needs_input.as_ref().is_some_and(|q| q.request_id == request_id) {
            return;
        }
        if head.answer.as_ref().is_some_and(|a| a.request_id == request_id) {
            return self.send_answer(conn, &task_id);
        }
        let generation = head.generation;
        let open = self.tasks.get_mut(&task_id).expect("held, so open");
        if open.questions.0 != generation {
            open.questions = (generation, 0);
        }
        if open.questions.1 >= MAX_PER_ATTEMPT {
            tracing::warn!(task_id = %task_id, agent_id, "too many questions in one attempt; refused");
            let e = ErrorFrame::new(FrameErrorCode::InvalidState)
                .task(&task_id)
                .message(format!("this attempt already asked {MAX_PER_ATTEMPT} questions, the most it may"));
            return self.send_error(conn, e);
        }
        open.questions.1 += 1;
        let options: Vec<String> = options.into_iter().take(proto::MAX_OPTIONS).collect();
        let q = Question { request_id, question, options, since: self.now.wall_ms };
        let shown: String = q.question.chars().take(200).collect();
        let reason = format!("needs input: {shown}");
        let asked = q.clone();
        let Some(h) = self.note(&task_id, reason, |h| {
            h.needs_input = Some(asked);
            // An answer to an earlier question that never reached the agent is moot now.
            h.answer = None;
        }) else {
            return;
        };
        tracing::info!(task_id = %task_id, agent_id, request_id = %q.request_id, "the agent asks for input");
        let audience = Audience::of([Some(agent_id.to_string()), Some(h.submitted_by.clone())]);
        self.event(EventKind::NeedsInput { task_id, agent_id: agent_id.into(), question: q }, audience);
    }

    /// A person's answer: stored, then pushed to the holder (now, or when it reconnects).
    pub(super) fn answer(&mut self, a: AnswerTask, role: &Role) -> Result<Answered, ApiError> {
        let Some(open) = self.tasks.get(&a.task_id) else {
            return Err(ApiError::new(ErrorCode::InvalidState)
                .msg(format!("task {} is not open (it may not exist, or be finished)", a.task_id)));
        };
        crate::authz::may_change(role, &open.head.submitted_by, "answer")?;
        let Some(q) = open.head.needs_input.clone() else {
            let why = match &open.closed_question {
                Some((id, reason)) if a.request_id.as_ref().is_none_or(|r| r == id) => {
                    format!(
                        "task {}'s question {id} was closed unanswered ({reason}); it is not waiting for input",
                        a.task_id
                    )
                }
                _ => format!("task {} is not waiting for input", a.task_id),
            };
            return Err(ApiError::new(ErrorCode::InvalidState).msg(why));
        };
        if a.request_id.as_ref().is_some_and(|r| r != &q.request_id) {
            return Err(ApiError::new(ErrorCode::InvalidState).msg(format!(
                "the open question of task {} is {}, not {}: reload and answer that one",
                a.task_id,
                q.request_id,
                a.request_id.unwrap_or_default()
            )));
        }
        let answer = Answer {
            request_id: q.request_id.clone(),
            answer: a.answer,
            answered_by: role.name().to_string(),
            answered_at: self.now.wall_ms,
        };
        let by = answer.answered_by.clone();
        let h = self
            .note(&a.task_id, format!("answered by {by}"), |h| {
                h.needs_input = None;
                h.answer = Some(answer);
            })
            .expect("the task is open");
        let audience = Audience::of([h.assigned_to.clone(), Some(h.submitted_by.clone())]);
        let event =
            EventKind::InputAnswered { task_id: a.task_id.clone(), request_id: q.request_id.clone(), answered_by: by };
        self.event(event, audience);
        let conn = h.assigned_to.as_ref().and_then(|holder| self.agents.get(holder)).and_then(|ag| ag.conn);
        if let Some(conn) = conn {
            self.send_answer(conn, &a.task_id);
        }
        Ok(Answered { status: Done::Answered, task_id: a.task_id, request_id: q.request_id, sent: conn.is_some() })
    }

    /// Sends the task's stored answer, if any, to a connection of its holder.
    pub(super) fn send_answer(&mut self, conn: ConnId, task_id: &str) {
        let Some(a) = self.tasks.get(task_id).and_then(|o| o.head.answer.clone()) else { return };
        let frame = HubFrame::TaskInput { task_id: task_id.to_string(), request_id: a.request_id, answer: a.answer };
        self.send(conn, frame, SendKind::Push { dispatch_started: None });
    }

    /// The holder's sidecar says the agent no longer asks `request_id`: the question closes, and
    /// an answer waiting for delivery is shown as undelivered. A repeat changes nothing.
    pub(super) fn on_input_closed(&mut self, agent_id: &str, task_id: &str, request_id: &str, reason: &str) {
        if self.held_by(task_id, agent_id).is_none() {
            return;
        }
        let head = &self.tasks[task_id].head;
        let open = head.needs_input.as_ref().is_some_and(|q| q.request_id == request_id);
        let answered = head.answer.as_ref().is_some_and(|a| a.request_id == request_id);
        if !open && !answered {
            return;
        }
        let reason = format!("the agent: {}", reason.chars().take(500).collect::<String>());
        tracing::warn!(task_id, agent_id, request_id, answered, reason = %reason, "a question closed without its answer reaching the agent");
        let Some(h) = self.note(task_id, closing_line(request_id, answered, &reason), |h| {
            h.needs_input = None;
            h.answer = None;
        }) else {
            return;
        };
        self.closed_event(&h, request_id, answered, reason);
    }

    /// Tells readers a question closed unanswered, or its answer will not be delivered.
    pub(super) fn closed_event(&mut self, h: &TaskHead, request_id: &str, answered: bool, reason: String) {
        let (task_id, request_id) = (h.task_id.clone(), request_id.to_string());
        let kind = if answered {
            EventKind::InputUndelivered {
                task_id: task_id.clone(),
                request_id: request_id.clone(),
                reason: reason.clone(),
            }
        } else {
            EventKind::InputClosed { task_id: task_id.clone(), request_id: request_id.clone(), reason: reason.clone() }
        };
        self.event(kind, Audience::of([h.assigned_to.clone(), Some(h.submitted_by.clone())]));
        if let Some(open) = self.tasks.get_mut(&task_id) {
            open.closed_question = Some((request_id, reason));
        }
    }

    /// The holder's sidecar wrote the answer for the agent: done.
    pub(super) fn on_input_ack(&mut self, agent_id: &str, task_id: String, request_id: String) {
        if self.held_by(&task_id, agent_id).is_none() {
            return;
        }
        let pending = self.tasks[&task_id].head.answer.as_ref().is_some_and(|a| a.request_id == request_id);
        if !pending {
            return;
        }
        if let Some(h) = self.note(&task_id, format!("answer to {request_id} delivered"), |h| h.answer = None) {
            let audience = Audience::of([Some(agent_id.to_string()), Some(h.submitted_by)]);
            self.event(EventKind::InputDelivered { task_id, request_id }, audience);
        }
    }
}

/// The history line of a question that closed without its answer reaching the agent.
pub(super) fn closing_line(request_id: &str, answered: bool, reason: &str) -> String {
    if answered {
        format!("answer to {request_id} not delivered: {reason}")
    } else {
        format!("question {request_id} closed unanswered: {reason}")
    }
}
