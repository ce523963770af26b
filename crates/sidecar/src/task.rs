//! The task beside the agent and where it is in its life, as the state machine sees them:
//! each phase carries the data it needs. `queue.rs` maps these to AgentCom's `queue.json`.

use crate::machine::Now;
use crate::question::Asking;
use crate::workspace::Workspace;
use proto::{AgentFrame, Change, Limit, Usage};
use serde_json::{Map, Value};

/// A task as the hub assigned it (its id already checked with [`proto::check_task_id`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub description: String,
    pub metadata: Value,
    pub generation: u64,
    pub assigned_at: u64,
    /// The rest of `task_assign` (repo, branch, routing_decision, ...), kept for the agent.
    pub extra: Map<String, Value>,
    /// The agent CLI's conversation of an earlier attempt on this agent, to resume (checked
    /// with [`proto::check_session_id`]).
    pub resume_session: Option<String>,
}

impl Task {
    /// The task as handed to the agent (`${TASK_JSON}`, `AGENTCOM_TASK_FILE`).
    pub fn to_json(&self) -> Value {
        let mut v = Map::new();
        v.insert("task_id".into(), self.id.clone().into());
        v.insert("description".into(), self.description.clone().into());
        v.insert("metadata".into(), self.metadata.clone());
        v.insert("generation".into(), self.generation.into());
        v.insert("assigned_at".into(), self.assigned_at.into());
        for (k, x) in &self.extra {
            v.insert(k.clone(), x.clone());
        }
        Value::Object(v)
    }
}

/// What the hub is told when the task ends; kept until the hub acknowledges it. `usage` is
/// what the attempt cost, from the result's `usage` or the `<id>.usage` file.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Complete {
        result: Value,
        tokens_used: Option<Value>,
        usage: Option<Usage>,
        /// What the attempt committed on the task's branch (worktree mode).
        change: Option<Box<Change>>,
        /// The agent CLI's session of this attempt.
        session_id: Option<String>,
    },
    /// `keep_result`: the result file is set aside for the operator (it was too large to send)
    /// instead of being removed with the task's other files.
    Failed {
        reason: String,
        keep_result: bool,
        usage: Option<Usage>,
        change: Option<Box<Change>>,
        session_id: Option<String>,
    },
    /// The model provider stopped the attempt (a rate or usage limit): not a failure.
    Limited { limit: Limit, usage: Option<Usage>, change: Option<Box<Change>>, session_id: Option<String> },
}

impl Report {
    pub fn frame(&self, task: &Task) -> AgentFrame {
        match self {
            Report::Complete { result, tokens_used, usage, change, session_id } => AgentFrame::TaskComplete {
                task_id: task.id.clone(),
                generation: task.generation,
                result: Some(result.clone()),
                tokens_used: tokens_used.clone(),
                verification_report: None,
                verification_history: None,
                usage: usage.clone(),
                change: change.clone(),
                session_id: session_id.clone(),
            },
            Report::Failed { reason, usage, change, session_id, .. } => AgentFrame::TaskFailed {
                task_id: task.id.clone(),
                generation: task.generation,
                reason: Some(reason.clone()),
                error: None,
                usage: usage.clone(),
                change: change.clone(),
                session_id: session_id.clone(),
            },
            Report::Limited { limit, usage, change, session_id } => AgentFrame::TaskLimited {
                task_id: task.id.clone(),
                generation: task.generation,
                limit: limit.clone(),
                usage: usage.clone(),
                change: change.clone(),
                session_id: session_id.clone(),
            },
        }
    }

    /// The same report with what the attempt changed.
    pub fn with_change(mut self, c: Option<Change>) -> Report {
        match &mut self {
            Report::Complete { change, .. } | Report::Failed { change, .. } | Report::Limited { change, .. } => {
                *change = c.map(Box::new)
            }
        }
        self
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            Report::Complete { usage, .. } | Report::Failed { usage, .. } | Report::Limited { usage, .. } => {
                usage.clone()
            }
        }
    }

    pub fn session_id(&self) -> Option<String> {
        match self {
            Report::Complete { session_id, .. }
            | Report::Failed { session_id, .. }
            | Report::Limited { session_id, .. } => session_id.clone(),
        }
    }

    /// The attempt did not finish the task: its worktree is kept (and the next attempt goes on there).
    pub fn failed(&self) -> bool {
        matches!(self, Report::Failed { .. } | Report::Limited { .. })
    }
}

/// Where the active task is. Deadlines are in the machine's clock ([`Now`]); they are not
/// persisted: a recovered task gets fresh ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Persisted and acknowledged; no wake yet.
    Accepted,
    /// Its worktree is being made (or adopted) and set up (worktree mode).
    Preparing,
    /// Wake number [`Held::wakes`] runs (or is being spawned).
    Waking {
        /// The wake is stopped if it neither exits nor confirms by then.
        deadline: Now,
        /// It was stopped for running too long; its exit is a timeout.
        timed_out: bool,
    },
    /// After a restart: a wake from before it may still run, and whether it confirmed (its
    /// `.started`) decides between working on and waking again.
    WakingRecovered,
    /// The last wake failed; wake number `wakes + 1` starts at `at`.
    WakeBackoff { at: Now },
    /// The wake command succeeded; `<id>.started` must appear by `deadline`.
    WakingConfirmation { deadline: Now },
    /// The agent confirmed; waiting for `<id>.json`.
    Working {
        /// The wake command is the agent itself and still runs (this attempt).
        foreground: bool,
        /// The agent exited: the result must show up by then, or the task fails with this.
        exited: Option<(Now, String)>,
    },
    /// What the agent left in the worktree is being committed (and pushed); the report waits
    /// for what that changed (worktree mode).
    Committing { report: Report },
    /// The report is on its way to the hub, re-sent until it is acknowledged.
    Reporting { report: Report, resend_at: Option<Now> },
}

impl Phase {
    /// The `status` string in `queue.json` (AgentCom's, plus our `reporting`).
    pub fn status(&self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Preparing => "preparing",
            Phase::Committing { .. } => "committing",
            Phase::Waking { .. } | Phase::WakingRecovered | Phase::WakeBackoff { .. } => "waking",
            Phase::WakingConfirmation { .. } => "waking_confirmation",
            Phase::Working { .. } => "working",
            Phase::Reporting { .. } => "reporting",
        }
    }

    /// Whether the agent's files are being watched.
    pub fn watches_files(&self) -> bool {
        matches!(
            self,
            Phase::Waking { .. } | Phase::WakingRecovered | Phase::WakingConfirmation { .. } | Phase::Working { .. }
        )
    }
}

/// The task we hold, with its phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub task: Task,
    pub phase: Phase,
    /// Wakes started so far (the current one while [`Phase::Waking`]).
    pub wakes: u32,
    /// The process group of the last wake: it outlives the wake command when the command
    /// leaves the agent running in the background, so it is the task's, not the phase's.
    pub group: Option<i32>,
    /// The agent's questions to a person (`<id>.needs-input`): orthogonal to the phase, a task
    /// waiting for an answer stays `working`.
    pub asking: Asking,
    /// The task's worktree, once made (worktree mode).
    pub workspace: Option<Workspace>,
}
