//! agentcom daemons: a folder tree of definitions is the source of truth for what the
//! supervisor (native or pm2) runs: `daemon.toml` files and pm2 ecosystem files (EDN, JS,
//! JSON) with several apps each. [`plan`] compares each definition's fingerprint with the
//! `AGENTCOM_SPEC_HASH` the running process carries; [`apply`] starts, recreates and prunes only
//! what differs; [`watch`] applies on every change, with a periodic full reconcile.

pub mod discover;
pub mod dist;
pub mod ecosystem;
pub mod edn;
pub mod pm2app;
pub mod spec;
mod watcher;

use discover::Context;
use proto::control::{ProcSpec, ProcStatus};
use serde::Serialize;
use spec::{Definition, Normalized};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use supervisor::backend::{Backend, BackendError};

pub use discover::{default_workdir, discover};
pub use spec::PREFIX;
pub use watcher::{ignored, watch, WatchOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Start,
    Recreate,
    Unchanged,
    StopAndDelete,
    Error,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Recreate => "recreate",
            Action::Unchanged => "unchanged",
            Action::StopAndDelete => "stop-and-delete",
            Action::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// The folder below the root (the daemon's identity); for a prune, the process name.
    pub daemon: String,
    pub process: String,
    pub action: Action,
    /// For a recreate: the fields that changed. For a start or prune: why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Keys of the definition that are ignored, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip)]
    spec: Option<ProcSpec>,
    #[serde(skip)]
    source: Option<PathBuf>,
    #[serde(skip)]
    fingerprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonsError {
    #[error("root {path}: {message}")]
    Root { path: String, message: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub prune: bool,
    pub context: Context,
}

fn folder_of(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("."))
}

pub fn canonical_root(root: &Path) -> Result<PathBuf, DaemonsError> {
    std::fs::canonicalize(root)
        .map_err(|e| DaemonsError::Root { path: root.display().to_string(), message: e.to_string() })
}

fn ours<'a>(list: &'a [ProcStatus], root: &Path) -> HashMap<&'a str, &'a ProcStatus> {
    let root = root.display().to_string();
    list.iter()
        .filter(|p| p.name.starts_with(PREFIX) && p.daemon_root.as_deref() == Some(root.as_str()))
        .map(|p| (p.name.as_str(), p))
        .collect()
}

fn item(def: &Definition, process: String, action: Action) -> PlanItem {
    PlanItem {
        daemon: def.id.clone(),
        process,
        action,
        changed: Vec::new(),
        file: Some(def.file.display().to_string()),
        line: None,
        message: None,
        warnings: def.warnings.clone(),
        spec: None,
        source: Some(def.file.clone()),
        fingerprint: None,
    }
}

/// The running processes that belong to a daemon's spec: itself, or its instances.
fn owned<'a>(name: &str, ours: &HashMap<&'a str, &'a ProcStatus>) -> Vec<&'a ProcStatus> {
    let mut v: Vec<&ProcStatus> =
        ours.values().filter(|p| p.name == name || p.instance_of.as_deref() == Some(name)).copied().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// What `apply` would do, compared with what really runs (not with a cache).
pub fn plan(root: &Path, backend: &Backend, opts: &Options) -> Result<Vec<PlanItem>, DaemonsError> {
    let root = canonical_root(root)?;
    let defs = discover(&root, &opts.context);
    let running = backend.list_if_running()?.unwrap_or_default();
    let ours = ours(&running, &root);
    let mut items = Vec::new();
    let mut claimed: HashSet<String> = HashSet::new();
    let claim = |name: &str, claimed: &mut HashSet<String>| {
        claimed.insert(name.to_string());
        for p in owned(name, &ours) {
            claimed.insert(p.name.clone());
        }
    };
    for def in &defs {
        match &def.result {
            Err(e) => {
                // Keep the last good version running: protect its processes from the prune.
                let lock = dist::read_lock(folder_of(&def.file));
                let source = def.file.display().to_string();
                let mut protected: Vec<String> = match discover::claimed_name(def) {
                    Some(n) => vec![n],
                    None => lock.iter().filter(|(_, l)| l.source == source).map(|(n, _)| n.clone()).collect(),
                };
                if protected.is_empty()
                    && def.id == folder_of(&def.file).strip_prefix(&root).unwrap_or(Path::new("")).to_string_lossy()
                {
                    protected.push(spec::process_name(&def.id, None));
                }
                for p in &protected {
                    claim(p, &mut claimed);
                }
                let mut it = item(def, protected.join(", "), Action::Error);
                it.line = e.line;
                it.message = Some(e.message.clone());
                items.push(it);
            }
            Ok(n) => {
                claim(&n.spec.name, &mut claimed);
                items.push(plan_one(def, n, &owned(&n.spec.name, &ours)));
            }
        }
    }
    if opts.prune {
        let mut orphans: Vec<&&ProcStatus> = ours.values().filter(|p| !claimed.contains(&p.name)).collect();
        orphans.sort_by(|a, b| a.name.cmp(&b.name));
        for p in orphans {
            items.push(PlanItem {
                daemon: p.name.trim_start_matches(PREFIX).to_string(),
                process: p.name.clone(),
                action: Action::StopAndDelete,
                changed: vec!["definition removed".into()],
                file: None,
                line: None,
                message: None,
                warnings: Vec::new(),
                spec: None,
                source: None,
                fingerprint: None,
            });
        }
    }
    Ok(items)
}

fn plan_one(def: &Definition, n: &Normalized, running: &[&ProcStatus]) -> PlanItem {
    let mut it = item(def, n.spec.name.clone(), Action::Unchanged);
    it.spec = Some(n.spec.clone());
    it.fingerprint = Some(n.fingerprint.clone());
    let expected: Vec<String> = n.spec.expand_instances().into_iter().map(|s| s.name).collect();
    let names: Vec<&str> = running.iter().map(|p| p.name.as_str()).collect();
    let current = names == expected.iter().map(String::as_str).collect::<Vec<_>>()
        && running.iter().all(|p| p.spec_hash.as_deref() == Some(n.fingerprint.as_str()));
    if !n.enabled {
        if !running.is_empty() {
            it.action = Action::StopAndDelete;
            it.changed = vec!["enabled = false".into()];
        }
    } else if running.is_empty() {
        it.action = Action::Start;
    } else if current {
        let down: Vec<&&ProcStatus> = running
            .iter()
            .filter(|p| !matches!(p.status.as_str(), "online" | "launching" | "waiting-restart"))
            .collect();
        if let Some(p) = down.first() {
            it.action = Action::Start;
            it.changed = vec![format!("was {}", p.status)];
        }
    } else {
        it.action = Action::Recreate;
        it.changed = match dist::read_lock(folder_of(&def.file)).get(&n.spec.name) {
            Some(old) => spec::changed_fields(&old.spec, &n.spec),
            None => vec!["spec".into()],
        };
        if it.changed.is_empty() {
            it.changed = vec!["spec".into()];
        }
    }
    it
}

/// Outcome of one applied item.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    #[serde(flatten)]
    pub item: PlanItem,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Carries the plan out, touching nothing else.
pub fn apply(root: &Path, backend: &Backend, opts: &Options) -> Result<Vec<Applied>, DaemonsError> {
    let items = plan(root, backend, opts)?;
    // The generated files of each folder, for its valid daemons.
    let mut folders: BTreeMap<PathBuf, Vec<(String, String, ProcSpec)>> = BTreeMap::new();
    for it in &items {
        if let (Some(spec), Some(src), Some(fp)) = (&it.spec, &it.source, &it.fingerprint) {
            folders.entry(folder_of(src).to_path_buf()).or_default().push((
                src.display().to_string(),
                fp.clone(),
                spec.clone(),
            ));
        }
    }
    let mut generated: HashMap<PathBuf, Result<(), String>> = HashMap::new();
    for (folder, current) in &folders {
        let r = dist::generate(folder, current, backend.kind).map_err(|e| format!("cannot write generated files: {e}"));
        generated.insert(folder.clone(), r);
    }
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let result: Result<(), String> = (|| {
            if let Some(src) = &it.source {
                if let Some(Err(e)) = generated.get(folder_of(src)) {
                    if it.spec.is_some() {
                        return Err(e.clone());
                    }
                }
            }
            match it.action {
                Action::Start => backend.start(it.spec.as_ref().expect("a start has a spec")).map(drop),
                Action::Recreate => {
                    // Stop, then start with the new spec, so removed env vars are really gone.
                    backend
                        .delete(&it.process)
                        .and_then(|_| backend.start(it.spec.as_ref().expect("a recreate has a spec")))
                        .map(drop)
                }
                Action::StopAndDelete => backend.delete(&it.process).map(drop),
                Action::Unchanged | Action::Error => Ok(()),
            }
            .map_err(|e| e.to_string())
        })();
        if it.action != Action::Unchanged {
            match &result {
                Ok(()) if it.action == Action::Error => tracing::error!(
                    daemon = %it.daemon, file = it.file.as_deref().unwrap_or(""), line = it.line,
                    error = it.message.as_deref().unwrap_or(""), "definition invalid; its last good version keeps running"),
                Ok(()) => {
                    tracing::info!(daemon = %it.daemon, process = %it.process, action = it.action.as_str(), changed = ?it.changed, "applied")
                }
                Err(e) => tracing::error!(daemon = %it.daemon, action = it.action.as_str(), error = %e, "apply failed"),
            }
        }
        out.push(Applied { ok: result.is_ok(), error: result.err(), item: it });
    }
    Ok(out)
}
