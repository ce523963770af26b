//! `queue.json`: the sidecar's durable state, in AgentCom's shape `{"active", "recovering"}`.
//! Written with `osutil::fs::write_atomic` before anything is acknowledged to the hub.
//!
//! This is the edge between the file and the machine's typed [`Held`]: a file written by
//! AgentCom or by an earlier agentcom loads, and what we write keeps their shape.

use crate::question::Asking;
use crate::task::{Held, Phase, Report, Task};
use proto::AgentFrame;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io;
use std::path::{Path, PathBuf};

/// The `status` strings of `queue.json`: AgentCom's, plus our `reporting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    /// Ours: its worktree is being made.
    Preparing,
    Waking,
    WakingConfirmation,
    Working,
    /// Ours: what the agent left is being committed; `report` holds the report to send after.
    Committing,
    Reporting,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedTask {
    pub task_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub assigned_at: u64,
    pub status: Status,
    /// Wake attempts made so far.
    #[serde(default)]
    pub wake_attempts: u32,
    /// Process group of the running wake, to stop it on cancel.
    #[serde(default)]
    pub wake_pgid: Option<i32>,
    /// Wake number `wake_attempts` failed and the next waits for its delay (our extension): a
    /// restart goes on with the next attempt, so the count survives it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wake_failed: bool,
    /// The `task_complete` / `task_failed` frame waiting for the hub's `task_ack`.
    #[serde(default)]
    pub report: Option<Value>,
    /// The agent's questions: the one forwarded and not answered yet, the answers written
    /// (our extension; absent when the agent asked nothing).
    #[serde(default, skip_serializing_if = "Asking::is_empty")]
    pub needs_input: Asking,
    /// The task's worktree (our extension; worktree mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::workspace::Workspace>,
    /// The session the hub said to resume (our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<String>,
    /// The rest of `task_assign` (repo, branch, routing_decision, ...), kept for the agent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The keys of a record that are ours: a task's extra field by one of these names would
/// collide with it (the extra fields are stored flat, as AgentCom does), so it is dropped when
/// the task is accepted. The task's own keys are here too: an extra field never overrides them.
pub const RESERVED_KEYS: &[&str] = &[
    "task_id",
    "wake_failed",
    "workspace",
    "resume_session",
    "description",
    "metadata",
    "generation",
    "assigned_at",
    "status",
    "wake_attempts",
    "wake_pgid",
    "report",
    "needs_input",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueFile {
    pub active: Option<QueuedTask>,
    pub recovering: Option<QueuedTask>,
}

impl QueuedTask {
    /// The record of `held` as it goes to disk.
    pub fn from_held(held: &Held) -> QueuedTask {
        let t = &held.task;
        let (status, report) = match &held.phase {
            Phase::Accepted => (Status::Accepted, None),
            Phase::Preparing => (Status::Preparing, None),
            Phase::Waking { .. } | Phase::WakingRecovered | Phase::WakeBackoff { .. } => (Status::Waking, None),
            Phase::WakingConfirmation { .. } => (Status::WakingConfirmation, None),
            Phase::Working { .. } => (Status::Working, None),
            Phase::Committing { report } => (Status::Committing, Some(report_record(report, t))),
            Phase::Reporting { report, .. } => (Status::Reporting, Some(report_record(report, t))),
        };
        QueuedTask {
            task_id: t.id.clone(),
            description: t.description.clone(),
            metadata: t.metadata.clone(),
            generation: t.generation,
            assigned_at: t.assigned_at,
            status,
            wake_attempts: held.wakes,
            wake_pgid: held.group,
            wake_failed: matches!(held.phase, Phase::WakeBackoff { .. }),
            report,
            needs_input: held.asking.clone(),
            workspace: held.workspace.clone(),
            resume_session: t.resume_session.clone(),
            extra: t.extra.clone(),
        }
    }

    /// The task as the machine holds it. Deadlines start at `now`; a `reporting` record whose
    /// report cannot be read goes back to `working`, so the result file (kept until the hub
    /// acknowledged it) is read again.
    pub fn into_held(self, now: crate::machine::Now) -> Result<Held, String> {
        let _ = now;
        proto::check_task_id(&self.task_id)?;
        let report = self.report.as_ref().map(|v| {
            let keep_result = v.get("keep_result").and_then(Value::as_bool).unwrap_or(false);
            match serde_json::from_value::<AgentFrame>(v.clone()) {
                Ok(AgentFrame::TaskComplete { result, tokens_used, usage, change, session_id, .. }) => {
                    Some(Report::Complete {
                        result: result.unwrap_or(Value::Null),
                        tokens_used,
                        usage,
                        change,
                        session_id,
                    })
                }
                Ok(AgentFrame::TaskFailed { reason, error, usage, change, session_id, .. }) => Some(Report::Failed {
                    reason: reason.or(error).unwrap_or_else(|| "unknown".into()),
                    keep_result,
                    usage,
                    change,
                    session_id,
                }),
                Ok(AgentFrame::TaskLimited { limit, usage, change, session_id, .. }) => {
                    Some(Report::Limited { limit, usage, change, session_id })
                }
                _ => None,
            }
        });
        let phase = match (self.status, report.flatten()) {
            (Status::Accepted, _) => Phase::Accepted,
            (Status::Preparing, _) => Phase::Preparing,
            (Status::Committing, Some(report)) => Phase::Committing { report },
            // A report that cannot be read: the result file (still there) is read again.
            (Status::Committing, None) => Phase::Working { foreground: false, exited: None },
            (Status::Waking, _) if self.wake_failed => Phase::WakeBackoff { at: now },
            (Status::Waking, _) => Phase::WakingRecovered,
            (Status::WakingConfirmation, _) => Phase::WakingConfirmation { deadline: now },
            (Status::Working, _) => Phase::Working { foreground: false, exited: None },
            (Status::Reporting, Some(report)) => Phase::Reporting { report, resend_at: None },
            (Status::Reporting, None) => {
                tracing::warn!(task_id = %self.task_id, "the stored report cannot be read; reading the result file again");
                Phase::Working { foreground: false, exited: None }
            }
        };
        let asking = self.needs_input.checked().unwrap_or_else(|e| {
            tracing::warn!(task_id = %self.task_id, error = %e, "the stored questions cannot be used; forgetting them (an open question is asked again)");
            Asking::default()
        });
        Ok(Held {
            task: Task {
                id: self.task_id,
                description: self.description,
                metadata: self.metadata,
                generation: self.generation,
                assigned_at: self.assigned_at,
                extra: self.extra,
                resume_session: self.resume_session.filter(|s| proto::check_session_id(s).is_ok()),
            },
            phase,
            wakes: self.wake_attempts,
            group: self.wake_pgid,
            asking,
            workspace: self.workspace,
        })
    }
}

/// A report as `queue.json` keeps it: the frame, and whether the result file is to be kept.
fn report_record(report: &Report, t: &crate::task::Task) -> Value {
    let mut v = serde_json::to_value(report.frame(t)).expect("frames serialize");
    if let (Report::Failed { keep_result: true, .. }, Value::Object(m)) = (report, &mut v) {
        m.insert("keep_result".into(), true.into());
    }
    v
}

pub struct QueueStore {
    path: PathBuf,
}

/// What loading found.
pub struct Loaded {
    pub queue: QueueFile,
    /// Set when the file was corrupt and was moved aside to this path.
    pub moved_aside: Option<(PathBuf, String)>,
}

impl QueueStore {
    pub fn new(state_dir: &Path) -> QueueStore {
        QueueStore { path: state_dir.join("queue.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the queue. A missing file is an empty queue; a corrupt one is moved aside as
    /// `queue.json.corrupt-<unix ms>` and an empty queue returned, so the sidecar never crash-loops.
    pub fn load(&self) -> io::Result<Loaded> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded { queue: QueueFile::default(), moved_aside: None })
            }
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<QueueFile>(&bytes) {
            Ok(queue) => Ok(Loaded { queue, moved_aside: None }),
            Err(e) => {
                let ms = osutil::clock::epoch_ms();
                let aside = self.path.with_file_name(format!("queue.json.corrupt-{ms}"));
                std::fs::rename(&self.path, &aside)?;
                osutil::fs::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
                Ok(Loaded { queue: QueueFile::default(), moved_aside: Some((aside, e.to_string())) })
            }
        }
    }

    pub fn save(&self, q: &QueueFile) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(q).expect("the queue serializes");
        osutil::fs::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip_keeps_v1_shape_and_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::new(dir.path());
        let mut extra = Map::new();
        extra.insert("repo".into(), json!("r"));
        let t = QueuedTask {
            task_id: "t".into(),
            description: "d".into(),
            metadata: json!({}),
            generation: 2,
            assigned_at: 5,
            status: Status::WakingConfirmation,
            wake_attempts: 1,
            wake_pgid: None,
            wake_failed: false,
            report: None,
            needs_input: Asking::default(),
            workspace: None,
            resume_session: None,
            extra,
        };
        s.save(&QueueFile { active: Some(t.clone()), recovering: None }).unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(s.path()).unwrap()).unwrap();
        assert_eq!(raw["active"]["status"], "waking_confirmation");
        assert_eq!(raw["active"]["repo"], "r");
        assert!(raw["recovering"].is_null());
        assert_eq!(s.load().unwrap().queue.active, Some(t));
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::new(dir.path());
        std::fs::write(s.path(), b"{\"active\": tru").unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.queue, QueueFile::default());
        let (aside, why) = l.moved_aside.unwrap();
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("queue.json.corrupt-"));
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"active\": tru");
        assert!(!why.is_empty());
        assert!(!s.path().exists());
    }

    #[test]
    fn files_written_by_main_and_by_agentcom_load_and_keep_their_shape() {
        let main = json!({
            "active": {
                "task_id": "task-abc", "description": "d", "metadata": {"k": 1}, "generation": 3,
                "assigned_at": 5, "status": "reporting", "wake_attempts": 1, "wake_pgid": 1234,
                "report": {"type": "task_complete", "task_id": "task-abc", "generation": 3,
                           "result": {"status": "success"}, "tokens_used": 7},
                "repo": "r"
            },
            "recovering": null
        });
        let q: QueueFile = serde_json::from_value(main.clone()).unwrap();
        let held = q.active.clone().unwrap().into_held(std::time::Duration::ZERO).unwrap();
        assert_eq!(held.task.extra["repo"], "r");
        assert_eq!(held.group, Some(1234));
        let crate::task::Phase::Reporting { report, .. } = &held.phase else { panic!("{:?}", held.phase) };
        assert_eq!(
            report,
            &Report::Complete {
                result: json!({"status": "success"}),
                tokens_used: Some(json!(7)),
                usage: None,
                change: None,
                session_id: None
            }
        );
        // Written back, it is the same file.
        let back = QueueFile { active: Some(QueuedTask::from_held(&held)), recovering: None };
        assert_eq!(serde_json::to_value(&back).unwrap(), main);

        let v1 = json!({"active": {"task_id": "t1", "status": "waking_confirmation", "description": "x"}, "recovering": null});
        let q: QueueFile = serde_json::from_value(v1).unwrap();
        let held = q.active.unwrap().into_held(std::time::Duration::ZERO).unwrap();
        assert!(matches!(held.phase, crate::task::Phase::WakingConfirmation { .. }));
    }

    #[test]
    fn a_stored_task_id_that_is_a_path_is_refused() {
        let q: QueueFile =
            serde_json::from_value(json!({"active": {"task_id": "../../x", "status": "working"}, "recovering": null}))
                .unwrap();
        assert!(q.active.unwrap().into_held(std::time::Duration::ZERO).is_err());
    }

    #[test]
    fn an_unreadable_report_goes_back_to_working_and_a_kept_result_is_remembered() {
        let q: QueueFile = serde_json::from_value(json!({"active": {
            "task_id": "t", "status": "reporting", "report": {"type": "nonsense"}}, "recovering": null}))
        .unwrap();
        let held = q.active.unwrap().into_held(std::time::Duration::ZERO).unwrap();
        assert!(matches!(held.phase, crate::task::Phase::Working { .. }));
        let kept = Held {
            phase: crate::task::Phase::Reporting {
                report: Report::Failed {
                    reason: "result_too_large: x".into(),
                    keep_result: true,
                    usage: None,
                    change: None,
                    session_id: None,
                },
                resend_at: None,
            },
            ..held
        };
        let record = QueuedTask::from_held(&kept);
        assert_eq!(record.report.as_ref().unwrap()["keep_result"], true);
        assert_eq!(record.into_held(std::time::Duration::ZERO).unwrap().phase, kept.phase);
    }
}
