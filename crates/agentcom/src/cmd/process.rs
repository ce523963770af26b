//! The process commands (`supervisor`, `start`, `stop`, `restart`, `reload`, `delete`, `ps`,
//! `describe`, `logs`, `flush`), on the native supervisor or on pm2.

use crate::logging::{self, LogArgs};
use anyhow::Context;
use clap::ValueEnum;
use proto::control::defaults;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supervisor::daemon::DaemonConfig;

/// Which supervisor the process commands drive.
#[derive(clap::Args, Clone)]
pub struct Sup {
    /// The supervisor: our own (native) or a real pm2.
    #[arg(long, value_enum, default_value = "native", env = "AGENTCOM_BACKEND")]
    pub backend: BackendKind,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BackendKind {
    Native,
    Pm2,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Pm2 => "pm2",
        }
    }
}

impl Sup {
    /// For `daemons`: the native supervisor is launched in the background if none runs.
    pub fn launching_backend(&self) -> anyhow::Result<supervisor::backend::Backend> {
        Ok(supervisor::backend::Backend { launch: true, ..self.backend()? })
    }

    pub fn backend(&self) -> anyhow::Result<supervisor::backend::Backend> {
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

#[derive(clap::Args)]
pub struct SupervisorArgs {
    /// How often process-group memory is checked against max_memory_bytes.
    #[arg(long, env = "AGENTCOM_SUPERVISOR_MEMORY_CHECK_MS", default_value_t = 5000)]
    memory_check_ms: u64,
    /// Uptime after which the restart backoff starts again from the base delay.
    #[arg(long, env = "AGENTCOM_SUPERVISOR_BACKOFF_RESET_MS", default_value_t = 30000)]
    backoff_reset_ms: u64,
    /// A control-socket connection that sends nothing for this long is closed.
    #[arg(long, env = "AGENTCOM_SUPERVISOR_CONTROL_IDLE_MS", default_value_t = DaemonConfig::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    control_idle_ms: u64,
    /// Control-socket connections served at once; one more is answered with an error.
    #[arg(long, env = "AGENTCOM_SUPERVISOR_MAX_CONNECTIONS", default_value_t = DaemonConfig::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Processes the supervisor holds at most (each instance counts).
    #[arg(long, env = "AGENTCOM_SUPERVISOR_MAX_PROCESSES", default_value_t = DaemonConfig::DEFAULT_MAX_PROCESSES)]
    max_processes: usize,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// The process's name, unique within the supervisor; or, with no command after `--`, a pm2
    /// ecosystem file (`ecosystem.config.js`, `.cjs`, `.mjs`, `.json`, `ecosystem.edn`) whose
    /// apps are all started, as `pm2 start ecosystem.config.js` does.
    name: String,
    #[command(flatten)]
    opts: StartOpts,
    /// For an ecosystem file: merge each app's `env_<NAME>` over its `env` (pm2's `--env NAME`).
    #[arg(long, value_name = "NAME")]
    env_name: Option<String>,
    #[command(flatten)]
    sup: Sup,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// Options of `agentcom start`; names match the daemon.toml keys.
#[derive(clap::Args, Clone)]
pub struct StartOpts {
    /// Working directory of the process.
    #[arg(long)]
    cwd: Option<String>,
    /// An environment variable, K=V (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// When to restart the process after it exits.
    #[arg(long, value_enum, default_value = "always")]
    restart: RestartArg,
    /// The signal that asks the process to stop.
    #[arg(long, default_value = defaults::KILL_SIGNAL)]
    kill_signal: String,
    /// How long a stop waits after the signal before SIGKILL.
    #[arg(long, default_value_t = defaults::KILL_TIMEOUT_MS)]
    kill_timeout_ms: u64,
    /// A run shorter than this counts as a crash for max_restarts.
    #[arg(long, default_value_t = defaults::MIN_UPTIME_MS)]
    min_uptime_ms: u64,
    /// Consecutive crashes after which the process is left `errored`.
    #[arg(long, default_value_t = defaults::MAX_RESTARTS)]
    max_restarts: u32,
    /// First delay of the crash backoff (x1.5 per consecutive crash).
    #[arg(long, default_value_t = defaults::RESTART_BACKOFF_MS)]
    restart_backoff_ms: u64,
    /// Longest delay of the crash backoff.
    #[arg(long, default_value_t = defaults::RESTART_BACKOFF_MAX_MS)]
    restart_backoff_max_ms: u64,
    /// Exit code that means "stopped on purpose" (repeatable).
    #[arg(long = "stop-exit-code")]
    stop_exit_codes: Vec<i32>,
    /// A shell command that exits 0 while the process is healthy.
    #[arg(long)]
    health_cmd: Option<String>,
    /// How often the health command runs.
    #[arg(long, default_value_t = defaults::HEALTH_INTERVAL_MS)]
    health_interval_ms: u64,
    /// Consecutive failed health checks that restart the process.
    #[arg(long, default_value_t = defaults::HEALTH_FAILURES)]
    health_failures: u32,
    /// Restart when the process group's memory goes above this.
    #[arg(long)]
    max_memory_bytes: Option<u64>,
    /// Rotate a log file when it reaches this size.
    #[arg(long, default_value_t = defaults::LOG_MAX_BYTES)]
    log_max_bytes: u64,
    /// Rotated log files kept.
    #[arg(long, default_value_t = defaults::LOG_KEEP)]
    log_keep: u32,
    /// A delay before every restart, the first included (pm2's restart_delay).
    #[arg(long, default_value_t = 0)]
    restart_delay_ms: u64,
    /// Restart the process when something below this path changes (repeatable, recursive).
    #[arg(long = "watch", value_name = "PATH")]
    watch: Vec<PathBuf>,
    /// Changes to paths matching this glob do not restart (repeatable): without a `/` it matches
    /// any path component (`node_modules`), with one a path below --cwd.
    #[arg(long = "ignore-watch", value_name = "GLOB")]
    ignore_watch: Vec<String>,
    /// Time from the first change of a watched path to the restart (changes meanwhile join it).
    #[arg(long, default_value_t = defaults::WATCH_DELAY_MS)]
    watch_delay_ms: u64,
    /// Run N processes NAME-0 … NAME-(N-1), each with NODE_APP_INSTANCE (pm2's fork mode).
    #[arg(long, default_value_t = defaults::INSTANCES)]
    instances: u32,
    /// Restart on this crontab schedule (5 or 6 fields, local time), as pm2's cron_restart.
    #[arg(long, value_name = "SCHEDULE")]
    cron_restart: Option<String>,
    /// Write log lines without a timestamp.
    #[arg(long)]
    no_time: bool,
    /// The timestamp's format, in day.js tokens as pm2 takes them (`YYYY-MM-DD HH:mm:ss Z`).
    #[arg(long, value_name = "FORMAT")]
    log_date_format: Option<String>,
    /// Write stdout to this file instead of the supervisor's logs folder.
    #[arg(long, value_name = "FILE")]
    out_file: Option<PathBuf>,
    /// Write stderr to this file instead of the supervisor's logs folder.
    #[arg(long, value_name = "FILE")]
    error_file: Option<PathBuf>,
    /// Also write both outputs, interleaved, to this file.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Run in a window of the supervisor's private tmux server: a real terminal that
    /// `agentcom attach` and `agentcom send` reach (for interactive agents).
    #[arg(long)]
    tmux: bool,
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
        let mut spec = proto::control::ProcSpec::new(&name, &command, args);
        // Relative paths mean where the user typed them, not the supervisor's folder.
        let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let abs = |p: &Path| daemons::pm2app::absolute(&here, &p.to_string_lossy()).display().to_string();
        spec.cwd = self.cwd.map(|c| abs(Path::new(&c)));
        spec.env = self.env.into_iter().collect();
        spec.restart = match self.restart {
            RestartArg::Always => RestartPolicy::Always,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Never => RestartPolicy::Never,
        };
        spec.kill_signal = self.kill_signal;
        spec.kill_timeout_ms = self.kill_timeout_ms;
        spec.min_uptime_ms = self.min_uptime_ms;
        spec.max_restarts = self.max_restarts;
        spec.restart_backoff_ms = self.restart_backoff_ms;
        spec.restart_backoff_max_ms = self.restart_backoff_max_ms;
        spec.stop_exit_codes = self.stop_exit_codes;
        spec.health_cmd = self.health_cmd;
        spec.health_interval_ms = self.health_interval_ms;
        spec.health_failures = self.health_failures;
        spec.max_memory_bytes = self.max_memory_bytes;
        spec.log_max_bytes = self.log_max_bytes;
        spec.log_keep = self.log_keep;
        spec.restart_delay_ms = self.restart_delay_ms;
        spec.watch = self.watch.iter().map(|p| abs(p)).collect();
        spec.ignore_watch = self.ignore_watch;
        spec.watch_delay_ms = self.watch_delay_ms;
        spec.instances = self.instances;
        spec.cron_restart = self.cron_restart;
        spec.time = !self.no_time;
        spec.log_date_format = self.log_date_format;
        spec.out_file = self.out_file.as_deref().map(abs);
        spec.error_file = self.error_file.as_deref().map(abs);
        spec.log_file = self.log_file.as_deref().map(abs);
        spec.tmux = self.tmux;
        spec
    }
}

#[derive(clap::Args)]
pub struct NameArgs {
    /// The process's name, its id (the ID column of ps), or all.
    name: String,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Args)]
pub struct DescribeArgs {
    /// The process's name or id.
    name: String,
    /// Print JSON instead of a table (env values redacted under pm2).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The process's name, its id, or all.
    name: String,
    /// How long the new process may take to become healthy (stay up min-uptime-ms and pass its
    /// health command) before the reload is given up and the old one keeps running.
    #[arg(long, default_value_t = proto::control::RELOAD_TIMEOUT_MS)]
    timeout_ms: u64,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Args)]
pub struct FlushArgs {
    /// The process's name, its id, or all.
    #[arg(default_value = supervisor::backend::ALL)]
    name: String,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    sup: Sup,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The process's name, its id, or all (each line then starts with the process's name).
    #[arg(default_value = supervisor::backend::ALL)]
    name: String,
    /// Keep printing new lines, across rotations.
    #[arg(short, long)]
    follow: bool,
    /// Only the error output (stderr).
    #[arg(long, conflicts_with = "out")]
    err: bool,
    /// Only the standard output (stdout).
    #[arg(long)]
    out: bool,
    /// How many of the last lines to print first.
    #[arg(long, default_value_t = 20)]
    lines: usize,
    #[command(flatten)]
    sup: Sup,
}

pub async fn supervisor(a: SupervisorArgs) -> anyhow::Result<u8> {
    logging::init(a.log.log_format, "info");
    let cfg = DaemonConfig {
        memory_check: Duration::from_millis(a.memory_check_ms.max(1)),
        backoff_reset: Duration::from_millis(a.backoff_reset_ms),
        control_idle_timeout: Duration::from_millis(a.control_idle_ms.max(1)),
        max_connections: a.max_connections.max(1),
        max_processes: a.max_processes.max(1),
        ..DaemonConfig::new(supervisor::client::default_dir())
    };
    let shutdown = crate::shutdown_on_signals()?;
    supervisor::daemon::run(cfg, shutdown).await?;
    Ok(0)
}

pub fn start(a: StartArgs) -> anyhow::Result<u8> {
    if a.cmd.is_empty() {
        return start_file_or_existing(a);
    }
    let spec = a.opts.spec(a.name, a.cmd);
    let mut problems = spec.validate();
    problems.extend(supervisor::daemon::spec_problems(&spec));
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    crate::out::println(a.sup.backend()?.start(&spec)?)?;
    Ok(0)
}

/// `agentcom start NAME` without a command: an ecosystem file's apps, or (as pm2 does) a process
/// the supervisor holds, started unless it runs.
fn start_file_or_existing(a: StartArgs) -> anyhow::Result<u8> {
    let file = PathBuf::from(&a.name);
    let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if daemons::ecosystem::format_of(file_name).is_some() && file.is_file() {
        return start_file(a, &file);
    }
    if let Some(message) = a.sup.backend()?.start_existing(&a.name)? {
        crate::out::println(message)?;
        return Ok(0);
    }
    anyhow::bail!(
        "give the command after `--` (agentcom start {} -- CMD ARGS...), or an ecosystem file (ecosystem.config.js, .cjs, .mjs, .json, ecosystem.edn)",
        a.name
    )
}

/// `agentcom start ecosystem.config.js`: every app of the file, named as in it, with relative
/// paths against the current folder (as pm2 run from here).
fn start_file(a: StartArgs, file: &Path) -> anyhow::Result<u8> {
    let here = std::env::current_dir().context("the current folder")?;
    let apps = daemons::ecosystem::read(file, &here)?
        .ok_or_else(|| anyhow::anyhow!("{}: no :apps in this file", file.display()))?;
    let ctx = daemons::pm2app::Ctx { file, workdir: &here, env_name: a.env_name.as_deref() };
    let backend = a.sup.backend()?;
    let mut failed = 0;
    for app in &apps {
        let mapped = match daemons::pm2app::map_app(app, &ctx) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {}", client::printable(&e.to_string()));
                failed += 1;
                continue;
            }
        };
        for w in &mapped.warnings {
            eprintln!("warning: {}", client::printable(w));
        }
        if !mapped.enabled {
            crate::out::println(format!("{}: autostart is false: not started", mapped.spec.name))?;
            continue;
        }
        let problems = supervisor::daemon::spec_problems(&mapped.spec);
        match problems.is_empty().then(|| backend.start(&mapped.spec)) {
            Some(Ok(msg)) => crate::out::println(msg)?,
            Some(Err(e)) => {
                eprintln!("error: {}", client::printable(&e.to_string()));
                failed += 1;
            }
            None => {
                eprintln!("error: {}", client::printable(&format!("{}: {}", mapped.spec.name, problems.join("; "))));
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn stop(a: NameArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.stop(&a.name)?)?;
    Ok(0)
}

pub fn restart(a: NameArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.restart(&a.name)?)?;
    Ok(0)
}

pub fn reload(a: ReloadArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.reload(&a.name, Some(a.timeout_ms))?)?;
    Ok(0)
}

pub fn flush(a: FlushArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.flush(&a.name)?)?;
    Ok(0)
}

#[derive(clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    sup: Sup,
}

pub fn kill(a: KillArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.kill()?)?;
    Ok(0)
}

pub fn delete(a: NameArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.delete(&a.name)?)?;
    Ok(0)
}

pub fn ps(a: PsArgs) -> anyhow::Result<u8> {
    let list = a.sup.backend()?.list()?;
    if a.json {
        crate::out::println(serde_json::to_string_pretty(&list)?)?;
    } else {
        crate::out::print(supervisor::cli::ps_table(&list))?;
    }
    Ok(0)
}

pub fn describe(a: DescribeArgs) -> anyhow::Result<u8> {
    if a.name == supervisor::backend::ALL {
        anyhow::bail!("describe takes one process: its name or its id (ps lists them)");
    }
    let backend = a.sup.backend()?;
    // An id means its process, as for the other commands (a spec's name, its first instance).
    let name = backend.targets(&a.name)?.into_iter().next().unwrap_or(a.name);
    let d = backend.describe(&name)?;
    if a.json {
        crate::out::println(serde_json::to_string_pretty(&d)?)?;
    } else if let Ok(native) = serde_json::from_value::<proto::control::Describe>(d.clone()) {
        crate::out::print(supervisor::cli::describe_table(&native))?;
    } else {
        crate::out::print(supervisor::cli::describe_pm2_table(&d, client::now_ms()))?;
    }
    Ok(0)
}

/// The log files `describe` names, natively or under pm2.
fn log_files(d: &serde_json::Value, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (out, err) = match (d["out_log"].as_str(), d["pm2_env"]["pm_out_log_path"].as_str()) {
        (Some(o), _) => (o, d["err_log"].as_str().unwrap_or_default()),
        (None, Some(o)) => (o, d["pm2_env"]["pm_err_log_path"].as_str().unwrap_or_default()),
        _ => anyhow::bail!("no log files known for {name}"),
    };
    Ok((out.into(), err.into()))
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<u8> {
    let backend = a.sup.backend()?;
    let targets = backend.targets(&a.name)?;
    // Lines of several processes (or of `all`) say whose they are, as pm2 prints them.
    let named = targets.len() > 1 || a.name == supervisor::backend::ALL;
    let mut sources = Vec::new();
    for target in targets {
        let (out, err) = log_files(&backend.describe(&target)?, &target)?;
        sources.push(supervisor::cli::LogSource { prefix: named.then_some(target), out, err });
    }
    if sources.is_empty() {
        crate::out::println("no processes")?;
        return Ok(0);
    }
    let selected = match (a.out, a.err) {
        (true, _) => supervisor::cli::Selected::Out,
        (_, true) => supervisor::cli::Selected::Err,
        _ => supervisor::cli::Selected::Both,
    };
    let (lines, follow) = (a.lines, a.follow);
    tokio::task::spawn_blocking(move || {
        supervisor::cli::logs(&sources, selected, lines, follow, &mut |l| crate::out::println(l))
    })
    .await??;
    Ok(0)
}
