//! `daemon.toml`: strict parsing with file and line in every error, normalization into a
//! supervisor `ProcSpec`, and the fingerprint that says whether a running process is current.

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
}

fn yes() -> bool {
    true
}

/// One definition found under the root.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The folder below the root, e.g. `services/web`: the daemon's identity.
    pub id: String,
    pub file: PathBuf,
    pub result: Result<Normalized, DefError>,
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

fn line_of(text: &str, offset: usize) -> usize {
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

/// Parses and normalizes one definition.
pub fn load(root: &Path, file: &Path, id: &str) -> Result<Normalized, DefError> {
    let shown = file.display().to_string();
    let err = |line: Option<usize>, message: String| DefError { file: shown.clone(), line, message };
    let text = std::fs::read_to_string(file).map_err(|e| err(None, format!("cannot read: {e}")))?;
    let d: DaemonToml = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        err(line, e.message().trim().to_string())
    })?;
    let folder = file.parent().unwrap_or(root);
    let cwd = match &d.cwd {
        Some(c) if Path::new(c).is_absolute() => c.clone(),
        Some(c) => folder.join(c).display().to_string(),
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
    for reserved in MARKERS {
        if spec.env.contains_key(reserved) {
            return Err(err(line_of_key(&text, "env"), format!("env: {reserved} is set by agentcom")));
        }
    }
    let problems = spec.validate();
    if let Some(p) = problems.first() {
        let key = p.split(':').next().unwrap_or("");
        let line = line_of_key(&text, if key == "name" && d.name.is_none() { "command" } else { key });
        return Err(err(line, problems.join("; ")));
    }
    let fingerprint = fingerprint(&spec, d.enabled);
    spec.env.insert(ENV_HASH.into(), fingerprint.clone());
    spec.env.insert(ENV_ROOT.into(), root.display().to_string());
    spec.env.insert(ENV_SOURCE.into(), shown);
    spec.env.insert(ENV_NAMESPACE.into(), PM2_NAMESPACE.into());
    Ok(Normalized { spec, enabled: d.enabled, fingerprint })
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

/// Every `daemon.toml` below `root`, skipping `dist/` and hidden folders.
pub fn discover(root: &Path) -> Vec<Definition> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if name != "dist" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name == "daemon.toml" && dir != root {
                let id = dir.strip_prefix(root).unwrap_or(&dir).to_string_lossy().replace('\\', "/");
                let result = load(root, &path, &id);
                out.push(Definition { id, file: path, result });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
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
    fn discover_skips_dist_and_hidden() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "a/daemon.toml", "command = \"sleep\"\n");
        write(root.path(), "a/dist/daemon.toml", "command = \"sleep\"\n");
        write(root.path(), ".hidden/daemon.toml", "command = \"sleep\"\n");
        write(root.path(), "b/c/daemon.toml", "command = \"sleep\"\n");
        let ids: Vec<String> = discover(root.path()).into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["a", "b/c"]);
    }
}
