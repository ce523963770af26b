//! `current_task.md` and the conversation history: what an agent needs to carry on after a
//! restart, written durably before any restart and read back at start.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const TASK_FILE: &str = "current_task.md";
pub const HISTORY_FILE: &str = "history.jsonl";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub objective: String,
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub pending: Vec<String>,
    #[serde(default)]
    pub state: String,
    /// Conversation history, one JSON value per line.
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
    #[serde(default)]
    pub saved_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{file}:{line}: not a JSON line: {message}")]
    History { file: String, line: usize, message: String },
    #[error("no checkpoint in {0}")]
    Missing(String),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> CheckpointError {
    move |source| CheckpointError::Io { context, source }
}

/// `AGENTCOM_STATE_DIR`, else `./agentcom-data/agent`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("AGENTCOM_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./agentcom-data/agent"))
}

pub fn read_history(path: &Path) -> Result<Vec<serde_json::Value>, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| CheckpointError::History {
                file: path.display().to_string(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

impl Checkpoint {
    /// The `current_task.md` form: objective, conversation context, pending actions as a
    /// checklist, state.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Current Task\n{}\n\n## Conversation Context\n{}\n\n## Pending Actions\n",
            self.objective.trim(),
            self.context.trim()
        );
        for p in &self.pending {
            md.push_str(&format!("- [ ] {}\n", p.trim()));
        }
        md.push_str(&format!("\n## State\n{}\n", self.state.trim()));
        if !self.saved_at.is_empty() {
            md.push_str(&format!(
                "\n<!-- saved by agentcom at {}; {} history lines in {HISTORY_FILE} -->\n",
                self.saved_at,
                self.history.len()
            ));
        }
        md
    }

    /// Writes both files durably (temp, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let mut lines = String::new();
        for v in &self.history {
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
        osutil::fs::write_atomic(&dir.join(HISTORY_FILE), lines.as_bytes())
            .map_err(io(format!("cannot write {HISTORY_FILE}")))?;
        osutil::fs::write_atomic(&dir.join(TASK_FILE), self.markdown().as_bytes())
            .map_err(io(format!("cannot write {TASK_FILE}")))?;
        osutil::fs::write_atomic(&dir.join("checkpoint.json"), &serde_json::to_vec_pretty(self).expect("json"))
            .map_err(io("cannot write checkpoint.json".into()))
    }

    pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let p = dir.join("checkpoint.json");
        let bytes = std::fs::read(&p).map_err(|_| CheckpointError::Missing(dir.display().to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Io {
            context: format!("{} is corrupt", p.display()),
            source: std::io::Error::other(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_the_four_sections_and_a_checklist() {
        let c = Checkpoint {
            objective: "Ship v2".into(),
            context: "user asked for X".into(),
            pending: vec!["run tests".into(), "merge".into()],
            state: "branch feature/x pushed".into(),
            history: vec![serde_json::json!({"role": "user", "content": "hi"})],
            saved_at: "now".into(),
        };
        let md = c.markdown();
        for s in [
            "# Current Task\nShip v2",
            "## Conversation Context\nuser asked for X",
            "## Pending Actions\n- [ ] run tests\n- [ ] merge",
            "## State\nbranch",
        ] {
            assert!(md.contains(s), "{s} missing in {md}");
        }
        let dir = tempfile::tempdir().unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), c);
        assert_eq!(read_history(&dir.path().join(HISTORY_FILE)).unwrap().len(), 1);
    }

    #[test]
    fn bad_history_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        std::fs::write(&p, "{\"a\":1}\nnope\n").unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(e.contains("h.jsonl:2"), "{e}");
    }
}
