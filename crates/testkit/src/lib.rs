//! Dev-only helpers for end-to-end tests and benchmarks: start the real `agentcom` binary on
//! port 0 in a temp dir, talk HTTP to it, and speak AgentCom v1 frames over a real WebSocket.

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// A headless Chromium over WebDriver, for the dashboard's tests.
pub mod browser;
/// Certificates for TLS tests.
pub mod tls;

/// A real PostgreSQL cluster and fresh databases for tests.
pub mod postgres;
pub use postgres::Postgres;

/// Several real hubs on one PostgreSQL database.
pub mod cluster;
pub use cluster::HubCluster;

/// A scripted Anthropic Messages API for the real Claude Code CLI.
pub mod anthropic;
mod events;
/// Real git repositories, and a `git` that crashes its caller at a chosen step.
pub mod git;
mod http;
mod hub;
mod net;
/// A scripted OpenAI Responses API for the real Codex CLI.
pub mod openai;
mod process;
mod scripted;
mod sidecar;
mod supervised;
mod ws;
pub use events::Follower;
pub use http::Api;
pub use hub::{fast_config, merge_config, Hub};
pub use net::{Proxy, RefusingPort};
pub(crate) use process::spawn_until;
pub use process::{alive, signal, wait_exit, watch_logs, Logs, Owned};
pub use sidecar::{integrator_config, sidecar_config, toml_string, Sidecar};
pub use supervised::{Pm2Home, Supervised};
pub use ws::{Closed, ScriptedConn, ScriptedHub, WsAgent};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits for what a real agent CLI does (a 430 MB binary starting, its MCP
/// servers, its model calls): on a loaded 2-core machine that can take longer than [`WAIT`].
pub const AGENT_WAIT: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Ok`, for at most [`WAIT`]: the one way tests wait for a
/// condition (never a fixed sleep, never a hand-written deadline loop). It looks again after 1 ms,
/// then less and less often (up to every [`POLL_MAX`]): what comes at once is seen at once, and a
/// long wait does not spin.
/// `Err` carries what the probe saw, so a failure says what it was waiting for and what it got.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    eventually_within(WAIT, what, probe).await
}

/// [`eventually`] for at most `limit` (such as [`AGENT_WAIT`]).
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = POLL_MIN;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
            }
        }
    }
}

/// Waits until `file` holds `want` (blanks around it aside), as [`eventually`] does: what a
/// test's script writes there (its health, its environment).
pub async fn file_says(what: &str, file: &std::path::Path, want: &str) -> Result<()> {
    eventually(what, || async {
        let got = std::fs::read_to_string(file).unwrap_or_default();
        if got.trim() == want {
            Ok(())
        } else {
            Err(got)
        }
    })
    .await
}

/// [`eventually`] for code outside a runtime.
pub fn eventually_blocking<T>(what: &str, mut probe: impl FnMut() -> std::result::Result<T, String>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    let mut pause = POLL_MIN;
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(seen) if Instant::now() >= deadline => {
                bail!("timed out after {WAIT:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(POLL_MAX);
            }
        }
    }
}

/// How soon [`eventually`] first looks again, and how long it waits at most between two looks.
const POLL_MIN: Duration = Duration::from_millis(1);
pub const POLL_MAX: Duration = Duration::from_millis(50);
