//! What the machine takes in ([`Event`]) and hands out ([`Action`]), as data.

use crate::files::{Observation, ProgressCursor};
use crate::question::Asked;
use crate::queue::QueueFile;
use crate::workspace::Workspace;
use proto::{AgentFrame, Change, HubFrame};
use std::path::PathBuf;

/// Why the files are being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// A file event, a rescan, or a phase change.
    Watch,
    /// The confirmation deadline passed: without `.started` now, the task fails.
    ConfirmationDue,
    /// The agent exited a while ago: without a result now, the task fails.
    ExitCheckDue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WakeOutcome {
    /// The wake command ended; `code` is its exit code (none after a signal).
    Exited { success: bool, code: Option<i32>, desc: String },
    /// It could not be started. `lasting`: for a reason waiting cannot cure (its folder or a
    /// program is missing, not allowed), so it is not tried again.
    SpawnFailed { reason: String, lasting: bool },
}

impl WakeOutcome {
    /// Why trying again cannot help, if that is so: it could not start for a lasting reason,
    /// or the shell said the command is not there (127) or not executable (126).
    pub(super) fn lasting_failure(&self) -> Option<String> {
        match self {
            WakeOutcome::SpawnFailed { reason, lasting: true } => Some(format!("cannot start: {reason}")),
            WakeOutcome::Exited { code: Some(127), desc, .. } => Some(format!("command not found ({desc})")),
            WakeOutcome::Exited { code: Some(126), desc, .. } => Some(format!("command not executable ({desc})")),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The sidecar starts with the queue it loaded.
    Start,
    /// Identified to the hub.
    Connected,
    Disconnected,
    Frame(HubFrame),
    WakeSpawned {
        task_id: String,
        attempt: u32,
        pgid: i32,
    },
    /// The wake command ended. `started`: `<id>.started` existed at that moment;
    /// `log_tail`: the end of its output.
    WakeExited {
        task_id: String,
        attempt: u32,
        outcome: WakeOutcome,
        started: bool,
        log_tail: String,
    },
    /// A file in the results dir changed; `closed`: closed after writing, or renamed in.
    FileChanged {
        name: String,
        closed: bool,
    },
    /// The safety-net rescan.
    Rescan,
    Observed {
        look: Look,
        observation: Observation,
    },
    /// A timer may be due.
    Tick,
    /// A required persist (or the write of an answer) failed; the actions after it were not
    /// carried out.
    PersistFailed,
    /// About to write the answer to `request_id`, the executor found another question in
    /// `.needs-input`: the agent asked again. Nothing was written; the rest of the batch dropped.
    AnswerSuperseded {
        task_id: String,
        request_id: String,
    },
    /// The task's worktree is ready (made or adopted, set up).
    WorkspaceReady {
        task_id: String,
        workspace: Workspace,
    },
    /// It could not be made or set up, for this reason.
    WorkspaceFailed {
        task_id: String,
        reason: String,
    },
    /// What the agent left is committed (and pushed); `change`: what the attempt changed.
    Committed {
        task_id: String,
        change: Option<Change>,
    },
    /// It could not be committed (or pushed), for this reason; the worktree is kept as it is.
    CommitFailed {
        task_id: String,
        reason: String,
    },
}

/// The files of a task the machine removes one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFile {
    /// `<id>.needs-input`, once its answer is written.
    NeedsInput,
    /// `<id>.input`, an earlier answer, when the agent asks again.
    Input,
}

impl TaskFile {
    pub fn ext(self) -> &'static str {
        match self {
            TaskFile::NeedsInput => "needs-input",
            TaskFile::Input => "input",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write `queue.json` durably. When `required` fails, the rest of the batch is dropped and
    /// [`Event::PersistFailed`] comes back.
    Persist {
        queue: Box<QueueFile>,
        required: bool,
    },
    Send(AgentFrame),
    /// Write the task file and start wake number `attempt`; answer with `WakeSpawned`, or
    /// `WakeExited` with `SpawnFailed`, and `WakeExited` when it ends.
    SpawnWake {
        task_id: String,
        attempt: u32,
        generation: u64,
        task_json: String,
        vars: Vec<(&'static str, String)>,
        /// Where it runs: the task's worktree, else `repo_dir`.
        cwd: Option<PathBuf>,
    },
    /// Stop process group `pgid` if it still runs a wake of `task_id`.
    StopGroup {
        pgid: i32,
        task_id: String,
    },
    /// Stop every group running a wake of `task_id` for this agent (found by environment), and
    /// the `recorded` group if it still runs one.
    StopOrphans {
        task_id: String,
        recorded: Option<i32>,
    },
    /// Remove `<id>.started`, `<id>.json`, `<id>.progress`, `<id>.needs-input`, `<id>.input`
    /// and `<id>.usage` left from an earlier attempt.
    ClearResults {
        task_id: String,
    },
    RemoveTaskFile {
        task_id: String,
        file: TaskFile,
    },
    /// Write `answer` to `<id>.input` durably, unless `<id>.needs-input` now holds a question
    /// other than `asked` (answer `AnswerSuperseded`). A failed write answers `PersistFailed`.
    /// Either drops the rest of the batch.
    WriteAnswer {
        task_id: String,
        request_id: String,
        answer: String,
        asked: Asked,
    },
    /// Remove all the task's files; the result file is renamed to `keep_result_as` instead.
    RemoveFiles {
        task_id: String,
        keep_result_as: Option<PathBuf>,
    },
    /// Read the task's files and answer with `Observed`; with `check_agent`, also whether a
    /// process of the task's wake still runs (`recorded` group, or found by environment).
    Observe {
        task_id: String,
        progress: ProgressCursor,
        result_closed: bool,
        look: Look,
        check_agent: Option<Option<i32>>,
    },
    /// Make or adopt the task's worktree and set it up; answer with `WorkspaceReady` or
    /// `WorkspaceFailed` (it may take as long as the setup command).
    PrepareWorkspace {
        task_id: String,
        /// The task's own `branch` field: where its branch starts.
        from_branch: Option<String>,
        /// What was on record of it (a step cut short by a crash).
        previous: Option<Workspace>,
        /// The task's environment, for the setup command.
        vars: Vec<(&'static str, String)>,
    },
    /// Commit whatever the agent left in the worktree, push it, and answer with `Committed`
    /// (what changed) or `CommitFailed`.
    CommitWorkspace {
        task_id: String,
        workspace: Workspace,
        message: String,
        generation: u64,
    },
    /// The hub has the report: remove the task's worktree, or keep it for a while (`keep`: the
    /// attempt failed, or the task was taken away).
    ReleaseWorkspace {
        task_id: String,
        keep: bool,
    },
    /// Exit so that our supervisor starts us again.
    Exit,
}
