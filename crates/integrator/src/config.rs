//! `integrate.toml`: the hub connection (the sidecar's keys) and how changes are integrated,
//! checked once at start with every error listed.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// As written; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub agent_id: Option<String>,
    pub token: Option<String>,
    pub hub_url: Option<sidecar::config::HubUrls>,
    pub tls_ca_file: Option<PathBuf>,
    /// A clone of the repository the integrator owns (its scratch worktrees live beside it).
    pub repo_dir: Option<PathBuf>,
    pub remote: Option<String>,
    pub target_branch: Option<String>,
    pub check_command: Option<String>,
    pub check_timeout_ms: Option<u64>,
    pub strategy: Option<String>,
    pub batch_max: Option<u64>,
    pub max_integration_attempts: Option<u64>,
    pub require_review: Option<bool>,
    pub after_merge_command: Option<String>,
    pub after_merge_timeout_ms: Option<u64>,
    /// Where the integrator keeps its state (its sidecar's journal, scratch worktrees).
    pub state_dir: Option<PathBuf>,
    pub commit_author: Option<String>,
    pub git_timeout_ms: Option<u64>,
}

/// How each change joins the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Its commits are replayed on the target (linear history).
    Rebase,
    /// A merge commit.
    Merge,
}

/// The settings, checked.
#[derive(Debug, Clone)]
pub struct IntegrateConfig {
    pub agent_id: String,
    pub token: String,
    pub hub_urls: Vec<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub repo_dir: PathBuf,
    pub remote: String,
    pub target_branch: String,
    pub check_command: Option<String>,
    pub check_timeout: Duration,
    pub strategy: Strategy,
    pub batch_max: usize,
    pub max_integration_attempts: u32,
    pub require_review: bool,
    pub after_merge_command: Option<String>,
    pub after_merge_timeout: Duration,
    pub state_dir: PathBuf,
    pub author_name: String,
    pub author_email: String,
    pub git_timeout: Duration,
}

impl IntegrateConfig {
    pub fn load(path: &Path) -> Result<IntegrateConfig, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        let f: FileConfig = toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
        IntegrateConfig::from_file(f, &base)
    }

    /// The settings from a parsed file; relative paths resolve against `base`.
    pub fn from_file(f: FileConfig, base: &Path) -> Result<IntegrateConfig, Vec<String>> {
        let mut errors = Vec::new();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut required = |name: &str, v: Option<String>| {
            v.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| {
                errors.push(format!("{name}: required"));
                String::new()
            })
        };
        let agent_id = required("agent_id", f.agent_id);
        let token = required("token", f.token);
        let hub_urls = match f.hub_url {
            None => {
                errors.push("hub_url: required (ws://host:4000/ws)".into());
                Vec::new()
            }
            Some(sidecar::config::HubUrls::One(u)) => vec![u],
            Some(sidecar::config::HubUrls::Many(v)) => v,
        };
        let repo_dir = match f.repo_dir {
            Some(d) => resolve(d),
            None => {
                errors.push("repo_dir: required (a clone of the repository, the integrator's own)".into());
                PathBuf::new()
            }
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
                && !s.starts_with(['-', '.', '/'])
                && !s.contains("..")
        };
        let remote = f.remote.unwrap_or_else(|| "origin".into());
        if !name_ok(&remote) || remote.contains('/') {
            errors.push(format!("remote: {remote:?} is not a remote name"));
        }
        let target_branch = f.target_branch.unwrap_or_else(|| "main".into());
        if !name_ok(&target_branch) {
            errors.push(format!("target_branch: {target_branch:?} is not a branch name"));
        }
        let strategy = match f.strategy.as_deref() {
            None | Some("rebase") => Strategy::Rebase,
            Some("merge") => Strategy::Merge,
            Some(other) => {
                errors.push(format!("strategy: {other:?} is not one of \"rebase\", \"merge\""));
                Strategy::Rebase
            }
        };
        let ms = |name: &str, v: Option<u64>, def: u64, errors: &mut Vec<String>| {
            if v == Some(0) || v.is_some_and(|v| v > 24 * 3600 * 1000) {
                errors.push(format!("{name}: must be 1 ms to 24 h"));
            }
            Duration::from_millis(v.unwrap_or(def).clamp(1, 24 * 3600 * 1000))
        };
        let check_timeout = ms("check_timeout_ms", f.check_timeout_ms, 1_800_000, &mut errors);
        let after_merge_timeout = ms("after_merge_timeout_ms", f.after_merge_timeout_ms, 300_000, &mut errors);
        let git_timeout = ms("git_timeout_ms", f.git_timeout_ms, 300_000, &mut errors);
        let batch_max = f.batch_max.unwrap_or(1);
        if !(1..=64).contains(&batch_max) {
            errors.push("batch_max: must be 1 to 64".into());
        }
        let attempts = f.max_integration_attempts.unwrap_or(2);
        if !(1..=100).contains(&attempts) {
            errors.push("max_integration_attempts: must be 1 to 100".into());
        }
        let (author_name, author_email) = match sidecar::workspace::parse_author(
            f.commit_author.as_deref().unwrap_or("agentcom <agentcom@localhost>"),
        ) {
            Some(a) => a,
            None => {
                errors.push("commit_author: expected \"Name <email>\"".into());
                (String::new(), String::new())
            }
        };
        let state_dir = resolve(f.state_dir.unwrap_or_else(|| PathBuf::from("integrate-state")));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(IntegrateConfig {
            agent_id,
            token,
            hub_urls,
            tls_ca_file: f.tls_ca_file.map(resolve),
            repo_dir,
            remote,
            target_branch,
            check_command: f.check_command.filter(|c| !c.trim().is_empty()),
            check_timeout,
            strategy,
            batch_max: batch_max.clamp(1, 64) as usize,
            max_integration_attempts: attempts.clamp(1, 100) as u32,
            require_review: f.require_review.unwrap_or(false),
            after_merge_command: f.after_merge_command.filter(|c| !c.trim().is_empty()),
            after_merge_timeout,
            state_dir,
            author_name,
            author_email,
            git_timeout,
        })
    }

    /// The hub's HTTP base for the API, from its WebSocket URL (`ws://h:4000/ws` →
    /// `http://h:4000`).
    pub fn api_urls(&self) -> Vec<String> {
        self.hub_urls
            .iter()
            .map(|u| {
                let http = u.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
                http.strip_suffix("/ws").unwrap_or(&http).to_string()
            })
            .collect()
    }

    /// The capabilities the integrator's agent offers: any integration, and this target's.
    pub fn capabilities(&self) -> Vec<String> {
        vec![
            proto::api::INTEGRATE_CAPABILITY.to_string(),
            format!("{}:{}", proto::api::INTEGRATE_CAPABILITY, self.target_branch),
        ]
    }
}
