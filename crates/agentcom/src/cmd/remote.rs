//! The commands that talk to a hub over HTTP: `task`, `agents`, `agent`, `token`.

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use client::{render, Client, ClientError};
use proto::api::{
    CancelTask, CreateToken, Endpoint, ErrorCode, GetAgent, GetTask, ListAgents, ListTasks, ListTokens, Priority,
    RestartAgent, RetryTask, RevokeTokens, SubmitTask, TaskStatus,
};
use std::path::PathBuf;

/// Where client commands find the hub.
#[derive(clap::Args, Clone)]
pub struct RemoteArgs {
    /// Hub base URL, or several separated by commas (hubs sharing PostgreSQL: requests find the leader).
    #[arg(long, env = "AGENTCOM_URL", default_value = client::DEFAULT_URL)]
    url: String,
    /// Bearer token; defaults to a local hub's admin.token when one can be read (in the data
    /// dir, else ./agentcom-data/hub, then ~/.agentcom/hub).
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data dir whose admin.token is the default token (the only place looked at when given).
    #[arg(long, env = "AGENTCOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
    #[arg(long, env = "AGENTCOM_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print the hub's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where the token a command sends came from, so a refusal can say what to change.
enum TokenSource {
    Given,
    AdminFile(PathBuf),
    None(Vec<PathBuf>),
}

impl RemoteArgs {
    fn token(&self) -> (Option<String>, TokenSource) {
        if let Some(t) = &self.token {
            return (Some(t.clone()), TokenSource::Given);
        }
        match client::find_admin_token(self.data_dir.as_deref()) {
            Ok((t, path)) => (Some(t), TokenSource::AdminFile(path)),
            Err(looked_at) => (None, TokenSource::None(looked_at)),
        }
    }

    /// Sends one typed request; a refused token is explained with where it came from.
    async fn call<E: Endpoint>(&self, req: &E) -> anyhow::Result<E::Response> {
        let (token, source) = self.token();
        let client = Client::new(&self.url, token, self.ca_file.as_deref())?;
        client.call(req).await.map_err(|e| explain(e, &source))
    }

    fn print<T: serde::Serialize>(&self, v: &T, human: impl FnOnce(&T) -> String) -> std::io::Result<()> {
        if self.json {
            crate::out::println(serde_json::to_string_pretty(v).unwrap_or_default())
        } else {
            crate::out::print(human(v))
        }
    }
}

fn explain(e: ClientError, source: &TokenSource) -> anyhow::Error {
    let hint = match (e.code(), source) {
        (Some(ErrorCode::Unauthorized), TokenSource::None(paths)) => format!(
            "no token was sent: none given (--token or AGENTCOM_TOKEN), and no admin token at {} \
             (AGENTCOM_DATA_DIR or --data-dir names the hub's data dir). Set AGENTCOM_TOKEN to the \
             hub's admin token or to an agent token (`agentcom token create AGENT` on the hub machine).",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
        ),
        (Some(ErrorCode::InvalidToken), TokenSource::Given) => {
            "the hub refused the token given with --token or AGENTCOM_TOKEN (not its admin token, \
             nor an agent token it knows; agent tokens are revoked with `agentcom token revoke`)"
                .into()
        }
        (Some(ErrorCode::InvalidToken), TokenSource::AdminFile(path)) => format!(
            "the hub refused the admin token read from {}: that file belongs to another hub \
             (set AGENTCOM_DATA_DIR to this hub's data dir, or AGENTCOM_TOKEN)",
            path.display()
        ),
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}\n  {hint}")
}

#[derive(clap::Subcommand)]
pub enum TaskCmd {
    /// Submit a task; prints its id.
    Submit {
        /// What the agent should do.
        description: String,
        /// The task's lane.
        #[arg(long, default_value = "normal", value_parser = clap::builder::PossibleValuesParser::new(["urgent", "high", "normal", "low"]).map(|s| s.parse::<Priority>().unwrap_or_default()))]
        priority: Priority,
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
        /// The most the task may cost over all its attempts (USD); past it: budget_exceeded.
        #[arg(long)]
        max_cost_usd: Option<f64>,
        /// The most tokens the task may use over all its attempts.
        #[arg(long)]
        max_tokens: Option<u64>,
        /// The task that creates this one (an agent token: only the task it holds).
        #[arg(long = "parent")]
        parent_task_id: Option<String>,
        /// A task that must complete first (repeatable); the new task waits `blocked` until then.
        #[arg(long = "depends-on")]
        depends_on: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this status.
        #[arg(long, value_parser = |s: &str| s.parse::<TaskStatus>())]
        status: Option<TaskStatus>,
        /// At most this many tasks (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a page: the `next_cursor` of the previous `--json` answer.
        #[arg(long)]
        cursor: Option<String>,
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
    /// Print the patch of the task's change (what its latest attempt committed on its branch).
    Diff {
        /// The task's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Approve a change waiting for review: the integrator merges it (tested again first).
    Approve {
        /// The task's id.
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Send a change waiting for review back to an agent, with the reason as feedback.
    Reject {
        /// The task's id.
        id: String,
        /// Why, as the agent will read it.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The integration queue: changes on their way to each target branch.
    Integrations {
        /// Only this target's queue.
        #[arg(long)]
        target: Option<String>,
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
    /// Answer the question an agent asked on a task (`needs input`).
    Answer {
        /// The task's id.
        id: String,
        /// The answer, as the agent will read it.
        text: String,
        /// The question answered (from `task show`); refused if a newer one replaced it.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Start after this event id (resume where an earlier run stopped).
    #[arg(long)]
    since: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(clap::Args)]
pub struct UsageArgs {
    /// Group by agent, model or day.
    #[arg(long, value_enum, default_value = "agent")]
    by: UsageByArg,
    /// First day included (YYYY-MM-DD, UTC); default 30 days ago.
    #[arg(long)]
    since: Option<String>,
    /// Last day included (YYYY-MM-DD, UTC); default today.
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UsageByArg {
    Agent,
    Model,
    Day,
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
        /// How long to wait for the sidecar's answer (restarting, deferred until its task ends, or
        /// refused); 0: do not wait.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Lift a model provider's limit from an agent and every agent of its account, now.
    Unlimit {
        /// The agent's id.
        agent: String,
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
        TaskCmd::Submit {
            description,
            priority,
            capabilities,
            metadata,
            max_retries,
            assign_to,
            max_cost_usd,
            max_tokens,
            parent_task_id,
            depends_on,
            remote,
        } => {
            let mut req = SubmitTask::new(description);
            req.priority = priority;
            req.needed_capabilities = capabilities;
            if let Some(m) = metadata {
                let v: serde_json::Value = serde_json::from_str(&m).context("--metadata is not valid JSON")?;
                let serde_json::Value::Object(m) = v else { anyhow::bail!("--metadata must be a JSON object") };
                req.metadata = m;
            }
            if let Some(n) = max_retries {
                req.max_retries = n;
            }
            req.assign_to = assign_to;
            req.max_cost_usd = max_cost_usd;
            req.max_tokens = max_tokens;
            req.parent_task_id = parent_task_id;
            req.depends_on = depends_on;
            let v = remote.call(&req).await?;
            remote.print(&v, |v| format!("{}\n", v.task_id))?;
        }
        TaskCmd::List { status, limit, cursor, remote } => {
            let v = remote.call(&ListTasks { status, limit: Some(limit), cursor }).await?;
            remote.print(&v, render::tasks)?;
        }
        TaskCmd::Show { id, remote } => {
            let v = remote.call(&GetTask { task_id: id }).await?;
            remote.print(&v, render::task)?;
        }
        TaskCmd::Diff { id, remote } => {
            let v = remote.call(&proto::api::GetTaskDiff { task_id: id }).await?;
            // The patch is the agent's text: raw into a pipe (for `git apply`), made safe for a
            // terminal (an ESC in a file the agent wrote would drive it).
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            remote.print(&v, |d| {
                let text = render::diff(d);
                match terminal {
                    true => text
                        .chars()
                        .flat_map(|c| match c != '\n' && c != '\t' && human::unsafe_for_terminal(c) {
                            true => c.escape_default().collect::<Vec<_>>(),
                            false => vec![c],
                        })
                        .collect(),
                    false => text,
                }
            })?;
        }
        TaskCmd::Approve { id, remote } => {
            let v = remote.call(&proto::api::ApproveTask { task_id: id }).await?;
            remote.print(&v, |v| {
                format!("approved {}: {} into {}\n", v.task_id, v.integration.status, v.integration.target)
            })?;
        }
        TaskCmd::Reject { id, reason, remote } => {
            let req = proto::api::RejectTask::from_json(
                &id,
                [("reason".to_string(), serde_json::json!(reason))].into_iter().collect(),
            )
            .map_err(|errors| anyhow::anyhow!("{}", errors.join("; ")))?;
            let v = remote.call(&req).await?;
            remote.print(&v, |v| format!("rejected {}: back to an agent\n", v.task_id))?;
        }
        TaskCmd::Integrations { target, remote } => {
            let v = remote.call(&proto::api::ListIntegrations { target }).await?;
            remote.print(&v, render::integrations)?;
        }
        TaskCmd::Cancel { id, remote } => {
            let v = remote.call(&CancelTask { task_id: id }).await?;
            remote.print(&v, |v| format!("cancelled {}\n", v.task_id))?;
        }
        TaskCmd::Retry { id, remote } => {
            let v = remote.call(&RetryTask { task_id: id }).await?;
            remote.print(&v, |v| format!("queued {} again\n", v.task_id))?;
        }
        TaskCmd::Answer { id, text, request_id, remote } => {
            // Checked here as the hub checks it: a bad answer is refused before anything is sent.
            let answer = proto::api::AnswerTask::new(&id, &text, request_id.as_deref())
                .map_err(|errors| anyhow::anyhow!("{}", errors.join("; ")))?;
            let v = remote.call(&answer).await?;
            remote.print(&v, |v| {
                let when = if v.sent { "sent to the agent" } else { "sent when the agent reconnects" };
                format!("answered {} ({}): {when}\n", v.task_id, v.request_id)
            })?;
        }
    }
    Ok(0)
}

/// Follows the hub's event stream, reconnecting (and resuming) when the connection drops.
pub async fn events(a: EventsArgs) -> anyhow::Result<u8> {
    use futures_util::StreamExt;
    let (token, source) = a.remote.token();
    let client = Client::new(&a.remote.url, token, a.remote.ca_file.as_deref())?;
    let mut last = a.since;
    loop {
        let mut stream = match client.events(last.clone()).await {
            Ok(s) => Box::pin(s),
            Err(e @ ClientError::Api { .. }) => return Err(explain(e, &source)),
            Err(e) => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    eprintln!("{e}; reconnecting");
                    break;
                }
            };
            if !ev.id.is_empty() {
                last = Some(ev.id.clone());
            }
            if a.remote.json {
                crate::out::println(serde_json::to_string(&ev)?)?;
            } else {
                crate::out::println(render::event(&ev))?;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<u8> {
    let by = match a.by {
        UsageByArg::Agent => proto::api::UsageBy::Agent,
        UsageByArg::Model => proto::api::UsageBy::Model,
        UsageByArg::Day => proto::api::UsageBy::Day,
    };
    let v = a.remote.call(&proto::api::GetUsage { by, since: a.since, until: a.until }).await?;
    a.remote.print(&v, render::usage)?;
    Ok(0)
}

/// A listing whole: its first page, then each next one appended, asked with `page(cursor)`;
/// `parts` names a list's rows, its next cursor and its count.
async fn every_page<E: Endpoint, T>(
    remote: &RemoteArgs,
    page: impl Fn(Option<String>) -> E,
    parts: impl Fn(&mut E::Response) -> (&mut Vec<T>, &mut Option<String>, &mut usize),
) -> anyhow::Result<E::Response> {
    let mut all = remote.call(&page(None)).await?;
    while let Some(cursor) = parts(&mut all).1.take() {
        let mut next = remote.call(&page(Some(cursor))).await?;
        let (rows, cursor, _) = parts(&mut next);
        let (rows, cursor) = (std::mem::take(rows), cursor.take());
        let (all_rows, all_cursor, _) = parts(&mut all);
        all_rows.extend(rows);
        *all_cursor = cursor;
    }
    let (rows, _, count) = parts(&mut all);
    *count = rows.len();
    Ok(all)
}

pub async fn agents(remote: RemoteArgs) -> anyhow::Result<u8> {
    // A fleet is listed whole: page through it.
    let all = every_page(
        &remote,
        |cursor| ListAgents { limit: Some(proto::api::MAX_PAGE), cursor },
        |l| (&mut l.agents, &mut l.next_cursor, &mut l.count),
    )
    .await?;
    remote.print(&all, render::agents)?;
    Ok(0)
}

pub async fn agent(cmd: AgentCmd) -> anyhow::Result<u8> {
    use proto::RestartOutcome;
    let (agent, reason, force, wait, remote) = match cmd {
        AgentCmd::Restart { agent, reason, force, wait, remote } => (agent, reason, force, wait, remote),
        AgentCmd::Unlimit { agent, remote } => {
            let v = remote.call(&proto::api::UnlimitAgent { agent_id: agent }).await?;
            remote.print(&v, |v| match v.unlimited.is_empty() {
                true => format!("{} was not limited\n", v.agent_id),
                false => format!("limit lifted: {}\n", v.unlimited.join(", ")),
            })?;
            return Ok(0);
        }
    };
    let get = GetAgent { agent_id: agent.clone() };
    let before = remote.call(&get).await.ok().and_then(|a| a.restart).map(|r| r.commanded_at);
    let v = remote.call(&RestartAgent { agent_id: agent.clone(), reason: Some(reason), force }).await?;
    // The sidecar answers over its socket; the hub keeps the answer on the agent.
    let deadline = tokio::time::Instant::now() + wait;
    let answer = loop {
        let state = remote.call(&get).await?.restart.filter(|r| Some(r.commanded_at) != before);
        match state {
            Some(r) if r.outcome != RestartOutcome::Commanded => break Some(r),
            _ if tokio::time::Instant::now() >= deadline => break None,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let Some(r) = answer else {
        let waited = humantime::format_duration(wait);
        remote.print(&v, |v| {
            format!("restart commanded for {}; no answer within {waited} (a v1 sidecar sends none)\n", v.agent_id)
        })?;
        return Ok(0);
    };
    let why = r.reason.clone().unwrap_or_default();
    if r.outcome == RestartOutcome::Refused {
        anyhow::bail!("{agent} refused to restart: {why}");
    }
    remote.print(&r, |r| match r.outcome {
        RestartOutcome::Deferred => format!("{agent} restarts {why}\n"),
        _ => format!("{agent} is restarting; its supervisor starts it again\n"),
    })?;
    Ok(0)
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<u8> {
    match cmd {
        TokenCmd::Create { agent, remote } => {
            let v = remote.call(&CreateToken { agent_id: agent }).await?;
            remote.print(&v, |v| format!("{}\n", v.token))?;
        }
        TokenCmd::List { remote } => {
            let all = every_page(
                &remote,
                |cursor| ListTokens { limit: Some(proto::api::MAX_PAGE), cursor },
                |l| (&mut l.tokens, &mut l.next_cursor, &mut l.count),
            )
            .await?;
            remote.print(&all, render::tokens)?;
        }
        TokenCmd::Revoke { agent, remote } => {
            let v = remote.call(&RevokeTokens { agent_id: agent }).await?;
            remote.print(&v, |v| format!("revoked {} token(s) of {}\n", v.revoked, v.agent_id))?;
        }
    }
    Ok(0)
}
