//! `state.json`: the desired state and the groups we last ran, written atomically, read back at
//! start (a corrupt file is moved aside, never fatal). Both block: the shell runs them off its
//! event loop.

use super::STATE;
use proto::control::ProcSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub processes: Vec<PersistedProc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedProc {
    /// The process's id (`None` in a file written before ids: one is given at restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    pub spec: ProcSpec,
    pub desired: bool,
    pub pgid: Option<i32>,
    pub restart_count: u64,
    /// Other groups of this process that run: a reload's successor, or an old process being
    /// stopped after a reload. A supervisor killed meanwhile stops them at its next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_pgids: Vec<i32>,
}

pub fn save(dir: &Path, p: &Persisted) {
    let path = dir.join(STATE);
    if let Err(e) = osutil::fs::write_atomic(&path, &serde_json::to_vec_pretty(p).expect("state serializes")) {
        tracing::error!(path = %path.display(), error = %e, "cannot write the supervisor state");
    }
}

pub fn load(dir: &Path, now_ms: u64) -> Persisted {
    let path = dir.join(STATE);
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(p) => p,
            Err(e) => {
                let aside = path.with_file_name(format!("{STATE}.corrupt-{now_ms}"));
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(path = %aside.display(), error = %e, "supervisor state was corrupt; moved aside");
                Persisted::default()
            }
        },
        Err(_) => Persisted::default(),
    }
}
