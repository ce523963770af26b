//! `agentcom integrate`: the integration worker (a sidecar whose agent is `integrate-run`), and
//! `integrate-run`, one integration as that sidecar wakes it.

use crate::logging::{self, LogArgs};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct IntegrateArgs {
    /// The integrator's TOML file (`agent_id`, `token`, `hub_url`, `repo_dir`, `check_command`...).
    #[arg(long, env = "AGENTCOM_INTEGRATE_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
pub struct IntegrateRunArgs {
    #[arg(long)]
    config: PathBuf,
}

fn load(path: &std::path::Path) -> anyhow::Result<integrator::IntegrateConfig> {
    integrator::IntegrateConfig::load(path).map_err(|errors| {
        anyhow::anyhow!("invalid integrator configuration {}:\n  - {}", path.display(), errors.join("\n  - "))
    })
}

pub async fn integrate(a: IntegrateArgs) -> anyhow::Result<u8> {
    logging::init(a.log.log_format, "info");
    let path = a.config.canonicalize().with_context(|| format!("cannot read {}", a.config.display()))?;
    let cfg = load(&path)?;
    integrator::check_repo(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    let exe = std::env::current_exe().context("where is this program")?;
    let sidecar_cfg = integrator::sidecar_config(&cfg, &path, &exe)
        .map_err(|errors| anyhow::anyhow!("invalid integrator configuration:\n  - {}", errors.join("\n  - ")))?;
    tracing::info!(target_branch = %cfg.target_branch, repo_dir = %cfg.repo_dir.display(), batch_max = cfg.batch_max, "integrator starting");
    super::agent::run_sidecar(sidecar_cfg).await
}

pub fn integrate_run(a: IntegrateRunArgs) -> anyhow::Result<u8> {
    let cfg = load(&a.config)?;
    integrator::run_task(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    Ok(0)
}
