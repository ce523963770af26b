//! The `agentcom` binary: parses arguments, installs logging and signal handling, and calls
//! the library crates. Each command's flags and its few lines of glue live in `cmd/`.

mod cmd;
mod logging;
mod out;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "agentcom", version, about = "Control plane for fleets of autonomous AI coding agents")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub server.
    Hub(cmd::hub::HubArgs),
    /// Run a sidecar beside one agent.
    Sidecar(cmd::agent::SidecarArgs),
    /// Start a hub, two sidecars and a sample agent, submit tasks and watch them complete.
    Demo(cmd::agent::DemoArgs),
    /// A small program that plays an agent for the demo (run by a sidecar's wake command).
    SampleAgent(cmd::agent::SampleAgentArgs),
    /// Wake-command wrapper for real agents: writes <task>.started, runs CMD, streams its output
    /// lines to <task>.progress, then writes <task>.json from its exit status.
    RunAgent(cmd::agent::RunAgentArgs),
    /// Run the integrator: finished tasks' branches rebased onto their target, checked with
    /// check_command and pushed by compare-and-swap, one change per target at a time.
    Integrate(cmd::integrate::IntegrateArgs),
    /// One integration, as the integrator's sidecar runs it.
    #[command(hide = true)]
    IntegrateRun(cmd::integrate::IntegrateRunArgs),
    /// An MCP server over stdio giving the agent of a wake the fleet's tools (ask_person,
    /// report_progress, submit_task, wait_for_tasks, task_status), through its sidecar.
    Mcp(cmd::agent::McpArgs),
    /// Run the process supervisor daemon (state in AGENTCOM_SUPERVISOR_DIR).
    Supervisor(cmd::process::SupervisorArgs),
    /// Start a supervised process (launches the supervisor in the background if none runs).
    Start(Box<cmd::process::StartArgs>),
    /// Stop a supervised process (its whole process group).
    Stop(cmd::process::NameArgs),
    /// Restart a supervised process (also clears `errored`).
    Restart(cmd::process::NameArgs),
    /// Replace a process with a fresh one without a moment where none runs: the new one must
    /// stay up (and pass its health command) before the old one is stopped.
    Reload(cmd::process::ReloadArgs),
    /// Stop and forget a supervised process.
    Delete(cmd::process::NameArgs),
    /// Stop every process, then the supervisor itself (as `pm2 kill`).
    Kill(cmd::process::KillArgs),
    /// Start the supervisor at boot: write and enable a systemd user unit (--system: print a
    /// system unit), as `pm2 startup`.
    Startup(cmd::startup::StartupArgs),
    /// Attach this terminal to a tmux process (detach with the tmux prefix, then d).
    Attach(cmd::tmux::AttachArgs),
    /// Type text into a tmux process, then Enter.
    Send(cmd::tmux::SendArgs),
    /// List supervised processes.
    #[command(visible_aliases = ["ls", "list", "status"])]
    Ps(cmd::process::PsArgs),
    /// Everything about one process, as a table (--json for scripts).
    Describe(cmd::process::DescribeArgs),
    /// A live view of the processes and the hub's agents (as pm2's monit); q quits.
    Top(cmd::top::TopArgs),
    /// Print a process's logs (or every process's); -f follows them across rotations.
    Logs(cmd::process::LogsArgs),
    /// Empty the log files of a process, or of every process.
    Flush(cmd::process::FlushArgs),
    /// A folder of daemon definitions as the source of truth for the supervisor.
    Daemons {
        #[command(subcommand)]
        cmd: cmd::daemons::DaemonsCmd,
    },
    /// Save, show or load the agent's checkpoint (current_task.md and history).
    Checkpoint {
        #[command(subcommand)]
        cmd: cmd::guard::CheckpointCmd,
    },
    /// Upgrade an agent's own code as one transaction: test, merge, restart, health window,
    /// commit or roll back by itself.
    Upgrade(cmd::guard::UpgradeArgs),
    /// Roll an agent's repo back to the last good commit (or --to REF) and restart it.
    Rollback(cmd::guard::RollbackArgs),
    /// The guard's watchdog.
    Guard {
        #[command(subcommand)]
        cmd: cmd::guard::GuardCmd,
    },
    /// Submit, list, inspect, cancel and retry tasks.
    Task {
        #[command(subcommand)]
        cmd: cmd::remote::TaskCmd,
    },
    /// List agents and their presence.
    Agents(cmd::remote::RemoteArgs),
    /// Commands sent to one agent.
    Agent {
        #[command(subcommand)]
        cmd: cmd::remote::AgentCmd,
    },
    /// Manage per-agent tokens (admin).
    Token {
        #[command(subcommand)]
        cmd: cmd::remote::TokenCmd,
    },
    /// Follow the hub's events live (transitions, progress, presence, questions, usage).
    Events(cmd::remote::EventsArgs),
    /// What agents reported they spent, by agent, model or day.
    Usage(cmd::remote::UsageArgs),
}

/// Cancels the returned token on SIGINT or SIGTERM: the one shutdown signal passed down. A second
/// signal exits at once with 128 + its number.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = first, "shutting down");
        t.cancel();
        // A shutdown can wait long (a child that ignores its stop signal, for its kill timeout);
        // a second signal, a second Ctrl-C above all, ends it now. Every daemon recovers from
        // an exit at any point, so nothing is lost (a supervisor's children are stopped and
        // started afresh by the next one, as after a crash).
        let (second, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + SignalKind::terminate().as_raw_value()),
            _ = int.recv() => ("SIGINT", 128 + SignalKind::interrupt().as_raw_value()),
        };
        tracing::warn!(signal = second, "second signal during shutdown; exiting now");
        std::process::exit(code);
    });
    Ok(token)
}

/// Runs one command; the value is the process exit code.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.cmd {
        Cmd::Hub(a) => cmd::hub::run(a).await,
        Cmd::Sidecar(a) => cmd::agent::sidecar(a).await,
        Cmd::Demo(a) => cmd::agent::demo(a).await,
        Cmd::SampleAgent(a) => cmd::agent::sample_agent(a),
        Cmd::RunAgent(a) => cmd::agent::run_agent(a),
        Cmd::Integrate(a) => cmd::integrate::integrate(a).await,
        Cmd::IntegrateRun(a) => cmd::integrate::integrate_run(a),
        Cmd::Mcp(a) => cmd::agent::mcp(a).await,
        Cmd::Supervisor(a) => cmd::process::supervisor(a).await,
        Cmd::Start(a) => cmd::process::start(*a),
        Cmd::Stop(a) => cmd::process::stop(a),
        Cmd::Restart(a) => cmd::process::restart(a),
        Cmd::Reload(a) => cmd::process::reload(a),
        Cmd::Flush(a) => cmd::process::flush(a),
        Cmd::Delete(a) => cmd::process::delete(a),
        Cmd::Kill(a) => cmd::process::kill(a),
        Cmd::Startup(a) => cmd::startup::run(a),
        Cmd::Attach(a) => cmd::tmux::attach(a),
        Cmd::Send(a) => cmd::tmux::send(a),
        Cmd::Ps(a) => cmd::process::ps(a),
        Cmd::Describe(a) => cmd::process::describe(a),
        Cmd::Logs(a) => cmd::process::logs(a).await,
        Cmd::Top(a) => cmd::top::run(a).await,
        Cmd::Daemons { cmd } => cmd::daemons::run(cmd).await,
        Cmd::Checkpoint { cmd } => cmd::guard::checkpoint(cmd).await,
        Cmd::Upgrade(a) => cmd::guard::upgrade(a).await,
        Cmd::Rollback(a) => cmd::guard::rollback(a),
        Cmd::Guard { cmd } => cmd::guard::guard(cmd).await,
        Cmd::Task { cmd } => cmd::remote::task(cmd).await,
        Cmd::Agents(a) => cmd::remote::agents(a).await,
        Cmd::Agent { cmd } => cmd::remote::agent(cmd).await,
        Cmd::Token { cmd } => cmd::remote::token(cmd).await,
        Cmd::Events(a) => cmd::remote::events(a).await,
        Cmd::Usage(a) => cmd::remote::usage(a).await,
    }
}

/// The chain of causes joined, each said once: errors that print their cause and also expose it
/// as their source would otherwise repeat it.
fn one_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A sidecar or a process command does little at a time: one thread keeps it small.
    let small = !matches!(
        cli.cmd,
        Cmd::Hub(_)
            | Cmd::Demo(_)
            | Cmd::Task { .. }
            | Cmd::Agents(_)
            | Cmd::Agent { .. }
            | Cmd::Token { .. }
            | Cmd::Events(_)
            | Cmd::Usage(_)
            | Cmd::Checkpoint { .. }
            | Cmd::Upgrade(_)
            | Cmd::Rollback(_)
            | Cmd::Guard { .. }
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
        Err(e) if out::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", client::printable(&one_message(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}
