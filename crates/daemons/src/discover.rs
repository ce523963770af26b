//! Finding every definition below the root: `daemon.toml` files and the apps of pm2 ecosystem
//! files (EDN, JS, JSON). A process name defined twice is an error naming both files, and
//! neither definition is applied (a running one keeps running).

use crate::ecosystem;
use crate::pm2app::{self, Ctx};
use crate::spec::{self, DefError, Definition, PREFIX};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where relative paths of pm2 definitions resolve, and which `env_<name>` applies.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// pm2 resolves relative paths against the folder it runs from: the workspace root.
    pub workdir: PathBuf,
    pub env_name: Option<String>,
}

/// The default workspace root for the definitions below `root`: the top of the git work tree
/// that holds them, else the current folder.
pub fn default_workdir(root: &Path) -> PathBuf {
    let mut dir = Some(root);
    while let Some(d) = dir {
        if d.join(".git").exists() {
            return d.to_path_buf();
        }
        dir = d.parent();
    }
    std::env::current_dir().unwrap_or_else(|_| root.to_path_buf())
}

fn skipped_dir(name: &str) -> bool {
    name == "dist" || name == "node_modules" || name.starts_with('.')
}

/// Every definition below `root`, sorted by identity, with duplicate process names turned
/// into errors.
pub fn discover(root: &Path, ctx: &Context) -> Vec<Definition> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        let folder = dir.strip_prefix(root).unwrap_or(&dir).to_string_lossy().replace('\\', "/");
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !skipped_dir(&name) {
                    stack.push(path);
                }
            } else if name == "daemon.toml" {
                if dir != root {
                    let result = spec::load(root, &path, &folder);
                    out.push(Definition { id: folder.clone(), file: path, result, warnings: Vec::new() });
                }
            } else if ecosystem::format_of(&name).is_some() {
                out.extend(apps_of(root, &folder, &path, ctx));
            }
        }
    }
    mark_duplicates(&mut out);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn app_id(folder: &str, app: &str) -> String {
    if folder.is_empty() {
        app.to_string()
    } else {
        format!("{folder}/{app}")
    }
}

fn apps_of(root: &Path, folder: &str, file: &Path, ctx: &Context) -> Vec<Definition> {
    let rel = file.strip_prefix(root).unwrap_or(file).to_string_lossy().into_owned();
    let apps = match ecosystem::read(file, &ctx.workdir) {
        Ok(None) => return Vec::new(),
        Ok(Some(apps)) => apps,
        Err(e) => return vec![Definition { id: rel, file: file.to_path_buf(), result: Err(e), warnings: Vec::new() }],
    };
    let pctx = Ctx { file, workdir: &ctx.workdir, env_name: ctx.env_name.as_deref() };
    apps.iter()
        .map(|app| {
            let label = app.fields.get("name").and_then(|n| n.as_str()).map(str::to_string);
            let id = app_id(folder, label.as_deref().unwrap_or(&format!("apps[{}]", app.index)));
            match pm2app::map_app(app, &pctx) {
                Err(e) => Definition { id, file: file.to_path_buf(), result: Err(e), warnings: Vec::new() },
                Ok(m) => {
                    let id = app_id(folder, &m.spec.name);
                    let mut s = m.spec;
                    s.name = format!("{PREFIX}{}", s.name);
                    let result = match (spec::reserved_env(&s), supervisor::daemon::spec_problems(&s).first()) {
                        (Some(k), _) => Err(DefError {
                            file: file.display().to_string(),
                            line: app.lines.get("env").copied().or(app.line),
                            message: format!("env: {k} is set by agentcom"),
                        }),
                        (None, Some(p)) => {
                            let key = p.split(':').next().unwrap_or("");
                            Err(DefError {
                                file: file.display().to_string(),
                                line: app.lines.get(key).copied().or(app.line),
                                message: p.clone(),
                            })
                        }
                        (None, None) => Ok(spec::finish(s, m.enabled, root, &file.display().to_string())),
                    };
                    Definition { id, file: file.to_path_buf(), result, warnings: m.warnings }
                }
            }
        })
        .collect()
}

/// Two definitions of one process name: both become errors naming both files.
fn mark_duplicates(defs: &mut [Definition]) {
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in defs.iter().enumerate() {
        if let Ok(n) = &d.result {
            by_name.entry(n.spec.name.clone()).or_default().push(i);
        }
    }
    for (name, idx) in by_name.into_iter().filter(|(_, v)| v.len() > 1) {
        let files: Vec<String> = idx.iter().map(|i| defs[*i].file.display().to_string()).collect();
        for i in idx {
            let d = &mut defs[i];
            let message = format!(
                "process name {name} is defined more than once, in {}: rename one (neither is applied meanwhile)",
                files.join(" and ")
            );
            d.result = Err(DefError { file: d.file.display().to_string(), line: None, message });
        }
    }
}

/// The process name a definition stands for even when it is an error (to protect it from a
/// prune), when one can be told.
pub fn claimed_name(d: &Definition) -> Option<String> {
    match &d.result {
        Ok(n) => Some(n.spec.name.clone()),
        Err(e) if e.message.starts_with("process name ") => e.message.split(' ').nth(2).map(str::to_string),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }

    #[test]
    fn a_mixed_tree_with_a_duplicate_name() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "a/daemon.toml", "command = \"sleep\"\n");
        write(r, "a/dist/daemon.toml", "command = \"sleep\"\n");
        write(r, ".hidden/daemon.toml", "command = \"sleep\"\n");
        write(r, "node_modules/x/ecosystem.config.json", "{\"apps\": []}");
        write(r, "svc/ecosystem.edn", "{:apps [{:name \"one\" :script \"sleep\"} {:name \"two\" :script \"sleep\"}]}");
        write(r, "other/jobs.edn", "{:apps [{:name \"two\" :script \"sleep\"}]}");
        write(r, "other/deps.edn", "{:deps {}}");
        let defs = discover(r, &Context { workdir: r.to_path_buf(), env_name: None });
        let ids: Vec<&str> = defs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "other/two", "svc/one", "svc/two"]);
        let two: Vec<&Definition> = defs.iter().filter(|d| d.id.ends_with("/two")).collect();
        for d in &two {
            let e = d.result.as_ref().unwrap_err();
            assert!(e.message.contains("jobs.edn") && e.message.contains("svc/ecosystem.edn"), "{e}");
            assert_eq!(claimed_name(d).as_deref(), Some("daemons:two"));
        }
        assert_eq!(defs[2].result.as_ref().unwrap().spec.name, "daemons:one");
    }

    #[test]
    fn the_workspace_root_is_the_git_work_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(".git")).unwrap();
        std::fs::create_dir_all(root.path().join("system/daemons")).unwrap();
        assert_eq!(default_workdir(&root.path().join("system/daemons")), root.path());
    }
}
