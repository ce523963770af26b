//! `daemon.toml`: strict parsing with file and line in every error, normalization into a
//! supervisor `ProcSpec`, and the fingerprint that says whether a running process is current.
//! The types every kind of definition shares ([`Definition`], [`Normalized`], [`DefError`]).

use proto::control::{ProcSpec, RestartPolicy};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Process names of daemons start with this: our namespace in the native supervisor.
pub const PREFIX: &str = "daemons:";
/// Our namespace in pm2.
pub const PM2_NAMESPACE: &str = "agentcom-daemons";
pub const ENV_HASH: &str = "AGENTCOM_SPEC_HASH";
pub const ENV_ROOT: &str = "AGENTCOM_DAEMON_ROOT";
pub const ENV_SOURCE: &str = "AGENTCOM_DAEMON_SOURCE";
pub const ENV_NAMESPACE: &str = "AGENTCOM_PM2_NAMESPACE";
/// Env vars agentcom sets on every daemon; never part of the fingerprint or a diff.
const MARKERS: [&str; 4] = [ENV_HASH, ENV_ROOT, ENV_SOURCE, ENV_NAMESPACE];

/// The file as written. Unknown keys and wrong types are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonToml {
    pub name: Option<String>,
    /// Cosmetic: left out of the fingerprint.
    pub description: Option<String>,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub restart: Option<RestartPolicy>,
    pub kill_signal: Option<String>,
    pub kill_timeout_ms: Option<u64>,
    pub min_uptime_ms: Option<u64>,
    pub max_restarts: Option<u32>,
    pub restart_backoff_ms: Option<u64>,
    pub restart_backoff_max_ms: Option<u64>,
    pub stop_exit_codes: Option<Vec<i32>>,
    pub health_cmd: Option<String>,
    pub health_interval_ms: Option<u64>,
    pub health_failures: Option<u32>,
    pub max_memory_bytes: Option<u64>,
    pub log_max_bytes: Option<u64>,
    pub log_keep: Option<u32>,
    pub restart_delay_ms: Option<u64>,
    /// Relative paths are below this folder, as `cwd`.
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(default)]
    pub ignore_watch: Vec<String>,
    pub watch_delay_ms: Option<u64>,
    pub instances: Option<u32>,
    pub cron_restart: Option<String>,
    pub time: Option<bool>,
    pub log_date_format: Option<String>,
    pub out_file: Option<String>,
    pub error_file: Option<String>,
    pub log_file: Option<String>,
    #[serde(default)]
    pub tmux: bool,
}

fn yes() -> bool {
    true
}

/// One definition found under the root: a `daemon.toml`, or one app of an ecosystem file.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The daemon's identity: the folder below the root (`services/web`) for a `daemon.toml`,
    /// the folder and the app's name (`services/indexer`) for an app of an ecosystem file, the
    /// file for a file that cannot be read at all.
    pub id: String,
    pub file: PathBuf,
    pub result: Result<Normalized, DefError>,
    /// Keys of the file that are ignored, each with why.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Normalized {
    pub spec: ProcSpec,
    pub enabled: bool,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DefError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::error::Error for DefError {}

impl std::fmt::Display for DefError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The process name for a daemon: `daemons:` + `name`, or the folder path with `/` as `.`.
pub fn process_name(id: &str, name: Option<&str>) -> String {
    format!("{PREFIX}{}", name.map(str::to_string).unwrap_or_else(|| id.replace('/', ".")))
}

pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key = ...` is set, for errors found after parsing.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Reads, parses and normalizes one `daemon.toml`.
pub fn load(root: &Path, file: &Path, id: &str) -> Result<Normalized, DefError> {
    let text = std::fs::read_to_string(file).map_err(|e| DefError {
        file: file.display().to_string(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(root, file, id, &text)
}

/// Parses and normalizes the text of a `daemon.toml` (no IO: the property tests feed it
/// anything).
pub fn parse(root: &Path, file: &Path, id: &str, text: &str) -> Result<Normalized, DefError> {
    let shown = file.display().to_string();
    let err = |line: Option<usize>, message: String| DefError { file: shown.clone(), line, message };
    let text = text.to_string();
    let d: DaemonToml = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        err(line, e.message().trim().to_string())
    })?;
    let folder = file.parent().unwrap_or(root);
    let below = |p: &str| crate::pm2app::absolute(folder, p).display().to_string();
    let cwd = match &d.cwd {
        Some(c) => below(c),
        None => folder.display().to_string(),
    };
    let name = process_name(id, d.name.as_deref());
    let mut spec = ProcSpec::new(&name, &d.command, d.args.clone());
    spec.cwd = Some(cwd);
    spec.env = d.env.clone();
    if let Some(v) = d.restart {
        spec.restart = v;
    }
    if let Some(v) = d.kill_signal.clone() {
        spec.kill_signal = v;
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = d.$f.clone() { spec.$f = v; } )* };
    }
    set!(
        kill_timeout_ms,
        min_uptime_ms,
        max_restarts,
        restart_backoff_ms,
        restart_backoff_max_ms,
        stop_exit_codes,
        health_interval_ms,
        health_failures,
        log_max_bytes,
        log_keep
    );
    spec.health_cmd = d.health_cmd.clone();
    spec.max_memory_bytes = d.max_memory_bytes;
    set!(restart_delay_ms, watch_delay_ms, instances, time);
    spec.watch = d.watch.iter().map(|p| below(p)).collect();
    spec.ignore_watch = d.ignore_watch.clone();
    spec.cron_restart = d.cron_restart.clone();
    spec.log_date_format = d.log_date_format.clone();
    spec.out_file = d.out_file.as_deref().map(below);
    spec.error_file = d.error_file.as_deref().map(below);
    spec.log_file = d.log_file.as_deref().map(below);
    spec.tmux = d.tmux;
    for reserved in MARKERS {
        if spec.env.contains_key(reserved) {
            return Err(err(line_of_key(&text, "env"), format!("env: {reserved} is set by agentcom")));
        }
    }
    let mut problems = spec.validate();
    problems.extend(supervisor::daemon::spec_problems(&spec));
    if let Some(p) = problems.first() {
        let key = p.split(':').next().unwrap_or("");
        let line = line_of_key(&text, if key == "name" && d.name.is_none() { "command" } else { key });
        return Err(err(line, problems.join("; ")));
    }
    Ok(finish(spec, d.enabled, root, &shown))
}

/// Fingerprints a valid spec and marks it as ours (root, source, namespace).
pub fn finish(mut spec: ProcSpec, enabled: bool, root: &Path, source: &str) -> Normalized {
    let fingerprint = fingerprint(&spec, enabled);
    spec.env.insert(ENV_HASH.into(), fingerprint.clone());
    spec.env.insert(ENV_ROOT.into(), root.display().to_string());
    spec.env.insert(ENV_SOURCE.into(), source.to_string());
    spec.env.insert(ENV_NAMESPACE.into(), PM2_NAMESPACE.into());
    Normalized { spec, enabled, fingerprint }
}

/// Whether `env` sets one of the variables agentcom sets itself.
pub fn reserved_env(spec: &ProcSpec) -> Option<&'static str> {
    MARKERS.into_iter().find(|k| spec.env.contains_key(*k))
}

/// SHA-256 over the canonical normalized spec: JSON with sorted keys (serde_json's map is
/// ordered), defaults filled in, cosmetic fields and our own env markers left out.
pub fn fingerprint(spec: &ProcSpec, enabled: bool) -> String {
    let mut s = spec.clone();
    for k in MARKERS {
        s.env.remove(k);
    }
    let mut v = serde_json::to_value(&s).expect("specs serialize");
    v["enabled"] = enabled.into();
    let canonical = serde_json::to_string(&v).expect("json");
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// The fields whose values differ between two specs, for the plan.
pub fn changed_fields(old: &ProcSpec, new: &ProcSpec) -> Vec<String> {
    let strip = |s: &ProcSpec| {
        let mut s = s.clone();
        for k in MARKERS {
            s.env.remove(k);
        }
        serde_json::to_value(s).expect("json")
    };
    let (a, b) = (strip(old), strip(new));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec![] };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn identity_fingerprint_and_cosmetics() {
        let root = tempfile::tempdir().unwrap();
        let f = write(root.path(), "svc/web/daemon.toml", "command = \"sleep\"\nargs = [\"9\"]\ndescription = \"a\"\n");
        let a = load(root.path(), &f, "svc/web").unwrap();
        assert_eq!(a.spec.name, "daemons:svc.web");
        assert_eq!(a.spec.env[ENV_HASH], a.fingerprint);
        std::fs::write(&f, "# comment\ndescription = \"b\"\nargs = [\"9\"]\ncommand = \"sleep\"\n").unwrap();
        let b = load(root.path(), &f, "svc/web").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "order, comments and description are cosmetic");
        std::fs::write(&f, "command = \"sleep\"\nargs = [\"10\"]\n").unwrap();
        let c = load(root.path(), &f, "svc/web").unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(changed_fields(&a.spec, &c.spec), ["args"]);
    }

    #[test]
    fn errors_have_file_and_line() {
        let root = tempfile::tempdir().unwrap();
        let f = write(root.path(), "x/daemon.toml", "command = \"sleep\"\nrestart = \"sometimes\"\n");
        let e = load(root.path(), &f, "x").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let f = write(root.path(), "y/daemon.toml", "command = \"sleep\"\n\ncomand = \"x\"\n");
        let e = load(root.path(), &f, "y").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("comand"), "{e}");
        let f = write(root.path(), "z/daemon.toml", "command = \"sleep\"\nkill_signal = \"SIGNOPE\"\n");
        let e = load(root.path(), &f, "z").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let f = write(root.path(), "w/daemon.toml", "command = 5\n");
        assert_eq!(load(root.path(), &f, "w").unwrap_err().line, Some(1));
    }

    #[test]
    fn supervisor_keys_resolve_below_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let f = write(
            root.path(),
            "svc/daemon.toml",
            "command = \"sleep\"\nwatch = [\"src\"]\nignore_watch = [\"*.tmp\"]\ninstances = 2\ncron_restart = \"0 3 * * *\"\nout_file = \"logs/out.log\"\ntmux = true\n",
        );
        let n = load(root.path(), &f, "svc").unwrap();
        let dir = root.path().join("svc").display().to_string();
        assert_eq!(n.spec.watch, [format!("{dir}/src")]);
        assert_eq!(n.spec.out_file, Some(format!("{dir}/logs/out.log")));
        assert_eq!((n.spec.instances, n.spec.tmux), (2, true));
        let f = write(root.path(), "bad/daemon.toml", "command = \"sleep\"\n\ncron_restart = \"every day\"\n");
        let e = load(root.path(), &f, "bad").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.starts_with("cron_restart: \"every day\" is not a cron schedule"), "{e}");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn keys() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("command".to_string()),
                Just("args".to_string()),
                Just("restart".to_string()),
                Just("kill_timeout_ms".to_string()),
                Just("instances".to_string()),
                Just("watch".to_string()),
                Just("cron_restart".to_string()),
                Just("env".to_string()),
                Just("kill_signal".to_string()),
                "[a-z_]{1,12}",
            ]
        }

        fn values() -> impl Strategy<Value = String> {
            prop_oneof![
                "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "/")),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("true".to_string()),
                Just("[\"a\", 1]".to_string()),
                Just("{ A = \"1\" }".to_string()),
                "[ -~]{0,12}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Any text: a definition or an error that names the file, with a line inside the text
            /// when it has one; never a panic.
            #[test]
            fn any_daemon_toml_parses_or_names_file_and_line(text in "\\PC{0,160}") {
                let file = Path::new("/defs/svc/daemon.toml");
                if let Err(e) = parse(Path::new("/defs"), file, "svc", &text) {
                    prop_assert_eq!(&e.file, "/defs/svc/daemon.toml");
                    if let Some(l) = e.line {
                        prop_assert!(l >= 1 && l <= text.matches('\n').count() + 1, "{} for {:?}", e, text);
                    }
                }
            }

            /// Key = value lines shaped like real definitions: errors carry a line.
            #[test]
            fn toml_shaped_definitions_name_the_line(pairs in proptest::collection::vec((keys(), values()), 0..8)) {
                let text: String = pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                let file = Path::new("/defs/svc/daemon.toml");
                match parse(Path::new("/defs"), file, "svc", &text) {
                    Ok(n) => prop_assert!(n.spec.validate().is_empty()),
                    Err(e) => {
                        prop_assert_eq!(&e.file, "/defs/svc/daemon.toml");
                        prop_assert!(e.line.is_some() || e.message.contains("missing field"), "{} for {:?}", e, text);
                    }
                }
            }
        }
    }
}
