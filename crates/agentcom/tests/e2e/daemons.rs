//! End-to-end tests of `agentcom daemons`: real definition trees, the real supervisor (native
//! and pm2), real processes.

use crate::bin;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::{eventually, Supervised};

type R = anyhow::Result<()>;

/// Fields drop in order: the supervisor and pm2 stop before the folder they write in goes.
struct Tree {
    sup: Supervised,
    backend: &'static str,
    _pm2: Option<testkit::Pm2Home>,
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> anyhow::Result<Tree> {
        Ok(Tree { root: tempfile::tempdir()?, sup: Supervised::new(bin())?, backend: "native", _pm2: None })
    }

    fn with_pm2() -> anyhow::Result<Tree> {
        let pm2 = testkit::Pm2Home::new()?;
        let mut t = Tree::new()?;
        pm2.apply(&mut t.sup);
        t.backend = "pm2";
        t._pm2 = Some(pm2);
        Ok(t)
    }

    fn root(&self) -> PathBuf {
        self.root.path().canonicalize().unwrap()
    }

    fn define(&self, id: &str, toml: &str) {
        let dir = self.root.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("daemon.toml"), toml).unwrap();
    }

    fn sleeper(&self, id: &str, secs: u32) {
        self.define(id, &format!("command = \"sleep\"\nargs = [\"{secs}\"]\n"));
    }

    fn daemons(&self, verb: &str, extra: &[&str]) -> std::process::Output {
        daemons_cmd(&self.sup, self.backend, &self.root(), verb, extra)
    }

    fn apply(&self) -> anyhow::Result<()> {
        let out = self.daemons("apply", &[]);
        anyhow::ensure!(
            out.status.success(),
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn plan(&self) -> anyhow::Result<Vec<Value>> {
        let out = self.daemons("plan", &["--json"]);
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn ps(&self) -> anyhow::Result<Vec<Value>> {
        ps_json(&self.sup, self.backend)
    }

    fn pids(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(online(self.ps()?))
    }

    async fn wait(
        &self,
        what: &str,
        pred: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> anyhow::Result<HashMap<String, u64>> {
        // The watcher may not have launched the supervisor yet.
        wait_pids(what, || self.pids().unwrap_or_default(), pred).await
    }
}

/// `agentcom daemons VERB --root ROOT --backend BACKEND EXTRA...`, run by `sup`.
pub(crate) fn daemons_cmd(sup: &Supervised, backend: &str, root: &Path, verb: &str, extra: &[&str]) -> Output {
    let root = root.display().to_string();
    let mut args = vec!["daemons", verb, "--root", &root, "--backend", backend];
    args.extend_from_slice(extra);
    sup.run(&args)
}

/// Every process `ps --json` shows on `backend`.
pub(crate) fn ps_json(sup: &Supervised, backend: &str) -> anyhow::Result<Vec<Value>> {
    Ok(serde_json::from_str(&sup.ok(&["ps", "--json", "--backend", backend])?)?)
}

/// name -> pid of the online processes in the daemons namespace.
pub(crate) fn online(ps: Vec<Value>) -> HashMap<String, u64> {
    ps.into_iter()
        .filter(|p| p["status"] == "online" && p["name"].as_str().unwrap().starts_with("daemons:"))
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["pid"].as_u64().unwrap()))
        .collect()
}

/// Waits until `pids()` satisfies `pred`; returns what it was then.
pub(crate) async fn wait_pids(
    what: &str,
    pids: impl Fn() -> HashMap<String, u64>,
    pred: impl Fn(&HashMap<String, u64>) -> bool,
) -> anyhow::Result<HashMap<String, u64>> {
    eventually(what, || async {
        let p = pids();
        if pred(&p) {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await
}

async fn twenty_apply_edit_delete(t: &Tree, n: usize) -> R {
    for i in 0..n {
        t.sleeper(&format!("group{}/svc{i}", i % 3), 1000 + i as u32);
    }
    t.apply()?;
    let before = t.wait("all online", |p| p.len() == n).await?;
    assert!(t.plan()?.iter().all(|i| i["action"] == "unchanged"), "an unchanged tree plans nothing");

    // Edit one: only it restarts.
    t.sleeper("group1/svc4", 4444);
    let plan = t.plan()?;
    let changed: Vec<&Value> = plan.iter().filter(|i| i["action"] != "unchanged").collect();
    assert_eq!(changed.len(), 1, "{plan:?}");
    assert_eq!((changed[0]["action"].as_str(), changed[0]["changed"][0].as_str()), (Some("recreate"), Some("args")));
    t.apply()?;
    let after = t
        .wait("edited one back", |p| p.len() == n && p["daemons:group1.svc4"] != before["daemons:group1.svc4"])
        .await?;
    for (name, pid) in &before {
        if name != "daemons:group1.svc4" {
            assert_eq!(after[name], *pid, "{name} was restarted though its definition did not change");
        }
    }

    // Delete one: stopped and gone.
    std::fs::remove_dir_all(t.root.path().join("group2/svc5"))?;
    let plan = t.plan()?;
    assert!(plan.iter().any(|i| i["action"] == "stop-and-delete" && i["process"] == "daemons:group2.svc5"), "{plan:?}");
    t.apply()?;
    let gone = t.wait("one fewer", |p| p.len() == n - 1).await?;
    assert!(!gone.contains_key("daemons:group2.svc5"));
    assert!(!testkit::alive(before["daemons:group2.svc5"] as i32));
    assert!(t.ps()?.iter().all(|p| p["name"] != "daemons:group2.svc5"), "deleted, not just stopped");
    Ok(())
}

#[tokio::test]
async fn twenty_definitions_apply_then_edit_one_then_delete_one() -> R {
    twenty_apply_edit_delete(&Tree::new()?, 20).await
}

#[tokio::test]
async fn under_real_pm2_apply_edit_delete() -> R {
    twenty_apply_edit_delete(&Tree::with_pm2()?, 6).await
}

#[tokio::test]
async fn broken_definition_keeps_its_last_good_version_running() -> R {
    let t = Tree::new()?;
    t.sleeper("api", 1000);
    t.apply()?;
    let before = t.wait("online", |p| p.len() == 1).await?;
    t.define("api", "command = \"sleep\"\nargs = [\"1000\"]\nkill_timeout_ms = \"soon\"\n");
    let plan = t.plan()?;
    let e = plan.iter().find(|i| i["daemon"] == "api").unwrap();
    assert_eq!(e["action"], "error");
    assert_eq!(e["line"], 3);
    assert!(e["file"].as_str().unwrap().ends_with("api/daemon.toml"));
    assert!(e["message"].as_str().unwrap().contains("invalid type"), "{e}");
    let out = t.daemons("apply", &[]);
    assert!(!out.status.success(), "apply reports the broken definition");
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("error") && table.contains("daemon.toml:3"), "{table}");
    assert_eq!(t.pids()?, before, "the old version still runs, untouched and not pruned");
    let lock: Value = serde_json::from_slice(&std::fs::read(t.root.path().join("api/dist/daemon.lock.json"))?)?;
    assert_eq!(lock["daemons"]["daemons:api"]["spec"]["args"][0], "1000", "the lock keeps the last good spec");
    Ok(())
}

#[tokio::test]
async fn a_changed_spec_is_a_recreate_so_removed_env_vars_are_gone() -> R {
    let t = Tree::new()?;
    let out = t.root.path().join("env.txt");
    let script = format!("echo \\\"A=$A B=$B\\\" > '{}'; exec sleep 1000", out.display());
    t.define("envy", &format!("command = \"sh\"\nargs = [\"-c\", \"{script}\"]\n[env]\nA = \"1\"\nB = \"2\"\n"));
    t.apply()?;
    t.wait("online", |p| p.len() == 1).await?;
    testkit::file_says("the first run's environment", &out, "A=1 B=2").await?;
    t.define("envy", &format!("command = \"sh\"\nargs = [\"-c\", \"{script}\"]\n[env]\nA = \"1\"\n"));
    assert_eq!(t.plan()?[0]["changed"][0], "env");
    t.apply()?;
    testkit::file_says("the environment after the edit", &out, "A=1 B=").await?;
    Ok(())
}

#[tokio::test]
async fn renaming_a_folder_is_a_delete_plus_a_create() -> R {
    let t = Tree::new()?;
    t.sleeper("old-name", 1000);
    t.apply()?;
    let before = t.wait("online", |p| p.contains_key("daemons:old-name")).await?;
    std::fs::rename(t.root.path().join("old-name"), t.root.path().join("new-name"))?;
    t.apply()?;
    t.wait("renamed", |p| p.contains_key("daemons:new-name") && !p.contains_key("daemons:old-name")).await?;
    assert!(!testkit::alive(before["daemons:old-name"] as i32));
    Ok(())
}

#[tokio::test]
async fn processes_we_did_not_create_are_never_touched() -> R {
    let t = Tree::new()?;
    t.sup.ok(&["start", "by-hand", "--", "sleep", "1000"])?;
    // Same prefix, but created for another root: not ours either.
    let other = tempfile::tempdir()?;
    std::fs::create_dir_all(other.path().join("x"))?;
    std::fs::write(other.path().join("x/daemon.toml"), "command = \"sleep\"\nargs = [\"1000\"]\n")?;
    let out = t.sup.run(&["daemons", "apply", "--root", other.path().to_str().unwrap()]);
    assert!(out.status.success());
    t.sleeper("mine", 1000);
    t.apply()?;
    let names: Vec<String> =
        t.ps()?.iter().filter(|p| p["status"] == "online").map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert!(names.contains(&"by-hand".to_string()) && names.contains(&"daemons:x".to_string()), "{names:?}");
    assert!(names.contains(&"daemons:mine".to_string()));
    std::fs::remove_dir_all(t.root.path().join("mine"))?;
    t.apply()?;
    let names: Vec<String> = t.ps()?.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert!(!names.contains(&"daemons:mine".to_string()), "ours is pruned");
    assert!(
        names.contains(&"by-hand".to_string()) && names.contains(&"daemons:x".to_string()),
        "theirs survive: {names:?}"
    );
    let out = t.daemons("apply", &["--no-prune"]);
    assert!(out.status.success());
    Ok(())
}

#[tokio::test]
async fn generated_files_say_where_they_come_from_and_match_what_runs() -> R {
    let t = Tree::new()?;
    t.sleeper("svc", 1000);
    t.apply()?;
    let dist = t.root.path().join("svc/dist");
    let eco = std::fs::read_to_string(dist.join("ecosystem.config.cjs"))?;
    let first = eco.lines().next().unwrap();
    assert!(
        first.starts_with("// GENERATED by agentcom from ")
            && first.contains("svc/daemon.toml")
            && first.contains("Do not edit"),
        "{first}"
    );
    assert!(
        eco.contains("\"PM2_PROCESS_NAME\": \"daemons:svc\"") && eco.contains("\"namespace\": \"agentcom-daemons\""),
        "{eco}"
    );
    let lock: Value = serde_json::from_slice(&std::fs::read(dist.join("daemon.lock.json"))?)?;
    assert!(lock["_generated"].as_str().unwrap().contains("Do not edit"));
    let running = t.ps()?.into_iter().find(|p| p["name"] == "daemons:svc").unwrap();
    assert_eq!(
        running["spec_hash"], lock["daemons"]["daemons:svc"]["fingerprint"],
        "the fingerprint runs with the process"
    );
    Ok(())
}

/// The watcher, killed when the test ends, passed or failed.
fn spawn_watcher(t: &Tree) -> anyhow::Result<testkit::Owned> {
    let root = t.root().display().to_string();
    Ok(t.sup
        .cmd(&["daemons", "watch", "--root", &root, "--debounce-ms", "50", "--full-every-ms", "60000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|c| testkit::Owned::new(c, "daemons watch"))?)
}

#[tokio::test]
async fn the_watcher_applies_an_edit_without_any_command() -> R {
    let t = Tree::new()?;
    for i in 0..3 {
        t.sleeper(&format!("w{i}"), 1000);
    }
    let _watcher = spawn_watcher(&t)?;
    let before = t.wait("started by the watcher", |p| p.len() == 3).await?;
    t.sleeper("w1", 2000);
    let after = t.wait("restarted by the watcher", |p| p.len() == 3 && p["daemons:w1"] != before["daemons:w1"]).await?;
    assert_eq!((after["daemons:w0"], after["daemons:w2"]), (before["daemons:w0"], before["daemons:w2"]));
    // Files the watcher must ignore change nothing: an edit made after them is applied, and
    // only it.
    std::fs::write(t.root.path().join("w0/.daemon.toml.swp"), b"junk")?;
    std::fs::write(t.root.path().join("w0/daemon.toml~"), b"junk")?;
    t.sleeper("w2", 2000);
    let last = t.wait("w2 restarted", |p| p.len() == 3 && p["daemons:w2"] != after["daemons:w2"]).await?;
    assert_eq!((last["daemons:w0"], last["daemons:w1"]), (after["daemons:w0"], after["daemons:w1"]));
    Ok(())
}

#[tokio::test]
async fn a_restarted_watcher_reconciles_what_changed_meanwhile() -> R {
    let t = Tree::new()?;
    t.sleeper("keep", 1000);
    t.sleeper("edit", 1000);
    t.sleeper("drop", 1000);
    let mut watcher = spawn_watcher(&t)?;
    let before = t.wait("started", |p| p.len() == 3).await?;
    watcher.kill9();
    t.sleeper("edit", 3000);
    std::fs::remove_dir_all(t.root.path().join("drop"))?;
    t.sleeper("new", 1000);
    let _watcher = spawn_watcher(&t)?;
    let after = t
        .wait("reconciled", |p| {
            p.len() == 3
                && p.contains_key("daemons:new")
                && !p.contains_key("daemons:drop")
                && p["daemons:edit"] != before["daemons:edit"]
        })
        .await?;
    assert_eq!(after["daemons:keep"], before["daemons:keep"]);
    Ok(())
}

#[tokio::test]
async fn install_watcher_puts_the_watcher_under_the_supervisor() -> R {
    let t = Tree::new()?;
    t.sleeper("svc", 1000);
    let out = t.daemons("install-watcher", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    t.wait("started by the supervised watcher", |p| p.contains_key("daemons:svc")).await?;
    let watcher = t
        .ps()?
        .into_iter()
        .find(|p| p["name"].as_str().unwrap().starts_with("daemons-watcher."))
        .expect("watcher listed");
    assert_eq!(watcher["status"], "online");
    let before = t.pids()?;
    t.sleeper("svc", 2000);
    t.wait("edit applied", |p| p.get("daemons:svc").is_some_and(|pid| Some(pid) != before.get("daemons:svc"))).await?;
    Ok(())
}

/// Red team (issue 17): a plan is a question. Without a supervisor running it starts none (the
/// old plan launched one in the background and left it running).
#[tokio::test]
async fn plan_changes_nothing_and_starts_no_supervisor() -> R {
    let t = Tree::new()?;
    t.sleeper("api", 1000);
    let plan = t.plan()?;
    assert_eq!((plan.len(), plan[0]["action"].as_str()), (1, Some("start")), "{plan:?}");
    assert!(t.sup.supervisor_pid().is_none(), "no supervisor was started");
    assert!(!t.sup.dir().join("supervisor.sock").exists());
    assert!(!t.root.path().join("api/dist").exists(), "nothing was written");
    Ok(())
}

/// Red team (issue 17): a `dist` that is a symbolic link out of the tree is refused, never
/// written through; the daemon itself still starts.
#[tokio::test]
async fn apply_never_writes_through_a_dist_that_is_a_symbolic_link() -> R {
    let t = Tree::new()?;
    t.sleeper("api", 1000);
    let outside = t.root.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, t.root.path().join("api/dist"))?;
    let out = t.daemons("apply", &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0, "nothing written out of the tree");
    Ok(())
}

/// Red team (issue 17): control characters and bidi overrides from folder and app names reach
/// the terminal escaped in `plan`'s table and its error lines.
#[tokio::test]
async fn names_with_control_characters_are_escaped_in_the_plan() -> R {
    let t = Tree::new()?;
    t.define("evil\nname", "command = \"sleep\"\nargs = [\"1\"]\nkill_timeout_ms = \"soon\"\n");
    t.define("rtl\u{202e}txt.exe", "command = \"sleep\"\nargs = [\"1\"]\n");
    let nul = t.root.path().join("nul");
    std::fs::create_dir_all(&nul)?;
    std::fs::write(nul.join("ecosystem.json"), r#"{"apps": [{"name": "a\u0000b\u001b[31m", "script": "sleep"}]}"#)?;
    let out = t.daemons("plan", &[]);
    let text = String::from_utf8(out.stdout)?;
    for raw in ['\u{202e}', '\0', '\u{1b}'] {
        assert!(!text.contains(raw), "{raw:?} reached the terminal: {text:?}");
    }
    assert!(text.lines().all(|l| !l.starts_with("name")), "a newline forged a line: {text}");
    assert!(text.contains("evil\\nname") && text.contains("\\u{202e}"), "{text}");
    Ok(())
}
