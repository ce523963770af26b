//! The guard's commands: `checkpoint`, `upgrade`, `rollback`, `guard watch`.

use super::process::Sup;
use crate::logging::{self, LogArgs};
use anyhow::Context;
use client::Client;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum CheckpointCmd {
    /// Write current_task.md and the history durably (and to the hub when one is configured).
    Save {
        /// Where the checkpoint lives.
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// What the agent is working towards.
        #[arg(long)]
        objective: String,
        /// A file holding the conversation context.
        #[arg(long)]
        context: Option<PathBuf>,
        /// A pending action (repeatable).
        #[arg(long = "pending")]
        pending: Vec<String>,
        /// Free-form state worth keeping.
        #[arg(long, default_value = "")]
        state: String,
        /// Conversation history as JSON lines.
        #[arg(long)]
        history: Option<PathBuf>,
        #[command(flatten)]
        hub: HubTarget,
    },
    /// Show the checkpoint.
    Show {
        /// Where the checkpoint lives.
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// For an agent at start: print current_task.md (fetched from the hub if gone locally).
    Load {
        /// Where the checkpoint lives.
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Print current_task.md.
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        hub: HubTarget,
    },
}

/// Where checkpoints are also kept, so they survive the machine.
#[derive(clap::Args, Clone)]
pub struct HubTarget {
    /// Hub base URL, or several separated by commas (hubs sharing PostgreSQL: requests find the leader).
    #[arg(long = "hub", env = "AGENTCOM_URL")]
    url: Option<String>,
    /// The agent's (or the admin) token.
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The agent's id at the hub.
    #[arg(long = "agent", env = "AGENTCOM_AGENT_ID")]
    agent_id: Option<String>,
    /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
    #[arg(long, env = "AGENTCOM_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl HubTarget {
    /// The hub client and agent id, when both a hub and an agent are named.
    fn client(&self) -> Result<Option<(Client, String)>, client::ClientError> {
        let (Some(url), Some(agent)) = (self.url.as_ref(), self.agent_id.clone()) else { return Ok(None) };
        Ok(Some((Client::new(url, self.token.clone(), self.ca_file.as_deref())?, agent)))
    }
}

#[derive(clap::Args)]
pub struct UpgradeArgs {
    /// The agent's git repository.
    #[arg(long)]
    repo: PathBuf,
    /// Finish or roll back an interrupted upgrade of --repo.
    #[arg(long)]
    resume: bool,
    /// The supervised process that runs the agent.
    #[arg(long, required_unless_present = "resume")]
    process: Option<String>,
    /// The branch holding the change.
    #[arg(long, required_unless_present = "resume")]
    branch: Option<String>,
    /// Test command, run on the branch in a separate worktree.
    #[arg(long, required_unless_present = "resume")]
    test: Option<String>,
    /// Health check: an http:// or https:// URL that must answer 2xx, or a command that must exit 0.
    #[arg(long, required_unless_present = "resume")]
    health: Option<String>,
    /// PEM CA certificates to trust for an https:// health URL, besides the built-in roots.
    #[arg(long)]
    health_ca_file: Option<PathBuf>,
    /// How long the new version has to become healthy.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// How long it must then stay healthy.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stable_for: Duration,
    /// Longest run of the test command.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    test_timeout: Duration,
    /// Time between health checks.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    check_interval: Duration,
    /// Where the agent's checkpoint lives.
    #[arg(long, env = "AGENTCOM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    sup: Sup,
    /// Print a final machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The agent's git repository.
    #[arg(long)]
    repo: PathBuf,
    /// The supervised process that runs the agent.
    #[arg(long)]
    process: String,
    /// The commit to go back to (default: the last good one).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Subcommand)]
pub enum GuardCmd {
    /// Roll back an agent that stays offline past the threshold after an upgrade.
    Watch {
        /// The agent's git repository.
        #[arg(long)]
        repo: PathBuf,
        /// The supervised process that runs the agent.
        #[arg(long)]
        process: String,
        /// Hub base URL (or several, comma-separated), to see the agent's presence and fetch its checkpoint.
        #[arg(long = "hub", env = "AGENTCOM_URL")]
        hub: Option<String>,
        /// Token for the hub.
        #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
        #[arg(long, env = "AGENTCOM_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// The agent's id at the hub (default: the process name).
        #[arg(long = "agent")]
        agent_id: Option<String>,
        /// How long the agent may stay offline after an upgrade before it is rolled back.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        offline_after: Duration,
        /// Time between checks.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Where the agent's checkpoint lives.
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        sup: Sup,
        #[command(flatten)]
        log: LogArgs,
    },
}

fn print_step(s: &guard::upgrade::Step) {
    // A closed stdout must not stop an upgrade half way: the journal and the final report matter.
    let _ = crate::out::println(format!("[{}] {:<45} {}", if s.ok { " ok " } else { "FAIL" }, s.step, s.detail));
}

pub async fn checkpoint(cmd: CheckpointCmd) -> anyhow::Result<u8> {
    match cmd {
        CheckpointCmd::Save { state_dir, objective, context, pending, state, history, hub } => {
            let dir = state_dir.unwrap_or_else(guard::checkpoint::default_dir);
            let context = match context {
                Some(f) => std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?,
                None => String::new(),
            };
            let history = match history {
                Some(f) => guard::checkpoint::read_history(&f)?,
                None => Vec::new(),
            };
            let saved_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let c = guard::checkpoint::Checkpoint { objective, context, pending, state, history, saved_at };
            c.save(&dir)?;
            crate::out::println(format!("saved {}", dir.join(guard::checkpoint::TASK_FILE).display()))?;
            if let Some((client, agent)) = hub.client()? {
                let serde_json::Value::Object(checkpoint) = serde_json::to_value(&c)? else {
                    anyhow::bail!("a checkpoint serializes to a JSON object");
                };
                client.call(&proto::api::PutCheckpoint { agent_id: agent.clone(), checkpoint }).await?;
                crate::out::println(format!("stored at the hub for {agent}"))?;
            }
        }
        CheckpointCmd::Show { state_dir } => {
            let dir = state_dir.unwrap_or_else(guard::checkpoint::default_dir);
            let c = guard::checkpoint::Checkpoint::load(&dir)?;
            crate::out::print(c.markdown())?;
            crate::out::println(format!(
                "history: {} lines in {}",
                c.history.len(),
                dir.join(guard::checkpoint::HISTORY_FILE).display()
            ))?;
        }
        CheckpointCmd::Load { state_dir, print, hub } => {
            let dir = state_dir.unwrap_or_else(guard::checkpoint::default_dir);
            let c = match guard::checkpoint::Checkpoint::load(&dir) {
                Ok(c) => c,
                Err(local) => {
                    let (client, agent) = hub.client()?.ok_or(local)?;
                    let v = client.call(&proto::api::GetCheckpoint { agent_id: agent }).await?;
                    let c: guard::checkpoint::Checkpoint = serde_json::from_value(v.checkpoint)?;
                    c.save(&dir)?;
                    c
                }
            };
            if print {
                crate::out::print(c.markdown())?;
            }
        }
    }
    Ok(0)
}

/// The upgrade is a blocking transaction (git, the supervisor's socket, health checks): it runs
/// on a thread of its own, off the async runtime.
pub async fn upgrade(a: UpgradeArgs) -> anyhow::Result<u8> {
    tokio::task::spawn_blocking(move || upgrade_blocking(a)).await?
}

fn upgrade_blocking(a: UpgradeArgs) -> anyhow::Result<u8> {
    let json = a.json;
    let mut printer = |s: &guard::upgrade::Step| {
        if !json {
            print_step(s)
        }
    };
    let report = if a.resume {
        let exe = std::env::current_exe()?;
        let backend_for = |kind: &str| supervisor::backend::Backend {
            kind: if kind == "pm2" { supervisor::backend::Kind::Pm2 } else { supervisor::backend::Kind::Native },
            dir: supervisor::client::default_dir(),
            exe: exe.clone(),
            launch: false,
        };
        guard::upgrade::resume(&a.repo, &backend_for, a.check_interval, &mut printer)
    } else {
        let opts = guard::upgrade::Options {
            repo: a.repo,
            process: a.process.unwrap_or_default(),
            branch: a.branch.unwrap_or_default(),
            test: a.test.unwrap_or_default(),
            health: a.health.unwrap_or_default(),
            health_ca_file: a.health_ca_file,
            health_timeout: a.health_timeout,
            stable_for: a.stable_for,
            test_timeout: a.test_timeout,
            check_interval: a.check_interval,
            state_dir: a.state_dir.unwrap_or_else(guard::checkpoint::default_dir),
        };
        guard::upgrade::upgrade(&opts, &a.sup.backend()?, &mut printer)
    };
    if json {
        crate::out::println(serde_json::to_string_pretty(&report)?)?;
    } else if let Some(e) = &report.error {
        eprintln!("error: {}", client::printable(&format!("{}: {e}", report.outcome)));
    } else {
        crate::out::println(&report.outcome)?;
    }
    Ok(if report.ok() { 0 } else { 1 })
}

pub fn rollback(a: RollbackArgs) -> anyhow::Result<u8> {
    let msg = guard::upgrade::manual_rollback(&a.repo, &a.process, a.to.as_deref(), &a.sup.backend()?)?;
    crate::out::println(msg)?;
    Ok(0)
}

pub async fn guard(cmd: GuardCmd) -> anyhow::Result<u8> {
    let GuardCmd::Watch { repo, process, hub, token, ca_file, agent_id, offline_after, interval, state_dir, sup, log } =
        cmd;
    logging::init(log.log_format, "info");
    let shutdown = crate::shutdown_on_signals()?;
    let hub = hub.map(|url| Client::new(&url, token, ca_file.as_deref())).transpose()?;
    let opts = guard::watch::WatchOptions {
        repo,
        agent_id: agent_id.unwrap_or_else(|| process.clone()),
        process,
        hub,
        offline_after,
        interval,
        state_dir: state_dir.unwrap_or_else(guard::checkpoint::default_dir),
    };
    guard::watch::run(opts, sup.backend()?, shutdown).await?;
    Ok(0)
}
