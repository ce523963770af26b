//! The hub of the simulated world: the real hub's rules for one task assigned to our agent
//! (generation fencing, idempotent acks of a re-sent report, continue or reassign after a
//! restart), and a person who answers every question at once.

use super::*;
use proto::TaskAssign;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HubStatus {
    Assigned,
    Working,
    Completed,
    DeadLetter,
    Cancelled,
}

/// The hub's side, with its rules for one task assigned to our agent, and a person who
/// answers every question at once (`answer to <question> #<request id>`).
#[derive(Debug)]
pub struct FakeHub {
    pub status: HubStatus,
    pub generation: u64,
    /// How many times the task reached an end state (must be exactly once).
    pub ends: u32,
    pub received: Vec<AgentFrame>,
    /// Each request id seen, in order, with its question.
    pub questions: Vec<(String, String)>,
    /// The answer delivered and not acknowledged yet: re-sent after every reconnect.
    pub pending_answer: Option<(String, String)>,
    /// What broke the hub's rules (a request id reused for another question...).
    pub violations: Vec<String>,
}

impl FakeHub {
    pub fn new(generation: u64) -> FakeHub {
        FakeHub {
            status: HubStatus::Assigned,
            generation,
            ends: 0,
            received: Vec::new(),
            questions: Vec::new(),
            pending_answer: None,
            violations: Vec::new(),
        }
    }
    pub fn assign(&self) -> HubFrame {
        HubFrame::TaskAssign(TaskAssign {
            task_id: ID.into(),
            description: "do it".into(),
            metadata: serde_json::json!({}),
            generation: self.generation,
            assigned_at: 1,
            priority: None,
            resume_session: None,
            extra: Default::default(),
        })
    }
    fn held(&self) -> bool {
        matches!(self.status, HubStatus::Assigned | HubStatus::Working)
    }
    fn requeue(&mut self) -> Vec<HubFrame> {
        self.generation += 1;
        self.status = HubStatus::Assigned;
        vec![self.assign()]
    }
    fn end(&mut self, status: HubStatus) {
        self.status = status;
        self.ends += 1;
        // Every answer reached the agent, and the hub knows it, before the agent finished.
        if let Some((id, _)) = self.pending_answer.take() {
            self.violations.push(format!("the task ended with the answer to {id} not acknowledged"));
        }
    }
    fn answer_frame(&self) -> Vec<HubFrame> {
        self.pending_answer
            .iter()
            .map(|(request_id, answer)| HubFrame::TaskInput {
                task_id: ID.into(),
                request_id: request_id.clone(),
                answer: answer.clone(),
            })
            .collect()
    }
    /// After the agent reconnects: the answer not acknowledged yet, again.
    pub fn on_reconnect(&self) -> Vec<HubFrame> {
        self.answer_frame()
    }
    pub fn receive(&mut self, f: AgentFrame) -> Vec<HubFrame> {
        self.received.push(f.clone());
        let ack = |status: proto::AckStatus| vec![HubFrame::TaskAck { task_id: ID.into(), status }];
        match f {
            AgentFrame::TaskAccepted { .. } if self.held() => {
                self.status = HubStatus::Working;
                ack(proto::AckStatus::Accepted)
            }
            AgentFrame::TaskRejected { .. } if self.held() => self.requeue(),
            AgentFrame::TaskRecovering { .. } => match self.held() {
                true => vec![HubFrame::TaskContinue { task_id: ID.into(), generation: self.generation }],
                false => vec![HubFrame::TaskReassign { task_id: ID.into() }],
            },
            AgentFrame::StateReport { task_id: None, .. } => {
                // The agent holds nothing: the hub releases the task and assigns it again.
                let mut replies =
                    vec![HubFrame::StateReportAck { task_id: None, action: proto::ReportAction::Continue }];
                if self.held() {
                    self.pending_answer = None;
                    replies.extend(self.requeue());
                }
                replies
            }
            AgentFrame::StateReport { task_id: Some(id), generation, .. } => {
                let ok = self.held() && generation.is_none_or(|g| g == self.generation);
                vec![HubFrame::StateReportAck {
                    task_id: Some(id),
                    action: if ok { proto::ReportAction::Continue } else { proto::ReportAction::Abort },
                }]
            }
            AgentFrame::TaskComplete { generation, .. } | AgentFrame::TaskFailed { generation, .. }
                if generation != self.generation =>
            {
                vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::StaleGeneration).task(ID))]
            }
            AgentFrame::TaskComplete { .. } => match self.status {
                HubStatus::Completed => ack(proto::AckStatus::Complete),
                _ if self.held() => {
                    self.end(HubStatus::Completed);
                    ack(proto::AckStatus::Complete)
                }
                _ => vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::InvalidState).task(ID))],
            },
            AgentFrame::TaskFailed { .. } => match self.status {
                HubStatus::DeadLetter => ack(proto::AckStatus::DeadLetter),
                _ if self.held() => {
                    self.end(HubStatus::DeadLetter);
                    ack(proto::AckStatus::DeadLetter)
                }
                _ => vec![HubFrame::Error(proto::ErrorFrame::new(proto::FrameErrorCode::InvalidState).task(ID))],
            },
            AgentFrame::NeedsInput { request_id, question, .. } if self.held() => {
                match self.questions.iter().find(|(id, _)| *id == request_id) {
                    Some((_, q)) if *q != question => {
                        self.violations.push(format!("{request_id} was {q:?}, now {question:?}"));
                        vec![]
                    }
                    // The same request again (a reconnect): deduplicated; the answer re-sent.
                    Some(_) => self.answer_frame(),
                    None => {
                        // A new question replaces the old one, and its undelivered answer.
                        self.questions.push((request_id.clone(), question.clone()));
                        let answer = format!("answer to {question} #{request_id}");
                        self.pending_answer = Some((request_id, answer));
                        self.answer_frame()
                    }
                }
            }
            AgentFrame::TaskInputAck { request_id, .. } => {
                if !self.questions.iter().any(|(id, _)| *id == request_id) {
                    self.violations.push(format!("ack of an unknown request {request_id}"));
                }
                if self.pending_answer.as_ref().is_some_and(|(id, _)| *id == request_id) {
                    self.pending_answer = None;
                }
                vec![]
            }
            _ => vec![],
        }
    }
}
