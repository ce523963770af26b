//! The hub under hostile and careless input (issue 9), end to end against the real binary:
//! the role matrix route by route, connection floods and slow clients, size limits and paged
//! listings, private files, and ids that try to forge log lines.

use crate::bin;
use proto::api::{ErrorCode, ListTasks, SubmitTask, TaskStatus};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use testkit::{eventually, eventually_blocking, Closed, Hub, WsAgent};

type R = anyhow::Result<()>;

/// Who calls: no token, an agent token, the admin token.
#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Agent,
    Admin,
}

/// The role matrix of the README, row by row: method, path, body, and the status each caller
/// gets. `{own}` is a task the calling agent submitted, `{other}` one the admin submitted.
const MATRIX: &[(&str, &str, &str, [u16; 3])] = &[
    ("GET", "/health", "", [200, 200, 200]),
    ("GET", "/metrics", "", [200, 200, 200]),
    ("POST", "/api/tasks", r#"{"description":"x"}"#, [401, 201, 201]),
    // Children only of the task an agent holds, while it holds it (a1 holds neither); any
    // token may make a task wait for another.
    ("POST", "/api/tasks", r#"{"description":"x","parent_task_id":"{own}"}"#, [401, 403, 201]),
    ("POST", "/api/tasks", r#"{"description":"x","parent_task_id":"{other}"}"#, [401, 403, 201]),
    ("POST", "/api/tasks", r#"{"description":"x","depends_on":["{other}"]}"#, [401, 201, 201]),
    ("GET", "/api/tasks", "", [401, 200, 200]),
    ("GET", "/api/tasks/dead-letter", "", [401, 200, 200]),
    ("GET", "/api/tasks/stats", "", [401, 200, 200]),
    ("GET", "/api/tasks/{other}", "", [401, 200, 200]),
    ("GET", "/api/tasks/{own}/diff", "", [401, 200, 200]),
    ("GET", "/api/tasks/{other}/diff", "", [401, 403, 200]),
    // A change waits for review only after an integration: here, past the role check, the state refuses.
    ("POST", "/api/tasks/{own}/approve", "{}", [401, 403, 409]),
    ("POST", "/api/tasks/{own}/reject", r#"{"reason":"no"}"#, [401, 403, 409]),
    ("GET", "/api/integrations", "", [401, 200, 200]),
    // While both are open and no question is is open: past the role check the state refuses.
    ("POST", "/api/tasks/{own}/input", r#"{"answer":"yes"}"#, [401, 409, 409]),
    ("POST", "/api/tasks/{other}/input", r#"{"answer":"yes"}"#, [401, 403, 409]),
    ("POST", "/api/tasks/{own}/cancel", "{}", [401, 200, 200]),
    ("POST", "/api/tasks/{own}/retry", "{}", [401, 200, 200]),
    ("POST", "/api/tasks/{other}/cancel", "{}", [401, 403, 200]),
    ("POST", "/api/tasks/{other}/retry", "{}", [401, 403, 200]),
    ("GET", "/api/usage", "", [401, 200, 200]),
    ("GET", "/api/agents", "", [401, 200, 200]),
    ("GET", "/api/agents/a1", "", [401, 200, 200]),
    ("PUT", "/api/agents/a1/checkpoint", r#"{"objective":"o"}"#, [401, 200, 200]),
    ("GET", "/api/agents/a1/checkpoint", "", [401, 200, 200]),
    ("PUT", "/api/agents/a2/checkpoint", r#"{"objective":"o"}"#, [401, 403, 200]),
    ("GET", "/api/agents/a2/checkpoint", "", [401, 403, 200]),
    ("POST", "/api/admin/agents/a1/restart", "{}", [401, 403, 200]),
    ("POST", "/api/admin/agents/a1/unlimit", "{}", [401, 403, 200]),
    ("POST", "/admin/tokens", r#"{"agent_id":"a9"}"#, [401, 403, 201]),
    ("GET", "/admin/tokens", "", [401, 403, 200]),
    ("DELETE", "/admin/tokens/a9", "", [401, 403, 200]),
];

#[tokio::test]
async fn every_route_answers_each_role_as_the_matrix_says() -> R {
    let hub = Hub::start(bin(), "")?;
    let t1 = hub.token("a1").await?;
    hub.token("a2").await?;
    // a1 is connected so the restart command has someone to reach.
    let _a1 = WsAgent::identify(&hub.ws_url(), "a1", &t1, &["never-matches"]).await?;
    for who in [Who::Nobody, Who::Agent, Who::Admin] {
        // Fresh tasks per caller: one a1 submitted, one the admin did (both never assigned).
        let mut own = SubmitTask::new("a1's");
        own.assign_to = Some("nobody".into());
        let own = hub.client(Some(&t1)).call(&own).await?.task_id;
        let mut other = SubmitTask::new("admin's");
        other.assign_to = Some("nobody".into());
        let other = hub.submit(other).await?;
        // The admin re-creates a9's token for each caller that may delete it.
        hub.token("a9").await?;
        let api = hub.api(match who {
            Who::Nobody => None,
            Who::Agent => Some(&t1),
            Who::Admin => Some(&hub.admin_token),
        });
        for (method, path, body, want) in MATRIX {
            let path = path.replace("{own}", &own).replace("{other}", &other);
            // Retry needs something retryable: cancel first (as the admin) when the row retries.
            if path.ends_with("/retry") {
                hub.admin().post(&path.replace("/retry", "/cancel"), json!({})).await?;
            }
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let body = (!body.is_empty()).then(|| body.replace("{own}", &own).replace("{other}", &other));
            let (status, v) = api.raw(method.clone(), &path, body).await?;
            let want = want[who as usize];
            assert_eq!(status, want, "{who:?} {method} {path}: {v}");
            if status == 403 {
                assert_eq!(v["error"], "forbidden");
                assert!(v["message"].as_str().unwrap().contains("agent token (agent a1)"), "{v}");
            }
        }
    }
    // The event stream: its status, without waiting for a body that never ends.
    for (who, token, want) in
        [(Who::Nobody, None, 401), (Who::Agent, Some(&t1), 200), (Who::Admin, Some(&hub.admin_token), 200)]
    {
        let mut req = reqwest::Client::new().get(format!("{}/api/events", hub.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await?.status().as_u16(), want, "{who:?} GET /api/events");
    }
    // A wrong token is refused everywhere a token is needed, and says what it is not.
    let (s, v) = hub.api(Some("not-a-token")).get("/api/tasks").await?;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_token")));
    assert!(v["message"].as_str().unwrap().contains("neither this hub's admin token nor a current agent token"));
    Ok(())
}

/// Sends a request head without its final empty line: a half-open (slowloris) connection.
fn half_open(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")?;
    Ok(s)
}

/// Whether the peer closed the socket (read returns end of file or a reset).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).ok();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[tokio::test]
async fn a_flood_of_half_open_sockets_locks_out_neither_health_nor_agents() -> R {
    // A long header timeout: the flood is survived by eviction, not by waiting it out.
    let hub = Hub::start(bin(), "max_connections = 64\nagent_reserve_percent = 25\nheader_read_timeout_ms = 60000\n")?;
    let mut working = hub.agent("worker", &[]).await?;
    let flood: Vec<TcpStream> = (0..200).map(|_| half_open(hub.addr)).collect::<Result<_, _>>()?;
    let (s, v) = hub.api(None).get("/health").await?;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "health answers during the flood");
    // An agent can still come in, and the one connected before keeps getting work.
    let mut late = hub.agent("late", &[]).await?;
    let id = hub.submit_text("during the flood").await?;
    let (got, g) = tokio::select! {
        t = working.take_task() => t?,
        t = late.take_task() => t?,
    };
    assert_eq!(got, id);
    let _ = g;
    let m = hub.client(None).metrics().await?;
    let evicted: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("agentcom_connections_evicted_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(evicted >= 100, "silent sockets were closed to make room: {evicted}\n{m}");
    drop(flood);
    Ok(())
}

#[tokio::test]
async fn slow_heads_idle_keep_alives_and_silent_websockets_are_closed() -> R {
    let hub =
        Hub::start(bin(), "header_read_timeout_ms = 200\nkeep_alive_timeout_ms = 200\nidentify_timeout_ms = 200\n")?;
    let mut slow = half_open(hub.addr)?;
    eventually_blocking("the half-open head to be closed", || {
        if closed_by_peer(&mut slow) {
            Ok(())
        } else {
            Err("still open".into())
        }
    })?;
    let mut idle = TcpStream::connect(hub.addr)?;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut first = [0u8; 12];
    idle.read_exact(&mut first)?;
    assert_eq!(&first, b"HTTP/1.1 200");
    eventually_blocking("the idle keep-alive connection to be closed", || {
        if closed_by_peer(&mut idle) {
            Ok(())
        } else {
            Err("still open".into())
        }
    })?;
    let mut silent = WsAgent::connect(&hub.ws_url()).await?;
    assert!(matches!(silent.closed().await?, Closed::Code(1008, r) if r.contains("no identify within 200 ms")));
    Ok(())
}

#[tokio::test]
async fn sizes_are_capped_and_the_field_is_named() -> R {
    let hub = Hub::start(bin(), "max_metadata_bytes = 1024\nmax_extra_bytes = 1024\nmax_progress_bytes = 300\n")?;
    let api = hub.admin();
    let (s, v) = api.post("/api/tasks", json!({"description": "d".repeat(10_001)})).await?;
    assert_eq!((s, v["error"].as_str()), (413, Some("field_too_large")));
    assert!(v["message"].as_str().unwrap().starts_with("description: 10001 characters"), "{v}");
    let (s, v) = api.post("/api/tasks", json!({"description": "d", "metadata": {"blob": "m".repeat(2000)}})).await?;
    assert_eq!((s, v["error"].as_str()), (413, Some("field_too_large")));
    assert!(
        v["message"].as_str().unwrap().starts_with("metadata:")
            && v["message"].as_str().unwrap().contains("max_metadata_bytes")
    );
    let (s, v) = api.post("/api/tasks", json!({"description": "d", "file_hints": ["f".repeat(2000)]})).await?;
    assert_eq!(s, 413);
    assert!(v["message"].as_str().unwrap().starts_with("file_hints"), "{v}");
    let huge = format!("{{\"description\":\"d\",\"metadata\":{{\"x\":\"{}\"}}}}", "y".repeat(4 << 20));
    let (s, v) = hub.admin().raw(reqwest::Method::POST, "/api/tasks", Some(huge)).await?;
    assert_eq!((s, v["error"].as_str()), (413, Some("body_too_large")));
    // A progress line over the limit is stored cut down, and says so.
    let id = hub.submit_text("chatty").await?;
    let mut a = hub.agent("a", &[]).await?;
    a.take_task().await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": {"log": "z".repeat(10_000)}})).await?;
    let t = eventually("the cut progress line", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        t.task.progress.clone().ok_or_else(|| "no progress yet".to_string())
    })
    .await?;
    assert_eq!((t["truncated"].as_bool(), t["bytes"].as_u64()), (Some(true), Some(10_010)), "{t}");
    assert!(t.to_string().len() < 400);
    Ok(())
}

#[tokio::test]
async fn listings_are_paged_with_a_cursor() -> R {
    let hub = Hub::start(bin(), "")?;
    let mut ids = Vec::new();
    for n in 0..250 {
        let mut t = SubmitTask::new(format!("t{n}"));
        t.assign_to = Some("nobody".into());
        ids.push(hub.submit(t).await?);
    }
    let client = hub.admin_client();
    let first = client.call(&ListTasks::default()).await?;
    assert_eq!(
        (first.count, first.tasks[0].task_id.as_str()),
        (100, ids[249].as_str()),
        "newest first, 100 by default"
    );
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = client.call(&ListTasks { limit: Some(70), cursor, status: Some(TaskStatus::Queued) }).await?;
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "every task once, in order, across pages");
    let all = client.call(&ListTasks { limit: Some(1000), ..Default::default() }).await?;
    assert_eq!((all.count, all.next_cursor), (250, None));
    let (s, v) = hub.admin().get("/api/tasks?limit=1001").await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    let (s, v) = hub.admin().get("/api/tasks?cursor=zz").await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    let e = client.call(&ListTasks { limit: Some(0), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidQuery));
    Ok(())
}

#[tokio::test]
async fn the_open_task_limit_answers_queue_full() -> R {
    let hub = Hub::start(bin(), "max_open_tasks = 2\n")?;
    hub.submit_text("1").await?;
    hub.submit_text("2").await?;
    let (s, v) = hub.admin().post("/api/tasks", json!({"description": "3"})).await?;
    assert_eq!((s, v["error"].as_str()), (503, Some("queue_full")));
    assert!(v["message"].as_str().unwrap().contains("max_open_tasks"));
    Ok(())
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private() -> R {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("data");
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let hub = Hub::start_in(bin(), &dir, &testkit::fast_config())?;
    hub.submit_text("make the WAL exist").await?;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&dir)?, 0o700, "an open data dir is tightened at start");
    for f in ["hub.db", "hub.db-wal", "hub.db-shm"] {
        assert_eq!(mode(&dir.join(f))?, 0o600, "{f}");
    }
    Ok(())
}

fn hub_cmd(dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args(["hub", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir).env_remove("AGENTCOM_ADMIN_TOKEN");
    c
}

#[tokio::test]
async fn an_empty_database_beside_an_admin_token_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("admin.token"), "an-admin-token-of-some-length\n")?;
    std::fs::write(dir.path().join("hub.db"), b"")?;
    let out = hub_cmd(dir.path()).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.db is empty but") && err.contains("Refusing to start an empty hub"), "{err}");
    assert_eq!(std::fs::metadata(dir.path().join("hub.db"))?.len(), 0, "left as it was");
    Ok(())
}

#[tokio::test]
async fn the_admin_token_comes_from_a_file_and_the_flag_is_warned_about() -> R {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("secret");
    std::fs::write(&token_file, "from-a-file-0123456789abcdef\n")?;
    let mut child = hub_cmd(&dir.path().join("d"))
        .args(["--log-format", "json", "--admin-token-file"])
        .arg(&token_file)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = testkit::watch_logs(child.stderr.take().unwrap(), logs, "hub listening", "addr")?;
    let (s, _) =
        testkit::Api::new(&format!("http://{addr}"), Some("from-a-file-0123456789abcdef")).get("/api/tasks").await?;
    assert_eq!(s, 200);
    assert!(!dir.path().join("d").join("admin.token").exists(), "no token generated beside a given one");
    let _ = child.kill();
    let _ = child.wait();

    let mut child = hub_cmd(&dir.path().join("e"))
        .args(["--log-format", "json", "--admin-token", "on-the-command-line-0123456789"])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    testkit::watch_logs(child.stderr.take().unwrap(), logs.clone(), "hub listening", "addr")?;
    let warned = logs.lock().unwrap().iter().any(|l| l.contains("/proc/<pid>/cmdline") && l.contains("WARN"));
    assert!(warned, "{:?}", logs.lock().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[tokio::test]
async fn ids_from_outside_cannot_forge_log_lines() -> R {
    let dir = tempfile::tempdir()?;
    let mut child = hub_cmd(dir.path())
        .env("AGENTCOM_ADMIN_TOKEN", "admin-token-0123456789abcdef")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Human logs: read them line by line until the hub says where it listens.
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let addr = eventually_blocking("the hub to listen", || {
        let all = lines.lock().unwrap().clone();
        all.iter()
            .find_map(|l| l.split("addr=").nth(1).map(|a| a.split_whitespace().next().unwrap_or("").to_string()))
            .ok_or_else(|| all.join("\n"))
    })?;
    let forged = "2026-01-01T00:00:00.000000Z  INFO hub: admin token rotated";
    let mut c = WsAgent::connect(&format!("ws://{addr}/ws")).await?;
    c.send(json!({"type": "identify", "agent_id": format!("evil\n{forged}"), "token": "x"})).await?;
    assert_eq!(c.expect("error").await?["error"], "validation_failed");
    c.send(json!({"type": "identify", "agent_id": "ok", "token": format!("t\n{forged}")})).await?;
    c.expect("error").await?;
    let logged = eventually_blocking("the refused identify in the log", || {
        let all = lines.lock().unwrap().clone();
        if all.iter().any(|l| l.contains("identify refused")) {
            Ok(all)
        } else {
            Err(all.join("\n"))
        }
    })?;
    for l in &logged {
        assert!(!l.starts_with(forged), "a forged line reached the log: {logged:?}");
        assert!(!l.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {l:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[tokio::test]
async fn a_second_hub_on_a_used_port_fails_once_and_touches_nothing() -> R {
    let hub = Hub::start(bin(), "")?;
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(bin())
        .args(["hub", "--listen", &hub.addr.to_string(), "--data-dir"])
        .arg(dir.path().join("second"))
        .env_remove("AGENTCOM_ADMIN_TOKEN")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let cause = "Address already in use";
    assert_eq!(err.matches(cause).count(), 1, "the cause once: {err}");
    assert!(err.lines().last().unwrap().starts_with(&format!("error: cannot listen on {}", hub.addr)), "{err}");
    assert!(!dir.path().join("second").exists(), "no data dir, no admin token minted");
    Ok(())
}

#[tokio::test]
async fn a_reassigned_task_does_not_show_the_last_attempts_progress() -> R {
    let hub = Hub::start(bin(), "accept_timeout_ms = 30000\n")?;
    let id = hub.submit_text("two attempts").await?;
    let mut a = hub.agent("a", &[]).await?;
    a.take_task().await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": {"step": "first attempt"}})).await?;
    eventually("the first attempt's progress", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        t.task.progress.ok_or_else(|| "none yet".to_string())
    })
    .await?;
    a.send(json!({"type": "task_rejected", "task_id": id, "reason": "changed my mind"})).await?;
    a.expect("task_ack").await?;
    let mut b = hub.agent("b", &[]).await?;
    b.take_task().await?;
    let t = hub.task(&id).await?;
    assert_eq!((t.task.assigned_to.as_deref(), t.task.progress), (Some("b"), None::<Value>));
    Ok(())
}

#[tokio::test]
async fn absurd_usage_counts_are_refused_or_dropped_and_never_break_listings() -> R {
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("a").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a", &token, &[]).await?;
    // In the frame's `usage`: refused by the schema, naming the field.
    let first = hub.submit_text("one").await?;
    let (_, g) = a.take_task().await?;
    a.send(json!({"type": "task_complete", "task_id": first, "generation": g,
        "usage": {"input_tokens": u64::MAX, "cost_usd": 1e300}}))
        .await?;
    let refused = a.expect("error").await?;
    assert_eq!(refused["error"], "validation_failed", "{refused}");
    let text = refused.to_string();
    assert!(text.contains("usage.input_tokens") && text.contains("usage.cost_usd"), "{text}");
    // In places no schema covers (the result's own usage, v1's tokens_used): dropped, the rest kept.
    a.send(json!({"type": "task_complete", "task_id": first, "generation": g, "tokens_used": u64::MAX,
        "result": {"status": "success", "usage": {"input_tokens": u64::MAX, "output_tokens": 5, "model": "m"}}}))
        .await?;
    assert_eq!(a.expect("task_ack").await?["status"], "complete");
    let listed = hub.admin().get("/api/tasks").await?;
    assert_eq!(listed.0, 200, "{listed:?}");
    let usage = hub.admin().get("/api/usage?by=model").await?;
    assert_eq!(usage.0, 200, "{usage:?}");
    let rows = usage.1["rows"].as_array().cloned().unwrap_or_default();
    assert!(rows.iter().any(|r| r["key"] == "m" && r["output_tokens"] == 5 && r["input_tokens"] == 0), "{usage:?}");
    Ok(())
}

#[tokio::test]
async fn an_agent_reads_where_others_tasks_stand_but_not_what_was_said_or_made_on_them() -> R {
    let hub = Hub::start(bin(), "")?;
    let (t1, t2) = (hub.token("a1").await?, hub.token("a2").await?);
    let mut a1 = WsAgent::identify(&hub.ws_url(), "a1", &t1, &[]).await?;
    let id = hub.submit_text("deploy with the key").await?;
    let (_, g) = a1.take_task().await?;
    a1.send(json!({"type": "needs_input", "task_id": id, "request_id": "r1", "question": "Which key?"})).await?;
    eventually("the question stored", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        t.task.needs_input.ok_or_else(|| "not yet".to_string())
    })
    .await?;
    let (s, _) = hub.admin().post(&format!("/api/tasks/{id}/input"), json!({"answer": "sk-live-2718"})).await?;
    assert_eq!(s, 200);
    a1.expect("task_input").await?;
    a1.send(json!({"type": "task_complete", "task_id": id, "generation": g,
        "result": {"status": "success", "output": "deployed with sk-live-2718"}}))
        .await?;
    a1.expect("task_ack").await?;
    // a2 neither submitted nor holds it: status yes, content and history no.
    let (s, other) = hub.api(Some(&t2)).get(&format!("/api/tasks/{id}")).await?;
    assert_eq!(
        (s, other["status"].as_str(), other["description"].as_str()),
        (200, Some("completed"), Some("deploy with the key"))
    );
    assert!(!other.to_string().contains("sk-live-2718") && !other.to_string().contains("Which key"), "{other}");
    assert_eq!(other["history"], json!([]), "{other}");
    let (_, listed) = hub.api(Some(&t2)).get("/api/tasks").await?;
    assert!(!listed.to_string().contains("sk-live-2718"), "{listed}");
    // Its holder and the admin see all of it.
    for token in [&t1, &hub.admin_token] {
        let (_, full) = hub.api(Some(token)).get(&format!("/api/tasks/{id}")).await?;
        assert_eq!(full["result"]["output"], "deployed with sk-live-2718", "{full}");
        assert!(full["history"].as_array().is_some_and(|h| h.len() >= 4), "{full}");
    }
    // No agent may be called `admin`: it would own every task the admin token submitted.
    let (s, v) = hub.admin().post("/admin/tokens", json!({"agent_id": "admin"})).await?;
    assert_eq!((s, v["error"].as_str()), (422, Some("validation_failed")), "{v}");
    assert!(v.to_string().contains("reserved for the admin token"), "{v}");
    let mut admin_named = WsAgent::connect(&hub.ws_url()).await?;
    admin_named.send(json!({"type": "identify", "agent_id": "admin", "token": hub.admin_token})).await?;
    let refused = admin_named.expect("error").await?;
    assert!(refused.to_string().contains("reserved for the admin token"), "{refused}");
    Ok(())
}
