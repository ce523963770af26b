//! The agent's questions to a person and their answers, beside the task's phase (a task
//! waiting for an answer stays `working`).
//!
//! A question (`<id>.needs-input`) is forwarded as `needs_input` with a new `request_id` only
//! after the record of it is persisted (required), so a restart re-sends the same request and
//! never makes a second one for the same file; it is re-sent after every reconnect until
//! answered. An answer (`task_input`) for the open request is written to `<id>.input`, then
//! the record of it is persisted (required), then `.needs-input` is removed (the agent's
//! signal that the answer is there: it never goes on before the answer is on record), and only
//! then is `task_input_ack` sent, and again after every reconnect, before any report that ends
//! the attempt (the hub records a delivery once). A re-delivered answer already written is
//! acknowledged without writing the file again; a `.needs-input` still there after its answer
//! was recorded (the sidecar stopped before removing it) is removed by the next look.

use super::{clip, Action, Machine, Slot, TaskFile, Unconfirmed};
use crate::files::{FileId, Found, SmallFile};
use crate::question::{self, Asked, Asking, BadQuestion, OpenQuestion};
use crate::task::Phase;
use proto::AgentFrame;
use serde_json::json;

/// Answered questions of finished tasks remembered, to acknowledge a late re-delivery.
const RECENT_ANSWERS: usize = 16;

/// Why a question closed: its agent was started again before an answer came.
const WITHDRAWN: &str = "the agent was started again before the answer came; it no longer asks this";
/// Why an answer cannot be delivered: the agent never asked it in this attempt.
const NOT_ASKED: &str = "the agent does not ask this question now";

fn closed_frame(task_id: &str, request_id: &str, why: &str) -> AgentFrame {
    AgentFrame::NeedsInputClosed {
        task_id: task_id.to_string(),
        request_id: request_id.to_string(),
        reason: Some(why.to_string()),
    }
}

impl Machine {
    /// What a look found in `<id>.needs-input`. A file that cannot be used is reported once
    /// (log and a progress line) and never fails the task: the agent may write it again.
    pub(super) fn on_question_file(&mut self, found: Found<SmallFile>, out: &mut Vec<Action>) {
        let Some(h) = self.active() else { return };
        let shown = format!("{}.needs-input", h.task.id);
        let max = question::MAX_NEEDS_INPUT_BYTES;
        match found {
            Found::Missing => {}
            Found::Regular(file) => match question::parse(&file.bytes) {
                Ok(asked) => self.ask(asked, file.id, out),
                // Perhaps still being written: a later look (a rescan at the latest) decides.
                Err(BadQuestion::NotJson(_)) if file.age.is_some_and(|age| age <= self.cfg.rescan_interval) => {}
                Err(e) => self.bad_question(file.id, format!("{shown}: {e}"), out),
            },
            Found::NotRegular(kind) => {
                self.bad_question(kind.into(), format!("{shown} is {kind}, not a regular file"), out)
            }
            Found::TooLarge(n) => {
                self.bad_question(format!("size {n}"), format!("{shown} is over {max} bytes ({n}); not read"), out)
            }
            Found::Unreadable(e) => self.bad_question(e.clone(), format!("cannot read {shown}: {e}"), out),
        }
    }

    fn bad_question(&mut self, key: String, why: String, out: &mut Vec<Action>) {
        if self.bad_question.as_ref() == Some(&key) {
            return;
        }
        self.bad_question = Some(key);
        let Some(h) = self.active() else { return };
        let task_id = h.task.id.clone();
        tracing::warn!(task_id = %task_id, problem = %why, "the agent's question cannot be forwarded");
        let progress = json!({ "needs_input_error": clip(&why, proto::MAX_REASON) });
        self.send(out, AgentFrame::TaskProgress { task_id, progress: Some(progress), execution_event: None });
    }

    /// The agent asks `asked` (from file `file`): a new request unless it is the open one, or
    /// the file of a question already answered.
    fn ask(&mut self, asked: Asked, file: FileId, out: &mut Vec<Action>) {
        self.bad_question = None;
        let Some(h) = self.active() else { return };
        let a = &h.asking;
        if let Some(open) = a.open.as_ref().filter(|o| o.asked == asked) {
            // Still the question whose answer was dropped: the hub, asked again, sends it again.
            let request_id = open.request_id.clone();
            if self.redeliver.take_if(|id| *id == request_id).is_some() {
                self.resend_question(out);
            }
            return;
        }
        if a.open.is_none() && a.answered_file.as_ref() == Some(&file) {
            // Answered, and the removal was cut short: finish it, the agent is waiting for it.
            let task_id = h.task.id.clone();
            return out.push(Action::RemoveTaskFile { task_id, file: TaskFile::NeedsInput });
        }
        let before = h.asking.clone();
        let request_id = h.asking.next_request_id(h.task.generation);
        h.asking.asked = h.asking.asked.saturating_add(1);
        h.asking.open = Some(OpenQuestion { request_id: request_id.clone(), asked: asked.clone(), file });
        let task_id = h.task.id.clone();
        tracing::info!(task_id = %task_id, request_id = %request_id, options = asked.options.len(), "the agent asks a person");
        // An earlier answer is not this question's: gone before the question is on record.
        out.push(Action::RemoveTaskFile { task_id: task_id.clone(), file: TaskFile::Input });
        out.push(self.persist(true));
        self.unconfirmed = Some(Unconfirmed::Asking(before));
        let Asked { question, options } = asked;
        self.send(out, AgentFrame::NeedsInput { task_id, request_id, question, options });
    }

    /// Sends the last answer's ack again (after a reconnect, a re-assign, a restart): it may
    /// have gone down with the last connection or the process, and the hub records a delivery
    /// once. Also while the task reports its end, and before that report: the hub takes no ack
    /// for an attempt that ended, so an agent that read its answer and finished at once would
    /// otherwise leave the answer on record as never delivered.
    pub(super) fn resend_answer_ack(&mut self, out: &mut Vec<Action>) {
        let Slot::Active(h) = &self.slot else { return };
        if let Some(request_id) = h.asking.answered.last() {
            let ack = AgentFrame::TaskInputAck { task_id: h.task.id.clone(), request_id: request_id.clone() };
            self.send(out, ack);
        }
    }

    /// Sends the open question again (after a reconnect, a continue, a re-assign), unless the
    /// task is already reporting. The hub deduplicates by `request_id`. Questions withdrawn go
    /// first, so the hub closes them before it sees what is open now.
    pub(super) fn resend_question(&mut self, out: &mut Vec<Action>) {
        let Slot::Active(h) = &self.slot else { return };
        if matches!(h.phase, Phase::Reporting { .. }) {
            return;
        }
        for request_id in &h.asking.withdrawn {
            self.send(out, closed_frame(&h.task.id, request_id, WITHDRAWN));
        }
        if let Some(q) = &h.asking.open {
            let frame = AgentFrame::NeedsInput {
                task_id: h.task.id.clone(),
                request_id: q.request_id.clone(),
                question: q.asked.question.clone(),
                options: q.asked.options.clone(),
            };
            self.send(out, frame);
        }
    }

    /// `task_input`: a person's answer.
    pub(super) fn on_answer(&mut self, task_id: String, request_id: String, answer: String, out: &mut Vec<Action>) {
        if let Err(e) = question::check_request_id(&request_id) {
            return tracing::warn!(task_id = %task_id, request_id = %clip(&request_id, 80), error = %e, "ignoring an answer with an unusable request id");
        }
        let ack = AgentFrame::TaskInputAck { task_id: task_id.clone(), request_id: request_id.clone() };
        let Some(h) = self.held(&task_id) else {
            if self.recent_answers.iter().any(|(t, r)| *t == task_id && *r == request_id) {
                return self.send(out, ack);
            }
            return tracing::warn!(task_id = %task_id, request_id = %request_id, "ignoring an answer for a task this agent does not hold");
        };
        match &h.asking.open {
            Some(q) if q.request_id == request_id => {
                let before = h.asking.clone();
                let asked = q.asked.clone();
                h.asking.answer();
                tracing::info!(task_id = %task_id, request_id = %request_id, chars = answer.chars().count(), "answer received; writing it for the agent");
                out.push(Action::WriteAnswer {
                    task_id: task_id.clone(),
                    request_id: request_id.clone(),
                    answer,
                    asked,
                });
                out.push(self.persist(true));
                self.unconfirmed = Some(Unconfirmed::Asking(before));
                out.push(Action::RemoveTaskFile { task_id, file: TaskFile::NeedsInput });
                self.send(out, ack);
            }
            // Written before: the ack was lost, or the hub re-sent it.
            _ if h.asking.answered.contains(&request_id) => self.send(out, ack),
            open => {
                let open = open.as_ref().map(|q| q.request_id.clone()).unwrap_or_default();
                tracing::warn!(task_id = %task_id, request_id = %request_id, open = %open, "ignoring an answer to a question that is not open");
                let why = if h.asking.withdrawn.contains(&request_id) { WITHDRAWN } else { NOT_ASKED };
                self.send(out, closed_frame(&task_id, &request_id, why));
            }
        }
    }

    /// A new agent process starts for the task: the question the last one asked is withdrawn
    /// (the hub is told), and its file goes, so the new one is not taken for it.
    pub(super) fn withdraw_question(&mut self, out: &mut Vec<Action>) {
        let Some(h) = self.active() else { return };
        let Some(request_id) = h.asking.withdraw() else { return };
        let task_id = h.task.id.clone();
        tracing::warn!(task_id = %task_id, request_id = %request_id, "the agent is started again; its open question is withdrawn");
        out.push(Action::RemoveTaskFile { task_id: task_id.clone(), file: TaskFile::NeedsInput });
        self.send(out, closed_frame(&task_id, &request_id, WITHDRAWN));
    }

    /// The agent asked again before the answer could be written: the answer is dropped (the
    /// hub gets the new question), and the files are looked at for it.
    pub(super) fn on_answer_superseded(
        &mut self,
        task_id: &str,
        request_id: &str,
        unconfirmed: Option<Unconfirmed>,
        out: &mut Vec<Action>,
    ) {
        tracing::warn!(task_id = %task_id, request_id = %request_id, "the agent changed its question before the answer arrived; the answer is dropped");
        if let Some(Unconfirmed::Asking(before)) = unconfirmed {
            if let Some(h) = self.held(task_id) {
                h.asking = before;
            }
        }
        self.redeliver = Some(request_id.to_string());
        if let Slot::Active(h) = &self.slot {
            if h.task.id == task_id && h.phase.watches_files() {
                out.push(self.observe(false, super::Look::Watch));
            }
        }
    }

    /// A required persist of the questions failed: back to what is on disk, so the next look
    /// (or re-delivery) tries again with the same request id.
    pub(super) fn undo_asking(&mut self, before: Asking, out: Vec<Action>) -> Vec<Action> {
        match &mut self.slot {
            Slot::Active(h) | Slot::Recovering(h) => {
                tracing::error!(task_id = %h.task.id, "cannot persist the agent's question or its answer; will try again");
                h.asking = before;
            }
            Slot::Idle => {}
        }
        out
    }

    /// A task leaves: its answered questions are remembered for a late re-delivery.
    pub(super) fn remember_answers(&mut self, h: &crate::task::Held) {
        for id in &h.asking.answered {
            self.recent_answers.push_back((h.task.id.clone(), id.clone()));
        }
        while self.recent_answers.len() > RECENT_ANSWERS {
            self.recent_answers.pop_front();
        }
    }
}
