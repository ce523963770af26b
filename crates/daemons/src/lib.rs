//! agentcom daemons: a folder tree of `daemon.toml` files is the source of truth for what the
//! supervisor (native or pm2) runs. [`plan`] compares each definition's fingerprint with the
//! `AGENTCOM_SPEC_HASH` the running process carries; [`apply`] starts, recreates and prunes only
//! what differs; [`watch`] applies on every change, with a periodic full reconcile.

pub mod spec;

use proto::control::{ProcSpec, ProcStatus};
use serde::Serialize;
use spec::{Definition, Normalized};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use supervisor::backend::{Backend, BackendError, Kind};
use tokio_util::sync::CancellationToken;

pub use spec::{discover, PREFIX};

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

pub struct Options {
    pub prune: bool,
}

/// The last good spec of a definition, written by `apply` into `<folder>/dist/daemon.lock.json`.
fn read_lock(def_file: &Path) -> Option<(ProcSpec, String)> {
    let p = def_file.parent()?.join("dist").join("daemon.lock.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    Some((serde_json::from_value(v["spec"].clone()).ok()?, v["fingerprint"].as_str()?.to_string()))
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
        spec: None,
        source: Some(def.file.clone()),
        fingerprint: None,
    }
}

/// What `apply` would do, compared with what really runs (not with a cache).
pub fn plan(root: &Path, backend: &Backend, opts: &Options) -> Result<Vec<PlanItem>, DaemonsError> {
    let root = canonical_root(root)?;
    let defs = discover(&root);
    let running = backend.list()?;
    let ours = ours(&running, &root);
    let mut items = Vec::new();
    let mut claimed: HashSet<String> = HashSet::new();
    for def in &defs {
        match &def.result {
            Err(e) => {
                // Keep the last good version running: protect its process from the prune.
                let process =
                    read_lock(&def.file).map(|(s, _)| s.name).unwrap_or_else(|| spec::process_name(&def.id, None));
                claimed.insert(process.clone());
                let mut it = item(def, process, Action::Error);
                it.line = e.line;
                it.message = Some(e.message.clone());
                items.push(it);
            }
            Ok(n) => {
                let name = n.spec.name.clone();
                if !claimed.insert(name.clone()) {
                    let mut it = item(def, name.clone(), Action::Error);
                    it.message = Some(format!("process name {name} is already used by another definition"));
                    items.push(it);
                    continue;
                }
                items.push(plan_one(def, n, ours.get(name.as_str()).copied()));
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
                spec: None,
                source: None,
                fingerprint: None,
            });
        }
    }
    Ok(items)
}

fn plan_one(def: &Definition, n: &Normalized, running: Option<&ProcStatus>) -> PlanItem {
    let name = n.spec.name.clone();
    let mut it = item(def, name, Action::Unchanged);
    it.spec = Some(n.spec.clone());
    it.fingerprint = Some(n.fingerprint.clone());
    match running {
        _ if !n.enabled => {
            if running.is_some() {
                it.action = Action::StopAndDelete;
                it.changed = vec!["enabled = false".into()];
            }
        }
        None => it.action = Action::Start,
        Some(p) if p.spec_hash.as_deref() == Some(n.fingerprint.as_str()) => {
            if !matches!(p.status.as_str(), "online" | "launching" | "waiting-restart") {
                it.action = Action::Start;
                it.changed = vec![format!("was {}", p.status)];
            }
        }
        Some(_) => {
            it.action = Action::Recreate;
            it.changed = match read_lock(&def.file) {
                Some((old, _)) => spec::changed_fields(&old, &n.spec),
                None => vec!["spec".into()],
            };
            if it.changed.is_empty() {
                it.changed = vec!["spec".into()];
            }
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
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let result: Result<(), String> = (|| {
            if let (Some(spec), Some(src), Some(fp)) = (&it.spec, &it.source, &it.fingerprint) {
                generate(src, spec, fp, backend.kind).map_err(|e| format!("cannot write generated files: {e}"))?;
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

/// Writes `dist/ecosystem.config.cjs` and `dist/daemon.lock.json` beside the definition, each
/// saying it is generated, from which source, when, and not to be edited. Skipped when the lock
/// already holds this fingerprint.
fn generate(source: &Path, spec: &ProcSpec, fingerprint: &str, kind: Kind) -> std::io::Result<()> {
    let dist = source.parent().unwrap_or(Path::new(".")).join("dist");
    if read_lock(source).is_some_and(|(_, fp)| fp == fingerprint) && dist.join("ecosystem.config.cjs").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dist)?;
    let when = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let banner = format!(
        "GENERATED by agentcom from {} at {when}. Do not edit: edit daemon.toml, then `agentcom daemons apply` (or let the watcher) regenerate it.",
        source.display()
    );
    osutil::fs::write_atomic(
        &dist.join("ecosystem.config.cjs"),
        supervisor::pm2::ecosystem_file(spec, &format!("// {banner}")).as_bytes(),
    )?;
    let lock = serde_json::json!({
        "_generated": banner,
        "source": source.display().to_string(),
        "generated_at": when,
        "backend": match kind { Kind::Native => "native", Kind::Pm2 => "pm2" },
        "fingerprint": fingerprint,
        "spec": spec,
    });
    osutil::fs::write_atomic(&dist.join("daemon.lock.json"), &serde_json::to_vec_pretty(&lock).expect("json"))
}

/// Whether a path is something the watcher ignores: generated files, dot-files, editor temps.
pub fn ignored(root: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let comps: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.iter().any(|c| c == "dist" || c.starts_with('.')) {
        return true;
    }
    let name = comps.last().map(String::as_str).unwrap_or("");
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
}

pub struct WatchOptions {
    pub debounce: Duration,
    pub full_every: Duration,
    pub prune: bool,
}

fn apply_logged(root: &Path, backend: &Backend, prune: bool) {
    match apply(root, backend, &Options { prune }) {
        Ok(items) => {
            let counts = items.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, a| {
                *m.entry(a.item.action.as_str()).or_default() += 1;
                m
            });
            tracing::info!(?counts, "reconciled");
        }
        Err(e) => tracing::error!(error = %e, "reconcile failed"),
    }
}

/// Applies now, then on every (debounced) change below `root`, and fully every `full_every`
/// because file watchers can miss events. Renaming a folder is a delete plus a create.
pub async fn watch(
    root: PathBuf,
    backend: Backend,
    opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<(), DaemonsError> {
    use notify::Watcher;
    let root = canonical_root(&root)?;
    let backend = std::sync::Arc::new(backend);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| DaemonsError::Root { path: root.display().to_string(), message: e.to_string() })?;
    watcher
        .watch(&root, notify::RecursiveMode::Recursive)
        .map_err(|e| DaemonsError::Root { path: root.display().to_string(), message: e.to_string() })?;
    tracing::info!(root = %root.display(), debounce_ms = opts.debounce.as_millis() as u64, "watching daemon definitions");
    let run = |root: PathBuf, backend: std::sync::Arc<Backend>, prune: bool| async move {
        let _ = tokio::task::spawn_blocking(move || apply_logged(&root, &backend, prune)).await;
    };
    run(root.clone(), backend.clone(), opts.prune).await;
    let mut full = tokio::time::interval(opts.full_every);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    full.reset();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(p) = rx.recv() => {
                if !ignored(&root, &p) {
                    due = Some(tokio::time::Instant::now() + opts.debounce);
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                due = None;
                run(root.clone(), backend.clone(), opts.prune).await;
            }
            _ = full.tick() => run(root.clone(), backend.clone(), opts.prune).await,
        }
    }
    drop(watcher);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_generated_hidden_and_editor_files() {
        let r = Path::new("/r");
        assert!(ignored(r, Path::new("/r/a/dist/daemon.lock.json")));
        assert!(ignored(r, Path::new("/r/a/.daemon.toml.swp")));
        assert!(ignored(r, Path::new("/r/a/daemon.toml~")));
        assert!(ignored(r, Path::new("/r/a/4913")));
        assert!(ignored(r, Path::new("/r/.git/index")));
        assert!(!ignored(r, Path::new("/r/a/daemon.toml")));
        assert!(!ignored(r, Path::new("/r/a")));
    }
}
