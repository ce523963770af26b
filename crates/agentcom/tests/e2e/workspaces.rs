//! Each task in its own git worktree and branch (issue 19), with real git, the real sidecar and
//! hub, and the real Claude Code CLI against a scripted model: the work comes back as a commit
//! on the task's branch and as a change at the hub, the main checkout is never touched, a retry
//! goes on from the branch, failures say which step failed, and what an agent leaves behind
//! (links out of the tree, huge files, a deleted `.git`, rewritten history, hooks) is committed
//! or refused without running anything it planted.

use crate::bin;
use crate::quickstart::path_with_agentcom;
use proto::api::{SubmitTask, TaskStatus};
use serde_json::json;
use std::path::{Path, PathBuf};
use testkit::anthropic::{self, ScriptedClaude, Seen, Turn};
use testkit::git::{files_at, git, project, show, worktrees};
use testkit::{eventually, sidecar_config, toml_string, Hub, Sidecar};

type R = anyhow::Result<()>;

/// Sidecar settings for worktree mode in `repo`, plus `extra` lines.
fn worktree_config(hub: &Hub, agent: &str, token: &str, wake: &str, repo: &Path, extra: &str) -> String {
    let mut c = sidecar_config(agent, token, &hub.ws_url(), Some(wake));
    c.push_str(&format!("repo_dir = {}\nworkspace = \"worktree\"\n", toml_string(&repo.display().to_string())));
    c.push_str(extra);
    c
}

/// A shell agent through `agentcom run-agent`: `script` runs in the task's working directory.
fn shell_agent(script: &str) -> String {
    format!("agentcom run-agent -- sh -c {}", shell_quote(script))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn env_with_agentcom() -> Vec<(String, String)> {
    vec![("PATH".into(), path_with_agentcom())]
}

/// Waits until `repo` has no worktree but itself (the release runs after the hub's ack).
async fn no_worktrees_left(repo: &Path) -> anyhow::Result<()> {
    let main = repo.canonicalize()?.display().to_string();
    eventually("every worktree removed", || async {
        let list = worktrees(repo).map_err(|e| e.to_string())?;
        if list == [main.clone()] {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    })
    .await
}

/// The task folders left in `dir` (the sidecar's lock file aside).
fn folders(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
        })
        .unwrap_or_default()
}

/// The scripted model: write `hello.txt` with Write, then `second.txt` with Bash, then done.
fn write_then_bash(s: &Seen) -> Turn {
    let cwd = s.cwd.clone().unwrap_or_default();
    match s.tool_results().len() {
        0 => Turn::Tool {
            name: "Write".into(),
            input: json!({"file_path": cwd.join("hello.txt"), "content": "hello from claude\n"}),
        },
        1 => Turn::Tool {
            name: "Bash".into(),
            input: json!({"command": "printf 'two\\n' > second.txt && git status --short", "description": "write second.txt"}),
        },
        _ => Turn::Text("Wrote hello.txt and second.txt.".into()),
    }
}

#[tokio::test]
async fn a_real_claude_code_task_comes_back_as_a_commit_on_its_own_branch() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let model = ScriptedClaude::start(write_then_bash).await?;
    let token = hub.token("claude-1").await?;
    let repo = project(&root.path().join("project"))?;
    let main_head = git(&repo, &["rev-parse", "HEAD"])?;
    let wake = "agentcom run-agent --usage claude-json -- claude -p \"$AGENTCOM_TASK_DESCRIPTION\" \
                --permission-mode acceptEdits --allowedTools Bash --output-format json";
    let cfg = worktree_config(&hub, "claude-1", &token, wake, &repo, "");
    let mut env = model.env(&root.path().join("home"));
    env.push(("PATH".into(), path_with_agentcom()));
    let dir = root.path().join("sidecar");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sidecar.toml"), &cfg)?;
    let s = Sidecar::launch(bin(), &dir, &dir.join("sidecar.toml"), None, &env)?;
    let id = hub.submit_text("Add hello.txt\n\nSay hello in it.").await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;

    // The agent ran in the task's worktree, on the task's branch.
    let seen = model.requests();
    let worktree = s.state().join("worktrees").join(&id);
    assert_eq!(seen[0].cwd.as_deref(), Some(worktree.canonicalize().unwrap_or(worktree.clone()).as_path()));
    let branch = format!("agentcom/{id}");
    let change = done.task.change.clone().expect("the change");
    assert_eq!(change.branch, branch);
    assert_eq!(change.base_sha, main_head);
    assert_eq!((change.commits, change.files_changed, change.insertions), (1, 2, 2), "{change:?}");
    assert_eq!(change.files, ["hello.txt", "second.txt"]);
    assert!(change.patch.is_none(), "the task shows the change without its patch");
    // The commit: on the branch, with the task's first line and id, by the configured author.
    assert_eq!(git(&repo, &["rev-parse", &branch])?, change.head_sha);
    assert_eq!(show(&repo, &branch, "hello.txt")?, "hello from claude");
    assert_eq!(show(&repo, &branch, "second.txt")?, "two");
    let message = git(&repo, &["log", "-1", "--format=%s%n%b%n%an <%ae>", &branch])?;
    assert!(message.starts_with("Add hello.txt\n"), "{message}");
    assert!(message.contains(&format!("agentcom-task: {id}")), "{message}");
    assert!(message.ends_with("agentcom <agentcom@localhost>"), "{message}");
    assert_eq!(git(&repo, &["rev-parse", &format!("refs/agentcom/attempts/{id}/1")])?, change.head_sha);
    // The main checkout is untouched: same commit, same branch, clean.
    assert_eq!(git(&repo, &["rev-parse", "HEAD"])?, main_head);
    assert_eq!(git(&repo, &["symbolic-ref", "--short", "HEAD"])?, "main");
    assert_eq!(git(&repo, &["status", "--porcelain"])?, "");
    assert!(!repo.join("hello.txt").exists());
    no_worktrees_left(&repo).await?;
    assert!(folders(&s.state().join("worktrees")).is_empty());

    // The patch: from the API, and from the CLI as `git apply` reads it.
    let diff = hub.admin_client().call(&proto::api::GetTaskDiff { task_id: id.clone() }).await?;
    assert!(!diff.cut && diff.generation == Some(done.task.generation));
    assert!(diff.patch.contains("+hello from claude"), "{}", diff.patch);
    let out = std::process::Command::new(bin())
        .args(["task", "diff", &id])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout.clone())?, diff.patch);
    let patch = root.path().join("task.patch");
    std::fs::write(&patch, &out.stdout)?;
    git(&repo, &["apply", "--check", &patch.display().to_string()])?;
    Ok(())
}

/// A failed attempt's work is committed on the branch and its worktree kept; the retry runs
/// there again and goes on from it, with the worktree's facts in its environment.
#[tokio::test]
async fn a_retry_goes_on_from_the_branch_the_failed_attempt_left() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("w1").await?;
    let repo = project(&root.path().join("project"))?;
    let wake = shell_agent(
        r#"printf '%s %s %s\n' "$AGENTCOM_BRANCH" "$AGENTCOM_BASE_SHA" "$(pwd -P)" > env.txt
           if [ -f a.txt ]; then echo second >> a.txt; else echo first > a.txt; exit 1; fi"#,
    );
    let cfg = worktree_config(&hub, "w1", &token, &wake, &repo, "");
    let _s = Sidecar::launch(
        bin(),
        &root.path().join("s"),
        &write(&root.path().join("s"), &cfg)?,
        None,
        &env_with_agentcom(),
    )?;
    let id = hub.submit(SubmitTask { max_retries: 1, ..SubmitTask::new("Count to two") }).await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    let branch = format!("agentcom/{id}");
    assert_eq!(show(&repo, &branch, "a.txt")?, "first\nsecond");
    let base = git(&repo, &["rev-parse", "main"])?;
    let env = show(&repo, &branch, "env.txt")?;
    assert!(env.starts_with(&format!("{branch} {base} ")), "{env}");
    assert!(env.ends_with(&format!("/worktrees/{id}")), "the agent ran in its worktree: {env}");
    let change = done.task.change.expect("the change");
    assert_eq!(change.commits, 2, "one commit per attempt: {change:?}");
    assert!(git(&repo, &["rev-parse", &format!("refs/agentcom/attempts/{id}/1")]).is_ok());
    let failed = done.history.iter().any(|h| h.to == TaskStatus::WaitingRetry && h.reason.contains("exit"));
    assert!(failed, "{:?}", done.history);
    no_worktrees_left(&repo).await?;
    Ok(())
}

fn write(dir: &Path, cfg: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// The reason a task was dead-lettered with, once it is.
async fn dead_reason(hub: &Hub, task: SubmitTask) -> anyhow::Result<String> {
    let id = hub.submit(SubmitTask { max_retries: 0, ..task }).await?;
    Ok(hub.wait_status(&id, TaskStatus::DeadLetter).await?.task.last_error.unwrap_or_default())
}

#[tokio::test]
async fn a_worktree_that_cannot_be_set_up_fails_the_attempt_saying_which_and_the_sidecar_goes_on() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("w1").await?;
    let repo = project(&root.path().join("project"))?;
    // `.worktreeinclude`: an ignored `.env` each worktree gets a copy of.
    std::fs::write(repo.join(".gitignore"), ".env\nset-up\n")?;
    std::fs::write(repo.join(".worktreeinclude"), ".env\n")?;
    std::fs::write(repo.join(".env"), "SECRET=1\n")?;
    git(&repo, &["add", ".gitignore", ".worktreeinclude"])?;
    git(&repo, &["commit", "-q", "-m", "include"])?;
    let setup = r#"case "$AGENTCOM_TASK_DESCRIPTION" in fail*) echo "npm ci: broken" >&2; exit 3;; slow*) sleep 30;; esac; touch set-up"#;
    let wake = shell_agent(
        r#"case "$AGENTCOM_TASK_DESCRIPTION" in agent-fails*) echo half > half.txt; exit 1;; esac
           test -f set-up && test "$(cat .env)" = SECRET=1 && echo ok > ok.txt"#,
    );
    let extra = format!("setup_command = {}\nsetup_timeout_ms = 300\nmax_worktrees = 1\n", toml_string(setup));
    let cfg = worktree_config(&hub, "w1", &token, &wake, &repo, &extra);
    let dir = root.path().join("s");
    let s = Sidecar::launch(bin(), &dir, &write(&dir, &cfg)?, None, &env_with_agentcom())?;

    let r = dead_reason(&hub, SubmitTask::new("fail the setup")).await?;
    assert_eq!(r, "worktree_setup_failed: setup_command exit status: 3: npm ci: broken");
    let r = dead_reason(&hub, SubmitTask::new("slow setup")).await?;
    assert_eq!(r, "worktree_setup_failed: setup_command did not finish within 300 ms");
    let mut on_missing = SubmitTask::new("from a branch that is not there");
    on_missing.extra.insert("branch".into(), json!("no-such-branch"));
    let r = dead_reason(&hub, on_missing).await?;
    assert_eq!(r, "worktree_setup_failed: the base branch no-such-branch does not exist in repo_dir");
    let mut hostile = SubmitTask::new("from a branch that is an option");
    hostile.extra.insert("branch".into(), json!("--upload-pack=touch /tmp/x"));
    let r = dead_reason(&hub, hostile).await?;
    assert!(r.starts_with("worktree_setup_failed: the task's branch") && r.ends_with("is not a branch name"), "{r}");

    // It goes on serving: set up (setup command, `.env` copied), run, committed.
    let id = hub.submit_text("fine").await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!(done.task.change.expect("a change").files, ["ok.txt"], "set-up and .env are not committed");

    // A failed attempt's worktree is kept; with max_worktrees = 1 the next task cannot have one.
    let r = dead_reason(&hub, SubmitTask::new("agent-fails")).await?;
    assert!(r.contains("exit"), "{r}");
    let r = dead_reason(&hub, SubmitTask::new("one too many")).await?;
    assert!(r.starts_with("worktree_setup_failed: max_worktrees (1) reached: 1 worktrees in"), "{r}");
    let kept = folders(&s.state().join("worktrees"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(s.state().join("worktrees").join(&kept[0]).join("half.txt"))?, "half\n");
    Ok(())
}

/// The agent is hostile input: links out of the tree, names that are not UTF-8, thousands of
/// files, a deleted `.git`, hooks and an fsmonitor planted in the repository, a rewritten
/// history, a file over the size limit. Each is committed as git keeps it or refused with a
/// reason; nothing planted runs, no link is followed, and the sidecar goes on serving.
#[tokio::test]
async fn what_a_hostile_agent_leaves_is_committed_or_refused_and_nothing_it_planted_runs() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("w1").await?;
    let repo = project(&root.path().join("project"))?;
    let mark = root.path().join("planted-code-ran");
    let wake = shell_agent(&format!(
        r#"case "$AGENTCOM_TASK_DESCRIPTION" in
             links*)
               ln -s /etc/passwd passwd-link; ln -s / root-link; touch "$(printf 'bad\377name')"
               mkdir many; i=0; while [ $i -lt 2000 ]; do echo $i > many/$i; i=$((i+1)); done
               common=$(git rev-parse --git-common-dir)
               printf '#!/bin/sh\ntouch {mark}\n' > "$common/hooks/pre-commit"; chmod +x "$common/hooks/pre-commit"
               git config core.fsmonitor 'touch {mark}'; git config core.hooksPath "$common/hooks"
               printf '* filter=evil\n' > .gitattributes; git config filter.evil.clean 'touch {mark}'
               rm .git ;;
             rewrite*)
               git checkout -q --orphan rewritten && git rm -rqf . && echo new > only.txt ;;
             huge*)
               head -c 3000000 /dev/zero > big.bin ;;
           esac"#,
        mark = mark.display()
    ));
    let cfg = worktree_config(&hub, "w1", &token, &wake, &repo, "max_commit_file_bytes = 1000000\n");
    let dir = root.path().join("s");
    let s = Sidecar::launch(bin(), &dir, &write(&dir, &cfg)?, None, &env_with_agentcom())?;

    let id = hub.submit_text("links and more").await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    let branch = format!("agentcom/{id}");
    let change = done.task.change.expect("a change");
    assert!(change.files_changed >= 2003, "{change:?}");
    assert_eq!(change.files.len(), proto::MAX_CHANGE_FILES, "the first 200 paths");
    let tree = git(&repo, &["ls-tree", &branch])?;
    for link in ["passwd-link", "root-link"] {
        let line = tree.lines().find(|l| l.ends_with(link)).unwrap_or_default();
        assert!(line.starts_with("120000 blob"), "committed as a link, not followed: {tree}");
    }
    assert_eq!(show(&repo, &branch, "root-link")?, "/");
    assert!(files_at(&repo, &branch)?.iter().any(|f| f.starts_with("\"bad\\377name\"")), "the non-UTF-8 name");
    assert_eq!(files_at(&repo, &branch)?.iter().filter(|f| f.starts_with("many/")).count(), 2000);
    assert!(!mark.exists(), "a hook, fsmonitor or filter the agent planted ran");
    // The agent's own git calls would run them (that is its business): taken out for the rest.
    for key in ["core.fsmonitor", "core.hooksPath", "filter.evil.clean"] {
        git(&repo, &["config", "--unset", key])?;
    }

    let id = hub.submit_text("rewrite the history").await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    let branch = format!("agentcom/{id}");
    assert_eq!(files_at(&repo, &branch)?, ["only.txt"]);
    assert_eq!(done.task.change.expect("a change").head_sha, git(&repo, &["rev-parse", &branch])?);

    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("huge file") }).await?;
    let t = hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    let reason = t.task.last_error.unwrap_or_default();
    assert!(
        reason.contains("workspace_refused: big.bin is 3000000 bytes, over max_commit_file_bytes (1000000)"),
        "{reason}"
    );
    // Nothing lost: the file stays in the kept worktree.
    let big = s.state().join("worktrees").join(&id).join("big.bin");
    assert_eq!(std::fs::metadata(&big)?.len(), 3_000_000);
    assert!(!mark.exists());
    Ok(())
}

/// A worktree no task holds (a crash of an older sidecar, a person's experiment) is committed
/// to `refs/agentcom/orphans/<name>` before it is removed; nothing uncommitted is deleted.
#[tokio::test]
async fn a_worktree_no_task_holds_is_saved_to_an_orphan_ref_then_removed() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("w1").await?;
    let repo = project(&root.path().join("project"))?;
    let dir = root.path().join("s");
    let stray = dir.join("state/worktrees/stray");
    std::fs::create_dir_all(stray.parent().unwrap())?;
    git(&repo, &["worktree", "add", "-q", "-b", "someone/stray", &stray.display().to_string()])?;
    std::fs::write(stray.join("unsaved.txt"), "precious\n")?;
    let cfg = worktree_config(&hub, "w1", &token, "true", &repo, "");
    let _s = Sidecar::launch(bin(), &dir, &write(&dir, &cfg)?, None, &env_with_agentcom())?;
    no_worktrees_left(&repo).await?;
    assert!(!stray.exists());
    assert_eq!(show(&repo, "refs/agentcom/orphans/stray", "unsaved.txt")?, "precious");
    assert_eq!(
        git(&repo, &["rev-parse", "someone/stray"])?,
        git(&repo, &["rev-parse", "main"])?,
        "its branch is not moved"
    );
    Ok(())
}

/// `git worktree remove` fails now and then when another sidecar changes the same repository's
/// worktrees at that moment: the finished task's worktree is released on a later try, not left
/// to the hourly janitor.
#[tokio::test]
async fn a_release_that_git_refuses_once_is_tried_again() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("w1").await?;
    let repo = project(&root.path().join("project"))?;
    let dir = root.path().join("s");
    let fake = testkit::git::failing_git(&root.path().join("fake"), &["worktree", "remove"])?;
    let path = format!("{}:{}", fake.display(), path_with_agentcom());
    let cfg = worktree_config(&hub, "w1", &token, &shell_agent("echo done > out.txt"), &repo, "");
    let _s = Sidecar::launch(bin(), &dir, &write(&dir, &cfg)?, None, &[("PATH".into(), path)])?;
    let id = hub.submit_text("write out.txt").await?;
    hub.wait_status(&id, TaskStatus::Completed).await?;
    no_worktrees_left(&repo).await?;
    assert!(fake.join("crashed").exists(), "the first release failed");
    assert!(folders(&dir.join("state/worktrees")).is_empty());
    assert_eq!(show(&repo, &format!("agentcom/{id}"), "out.txt")?, "done");
    Ok(())
}

/// A second sidecar on the same `worktrees_dir` would remove the first one's worktrees as
/// strays: it is refused at start, and so is a `repo_dir` that is not a repository.
#[tokio::test]
async fn a_shared_worktrees_dir_or_a_repo_dir_that_is_no_repository_is_refused_at_start() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let repo = project(&root.path().join("project"))?;
    let shared = format!("worktrees_dir = {}\n", toml_string(&root.path().join("wt").display().to_string()));
    let t1 = hub.token("w1").await?;
    let _first = Sidecar::launch(
        bin(),
        &root.path().join("s1"),
        &write(&root.path().join("s1"), &worktree_config(&hub, "w1", &t1, "true", &repo, &shared))?,
        None,
        &[],
    )?;
    let t2 = hub.token("w2").await?;
    for (name, repo_dir, extra) in
        [("s2", repo.clone(), shared.clone()), ("s3", root.path().to_path_buf(), String::new())]
    {
        let cfg = worktree_config(&hub, "w2", &t2, "true", &repo_dir, &extra);
        let path = write(&root.path().join(name), &cfg)?;
        let out = std::process::Command::new(bin()).args(["sidecar", "--config"]).arg(&path).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let want = if name == "s2" { "is in use by another sidecar" } else { "is not a git repository" };
        assert!(err.contains(want), "{err}");
    }
    Ok(())
}

/// Every git step of a task's worktree is a crash point: the sidecar is SIGKILLed just before
/// and just after each (`worktree add`, the setup command, `add`, `commit`, `update-ref`,
/// `push`, `worktree remove`), started again, and the task must end once, its one wake run
/// once, its work on the branch (and the remote), and no worktree or `git worktree` entry left.
#[tokio::test]
async fn a_sidecar_killed_at_each_git_step_loses_no_commit_runs_nothing_twice_and_leaks_no_worktree() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let repo = project(&root.path().join("project"))?;
    let remote = root.path().join("remote.git");
    git(root.path(), &["init", "-q", "--bare", &remote.display().to_string()])?;
    git(&repo, &["remote", "add", "origin", &remote.display().to_string()])?;
    git(&repo, &["push", "-q", "origin", "main"])?;
    let steps: &[&[&str]] =
        &[&["worktree", "add"], &["add", "-A"], &["commit"], &["update-ref"], &["push"], &["worktree", "remove"]];
    // (name, the git step and whether after it; none: the setup command crashes)
    type Case<'a> = (String, Option<(&'a [&'a str], bool)>);
    let mut cases: Vec<Case> = Vec::new();
    for step in steps {
        for after in [false, true] {
            cases
                .push((format!("{} {}", step.join(" "), if after { "after" } else { "before" }), Some((*step, after))));
        }
    }
    cases.push(("setup command".into(), None));
    for (n, (name, crash)) in cases.into_iter().enumerate() {
        let case = root.path().join(format!("case{n}"));
        let runs = case.join("runs");
        let token = hub.token(&format!("c{n}")).await?;
        let wake = shell_agent(&format!("echo run >> {}; echo {n} > work.txt", runs.display()));
        // The setup command kills its sidecar once (it runs as the sidecar's child).
        let once = case.join("setup-crashed");
        let setup = format!("if [ ! -e {o} ]; then : > {o}; kill -9 $PPID; sleep 5; fi", o = once.display());
        let mut extra = "push_remote = \"origin\"\n".to_string();
        if crash.is_none() {
            extra.push_str(&format!("setup_command = {}\n", toml_string(&setup)));
        }
        let cfg = worktree_config(&hub, &format!("c{n}"), &token, &wake, &repo, &extra);
        let config = write(&case, &cfg)?;
        let mut env = env_with_agentcom();
        let marker = match crash {
            Some((step, after)) => {
                let bin_dir = testkit::git::crashing_git(&case.join("crash"), step, after)?;
                env[0].1 = format!("{}:{}", bin_dir.display(), env[0].1);
                bin_dir.join("crashed")
            }
            None => once.clone(),
        };
        let mut s = Sidecar::launch(bin(), &case, &config, None, &env)?;
        let id = hub
            .submit(SubmitTask { assign_to: Some(format!("c{n}")), ..SubmitTask::new(format!("case {name}")) })
            .await?;
        eventually(&format!("{name}: the crash"), || async {
            match marker.exists() {
                true => Ok(()),
                false => Err(format!("logs {:?}", s.logs().last())),
            }
        })
        .await?;
        // (Killed by the crashing step already; this reaps it.)
        s.kill9();
        let _s = Sidecar::launch(bin(), &case, &config, None, &env)?;
        let done = hub.wait_status(&id, TaskStatus::Completed).await?;
        let branch = format!("agentcom/{id}");
        assert_eq!(show(&repo, &branch, "work.txt")?, n.to_string(), "{name}");
        assert_eq!(std::fs::read_to_string(&runs)?, "run\n", "{name}: the wake ran once");
        let ended = done.history.iter().filter(|h| h.to == TaskStatus::Completed).count();
        assert_eq!(ended, 1, "{name}: {:?}", done.history);
        assert_eq!(
            done.task.change.as_ref().map(|c| c.head_sha.clone()),
            Some(git(&repo, &["rev-parse", &branch])?),
            "{name}"
        );
        assert_eq!(git(&remote, &["rev-parse", &branch])?, git(&repo, &["rev-parse", &branch])?, "{name}: pushed");
        no_worktrees_left(&repo).await?;
        let wt = case.join("state/worktrees");
        eventually(&format!("{name}: the worktree folder removed"), || async {
            let left = folders(&wt);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await?;
    }
    Ok(())
}

/// `GET /api/tasks/:id/diff` as each role sees it: JSON or the bare patch, refused to an agent
/// that neither submitted nor holds the task (whose view of the task leaves the change out);
/// a change the hub cannot take (a sha that is not one, a patch over the bound) is refused
/// with the frame, and the task stays as it was.
#[tokio::test]
async fn the_diff_route_serves_json_or_the_patch_to_those_who_may_read_it() -> R {
    let hub = Hub::start(bin(), "")?;
    let mut a = hub.agent("a1", &[]).await?;
    let id = hub.submit_text("change something").await?;
    let (_, generation) = a.take_task().await?;
    let change = json!({"branch": "agentcom/x", "base_sha": "a".repeat(40), "head_sha": "b".repeat(40), "commits": 1,
        "files_changed": 1, "insertions": 1, "deletions": 0, "files": ["x.txt"]});
    let mut bad = change.clone();
    bad["head_sha"] = json!("HEAD; rm -rf /");
    let mut huge = change.clone();
    huge["patch"] = json!("+".repeat(proto::MAX_PATCH_BYTES + 1));
    for wrong in [bad, huge] {
        let frame =
            json!({"type": "task_complete", "task_id": id, "generation": generation, "result": {}, "change": wrong});
        a.send(frame).await?;
        let e = a.expect("error").await?;
        assert_eq!(e["error"], "validation_failed", "{e}");
    }
    assert_eq!(hub.task(&id).await?.task.status, TaskStatus::Working);
    let mut good = change.clone();
    good["patch"] = json!("diff --git a/x.txt b/x.txt\n+\u{1b}[31mred\n");
    good["patch_cut"] = json!(true);
    let frame = json!({"type": "task_complete", "task_id": id, "generation": generation, "result": {}, "change": good});
    a.send(frame).await?;
    a.expect("task_ack").await?;

    let (status, v) = hub.admin().get(&format!("/api/tasks/{id}/diff")).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["cut"].as_bool(), v["generation"].as_u64()), (Some(true), Some(generation)), "{v}");
    assert_eq!(v["change"]["head_sha"], "b".repeat(40));
    assert!(v["change"].get("patch").is_none(), "{v}");
    let (status, raw) = hub.admin().get(&format!("/api/tasks/{id}/diff?format=patch")).await?;
    assert_eq!((status, raw.as_str()), (200, Some("diff --git a/x.txt b/x.txt\n+\u{1b}[31mred\n")));
    let (status, v) = hub.admin().get(&format!("/api/tasks/{id}/diff?format=html")).await?;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_query")), "{v}");
    // The holder reads it; another agent neither reads the diff nor sees the change.
    let holder = hub.token("a1").await?;
    assert_eq!(hub.api(Some(&holder)).get(&format!("/api/tasks/{id}/diff")).await?.0, 200);
    let other = hub.token("a2").await?;
    let (status, v) = hub.api(Some(&other)).get(&format!("/api/tasks/{id}/diff")).await?;
    assert_eq!((status, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    let (_, t) = hub.api(Some(&other)).get(&format!("/api/tasks/{id}")).await?;
    assert!(t["change"].is_null(), "{t}");
    let (_, t) = hub.admin().get(&format!("/api/tasks/{id}")).await?;
    assert_eq!(t["change"]["files"], json!(["x.txt"]), "{t}");
    // A task that changed nothing: `change: null`, an empty patch.
    let id2 = hub.submit_text("change nothing").await?;
    let (_, g2) = a.take_task().await?;
    a.complete(&id2, g2).await?;
    let (status, v) = hub.admin().get(&format!("/api/tasks/{id2}/diff")).await?;
    assert_eq!((status, v["change"].is_null(), v["patch"].as_str()), (200, true, Some("")), "{v}");
    assert_eq!(hub.admin().get("/api/tasks/nope/diff").await?.0, 404);
    Ok(())
}
