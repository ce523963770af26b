//! The watcher: applies at start, then on every (debounced) change below the root, and fully
//! every `full_every` because file watchers can miss events.

use crate::{apply, canonical_root, DaemonsError, Options};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supervisor::backend::Backend;
use tokio_util::sync::CancellationToken;

/// Whether a path is something the watcher ignores: generated files, dot-files, editor temps.
pub fn ignored(root: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let comps: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if comps.iter().any(|c| c == "dist" || c == "node_modules" || c.starts_with('.')) {
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
    pub apply: Options,
}

fn apply_logged(root: &Path, backend: &Backend, opts: &Options) {
    match apply(root, backend, opts) {
        Ok(items) => {
            let counts = items.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, a| {
                *m.entry(a.item.action.as_str()).or_default() += 1;
                m
            });
            for w in items.iter().flat_map(|a| &a.item.warnings) {
                tracing::warn!(warning = %w, "definition key ignored");
            }
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
    let apply_opts = std::sync::Arc::new(opts.apply);
    let run = |root: PathBuf, backend: std::sync::Arc<Backend>, o: std::sync::Arc<Options>| async move {
        let _ = tokio::task::spawn_blocking(move || apply_logged(&root, &backend, &o)).await;
    };
    run(root.clone(), backend.clone(), apply_opts.clone()).await;
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
                run(root.clone(), backend.clone(), apply_opts.clone()).await;
            }
            _ = full.tick() => run(root.clone(), backend.clone(), apply_opts.clone()).await,
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
        assert!(ignored(r, Path::new("/r/a/node_modules/x/ecosystem.config.js")));
        assert!(!ignored(r, Path::new("/r/a/daemon.toml")));
        assert!(!ignored(r, Path::new("/r/a")));
    }
}
