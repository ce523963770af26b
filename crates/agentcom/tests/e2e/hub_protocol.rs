//! The hub's protocol hygiene end to end: heartbeats, frames and bodies it refuses with clear
//! errors, bans after violations, its counters, and a clean SIGTERM.

use super::hub::task;
use crate::bin;
use proto::api::{AgentStatus, ListAgents, TaskStatus};
use serde_json::json;
use testkit::{eventually, Closed, Hub, WsAgent};

type R = anyhow::Result<()>;

#[tokio::test]
async fn heartbeat_silence_evicts() -> R {
    let hub = Hub::start(bin(), "heartbeat_timeout_ms = 200\n")?;
    let mut a = hub.agent("quiet", &[]).await?;
    assert_eq!(a.closed().await?, Closed::Code(1001, "heartbeat timeout".into()));
    let v = hub.admin_client().call(&ListAgents::default()).await?;
    assert_eq!(v.agents[0].status, AgentStatus::Offline);
    Ok(())
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_the_hub_survives() -> R {
    let hub = Hub::start(bin(), "")?;
    let mut a = hub.agent("a", &[]).await?;
    a.send_text("{not json").await?;
    assert_eq!(a.expect("error").await?["error"], "invalid_json");
    a.send(json!({"type": "teleport"})).await?;
    let e = a.expect("error").await?;
    assert_eq!((e["error"].as_str(), e["message_type"].as_str()), (Some("validation_failed"), Some("teleport")));
    a.send(json!({"type": "task_complete", "task_id": 7, "generation": "one"})).await?;
    let e = a.expect("error").await?;
    assert_eq!(e["message_type"], "task_complete");
    let errors: Vec<&str> = e["errors"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(errors.contains(&"task_id: expected string, got number"), "{errors:?}");
    assert!(errors.iter().any(|x| x.starts_with("generation:")), "{errors:?}");
    a.send(json!({"type": "task_failed", "task_id": "t", "generation": 1, "reason": "r".repeat(2001)})).await?;
    assert_eq!(a.expect("error").await?["errors"][0], "reason: longer than 2000 characters");
    a.send(json!({"type": "task_complete", "task_id": "missing", "generation": 1})).await?;
    assert_eq!(a.expect("error").await?["error"], "not_found");
    a.send(json!({"type": "ping"})).await?;
    a.expect("pong").await?;

    let big = hub.agent("big", &[]).await?;
    assert!(matches!(big.send_oversized(proto::MAX_FRAME_BYTES + 10).await?, Closed::Code(1009, _)));

    let long_id = "a".repeat(129);
    let mut c = WsAgent::connect(&hub.ws_url()).await?;
    c.send(json!({"type": "identify", "agent_id": long_id, "token": "t"})).await?;
    assert_eq!(c.expect("error").await?["errors"][0], "agent_id: longer than 128 characters");
    let (s, _) = hub.admin().get("/health").await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn ten_violations_close_1008_and_identify_is_refused_with_escalation() -> R {
    let hub = Hub::start(bin(), "ban_ms = [300, 60000, 600000]\n")?;
    let token = hub.token("bad").await?;
    // Ten violations: closed with 1008, and identify refused for the ban (`retry_after_ms`).
    let violate = || async {
        let mut a = WsAgent::identify(&hub.ws_url(), "bad", &token, &[]).await?;
        for _ in 0..9 {
            a.send_text("garbage").await?;
            assert_eq!(a.expect("error").await?["error"], "invalid_json");
        }
        a.send_text("garbage").await?;
        a.expect("error").await?;
        assert_eq!(a.closed().await?, Closed::Code(1008, "too many protocol violations".into()));
        anyhow::Ok(())
    };
    let refused_for = || async {
        let mut again = WsAgent::connect(&hub.ws_url()).await?;
        again.send(json!({"type": "identify", "agent_id": "bad", "token": token})).await?;
        let e = again.expect("error").await?;
        assert_eq!(e["error"], "identify_refused");
        assert!(matches!(again.closed().await?, Closed::Code(1008, _)));
        anyhow::Ok(e["retry_after_ms"].as_u64().unwrap())
    };
    violate().await?;
    let first = refused_for().await?;
    assert!(first <= 300, "the first ban is 300 ms: {first}");
    // Once it has passed, identify works again...
    eventually("the first ban to pass", || async {
        WsAgent::identify(&hub.ws_url(), "bad", &token, &[]).await.map(drop).map_err(|e| e.to_string())
    })
    .await?;
    // ...and the next ten violations ban it for longer: the second step of the escalation.
    violate().await?;
    let second = refused_for().await?;
    assert!(second > 300 && second <= 60_000, "escalated to the 60 s ban: {second}");
    let mut other = hub.agent("good", &[]).await?;
    other.send(json!({"type": "ping"})).await?;
    other.expect("pong").await?;
    Ok(())
}

#[tokio::test]
async fn bad_http_bodies_name_the_field() -> R {
    let hub = Hub::start(bin(), "")?;
    let api = hub.admin();
    let (s, v) = api.raw(reqwest::Method::POST, "/api/tasks", Some("{oops".into())).await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")));
    let (s, v) = api.raw(reqwest::Method::POST, "/api/tasks", Some("[1,2]".into())).await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")));
    let (s, v) = api.post("/api/tasks", json!({"description": 5, "priority": "soon"})).await?;
    assert_eq!((s, v["error"].as_str()), (422, Some("validation_failed")));
    assert_eq!(v["errors"][0], "description: expected string");
    assert!(v["errors"][1].as_str().unwrap().starts_with("priority:"));
    let (s, v) = api.post("/api/tasks", json!({"description": "x".repeat(10_001)})).await?;
    assert_eq!((s, v["error"].as_str()), (413, Some("field_too_large")));
    assert!(v["message"].as_str().unwrap().starts_with("description: 10001 characters"), "{v}");
    let big = format!("{{\"description\":\"{}\"}}", "x".repeat(3 << 20));
    // The hub closes the connection after a 413; use a client of its own.
    let (s, v) = hub.admin().raw(reqwest::Method::POST, "/api/tasks", Some(big)).await?;
    assert_eq!((s, v["error"].as_str()), (413, Some("body_too_large")));
    let (s, v) = api.get("/api/tasks?status=done").await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    let (s, v) = api.get("/nope").await?;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let (s, v) = api.post("/admin/tokens", json!({})).await?;
    assert_eq!((s, v["errors"][0].as_str()), (422, Some("agent_id: required")));
    let (s, _) = api.get("/health").await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn stats_and_metrics() -> R {
    let hub = Hub::start(bin(), "")?;
    let mut a = hub.agent("a", &[]).await?;
    let id = hub.submit_text("t").await?;
    let (_, g) = a.take_task().await?;
    a.complete(&id, g).await?;
    hub.submit(task(json!({"description": "q", "assign_to": "x"}))).await?;
    let s = hub.admin_client().call(&proto::api::GetStats).await?;
    assert_eq!((s.by_status[&TaskStatus::Completed], s.by_status[&TaskStatus::Queued]), (1, 1));
    assert_eq!(s.agents[&AgentStatus::Idle], 1);
    let m = reqwest::get(format!("{}/metrics", hub.url())).await?.text().await?;
    assert!(m.contains("agentcom_tasks{status=\"completed\"} 1"), "{m}");
    assert!(m.contains("agentcom_agents{status=\"idle\"} 1"));
    assert!(m.contains("agentcom_websocket_connections 1"));
    assert!(m.contains("agentcom_dispatch_latency_seconds_count 1"));
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_zero() -> R {
    let mut hub = Hub::start(bin(), "")?;
    let mut a = hub.agent("a", &[]).await?;
    let id = hub.submit_text("t").await?;
    a.take_task().await?;
    let status = hub.terminate()?;
    assert!(status.success(), "{status:?}");
    assert_eq!(a.closed().await?, Closed::Code(1001, "hub shutting down".into()));
    let again = Hub::start_in(bin(), &hub.dir, &testkit::fast_config())?;
    assert_eq!(again.task(&id).await?.task.status, TaskStatus::Working, "held tasks survive a restart");
    Ok(())
}
