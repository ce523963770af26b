//! The commands that talk to a hub over HTTP: `task`, `agents`, `agent`, `token`.

use anyhow::Context;
use client::{render, seg, Client};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where client commands find the hub.
#[derive(clap::Args, Clone)]
pub struct RemoteArgs {
    /// Hub base URL.
    #[arg(long, env = "AGENTCOM_URL", default_value = client::DEFAULT_URL)]
    url: String,
    /// Bearer token; defaults to the local hub's admin.token when it can be read.
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data dir whose admin.token is the default token.
    #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = hub::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
    #[arg(long, env = "AGENTCOM_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print the hub's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl RemoteArgs {
    fn client(&self) -> Result<Client, client::ClientError> {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string(hub::admin_token_path(&self.data_dir)).ok().map(|t| t.trim().to_string())
        });
        Client::new(&self.url, token, self.ca_file.as_deref())
    }

    fn print(&self, v: &Value, human: impl FnOnce(&Value) -> String) -> std::io::Result<()> {
        if self.json {
            crate::out::println(serde_json::to_string_pretty(v).unwrap_or_default())
        } else {
            crate::out::print(human(v))
        }
    }
}

#[derive(clap::Subcommand)]
pub enum TaskCmd {
    /// Submit a task; prints its id.
    Submit {
        /// What the agent should do.
        description: String,
        /// The task's lane.
        #[arg(long, default_value = "normal", value_parser = ["urgent", "high", "normal", "low"])]
        priority: String,
        /// A capability the agent must have (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Failed attempts retried before the task goes to the dead letter queue.
        #[arg(long)]
        max_retries: Option<u32>,
        /// Pin the task to one agent.
        #[arg(long)]
        assign_to: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many tasks.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show one task with its history.
    Show {
        /// The task's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Cancel a task (tells the agent holding it).
    Cancel {
        /// The task's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Queue a dead-lettered, cancelled or waiting task again.
    Retry {
        /// The task's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum AgentCmd {
    /// Ask an agent's sidecar to restart itself gracefully.
    Restart {
        /// The agent's id.
        agent: String,
        /// Why, for the agent's log and the hub's.
        #[arg(long, default_value = "admin_commanded")]
        reason: String,
        /// Restart even while a task is working.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token for an agent; prints it once.
    Create {
        /// The agent's id.
        agent: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List tokens (their fingerprints, never the tokens).
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Revoke every token of an agent and disconnect it.
    Revoke {
        /// The agent's id.
        agent: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub async fn task(cmd: TaskCmd) -> anyhow::Result<u8> {
    match cmd {
        TaskCmd::Submit { description, priority, capabilities, metadata, max_retries, assign_to, remote } => {
            let mut body = json!({ "description": description, "priority": priority });
            if !capabilities.is_empty() {
                body["needed_capabilities"] = json!(capabilities);
            }
            if let Some(m) = metadata {
                body["metadata"] = serde_json::from_str(&m).context("--metadata is not valid JSON")?;
            }
            if let Some(n) = max_retries {
                body["max_retries"] = json!(n);
            }
            if let Some(a) = assign_to {
                body["assign_to"] = json!(a);
            }
            let v = remote.client()?.post("/api/tasks", body).await?;
            remote.print(&v, |v| format!("{}\n", client::cell(&v["task_id"])))?;
        }
        TaskCmd::List { status, limit, remote } => {
            let mut path = format!("/api/tasks?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={}", seg(&s)));
            }
            let v = remote.client()?.get(&path).await?;
            remote.print(&v, render::tasks)?;
        }
        TaskCmd::Show { id, remote } => {
            let v = remote.client()?.get(&format!("/api/tasks/{}", seg(&id))).await?;
            remote.print(&v, render::task)?;
        }
        TaskCmd::Cancel { id, remote } => {
            let v = remote.client()?.post(&format!("/api/tasks/{}/cancel", seg(&id)), json!({})).await?;
            remote.print(&v, |v| format!("cancelled {}\n", client::cell(&v["task_id"])))?;
        }
        TaskCmd::Retry { id, remote } => {
            let v = remote.client()?.post(&format!("/api/tasks/{}/retry", seg(&id)), json!({})).await?;
            remote.print(&v, |v| format!("queued {} again\n", client::cell(&v["task_id"])))?;
        }
    }
    Ok(0)
}

pub async fn agents(remote: RemoteArgs) -> anyhow::Result<u8> {
    let v = remote.client()?.get("/api/agents").await?;
    remote.print(&v, render::agents)?;
    Ok(0)
}

pub async fn agent(cmd: AgentCmd) -> anyhow::Result<u8> {
    let AgentCmd::Restart { agent, reason, force, remote } = cmd;
    let path = format!("/api/admin/agents/{}/restart", seg(&agent));
    let v = remote.client()?.post(&path, json!({ "reason": reason, "force": force })).await?;
    remote.print(&v, |v| format!("restart commanded for {}\n", client::cell(&v["agent_id"])))?;
    Ok(0)
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<u8> {
    match cmd {
        TokenCmd::Create { agent, remote } => {
            let v = remote.client()?.post("/admin/tokens", json!({ "agent_id": agent })).await?;
            remote.print(&v, |v| format!("{}\n", client::cell(&v["token"])))?;
        }
        TokenCmd::List { remote } => {
            let v = remote.client()?.get("/admin/tokens").await?;
            remote.print(&v, render::tokens)?;
        }
        TokenCmd::Revoke { agent, remote } => {
            let v = remote.client()?.delete(&format!("/admin/tokens/{}", seg(&agent))).await?;
            remote.print(&v, |v| format!("revoked {} token(s) of {}\n", v["revoked"], client::cell(&v["agent_id"])))?;
        }
    }
    Ok(0)
}
