//! The hub across restarts and bad starts: held tasks kept for reconnecting agents, a corrupt
//! database, a bad config, its admin token, a SIGKILL under load, agents remembered.

use crate::bin;
use proto::api::{AgentStatus, ListAgents, ListTasks, SubmitTask, TaskStatus};
use serde_json::{json, Value};
use testkit::{eventually, Hub, WsAgent};

type R = anyhow::Result<()>;

#[tokio::test]
async fn restart_keeps_held_tasks_for_reconnecting_agents() -> R {
    let mut hub = Hub::start(bin(), "")?;
    let token = hub.token("a").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let id = hub.submit_text("t").await?;
    let (_, g) = a.take_task().await?;
    hub.kill9();
    let hub2 = Hub::start_in(bin(), &hub.dir, &testkit::fast_config())?;
    let mut a = WsAgent::identify(&hub2.ws_url(), "a", &token, &[]).await?;
    a.send(json!({"type": "task_recovering", "task_id": id})).await?;
    assert_eq!(a.expect("task_continue").await?["generation"], g);
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn corrupt_database_is_a_clear_error_not_a_fresh_start() -> R {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hub.db"), vec![7u8; 10_000])?;
    let out = std::process::Command::new(bin())
        .args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("AGENTCOM_ADMIN_TOKEN", "test-admin-token-0123456789abcdef")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dir.path().join("hub.db").display().to_string()) && err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("hub.db"))?, vec![7u8; 10_000], "the file is left as it was");
    Ok(())
}

#[tokio::test]
async fn invalid_config_lists_every_error() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, "grace_period_ms = 0\nban_ms = []\n")?;
    let out = std::process::Command::new(bin()).args(["hub", "--listen", "nowhere", "--config"]).arg(&cfg).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["grace_period_ms", "ban_ms", "listen"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn generated_admin_token_is_private_and_used_by_the_cli() -> R {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(bin())
        .args(["hub", "--log-format", "json", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("AGENTCOM_ADMIN_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = testkit::watch_logs(child.stderr.take().unwrap(), logs.clone(), "hub listening", "addr")?;
    let token_file = dir.path().join("admin.token");
    assert_eq!(std::fs::metadata(&token_file)?.permissions().mode() & 0o777, 0o600);
    assert!(logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("generated a new admin token") && l.contains("admin.token")));
    let cli = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("AGENTCOM_URL", format!("http://{addr}"))
            .env("AGENTCOM_DATA_DIR", dir.path())
            .env_remove("AGENTCOM_TOKEN")
            .output()
            .unwrap()
    };
    let out = cli(&[
        "task",
        "submit",
        "from the cli",
        "--priority",
        "high",
        "--capability",
        "rust",
        "--metadata",
        "{\"a\":1}",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(id.starts_with("task-"), "{id}");
    let out = cli(&["task", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["tasks"][0]["task_id"], id.as_str());
    assert_eq!(v["tasks"][0]["needed_capabilities"], json!(["rust"]));
    let out = cli(&["task", "list"]);
    let table = String::from_utf8(out.stdout)?;
    assert!(table.starts_with("TASK") && table.contains(&id) && table.contains("from the cli"), "{table}");
    let out = cli(&["task", "show", &id]);
    assert!(String::from_utf8(out.stdout)?.contains("submitted by admin"));
    let out = cli(&["token", "create", "agent-x"]);
    assert_eq!(String::from_utf8(out.stdout)?.trim().len(), 64);
    let out = cli(&["token", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["tokens"][0]["agent_id"], "agent-x");
    let out = cli(&["task", "cancel", &id]);
    assert!(out.status.success());
    let out = cli(&["task", "retry", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["agents"]);
    assert_eq!(String::from_utf8(out.stdout)?, "no agents\n");
    let out = cli(&["task", "show", "task-missing"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stderr)?, "error: not_found: no task task-missing\n");
    let out = cli(&["token", "revoke", "agent-x"]);
    assert!(out.status.success());
    let _ = child.kill();
    let _ = child.wait();
    let out = cli(&["agents"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("error: cannot reach the hub") && err.lines().count() == 1, "{err}");
    Ok(())
}

/// Kills the hub with SIGKILL while agents and submitters are busy, restarts it on the same
/// data dir, and checks that every acknowledged submission and completion is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing() -> R {
    let mut hub = Hub::start(bin(), "grace_period_ms = 200\n")?;
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(hub.token(&format!("w{i}")).await?);
    }
    let completed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut a = WsAgent::identify(&hub.ws_url(), &format!("w{i}"), token, &[]).await?;
        let completed = completed.clone();
        workers.push(tokio::spawn(async move {
            while let Ok((id, g)) = a.take_task().await {
                match a.complete(&id, g).await {
                    Ok(ack) if ack["status"] == "complete" => completed.lock().unwrap().push(id),
                    _ => break,
                }
            }
        }));
    }
    let submitted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let api = hub.admin_client();
        let submitted = submitted.clone();
        submitters.push(tokio::spawn(async move {
            for n in 0..1000 {
                match api.call(&SubmitTask::new(format!("load {n}"))).await {
                    Ok(v) => submitted.lock().unwrap().push(v.task_id),
                    _ => break,
                }
            }
        }));
    }
    // Kill once real work is flowing.
    eventually("40 completions before the kill", || async {
        let n = completed.lock().unwrap().len();
        if n >= 40 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await?;
    hub.kill9();
    for s in submitters {
        s.await?;
    }
    for w in workers {
        w.await?;
    }
    let submitted = submitted.lock().unwrap().clone();
    let completed = completed.lock().unwrap().clone();
    assert!(submitted.len() >= 40);

    let hub2 =
        Hub::start_in(bin(), &hub.dir, &testkit::merge_config(&testkit::fast_config(), "grace_period_ms = 200"))?;
    let mut stored = std::collections::HashMap::new();
    let mut cursor = None;
    loop {
        let page = hub2.admin_client().call(&ListTasks { limit: Some(1000), cursor, ..Default::default() }).await?;
        stored.extend(page.tasks.into_iter().map(|t| (t.task_id, t.status)));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    for id in &submitted {
        assert!(stored.contains_key(id), "acknowledged task {id} was lost");
    }
    for id in &completed {
        assert_eq!(stored[id], TaskStatus::Completed, "acknowledged completion of {id} was lost");
    }
    // Everything left finishes once agents come back (held tasks after their lease).
    let mut workers = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut a = WsAgent::identify(&hub2.ws_url(), &format!("w{i}"), token, &[]).await?;
        workers.push(tokio::spawn(async move {
            while let Ok((id, g)) = a.take_task().await {
                if a.complete(&id, g).await.is_err() {
                    break;
                }
            }
        }));
    }
    eventually("every task completed after the restart", || async {
        let s = hub2.admin_client().call(&proto::api::GetStats).await.map_err(|e| e.to_string())?;
        if s.by_status[&TaskStatus::Completed] == stored.len() as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    for w in workers {
        w.abort();
    }
    Ok(())
}

#[tokio::test]
async fn agents_are_remembered_across_a_hub_restart() -> R {
    let mut hub = Hub::start(bin(), "")?;
    let p1 = hub.agent("p1", &["rust", "docs"]).await?;
    let mut p2 = hub.agent("p2", &[]).await?;
    p2.send(json!({"type": "agent_restarting", "reason": "upgrade"})).await?;
    p1.close().await;
    let find = |v: &proto::api::AgentList, id: &str| v.agents.iter().find(|a| a.agent_id == id).cloned();
    let before = eventually("p1 offline and p2 restarting", || async {
        let v = hub.admin_client().call(&ListAgents::default()).await.map_err(|e| e.to_string())?;
        let settled = find(&v, "p1").is_some_and(|a| a.status == AgentStatus::Offline)
            && find(&v, "p2").is_some_and(|a| a.status == AgentStatus::Restarting);
        if settled {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await?;
    // What the listing showed was durable: SIGKILL, restart, and it is all still there.
    hub.kill9();
    drop(p2);
    let hub = Hub::start_in(bin(), &hub.dir, &testkit::fast_config())?;
    let after = hub.admin_client().call(&ListAgents::default()).await?;
    let (a1, b1) = (find(&after, "p1").expect("p1 remembered"), find(&before, "p1").unwrap());
    assert_eq!((a1.status, a1.connected), (AgentStatus::Offline, false), "{a1:?}");
    assert_eq!(a1.capabilities, ["docs", "rust"]);
    assert_eq!(a1.last_seen, b1.last_seen, "last seen when it disconnected");
    assert_eq!(find(&after, "p2").expect("p2 remembered").status, AgentStatus::Restarting);
    // Coming back makes it live again.
    let token = hub.token("p1").await?;
    let _p1 = WsAgent::identify(&hub.ws_url(), "p1", &token, &["rust"]).await?;
    let v = hub.admin_client().call(&ListAgents::default()).await?;
    let a1 = find(&v, "p1").unwrap();
    assert_eq!((a1.status, a1.capabilities.as_slice()), (AgentStatus::Idle, ["rust".to_string()].as_slice()), "{a1:?}");
    Ok(())
}

/// Tasks that depend on tasks (issue 22): what waits on what is rebuilt from the store, so a
/// blocked task stays blocked across a SIGKILL and runs once its dependency completes after it.
#[tokio::test]
async fn a_blocked_task_waits_across_a_hub_sigkill_and_runs_after_its_dependency() -> R {
    let mut hub = Hub::start(bin(), "")?;
    let token = hub.token("a").await?;
    let first = hub.submit_text("first").await?;
    let then = hub.submit(SubmitTask { depends_on: vec![first.clone()], ..SubmitTask::new("then") }).await?;
    assert_eq!(hub.task(&then).await?.task.status, TaskStatus::Blocked);
    hub.restart_after_kill(bin(), &testkit::fast_config())?;
    assert_eq!(hub.task(&then).await?.task.status, TaskStatus::Blocked);
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let (id, g) = a.take_task().await?;
    assert_eq!(id, first, "the blocked task is not handed out first");
    assert_eq!(a.complete(&first, g).await?["status"], "complete");
    let (id, _) = a.take_task().await?;
    assert_eq!(id, then);
    let t = hub.task(&then).await?;
    assert!(
        t.history.iter().any(|h| h.reason == format!("dependencies completed (the last: {first})")),
        "{:?}",
        t.history
    );
    Ok(())
}
