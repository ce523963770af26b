//! The supervisor's control protocol: one JSON request per line on its Unix socket, one JSON
//! response per line back. Also the process spec and status shared with the pm2 backend.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// The default of every `ProcSpec` field, in one place: the serde defaults, `ProcSpec::new`,
/// the `start` flags and `daemon.toml` normalization all read them from here.
pub mod defaults {
    pub const KILL_SIGNAL: &str = "SIGTERM";
    pub const KILL_TIMEOUT_MS: u64 = 5_000;
    pub const MIN_UPTIME_MS: u64 = 1_000;
    pub const MAX_RESTARTS: u32 = 16;
    pub const RESTART_BACKOFF_MS: u64 = 100;
    pub const RESTART_BACKOFF_MAX_MS: u64 = 15_000;
    pub const HEALTH_INTERVAL_MS: u64 = 10_000;
    pub const HEALTH_FAILURES: u32 = 3;
    pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
    pub const LOG_KEEP: u32 = 3;
    /// Quiet time after a change in a watched path before the restart (pm2's `watch_delay`).
    pub const WATCH_DELAY_MS: u64 = 100;
    pub const INSTANCES: u32 = 1;
    /// Instances of one spec at most.
    pub const MAX_INSTANCES: u32 = 128;
}

fn d_kill_signal() -> String {
    defaults::KILL_SIGNAL.into()
}
fn d_kill_timeout() -> u64 {
    defaults::KILL_TIMEOUT_MS
}
fn d_min_uptime() -> u64 {
    defaults::MIN_UPTIME_MS
}
fn d_max_restarts() -> u32 {
    defaults::MAX_RESTARTS
}
fn d_backoff_base() -> u64 {
    defaults::RESTART_BACKOFF_MS
}
fn d_backoff_max() -> u64 {
    defaults::RESTART_BACKOFF_MAX_MS
}
fn d_health_interval() -> u64 {
    defaults::HEALTH_INTERVAL_MS
}
fn d_health_failures() -> u32 {
    defaults::HEALTH_FAILURES
}
fn d_log_max() -> u64 {
    defaults::LOG_MAX_BYTES
}
fn d_log_keep() -> u32 {
    defaults::LOG_KEEP
}

/// Everything needed to run one process. Field names are the `start` flags and the
/// `daemon.toml` keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcSpec {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default = "d_kill_signal")]
    pub kill_signal: String,
    #[serde(default = "d_kill_timeout")]
    pub kill_timeout_ms: u64,
    #[serde(default = "d_min_uptime")]
    pub min_uptime_ms: u64,
    #[serde(default = "d_max_restarts")]
    pub max_restarts: u32,
    /// First restart delay; each further one is 1.5 times the last, up to `restart_backoff_max_ms`.
    #[serde(default = "d_backoff_base")]
    pub restart_backoff_ms: u64,
    #[serde(default = "d_backoff_max")]
    pub restart_backoff_max_ms: u64,
    /// Exit codes that mean "stopped on purpose": never restarted.
    #[serde(default)]
    pub stop_exit_codes: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_cmd: Option<String>,
    #[serde(default = "d_health_interval")]
    pub health_interval_ms: u64,
    /// Consecutive failed health checks tolerated; one more restarts the process.
    #[serde(default = "d_health_failures")]
    pub health_failures: u32,
    /// RSS of the whole process group above which the process is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    #[serde(default = "d_log_max")]
    pub log_max_bytes: u64,
    #[serde(default = "d_log_keep")]
    pub log_keep: u32,
    // The fields below are left out of the JSON while they hold their default, so a spec that
    // does not use them keeps the fingerprint it had before they existed.
    /// A delay before every restart, the first included (pm2's `restart_delay`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_delay_ms: u64,
    /// Paths whose changes restart the process (recursive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
    /// Globs of paths under `watch` whose changes are ignored: without a `/` a glob matches any
    /// path component (`node_modules`), with one it matches the path below `cwd` (or absolute).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_watch: Vec<String>,
    #[serde(default = "d_watch_delay", skip_serializing_if = "is_default_watch_delay")]
    pub watch_delay_ms: u64,
    /// N processes `name-0` … `name-(N-1)`, each with `NODE_APP_INSTANCE` (pm2's fork mode).
    #[serde(default = "d_instances", skip_serializing_if = "is_one")]
    pub instances: u32,
    /// Restart on a crontab schedule (5 or 6 fields, local time), as pm2's `cron_restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_restart: Option<String>,
    /// Stamp every log line (false: the lines as written).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub time: bool,
    /// The stamp's format, in day.js tokens as pm2 takes them (`YYYY-MM-DD HH:mm:ss Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_date_format: Option<String>,
    /// Log files instead of `<dir>/logs/<name>-out.log` / `-err.log`; `log_file` gets both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// Run in a window of the supervisor's private tmux server: a real terminal.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tmux: bool,
}

fn d_watch_delay() -> u64 {
    defaults::WATCH_DELAY_MS
}
fn d_instances() -> u32 {
    defaults::INSTANCES
}
fn yes() -> bool {
    true
}
fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_true(v: &bool) -> bool {
    *v
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_default_watch_delay(v: &u64) -> bool {
    *v == defaults::WATCH_DELAY_MS
}

/// Marks each instance of a spec with `instances > 1`, with the spec's own name.
pub const ENV_INSTANCE_OF: &str = "AGENTCOM_INSTANCE_OF";
/// pm2's instance number variable.
pub const ENV_INSTANCE: &str = "NODE_APP_INSTANCE";

impl ProcSpec {
    pub fn new(name: &str, command: &str, args: Vec<String>) -> ProcSpec {
        ProcSpec {
            name: name.into(),
            command: command.into(),
            args,
            cwd: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::Always,
            kill_signal: d_kill_signal(),
            kill_timeout_ms: d_kill_timeout(),
            min_uptime_ms: d_min_uptime(),
            max_restarts: d_max_restarts(),
            restart_backoff_ms: d_backoff_base(),
            restart_backoff_max_ms: d_backoff_max(),
            stop_exit_codes: Vec::new(),
            health_cmd: None,
            health_interval_ms: d_health_interval(),
            health_failures: d_health_failures(),
            max_memory_bytes: None,
            log_max_bytes: d_log_max(),
            log_keep: d_log_keep(),
            restart_delay_ms: 0,
            watch: Vec::new(),
            ignore_watch: Vec::new(),
            watch_delay_ms: d_watch_delay(),
            instances: d_instances(),
            cron_restart: None,
            time: true,
            log_date_format: None,
            out_file: None,
            error_file: None,
            log_file: None,
            tmux: false,
        }
    }

    /// The processes this spec stands for: itself, or with `instances = N > 1`, N specs named
    /// `name-0` … `name-(N-1)`, each with `NODE_APP_INSTANCE` and its own log files (a `-i`
    /// before the extension of a configured file), as pm2 runs them in fork mode.
    pub fn expand_instances(&self) -> Vec<ProcSpec> {
        if self.instances <= 1 {
            return vec![self.clone()];
        }
        let suffixed = |f: &Option<String>, i: u32| {
            f.as_ref().map(|f| match f.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() && !ext.contains('/') => format!("{stem}-{i}.{ext}"),
                _ => format!("{f}-{i}"),
            })
        };
        (0..self.instances)
            .map(|i| {
                let mut s = self.clone();
                s.name = format!("{}-{i}", self.name);
                s.instances = 1;
                s.env.insert(ENV_INSTANCE.into(), i.to_string());
                s.env.insert(ENV_INSTANCE_OF.into(), self.name.clone());
                s.out_file = suffixed(&self.out_file, i);
                s.error_file = suffixed(&self.error_file, i);
                s.log_file = suffixed(&self.log_file, i);
                s
            })
            .collect()
    }

    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let valid_name = |n: &str| {
            !n.is_empty() && n.len() <= 128 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
        };
        if !valid_name(&self.name) {
            e.push(format!("name: {:?} must be 1-128 characters of letters, digits and - _ . @ :", self.name));
        }
        if self.command.trim().is_empty() {
            e.push("command: must not be empty".into());
        }
        if signal_number(&self.kill_signal).is_none() {
            e.push(format!("kill_signal: unknown signal {:?}", self.kill_signal));
        }
        for (k, v) in [
            ("kill_timeout_ms", self.kill_timeout_ms),
            ("restart_backoff_ms", self.restart_backoff_ms),
            ("restart_backoff_max_ms", self.restart_backoff_max_ms),
            ("health_interval_ms", self.health_interval_ms),
            ("log_max_bytes", self.log_max_bytes),
        ] {
            if v == 0 {
                e.push(format!("{k}: must be greater than 0"));
            }
        }
        if self.instances == 0 || self.instances > defaults::MAX_INSTANCES {
            e.push(format!("instances: must be 1 to {}", defaults::MAX_INSTANCES));
        }
        if self.instances > 1 && !valid_name(&format!("{}-{}", self.name, self.instances - 1)) {
            e.push(format!("name: {:?} is too long for {} instances", self.name, self.instances));
        }
        for (k, paths) in [("watch", &self.watch)] {
            if paths.iter().any(|p| !p.starts_with('/')) {
                e.push(format!("{k}: paths must be absolute"));
            }
        }
        for (k, f) in [("out_file", &self.out_file), ("error_file", &self.error_file), ("log_file", &self.log_file)] {
            if f.as_ref().is_some_and(|f| !f.starts_with('/')) {
                e.push(format!("{k}: must be an absolute path"));
            }
        }
        if self.restart_backoff_max_ms < self.restart_backoff_ms {
            e.push("restart_backoff_max_ms: must not be below restart_backoff_ms".into());
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                e.push(format!("env: invalid variable name {k:?}"));
            }
        }
        e
    }
}

/// Signal number for a name such as `SIGTERM`, `TERM` or `15`.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

/// One line of `agentcom ps --json`. Field names are stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcStatus {
    /// A small number that names the process as well as its name does (pm2's `pm_id`): given at
    /// its first start, kept across restarts, reloads and supervisor restarts, free again only
    /// once the process is deleted.
    #[serde(default)]
    pub id: u32,
    pub name: String,
    /// 0 when not running.
    pub pid: u32,
    /// online, launching, stopping, stopped, errored or waiting-restart.
    pub status: String,
    pub uptime_ms: u64,
    pub restart_count: u64,
    /// RSS of the whole process group.
    pub memory_bytes: u64,
    pub cpu_percent: f64,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub unstable_restarts: u32,
    /// The `AGENTCOM_SPEC_HASH` the process runs with, if any.
    #[serde(default)]
    pub spec_hash: Option<String>,
    /// The `AGENTCOM_DAEMON_ROOT` of a process created by `agentcom daemons`.
    #[serde(default)]
    pub daemon_root: Option<String>,
    /// Why the process is not online when it should be (for example a command that cannot be
    /// executed), or why it was last restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Runs in the supervisor's private tmux server (`agentcom attach`, `agentcom send`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tmux: bool,
    /// For one of the instances of a spec with `instances > 1`: the spec's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// Starts a new process, or replaces the spec of a stopped one.
    Start {
        spec: Box<ProcSpec>,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// `start NAME` of a process the supervisor holds (pm2's habit): a stopped or errored one
    /// is started, one that runs is left alone and that is said.
    StartExisting {
        name: String,
    },
    /// Starts a successor with the same spec beside the running process; once it has stayed up
    /// `min_uptime_ms` (and passed its health command, if it has one) the old one is stopped and
    /// the successor becomes the process. No moment without one running. Fails, leaving the old
    /// one untouched, if the successor exits first or is not healthy within `timeout_ms`.
    Reload {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Empties the process's log files (pm2's `flush`).
    Flush {
        name: String,
    },
    Delete {
        name: String,
    },
    Ps,
    Describe {
        name: String,
    },
    /// Stops every process (each stays listed as stopped), answers, then the supervisor exits.
    Kill,
    /// Types `text` into a tmux process's terminal, then Enter unless `enter` is false.
    Send {
        name: String,
        text: String,
        #[serde(default = "yes")]
        enter: bool,
    },
}

/// How long a reload waits for the successor to become healthy, unless told.
pub const RELOAD_TIMEOUT_MS: u64 = 30_000;

/// The longest request line the supervisor reads; a longer one is answered with an error and
/// skipped up to its newline, without being buffered.
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;

/// Parses one request line (without its newline). Every error is a sentence for the client:
/// the supervisor answers it and keeps the connection.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("bad request: not UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Describe {
    pub status: ProcStatus,
    pub spec: ProcSpec,
    pub pgid: Option<i32>,
    pub out_log: String,
    pub err_log: String,
    pub last_restart_reason: Option<String>,
    pub started_at_ms: Option<u64>,
    /// Where a tmux process runs, to attach to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmux: Option<TmuxTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TmuxTarget {
    /// The private server's socket (`tmux -S`).
    pub socket: String,
    pub session: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Ok { message: String },
    Pong { pid: u32, version: String },
    List { processes: Vec<ProcStatus> },
    Described(Box<Describe>),
    Error { error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_request_names_what_is_wrong() {
        assert!(matches!(parse_request(br#"{"cmd":"ps"}"#), Ok(Request::Ps)));
        assert!(matches!(parse_request(br#"{"cmd":"kill"}"#), Ok(Request::Kill)));
        let e = parse_request(b"{\"cmd\":\"ps\xff\"}").unwrap_err();
        assert_eq!(e, "bad request: not UTF-8 (invalid byte at offset 10)");
        let e = parse_request(br#"{"cmd":"explode"}"#).unwrap_err();
        assert!(e.starts_with("bad request: unknown variant `explode`"), "{e}");
    }

    #[test]
    fn new_uses_the_documented_defaults() {
        let s = ProcSpec::new("a", "true", vec![]);
        let from_json: ProcSpec = serde_json::from_str(r#"{"name":"a","command":"true"}"#).unwrap();
        assert_eq!(s, from_json, "serde defaults and ProcSpec::new agree");
        // Fields at their default stay out of the JSON, so older fingerprints do not change.
        let json = serde_json::to_value(&s).unwrap();
        for k in ["watch", "instances", "time", "tmux", "restart_delay_ms", "watch_delay_ms", "cron_restart"] {
            assert!(json.get(k).is_none(), "{k} in {json}");
        }
        assert_eq!((s.kill_timeout_ms, s.max_restarts), (defaults::KILL_TIMEOUT_MS, defaults::MAX_RESTARTS));
        assert!(s.validate().is_empty());
    }

    #[test]
    fn instances_expand_like_pm2_fork_mode() {
        let mut s = ProcSpec::new("web", "node", vec!["app.js".into()]);
        s.instances = 3;
        s.out_file = Some("/logs/web.log".into());
        let all = s.expand_instances();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-0", "web-1", "web-2"]);
        assert_eq!(all[2].env[ENV_INSTANCE], "2");
        assert_eq!(all[2].env[ENV_INSTANCE_OF], "web");
        assert_eq!(all[1].out_file.as_deref(), Some("/logs/web-1.log"));
        assert!(all.iter().all(|s| s.instances == 1 && s.validate().is_empty()));
        s.instances = 0;
        assert!(s.validate().iter().any(|e| e.starts_with("instances")));
    }
}
