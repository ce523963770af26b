//! pm2's `watch` in the native supervisor: one inotify watcher for every watched path of every
//! process. Its callback (on notify's thread) only marks a process as changed, once until the
//! table has handled it, so a burst of events (a `git checkout`, an `rm -rf`) is one event for
//! the table, and the table restarts the process `watch_delay_ms` after the first change.

use super::shell::Ev;
use super::table::Input;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use proto::control::ProcSpec;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

struct Route {
    roots: Vec<PathBuf>,
    ignore: GlobSet,
}

#[derive(Default)]
struct Routes {
    by_proc: HashMap<String, Route>,
    /// Processes with a change the table has not handled yet.
    pending: HashSet<String>,
}

fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("ignore_watch: {pattern:?} is not a glob: {e}"))
}

/// The globs of `ignore_watch`: without a `/` a pattern matches any path component (and what
/// is below it), with one it is a path below the process's `cwd` (or an absolute path).
pub fn ignore_set(spec: &ProcSpec) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    let base = spec.cwd.clone().or_else(|| spec.watch.first().cloned()).unwrap_or_else(|| "/".into());
    for p in &spec.ignore_watch {
        let p = p.trim_end_matches('/');
        let full = if !p.contains('/') {
            format!("**/{p}")
        } else if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), p.trim_start_matches("./"))
        };
        b.add(glob(&full)?);
        b.add(glob(&format!("{full}/**"))?);
    }
    b.build().map_err(|e| format!("ignore_watch: {e}"))
}

pub struct Watches {
    routes: Arc<Mutex<Routes>>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeMap<PathBuf, ()>,
    tx: mpsc::Sender<Ev>,
}

impl Watches {
    pub fn new(tx: mpsc::Sender<Ev>) -> Watches {
        Watches { routes: Arc::default(), watcher: None, watched: BTreeMap::new(), tx }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table handled a change of `name`: the next one counts again.
    pub fn handled(&self, name: &str) {
        self.routes().pending.remove(name);
    }

    /// Makes the watched paths those of `specs` (the processes that should be watched now).
    pub fn sync<'a>(&mut self, specs: impl Iterator<Item = &'a ProcSpec>) {
        let mut by_proc = HashMap::new();
        for spec in specs.filter(|s| !s.watch.is_empty()) {
            // Checked when the process was started: a bad glob cannot reach here.
            let ignore = ignore_set(spec).unwrap_or_else(|_| GlobSet::empty());
            by_proc.insert(spec.name.clone(), Route { roots: spec.watch.iter().map(PathBuf::from).collect(), ignore });
        }
        let wanted: BTreeMap<PathBuf, ()> = by_proc.values().flat_map(|r| r.roots.clone()).map(|p| (p, ())).collect();
        {
            let mut routes = self.routes();
            routes.pending.retain(|n| by_proc.contains_key(n));
            routes.by_proc = by_proc;
        }
        if wanted.is_empty() && self.watcher.is_none() {
            return;
        }
        if self.watcher.is_none() {
            match self.new_watcher() {
                Ok(w) => self.watcher = Some(w),
                Err(e) => return tracing::error!(error = %e, "cannot watch files"),
            }
        }
        let Some(w) = self.watcher.as_mut() else { return };
        use notify::Watcher;
        for gone in self.watched.keys().filter(|p| !wanted.contains_key(*p)) {
            let _ = w.unwatch(gone);
        }
        for new in wanted.keys().filter(|p| !self.watched.contains_key(*p)) {
            if let Err(e) = w.watch(new, notify::RecursiveMode::Recursive) {
                tracing::warn!(path = %new.display(), error = %e, "cannot watch a path");
            }
        }
        self.watched = wanted;
    }

    fn new_watcher(&self) -> notify::Result<notify::RecommendedWatcher> {
        let (routes, tx) = (self.routes.clone(), self.tx.clone());
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if ev.kind.is_access() {
                return;
            }
            let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
            for path in &ev.paths {
                let hits: Vec<String> = routes
                    .by_proc
                    .iter()
                    .filter(|(_, r)| r.roots.iter().any(|root| path.starts_with(root)) && !r.ignore.is_match(path))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in hits {
                    if routes.pending.insert(name.clone()) {
                        // Never blocks notify's thread. With one change in flight per process the
                        // channel has room; if it had none, the change is dropped and, no longer
                        // pending, the next one counts.
                        let ev = Ev::Input(Input::Watched { name: name.clone(), path: path.clone() });
                        if tx.try_send(ev).is_err() {
                            routes.pending.remove(&name);
                        }
                    }
                }
            }
        })
    }
}

/// Whether `path` is inside a root and not ignored.
#[cfg(test)]
fn matches(spec: &ProcSpec, path: &std::path::Path) -> bool {
    let ignore = ignore_set(spec).unwrap_or_else(|_| GlobSet::empty());
    spec.watch.iter().any(|r| path.starts_with(r)) && !ignore.is_match(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ignore_watch_matches_components_and_paths_below_cwd() {
        let mut s = ProcSpec::new("w", "x", vec![]);
        s.cwd = Some("/app".into());
        s.watch = vec!["/app".into()];
        s.ignore_watch = vec!["node_modules".into(), "logs/".into(), "./dist/*.map".into(), "*.tmp".into()];
        assert!(matches(&s, Path::new("/app/src/main.js")));
        assert!(!matches(&s, Path::new("/app/node_modules/x/y.js")));
        assert!(!matches(&s, Path::new("/app/packages/a/node_modules")));
        assert!(!matches(&s, Path::new("/app/logs/out.log")));
        assert!(!matches(&s, Path::new("/app/dist/a.map")));
        assert!(matches(&s, Path::new("/app/dist/a.js")));
        assert!(!matches(&s, Path::new("/app/src/x.tmp")));
        assert!(!matches(&s, Path::new("/elsewhere/a.js")));
        s.ignore_watch = vec!["[".into()];
        assert!(ignore_set(&s).is_err());
    }
}
