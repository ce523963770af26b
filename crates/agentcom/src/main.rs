//! The `agentcom` binary: parses arguments, installs logging and signal handling, and calls
//! the library crates. No logic of its own beyond that.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use client::{render, seg, Client};
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "agentcom", version, about = "Control plane for fleets of autonomous AI coding agents")]
struct Cli {
    /// Log format for daemons (hub).
    #[arg(long, global = true, value_enum, default_value = "human", env = "AGENTCOM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Where client commands find the hub.
#[derive(clap::Args, Clone)]
struct Remote {
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

impl Remote {
    fn client(&self) -> Result<Client, client::ClientError> {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string(hub::admin_token_path(&self.data_dir)).ok().map(|t| t.trim().to_string())
        });
        Client::new(&self.url, token, self.ca_file.as_deref())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub server.
    Hub {
        /// Address to listen on [env: AGENTCOM_LISTEN] [default: 127.0.0.1:4000]
        #[arg(long, env = "AGENTCOM_LISTEN")]
        listen: Option<String>,
        /// Data directory [env: AGENTCOM_DATA_DIR] [default: ./agentcom-data/hub]
        #[arg(long, env = "AGENTCOM_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// TOML configuration file.
        #[arg(long, env = "AGENTCOM_CONFIG")]
        config: Option<PathBuf>,
        /// Admin token (otherwise read from or generated into <data-dir>/admin.token).
        #[arg(long, env = "AGENTCOM_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// PEM certificate chain: serve https:// and wss:// (needs --tls-key).
        #[arg(long, env = "AGENTCOM_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "AGENTCOM_TLS_KEY")]
        tls_key: Option<PathBuf>,
    },
    /// Run a sidecar beside one agent.
    Sidecar {
        /// TOML file, or an AgentCom config.json.
        #[arg(long, env = "AGENTCOM_SIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Start a hub, two sidecars and a sample agent, submit tasks and watch them complete.
    Demo {
        /// How long the sample agent works on each task, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        work_ms: u64,
        /// Keep the demo's data here (default: a temp dir removed at the end).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// A small program that plays an agent for the demo (run by a sidecar's wake command).
    SampleAgent {
        #[arg(long, default_value_t = 1500)]
        work_ms: u64,
    },
    /// Wake-command wrapper for real agents: writes <task>.started, runs CMD, streams its output
    /// lines to <task>.progress, then writes <task>.json from its exit status.
    RunAgent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run the process supervisor daemon (state in AGENTCOM_SUPERVISOR_DIR).
    Supervisor {
        /// How often process-group memory is checked against max_memory_bytes.
        #[arg(long, env = "AGENTCOM_SUPERVISOR_MEMORY_CHECK_MS", default_value_t = 5000)]
        memory_check_ms: u64,
        /// Uptime after which the restart backoff starts again from the base delay.
        #[arg(long, env = "AGENTCOM_SUPERVISOR_BACKOFF_RESET_MS", default_value_t = 30000)]
        backoff_reset_ms: u64,
    },
    /// Start a supervised process (launches the supervisor in the background if none runs).
    Start {
        name: String,
        #[command(flatten)]
        opts: StartOpts,
        #[command(flatten)]
        sup: Sup,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a supervised process (its whole process group).
    Stop {
        name: String,
        #[command(flatten)]
        sup: Sup,
    },
    /// Restart a supervised process (also clears `errored`).
    Restart {
        name: String,
        #[command(flatten)]
        sup: Sup,
    },
    /// Stop and forget a supervised process.
    Delete {
        name: String,
        #[command(flatten)]
        sup: Sup,
    },
    /// List supervised processes.
    Ps {
        #[command(flatten)]
        sup: Sup,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one process (env values redacted under pm2).
    Describe {
        name: String,
        #[command(flatten)]
        sup: Sup,
    },
    /// Print a process's logs; -f follows them across rotations.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value_t = 20)]
        lines: usize,
        #[command(flatten)]
        sup: Sup,
    },
    /// A folder of daemon.toml files as the source of truth for the supervisor.
    Daemons {
        #[command(subcommand)]
        cmd: DaemonsCmd,
    },
    /// Save, show or load the agent's checkpoint (current_task.md and history).
    Checkpoint {
        #[command(subcommand)]
        cmd: CheckpointCmd,
    },
    /// Upgrade an agent's own code as one transaction: test, merge, restart, health window,
    /// commit or roll back by itself.
    Upgrade {
        #[arg(long)]
        repo: PathBuf,
        /// Finish or roll back an interrupted upgrade of --repo.
        #[arg(long)]
        resume: bool,
        #[arg(long, required_unless_present = "resume")]
        process: Option<String>,
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
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        health_timeout: std::time::Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        stable_for: std::time::Duration,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        test_timeout: std::time::Duration,
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        check_interval: std::time::Duration,
        /// Where the agent's checkpoint lives.
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        sup: Sup,
        /// Print a final machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Roll an agent's repo back to the last good commit (or --to REF) and restart it.
    Rollback {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        process: String,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        sup: Sup,
    },
    /// The guard's watchdog.
    Guard {
        #[command(subcommand)]
        cmd: GuardCmd,
    },
    /// Submit, list, inspect, cancel and retry tasks.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
    },
    /// List agents and their presence.
    Agents {
        #[command(flatten)]
        remote: Remote,
    },
    /// Commands sent to one agent.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
    },
    /// Manage per-agent tokens (admin).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

/// Which supervisor the process commands drive.
#[derive(clap::Args, Clone)]
struct Sup {
    #[arg(long, value_enum, default_value = "native", env = "AGENTCOM_BACKEND")]
    backend: BackendKind,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    Native,
    Pm2,
}

impl Sup {
    /// For `daemons`: the native supervisor is launched in the background if none runs.
    fn launching_backend(&self) -> anyhow::Result<supervisor::backend::Backend> {
        Ok(supervisor::backend::Backend { launch: true, ..self.backend()? })
    }

    fn backend(&self) -> anyhow::Result<supervisor::backend::Backend> {
        Ok(supervisor::backend::Backend {
            kind: match self.backend {
                BackendKind::Native => supervisor::backend::Kind::Native,
                BackendKind::Pm2 => supervisor::backend::Kind::Pm2,
            },
            dir: supervisor::client::default_dir(),
            exe: std::env::current_exe().context("find the agentcom binary")?,
            launch: false,
        })
    }
}

/// Options of `agentcom start`; names match the daemon.toml keys.
#[derive(clap::Args, Clone)]
struct StartOpts {
    #[arg(long)]
    cwd: Option<String>,
    /// K=V, repeatable.
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    #[arg(long, value_enum, default_value = "always")]
    restart: RestartArg,
    #[arg(long, default_value = "SIGTERM")]
    kill_signal: String,
    #[arg(long, default_value_t = 5000)]
    kill_timeout_ms: u64,
    #[arg(long, default_value_t = 1000)]
    min_uptime_ms: u64,
    #[arg(long, default_value_t = 16)]
    max_restarts: u32,
    #[arg(long, default_value_t = 100)]
    restart_backoff_ms: u64,
    #[arg(long, default_value_t = 15000)]
    restart_backoff_max_ms: u64,
    /// Exit code that means "stopped on purpose" (repeatable).
    #[arg(long = "stop-exit-code")]
    stop_exit_codes: Vec<i32>,
    #[arg(long)]
    health_cmd: Option<String>,
    #[arg(long, default_value_t = 10000)]
    health_interval_ms: u64,
    #[arg(long, default_value_t = 3)]
    health_failures: u32,
    #[arg(long)]
    max_memory_bytes: Option<u64>,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    log_max_bytes: u64,
    #[arg(long, default_value_t = 3)]
    log_keep: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum RestartArg {
    Always,
    OnFailure,
    Never,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not K=V"))
}

impl StartOpts {
    fn spec(self, name: String, cmd: Vec<String>) -> proto::control::ProcSpec {
        use proto::control::RestartPolicy;
        let (command, args) = cmd.split_first().map(|(c, a)| (c.clone(), a.to_vec())).unwrap_or_default();
        proto::control::ProcSpec {
            name,
            command,
            args,
            cwd: self.cwd,
            env: self.env.into_iter().collect(),
            restart: match self.restart {
                RestartArg::Always => RestartPolicy::Always,
                RestartArg::OnFailure => RestartPolicy::OnFailure,
                RestartArg::Never => RestartPolicy::Never,
            },
            kill_signal: self.kill_signal,
            kill_timeout_ms: self.kill_timeout_ms,
            min_uptime_ms: self.min_uptime_ms,
            max_restarts: self.max_restarts,
            restart_backoff_ms: self.restart_backoff_ms,
            restart_backoff_max_ms: self.restart_backoff_max_ms,
            stop_exit_codes: self.stop_exit_codes,
            health_cmd: self.health_cmd,
            health_interval_ms: self.health_interval_ms,
            health_failures: self.health_failures,
            max_memory_bytes: self.max_memory_bytes,
            log_max_bytes: self.log_max_bytes,
            log_keep: self.log_keep,
        }
    }
}

#[derive(Subcommand)]
enum DaemonsCmd {
    /// What apply would do: start, recreate (with the changed fields), unchanged, stop-and-delete, error.
    Plan {
        #[command(flatten)]
        root: DaemonsRoot,
        #[arg(long)]
        json: bool,
    },
    /// Carry the plan out, touching nothing else.
    Apply {
        #[command(flatten)]
        root: DaemonsRoot,
        #[arg(long)]
        json: bool,
    },
    /// Apply on every change (debounced), and fully every minute.
    Watch {
        #[command(flatten)]
        root: DaemonsRoot,
        #[arg(long, default_value_t = 200)]
        debounce_ms: u64,
        #[arg(long, default_value_t = 60000)]
        full_every_ms: u64,
    },
    /// Put the watcher itself under the supervisor.
    InstallWatcher {
        #[command(flatten)]
        root: DaemonsRoot,
    },
}

#[derive(clap::Args, Clone)]
struct DaemonsRoot {
    /// The folder holding `**/daemon.toml`.
    #[arg(long)]
    root: PathBuf,
    #[command(flatten)]
    sup: Sup,
    /// Leave processes whose definition is gone running.
    #[arg(long)]
    no_prune: bool,
}

fn print_plan(items: &[(String, String, String, String)]) {
    let rows: Vec<Vec<String>> =
        items.iter().map(|(a, b, c, d)| vec![a.clone(), b.clone(), c.clone(), d.clone()]).collect();
    if rows.is_empty() {
        println!("no daemons");
    } else {
        print!("{}", client::table(&["ACTION", "DAEMON", "PROCESS", "DETAILS"], &rows, 100));
    }
}

fn plan_row(it: &daemons::PlanItem) -> (String, String, String, String) {
    let details = match (it.action, &it.message) {
        (daemons::Action::Error, Some(m)) => {
            format!("{}{}: {m}", it.file.as_deref().unwrap_or(""), it.line.map(|l| format!(":{l}")).unwrap_or_default())
        }
        _ => it.changed.join(", "),
    };
    (it.action.as_str().into(), it.daemon.clone(), it.process.clone(), details)
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Write current_task.md and the history durably (and to the hub when one is configured).
    Save {
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        objective: String,
        /// A file holding the conversation context.
        #[arg(long)]
        context: Option<PathBuf>,
        /// A pending action (repeatable).
        #[arg(long = "pending")]
        pending: Vec<String>,
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
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// For an agent at start: print current_task.md (fetched from the hub if gone locally).
    Load {
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        hub: HubTarget,
    },
}

/// Where checkpoints are also kept, so they survive the machine.
#[derive(clap::Args, Clone)]
struct HubTarget {
    #[arg(long = "hub", env = "AGENTCOM_URL")]
    url: Option<String>,
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
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

#[derive(Subcommand)]
enum GuardCmd {
    /// Roll back an agent that stays offline past the threshold after an upgrade.
    Watch {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        process: String,
        #[arg(long = "hub", env = "AGENTCOM_URL")]
        hub: Option<String>,
        #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
        #[arg(long, env = "AGENTCOM_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// The agent's id at the hub (default: the process name).
        #[arg(long = "agent")]
        agent_id: Option<String>,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        offline_after: std::time::Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[arg(long, env = "AGENTCOM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        sup: Sup,
    },
}

fn print_step(s: &guard::upgrade::Step) {
    println!("[{}] {:<45} {}", if s.ok { " ok " } else { "FAIL" }, s.step, s.detail);
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Submit a task; prints its id.
    Submit {
        description: String,
        #[arg(long, default_value = "normal", value_parser = ["urgent", "high", "normal", "low"])]
        priority: String,
        /// A capability the agent must have (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long)]
        max_retries: Option<u32>,
        /// Pin the task to one agent.
        #[arg(long)]
        assign_to: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one task with its history.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a task (tells the agent holding it).
    Cancel {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Queue a dead-lettered, cancelled or waiting task again.
    Retry {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Ask an agent's sidecar to restart itself gracefully.
    Restart {
        agent: String,
        #[arg(long, default_value = "admin_commanded")]
        reason: String,
        /// Restart even while a task is working.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token for an agent; prints it once.
    Create {
        agent: String,
        #[command(flatten)]
        remote: Remote,
    },
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke every token of an agent and disconnect it.
    Revoke {
        agent: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTCOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Cancels the returned token on SIGINT or SIGTERM.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

fn print(remote: &Remote, v: &Value, human: impl FnOnce(&Value) -> String) {
    if remote.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}

/// Runs one command; the value is the process exit code.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.cmd {
        Cmd::Supervisor { memory_check_ms, backoff_reset_ms } => {
            init_logging(cli.log_format, "info");
            let cfg = supervisor::daemon::DaemonConfig {
                dir: supervisor::client::default_dir(),
                memory_check: std::time::Duration::from_millis(memory_check_ms.max(1)),
                backoff_reset: std::time::Duration::from_millis(backoff_reset_ms),
            };
            let shutdown = shutdown_on_signals()?;
            supervisor::daemon::run(cfg, shutdown).await?;
        }
        Cmd::Start { name, opts, sup, cmd } => {
            let spec = opts.spec(name, cmd);
            let problems = spec.validate();
            if !problems.is_empty() {
                anyhow::bail!("{}", problems.join("; "));
            }
            println!("{}", sup.backend()?.start(&spec)?);
        }
        Cmd::Stop { name, sup } => println!("{}", sup.backend()?.stop(&name)?),
        Cmd::Restart { name, sup } => println!("{}", sup.backend()?.restart(&name)?),
        Cmd::Delete { name, sup } => println!("{}", sup.backend()?.delete(&name)?),
        Cmd::Ps { sup, json } => {
            let list = sup.backend()?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", supervisor::cli::ps_table(&list));
            }
        }
        Cmd::Describe { name, sup } => {
            println!("{}", serde_json::to_string_pretty(&sup.backend()?.describe(&name)?)?);
        }
        Cmd::Logs { name, follow, lines, sup } => {
            let d = sup.backend()?.describe(&name)?;
            let (out, err) = match (d["out_log"].as_str(), d["pm2_env"]["pm_out_log_path"].as_str()) {
                (Some(o), _) => (o.to_string(), d["err_log"].as_str().unwrap_or_default().to_string()),
                (None, Some(o)) => {
                    (o.to_string(), d["pm2_env"]["pm_err_log_path"].as_str().unwrap_or_default().to_string())
                }
                _ => anyhow::bail!("no log files known for {name}"),
            };
            tokio::task::spawn_blocking(move || supervisor::cli::logs(out.as_ref(), err.as_ref(), lines, follow))
                .await?;
        }
        Cmd::Daemons { cmd } => match cmd {
            DaemonsCmd::Plan { root, json } => {
                let items = daemons::plan(
                    &root.root,
                    &root.sup.launching_backend()?,
                    &daemons::Options { prune: !root.no_prune },
                )?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&items)?);
                } else {
                    print_plan(&items.iter().map(plan_row).collect::<Vec<_>>());
                }
                if items.iter().any(|i| i.action == daemons::Action::Error) {
                    return Ok(1);
                }
            }
            DaemonsCmd::Apply { root, json } => {
                // The table says it all; logs only when asked for (AGENTCOM_LOG).
                init_logging(cli.log_format, "off");
                let done = daemons::apply(
                    &root.root,
                    &root.sup.launching_backend()?,
                    &daemons::Options { prune: !root.no_prune },
                )?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&done)?);
                } else {
                    let rows: Vec<_> = done
                        .iter()
                        .map(|a| {
                            let mut r = plan_row(&a.item);
                            if let Some(e) = &a.error {
                                r.3 = format!("FAILED: {e}");
                            }
                            r
                        })
                        .collect();
                    print_plan(&rows);
                }
                if done.iter().any(|a| !a.ok || a.item.action == daemons::Action::Error) {
                    return Ok(1);
                }
            }
            DaemonsCmd::Watch { root, debounce_ms, full_every_ms } => {
                init_logging(cli.log_format, "info");
                let shutdown = shutdown_on_signals()?;
                let opts = daemons::WatchOptions {
                    debounce: std::time::Duration::from_millis(debounce_ms),
                    full_every: std::time::Duration::from_millis(full_every_ms.max(1)),
                    prune: !root.no_prune,
                };
                daemons::watch(root.root.clone(), root.sup.launching_backend()?, opts, shutdown).await?;
            }
            DaemonsCmd::InstallWatcher { root } => {
                let backend = root.sup.launching_backend()?;
                let abs = daemons::canonical_root(&root.root)?;
                let exe = std::env::current_exe()?.display().to_string();
                let tag: String = abs
                    .display()
                    .to_string()
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                    .to_string();
                let mut args = vec!["daemons".to_string(), "watch".into(), "--root".into(), abs.display().to_string()];
                args.extend([
                    "--backend".into(),
                    match root.sup.backend {
                        BackendKind::Native => "native".into(),
                        BackendKind::Pm2 => "pm2".into(),
                    },
                ]);
                if root.no_prune {
                    args.push("--no-prune".into());
                }
                let mut spec = proto::control::ProcSpec::new(&format!("daemons-watcher.{tag}"), &exe, args);
                if backend.kind == supervisor::backend::Kind::Native {
                    let dir = std::fs::canonicalize(&backend.dir).unwrap_or(backend.dir.clone());
                    spec.env.insert("AGENTCOM_SUPERVISOR_DIR".into(), dir.display().to_string());
                }
                if let Ok(h) = std::env::var("PM2_HOME") {
                    spec.env.insert("PM2_HOME".into(), h);
                }
                println!("{}", backend.start(&spec)?);
            }
        },
        Cmd::Checkpoint { cmd } => match cmd {
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
                println!("saved {}", dir.join(guard::checkpoint::TASK_FILE).display());
                if let Some((client, agent)) = hub.client()? {
                    client
                        .request(
                            reqwest::Method::PUT,
                            &format!("/api/agents/{}/checkpoint", seg(&agent)),
                            Some(serde_json::to_value(&c)?),
                        )
                        .await?;
                    println!("stored at the hub for {agent}");
                }
            }
            CheckpointCmd::Show { state_dir } => {
                let dir = state_dir.unwrap_or_else(guard::checkpoint::default_dir);
                let c = guard::checkpoint::Checkpoint::load(&dir)?;
                print!("{}", c.markdown());
                println!(
                    "history: {} lines in {}",
                    c.history.len(),
                    dir.join(guard::checkpoint::HISTORY_FILE).display()
                );
            }
            CheckpointCmd::Load { state_dir, print, hub } => {
                let dir = state_dir.unwrap_or_else(guard::checkpoint::default_dir);
                let c = match guard::checkpoint::Checkpoint::load(&dir) {
                    Ok(c) => c,
                    Err(local) => {
                        let (client, agent) = hub.client()?.ok_or(local)?;
                        let v = client.get(&format!("/api/agents/{}/checkpoint", seg(&agent))).await?;
                        let c: guard::checkpoint::Checkpoint = serde_json::from_value(v["checkpoint"].clone())?;
                        c.save(&dir)?;
                        c
                    }
                };
                if print {
                    print!("{}", c.markdown());
                }
            }
        },
        Cmd::Upgrade {
            repo,
            resume,
            process,
            branch,
            test,
            health,
            health_ca_file,
            health_timeout,
            stable_for,
            test_timeout,
            check_interval,
            state_dir,
            sup,
            json,
        } => {
            let mut printer = |s: &guard::upgrade::Step| {
                if !json {
                    print_step(s)
                }
            };
            let report = if resume {
                let exe = std::env::current_exe()?;
                let backend_for = |kind: &str| supervisor::backend::Backend {
                    kind: if kind == "pm2" {
                        supervisor::backend::Kind::Pm2
                    } else {
                        supervisor::backend::Kind::Native
                    },
                    dir: supervisor::client::default_dir(),
                    exe: exe.clone(),
                    launch: false,
                };
                guard::upgrade::resume(&repo, &backend_for, check_interval, &mut printer)
            } else {
                let opts = guard::upgrade::Options {
                    repo,
                    process: process.unwrap_or_default(),
                    branch: branch.unwrap_or_default(),
                    test: test.unwrap_or_default(),
                    health: health.unwrap_or_default(),
                    health_ca_file,
                    health_timeout,
                    stable_for,
                    test_timeout,
                    check_interval,
                    state_dir: state_dir.unwrap_or_else(guard::checkpoint::default_dir),
                };
                guard::upgrade::upgrade(&opts, &sup.backend()?, &mut printer)
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if let Some(e) = &report.error {
                eprintln!("error: {}: {e}", report.outcome);
            } else {
                println!("{}", report.outcome);
            }
            if !report.ok() {
                return Ok(1);
            }
        }
        Cmd::Rollback { repo, process, to, sup } => {
            let msg = guard::upgrade::manual_rollback(&repo, &process, to.as_deref(), &sup.backend()?)
                .map_err(anyhow::Error::msg)?;
            println!("{msg}");
        }
        Cmd::Guard {
            cmd:
                GuardCmd::Watch { repo, process, hub, token, ca_file, agent_id, offline_after, interval, state_dir, sup },
        } => {
            init_logging(cli.log_format, "info");
            let shutdown = shutdown_on_signals()?;
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
            guard::watch::run(opts, sup.backend()?, shutdown).await.map_err(anyhow::Error::msg)?;
        }
        Cmd::Sidecar { config } => {
            init_logging(cli.log_format, "info");
            let cfg = sidecar::SidecarConfig::load(&config)?;
            let shutdown = shutdown_on_signals()?;
            sidecar::run(cfg, shutdown).await?;
        }
        Cmd::Demo { work_ms, data_dir } => {
            init_logging(cli.log_format, "error");
            let shutdown = shutdown_on_signals()?;
            demo::run(demo::DemoOptions { work_ms, data_dir }, shutdown).await?;
        }
        Cmd::SampleAgent { work_ms } => demo::sample_agent(work_ms)?,
        Cmd::RunAgent { cmd } => {
            // The wrapped agent's exit code becomes ours, for the wake log.
            let code = sidecar::wrap::run_agent(&cmd)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Cmd::Hub { listen, data_dir, config, admin_token, tls_cert, tls_key } => {
            init_logging(cli.log_format, "info");
            let cfg =
                hub::HubConfig::load(hub::Overrides { config, listen, data_dir, admin_token, tls_cert, tls_key })?;
            let shutdown = shutdown_on_signals()?;
            hub::run(cfg, shutdown).await?;
        }
        Cmd::Task { cmd } => match cmd {
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
                print(&remote, &v, |v| format!("{}\n", client::cell(&v["task_id"])));
            }
            TaskCmd::List { status, limit, remote } => {
                let mut path = format!("/api/tasks?limit={limit}");
                if let Some(s) = status {
                    path.push_str(&format!("&status={}", seg(&s)));
                }
                let v = remote.client()?.get(&path).await?;
                print(&remote, &v, render::tasks);
            }
            TaskCmd::Show { id, remote } => {
                let v = remote.client()?.get(&format!("/api/tasks/{}", seg(&id))).await?;
                print(&remote, &v, render::task);
            }
            TaskCmd::Cancel { id, remote } => {
                let v = remote.client()?.post(&format!("/api/tasks/{}/cancel", seg(&id)), json!({})).await?;
                print(&remote, &v, |v| format!("cancelled {}\n", client::cell(&v["task_id"])));
            }
            TaskCmd::Retry { id, remote } => {
                let v = remote.client()?.post(&format!("/api/tasks/{}/retry", seg(&id)), json!({})).await?;
                print(&remote, &v, |v| format!("queued {} again\n", client::cell(&v["task_id"])));
            }
        },
        Cmd::Agents { remote } => {
            let v = remote.client()?.get("/api/agents").await?;
            print(&remote, &v, render::agents);
        }
        Cmd::Agent { cmd: AgentCmd::Restart { agent, reason, force, remote } } => {
            let path = format!("/api/admin/agents/{}/restart", seg(&agent));
            let v = remote.client()?.post(&path, json!({ "reason": reason, "force": force })).await?;
            print(&remote, &v, |v| format!("restart commanded for {}\n", client::cell(&v["agent_id"])));
        }
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create { agent, remote } => {
                let v = remote.client()?.post("/admin/tokens", json!({ "agent_id": agent })).await?;
                print(&remote, &v, |v| format!("{}\n", client::cell(&v["token"])));
            }
            TokenCmd::List { remote } => {
                let v = remote.client()?.get("/admin/tokens").await?;
                print(&remote, &v, render::tokens);
            }
            TokenCmd::Revoke { agent, remote } => {
                let v = remote.client()?.delete(&format!("/admin/tokens/{}", seg(&agent))).await?;
                print(&remote, &v, |v| {
                    format!("revoked {} token(s) of {}\n", v["revoked"], client::cell(&v["agent_id"]))
                });
            }
        },
    }
    Ok(0)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A sidecar does little at a time: one thread keeps it small beside the agent.
    let small = matches!(
        cli.cmd,
        Cmd::Sidecar { .. }
            | Cmd::SampleAgent { .. }
            | Cmd::RunAgent { .. }
            | Cmd::Supervisor { .. }
            | Cmd::Start { .. }
            | Cmd::Stop { .. }
            | Cmd::Restart { .. }
            | Cmd::Delete { .. }
            | Cmd::Ps { .. }
            | Cmd::Describe { .. }
            | Cmd::Logs { .. }
            | Cmd::Daemons { .. }
    );
    let rt = if small {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // One line: the chain of causes joined.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": "));
            std::process::ExitCode::FAILURE
        }
    }
}
