//! The watchdog: when the agent stays offline (not online under its supervisor, or not
//! connected at the hub) past a threshold after an upgrade, roll back to the commit before that
//! upgrade, restore the checkpoint if it is gone, and restart the agent.

use crate::checkpoint::{self, Checkpoint};
use crate::git::Repo;
use crate::upgrade::{last_upgrade, read_journal, short};
use crate::GuardError;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use supervisor::backend::Backend;
use tokio_util::sync::CancellationToken;

pub struct WatchOptions {
    pub repo: PathBuf,
    pub process: String,
    /// The hub that also sees the agent (connected or not) and keeps its checkpoint.
    pub hub: Option<client::Client>,
    pub agent_id: String,
    pub offline_after: Duration,
    pub interval: Duration,
    pub state_dir: PathBuf,
}

/// Whether the agent is up: online under the supervisor, and connected at the hub when the hub
/// answers (a hub that does not answer is no evidence against the agent).
async fn online(o: &WatchOptions, backend: &Backend, hub: Option<&client::Client>) -> (bool, String) {
    let status = backend.list().ok().and_then(|l| l.into_iter().find(|s| s.name == o.process));
    match status {
        Some(s) if s.status == "online" => {}
        Some(s) => return (false, format!("{} is {} under the supervisor", o.process, s.status)),
        None => return (false, format!("{} is not known to the supervisor", o.process)),
    }
    if let Some(h) = hub {
        let connected = match h.call(&proto::api::GetAgent { agent_id: o.agent_id.clone() }).await {
            Ok(a) => Some(a.connected),
            Err(e) if e.code() == Some(proto::api::ErrorCode::UnknownAgent) => Some(false),
            Err(_) => None,
        };
        if connected == Some(false) {
            return (false, format!("{} is not connected at the hub", o.agent_id));
        }
    }
    (true, String::new())
}

pub async fn run(o: WatchOptions, backend: Backend, shutdown: CancellationToken) -> Result<(), GuardError> {
    let repo = Repo::open(&o.repo)?;
    let hub = o.hub.clone();
    tracing::info!(repo = %o.repo.display(), process = %o.process, offline_after_ms = o.offline_after.as_millis() as u64, "guard watching");
    let mut offline_since: Option<Instant> = None;
    loop {
        let (up, why) = online(&o, &backend, hub.as_ref()).await;
        tracing::debug!(up, reason = %why, "agent checked");
        if up {
            offline_since = None;
        } else {
            let since = *offline_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= o.offline_after {
                match act(&o, &repo, &backend, hub.as_ref()).await {
                    Ok(Some(msg)) => tracing::warn!(reason = %why, "{msg}"),
                    Ok(None) => {
                        tracing::debug!(reason = %why, "agent offline, but not after an upgrade: nothing to roll back")
                    }
                    Err(e) => tracing::error!(error = %e, "rollback failed"),
                }
                offline_since = None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(o.interval) => {}
        }
    }
}

/// Rolls back only if HEAD is the result of the last committed upgrade and no upgrade is in
/// flight (the upgrade command owns its own window).
async fn act(
    o: &WatchOptions,
    repo: &Repo,
    backend: &Backend,
    hub: Option<&client::Client>,
) -> Result<Option<String>, GuardError> {
    if read_journal(repo).is_some() {
        return Ok(None);
    }
    let head = repo.head()?;
    let Some((from, to)) = last_upgrade(repo) else { return Ok(None) };
    if to != head {
        return Ok(None);
    }
    // Keep anything uncommitted the agent left, rather than destroying it.
    if !repo.is_clean()? {
        repo.git(&["stash", "push", "--include-untracked", "-m", "agentcom guard: before rollback"])?;
    }
    repo.git(&["reset", "--hard", &from])?;
    restore_checkpoint(o, hub).await;
    backend.restart(&o.process)?;
    // Record it so the same upgrade is not rolled back twice.
    let path = repo.git_dir()?.join(crate::upgrade::HISTORY);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&serde_json::json!({ "from": to, "to": from, "rolled_back": true }).to_string());
    text.push('\n');
    let _ = osutil::fs::write_atomic(&path, text.as_bytes());
    Ok(Some(format!(
        "agent offline past {:?} after an upgrade: rolled back {} -> {} and restarted {}",
        o.offline_after,
        short(&to),
        short(&from),
        o.process
    )))
}

/// The agent restarts with its checkpoint: if the local copy is gone, fetch it from the hub.
async fn restore_checkpoint(o: &WatchOptions, hub: Option<&client::Client>) {
    if o.state_dir.join(checkpoint::TASK_FILE).exists() {
        return;
    }
    let Some(h) = hub else { return };
    if let Ok(v) = h.call(&proto::api::GetCheckpoint { agent_id: o.agent_id.clone() }).await {
        if let Ok(c) = serde_json::from_value::<Checkpoint>(v.checkpoint) {
            let _ = c.save(&o.state_dir);
        }
    }
}
