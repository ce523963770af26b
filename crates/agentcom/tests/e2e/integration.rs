//! From a finished task to a merged change (issue 21), with real git, a bare repository as the
//! remote, real sidecars in worktree mode pushing their branches, and the real integrator
//! (`agentcom integrate`): changes are rebased, checked and pushed by compare-and-swap, in the
//! order they finished; a conflict or a red check goes back to the agent with the feedback and
//! merges on its retry; a change waiting for review merges when a person approves it; the
//! integrator killed at each step merges each change exactly once and leaves no scratch worktree.

use crate::bin;
use crate::quickstart::path_with_agentcom;
use proto::api::{IntegrationStatus, SubmitTask, TaskDetail, TaskStatus};
use std::path::{Path, PathBuf};
use testkit::git::{bare_remote, files_at, git, show, worktrees};
use testkit::{eventually, integrator_config, sidecar_config, toml_string, Hub, Sidecar};

type R = anyhow::Result<()>;

/// A bare remote holding `main`, and a clone of it at `name`.
struct Remote {
    bare: PathBuf,
}

impl Remote {
    fn new(root: &Path) -> anyhow::Result<Remote> {
        Ok(Remote { bare: bare_remote(root)? })
    }

    fn clone_to(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        git(dir.parent().unwrap(), &["clone", "-q", &self.bare.display().to_string(), &dir.display().to_string()])?;
        Ok(dir.to_path_buf())
    }

    fn main(&self) -> anyhow::Result<String> {
        git(&self.bare, &["rev-parse", "main"])
    }
}

/// An agent in worktree mode on its own clone, pushing its branches, running `script`.
fn agent(hub: &Hub, token: &str, name: &str, root: &Path, remote: &Remote, script: &str) -> anyhow::Result<Sidecar> {
    let repo = remote.clone_to(&root.join(format!("{name}-clone")))?;
    let wake = format!("agentcom run-agent -- sh -c {}", shell_quote(script));
    let mut cfg = sidecar_config(name, token, &hub.ws_url(), Some(&wake));
    cfg.push_str(&format!(
        "repo_dir = {}\nworkspace = \"worktree\"\npush_remote = \"origin\"\n",
        toml_string(&repo.display().to_string())
    ));
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sidecar.toml"), cfg)?;
    let env = vec![("PATH".to_string(), path_with_agentcom())];
    Sidecar::launch(bin(), &dir, &dir.join("sidecar.toml"), None, &env)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The integrator on its own clone, with `extra` settings; `env` added (a crashing git).
fn integrator(
    hub: &Hub,
    token: &str,
    root: &Path,
    remote: &Remote,
    extra: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Sidecar, PathBuf, PathBuf)> {
    integrator_named("integrator", hub, token, root, remote, extra, env)
}

/// [`integrator`] as agent `name`, in a directory of that name.
fn integrator_named(
    name: &str,
    hub: &Hub,
    token: &str,
    root: &Path,
    remote: &Remote,
    extra: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Sidecar, PathBuf, PathBuf)> {
    let dir = root.join(name);
    let repo = if dir.join("clone").exists() {
        dir.join("clone")
    } else {
        std::fs::create_dir_all(&dir)?;
        remote.clone_to(&dir.join("clone"))?
    };
    let cfg = integrator_config(name, token, &hub.ws_url(), &repo, &dir.join("state"), extra);
    std::fs::write(dir.join("integrate.toml"), cfg)?;
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["integrate", "--log-format", "json", "--config"])
        .arg(dir.join("integrate.toml"))
        .env("AGENTCOM_LOG", "info");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let s = Sidecar::spawn(cmd, &dir)?;
    Ok((s, repo, dir))
}

async fn integration_of(hub: &Hub, id: &str) -> anyhow::Result<TaskDetail> {
    hub.task(id).await
}

/// Waits until `id`'s change shows `status`.
async fn wait_integration(hub: &Hub, id: &str, status: IntegrationStatus) -> anyhow::Result<TaskDetail> {
    eventually(&format!("{id}'s change to be {status}"), || async {
        let t = integration_of(hub, id).await.map_err(|e| e.to_string())?;
        match t.task.integration.as_ref().map(|i| i.status) {
            Some(s) if s == status => Ok(t),
            other => Err(format!("{other:?}: {:?}", t.task.integration)),
        }
    })
    .await
}

/// Writes the file the task's description names (`write NAME`), committed by the sidecar.
const WRITER: &str = r#"name=$(printf %s "$AGENTCOM_TASK_DESCRIPTION" | sed -n "s/^write \([a-z0-9.-]*\).*/\1/p"); echo "$AGENTCOM_TASK_ID" > "$name""#;

#[tokio::test]
async fn finished_changes_are_rebased_checked_and_merged_onto_main_in_order() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti) = (hub.token("a1").await?, hub.token("integrator").await?);
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, WRITER)?;
    let (_i, clone, dir) = integrator(&hub, &ti, root.path(), &remote, "check_command = \"test -f README.md\"\n", &[])?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(hub.submit_text(&format!("write f{n}.txt")).await?);
    }
    for id in &ids {
        let t = wait_integration(&hub, id, IntegrationStatus::Merged).await?;
        let i = t.task.integration.unwrap();
        assert_eq!((i.target.as_str(), i.attempts), ("main", 1));
        let main = remote.main()?;
        assert!(git(&remote.bare, &["merge-base", "--is-ancestor", i.merged_sha.as_deref().unwrap(), &main]).is_ok());
    }
    let files = files_at(&remote.bare, "main")?;
    for n in 0..3 {
        assert!(files.contains(&format!("f{n}.txt")), "{files:?}");
    }
    assert_eq!(git(&remote.bare, &["rev-list", "--merges", "main"])?, "", "linear history");
    // Each change once: three commits on top of the original two.
    assert_eq!(git(&remote.bare, &["rev-list", "--count", "main"])?, "5");
    let log = git(&remote.bare, &["log", "--format=%an|%cn", "-3", "main"])?;
    assert!(log.lines().all(|l| l == "agentcom|agentcom"), "{log}");
    // Nothing left in the queue, no scratch worktree left.
    let list = hub.admin_client().call(&proto::api::ListIntegrations::default()).await?;
    assert!(list.targets.iter().all(|t| t.changes.is_empty()), "{list:?}");
    assert_eq!(worktrees(&clone)?.len(), 1, "no scratch worktree left");
    assert!(std::fs::read_dir(dir.join("state/scratch"))?.next().is_none());
    Ok(())
}

/// Both agents change the same line: one merges, the other gets the conflict as feedback,
/// re-applies its edit on the new base, and merges on its second attempt.
#[tokio::test]
async fn a_conflict_goes_back_to_the_agent_with_the_paths_and_merges_on_its_retry() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti) = (hub.token("a1").await?, hub.token("integrator").await?);
    // On feedback, start again from the target's tip (as an agent resolving a conflict would).
    let script = r#"case "$AGENTCOM_TASK_JSON" in
        *integration_feedback*) git fetch -q origin main && git reset -q --hard origin/main; echo "fixed $AGENTCOM_TASK_ID" >> feedback.log ;;
      esac
      echo "$AGENTCOM_TASK_DESCRIPTION" > shared.txt"#;
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, script)?;
    let first = hub.submit_text("version one").await?;
    let second = hub.submit_text("version two").await?;
    let _i = integrator(&hub, &ti, root.path(), &remote, "check_command = \"true\"\n", &[])?;
    let done1 = wait_integration(&hub, &first, IntegrationStatus::Merged).await?;
    assert_eq!(done1.task.integration.unwrap().attempts, 1);
    let done2 = wait_integration(&hub, &second, IntegrationStatus::Merged).await?;
    let i = done2.task.integration.clone().unwrap();
    assert_eq!(i.attempts, 2, "merged on its second attempt");
    let history: Vec<String> = done2.history.iter().map(|h| h.reason.clone()).collect();
    assert!(history.iter().any(|r| r.contains("integration conflict on shared.txt")), "{history:?}");
    assert_eq!(show(&remote.bare, "main", "shared.txt")?, "version two");
    assert_eq!(git(&remote.bare, &["rev-list", "--merges", "main"])?, "");
    Ok(())
}

/// With review asked for, a tested change waits; the admin approves it (an agent may not), and
/// it merges; a rejected one goes back to the agent with the reason.
#[tokio::test]
async fn a_change_waits_for_review_merges_when_approved_and_goes_back_when_rejected() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti) = (hub.token("a1").await?, hub.token("integrator").await?);
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, WRITER)?;
    let _i = integrator(&hub, &ti, root.path(), &remote, "require_review = true\n", &[])?;
    let id = hub.submit_text("write reviewed.txt").await?;
    let waiting = wait_integration(&hub, &id, IntegrationStatus::WaitingReview).await?;
    assert!(waiting.task.integration.unwrap().tested_sha.is_some());
    assert!(!files_at(&remote.bare, "main")?.contains(&"reviewed.txt".to_string()), "not merged before the review");
    let denied = hub.client(Some(&t1)).call(&proto::api::ApproveTask { task_id: id.clone() }).await;
    assert!(format!("{denied:?}").contains("approving changes needs the admin token"), "{denied:?}");
    let out = std::process::Command::new(bin())
        .args(["task", "approve", &id])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_integration(&hub, &id, IntegrationStatus::Merged).await?;
    assert!(files_at(&remote.bare, "main")?.contains(&"reviewed.txt".to_string()));

    let other = hub.submit_text("write rejected.txt").await?;
    wait_integration(&hub, &other, IntegrationStatus::WaitingReview).await?;
    let r = hub
        .admin_client()
        .call(&proto::api::RejectTask { task_id: other.clone(), reason: "name it better".into() })
        .await?;
    assert_eq!(r.integration.status, IntegrationStatus::Rejected);
    // Back to the agent with the reason; it works again and the new change waits for review.
    let again = wait_integration(&hub, &other, IntegrationStatus::WaitingReview).await?;
    assert_eq!(again.task.integration.unwrap().attempts, 2);
    assert!(again.history.iter().any(|h| h.reason.contains("change rejected by admin: name it better")));
    Ok(())
}

/// A red check goes back to the agent with the check's output; after
/// `max_integration_attempts` the change waits for a person.
#[tokio::test]
async fn a_red_check_goes_back_with_its_output_and_then_waits_for_a_person() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti) = (hub.token("a1").await?, hub.token("integrator").await?);
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, "echo broken >> broken.txt")?;
    let check = "check_command = \"if test -f broken.txt; then echo tests fail: broken.txt; exit 1; fi\"\nmax_integration_attempts = 2\n";
    let _i = integrator(&hub, &ti, root.path(), &remote, check, &[])?;
    let id = hub.submit_text("break it").await?;
    let t = wait_integration(&hub, &id, IntegrationStatus::WaitingReview).await?;
    let i = t.task.integration.unwrap();
    assert_eq!(i.attempts, 2);
    assert!(i.output_tail.as_deref().unwrap_or("").contains("tests fail: broken.txt"), "{i:?}");
    assert!(t.history.iter().any(|h| h.reason.contains("the integration check failed; back to an agent")));
    assert!(!files_at(&remote.bare, "main")?.contains(&"broken.txt".to_string()), "main stays green");
    Ok(())
}

/// Changes tested together (`batch_max`), one of them breaking the check: the batch is
/// bisected, the changes before the bad one merge, the bad one goes back to its agent (and then
/// waits for a person), the rest merge together in one push. Two integrators serve the target and
/// never take two of its integrations at once; the check sees no token; `after_merge_command`
/// gets the merge in its environment.
#[tokio::test]
async fn a_batch_with_a_bad_change_is_bisected_and_the_good_changes_merge_once_under_two_integrators() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti, tj) = (hub.token("a1").await?, hub.token("integrator").await?, hub.token("second").await?);
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, WRITER)?;
    let names = ["f0.txt", "bad.txt", "f2.txt", "f3.txt"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(hub.submit_text(&format!("write {name}")).await?);
    }
    // All four finished and queued for main before any integrator runs: one batch is possible.
    for id in &ids {
        wait_integration(&hub, id, IntegrationStatus::Queued).await?;
    }
    let envs = root.path().join("check-env");
    let merges = root.path().join("after-merge.log");
    std::fs::create_dir_all(&envs)?;
    let extra = format!(
        "batch_max = 4\nmax_integration_attempts = 1\ncheck_command = {}\nafter_merge_command = {}\n",
        toml_string(&format!(
            "env > {}/$$; if test -f bad.txt; then echo bad.txt breaks it; exit 1; fi",
            envs.display()
        )),
        toml_string(&format!(
            "echo \"$AGENTCOM_INTEGRATED_TASKS|$AGENTCOM_MERGED_SHA|$AGENTCOM_TARGET\" >> {}",
            merges.display()
        )),
    );
    let before = git(&remote.bare, &["rev-list", "--count", "main"])?.parse::<u64>()?;
    let (_i, clone, _) = integrator(&hub, &ti, root.path(), &remote, &extra, &[])?;
    let (_j, _, _) = integrator_named("second", &hub, &tj, root.path(), &remote, &extra, &[])?;
    let bad = match wait_integration(&hub, &ids[1], IntegrationStatus::WaitingReview).await {
        Ok(b) => b,
        Err(e) => {
            for l in _i.logs().iter().chain(_j.logs().iter()) {
                eprintln!("LOG {l}");
            }
            return Err(e);
        }
    };
    assert!(bad.task.integration.unwrap().output_tail.unwrap_or_default().contains("bad.txt breaks it"));
    let mut shas = Vec::new();
    for id in [&ids[0], &ids[2], &ids[3]] {
        let t = wait_integration(&hub, id, IntegrationStatus::Merged).await?;
        shas.push(t.task.integration.unwrap().merged_sha.unwrap());
    }
    assert_ne!(shas[0], shas[1], "f0 merged before the bad change");
    assert_eq!(shas[1], shas[2], "f2 and f3 merged together");
    let files = files_at(&remote.bare, "main")?;
    assert!(!files.contains(&"bad.txt".to_string()), "main stays green: {files:?}");
    let after = git(&remote.bare, &["rev-list", "--count", "main"])?.parse::<u64>()?;
    assert_eq!(after, before + 3, "each good change once");
    assert_eq!(git(&remote.bare, &["rev-list", "--merges", "main"])?, "", "linear history");
    // Two integrators, one integration of main at a time: the hub's history of each shows it.
    let list = hub.admin_client().call(&proto::api::ListIntegrations::default()).await?;
    assert!(list.targets.iter().all(|t| t.changes.iter().all(|c| c.integrates == ids[1])), "{list:?}");
    // The check ran what the agents wrote without the integrator's token.
    let mut checks = 0;
    for e in std::fs::read_dir(&envs)? {
        let env = std::fs::read_to_string(e?.path())?;
        assert!(!env.contains(&ti) && !env.contains(&tj) && !env.contains("AGENTCOM_TOKEN"), "{env}");
        checks += 1;
    }
    assert!(checks >= 3, "{checks} checks");
    // after_merge_command: once per push, with what it merged.
    let log = std::fs::read_to_string(&merges)?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert_eq!(lines[0], format!("{}|{}|main", ids[0], shas[0]));
    assert_eq!(lines[1], format!("{} {}|{}|main", ids[2], ids[3], shas[1]));
    assert_eq!(worktrees(&clone)?.len(), 1, "no scratch worktree left");
    Ok(())
}

/// The integrator SIGKILLed at each step of an integration (fetch, the scratch worktree, the
/// replay, the check, before and after the push), then started again: each change is merged
/// once, main moves only to a checked commit, and no scratch worktree is left.
#[tokio::test]
async fn an_integrator_killed_at_each_step_merges_each_change_once_and_leaves_no_scratch() -> R {
    let root = tempfile::tempdir()?;
    let remote = Remote::new(root.path())?;
    let hub = Hub::start(bin(), "")?;
    let (t1, ti) = (hub.token("a1").await?, hub.token("integrator").await?);
    let _a = agent(&hub, &t1, "a1", root.path(), &remote, WRITER)?;
    let steps: &[(&[&str], bool)] = &[
        (&["fetch"], false),
        (&["worktree", "add"], true),
        (&["cherry-pick"], false),
        (&["cherry-pick"], true),
        (&["push"], false),
        (&["push"], true),
    ];
    type Case<'a> = (String, Option<(&'a [&'a str], bool)>);
    let mut cases: Vec<Case> = steps
        .iter()
        .map(|(s, a)| (format!("{} {}", s.join(" "), if *a { "after" } else { "before" }), Some((*s, *a))))
        .collect();
    cases.push(("check".into(), None));
    for (n, (name, crash)) in cases.into_iter().enumerate() {
        let case = root.path().join(format!("crash{n}"));
        std::fs::create_dir_all(&case)?;
        let mut marker = case.join("crashed");
        let (env, check) = match crash {
            Some((step, after)) => {
                let bin_dir = testkit::git::crashing_git(&case.join("bin"), step, after)?;
                marker = bin_dir.join("crashed");
                let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
                (vec![("PATH".to_string(), path)], "true".to_string())
            }
            // The check kills its integrator run once.
            None => (
                vec![],
                format!(
                    "if [ ! -e {m} ]; then : > {m}; kill -9 $PPID; sleep 5; fi",
                    m = case.join("crashed").display()
                ),
            ),
        };
        let extra = format!("check_command = {}\n", toml_string(&check));
        let (mut i, clone, dir) = integrator(&hub, &ti, root.path(), &remote, &extra, &env)?;
        let before = git(&remote.bare, &["rev-list", "--count", "main"])?.parse::<u64>()?;
        let id = hub.submit_text(&format!("write crash{n}.txt")).await?;
        eventually(&format!("{name}: the crash"), || async {
            if marker.exists() {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await?;
        // The whole integrator goes down with its run, and comes back.
        i.kill9();
        let (_i, _, _) = integrator(&hub, &ti, root.path(), &remote, "check_command = \"true\"\n", &[])?;
        let t = wait_integration(&hub, &id, IntegrationStatus::Merged).await?;
        let after = git(&remote.bare, &["rev-list", "--count", "main"])?.parse::<u64>()?;
        assert_eq!(after, before + 1, "{name}: merged exactly once");
        assert!(files_at(&remote.bare, "main")?.contains(&format!("crash{n}.txt")), "{name}");
        assert_eq!(t.task.status, TaskStatus::Completed, "{name}");
        eventually(&format!("{name}: no scratch worktree"), || async {
            let list = worktrees(&clone).map_err(|e| e.to_string())?;
            let scratch = std::fs::read_dir(dir.join("state/scratch")).map(|d| d.count()).unwrap_or(0);
            if list.len() == 1 && scratch == 0 {
                Ok(())
            } else {
                Err(format!("{list:?}, {scratch} in scratch"))
            }
        })
        .await?;
        drop(_i);
    }
    Ok(())
}

/// A task may not ask for the integrator's capability (an agent could otherwise have it merge a
/// branch of its choosing), and serial keys of the integration are the hub's.
#[tokio::test]
async fn submissions_cannot_pose_as_integration_tasks() -> R {
    let hub = Hub::start(bin(), "")?;
    for body in [
        serde_json::json!({"description": "x", "needed_capabilities": ["integrate:main"]}),
        serde_json::json!({"description": "x", "serial_key": "integrate:main"}),
        serde_json::json!({"description": "x", "kind": "integrate", "integrates": "task-1"}),
    ] {
        let (status, v) = hub.admin().post("/api/tasks", body.clone()).await?;
        assert_eq!((status, v["error"].as_str()), (422, Some("validation_failed")), "{body}: {v}");
    }
    let _ = SubmitTask::new("ok");
    Ok(())
}
