//! `queue.json`: the sidecar's durable state, in AgentCom's shape `{"active", "recovering"}`.
//! Written with `osutil::fs::write_atomic` before anything is acknowledged to the hub.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io;
use std::path::{Path, PathBuf};

/// Where a task is in its life beside the agent. Persisted on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Persisted; `task_accepted` sent; the wake has not started.
    Accepted,
    /// The wake command is running.
    Waking,
    /// The wake command succeeded; waiting for `<task_id>.started`.
    WakingConfirmation,
    /// The agent confirmed; waiting for `<task_id>.json`.
    Working,
    /// A report (`report`) is on its way to the hub and not yet acknowledged.
    Reporting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Waking => "waking",
            Phase::WakingConfirmation => "waking_confirmation",
            Phase::Working => "working",
            Phase::Reporting => "reporting",
        }
    }
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
    pub status: Phase,
    /// Wake attempts made so far.
    #[serde(default)]
    pub wake_attempts: u32,
    /// Process group of the running wake, to stop it on cancel.
    #[serde(default)]
    pub wake_pgid: Option<i32>,
    /// The `task_complete` / `task_failed` frame waiting for the hub's `task_ack`.
    #[serde(default)]
    pub report: Option<Value>,
    /// The rest of `task_assign` (repo, branch, routing_decision, ...), kept for the agent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueFile {
    pub active: Option<QueuedTask>,
    pub recovering: Option<QueuedTask>,
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
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
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
            status: Phase::WakingConfirmation,
            wake_attempts: 1,
            wake_pgid: None,
            report: None,
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
}
