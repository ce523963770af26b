//! Hub configuration: a TOML file, then `AGENTCOM_*` env vars, then flags; validated once at start.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod notify;
pub use notify::*;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
pub const DEFAULT_DATA_DIR: &str = "./agentcom-data/hub";

/// The `[hub]`-less flat TOML file. Every field is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    /// A file holding the admin token (kept out of the process list and the config).
    pub admin_token_file: Option<PathBuf>,
    pub grace_period_ms: Option<u64>,
    pub accept_timeout_ms: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub reject_cooldown_ms: Option<u64>,
    pub violation_limit: Option<u32>,
    pub violation_window_ms: Option<u64>,
    pub ban_ms: Option<Vec<u64>>,
    /// A provider's limit without a known reset: how long the agent waits, one step per limit
    /// in a row (the last repeats).
    pub limit_backoff_ms: Option<Vec<u64>>,
    /// When a limit ends, its agents get work spread over this long, not all at once.
    pub limit_wake_spread_ms: Option<u64>,
    /// After a limit, the task waits this long for the agent holding its session.
    pub limit_prefer_ms: Option<u64>,
    /// Queue an integration task for each task that completes with a change (default true).
    pub integrate_changes: Option<bool>,
    /// PEM certificate chain; with `tls_key`, the hub serves `https://` and `wss://` only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_open_tasks: Option<usize>,
    /// Children one task may create (`parent_task_id`).
    pub max_children_per_task: Option<usize>,
    /// How deep children of children may go (a task submitted without a parent is at depth 0).
    pub max_task_depth: Option<u32>,
    pub max_description_chars: Option<usize>,
    pub max_metadata_bytes: Option<usize>,
    pub max_extra_bytes: Option<usize>,
    pub max_progress_bytes: Option<usize>,
    pub max_checkpoint_bytes: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub keep_alive_timeout_ms: Option<u64>,
    pub identify_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub agent_reserve_percent: Option<u8>,
    pub reader_connections: Option<usize>,
    /// Recent events kept for readers resuming with `Last-Event-ID`.
    pub event_window: Option<usize>,
    /// Events a reader may fall behind by before it is dropped.
    pub event_reader_buffer: Option<usize>,
    /// Readers of `GET /api/events` at once.
    pub max_event_readers: Option<usize>,
    /// How long a dashboard login lasts.
    pub console_session_ttl_ms: Option<u64>,
    /// Dashboard sessions held at once; the oldest is ended to make room.
    pub console_max_sessions: Option<usize>,
    pub console_max_sessions_per_token: Option<usize>,
    /// How often an open dashboard event stream checks that its session's token still holds.
    pub console_recheck_ms: Option<u64>,
    pub budgets: Option<BudgetsFile>,
    pub webhooks: Option<Vec<WebhookFile>>,
    /// `postgres://...`: store everything in PostgreSQL; several hubs may share it.
    pub database_url: Option<String>,
    /// PEM CA certificates to verify PostgreSQL's certificate with (`sslmode=verify-full`).
    pub database_ca_file: Option<PathBuf>,
    /// This hub's base URL as agents and clients reach it (for redirects from standbys).
    pub advertise_url: Option<String>,
    /// How long a leader's lease lasts without renewal.
    pub lease_ms: Option<u64>,
    /// This hub's name among the others (default: host name and pid).
    pub hub_id: Option<String>,
    /// How long a standby that knows no leader holds an agent's socket, waiting for the election.
    pub election_wait_ms: Option<u64>,
}

/// Values given on the command line or in the environment (clap merges the two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub database_url: Option<String>,
    pub database_ca_file: Option<PathBuf>,
    pub advertise_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Timings {
    /// How long a disconnected agent keeps its task before it is requeued.
    pub grace_period: Duration,
    /// How long an assigned task may wait for `task_accepted`.
    pub accept_timeout: Duration,
    /// Silence after which an agent's socket is closed (evicted).
    pub heartbeat_timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// After `task_rejected`, the task is not offered to the same agent for this long.
    pub reject_cooldown: Duration,
    pub violation_limit: u32,
    pub violation_window: Duration,
    /// Successive identify refusals after a 1008 close: 30 s, 60 s, 5 min by default.
    pub bans: Vec<Duration>,
    /// A provider's limit without a reset time: 60 s, 5 min, 15 min, 30 min, then 30 min.
    pub limit_backoff: Vec<Duration>,
    /// Agents freed by the end of one limit are freed over this long (30 s).
    pub limit_wake_spread: Duration,
    /// A limited task waits this long for the agent with its session (60 s).
    pub limit_prefer: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            grace_period: Duration::from_secs(60),
            accept_timeout: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            reject_cooldown: Duration::from_secs(5),
            violation_limit: 10,
            violation_window: Duration::from_secs(60),
            bans: vec![Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(300)],
            limit_backoff: [60, 300, 900, 1800].into_iter().map(Duration::from_secs).collect(),
            limit_wake_spread: Duration::from_secs(30),
            limit_prefer: Duration::from_secs(60),
        }
    }
}

/// Sizes and counts the hub accepts: every input is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open (not yet finished) tasks; a submission beyond it gets `queue_full`.
    pub max_open_tasks: usize,
    /// A task's description, in characters (AgentCom v1's limit by default).
    pub max_description_chars: usize,
    /// A task's metadata, as JSON bytes.
    pub max_metadata_bytes: usize,
    /// A task's other (v1) fields together, as JSON bytes.
    pub max_extra_bytes: usize,
    /// One progress line as stored; a longer one is cut down (and says so).
    pub max_progress_bytes: usize,
    /// An agent's checkpoint, as JSON bytes.
    pub max_checkpoint_bytes: usize,
    /// Children one task may create.
    pub max_children_per_task: usize,
    /// The deepest a child may be (its parent's depth + 1).
    pub max_task_depth: u32,
    /// Spend allowed per UTC day.
    pub budgets: Budgets,
    /// A task that completes with a change gets an integration task (`agentcom integrate`).
    pub integrate_changes: bool,
}

/// The event stream's bounds.
#[derive(Debug, Clone)]
pub struct EventLimits {
    pub window: usize,
    pub reader_buffer: usize,
    pub max_readers: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits { window: 10_000, reader_buffer: 4096, max_readers: 256 }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open_tasks: 1_000_000,
            max_description_chars: proto::MAX_DESCRIPTION,
            max_metadata_bytes: 64 * 1024,
            max_extra_bytes: 64 * 1024,
            max_progress_bytes: 16 * 1024,
            max_checkpoint_bytes: 4 * 1024 * 1024,
            max_children_per_task: 100,
            max_task_depth: 3,
            budgets: Budgets::default(),
            integrate_changes: true,
        }
    }
}

impl Limits {
    /// The largest submission body the limits allow, with room for JSON's own punctuation.
    pub fn max_submission_bytes(&self) -> usize {
        self.max_description_chars * 4 * 2 + self.max_metadata_bytes + self.max_extra_bytes + 64 * 1024
    }

    /// A progress value within `max_progress_bytes`: kept as it is, or replaced by its start.
    pub fn bounded_progress(&self, v: serde_json::Value) -> serde_json::Value {
        let text = v.to_string();
        if text.len() <= self.max_progress_bytes {
            return v;
        }
        let keep = self.max_progress_bytes / 2;
        let cut = text.char_indices().map(|(i, _)| i).take_while(|i| *i <= keep).last().unwrap_or(0);
        serde_json::json!({ "truncated": true, "bytes": text.len(), "start": &text[..cut] })
    }
}

/// The connection layer's bounds: timeouts and how many sockets it holds.
#[derive(Debug, Clone)]
pub struct NetLimits {
    /// A client must send a whole request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keep_alive_timeout: Duration,
    /// A WebSocket must identify within this.
    pub identify_timeout: Duration,
    /// A request body must have arrived within this.
    pub body_read_timeout: Duration,
    /// Open connections at most; `None`: derived from the open-files limit at start.
    pub max_connections: Option<usize>,
    /// The share of `max_connections` only identified agents may use.
    pub agent_reserve_percent: u8,
    /// Read-only store connections serving the API's reads.
    pub reader_connections: usize,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            identify_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: None,
            agent_reserve_percent: 20,
            reader_connections: 4,
        }
    }
}

/// The dashboard's sessions.
#[derive(Debug, Clone)]
pub struct ConsoleLimits {
    pub session_ttl: Duration,
    pub max_sessions: usize,
    /// Sessions one token may hold; more logins end its own oldest.
    pub max_sessions_per_token: usize,
    pub recheck: Duration,
}

impl Default for ConsoleLimits {
    fn default() -> Self {
        ConsoleLimits {
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 1000,
            max_sessions_per_token: 8,
            recheck: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub timings: Timings,
    pub limits: Limits,
    pub net: NetLimits,
    pub events: EventLimits,
    pub webhooks: Vec<Webhook>,
    /// Set when the hub stores everything in PostgreSQL (several hubs, one leader).
    pub ha: Option<crate::ha::HaConfig>,
    pub console: ConsoleLimits,
    /// Set when the hub serves TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Every problem found in the configuration, listed together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl HubConfig {
    pub fn load(o: Overrides) -> Result<HubConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let file = match &o.config {
            Some(path) => read_file(path).unwrap_or_else(|e| {
                errors.push(e);
                FileConfig::default()
            }),
            None => FileConfig::default(),
        };
        HubConfig::resolve(file, o, errors)
    }

    /// The configuration from a parsed file and the overrides, every problem listed (with
    /// those already found in `errors`). No IO but reading `admin_token_file` and TLS files.
    pub fn resolve(file: FileConfig, o: Overrides, mut errors: Vec<String>) -> Result<HubConfig, ConfigErrors> {
        let ha = ha(&o, &file, &mut errors);
        let d = Timings::default();
        let ms = |name: &str, v: Option<u64>, def: Duration, errors: &mut Vec<String>| match v {
            Some(0) => {
                errors.push(format!("{name}: must be greater than 0"));
                def
            }
            Some(v) => Duration::from_millis(v),
            None => def,
        };
        let timings = Timings {
            grace_period: ms("grace_period_ms", file.grace_period_ms, d.grace_period, &mut errors),
            accept_timeout: ms("accept_timeout_ms", file.accept_timeout_ms, d.accept_timeout, &mut errors),
            heartbeat_timeout: ms("heartbeat_timeout_ms", file.heartbeat_timeout_ms, d.heartbeat_timeout, &mut errors),
            retry_base: ms("retry_base_ms", file.retry_base_ms, d.retry_base, &mut errors),
            retry_max: ms("retry_max_ms", file.retry_max_ms, d.retry_max, &mut errors),
            reject_cooldown: ms("reject_cooldown_ms", file.reject_cooldown_ms, d.reject_cooldown, &mut errors),
            violation_limit: match file.violation_limit {
                Some(0) => {
                    errors.push("violation_limit: must be greater than 0".into());
                    d.violation_limit
                }
                Some(v) => v,
                None => d.violation_limit,
            },
            violation_window: ms("violation_window_ms", file.violation_window_ms, d.violation_window, &mut errors),
            bans: match file.ban_ms {
                Some(v) if v.is_empty() || v.contains(&0) => {
                    errors.push("ban_ms: must be a non-empty list of durations greater than 0".into());
                    d.bans
                }
                Some(v) => v.into_iter().map(Duration::from_millis).collect(),
                None => d.bans,
            },
            limit_backoff: match file.limit_backoff_ms {
                Some(v)
                    if v.is_empty()
                        || v.len() > 32
                        || v.iter().any(|ms| *ms == 0 || *ms > proto::MAX_LIMIT_WAIT_MS) =>
                {
                    errors.push(format!(
                        "limit_backoff_ms: must be 1 to 32 durations, each 1 ms to {} ms",
                        proto::MAX_LIMIT_WAIT_MS
                    ));
                    d.limit_backoff
                }
                Some(v) => v.into_iter().map(Duration::from_millis).collect(),
                None => d.limit_backoff,
            },
            limit_wake_spread: match file.limit_wake_spread_ms {
                Some(v) if v > 3_600_000 => {
                    errors.push("limit_wake_spread_ms: at most 3600000 (an hour)".into());
                    d.limit_wake_spread
                }
                Some(v) => Duration::from_millis(v),
                None => d.limit_wake_spread,
            },
            limit_prefer: match file.limit_prefer_ms {
                Some(v) if v > 3_600_000 => {
                    errors.push("limit_prefer_ms: at most 3600000 (an hour)".into());
                    d.limit_prefer
                }
                Some(v) => Duration::from_millis(v),
                None => d.limit_prefer,
            },
        };
        let positive = |name: &str, v: Option<usize>, def: usize, errors: &mut Vec<String>| match v {
            Some(0) => {
                errors.push(format!("{name}: must be greater than 0"));
                def
            }
            Some(v) => v,
            None => def,
        };
        let dl = Limits::default();
        let limits = Limits {
            max_open_tasks: positive("max_open_tasks", file.max_open_tasks, dl.max_open_tasks, &mut errors),
            max_description_chars: positive(
                "max_description_chars",
                file.max_description_chars,
                dl.max_description_chars,
                &mut errors,
            ),
            max_metadata_bytes: positive(
                "max_metadata_bytes",
                file.max_metadata_bytes,
                dl.max_metadata_bytes,
                &mut errors,
            ),
            max_extra_bytes: positive("max_extra_bytes", file.max_extra_bytes, dl.max_extra_bytes, &mut errors),
            max_progress_bytes: match file.max_progress_bytes {
                Some(n) if n < 256 => {
                    errors.push("max_progress_bytes: must be at least 256".into());
                    dl.max_progress_bytes
                }
                Some(n) => n,
                None => dl.max_progress_bytes,
            },
            max_checkpoint_bytes: positive(
                "max_checkpoint_bytes",
                file.max_checkpoint_bytes,
                dl.max_checkpoint_bytes,
                &mut errors,
            ),
            max_children_per_task: positive(
                "max_children_per_task",
                file.max_children_per_task,
                dl.max_children_per_task,
                &mut errors,
            )
            .min(10_000),
            max_task_depth: match file.max_task_depth {
                Some(d) if d > 100 => {
                    errors.push("max_task_depth: must be at most 100".into());
                    dl.max_task_depth
                }
                Some(d) => d,
                None => dl.max_task_depth,
            },
            budgets: budgets(file.budgets, &mut errors),
            integrate_changes: file.integrate_changes.unwrap_or(dl.integrate_changes),
        };
        let de = EventLimits::default();
        let events = EventLimits {
            window: positive("event_window", file.event_window, de.window, &mut errors).min(1_000_000),
            reader_buffer: positive("event_reader_buffer", file.event_reader_buffer, de.reader_buffer, &mut errors)
                .clamp(16, 1_000_000),
            max_readers: positive("max_event_readers", file.max_event_readers, de.max_readers, &mut errors),
        };
        let webhooks = webhooks(file.webhooks.unwrap_or_default(), &mut errors);
        let dc = ConsoleLimits::default();
        let console = ConsoleLimits {
            session_ttl: ms("console_session_ttl_ms", file.console_session_ttl_ms, dc.session_ttl, &mut errors),
            max_sessions: positive("console_max_sessions", file.console_max_sessions, dc.max_sessions, &mut errors)
                .min(1_000_000),
            max_sessions_per_token: positive(
                "console_max_sessions_per_token",
                file.console_max_sessions_per_token,
                dc.max_sessions_per_token,
                &mut errors,
            )
            .min(1_000_000),
            recheck: ms("console_recheck_ms", file.console_recheck_ms, dc.recheck, &mut errors),
        };
        let dn = NetLimits::default();
        let net = NetLimits {
            header_read_timeout: ms(
                "header_read_timeout_ms",
                file.header_read_timeout_ms,
                dn.header_read_timeout,
                &mut errors,
            ),
            keep_alive_timeout: ms(
                "keep_alive_timeout_ms",
                file.keep_alive_timeout_ms,
                dn.keep_alive_timeout,
                &mut errors,
            ),
            identify_timeout: ms("identify_timeout_ms", file.identify_timeout_ms, dn.identify_timeout, &mut errors),
            body_read_timeout: ms("body_read_timeout_ms", file.body_read_timeout_ms, dn.body_read_timeout, &mut errors),
            max_connections: match file.max_connections {
                Some(n) if n < 16 => {
                    errors.push("max_connections: must be at least 16".into());
                    None
                }
                v => v,
            },
            agent_reserve_percent: match file.agent_reserve_percent {
                Some(p) if p > 90 => {
                    errors.push("agent_reserve_percent: must be at most 90".into());
                    dn.agent_reserve_percent
                }
                Some(p) => p,
                None => dn.agent_reserve_percent,
            },
            reader_connections: match file.reader_connections {
                Some(n) if !(1..=64).contains(&n) => {
                    errors.push("reader_connections: must be 1 to 64".into());
                    dn.reader_connections
                }
                Some(n) => n,
                None => dn.reader_connections,
            },
        };
        if timings.retry_max < timings.retry_base {
            errors.push("retry_max_ms: must not be below retry_base_ms".into());
        }
        let listen = o.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        if !listen.contains(':') {
            errors.push(format!("listen: {listen:?} is not HOST:PORT"));
        }
        let token_file = o.admin_token_file.or(file.admin_token_file);
        let from_file = match &token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(t) if t.trim().is_empty() => {
                    errors.push(format!("admin_token_file: {} is empty", path.display()));
                    None
                }
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    errors.push(format!("admin_token_file: cannot read {}: {e}", path.display()));
                    None
                }
            },
            None => None,
        };
        if from_file.is_some() && (o.admin_token.is_some() || file.admin_token.is_some()) {
            errors.push("admin_token_file: give either admin_token or admin_token_file, not both".into());
        }
        let admin_token = from_file.or(o.admin_token).or(file.admin_token).filter(|t| !t.is_empty());
        if let Some(t) = &admin_token {
            if t.len() < 16 || t.len() > proto::MAX_TOKEN {
                errors.push(format!("admin_token: must be 16 to {} characters", proto::MAX_TOKEN));
            }
        }
        let data_dir = o.data_dir.or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let tls = match (o.tls_cert.or(file.tls_cert), o.tls_key.or(file.tls_key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => crate::tls::server_config(&cert, &key).map_err(|e| errors.push(e)).ok(),
            (Some(_), None) => {
                errors.push("tls_key: required with tls_cert".into());
                None
            }
            (None, Some(_)) => {
                errors.push("tls_cert: required with tls_key".into());
                None
            }
        };
        if errors.is_empty() {
            if ha.is_some() && admin_token.is_none() {
                return Err(ConfigErrors(vec![
                    "admin_token: hubs sharing PostgreSQL need the same admin token: give admin_token_file, admin_token or AGENTCOM_ADMIN_TOKEN"
                        .into(),
                ]));
            }
            Ok(HubConfig { listen, data_dir, admin_token, timings, limits, net, events, webhooks, ha, console, tls })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The PostgreSQL settings, when a database URL is given.
fn ha(o: &Overrides, file: &FileConfig, errors: &mut Vec<String>) -> Option<crate::ha::HaConfig> {
    let ca_file = o.database_ca_file.as_deref().or(file.database_ca_file.as_deref());
    let Some(url) = o.database_url.as_deref().or(file.database_url.as_deref()) else {
        if ca_file.is_some() {
            errors.push("database_ca_file: only used with database_url".into());
        }
        return None;
    };
    let database = crate::store::Database::new(url, ca_file).map_err(|e| errors.extend(e)).ok();
    let listen = o.listen.clone().or_else(|| file.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.into());
    let advertise = o.advertise_url.clone().or_else(|| file.advertise_url.clone());
    let unspecified = listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:");
    match &advertise {
        Some(a) => match url::Url::parse(a) {
            Ok(_) if a.len() > 110 => {
                errors.push("advertise_url: at most 110 bytes (agents receive it in a WebSocket close frame)".into())
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => errors.push(format!("advertise_url: {a:?} is not an http:// or https:// URL")),
        },
        None if unspecified => errors.push(format!(
            "advertise_url: required with database_url when listen ({listen}) does not say how others reach this hub"
        )),
        None => {}
    }
    let lease = match file.lease_ms {
        Some(ms) if !(200..=600_000).contains(&ms) => {
            errors.push("lease_ms: must be 200 to 600000".into());
            Duration::from_secs(5)
        }
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_secs(5),
    };
    let hub_id = file.hub_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    if hub_id.is_empty() || hub_id.chars().count() > 128 || hub_id.chars().any(char::is_control) {
        errors.push("hub_id: must be 1 to 128 printable characters".into());
    }
    // The advertise URL may still be filled from `listen` once TLS is known.
    let election_wait = match file.election_wait_ms {
        Some(ms) if ms > 60_000 => {
            errors.push("election_wait_ms: must be at most 60000".into());
            Duration::from_secs(1)
        }
        Some(ms) => Duration::from_millis(ms),
        None => lease.min(Duration::from_secs(1)),
    };
    Some(crate::ha::HaConfig {
        database: database?,
        advertise_url: advertise.unwrap_or_default(),
        lease,
        hub_id,
        election_wait,
    })
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The TOML text of a configuration file, strictly: an unknown key is an error naming its line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        // toml's own text quotes the offending line, which may hold a secret (a misspelt
        // `admin_token`, a password in `database_url`): say where, and what, only.
        let at = e.span().and_then(|s| text.get(..s.start)).map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        });
        format!("{}{}", at.unwrap_or_default(), e.message().trim_end())
    })
}

#[cfg(test)]
mod tests;
