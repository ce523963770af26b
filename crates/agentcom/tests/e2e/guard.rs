//! End-to-end tests of the guard: real git repos in temp dirs, a tiny script agent under the
//! real supervisor (native, and once pm2), real restarts and rollbacks.

use crate::bin;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{eventually, Supervised};

type R = anyhow::Result<()>;

/// The agent: reads VERSION at start. `crash*` exits at once, `hang*` never reports healthy.
const AGENT: &str = r#"#!/bin/sh
V=$(cat VERSION)
case "$V" in crash*) echo "crashing on $V" >&2; exit 1 ;; esac
echo "starting $V" > "$STATE/health"
case "$V" in hang*) exec sleep 100000 ;; esac
echo "ok $V" > "$STATE/health"
exec sleep 100000
"#;

/// Fields drop in order: the supervisor and pm2 stop before the folder they write in goes.
struct Agent {
    sup: Supervised,
    backend: &'static str,
    _pm2: Option<testkit::Pm2Home>,
    root: tempfile::TempDir,
}

fn git(repo: &Path, args: &[&str]) -> String {
    testkit::git::git(repo, args).unwrap()
}

impl Agent {
    fn new(backend: &'static str) -> anyhow::Result<Agent> {
        let root = tempfile::tempdir()?;
        let repo = root.path().join("repo");
        std::fs::create_dir_all(root.path().join("state"))?;
        testkit::git::versioned_agent(&repo, AGENT)?;
        let mut sup = Supervised::new(bin())?;
        // As on a fresh machine: no global git identity for the guard's merge commits.
        sup.env.push(("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()));
        let pm2 = if backend == "pm2" { Some(testkit::Pm2Home::new()?) } else { None };
        if let Some(p) = &pm2 {
            p.apply(&mut sup);
        }
        let a = Agent { root, sup, backend, _pm2: pm2 };
        let state = format!("STATE={}", a.state().display());
        a.sup.ok(&[
            "start",
            "agent",
            "--backend",
            backend,
            "--cwd",
            repo.to_str().unwrap(),
            "--env",
            &state,
            "--min-uptime-ms",
            "1000",
            "--max-restarts",
            "2",
            "--kill-timeout-ms",
            "500",
            "--",
            "sh",
            "agent.sh",
        ])?;
        Ok(a)
    }

    fn repo(&self) -> PathBuf {
        self.root.path().join("repo")
    }
    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }
    fn health_cmd(&self) -> String {
        format!("grep -qx \"ok $(cat VERSION)\" '{}/health'", self.state().display())
    }
    fn health_now(&self) -> String {
        std::fs::read_to_string(self.state().join("health")).unwrap_or_default().trim().to_string()
    }

    async fn wait_healthy(&self, want: &str) -> R {
        testkit::file_says(&format!("the agent to report {want:?}"), &self.state().join("health"), want).await
    }

    /// A branch that changes VERSION to `v`.
    fn branch(&self, name: &str, v: &str) {
        testkit::git::version_branch(&self.repo(), name, v).unwrap();
    }

    fn upgrade_cmd(&self, branch: &str, test: &str, extra: &[&str]) -> Command {
        let health = self.health_cmd();
        let repo = self.repo().display().to_string();
        let state = self.state().display().to_string();
        let mut args: Vec<&str> = vec![
            "upgrade",
            "--repo",
            &repo,
            "--process",
            "agent",
            "--branch",
            branch,
            "--test",
            test,
            "--state-dir",
            &state,
            "--backend",
            self.backend,
            "--json",
        ];
        // Defaults for the health check and its window, unless the caller sets them.
        let defaults = [
            ("--health", health.as_str()),
            ("--health-timeout", "4s"),
            ("--stable-for", "400ms"),
            ("--check-interval", "50ms"),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        self.sup.cmd(&args)
    }

    fn upgrade(&self, branch: &str, test: &str, extra: &[&str]) -> anyhow::Result<(bool, Value)> {
        let out = self.upgrade_cmd(branch, test, extra).output()?;
        let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            anyhow::anyhow!(
                "no JSON report ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.success(), report))
    }

    fn head(&self) -> String {
        git(&self.repo(), &["rev-parse", "HEAD"])
    }
    fn version(&self) -> String {
        std::fs::read_to_string(self.repo().join("VERSION")).unwrap().trim().to_string()
    }
    fn journal(&self) -> bool {
        self.repo().join(".git/agentcom-upgrade.json").exists()
    }
}

fn save_checkpoint(a: &Agent) {
    let out = a
        .sup
        .cmd(&[
            "checkpoint",
            "save",
            "--state-dir",
            a.state().to_str().unwrap(),
            "--objective",
            "Refactor the parser",
            "--pending",
            "write tests",
            "--state",
            "half done",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn good_change_is_merged_running_and_marked_good() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/v2", "2");
    let (ok, r) = a.upgrade("feature/v2", "grep -qx 2 VERSION", &[])?;
    assert!(ok, "{r:#}");
    assert_eq!(r["outcome"], "upgraded");
    assert_eq!(a.version(), "2");
    assert_eq!(a.health_now(), "ok 2", "the new code is what runs");
    let tags = git(&a.repo(), &["tag", "--points-at", "HEAD"]);
    assert!(tags.starts_with("agentcom/good/"), "{tags}");
    assert_eq!(r["good_tag"].as_str(), Some(tags.lines().next().unwrap()));
    let steps: Vec<&str> = r["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps.first(), Some(&"check repo, branch and supervisor"));
    assert!(steps.contains(&"health window") && steps.contains(&"mark the new commit good"), "{steps:?}");
    assert!(!a.journal());
    assert!(a.state().join("current_task.md").exists(), "a checkpoint is saved before the restart");
    Ok(())
}

#[tokio::test]
async fn failing_tests_leave_main_untouched() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/bad-tests", "2");
    let head = a.head();
    let (ok, r) = a.upgrade("feature/bad-tests", "echo 'assertion failed' >&2; exit 1", &[])?;
    assert!(!ok);
    assert_eq!(r["outcome"], "tests-failed");
    assert!(r["error"].as_str().unwrap().contains("assertion failed"), "{r}");
    assert_eq!((a.head(), a.version()), (head, "1".to_string()));
    assert!(!a.journal());
    assert_eq!(git(&a.repo(), &["worktree", "list"]).lines().count(), 1, "the test worktree is removed");
    Ok(())
}

#[tokio::test]
async fn a_change_that_crashes_at_start_is_rolled_back_by_itself() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    save_checkpoint(&a);
    a.branch("feature/crash", "crash-2");
    let head = a.head();
    let (ok, r) = a.upgrade("feature/crash", "true", &[])?;
    assert!(!ok);
    assert_eq!(r["outcome"], "rolled-back", "{r:#}");
    assert!(r["error"].as_str().unwrap().starts_with("new version unhealthy"), "{r}");
    assert_eq!((a.head(), a.version()), (head, "1".to_string()));
    a.wait_healthy("ok 1").await?;
    assert_eq!(a.sup.proc("agent")?["status"], "online", "the old code is online");
    let md = std::fs::read_to_string(a.state().join("current_task.md"))?;
    assert!(md.contains("Refactor the parser") && md.contains("- [ ] write tests"), "checkpoint intact: {md}");
    assert!(!a.journal());
    Ok(())
}

#[tokio::test]
async fn a_change_that_hangs_the_health_check_is_rolled_back() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/hang", "hang-2");
    let head = a.head();
    let t0 = Instant::now();
    let (ok, r) = a.upgrade("feature/hang", "true", &[])?;
    assert!(!ok);
    assert_eq!(r["outcome"], "rolled-back");
    assert!(r["error"].as_str().unwrap().contains("health check"), "{r}");
    assert!(t0.elapsed() >= Duration::from_secs(4), "the whole health timeout was given");
    assert_eq!(a.head(), head);
    a.wait_healthy("ok 1").await?;
    Ok(())
}

#[tokio::test]
async fn guard_killed_mid_upgrade_then_resume_restores_a_consistent_state() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/hang", "hang-2");
    let head = a.head();
    let mut guard = a.upgrade_cmd("feature/hang", "true", &[]).stdout(std::process::Stdio::null()).spawn()?;
    let journal = a.repo().join(".git/agentcom-upgrade.json");
    let j = eventually("the upgrade to reach its health window", || async {
        let j: Value = std::fs::read(&journal).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if j["phase"] == "restarted" {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    })
    .await?;
    assert_eq!(j["state_dir"].as_str(), a.state().to_str(), "the checkpoint's folder is journaled for --resume");
    guard.kill()?; // SIGKILL, mid health window
    guard.wait()?;
    assert_eq!(a.version(), "hang-2", "killed with the new code merged");
    // A new upgrade is refused while the old one is unresolved.
    let (ok, r) = a.upgrade("feature/hang", "true", &[])?;
    assert!(!ok && r["error"].as_str().unwrap().contains("--resume"), "{r}");
    let out = a
        .sup
        .cmd(&["upgrade", "--resume", "--repo", a.repo().to_str().unwrap(), "--check-interval", "50ms", "--json"])
        .output()?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert!(!out.status.success());
    assert_eq!(r["outcome"], "rolled-back", "{r:#}");
    assert_eq!((a.head(), a.version()), (head, "1".to_string()));
    a.wait_healthy("ok 1").await?;
    assert!(!a.journal());
    let out = a.sup.cmd(&["upgrade", "--resume", "--repo", a.repo().to_str().unwrap(), "--json"]).output()?;
    assert!(out.status.success(), "nothing left to resume");
    Ok(())
}

#[tokio::test]
async fn the_watchdog_rolls_back_an_agent_offline_after_an_upgrade() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    save_checkpoint(&a);
    a.branch("feature/v2", "2");
    let old = a.head();
    let (ok, r) = a.upgrade("feature/v2", "true", &[])?;
    assert!(ok, "{r}");
    let mut watch = a
        .sup
        .cmd(&[
            "guard",
            "watch",
            "--repo",
            a.repo().to_str().unwrap(),
            "--process",
            "agent",
            "--offline-after",
            "600ms",
            "--interval",
            "50ms",
            "--state-dir",
            a.state().to_str().unwrap(),
        ])
        .env("AGENTCOM_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let logs = testkit::Logs::default();
    testkit::watch_logs(watch.stderr.take().expect("piped"), logs.clone(), "guard watching", "process")?;
    let _watch = testkit::Owned::new(watch, "guard watch");
    // Each check is a log line: these say how many it has made, and what it found.
    let checks = |found: &'static str| {
        let logs = logs.clone();
        move || {
            logs.lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == found)
                .count()
        }
    };
    let online_checks = checks("agent checked");
    eventually("the watchdog to check the online agent a few times", || async {
        let n = online_checks();
        (n >= 3).then_some(()).ok_or_else(|| format!("{n} checks"))
    })
    .await?;
    assert_eq!(a.version(), "2", "an online agent is left alone");
    // The upgraded agent goes offline (here: stopped) and stays so, with work not committed.
    std::fs::write(a.repo().join("notes.txt"), "unfinished thoughts")?;
    a.sup.ok(&["stop", "agent"])?;
    eventually("the watchdog to roll back", || async {
        if a.head() == old {
            Ok(())
        } else {
            Err(a.head())
        }
    })
    .await?;
    let stash = git(&a.repo(), &["stash", "list"]);
    assert!(stash.contains("agentcom guard: before rollback"), "uncommitted work is stashed, not lost: {stash}");
    assert_eq!(git(&a.repo(), &["show", "stash@{0}^3:notes.txt"]), "unfinished thoughts");
    a.wait_healthy("ok 1").await?;
    assert_eq!(a.sup.proc("agent")?["status"], "online", "restarted on the old code");
    assert!(std::fs::read_to_string(a.state().join("current_task.md"))?.contains("Refactor the parser"));
    // It rolls back once: going offline again on the old code does not flip it forward.
    a.sup.ok(&["stop", "agent"])?;
    let nothing = checks("agent offline, but not after an upgrade: nothing to roll back");
    eventually("the watchdog to find the agent offline past the threshold again", || async {
        (nothing() >= 1).then_some(()).ok_or_else(|| "not yet".to_string())
    })
    .await?;
    assert_eq!(a.head(), old);
    Ok(())
}

#[tokio::test]
async fn under_real_pm2_a_crashing_change_is_rolled_back() -> R {
    let a = Agent::new("pm2")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/crash", "crash-2");
    let head = a.head();
    let (ok, r) = a.upgrade("feature/crash", "true", &["--health-timeout", "8s"])?;
    assert!(!ok);
    assert_eq!(r["outcome"], "rolled-back", "{r:#}");
    assert_eq!(a.head(), head);
    a.wait_healthy("ok 1").await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_and_faults_are_clear_one_line_errors_and_leave_main_as_it_was() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    let head = a.head();
    let err_of = |r: &Value| r["error"].as_str().unwrap_or("").to_string();

    let out = a
        .sup
        .cmd(&[
            "upgrade",
            "--repo",
            "/nonexistent/repo",
            "--process",
            "agent",
            "--branch",
            "x",
            "--test",
            "true",
            "--health",
            "true",
        ])
        .output()?;
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr)?;
    assert!(e.contains("/nonexistent/repo is not a git repository") && e.lines().count() == 1, "{e}");

    let (_, r) = a.upgrade("no-such-branch", "true", &[])?;
    assert_eq!(err_of(&r), "branch no-such-branch does not exist");

    std::fs::write(a.repo().join("scratch.txt"), "wip")?;
    let (_, r) = a.upgrade("main", "true", &[])?;
    assert!(err_of(&r).contains("uncommitted changes"), "{r}");
    std::fs::remove_file(a.repo().join("scratch.txt"))?;

    git(&a.repo(), &["checkout", "-q", "--detach"]);
    let (_, r) = a.upgrade("main", "true", &[])?;
    assert!(err_of(&r).starts_with("detached HEAD"), "{r}");
    git(&a.repo(), &["checkout", "-q", "main"]);

    a.branch("feature/slow-tests", "2");
    let (_, r) = a.upgrade("feature/slow-tests", "sleep 30", &["--test-timeout", "300ms"])?;
    assert_eq!(r["outcome"], "tests-failed");
    assert!(err_of(&r).contains("timed out after 300ms"), "{r}");

    // Conflict: main and the branch change the same line.
    git(&a.repo(), &["checkout", "-q", "-b", "feature/conflict"]);
    std::fs::write(a.repo().join("agent.sh"), format!("{AGENT}# branch\n"))?;
    git(&a.repo(), &["commit", "-q", "-am", "branch edit"]);
    git(&a.repo(), &["checkout", "-q", "main"]);
    std::fs::write(a.repo().join("agent.sh"), format!("{AGENT}# main\n"))?;
    git(&a.repo(), &["commit", "-q", "-am", "main edit"]);
    let main_head = a.head();
    let (_, r) = a.upgrade("feature/conflict", "true", &[])?;
    assert!(err_of(&r).starts_with("merge failed"), "{r}");
    assert_eq!(a.head(), main_head, "main restored after the conflict");
    assert!(a.sup.run(&["ps"]).status.success());
    assert_eq!(git(&a.repo(), &["status", "--porcelain"]), "", "no half-merged files");
    let _ = head;

    // A health URL that never answers: a socket that accepts and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/health", silent.local_addr()?);
    a.branch("feature/v3", "3");
    let before = a.head();
    let out = a
        .sup
        .cmd(&[
            "upgrade",
            "--repo",
            a.repo().to_str().unwrap(),
            "--process",
            "agent",
            "--branch",
            "feature/v3",
            "--test",
            "true",
            "--health",
            &url,
            "--state-dir",
            a.state().to_str().unwrap(),
            "--health-timeout",
            "1500ms",
            "--stable-for",
            "200ms",
            "--check-interval",
            "50ms",
            "--json",
        ])
        .output()?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    // The same silent URL judges the old version too: the guard says both failed, and main is
    // back on the last good commit all the same.
    assert_eq!(r["outcome"], "rollback-failed", "{r:#}");
    assert!(err_of(&r).contains("health URL") && err_of(&r).contains("no answer"), "{r}");
    assert_eq!(a.head(), before);

    // A supervisor that is not running.
    let none = Supervised::new(bin())?;
    let out = none
        .cmd(&[
            "upgrade",
            "--repo",
            a.repo().to_str().unwrap(),
            "--process",
            "agent",
            "--branch",
            "feature/v3",
            "--test",
            "true",
            "--health",
            "true",
            "--json",
        ])
        .output()?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert!(err_of(&r).starts_with("no supervisor running"), "{r}");
    assert_eq!(a.head(), before);
    Ok(())
}

#[tokio::test]
async fn manual_rollback_to_the_last_good_commit() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    a.branch("feature/v2", "2");
    let old = a.head();
    let (ok, _) = a.upgrade("feature/v2", "true", &[])?;
    assert!(ok);
    a.wait_healthy("ok 2").await?;
    let out = a.sup.ok(&["rollback", "--repo", a.repo().to_str().unwrap(), "--process", "agent"])?;
    assert!(out.starts_with("rolled back from "), "{out}");
    assert_eq!(a.head(), old);
    a.wait_healthy("ok 1").await?;
    Ok(())
}

#[tokio::test]
async fn checkpoint_save_show_and_load_survive_the_machine_through_the_hub() -> R {
    let hub = testkit::Hub::start(bin(), "")?;
    let token = hub.token("agent-7").await?;
    let state = tempfile::tempdir()?;
    let ctx = state.path().join("ctx.txt");
    std::fs::write(&ctx, "The user wants a faster parser.")?;
    let hist = state.path().join("h.jsonl");
    std::fs::write(&hist, "{\"role\":\"user\",\"content\":\"go\"}\n{\"role\":\"assistant\",\"content\":\"on it\"}\n")?;
    let dir = state.path().join("agent");
    // A list whose first hub is gone: `checkpoint --hub` takes the same lists as every client.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let hubs = format!("http://{dead},{}", hub.url());
    let env = |c: &mut Command| {
        c.env("AGENTCOM_URL", &hubs)
            .env("AGENTCOM_TOKEN", &token)
            .env("AGENTCOM_AGENT_ID", "agent-7")
            .env("AGENTCOM_STATE_DIR", &dir);
    };
    let mut c = Command::new(bin());
    c.args([
        "checkpoint",
        "save",
        "--objective",
        "Speed up the parser",
        "--context",
        ctx.to_str().unwrap(),
        "--pending",
        "profile",
        "--pending",
        "rewrite the lexer",
        "--state",
        "profiled",
        "--history",
        hist.to_str().unwrap(),
    ]);
    env(&mut c);
    let out = c.output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("history.jsonl"))?.lines().count(), 2);
    let mut c = Command::new(bin());
    c.args(["checkpoint", "show"]);
    env(&mut c);
    let shown = String::from_utf8(c.output()?.stdout)?;
    assert!(
        shown.contains("# Current Task\nSpeed up the parser")
            && shown.contains("- [ ] rewrite the lexer")
            && shown.contains("history: 2 lines"),
        "{shown}"
    );
    let (st, v) = hub.admin().get("/api/agents/agent-7/checkpoint").await?;
    assert_eq!((st, v["checkpoint"]["objective"].as_str()), (200, Some("Speed up the parser")));
    // The machine is lost: the agent starts on a fresh disk and loads its checkpoint back.
    std::fs::remove_dir_all(&dir)?;
    let mut c = Command::new(bin());
    c.args(["checkpoint", "load", "--print"]);
    env(&mut c);
    let out = c.output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8(out.stdout)?;
    assert!(md.contains("## Conversation Context\nThe user wants a faster parser."), "{md}");
    assert!(dir.join("current_task.md").exists() && dir.join("history.jsonl").exists());
    // Another agent's token may not overwrite it.
    let other = hub.token("agent-8").await?;
    let (st, _) = hub
        .api(Some(&other))
        .raw(reqwest::Method::PUT, "/api/agents/agent-7/checkpoint", Some(json!({"objective": "x"}).to_string()))
        .await?;
    assert_eq!(st, 403);
    let (st, _) = hub.api(Some(&other)).get("/api/agents/agent-7/checkpoint").await?;
    assert_eq!(st, 403, "nor read it");
    Ok(())
}

#[tokio::test]
async fn an_https_health_url_is_checked_against_its_ca() -> R {
    let a = Agent::new("native")?;
    a.wait_healthy("ok 1").await?;
    // A real TLS endpoint with a certificate from a private CA: a hub's /health.
    let hub = testkit::Hub::start_tls(bin(), "")?;
    let url = format!("{}/health", hub.url());
    let ca = hub.tls.as_ref().expect("a TLS hub").ca.display().to_string();
    a.branch("feature/v2", "2");
    let (ok, r) = a.upgrade("feature/v2", "true", &["--health", &url, "--health-ca-file", &ca])?;
    assert!(ok, "{r:#}");
    assert_eq!(r["outcome"], "upgraded");
    // A CA file that cannot be used is refused before anything changes.
    let junk = a.root.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate")?;
    let head = a.head();
    a.branch("feature/v3", "3");
    let (ok, r) = a.upgrade("feature/v3", "true", &["--health", &url, "--health-ca-file", junk.to_str().unwrap()])?;
    assert!(!ok);
    assert_eq!(r["outcome"], "refused", "{r:#}");
    assert!(r["error"].as_str().unwrap().contains("junk.pem"), "{r}");
    assert_eq!(a.head(), head);
    Ok(())
}
