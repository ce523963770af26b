//! The README's quick start for real agents, run as written (issue 18): its `sidecar.toml`
//! block and its command, from the folder of the config (a bare file name, as people type it),
//! with the real Claude Code CLI against a scripted model on loopback. Only what a person must
//! fill in (token, hub URL, their repository) is replaced.

use crate::bin;
use proto::api::TaskStatus;
use std::path::Path;
use testkit::anthropic::{self, ScriptedClaude};
use testkit::{Hub, Sidecar};

type R = anyhow::Result<()>;

/// The README's fenced block whose first line starts with `first`.
pub fn readme_block(first: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let mut blocks = readme.split("```").skip(1).step_by(2);
    let block = blocks.find(|b| b.lines().nth(1).is_some_and(|l| l.starts_with(first))).expect("the README block");
    block.split_once('\n').map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// `block` with the value of each `key = ...` line in `values` replaced.
pub fn fill_in(block: &str, values: &[(&str, String)]) -> String {
    block
        .lines()
        .map(|l| {
            match values.iter().find(|(k, _)| l.starts_with(&format!("{k} ")) || l.starts_with(&format!("{k}="))) {
                Some((k, v)) => format!("{k} = {}", testkit::toml_string(v)),
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `PATH` with the binary under test first, as `cargo install` would put it for the wake command.
pub fn path_with_agentcom() -> String {
    let dir = bin().canonicalize().unwrap().parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

#[tokio::test]
async fn the_readme_quick_start_runs_as_written_from_the_configs_folder() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let model =
        ScriptedClaude::start(anthropic::writes_file("hello.txt", "hello from claude\n", "Wrote hello.txt.")).await?;
    let token = hub.token("claude-1").await?;
    let repo = testkit::git::project(&root.path().join("project"))?;
    let block = readme_block("# sidecar.toml");
    let config =
        fill_in(&block, &[("token", token), ("hub_url", hub.ws_url()), ("repo_dir", repo.display().to_string())]);
    assert!(config.contains("agentcom run-agent --usage claude-stream -- claude -p"), "{config}");
    let here = root.path().join("beside-the-agent");
    std::fs::create_dir_all(&here)?;
    std::fs::write(here.join("sidecar.toml"), &config)?;
    let mut env = model.env(&root.path().join("home"));
    env.push(("PATH".into(), path_with_agentcom()));
    // `agentcom sidecar --config sidecar.toml`, typed in the folder of the file.
    let _s = Sidecar::launch(bin(), &here, Path::new("sidecar.toml"), Some(&here), &env)?;
    let id = hub.submit_text("Create hello.txt saying hello").await?;
    let done = serde_json::to_value(hub.wait_status(&id, TaskStatus::Completed).await?)?;
    assert_eq!(done["result"]["result"], "Wrote hello.txt.", "{done}");
    // In a worktree of its own: the file is committed on the task's branch, not in the checkout.
    let branch = format!("agentcom/{id}");
    assert_eq!(done["change"]["branch"], branch.as_str(), "{done}");
    assert_eq!(testkit::git::show(&repo, &branch, "hello.txt")?, "hello from claude");
    assert!(!repo.join("hello.txt").exists());
    let seen = model.requests();
    assert_eq!(seen.len(), 2, "a tool call, then the answer");
    let worktree = seen[0].cwd.clone().unwrap_or_default();
    assert!(worktree.ends_with(format!("worktrees/{id}")), "the agent ran in its worktree: {worktree:?}");
    assert!(seen[0].prompts().iter().any(|p| p == "Create hello.txt saying hello"));
    Ok(())
}

/// A mistake in the set-up (a folder or a program that is not there) fails the task at once
/// with that reason, not after a minute of silent wake retries (issue 18).
#[tokio::test]
async fn a_wake_that_cannot_run_fails_at_once_saying_why() -> R {
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("oops").await?;
    let events = testkit::Follower::start(hub.admin_client(), None).await?;
    let cases = [
        ("no-such-program --go", None, "wake_failed: command not found"),
        ("true", Some(root.path().join("gone")), "wake_failed: cannot start: repo_dir"),
    ];
    for (n, (wake, repo_dir, want)) in cases.into_iter().enumerate() {
        let mut cfg = testkit::sidecar_config("oops", &token, &hub.ws_url(), Some(wake));
        // Retries that would take a minute if they were made.
        cfg = testkit::merge_config(&cfg, "wake_retry_delays_ms = [20000, 20000, 20000]\n");
        if let Some(d) = &repo_dir {
            cfg.push_str(&format!("repo_dir = {}\n", testkit::toml_string(&d.display().to_string())));
        }
        let mut s = Sidecar::start(bin(), &root.path().join(format!("s{n}")), &cfg)?;
        let submit = proto::api::SubmitTask { max_retries: 0, ..proto::api::SubmitTask::new("anything") };
        let id = hub.submit(submit).await?;
        let t = hub.wait_status(&id, TaskStatus::DeadLetter).await?;
        let reason = t.task.last_error.clone().unwrap_or_default();
        assert!(reason.starts_with(want), "{want}: {reason}");
        let wakes = t.history.iter().filter(|h| h.reason.starts_with("wake_result")).count();
        assert_eq!(wakes, 1, "one wake, no retries: {:?}", t.history);
        // The failed wake is in the event stream as it is in the history.
        events
            .until("the failed wake's event", |e| {
                matches!(&e.kind, proto::api::EventKind::Wake { task_id, status, .. } if *task_id == id && status == "failed")
            })
            .await?;
        s.terminate()?;
    }
    Ok(())
}
