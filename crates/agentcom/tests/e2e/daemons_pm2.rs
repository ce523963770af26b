//! pm2 ecosystem files as daemon definitions, end to end: a tree of `ecosystem.edn` files with
//! several apps, mixed with a `daemon.toml` and an `ecosystem.config.js`, planned and applied
//! with the native supervisor and with a real pm2; an edit restarts only its app; a duplicate
//! name is reported and touches nothing; `watch` restarts on a change; relative paths resolve
//! against the workspace root as pm2 run from there.

use crate::bin;
use crate::daemons::{daemons_cmd, online, ps_json, wait_pids};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use testkit::Supervised;

type R = anyhow::Result<()>;

/// Fields drop in order: the supervisor (and any watcher it runs) and pm2 stop before the
/// folder they write in is removed, so nothing is left behind in it.
struct Workspace {
    sup: Supervised,
    backend: &'static str,
    _pm2: Option<testkit::Pm2Home>,
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(backend: &'static str) -> anyhow::Result<Workspace> {
        let dir = tempfile::tempdir()?;
        // The top of a git work tree: the default workspace root.
        std::fs::create_dir_all(dir.path().join(".git"))?;
        std::fs::create_dir_all(dir.path().join("system/daemons"))?;
        std::fs::create_dir_all(dir.path().join("work"))?;
        let mut sup = Supervised::new(bin())?;
        let pm2 = if backend == "pm2" { Some(testkit::Pm2Home::new()?) } else { None };
        if let Some(p) = &pm2 {
            p.apply(&mut sup);
        }
        Ok(Workspace { dir, sup, backend, _pm2: pm2 })
    }
    fn top(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }
    fn root(&self) -> PathBuf {
        self.top().join("system/daemons")
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    fn daemons(&self, verb: &str, extra: &[&str]) -> std::process::Output {
        daemons_cmd(&self.sup, self.backend, &self.root(), verb, extra)
    }
    fn plan(&self) -> anyhow::Result<Vec<Value>> {
        let out = self.daemons("plan", &["--json"]);
        serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    }
    fn apply(&self) -> anyhow::Result<String> {
        let out = self.daemons("apply", &[]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "apply failed: {text}");
        Ok(text)
    }
    fn ps(&self) -> anyhow::Result<Vec<Value>> {
        ps_json(&self.sup, self.backend)
    }
    fn pids(&self) -> HashMap<String, u64> {
        online(self.ps().unwrap_or_default())
    }
    async fn wait(
        &self,
        what: &str,
        pred: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> anyhow::Result<HashMap<String, u64>> {
        wait_pids(what, || self.pids(), pred).await
    }
}

const SEED: &str = r#"; the seed's layout: several apps in one file
{:apps [{:name "indexer" :script "sleep" :args ["1000"] :cwd "./work"
         :interpreter "/usr/bin/env" :env {:NODE_ENV "production" :PM2_PROCESS_NAME "indexer"}
         :autorestart true :restart_delay 5000 :kill_timeout 10000 :max_memory_restart "1G"
         :min_uptime 10000 :max_restarts 10 :out_file "./logs/indexer-out.log" :error_file "./logs/indexer-err.log"
         :merge_logs true :time true :instances 1 :colour "blue"}
        {:name "heartbeat" :script "sleep" :args ["1001"] :instances 2}]}
"#;

fn tree(w: &Workspace) {
    w.write("devops/ecosystem-watch/ecosystem.edn", SEED);
    w.write("mcp/serena/jobs.edn", "{:apps [{:name \"serena\" :script \"sleep\" :args \"1002\"}]}");
    w.write("mcp/serena/deps.edn", "{:deps {org.clojure/clojure {:mvn/version \"1.11.1\"}}}");
    w.write("services/web/daemon.toml", "command = \"sleep\"\nargs = [\"1003\"]\n");
    w.write(
        "js/ecosystem.config.js",
        "const base = { script: 'sleep' };\nmodule.exports = { apps: [ { ...base, name: 'js-a', args: ['1004'] }, { ...base, name: 'js-b', args: '1005', env_production: { MODE: 'prod' } } ] };\n",
    );
}

const ALL: [&str; 7] = [
    "daemons:indexer",
    "daemons:heartbeat-0",
    "daemons:heartbeat-1",
    "daemons:serena",
    "daemons:services.web",
    "daemons:js-a",
    "daemons:js-b",
];

async fn mixed_tree_plan_apply_edit_duplicate(w: &Workspace) -> R {
    tree(w);
    let plan = w.plan()?;
    let starts: Vec<&str> =
        plan.iter().filter(|i| i["action"] == "start").map(|i| i["process"].as_str().unwrap()).collect();
    assert_eq!(starts.len(), 6, "{plan:#?}");
    let indexer = plan.iter().find(|i| i["process"] == "daemons:indexer").unwrap();
    assert_eq!(indexer["daemon"], "devops/ecosystem-watch/indexer");
    let warning = indexer["warnings"][0].as_str().unwrap();
    assert!(warning.contains("ecosystem.edn:6: colour ignored"), "{warning}");
    let table = w.apply()?;
    assert!(table.contains("warning: ") && table.contains("colour ignored"), "{table}");
    let before = w.wait("every app online", |p| ALL.iter().all(|n| p.contains_key(*n))).await?;
    assert!(w.plan()?.iter().all(|i| i["action"] == "unchanged"), "an unchanged tree plans nothing");

    // Edit one app of a file with several: only it restarts.
    w.write("devops/ecosystem-watch/ecosystem.edn", &SEED.replace("[\"1001\"]", "[\"2001\"]"));
    let plan = w.plan()?;
    let changed: Vec<(&str, &str)> = plan
        .iter()
        .filter(|i| i["action"] != "unchanged")
        .map(|i| (i["process"].as_str().unwrap(), i["action"].as_str().unwrap()))
        .collect();
    assert_eq!(changed, [("daemons:heartbeat", "recreate")], "{plan:#?}");
    w.apply()?;
    let after = w
        .wait("the edited app back", |p| {
            ALL.iter().all(|n| p.contains_key(*n)) && p["daemons:heartbeat-0"] != before["daemons:heartbeat-0"]
        })
        .await?;
    for n in ALL.iter().filter(|n| !n.starts_with("daemons:heartbeat")) {
        assert_eq!(after[*n], before[*n], "{n} restarted though its definition did not change");
    }

    // The same name in two files: an error naming both, neither touched.
    w.write("dup/ecosystem.edn", "{:apps [{:name \"serena\" :script \"sleep\" :args [\"3000\"]}]}");
    let out = w.daemons("apply", &[]);
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("process name daemons:serena is defined more than once"), "{text}");
    assert!(text.contains("mcp/serena/jobs.edn") && text.contains("dup/ecosystem.edn"), "{text}");
    assert_eq!(w.pids()["daemons:serena"], after["daemons:serena"], "the running one keeps running");
    Ok(())
}

#[tokio::test]
async fn a_mixed_tree_under_the_native_supervisor() -> R {
    let w = Workspace::new("native")?;
    mixed_tree_plan_apply_edit_duplicate(&w).await?;
    // Relative cwd and log paths resolve against the workspace root (the git work tree).
    let d: Value = serde_json::from_str(&w.sup.ok(&["describe", "--json", "daemons:indexer"])?)?;
    assert_eq!(d["spec"]["cwd"], w.top().join("work").display().to_string());
    assert_eq!(d["out_log"], w.top().join("logs/indexer-out.log").display().to_string());
    assert_eq!(d["spec"]["command"], "/usr/bin/env");
    assert_eq!(d["spec"]["kill_signal"], "SIGINT", "pm2's stop signal");
    let pid = d["status"]["pid"].as_u64().unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd"))?, w.top().join("work"));
    let h1: Value = serde_json::from_str(&w.sup.ok(&["describe", "--json", "daemons:heartbeat-1"])?)?;
    assert_eq!(h1["spec"]["env"]["NODE_APP_INSTANCE"], "1");
    // The generated pm2 file of a folder holds all its apps.
    let eco = std::fs::read_to_string(w.root().join("devops/ecosystem-watch/dist/ecosystem.config.cjs"))?;
    assert!(
        eco.starts_with("// GENERATED by agentcom from ")
            && eco.contains("\"daemons:indexer\"")
            && eco.contains("\"daemons:heartbeat-1\""),
        "{eco}"
    );
    // The installed watcher records the workspace root, so a restart resolves paths the same way.
    let out = w.daemons("install-watcher", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let watcher = w.ps()?.into_iter().find(|p| p["name"].as_str().unwrap().starts_with("daemons-watcher.")).unwrap();
    let d: Value = serde_json::from_str(&w.sup.ok(&["describe", "--json", watcher["name"].as_str().unwrap()])?)?;
    let args: Vec<&str> = d["spec"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let top = w.top().display().to_string();
    assert!(args.windows(2).any(|p| p == ["--workdir", top.as_str()]), "{args:?}");
    Ok(())
}

#[tokio::test]
async fn a_mixed_tree_under_real_pm2() -> R {
    let w = Workspace::new("pm2")?;
    mixed_tree_plan_apply_edit_duplicate(&w).await
}

#[tokio::test]
async fn cluster_mode_and_bad_values_are_errors_with_file_and_line() -> R {
    let w = Workspace::new("native")?;
    w.write("c/ecosystem.edn", "{:apps [{:name \"c\" :script \"sleep\"\n  :exec_mode \"cluster\" :instances 4}]}");
    w.write("m/ecosystem.edn", "{:apps [{:name \"m\" :script \"sleep\"\n\n :max_memory_restart \"lots\"}]}");
    w.write("s/ecosystem.edn", "{:apps [{:name \"s\" :script \"sleep\"}\n");
    let plan = w.plan()?;
    let err = |d: &str| plan.iter().find(|i| i["daemon"].as_str().unwrap().starts_with(d)).unwrap().clone();
    let c = err("c");
    assert_eq!((c["action"].as_str(), c["line"].as_u64()), (Some("error"), Some(2)));
    assert!(
        c["message"].as_str().unwrap().starts_with("exec_mode: \"cluster\" is not supported: pm2's cluster mode"),
        "{c}"
    );
    assert_eq!(err("m")["line"], 3);
    assert!(err("s")["message"].as_str().unwrap().contains("unclosed"), "{plan:#?}");
    // The table prints each error whole, under it.
    let out = String::from_utf8(w.daemons("plan", &[]).stdout)?;
    assert!(out.contains("use fork mode") || out.contains("Use fork mode"), "{out}");
    Ok(())
}

#[tokio::test]
async fn a_watched_path_restarts_its_daemon() -> R {
    let w = Workspace::new("native")?;
    std::fs::create_dir_all(w.top().join("app/src"))?;
    std::fs::create_dir_all(w.top().join("app/node_modules"))?;
    w.write(
        "app/ecosystem.edn",
        "{:apps [{:name \"watched\" :script \"sleep\" :args [\"1000\"] :cwd \"./app\" :watch [\"./src\" \"./node_modules\"] :ignore_watch [\"node_modules\"] :watch_delay 50}]}",
    );
    w.apply()?;
    let before = w.wait("online", |p| p.contains_key("daemons:watched")).await?;
    std::fs::write(w.top().join("app/node_modules/junk.js"), "ignored")?;
    std::fs::write(w.top().join("app/src/main.js"), "console.log(1)")?;
    let after = w
        .wait("restarted by the change", |p| p.get("daemons:watched").is_some_and(|n| *n != before["daemons:watched"]))
        .await?;
    let d: Value = serde_json::from_str(&w.sup.ok(&["describe", "--json", "daemons:watched"])?)?;
    assert!(d["last_restart_reason"].as_str().unwrap().ends_with("app/src/main.js"), "{d}");
    assert!(after.contains_key("daemons:watched"));
    Ok(())
}

#[tokio::test]
async fn start_an_ecosystem_file_starts_every_app() -> R {
    let w = Workspace::new("native")?;
    let file = w.top().join("ecosystem.config.js");
    std::fs::write(&file, "module.exports = { apps: [{ name: 'one', script: 'sleep', args: '1000' }, { name: 'two', script: 'sleep', args: ['1000'], instances: 2 }] };")?;
    let out = w.sup.cmd(&["start", file.to_str().unwrap()]).current_dir(w.top()).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout)?, "started one\nstarted two-0, two-1\n");
    let edn = w.top().join("ecosystem.edn");
    std::fs::write(&edn, "{:apps [{:name \"three\" :script \"sleep\" :args [\"1000\"]}]}")?;
    assert_eq!(w.sup.ok(&["start", edn.to_str().unwrap()])?.trim(), "started three");
    let names: Vec<String> =
        w.ps()?.iter().filter(|p| p["status"] == "online").map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["one", "three", "two-0", "two-1"]);
    // `stop two` stops both instances, as `pm2 stop two`.
    w.sup.ok(&["stop", "two"])?;
    assert!(w
        .ps()?
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("two-"))
        .all(|p| p["status"] == "stopped"));
    Ok(())
}

#[tokio::test]
async fn a_js_file_without_node_is_an_error_that_says_so() -> R {
    let w = Workspace::new("native")?;
    w.write("js/ecosystem.config.js", "module.exports = { apps: [{ name: 'x', script: 'sleep' }] };");
    w.write("t/daemon.toml", "command = \"/bin/sleep\"\nargs = [\"1000\"]\n");
    // No node on PATH (nor anything else: the daemon.toml names its command by path).
    let root = w.root().display().to_string();
    let out = w.sup.cmd(&["daemons", "plan", "--root", &root, "--json"]).env("PATH", "/nonexistent").output()?;
    let plan: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let js = plan.iter().find(|i| i["action"] == "error").expect("an error for the JS file");
    assert!(js["file"].as_str().unwrap().ends_with("js/ecosystem.config.js"));
    assert!(js["message"].as_str().unwrap().starts_with("node is needed to read a JS ecosystem file"), "{js}");
    assert!(
        plan.iter().any(|i| i["process"] == "daemons:t" && i["action"] == "start"),
        "the rest is planned: {plan:#?}"
    );
    Ok(())
}
