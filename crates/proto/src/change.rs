//! What an attempt changed in its task's git worktree, as committed on the task's branch: the
//! sidecar sends it with the report (with the patch, bounded), the hub keeps it on the task and
//! shows the patch on its own route.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Paths listed at most.
pub const MAX_CHANGE_FILES: usize = 200;
/// Longest path listed, in characters.
pub const MAX_CHANGE_PATH: usize = 4096;
/// Largest patch carried, in bytes (a frame holds at most 1 MiB).
pub const MAX_PATCH_BYTES: usize = 512 * 1024;
/// Longest branch name.
pub const MAX_BRANCH: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub branch: String,
    /// The commit the attempt started from.
    pub base_sha: String,
    /// The branch's commit when the attempt ended.
    pub head_sha: String,
    /// The branch the task started from (where its change is integrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    /// Commits from `base_sha` to `head_sha`.
    pub commits: u64,
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
    /// The first [`MAX_CHANGE_FILES`] paths changed.
    #[serde(default)]
    pub files: Vec<String>,
    /// `git diff base_sha head_sha`, cut at [`MAX_PATCH_BYTES`] (on the wire from the sidecar;
    /// the hub serves it from `GET /api/tasks/:id/diff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// The patch was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patch_cut: bool,
}

fn sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Change {
    /// Reads a `change` sent by an agent, naming every field that is wrong.
    pub fn from_value(v: &Value) -> Result<Change, Vec<String>> {
        let c: Change = serde_json::from_value(v.clone()).map_err(|e| vec![format!("change: {e}")])?;
        let mut errors = Vec::new();
        if c.branch.is_empty() || c.branch.chars().count() > MAX_BRANCH || c.branch.chars().any(char::is_control) {
            errors.push(format!("change.branch: 1 to {MAX_BRANCH} printable characters"));
        }
        for (name, v) in [("base_sha", &c.base_sha), ("head_sha", &c.head_sha)] {
            if !sha(v) {
                errors.push(format!("change.{name}: expected a commit id (hex)"));
            }
        }
        if c.base_branch
            .as_ref()
            .is_some_and(|b| b.is_empty() || b.chars().count() > MAX_BRANCH || b.chars().any(char::is_control))
        {
            errors.push(format!("change.base_branch: 1 to {MAX_BRANCH} printable characters"));
        }
        if c.files.len() > MAX_CHANGE_FILES {
            errors.push(format!("change.files: more than {MAX_CHANGE_FILES} paths"));
        }
        if c.files.iter().any(|f| f.chars().count() > MAX_CHANGE_PATH) {
            errors.push(format!("change.files: a path longer than {MAX_CHANGE_PATH} characters"));
        }
        if c.patch.as_ref().is_some_and(|p| p.len() > MAX_PATCH_BYTES) {
            errors.push(format!("change.patch: more than {MAX_PATCH_BYTES} bytes"));
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }

    /// The change without its patch (what a task shows).
    pub fn summary(&self) -> Change {
        Change { patch: None, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"branch": "agentcom/t", "base_sha": "a".repeat(40), "head_sha": "b".repeat(40), "commits": 1,
               "files_changed": 1, "insertions": 1, "deletions": 0, "files": ["x"], "patch": "+x\n"})
    }

    #[test]
    fn a_change_is_read_with_every_wrong_field_named() {
        let c = Change::from_value(&good()).unwrap();
        assert_eq!(c.summary().patch, None);
        let mut bad = good();
        bad["branch"] = json!("a\u{1b}b");
        bad["base_sha"] = json!("--upload-pack=x");
        bad["head_sha"] = json!("abc");
        bad["files"] = json!(vec!["f"; MAX_CHANGE_FILES + 1]);
        bad["patch"] = json!("x".repeat(MAX_PATCH_BYTES + 1));
        let errors = Change::from_value(&bad).unwrap_err();
        for field in ["branch", "base_sha", "head_sha", "files", "patch"] {
            assert!(errors.iter().any(|e| e.starts_with(&format!("change.{field}"))), "{field}: {errors:?}");
        }
        let mut negative = good();
        negative["commits"] = json!(-1);
        assert!(Change::from_value(&negative).is_err());
    }
}
