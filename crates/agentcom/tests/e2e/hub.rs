//! End-to-end tests of the hub: the real binary on port 0 in a temp dir, driven over HTTP and
//! WebSocket with AgentCom v1 frames.

use crate::bin;
use proto::api::{AgentStatus, ErrorCode, ListAgents, ListDeadLetter, RestartAgent, SubmitTask, TaskStatus};
use serde_json::{json, Value};
use testkit::{eventually, Closed, Hub, WsAgent};

type R = anyhow::Result<()>;

/// A submission as a user writes it (v1 JSON), validated into the typed request.
pub(crate) fn task(v: Value) -> SubmitTask {
    SubmitTask::from_json(v.as_object().expect("an object").clone()).expect("a valid submission")
}

pub(crate) fn reasons(t: &proto::api::TaskDetail) -> Vec<&str> {
    t.history.iter().map(|h| h.reason.as_str()).collect()
}

#[tokio::test]
async fn identify_assign_accept_complete() -> R {
    let hub = Hub::start(bin(), "")?;
    let id = hub.submit(task(json!({"description": "write tests", "metadata": {"k": "v"}, "repo": "git@x:y", "routing_decision": {"target_type": "wake"}})))
        .await?;
    let mut a = hub.agent("agent-1", &["rust"]).await?;
    let assign = a.expect("task_assign").await?;
    assert_eq!(assign["task_id"], id.as_str());
    assert_eq!(assign["description"], "write tests");
    assert_eq!(assign["metadata"], json!({"k": "v"}));
    assert_eq!(assign["generation"], 1);
    assert_eq!(assign["repo"], "git@x:y", "v1 optional fields pass through");
    assert!(assign["assigned_at"].as_u64().unwrap() > 0);
    a.send(json!({"type": "task_accepted", "task_id": id})).await?;
    assert_eq!(a.expect("task_ack").await?, json!({"type": "task_ack", "task_id": id, "status": "accepted"}));
    assert_eq!(hub.task(&id).await?.task.status, TaskStatus::Working);
    let ack = a.complete(&id, 1).await?;
    assert_eq!(ack, json!({"type": "task_ack", "task_id": id, "status": "complete"}));
    let t = hub.task(&id).await?;
    assert_eq!(t.task.status, TaskStatus::Completed);
    assert_eq!(t.task.result, Some(json!({"status": "success"})));
    assert_eq!((t.task.assigned_to.as_deref(), t.task.attempts), (Some("agent-1"), 1));
    let steps: Vec<TaskStatus> = t.history.iter().map(|h| h.to).collect();
    assert_eq!(steps, [TaskStatus::Queued, TaskStatus::Assigned, TaskStatus::Working, TaskStatus::Completed]);
    assert!(t.history[1].at >= t.history[0].at);
    // A re-sent report for the same attempt is acknowledged again, not refused.
    assert_eq!(a.complete(&id, 1).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn priorities_fifo_capabilities_and_pinning() -> R {
    let hub = Hub::start(bin(), "")?;
    let low = hub.submit(task(json!({"description": "low", "priority": "low"}))).await?;
    let normal1 = hub.submit_text("n1").await?;
    let urgent = hub.submit(task(json!({"description": "urgent", "priority": "urgent"}))).await?;
    let gpu =
        hub.submit(task(json!({"description": "gpu", "priority": "urgent", "needed_capabilities": ["gpu"]}))).await?;
    let normal2 = hub.submit_text("n2").await?;
    let high = hub.submit(task(json!({"description": "high", "priority": "high"}))).await?;
    let pinned =
        hub.submit(task(json!({"description": "pinned", "priority": "urgent", "assign_to": "agent-pin"}))).await?;

    let mut a = hub.agent("agent-cpu", &["rust"]).await?;
    let mut order = Vec::new();
    for _ in 0..5 {
        let (id, g) = a.take_task().await?;
        order.push(id.clone());
        assert_eq!(a.complete(&id, g).await?["status"], "complete");
    }
    assert_eq!(order, [urgent, high, normal1, normal2, low]);
    // The next task it gets is one submitted after the gpu and pinned ones: those were passed over.
    let after = hub.submit_text("after them").await?;
    let (id, g) = a.take_task().await?;
    assert_eq!(id, after, "the gpu and pinned tasks are not this agent's");
    a.complete(&id, g).await?;
    assert_eq!(hub.task(&gpu).await?.task.status, TaskStatus::Queued, "needs a capability nobody has");
    assert_eq!(hub.task(&pinned).await?.task.status, TaskStatus::Queued, "pinned to another agent");

    let mut g = hub.agent("agent-gpu", &["gpu", "rust"]).await?;
    let (id, _) = g.take_task().await?;
    assert_eq!(id, gpu);
    let mut p = hub.agent("agent-pin", &[]).await?;
    let (id, _) = p.take_task().await?;
    assert_eq!(id, pinned);
    Ok(())
}

#[tokio::test]
async fn one_active_task_per_agent() -> R {
    let hub = Hub::start(bin(), "")?;
    let first = hub.submit_text("1").await?;
    let second = hub.submit_text("2").await?;
    let mut a = hub.agent("a", &[]).await?;
    let (id, g) = a.take_task().await?;
    assert_eq!(id, first);
    // A ping answered: the hub handled everything before it, and offered nothing more.
    a.send(json!({"type": "ping"})).await?;
    assert_eq!(a.recv().await?["type"], "pong", "no second task while the first is held");
    a.complete(&id, g).await?;
    assert_eq!(a.take_task().await?.0, second);
    Ok(())
}

#[tokio::test]
async fn stale_generation_is_refused_and_changes_nothing() -> R {
    let hub = Hub::start(bin(), "grace_period_ms = 100\n")?;
    let id = hub.submit_text("t").await?;
    let mut a1 = hub.agent("a1", &[]).await?;
    let (_, g1) = a1.take_task().await?;
    a1.cut();
    hub.wait_status(&id, TaskStatus::Queued).await?;
    let mut a2 = hub.agent("a2", &[]).await?;
    let (_, g2) = a2.take_task().await?;
    assert!(g2 > g1, "generation goes up on every assign: {g1} -> {g2}");

    let token = hub.token("a1").await?;
    let mut late = WsAgent::identify(&hub.ws_url(), "a1", &token, &[]).await?;
    let err = late.complete(&id, g1).await?;
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"], "stale_generation");
    late.send(json!({"type": "task_failed", "task_id": id, "generation": g1, "reason": "late"})).await?;
    assert_eq!(late.expect("error").await?["error"], "stale_generation");
    let t = hub.task(&id).await?.task;
    assert_eq!((t.status, t.assigned_to.as_deref(), t.failures), (TaskStatus::Working, Some("a2"), 0));
    assert_eq!(a2.complete(&id, g2).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn reconnect_within_grace_carries_on() -> R {
    let hub = Hub::start(bin(), "grace_period_ms = 5000\n")?;
    let id = hub.submit_text("t").await?;
    let token = hub.token("a").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let (_, g) = a.take_task().await?;
    a.cut();
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    a.send(
        json!({"type": "task_recovering", "task_id": id, "description": "t", "metadata": {}, "last_status": "working"}),
    )
    .await?;
    assert_eq!(a.expect("task_continue").await?, json!({"type": "task_continue", "task_id": id, "generation": g}));
    a.send(json!({"type": "state_report", "task_id": id, "status": "working", "generation": g})).await?;
    assert_eq!(a.expect("state_report_ack").await?["action"], "continue");
    assert_eq!(hub.task(&id).await?.task.status, TaskStatus::Working);
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn beyond_grace_requeues_with_new_generation() -> R {
    let hub = Hub::start(bin(), "grace_period_ms = 150\n")?;
    let id = hub.submit_text("t").await?;
    let token = hub.token("a").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let (_, g) = a.take_task().await?;
    a.cut();
    let t = hub.wait_status(&id, TaskStatus::Queued).await?;
    assert!(t.task.generation > g);
    assert!(reasons(&t).iter().any(|r| r.starts_with("lease_expired")), "{:?}", reasons(&t));
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let assign = a.expect("task_assign").await?;
    assert!(assign["generation"].as_u64().unwrap() > g);
    a.send(json!({"type": "state_report", "task_id": id, "generation": g})).await?;
    assert_eq!(a.expect("state_report_ack").await?["action"], "abort", "the old attempt is void");
    Ok(())
}

#[tokio::test]
async fn task_recovering_after_requeue_gets_reassign() -> R {
    let hub = Hub::start(bin(), "grace_period_ms = 100\n")?;
    let id = hub.submit_text("t").await?;
    let mut a = hub.agent("a", &[]).await?;
    a.take_task().await?;
    a.cut();
    hub.wait_status(&id, TaskStatus::Queued).await?;
    let mut b = hub.agent("b", &[]).await?;
    b.take_task().await?;
    let token = hub.token("a").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    a.send(json!({"type": "task_recovering", "task_id": id})).await?;
    assert_eq!(a.expect("task_reassign").await?, json!({"type": "task_reassign", "task_id": id}));
    Ok(())
}

#[tokio::test]
async fn task_rejected_requeues_at_once_without_a_failure() -> R {
    let hub = Hub::start(bin(), "")?;
    let mut a = hub.agent("a", &[]).await?;
    let id = hub.submit_text("t").await?;
    let assign = a.expect("task_assign").await?;
    let mut b = hub.agent("b", &[]).await?;
    a.send(json!({"type": "task_rejected", "task_id": id, "reason": "busy"})).await?;
    assert_eq!(a.expect("task_ack").await?["status"], "requeued");
    let (bid, g) = b.take_task().await?;
    assert_eq!(bid, id);
    assert!(g > assign["generation"].as_u64().unwrap());
    let t = hub.task(&id).await?;
    assert_eq!(t.task.failures, 0);
    assert!(reasons(&t).contains(&"rejected by a: busy"));
    // Paused after `busy`: a ping answered shows nothing was offered meanwhile.
    a.send(json!({"type": "ping"})).await?;
    assert_eq!(a.recv().await?["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn accept_timeout_requeues() -> R {
    let hub = Hub::start(bin(), "accept_timeout_ms = 100\n")?;
    let id = hub.submit_text("t").await?;
    let mut a = hub.agent("a", &[]).await?;
    let first = a.expect("task_assign").await?;
    // The agent never accepts: the task is requeued and, the agent being idle again, re-sent.
    let again = a.expect("task_assign").await?;
    assert_eq!(again["task_id"], id.as_str());
    assert!(again["generation"].as_u64() > first["generation"].as_u64());
    let t = hub.task(&id).await?;
    assert!(reasons(&t).iter().any(|r| r.starts_with("accept_timeout")), "{:?}", reasons(&t));
    Ok(())
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter_then_manual_retry() -> R {
    let hub = Hub::start(bin(), "")?;
    let id = hub.submit(task(json!({"description": "flaky", "max_retries": 2}))).await?;
    let mut a = hub.agent("a", &[]).await?;
    let mut gens = Vec::new();
    for expected in ["retried", "retried", "dead_letter"] {
        let (tid, g) = a.take_task().await?;
        assert_eq!(tid, id);
        gens.push(g);
        a.send(json!({"type": "task_failed", "task_id": id, "generation": g, "reason": "tests failed"})).await?;
        let ack = a.expect("task_ack").await?;
        assert_eq!(ack["status"], expected);
    }
    assert!(gens.windows(2).all(|w| w[1] > w[0]), "{gens:?}");
    let t = hub.task(&id).await?;
    assert_eq!((t.task.status, t.task.failures), (TaskStatus::DeadLetter, 3));
    assert_eq!(t.task.last_error.as_deref(), Some("tests failed"));
    let retries: Vec<&str> =
        t.history.iter().filter(|h| h.to == TaskStatus::WaitingRetry).map(|h| h.reason.as_str()).collect();
    assert_eq!(retries.len(), 2);
    assert!(retries[0].contains("in 50ms"), "{}", retries[0]);
    assert!(retries[1].contains("in 100ms"), "backoff doubles: {}", retries[1]);
    let dl = hub.admin_client().call(&ListDeadLetter::default()).await?;
    assert_eq!(dl.tasks[0].task_id, id);
    let (s, v) = hub.admin().post(&format!("/api/tasks/{id}/retry"), json!({})).await?;
    assert_eq!((s, v["status"].as_str()), (200, Some("queued")));
    let (tid, _) = a.take_task().await?;
    assert_eq!(tid, id);
    Ok(())
}

#[tokio::test]
async fn cancel_pushes_task_cancelled_to_the_holder() -> R {
    let hub = Hub::start(bin(), "")?;
    let id = hub.submit_text("long").await?;
    let next = hub.submit_text("next").await?;
    let mut a = hub.agent("a", &[]).await?;
    let (_, g) = a.take_task().await?;
    let (s, v) = hub.admin().post(&format!("/api/tasks/{id}/cancel"), json!({})).await?;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    let c = a.expect("task_cancelled").await?;
    assert_eq!(c["task_id"], id.as_str());
    assert!(c["timestamp"].as_u64().is_some());
    assert_eq!(a.take_task().await?.0, next, "the agent is free again");
    assert_eq!(a.complete(&id, g).await?["error"], "invalid_state");
    let (s, _) = hub.admin().post(&format!("/api/tasks/{id}/cancel"), json!({})).await?;
    assert_eq!(s, 409);
    let queued = hub.submit(task(json!({"description": "never runs", "assign_to": "nobody"}))).await?;
    let (s, _) = hub.admin().post(&format!("/api/tasks/{queued}/cancel"), json!({})).await?;
    assert_eq!(s, 200);
    assert_eq!(hub.task(&queued).await?.task.status, TaskStatus::Cancelled);
    Ok(())
}

#[tokio::test]
async fn auth_roles_and_identify_checks() -> R {
    let hub = Hub::start(bin(), "")?;
    let (s, v) = hub.api(None).get("/api/tasks").await?;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthorized")));
    let (s, v) = hub.api(Some("wrong")).get("/api/tasks").await?;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_token")));
    let token = hub.token("agent-1").await?;
    let agent = hub.api(Some(&token));
    let (s, _) = agent.post("/api/tasks", json!({"description": "from an agent"})).await?;
    assert_eq!(s, 201, "agents may submit");
    let (s, _) = agent.get("/api/tasks").await?;
    assert_eq!(s, 200, "agents may read");
    for (path, method) in
        [("/admin/tokens", "GET"), ("/admin/tokens", "POST"), ("/api/admin/agents/agent-1/restart", "POST")]
    {
        let (s, v) =
            if method == "GET" { agent.get(path).await? } else { agent.post(path, json!({"agent_id": "x"})).await? };
        assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{method} {path}");
    }
    let (s, list) = hub.admin().get("/admin/tokens").await?;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains(&token), "tokens are never shown again");

    let mut c = WsAgent::connect(&hub.ws_url()).await?;
    c.send(json!({"type": "identify", "agent_id": "agent-1", "token": "nope"})).await?;
    assert_eq!(c.expect("error").await?["error"], "invalid_token");
    c.send(json!({"type": "identify", "agent_id": "agent-2", "token": token})).await?;
    assert_eq!(c.expect("error").await?["error"], "token_agent_mismatch");
    c.send(json!({"type": "ping"})).await?;
    assert_eq!(c.expect("error").await?["error"], "not_identified");
    c.send(json!({"type": "identify", "agent_id": "agent-1", "token": token})).await?;
    c.expect("identified").await?;

    let (s, v) = hub.admin().delete("/admin/tokens/agent-1").await?;
    assert_eq!((s, v["revoked"].as_u64()), (200, Some(1)));
    assert_eq!(c.closed().await?, Closed::Code(1008, "token revoked".into()));
    let (s, _) = agent.get("/api/tasks").await?;
    assert_eq!(s, 401);
    Ok(())
}

#[tokio::test]
async fn second_connection_replaces_the_first() -> R {
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("a").await?;
    let mut first = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    let mut second = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    assert_eq!(first.closed().await?, Closed::Code(1000, "replaced by a newer connection".into()));
    let id = hub.submit_text("t").await?;
    assert_eq!(second.take_task().await?.0, id);
    let agents = hub.admin_client().call(&ListAgents::default()).await?;
    assert_eq!(agents.agents.len(), 1);
    assert_eq!(agents.agents[0].status, AgentStatus::Working);
    Ok(())
}

#[tokio::test]
async fn v1_frames_presence_and_restart_command() -> R {
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("v1").await?;
    let mut a = WsAgent::connect(&hub.ws_url()).await?;
    a.send(json!({
        "type": "identify", "agent_id": "v1", "token": token, "name": "old sidecar", "status": "idle",
        "capabilities": ["elixir"], "client_type": "sidecar",
        "pm2_info": {"name": "sidecar-v1", "status": "online", "uptime_ms": 1234, "restart_count": 2, "memory_bytes": 52000000},
        "ollama_url": "http://localhost:11434"
    }))
    .await?;
    assert_eq!(a.expect("identified").await?, json!({"type": "identified", "agent_id": "v1"}));
    a.send(json!({"type": "ping"})).await?;
    assert!(a.expect("pong").await?["timestamp"].as_u64().is_some());
    a.send(json!({"type": "status", "status": "busy"})).await?;
    assert_eq!(a.expect("status_updated").await?["status"], "busy");
    a.send(json!({"type": "resource_report", "cpu_percent": 12.5, "ram_used_bytes": 1000, "ram_total_bytes": 4000}))
        .await?;
    let id = hub.submit_text("t").await?;
    let (_, g) = a.take_task().await?;
    a.send(json!({"type": "wake_result", "task_id": id, "status": "failed", "attempt": 1, "error": "exit 1"})).await?;
    a.send(json!({"type": "wake_result", "task_id": id, "status": "success", "attempt": 2})).await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": {"step": "compiling"}})).await?;
    a.send(json!({"type": "ping"})).await?;
    a.expect("pong").await?; // every frame before it was handled
    let t = eventually("the progress line to be stored", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        if t.task.progress.is_some() {
            Ok(t)
        } else {
            Err(format!("{:?}", t.task))
        }
    })
    .await?;
    assert_eq!(t.task.progress, Some(json!({"step": "compiling"})));
    assert!(reasons(&t).contains(&"wake_result failed (attempt 1): exit 1"));
    let v = hub.admin_client().call(&ListAgents::default()).await?;
    let ag = &v.agents[0];
    assert_eq!((ag.status, ag.current_task.as_deref()), (AgentStatus::Working, Some(id.as_str())));
    assert_eq!(ag.pm2_info.as_ref().and_then(|p| p.restart_count), Some(2));
    assert_eq!(ag.capabilities, ["elixir"]);
    assert_eq!(ag.resources.as_ref().unwrap()["cpu_percent"], 12.5);
    assert!(ag.connected_at.is_some() && ag.last_seen > 0);

    let (s, v) = hub.admin().post("/api/admin/agents/v1/restart", json!({"reason": "upgrade"})).await?;
    assert_eq!(
        (s, v.clone()),
        (200, json!({"status": "restart_commanded", "agent_id": "v1", "reason": "upgrade", "force": false}))
    );
    assert_eq!(a.expect("restart_sidecar").await?["reason"], "upgrade");
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    a.send(json!({"type": "agent_restarting", "reason": "upgrade"})).await?;
    a.send(json!({"type": "ping"})).await?;
    a.expect("pong").await?;
    let v = hub.admin_client().call(&ListAgents::default()).await?;
    assert_eq!(v.agents[0].status, AgentStatus::Restarting);
    a.close().await;
    let (s, v) = hub.admin().post("/api/admin/agents/ghost/restart", json!({})).await?;
    assert_eq!((s, v["error"].as_str()), (404, Some("unknown_agent")), "never seen");
    let restart = RestartAgent { agent_id: "v1".into(), reason: None, force: false };
    let e = eventually("v1 to be gone", || async {
        match hub.admin_client().call(&restart).await {
            Err(e) if e.code() == Some(ErrorCode::AgentNotConnected) => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert!(e.to_string().contains("v1 is restarting; it gets no commands"), "{e}");
    Ok(())
}
