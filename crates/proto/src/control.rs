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
}

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
        }
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
    Delete {
        name: String,
    },
    Ps,
    Describe {
        name: String,
    },
    /// Stops every process (each stays listed as stopped), answers, then the supervisor exits.
    Kill,
}

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
        assert_eq!((s.kill_timeout_ms, s.max_restarts), (defaults::KILL_TIMEOUT_MS, defaults::MAX_RESTARTS));
        assert!(s.validate().is_empty());
    }
}
