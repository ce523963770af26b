//! `agentcom integrate`: the worker that takes the hub's integration tasks (capability
//! `integrate:<target>`) and brings each finished task's branch onto its target: rebased (or
//! merged) onto it in a scratch worktree, checked with `check_command`, pushed with a
//! compare-and-swap on the target's old commit. It is a sidecar whose agent is
//! `agentcom integrate-run`: the sidecar's machine carries each task crash-safely (accepted,
//! recovered, reported exactly once), and every step of a run can be cut short and run again
//! ([`run`]).

mod bisect;
mod check;
pub mod config;
pub mod run;

pub use config::IntegrateConfig;
use serde_json::Value;
use std::path::Path;

/// The sidecar that carries the integrator's tasks: its connection keys, the capabilities of
/// the target, and `exe integrate-run --config <config>` as the agent.
pub fn sidecar_config(cfg: &IntegrateConfig, config: &Path, exe: &Path) -> Result<sidecar::SidecarConfig, Vec<String>> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let wake = format!(
        "{} integrate-run --config {}",
        quote(&exe.display().to_string()),
        quote(&config.display().to_string())
    );
    let hub_url = match cfg.hub_urls.as_slice() {
        [one] => sidecar::config::HubUrls::One(one.clone()),
        many => sidecar::config::HubUrls::Many(many.to_vec()),
    };
    let f = sidecar::config::FileConfig {
        agent_id: Some(cfg.agent_id.clone()),
        token: Some(cfg.token.clone()),
        hub_url: Some(hub_url),
        tls_ca_file: cfg.tls_ca_file.clone(),
        capabilities: Some(cfg.capabilities()),
        wake_command: Some(wake),
        results_dir: Some(cfg.state_dir.join("results")),
        state_dir: Some(cfg.state_dir.join("sidecar")),
        repo_dir: Some(cfg.repo_dir.clone()),
        name: Some(format!("integrator of {}", cfg.target_branch)),
        // The run is the agent itself: it confirms at once, and a check may take long.
        wake_timeout_ms: Some(cfg.check_timeout.as_millis() as u64 + 600_000),
        ..sidecar::config::FileConfig::default()
    };
    sidecar::SidecarConfig::from_file(f, &cfg.state_dir)
}

/// What must hold before the integrator serves: its clone is a repository with the remote.
pub fn check_repo(cfg: &IntegrateConfig) -> Result<(), String> {
    let repo = gitops::Git::open(&cfg.repo_dir).map_err(|_| {
        format!("repo_dir: {} is not a git repository (the integrator's own clone)", cfg.repo_dir.display())
    })?;
    repo.run(&["remote", "get-url", &cfg.remote])
        .map_err(|_| format!("remote: {:?} is not a remote of repo_dir", cfg.remote))?;
    std::fs::create_dir_all(cfg.state_dir.join("scratch"))
        .map_err(|e| format!("cannot create state_dir {}: {e}", cfg.state_dir.display()))?;
    run::clean_scratch(&repo, &cfg.state_dir.join("scratch"));
    Ok(())
}

/// `agentcom integrate-run`: one integration task, as the sidecar wakes it. Writes `.started`,
/// integrates, and writes the result the hub reads (`result.integration`); an error to try
/// again later is a failed result.
pub fn run_task(cfg: &IntegrateConfig) -> Result<(), String> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set: integrate-run is the integrator's wake"));
    let (id, results) = (env("AGENTCOM_TASK_ID")?, std::path::PathBuf::from(env("AGENTCOM_RESULTS_DIR")?));
    proto::check_task_id(&id)?;
    let file = |ext: &str| results.join(format!("{id}.{ext}"));
    std::fs::write(file("started"), b"").map_err(|e| format!("cannot write .started: {e}"))?;
    let task: Value = serde_json::from_slice(&std::fs::read(env("AGENTCOM_TASK_FILE")?).map_err(|e| e.to_string())?)
        .map_err(|e| format!("the task file: {e}"))?;
    let result = match run::Job::from_task(&task) {
        Err(e) => {
            serde_json::json!({"status": "failed", "reason": format!("not an integration this integrator can do: {e}")})
        }
        Ok(job) => match run::integrate(cfg, &job, &|target| queued_changes(cfg, target)) {
            Ok((report, merged)) => run::result_json(&report, &merged),
            Err(e) => serde_json::json!({"status": "failed", "reason": e}),
        },
    };
    osutil::fs::write_atomic(&file("json"), result.to_string().as_bytes())
        .map_err(|e| format!("cannot write the result: {e}"))
}

/// The changes queued for `target` after the one held (for a batch), from the hub's API; none
/// when it cannot be asked.
fn queued_changes(cfg: &IntegrateConfig, target: &str) -> Vec<run::Change> {
    // A thread of its own: the caller may already be inside a runtime (`agentcom`'s), where
    // starting another one panics.
    std::thread::scope(|s| s.spawn(|| queued_changes_now(cfg, target)).join().unwrap_or_default())
}

fn queued_changes_now(cfg: &IntegrateConfig, target: &str) -> Vec<run::Change> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return Vec::new() };
    rt.block_on(async {
        for base in cfg.api_urls() {
            let Ok(client) = client::Client::new(&base, Some(cfg.token.clone()), cfg.tls_ca_file.as_deref()) else {
                continue;
            };
            let req = proto::api::ListIntegrations { target: Some(target.to_string()) };
            let call = tokio::time::timeout(std::time::Duration::from_secs(10), client.call(&req));
            if let Ok(Ok(list)) = call.await {
                return list
                    .targets
                    .into_iter()
                    .flat_map(|t| t.changes)
                    .filter(|c| c.status == proto::api::TaskStatus::Queued && !c.approved)
                    .map(|c| run::Change { task_id: c.integrates, branch: c.branch, head_sha: Some(c.head_sha) })
                    .collect();
            }
        }
        Vec::new()
    })
}
