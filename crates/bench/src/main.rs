//! Benchmarks that drive the real release `agentcom` binary and print the figures recorded in
//! BENCHMARKS.md. Run `cargo build --release` first; see BENCHMARKS.md for the commands.

mod console;
mod daemons;
mod deps;
mod guard;
mod ha;
mod hostile;
mod hub;
mod integrate;
mod limits;
mod procs;
mod sidecar;
mod soak;
mod steady;
mod supervisor;
mod worktree;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(about = "agentcom benchmarks (real processes, real sockets)")]
struct Cli {
    /// The agentcom binary to measure.
    #[arg(long, env = "AGENTCOM_BIN")]
    bin: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hub: submit -> task_assign latency, lifecycles per second, RSS per idle connection.
    Hub(hub::Args),
    /// Sidecar: RSS, PSS and private memory idle and working, assign -> accepted latency, result
    /// file -> completed latency.
    Sidecar(sidecar::Args),
    /// Every daemon's CPU per minute idle, while agents work and while a question waits; a
    /// person's answer -> the agent's `.input` when answered 1, 10 and 60 s after the question.
    Steady(steady::Args),
    /// A fleet run for minutes with restarts, kills, cancels and questions: every daemon's RSS,
    /// CPU, descriptors and threads each minute, and the invariants checked at the end.
    Soak(soak::Args),
    /// Supervisor vs pm2: RSS, ps vs jlist, respawn, 100 starts, hub restart round trip.
    Supervisor(supervisor::Args),
    /// Daemons: cold apply, edit -> online, unchanged plan (native and pm2).
    Daemons(daemons::Args),
    /// Dependencies: 1,000 tasks in 10 chains 100 deep against the same without depends_on;
    /// a dependency completing -> its dependent assigned.
    Deps(deps::Args),
    /// Guard: restart into a bad change -> old version healthy again, beyond the health timeout.
    Guard(guard::Args),
    /// Dashboard and event stream: fleet page render, commit -> event at readers, RSS per reader,
    /// lifecycles with and without readers.
    Console(console::Args),
    /// Several hubs on PostgreSQL: lifecycles next to SQLite, failover, agents identified again.
    Ha(ha::Args),
    /// Hostile input: agents working through 20,000 half-open connections; a 100,000-task backlog.
    Hostile(hostile::Args),
    /// Worktrees: submit -> wake in a fresh worktree of a 10,000-file repository against a plain
    /// `git worktree add`; 20 sidecars on one repository: worktrees left, commits lost, disk use.
    Worktree(worktree::Args),
    /// The integration queue: 20 agents, 200 changes, a 1 s check, merged per minute with
    /// `batch_max` 1 and 8; two agents changing the same line, conflict -> merged.
    Integrate(integrate::Args),
    /// A subscriber's usage limit with the real Claude Code: requests and CPU while it holds,
    /// the task resumed after the reset with no retry used.
    Limits(limits::Args),
    /// (Used by `hostile`) hold half-open connections to a hub until killed.
    #[command(hide = true)]
    HoldSockets(hostile::HoldArgs),
}

/// The `agentcom` built beside this benchmark (`cargo run --release -p bench` puts both in the
/// same target dir, wherever `CARGO_TARGET_DIR` says), else the workspace's `target/release`.
pub fn default_bin() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("agentcom")));
    beside
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/agentcom"))
}

/// Percentile of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// Resident memory that is the process's own (anonymous pages: heap, stacks), as opposed to
/// the binary's code pages, which every agentcom process on the machine shares.
pub fn private_bytes(pid: u32) -> Result<u64> {
    status_kb(pid, "RssAnon:").map(|kb| kb * 1024)
}

/// CPU time (user + system) a process has used so far, in seconds; `None` for this process.
pub fn cpu_secs(pid: Option<u32>) -> Result<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path)?;
    // The fields after the command name, which may hold spaces and parentheses.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).unwrap_or(&"0").parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name and state.
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / per_sec)
}

fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(key) {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no {key} for pid {pid}")
}

/// Sidecar settings at production cadence: pings every 30 s, the safety-net rescan every 2 s.
pub const PRODUCTION_SIDECAR: &str = "rescan_interval_ms = 2000\nping_interval_ms = 30000\npong_timeout_ms = 10000\n";

/// Starts `agent`'s sidecar under `sup` as users run one (`agentcom sidecar --config`), in the
/// folder `root/<agent>`, with the tests' settings and `extra` over them; returns the folder.
pub async fn supervised_sidecar(
    bin: &Path,
    sup: &testkit::Supervised,
    hub: &testkit::Hub,
    root: &Path,
    agent: &str,
    wake: &str,
    extra: &str,
) -> Result<PathBuf> {
    let token = hub.token(agent).await?;
    let cfg = testkit::merge_config(&testkit::sidecar_config(agent, &token, &hub.ws_url(), Some(wake)), extra);
    let dir = root.join(agent);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, cfg)?;
    sup.ok(&["start", agent, "--", bin.to_str().unwrap(), "sidecar", "--config", path.to_str().unwrap()])?;
    Ok(dir)
}

pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = cli.bin.unwrap_or_else(default_bin);
    if !bin.exists() {
        bail!("{} not found: run `cargo build --release` first", bin.display());
    }
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Hub(args) => rt.block_on(hub::run(&bin, args)),
        Cmd::Sidecar(args) => rt.block_on(sidecar::run(&bin, args)),
        Cmd::Soak(args) => rt.block_on(soak::run(&bin, args)),
        Cmd::Steady(args) => rt.block_on(steady::run(&bin, args)),
        Cmd::Supervisor(args) => rt.block_on(supervisor::run(&bin, args)),
        Cmd::Daemons(args) => rt.block_on(daemons::run(&bin, args)),
        Cmd::Deps(args) => rt.block_on(deps::run(&bin, args)),
        Cmd::Guard(args) => rt.block_on(guard::run(&bin, args)),
        Cmd::Console(args) => rt.block_on(console::run(&bin, args)),
        Cmd::Ha(args) => rt.block_on(ha::run(&bin, args)),
        Cmd::Hostile(args) => rt.block_on(hostile::run(&bin, args)),
        Cmd::Worktree(args) => rt.block_on(worktree::run(&bin, args)),
        Cmd::Integrate(args) => rt.block_on(integrate::run(&bin, args)),
        Cmd::Limits(args) => rt.block_on(limits::run(&bin, args)),
        Cmd::HoldSockets(args) => rt.block_on(hostile::hold(args)),
    }
}
