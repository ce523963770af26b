//! When the model provider says "stop" (issue 20), with the real Claude Code and Codex CLIs
//! against scripted model APIs on loopback: a limit is not a failure, the agent makes no model
//! request until the reset, the task resumes its conversation in the same worktree afterwards and
//! completes with no retry used; an attempt over its token cap is stopped; an operator lifts a
//! limit by hand.

use crate::bin;
use crate::quickstart::path_with_agentcom;
use proto::api::{AgentStatus, SubmitTask, TaskStatus};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use testkit::anthropic::{self, ScriptedClaude, Seen, Turn};
use testkit::git::{project, show};
use testkit::openai::{self, ScriptedCodex};
use testkit::{eventually, sidecar_config, toml_string, Hub, Sidecar};

type R = anyhow::Result<()>;

fn sidecar_in(dir: &std::path::Path, cfg: &str, env: &[(String, String)]) -> anyhow::Result<Sidecar> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("sidecar.toml"), cfg)?;
    Sidecar::launch(bin(), dir, &dir.join("sidecar.toml"), None, env)
}

fn epoch_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The scripted model's log: when each request came, and whether it was refused.
type Log = Arc<Mutex<Vec<(Instant, bool)>>>;

#[tokio::test]
async fn a_usage_limit_parks_the_agent_until_the_reset_and_the_task_resumes_its_conversation() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "limit_wake_spread_ms = 0\n")?;
    let token = hub.token("claude-1").await?;
    let repo = project(&root.path().join("project"))?;
    // The model writes a file, then the account hits its limit (reset a few seconds away);
    // after the reset it answers.
    let reset_at = Arc::new(AtomicU64::new(0));
    let log: Log = Arc::default();
    let (r, l) = (reset_at.clone(), log.clone());
    let model = ScriptedClaude::start(move |s: &Seen| {
        let refused = if s.tool_results().is_empty() {
            false
        } else {
            if r.load(Ordering::SeqCst) == 0 {
                r.store(epoch_s() + 3, Ordering::SeqCst);
            }
            epoch_s() < r.load(Ordering::SeqCst)
        };
        l.lock().unwrap().push((Instant::now(), refused));
        match (s.tool_results().is_empty(), refused) {
            (true, _) => Turn::Tool {
                name: "Write".into(),
                input: json!({"file_path": s.cwd.clone().unwrap_or_default().join("hello.txt"), "content": "hello\n"}),
            },
            (false, true) => Turn::usage_limit(r.load(Ordering::SeqCst)),
            (false, false) => Turn::Text("Done after the limit.".into()),
        }
    })
    .await?;
    let wake = "agentcom run-agent --usage claude-stream -- claude -p \"$AGENTCOM_TASK_DESCRIPTION\" --permission-mode acceptEdits";
    let mut cfg = sidecar_config("claude-1", &token, &hub.ws_url(), Some(wake));
    cfg.push_str(&format!(
        "repo_dir = {}\nworkspace = \"worktree\"\naccount = \"team-a\"\n",
        toml_string(&repo.display().to_string())
    ));
    let mut env = model.env_oauth(&root.path().join("home"));
    env.push(("PATH".into(), path_with_agentcom()));
    let s = sidecar_in(&root.path().join("s"), &cfg, &env)?;
    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("Write hello.txt") }).await?;

    // The limit: the task waits (no failure counted), the agent is limited until the reset. A
    // task is queued as well before the sidecar has identified, so wait for the limited attempt.
    let waiting = testkit::eventually_within(testkit::AGENT_WAIT, "the task queued after its limit", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        if t.task.status == TaskStatus::Queued && t.task.limited_attempts > 0 {
            Ok(t)
        } else {
            Err(format!("{:?}", t.task))
        }
    })
    .await?;
    assert_eq!((waiting.task.failures, waiting.task.limited_attempts), (0, 1), "{:?}", waiting.history);
    let reset_ms = reset_at.load(Ordering::SeqCst) * 1000;
    assert_eq!(waiting.task.not_before, Some(reset_ms), "the reset the CLI's stream gave");
    let a = hub.admin_client().call(&proto::api::GetAgent { agent_id: "claude-1".into() }).await?;
    assert_eq!(
        (a.status, a.limited_until, a.account.as_deref()),
        (AgentStatus::Limited, Some(reset_ms), Some("team-a"))
    );

    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!((done.task.failures, done.task.attempts), (0, 2), "0 retries used");
    assert_eq!(done.task.result.as_ref().and_then(|r| r["result"].as_str()), Some("Done after the limit."));
    // No model request while the limit held.
    let log = log.lock().unwrap().clone();
    let limited_at = log.iter().find(|(_, refused)| *refused).map(|(t, _)| *t).expect("the limit");
    let after: Vec<&(Instant, bool)> = log.iter().filter(|(t, _)| *t > limited_at).collect();
    assert!(after.iter().all(|(_, refused)| !refused), "0 requests during the limit window: {log:?}");
    // The second attempt resumed the first one's conversation, in the same worktree.
    let seen = model.requests();
    let first = &seen[0];
    let resumed = seen.iter().rev().find(|r| r.prompts().len() >= 2).expect("a resumed request");
    assert_eq!(resumed.session, first.session, "the same Claude Code session");
    assert!(!resumed.tool_results().is_empty(), "it carries the first attempt's Write");
    assert_eq!(resumed.cwd, first.cwd, "in the same worktree");
    let branch = format!("agentcom/{id}");
    assert_eq!(show(&repo, &branch, "hello.txt")?, "hello");
    let sessions = &done.task.sessions;
    assert!(
        sessions.len() == 2 && sessions.iter().all(|x| Some(&x.session_id) == first.session.as_ref()),
        "{sessions:?}"
    );
    drop(s);
    Ok(())
}

#[tokio::test]
async fn an_attempt_over_its_token_cap_is_stopped_and_the_task_fails_with_budget_exceeded() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("claude-1").await?;
    // A model that never finishes: a shell command after another.
    let model = ScriptedClaude::start(|s: &Seen| Turn::Tool {
        name: "Bash".into(),
        input: json!({"command": format!("echo step {}", s.tool_results().len()), "description": "a step"}),
    })
    .await?;
    let wake = "agentcom run-agent --usage claude-stream -- claude -p \"$AGENTCOM_TASK_DESCRIPTION\" --permission-mode acceptEdits --allowedTools Bash";
    let cfg = sidecar_config("claude-1", &token, &hub.ws_url(), Some(wake));
    let mut env = model.env(&root.path().join("home"));
    env.push(("PATH".into(), path_with_agentcom()));
    let s = sidecar_in(&root.path().join("s"), &cfg, &env)?;
    let id = hub.submit(SubmitTask { max_tokens: Some(60), ..SubmitTask::new("loop for ever") }).await?;
    let t = hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    let why = t.task.last_error.clone().unwrap_or_default();
    assert!(why.starts_with("budget_exceeded: ") && why.contains("over the task's max_tokens 60"), "{why}");
    assert_eq!(t.task.attempts, 1, "not retried");
    assert!(t.task.usage.as_ref().is_some_and(|u| u.tokens() > 60), "{:?}", t.task.usage);
    // The sidecar stopped the agent and is free again.
    s.wait_log("task stopped by the hub").await?;
    eventually("the sidecar idle", || async {
        match s.queue()["active"].is_null() {
            true => Ok(()),
            false => Err(s.queue().to_string()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn codex_results_usage_and_limits_come_through_and_a_limited_thread_is_resumed() -> R {
    openai::codex_bin()?;
    let root = tempfile::tempdir()?;
    // No reset time from a plain 429: the hub waits its first backoff step (short here).
    let hub = Hub::start(bin(), "limit_backoff_ms = [300]\nlimit_wake_spread_ms = 0\n")?;
    let token = hub.token("codex-1").await?;
    let repo = project(&root.path().join("project"))?;
    let limited_once = Arc::new(AtomicU64::new(0));
    let l = limited_once.clone();
    let model = ScriptedCodex::start(move |s: &openai::Seen| match s.tool_outputs() {
        0 => openai::Turn::Shell("echo hi > f.txt".into()),
        _ if l.fetch_add(1, Ordering::SeqCst) == 0 => openai::Turn::Error {
            status: 429,
            body: json!({"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "message": "Scripted rate limit"}}),
            headers: vec![],
        },
        _ => openai::Turn::Text("All done.".into()),
    })
    .await?;
    let wake = "agentcom run-agent --usage codex-json -- codex exec --dangerously-bypass-approvals-and-sandbox \"$AGENTCOM_TASK_DESCRIPTION\"";
    let mut cfg = sidecar_config("codex-1", &token, &hub.ws_url(), Some(wake));
    cfg.push_str(&format!("repo_dir = {}\n", toml_string(&repo.display().to_string())));
    let mut env = model.env(&root.path().join("home"))?;
    env.push(("PATH".into(), path_with_agentcom()));
    let _s = sidecar_in(&root.path().join("s"), &cfg, &env)?;
    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("Write f.txt") }).await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!((done.task.failures, done.task.limited_attempts, done.task.attempts), (0, 1, 2));
    assert_eq!(done.task.result.as_ref().and_then(|r| r["result"].as_str()), Some("All done."));
    let usage = done.task.usage.clone().expect("codex's usage");
    assert!(usage.input_tokens.is_some_and(|n| n > 0), "{usage:?}");
    assert_eq!(std::fs::read_to_string(repo.join("f.txt"))?, "hi\n");
    let history: Vec<String> = done.history.iter().map(|h| h.reason.clone()).collect();
    assert!(history.iter().any(|r| r.contains("limited by the model provider") && r.contains("429")), "{history:?}");
    // The second attempt resumed the thread: the same id, with the first attempt's shell call.
    let seen = model.requests();
    let last = seen.last().expect("requests");
    assert_eq!(last.thread, seen[0].thread, "codex exec resume of the same thread");
    assert!(last.tool_outputs() >= 1 && last.prompts().len() >= 2, "{:?}", last.input);
    Ok(())
}

#[tokio::test]
async fn an_operator_sees_a_limited_agent_and_lifts_the_limit() -> R {
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("a1").await?;
    let mut a = testkit::WsAgent::connect(&hub.ws_url()).await?;
    a.send(json!({"type": "identify", "agent_id": "a1", "token": token, "account": "team-a"})).await?;
    a.expect("identified").await?;
    let id = hub.submit_text("work").await?;
    let (_, generation) = a.take_task().await?;
    let reset = (epoch_s() + 3600) * 1000;
    a.send(json!({"type": "task_limited", "task_id": id, "generation": generation,
        "limit": {"reset_at_ms": reset, "message": "You've hit your session limit"}, "session_id": "sess-1"}))
        .await?;
    assert_eq!(a.expect("task_ack").await?["status"], "requeued");
    let cli = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("AGENTCOM_URL", hub.url())
            .env("AGENTCOM_TOKEN", &hub.admin_token)
            .output()
            .expect("agentcom")
    };
    let agents = String::from_utf8(cli(&["agents"]).stdout)?;
    assert!(agents.contains("limited until"), "{agents}");
    let out = cli(&["agent", "unlimit", "a1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout)?.contains("a1"));
    // The task goes back at once, with the session to resume.
    let assign = a.expect("task_assign").await?;
    assert_eq!((assign["task_id"].as_str(), assign["resume_session"].as_str()), (Some(id.as_str()), Some("sess-1")));
    Ok(())
}
