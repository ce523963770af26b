//! Each task in its own git worktree and branch (`workspace = "worktree"`): what the sidecar is
//! configured with, and the record of a task's worktree (kept in `queue.json` with the task).
//! The IO is in [`ops`]: preparing a worktree, committing what the agent left, releasing it,
//! and the janitor that saves and removes worktrees no task holds any more.

pub mod include;
pub mod ops;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where a task runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// In `repo_dir` itself, or the sidecar's folder (AgentCom's way).
    RepoDir,
    /// In a worktree of `repo_dir` of its own, on a branch of its own.
    Worktree(Box<WorktreeConfig>),
}

/// The settings of `workspace = "worktree"`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct WorktreeConfig {
    pub repo_dir: PathBuf,
    pub worktrees_dir: PathBuf,
    pub branch_prefix: String,
    /// `None`: the branch `repo_dir` has checked out when the sidecar starts.
    pub base_branch: Option<String>,
    pub push_remote: Option<String>,
    pub setup_command: Option<String>,
    pub setup_timeout: Duration,
    pub author_name: String,
    pub author_email: String,
    pub keep_failed: Duration,
    pub max_worktrees: usize,
    /// A changed file over this is not committed: the attempt fails saying which.
    pub max_commit_file_bytes: u64,
    /// The patch sent to the hub is cut at this.
    pub max_patch_bytes: usize,
    /// How long one git command may take.
    pub git_timeout: Duration,
}

/// What the config file says about workspaces, as written.
#[derive(Debug, Default, Clone)]
pub struct WorkspaceFields {
    pub workspace: Option<String>,
    pub worktrees_dir: Option<PathBuf>,
    pub branch_prefix: Option<String>,
    pub base_branch: Option<String>,
    pub push_remote: Option<String>,
    pub setup_command: Option<String>,
    pub setup_timeout_ms: Option<u64>,
    pub commit_author: Option<String>,
    pub keep_failed_worktrees_h: Option<u64>,
    pub max_worktrees: Option<u64>,
    pub max_commit_file_bytes: Option<u64>,
    pub max_patch_bytes: Option<u64>,
    pub git_timeout_ms: Option<u64>,
}

/// A name git takes for a branch part: letters, digits, `._-/`, no `..`, no leading `-` or `/`,
/// no `.lock` ending, no empty component.
pub fn valid_ref_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !s.contains("..")
        && !s.contains("//")
        && !s.starts_with(['-', '/', '.'])
        && !s.ends_with(".lock")
        && !s.split('/').any(|p| p.starts_with('.') || p.ends_with(".lock"))
}

/// `Name <email>` as a commit identity.
pub fn parse_author(s: &str) -> Option<(String, String)> {
    let (name, rest) = s.split_once('<')?;
    let email = rest.strip_suffix('>')?;
    let name = name.trim();
    let ok = |t: &str| !t.is_empty() && !t.contains(['<', '>', '\n', '\0']);
    (ok(name) && ok(email)).then(|| (name.to_string(), email.trim().to_string()))
}

impl WorkspaceFields {
    /// The mode, with every error listed; paths resolve against `base` (the config's folder).
    pub fn check(
        self,
        repo_dir: Option<&PathBuf>,
        state_dir: &std::path::Path,
        base: &std::path::Path,
        errors: &mut Vec<String>,
    ) -> Mode {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        match self.workspace.as_deref() {
            None | Some("repo_dir") => {
                for (name, set) in [
                    ("worktrees_dir", self.worktrees_dir.is_some()),
                    ("branch_prefix", self.branch_prefix.is_some()),
                    ("base_branch", self.base_branch.is_some()),
                    ("push_remote", self.push_remote.is_some()),
                    ("setup_command", self.setup_command.is_some()),
                ] {
                    if set {
                        errors.push(format!("{name}: only with workspace = \"worktree\""));
                    }
                }
                return Mode::RepoDir;
            }
            Some("worktree") => {}
            Some(other) => {
                errors.push(format!("workspace: {other:?} is not one of \"repo_dir\", \"worktree\""));
                return Mode::RepoDir;
            }
        }
        let Some(repo_dir) = repo_dir.cloned() else {
            errors
                .push("repo_dir: required with workspace = \"worktree\" (the git repository tasks branch from)".into());
            return Mode::RepoDir;
        };
        let branch_prefix = self.branch_prefix.unwrap_or_else(|| "agentcom/".into());
        if !valid_ref_part(&format!("{branch_prefix}x")) {
            errors.push(format!(
                "branch_prefix: {branch_prefix:?} does not make git branch names (letters, digits, '._-/')"
            ));
        }
        if let Some(b) = self.base_branch.as_deref().filter(|b| !valid_ref_part(b)) {
            errors.push(format!("base_branch: {b:?} is not a branch name"));
        }
        if let Some(r) = self.push_remote.as_deref().filter(|r| !valid_ref_part(r) || r.contains('/')) {
            errors.push(format!("push_remote: {r:?} is not a remote name of repo_dir"));
        }
        let (author_name, author_email) =
            match parse_author(self.commit_author.as_deref().unwrap_or("agentcom <agentcom@localhost>")) {
                Some(a) => a,
                None => {
                    errors.push("commit_author: expected \"Name <email>\"".into());
                    (String::new(), String::new())
                }
            };
        let max_worktrees = self.max_worktrees.unwrap_or(32);
        if max_worktrees == 0 || max_worktrees > 10_000 {
            errors.push("max_worktrees: must be 1 to 10000".into());
        }
        let max_patch = self.max_patch_bytes.unwrap_or(256 * 1024);
        if max_patch == 0 || max_patch > proto::MAX_PATCH_BYTES as u64 {
            errors.push(format!("max_patch_bytes: must be 1 to {}", proto::MAX_PATCH_BYTES));
        }
        let ms = |name: &str, v: Option<u64>, def: u64, errors: &mut Vec<String>| {
            if v == Some(0) || v.is_some_and(|v| v > 24 * 3600 * 1000) {
                errors.push(format!("{name}: must be 1 ms to 24 h"));
            }
            Duration::from_millis(v.unwrap_or(def).clamp(1, 24 * 3600 * 1000))
        };
        let setup_timeout = ms("setup_timeout_ms", self.setup_timeout_ms, 600_000, errors);
        let git_timeout = ms("git_timeout_ms", self.git_timeout_ms, 300_000, errors);
        let keep_h = self.keep_failed_worktrees_h.unwrap_or(24);
        if keep_h > 24 * 365 {
            errors.push("keep_failed_worktrees_h: at most a year".into());
        }
        Mode::Worktree(Box::new(WorktreeConfig {
            repo_dir,
            worktrees_dir: self.worktrees_dir.map(resolve).unwrap_or_else(|| state_dir.join("worktrees")),
            branch_prefix,
            base_branch: self.base_branch,
            push_remote: self.push_remote,
            setup_command: self.setup_command.filter(|c| !c.trim().is_empty()),
            setup_timeout,
            author_name,
            author_email,
            keep_failed: Duration::from_secs(keep_h.min(24 * 365) * 3600),
            max_worktrees: max_worktrees.clamp(1, 10_000) as usize,
            max_commit_file_bytes: self.max_commit_file_bytes.unwrap_or(100 << 20),
            max_patch_bytes: max_patch.clamp(1, proto::MAX_PATCH_BYTES as u64) as usize,
            git_timeout,
        }))
    }
}

/// A task's worktree: where it is, its branch, and the commit its first attempt started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub path: PathBuf,
    pub branch: String,
    pub base_sha: String,
    /// The branch the task started from (its change's integration target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
}

impl WorktreeConfig {
    /// The worktree and branch of a task (its id already checked: a safe file name).
    pub fn names(&self, task_id: &str) -> (PathBuf, String) {
        (self.worktrees_dir.join(task_id), format!("{}{task_id}", self.branch_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_parts_and_authors() {
        for ok in ["agentcom/", "agentcom/task-1", "a/b.c_d-e"] {
            assert!(valid_ref_part(&format!("{ok}x")), "{ok}");
        }
        for bad in ["-x", "a..b", "a//b", "/a", "a.lock", "a b", "a~1", "a:b", ".hidden", "a/.b", "ü"] {
            assert!(!valid_ref_part(bad), "{bad}");
        }
        assert_eq!(
            parse_author("agentcom <agentcom@localhost>"),
            Some(("agentcom".into(), "agentcom@localhost".into()))
        );
        assert_eq!(parse_author("no email"), None);
        assert_eq!(parse_author("<x@y>"), None);
    }

    #[test]
    fn worktree_settings_need_repo_dir_and_are_checked() {
        let mut errors = Vec::new();
        let f = WorkspaceFields { workspace: Some("worktree".into()), ..Default::default() };
        f.check(None, std::path::Path::new("/s"), std::path::Path::new("/b"), &mut errors);
        assert!(errors[0].starts_with("repo_dir: required"), "{errors:?}");
        let mut errors = Vec::new();
        let f = WorkspaceFields {
            workspace: Some("worktree".into()),
            branch_prefix: Some("../x".into()),
            commit_author: Some("nobody".into()),
            max_worktrees: Some(0),
            ..Default::default()
        };
        let Mode::Worktree(_) =
            f.check(Some(&PathBuf::from("/r")), std::path::Path::new("/s"), std::path::Path::new("/b"), &mut errors)
        else {
            panic!()
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        let mut errors = Vec::new();
        let f = WorkspaceFields { setup_command: Some("make".into()), ..Default::default() };
        assert_eq!(f.check(None, std::path::Path::new("/s"), std::path::Path::new("/b"), &mut errors), Mode::RepoDir);
        assert_eq!(errors, ["setup_command: only with workspace = \"worktree\""]);
    }
}
