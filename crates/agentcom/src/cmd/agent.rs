//! The commands that run beside an agent: `sidecar`, `run-agent`, and the `demo` with its
//! `sample-agent`.

use crate::logging::{self, LogArgs};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct SidecarArgs {
    /// TOML file, or an AgentCom config.json.
    #[arg(long, env = "AGENTCOM_SIDECAR_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long the sample agent works on each task, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    work_ms: u64,
    /// Keep the demo's data here (default: a temp dir removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SampleAgentArgs {
    /// How long to work on the task, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    work_ms: u64,
}

#[derive(clap::Args)]
pub struct RunAgentArgs {
    /// Read the result, what it cost, any error and any model provider limit from the agent's
    /// own output: `claude-json` is Claude Code's final object (`claude -p ... --output-format
    /// json`); `claude-stream` runs it with `--output-format stream-json --verbose` and forwards
    /// its text and cost as it goes; `codex-json` reads `codex exec --json`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    usage: Option<UsageFormat>,
    /// Do not resume the session of the task's earlier attempt (`AGENTCOM_RESUME_SESSION`).
    #[arg(long)]
    no_resume: bool,
    /// Give the agent the fleet's MCP tools: configures `agentcom mcp` as its MCP server
    /// `agentcom` (claude: --mcp-config and --allowedTools; codex: -c mcp_servers.agentcom.*).
    #[arg(long)]
    mcp: bool,
    /// The agent's command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    cmd: Vec<String>,
}

// No doc comments on the values: clap would list them as items under the flag.
#[derive(Clone, Copy, clap::ValueEnum)]
enum UsageFormat {
    ClaudeJson,
    ClaudeStream,
    CodexJson,
}

pub async fn sidecar(a: SidecarArgs) -> anyhow::Result<u8> {
    logging::init(a.log.log_format, "info");
    let cfg = sidecar::SidecarConfig::load(&a.config)?;
    run_sidecar(cfg).await
}

/// Runs a sidecar on `cfg` until SIGINT or SIGTERM, telling the hub what supervises this
/// process (`agentcom sidecar`, and the integrator's sidecar).
pub(crate) async fn run_sidecar(cfg: sidecar::SidecarConfig) -> anyhow::Result<u8> {
    let shutdown = crate::shutdown_on_signals()?;
    let detected = tokio::task::spawn_blocking(supervisor::selfinfo::detect).await?;
    let host = sidecar::Host {
        kind: detected.kind(),
        restarts_us: detected.restarts_us(),
        process_info: Arc::new(move || supervisor::selfinfo::process_info(&detected)),
    };
    sidecar::run(cfg, host, shutdown).await?;
    Ok(0)
}

pub async fn demo(a: DemoArgs) -> anyhow::Result<u8> {
    logging::init(logging::LogFormat::Human, "error");
    let shutdown = crate::shutdown_on_signals()?;
    match demo::run(demo::DemoOptions { work_ms: a.work_ms, data_dir: a.data_dir }, shutdown).await? {
        demo::Ended::Finished => Ok(0),
        // As a shell reports a program stopped by Ctrl-C: 128 + SIGINT.
        demo::Ended::Interrupted => Ok(130),
    }
}

pub fn sample_agent(a: SampleAgentArgs) -> anyhow::Result<u8> {
    demo::sample_agent(a.work_ms)?;
    Ok(0)
}

pub fn run_agent(a: RunAgentArgs) -> anyhow::Result<u8> {
    // The wrapped agent's exit code becomes ours, for the wake log.
    let format = a.usage.map(|f| match f {
        UsageFormat::ClaudeJson => sidecar::wrap::UsageFormat::ClaudeJson,
        UsageFormat::ClaudeStream => sidecar::wrap::UsageFormat::ClaudeStream,
        UsageFormat::CodexJson => sidecar::wrap::UsageFormat::CodexJson,
    });
    let opts = sidecar::wrap::Options { format, resume: !a.no_resume, mcp: a.mcp };
    let code = sidecar::wrap::run_agent(&a.cmd, opts)?;
    Ok(u8::try_from(code).unwrap_or(1))
}

#[derive(clap::Args)]
pub struct McpArgs {
    /// The longest one tool call waits (for a person's answer, for child tasks), in ms; it also
    /// ends a tenth before the client's MCP_TOOL_TIMEOUT.
    #[arg(long, env = "AGENTCOM_MCP_MAX_WAIT_MS", default_value_t = mcp::DEFAULT_MAX_WAIT.as_millis() as u64)]
    max_wait_ms: u64,
}

/// `agentcom mcp`: the fleet's tools over stdio, for an agent CLI inside a wake.
pub async fn mcp(a: McpArgs) -> anyhow::Result<u8> {
    // stdout is the protocol: logs go to stderr (the CLI's MCP log), warnings only.
    logging::init(logging::LogFormat::Human, "warn");
    let settings = mcp::Settings::from_env(std::time::Duration::from_millis(a.max_wait_ms), |k| std::env::var(k).ok());
    if let Err(why) = &settings.place {
        tracing::warn!(problem = %why, "every tool will say so");
    }
    mcp::serve_stdio(settings).await.map_err(|e| anyhow::anyhow!("mcp: {e}"))?;
    Ok(0)
}
