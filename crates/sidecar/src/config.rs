//! Sidecar configuration: a TOML file (strict), or an AgentCom `config.json` as it is.
//! Relative paths resolve against the file's folder. Every error is listed with its field.

use crate::wake::WakeCommand;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file as written. Every field but `agent_id`, `token` and `hub_url` has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub agent_id: Option<String>,
    pub token: Option<String>,
    /// `ws://host:4000/ws`, or `wss://` for a hub behind TLS; or a list of them (several hubs,
    /// one leader).
    pub hub_url: Option<HubUrls>,
    /// PEM file of extra CA certificates trusted for a `wss://` hub, besides Mozilla's roots.
    pub tls_ca_file: Option<PathBuf>,
    pub capabilities: Option<Vec<String>>,
    pub wake_command: Option<String>,
    /// Default `./results`.
    pub results_dir: Option<PathBuf>,
    /// Where `queue.json` lives. Default `./state`.
    pub state_dir: Option<PathBuf>,
    pub confirmation_timeout_ms: Option<u64>,
    pub wake_timeout_ms: Option<u64>,
    pub wake_retry_delays_ms: Option<Vec<u64>>,
    pub ping_interval_ms: Option<u64>,
    pub pong_timeout_ms: Option<u64>,
    pub reconnect_base_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    /// Safety-net rescan of the results dir, in case a file event was missed.
    pub rescan_interval_ms: Option<u64>,
    /// How long a wake's process group gets after SIGTERM before SIGKILL.
    pub kill_timeout_ms: Option<u64>,
    /// Largest result file; a bigger one fails the task with `result_too_large`.
    pub max_result_bytes: Option<u64>,
    /// Largest `.progress` line; longer lines are skipped.
    pub max_progress_bytes: Option<u64>,
    /// A connection must stay up this long before the reconnect backoff starts again from the base.
    pub reconnect_healthy_ms: Option<u64>,
    // AgentCom fields we accept and do not need.
    pub hub_api_url: Option<String>,
    pub log_file: Option<String>,
    pub repo_dir: Option<PathBuf>,
    pub name: Option<String>,
    /// `"repo_dir"` (the default: every task runs in `repo_dir`) or `"worktree"` (each task in
    /// a worktree and branch of its own); the rest are the worktree settings.
    pub workspace: Option<String>,
    pub worktrees_dir: Option<PathBuf>,
    pub branch_prefix: Option<String>,
    pub base_branch: Option<String>,
    pub push_remote: Option<String>,
    pub setup_command: Option<String>,
    pub setup_timeout_ms: Option<u64>,
    pub commit_author: Option<String>,
    pub keep_failed_worktrees_h: Option<u64>,
    pub max_worktrees: Option<u64>,
    pub max_commit_file_bytes: Option<u64>,
    pub max_patch_bytes: Option<u64>,
    pub git_timeout_ms: Option<u64>,
    /// The model provider account this agent shares with others (a limit on one is a limit on
    /// all of them); sent to the hub when it identifies.
    pub account: Option<String>,
}

/// `hub_url` as written: one URL, or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a ws:// or wss:// URL, or a list of them")]
pub enum HubUrls {
    One(String),
    Many(Vec<String>),
}

impl From<String> for HubUrls {
    fn from(url: String) -> HubUrls {
        HubUrls::One(url)
    }
}

/// The most hubs `hub_url` may list.
pub const MAX_HUB_URLS: usize = 16;

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub agent_id: String,
    pub name: Option<String>,
    pub token: String,
    /// The hubs, in the order they are tried (at least one); the token is only ever sent to these.
    pub hub_urls: Vec<String>,
    /// Set for a `wss://` hub.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub capabilities: Vec<String>,
    /// Compiled once here: placeholders are environment references ([`WakeCommand`]).
    pub wake_command: Option<WakeCommand>,
    pub results_dir: PathBuf,
    pub state_dir: PathBuf,
    pub repo_dir: Option<PathBuf>,
    /// Where each task runs (`workspace`).
    pub workspace: crate::workspace::Mode,
    pub confirmation_timeout: Duration,
    pub wake_timeout: Duration,
    pub wake_retry_delays: Vec<Duration>,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    pub rescan_interval: Duration,
    pub kill_timeout: Duration,
    pub max_result_bytes: usize,
    pub max_progress_bytes: usize,
    pub reconnect_healthy: Duration,
    pub account: Option<String>,
}

/// Default [`SidecarConfig::max_result_bytes`]: 768 KiB, safely below the hub's frame limit.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 768 * 1024;
/// The most `max_result_bytes` and `max_progress_bytes` may be: a frame carrying that much
/// still fits the hub's limit ([`proto::MAX_FRAME_BYTES`]) with room for its envelope.
pub const MAX_PAYLOAD_BYTES: usize = proto::MAX_FRAME_BYTES - 64 * 1024;
/// The longest any timing may be (30 days): time arithmetic never overflows.
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
#[error("invalid sidecar configuration {file}:\n  - {}", .errors.join("\n  - "))]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<String>,
}

/// AgentCom `config.json` keys that are ours too; others are ignored with a warning, as
/// v1 files carry keys for features we do not have.
const JSON_KEYS: &[&str] = &[
    "agent_id",
    "token",
    "hub_url",
    "tls_ca_file",
    "capabilities",
    "wake_command",
    "results_dir",
    "state_dir",
    "confirmation_timeout_ms",
    "wake_timeout_ms",
    "wake_retry_delays_ms",
    "ping_interval_ms",
    "pong_timeout_ms",
    "reconnect_base_ms",
    "reconnect_max_ms",
    "rescan_interval_ms",
    "kill_timeout_ms",
    "max_result_bytes",
    "max_progress_bytes",
    "reconnect_healthy_ms",
    "hub_api_url",
    "log_file",
    "repo_dir",
    "name",
    "workspace",
    "account",
    "worktrees_dir",
    "branch_prefix",
    "base_branch",
    "push_remote",
    "setup_command",
    "setup_timeout_ms",
    "commit_author",
    "keep_failed_worktrees_h",
    "max_worktrees",
    "max_commit_file_bytes",
    "max_patch_bytes",
    "git_timeout_ms",
];

impl SidecarConfig {
    pub fn load(path: &Path) -> Result<SidecarConfig, ConfigErrors> {
        let shown = path.display().to_string();
        let fail = |e: String| ConfigErrors { file: shown.clone(), errors: vec![e] };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        let file: FileConfig = if is_json {
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
            let Some(obj) = v.as_object_mut() else {
                return Err(fail("must be a JSON object".into()));
            };
            let unknown: Vec<String> = obj.keys().filter(|k| !JSON_KEYS.contains(&k.as_str())).cloned().collect();
            for k in unknown {
                tracing::warn!(key = %k, file = %shown, "ignoring an AgentCom config key agentcom does not use");
                obj.remove(&k);
            }
            // Field by field, so that every type error names its key.
            let errors: Vec<String> = obj
                .iter()
                .filter_map(|(k, x)| {
                    let one = serde_json::Value::Object([(k.clone(), x.clone())].into_iter().collect());
                    serde_json::from_value::<FileConfig>(one).err().map(|e| format!("{k}: {e}"))
                })
                .collect();
            if !errors.is_empty() {
                return Err(ConfigErrors { file: shown, errors });
            }
            serde_json::from_value(v).map_err(|e| fail(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| fail(e.to_string().trim_end().replace('\n', "\n    ")))?
        };
        // The folder of the file, absolute: a bare `sidecar.toml` has an empty parent, and every
        // path handed to the agent (which runs in `repo_dir`, not here) must be absolute.
        let absolute = std::path::absolute(path).map_err(|e| fail(format!("cannot resolve its path: {e}")))?;
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        SidecarConfig::from_file(file, &base).map_err(|errors| ConfigErrors { file: shown, errors })
    }

    pub fn from_file(f: FileConfig, base: &Path) -> Result<SidecarConfig, Vec<String>> {
        let mut errors = Vec::new();
        let required = |name: &str, v: Option<String>, max: usize, errors: &mut Vec<String>| match v {
            Some(s) if s.is_empty() => {
                errors.push(format!("{name}: must not be empty"));
                String::new()
            }
            Some(s) if s.chars().count() > max => {
                errors.push(format!("{name}: longer than {max} characters"));
                String::new()
            }
            Some(s) => s,
            None => {
                errors.push(format!("{name}: required"));
                String::new()
            }
        };
        let agent_id = required("agent_id", f.agent_id, proto::MAX_AGENT_ID, &mut errors);
        let token = required("token", f.token, proto::MAX_TOKEN, &mut errors);
        let hub_urls = hub_urls(f.hub_url, &mut errors);
        let ms = |name: &str, v: Option<u64>, def: u64, errors: &mut Vec<String>| {
            match v {
                Some(0) => errors.push(format!("{name}: must be greater than 0")),
                Some(v) if v > MAX_MS => errors.push(format!("{name}: must be at most {MAX_MS} (30 days)")),
                _ => {}
            }
            Duration::from_millis(v.unwrap_or(def).min(MAX_MS))
        };
        let bytes = |name: &str, v: Option<u64>, def: usize, errors: &mut Vec<String>| match v {
            None => def,
            Some(v) if v == 0 || v > MAX_PAYLOAD_BYTES as u64 => {
                errors.push(format!(
                    "{name}: must be 1 to {MAX_PAYLOAD_BYTES} (the hub refuses frames over {} bytes)",
                    proto::MAX_FRAME_BYTES
                ));
                def
            }
            Some(v) => v as usize,
        };
        let max_result_bytes = bytes("max_result_bytes", f.max_result_bytes, DEFAULT_MAX_RESULT_BYTES, &mut errors);
        let max_progress_bytes = bytes("max_progress_bytes", f.max_progress_bytes, 64 * 1024, &mut errors);
        let reconnect_healthy = ms("reconnect_healthy_ms", f.reconnect_healthy_ms, 30_000, &mut errors);
        let confirmation_timeout = ms("confirmation_timeout_ms", f.confirmation_timeout_ms, 30_000, &mut errors);
        let wake_timeout = ms("wake_timeout_ms", f.wake_timeout_ms, 60_000, &mut errors);
        let ping_interval = ms("ping_interval_ms", f.ping_interval_ms, 30_000, &mut errors);
        let pong_timeout = ms("pong_timeout_ms", f.pong_timeout_ms, 10_000, &mut errors);
        let reconnect_base = ms("reconnect_base_ms", f.reconnect_base_ms, 1_000, &mut errors);
        let reconnect_max = ms("reconnect_max_ms", f.reconnect_max_ms, 60_000, &mut errors);
        let rescan_interval = ms("rescan_interval_ms", f.rescan_interval_ms, 2_000, &mut errors);
        let kill_timeout = ms("kill_timeout_ms", f.kill_timeout_ms, 2_000, &mut errors);
        if reconnect_max < reconnect_base {
            errors.push("reconnect_max_ms: must not be below reconnect_base_ms".into());
        }
        let delays = f.wake_retry_delays_ms.unwrap_or_else(|| vec![5_000, 15_000, 30_000]);
        if delays.len() > 100 {
            errors.push("wake_retry_delays_ms: at most 100 retries".into());
        }
        if delays.iter().any(|d| *d > MAX_MS) {
            errors.push(format!("wake_retry_delays_ms: each must be at most {MAX_MS} (30 days)"));
        }
        let wake_retry_delays: Vec<Duration> =
            delays.into_iter().take(100).map(|d| Duration::from_millis(d.min(MAX_MS))).collect();
        let capabilities = f.capabilities.unwrap_or_default();
        if capabilities.len() > 256 {
            errors.push("capabilities: at most 256".into());
        }
        for (i, c) in capabilities.iter().enumerate() {
            if c.is_empty() || c.len() > proto::MAX_SHORT {
                errors.push(format!("capabilities[{i}]: must be 1 to {} characters", proto::MAX_SHORT));
            }
        }
        let wake_command = match f.wake_command.filter(|w| !w.trim().is_empty()) {
            None => None,
            // `sh -c <script>`: the script is one argv string, under Linux's limit for one.
            Some(w) if w.len() > crate::wake::MAX_ENV_STRING / 2 => {
                errors.push(format!("wake_command: longer than {} bytes", crate::wake::MAX_ENV_STRING / 2));
                None
            }
            Some(w) => match WakeCommand::compile(&w) {
                Ok(c) => Some(c),
                Err(es) => {
                    errors.extend(es.into_iter().map(|e| format!("wake_command: {e}")));
                    None
                }
            },
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let results_dir = resolve(f.results_dir.unwrap_or_else(|| PathBuf::from("results")));
        let state_dir = resolve(f.state_dir.unwrap_or_else(|| PathBuf::from("state")));
        if results_dir == state_dir {
            errors.push("state_dir: must differ from results_dir".into());
        }
        let repo_dir = f.repo_dir.map(resolve);
        let fields = crate::workspace::WorkspaceFields {
            workspace: f.workspace,
            worktrees_dir: f.worktrees_dir,
            branch_prefix: f.branch_prefix,
            base_branch: f.base_branch,
            push_remote: f.push_remote,
            setup_command: f.setup_command,
            setup_timeout_ms: f.setup_timeout_ms,
            commit_author: f.commit_author,
            keep_failed_worktrees_h: f.keep_failed_worktrees_h,
            max_worktrees: f.max_worktrees,
            max_commit_file_bytes: f.max_commit_file_bytes,
            max_patch_bytes: f.max_patch_bytes,
            git_timeout_ms: f.git_timeout_ms,
        };
        let workspace = fields.check(repo_dir.as_ref(), &state_dir, base, &mut errors);
        if let Some(Err(e)) = f.account.as_deref().map(proto::api::check_agent_id) {
            errors.push(e.replacen("agent_id", "account", 1));
        }
        let tls = if hub_urls.iter().any(|u| u.starts_with("wss://")) {
            osutil::tls::client_config(f.tls_ca_file.map(resolve).as_deref())
                .map_err(|e| errors.push(format!("tls_ca_file: {e}")))
                .ok()
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SidecarConfig {
            agent_id,
            name: f.name,
            token,
            hub_urls,
            tls,
            capabilities,
            wake_command,
            results_dir,
            state_dir,
            repo_dir,
            workspace,
            account: f.account,
            confirmation_timeout,
            wake_timeout,
            wake_retry_delays,
            ping_interval,
            pong_timeout,
            reconnect_base,
            reconnect_max,
            rescan_interval,
            kill_timeout,
            max_result_bytes,
            max_progress_bytes,
            reconnect_healthy,
        })
    }
}

/// Checks `hub_url`: each a `ws://` or `wss://` URL with a host, no hub twice.
fn hub_urls(v: Option<HubUrls>, errors: &mut Vec<String>) -> Vec<String> {
    let (named, list): (Vec<String>, Vec<String>) = match v {
        None => {
            errors.push("hub_url: required".into());
            return Vec::new();
        }
        Some(HubUrls::One(u)) => (vec!["hub_url".into()], vec![u]),
        Some(HubUrls::Many(list)) => {
            if list.is_empty() {
                errors.push("hub_url: must list at least one URL".into());
            }
            if list.len() > MAX_HUB_URLS {
                errors.push(format!("hub_url: at most {MAX_HUB_URLS} URLs"));
            }
            ((0..list.len()).map(|i| format!("hub_url[{i}]")).collect(), list)
        }
    };
    let mut seen: Vec<(url::Url, &str)> = Vec::new();
    for (name, u) in named.iter().zip(&list).take(MAX_HUB_URLS) {
        let shown = crate::machine::clip(u, 200);
        if u.is_empty() {
            errors.push(format!("{name}: must not be empty"));
        } else if u.len() > 2048 {
            errors.push(format!("{name}: longer than 2048 characters"));
        } else if !(u.starts_with("ws://") || u.starts_with("wss://")) {
            errors.push(format!("{name}: {shown:?} must start with ws:// or wss://"));
        } else {
            match url::Url::parse(u) {
                Err(e) => errors.push(format!("{name}: {shown:?} is not a valid URL: {e}")),
                Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                    errors.push(format!("{name}: {shown:?} names no host"))
                }
                Ok(parsed) => match seen.iter().find(|(other, _)| *other == parsed) {
                    Some((_, first)) => errors.push(format!("{name}: the same hub as {first}")),
                    None => seen.push((parsed, name)),
                },
            }
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn agentcom_json_is_accepted_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "config.json",
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h:4000/ws","capabilities":["rust"],
                "results_dir":"./out","log_file":"x.log","some_v1_key":true}"#,
        );
        let c = SidecarConfig::load(&p).unwrap();
        assert_eq!(c.results_dir, dir.path().join("./out"));
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.confirmation_timeout, Duration::from_secs(30));
        assert_eq!(c.wake_retry_delays.len(), 3);
    }

    #[test]
    fn every_error_is_listed_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s.toml", "hub_url = \"http://x\"\nwake_timeout_ms = 0\ncapabilities = [\"\"]\n");
        let e = SidecarConfig::load(&p).unwrap_err();
        let all = e.errors.join("|");
        for f in ["agent_id: required", "token: required", "hub_url:", "wake_timeout_ms:", "capabilities[0]:"] {
            assert!(all.contains(f), "{f} missing in {all}");
        }
    }

    #[test]
    fn hub_url_may_list_several_hubs_in_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.toml",
            "agent_id = \"a\"\ntoken = \"t\"\nhub_url = [\"ws://hub1.lan:4000/ws\", \"wss://hub2.lan/ws\"]\n",
        );
        let c = SidecarConfig::load(&p).unwrap();
        assert_eq!(c.hub_urls, ["ws://hub1.lan:4000/ws", "wss://hub2.lan/ws"]);
        assert!(c.tls.is_some(), "one wss:// hub is enough to need TLS");
        let p = write(dir.path(), "s.toml", "agent_id = \"a\"\ntoken = \"t\"\nhub_url = \"ws://h/ws\"\n");
        let c = SidecarConfig::load(&p).unwrap();
        assert_eq!((c.hub_urls.len(), c.tls.is_none()), (1, true));
        for hub_url in [r#""ws://h/ws""#, r#"["ws://h1/ws","ws://h2/ws"]"#] {
            let p = write(dir.path(), "config.json", &format!(r#"{{"agent_id":"a","token":"t","hub_url":{hub_url}}}"#));
            assert!(SidecarConfig::load(&p).is_ok(), "{hub_url}");
        }
    }

    #[test]
    fn every_bad_hub_url_is_named_by_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.toml",
            "agent_id = \"a\"\ntoken = \"t\"\nhub_url = [\"ws://h1:4000/ws\", \"http://h2/ws\", \"ws://H1:4000/ws\", \"\", \"ws://exa mple/ws\"]\n",
        );
        let e = SidecarConfig::load(&p).unwrap_err().errors;
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("hub_url[1]: \"http://h2/ws\" must start with ws:// or wss://"), "{e:?}");
        assert_eq!(e[1], "hub_url[2]: the same hub as hub_url[0]");
        assert_eq!(e[2], "hub_url[3]: must not be empty");
        assert!(e[3].starts_with("hub_url[4]: \"ws://exa mple/ws\" is not a valid URL"), "{e:?}");
        let p = write(dir.path(), "s.toml", "agent_id = \"a\"\ntoken = \"t\"\nhub_url = []\n");
        assert_eq!(SidecarConfig::load(&p).unwrap_err().errors, ["hub_url: must list at least one URL"]);
        let many: Vec<String> = (0..17).map(|i| format!("\"ws://h{i}/ws\"")).collect();
        let p =
            write(dir.path(), "s.toml", &format!("agent_id = \"a\"\ntoken = \"t\"\nhub_url = [{}]\n", many.join(",")));
        assert_eq!(SidecarConfig::load(&p).unwrap_err().errors, ["hub_url: at most 16 URLs"]);
        let p = write(dir.path(), "s.toml", "agent_id = \"a\"\ntoken = \"t\"\nhub_url = 5\n");
        let e = SidecarConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("hub_url") && e.contains("a ws:// or wss:// URL, or a list of them"), "{e}");
        let p = write(dir.path(), "config.json", r#"{"agent_id":"a","token":"t","hub_url":[1]}"#);
        let e = SidecarConfig::load(&p).unwrap_err().errors;
        assert!(e[0].starts_with("hub_url: ") && e[0].contains("a list of them"), "{e:?}");
    }

    #[test]
    fn unknown_toml_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s.toml", "agent_id = \"a\"\nwake_comand = \"x\"\n");
        let e = SidecarConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("wake_comand") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn an_unsafe_wake_command_is_listed_with_the_other_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.toml",
            "agent_id = \"a\"\ntoken = \"t\"\nhub_url = \"ws://h/ws\"\nwake_command = \"echo $(cat ${TASK_ID})\"\nmax_result_bytes = 2000000\n",
        );
        let e = SidecarConfig::load(&p).unwrap_err().errors.join("|");
        assert!(e.contains("wake_command: line 1, column 12: ${TASK_ID} is inside $(...)"), "{e}");
        assert!(e.contains("max_result_bytes: must be 1 to"), "{e}");
    }

    #[test]
    fn json_type_errors_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "config.json",
            r#"{"agent_id":"a","token":7,"ping_interval_ms":"soon","capabilities":"x"}"#,
        );
        let e = SidecarConfig::load(&p).unwrap_err().errors;
        for key in ["token:", "ping_interval_ms:", "capabilities:"] {
            assert!(e.iter().any(|x| x.starts_with(key)), "{key} in {e:?}");
        }
        let p = write(dir.path(), "config.json", "[1, 2]");
        assert!(SidecarConfig::load(&p).unwrap_err().errors[0].contains("JSON object"));
    }

    /// Keys and a value of each kind, to build configs from.
    const KEYS: &[&str] = &[
        "agent_id",
        "token",
        "hub_url",
        "capabilities",
        "wake_command",
        "results_dir",
        "state_dir",
        "confirmation_timeout_ms",
        "wake_timeout_ms",
        "wake_retry_delays_ms",
        "ping_interval_ms",
        "max_result_bytes",
        "max_progress_bytes",
        "reconnect_healthy_ms",
        "kill_timeout_ms",
        "repo_dir",
    ];

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::json;
        prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(|s| json!(s)),
            prop::collection::vec(any::<u32>(), 0..4).prop_map(|v| json!(v)),
            prop::collection::vec("[a-z]{0,4}", 0..4).prop_map(|v| json!(v)),
            Just(json!({"nested": [1, "x"]})),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 10_000, failure_persistence: None, ..Default::default() })]

        /// Any JSON object over the known keys (and others): loading never panics, and every
        /// error names a field.
        #[test]
        fn json_configs_never_panic_and_errors_name_fields(
            fields in proptest::collection::vec((proptest::sample::select(KEYS), json_value()), 0..8),
            extra in "[a-z_]{1,8}",
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in &fields {
                obj.insert(k.to_string(), v.clone());
            }
            obj.insert(extra, serde_json::json!(1));
            let (_dir, p) = scratch("config.json");
            std::fs::write(&p, serde_json::to_vec(&obj).unwrap()).unwrap();
            if let Err(e) = SidecarConfig::load(&p) {
                for err in &e.errors {
                    let named = KEYS.iter().chain(["tls_ca_file", "hub_api_url", "name", "log_file"].iter())
                        .any(|k| err.starts_with(*k));
                    proptest::prop_assert!(named, "unnamed error {err:?} for {obj:?}");
                }
            }
        }

        /// Any text as a TOML file: never panics; a config with one ill-typed key names it.
        #[test]
        fn toml_configs_never_panic_and_errors_name_fields(
            text in "\\PC{0,80}",
            key in proptest::sample::select(&KEYS[7..]),
        ) {
            let (_dir, p) = scratch("s.toml");
            std::fs::write(&p, &text).unwrap();
            let _ = SidecarConfig::load(&p);
            let bad = format!("agent_id = \"a\"\ntoken = \"t\"\nhub_url = \"ws://h/ws\"\n{key} = {{ x = 1 }}\n");
            std::fs::write(&p, &bad).unwrap();
            let e = SidecarConfig::load(&p).unwrap_err().to_string();
            proptest::prop_assert!(e.contains(key), "{key} not named in {e}");
        }
    }

    /// A file in a temp dir of its own, removed with it (a static dir is never dropped).
    fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        (dir, path)
    }
}
