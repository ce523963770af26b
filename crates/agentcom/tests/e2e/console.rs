//! The fleet console's hub side (issue 11), end to end: the event stream (resume, per-agent view,
//! slow readers), agents that ask for input, usage and budgets, and webhooks to a real receiver.

use crate::bin;
use proto::api::{AnswerTask, Event, EventKind, GetUsage, TaskStatus, UsageBy};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use testkit::{eventually, Follower, Hub, WsAgent};

type R = anyhow::Result<()>;

fn task_to(task_id: &str, to: TaskStatus) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(&e.kind, EventKind::Task { task_id: t, to: s, .. } if t == task_id && *s == to)
}

#[tokio::test]
async fn the_event_stream_follows_a_task_and_resumes_without_gaps() -> R {
    let hub = Hub::start(bin(), "event_window = 50\n")?;
    let f = Follower::start(hub.admin_client(), None).await?;
    let id = hub.submit_text("watch me").await?;
    let mut a = hub.agent("a1", &[]).await?;
    let (_, g) = a.take_task().await?;
    a.send(json!({"type": "task_accepted", "task_id": id})).await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": {"step": "half"}})).await?;
    a.send(json!({"type": "task_complete", "task_id": id, "generation": g, "result": {"status": "success"},
        "usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.25, "model": "m1"}}))
        .await?;
    let seen = f.until("completed", task_to(&id, TaskStatus::Completed)).await?;
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| match &e.kind {
            EventKind::Task { to, .. } => format!("task:{to}"),
            EventKind::Agent { agent_id, .. } => format!("agent:{agent_id}"),
            other => other.name().to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["task:queued", "agent:a1", "task:assigned", "task:working", "progress", "usage", "task:completed"],
        "in order, each once"
    );
    // Ids grow; a reader that was away resumes after the last id it saw, with nothing missed.
    let last = seen.last().unwrap().id.clone();
    drop(f);
    let missed = hub.submit_text("while away").await?;
    let g = Follower::start(hub.admin_client(), Some(last.clone())).await?;
    let resumed = g.until("the missed submission", task_to(&missed, TaskStatus::Queued)).await?;
    let next_id = |id: &str| {
        let (run, seq) = id.split_once('-').unwrap();
        format!("{run}-{}", seq.parse::<u64>().unwrap() + 1)
    };
    assert_eq!(resumed[0].id, next_id(&last), "the first event after the last one seen: no gap");
    assert!(task_to(&missed, TaskStatus::Queued)(&resumed[0]), "{resumed:?}");
    // Far behind the window: told so, then served from what the hub still has.
    for n in 0..60 {
        hub.submit_text(&format!("filler {n}")).await?;
    }
    let h = Follower::start(hub.admin_client(), Some(seen[0].id.clone())).await?;
    let r = h.until("the resync notice", |e| matches!(e.kind, EventKind::Resync { .. })).await?;
    assert!(matches!(&r[0].kind, EventKind::Resync { reason } if reason.contains("older than the 50 events")), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn an_agent_token_sees_only_what_concerns_it() -> R {
    let hub = Hub::start(bin(), "")?;
    let t1 = hub.token("a1").await?;
    let mine = Follower::start(hub.client(Some(&t1)), None).await?;
    let other = hub
        .submit(proto::api::SubmitTask { assign_to: Some("a2".into()), ..proto::api::SubmitTask::new("a2's") })
        .await?;
    let own = hub.client(Some(&t1)).call(&proto::api::SubmitTask::new("a1 submitted this")).await?.task_id;
    mine.until("its own submission", task_to(&own, TaskStatus::Queued)).await?;
    let _a2 = hub.agent("a2", &[]).await?;
    let admin = Follower::start(hub.admin_client(), None).await?;
    hub.submit_text("marker").await?;
    admin
        .until("the marker", |e| matches!(&e.kind, EventKind::Task { reason, .. } if reason.contains("admin")))
        .await?;
    let seen = mine.events();
    assert!(
        seen.iter().all(|e| match &e.kind {
            EventKind::Task { task_id, .. } => task_id == &own,
            EventKind::Agent { agent_id, .. } => agent_id == "a1",
            _ => true,
        }),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|e| matches!(&e.kind, EventKind::Task { task_id, .. } if task_id == &other)));
    let (s, _) = hub.api(None).get("/api/events").await?;
    assert_eq!(s, 401, "no token, no events");
    Ok(())
}

#[tokio::test]
async fn a_reader_that_does_not_keep_up_is_dropped_and_the_hub_goes_on() -> R {
    use std::io::{Read, Write};
    let hub = Hub::start(bin(), "event_reader_buffer = 16\nmax_progress_bytes = 16384\n")?;
    let id = hub.submit_text("chatty").await?;
    let mut a = hub.agent("a1", &[]).await?;
    let (_, g) = a.take_task().await?;
    // A reader that reads nothing for now.
    let mut slow = std::net::TcpStream::connect(hub.addr)?;
    write!(slow, "GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", hub.admin_token)?;
    let line = "x".repeat(15_000);
    for n in 0..1500 {
        a.send(json!({"type": "task_progress", "task_id": id, "progress": {"n": n, "log": line}})).await?;
    }
    // The core went on regardless of the reader that does not read.
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    hub.wait_status(&id, TaskStatus::Completed).await?;
    // Now the slow reader reads: what it gets ends with the reason it was dropped.
    let mut all = Vec::new();
    slow.set_read_timeout(Some(testkit::WAIT))?;
    let mut buf = [0u8; 65_536];
    while let Ok(n) = slow.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&all).contains("event: dropped") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("event: dropped") && text.contains("fell") && text.contains("behind"),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
    let m = hub.client(None).metrics().await?;
    assert!(m.contains("agentcom_event_readers_dropped_total 1"), "{m}");
    Ok(())
}

#[tokio::test]
async fn an_agent_asks_a_person_and_gets_the_answer_across_a_hub_restart() -> R {
    let mut hub = Hub::start(bin(), "")?;
    let id = hub.submit_text("needs a decision").await?;
    let token = hub.token("a1").await?;
    let mut a = WsAgent::identify(&hub.ws_url(), "a1", &token, &[]).await?;
    let (_, g) = a.take_task().await?;
    a.send(json!({"type": "task_accepted", "task_id": id})).await?;
    a.expect("task_ack").await?;
    a.send(json!({"type": "needs_input", "task_id": id, "request_id": "g1-1", "question": "Which database?",
        "options": ["sqlite", "postgres"]}))
        .await?;
    let t = eventually("the question at the hub", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        t.task.needs_input.clone().map(|_| t).ok_or_else(|| "not yet".to_string())
    })
    .await?;
    let q = t.task.needs_input.unwrap();
    assert_eq!((q.question.as_str(), q.options.len()), ("Which database?", 2));
    let agents = hub.admin_client().call(&proto::api::ListAgents::default()).await?;
    assert!(agents.agents[0].needs_input, "the fleet view shows the badge");
    // The question survives a hub restart; the agent reconnects and claims its task.
    hub.restart_after_kill(bin(), &testkit::fast_config())?;
    let t = hub.task(&id).await?;
    assert!(t.task.needs_input.is_some(), "durable");
    let out = std::process::Command::new(bin())
        .args(["task", "answer", &id, "postgres", "--request-id", "g1-1"])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent when the agent reconnects"));
    let mut a = WsAgent::identify(&hub.ws_url(), "a1", &token, &[]).await?;
    a.send(json!({"type": "state_report", "task_id": id, "generation": g})).await?;
    assert_eq!(a.expect("state_report_ack").await?["action"], "continue");
    let input = a.expect("task_input").await?;
    assert_eq!((input["answer"].as_str(), input["request_id"].as_str()), (Some("postgres"), Some("g1-1")));
    a.send(json!({"type": "task_input_ack", "task_id": id, "request_id": "g1-1"})).await?;
    eventually("the answer confirmed", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?;
        if t.task.answer.is_none() && t.task.needs_input.is_none() {
            Ok(())
        } else {
            Err(format!("{:?}", t.task))
        }
    })
    .await?;
    let again =
        hub.admin_client().call(&AnswerTask { task_id: id.clone(), answer: "x".into(), request_id: None }).await;
    assert!(again.unwrap_err().to_string().contains("not waiting for input"));
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn usage_is_stored_aggregated_and_counted() -> R {
    let hub = Hub::start(bin(), "")?;
    for (agent, model, cost) in [("a1", "opus", 1.5), ("a1", "sonnet", 0.25), ("a2", "sonnet", 0.5)] {
        // Connected first: the task goes to this connection, not a closing earlier one.
        let mut a = hub.agent(agent, &[]).await?;
        let id = hub
            .submit(proto::api::SubmitTask { assign_to: Some(agent.into()), ..proto::api::SubmitTask::new(model) })
            .await?;
        let (_, g) = a.take_task().await?;
        a.send(json!({"type": "task_complete", "task_id": id, "generation": g, "result": {"status": "success"},
            "usage": {"input_tokens": 1000, "output_tokens": 100, "cost_usd": cost, "model": model}}))
            .await?;
        a.expect("task_ack").await?;
        a.close().await;
    }
    // An AgentCom v1 sidecar reports only tokens_used.
    let id = hub
        .submit(proto::api::SubmitTask { assign_to: Some("v1".into()), ..proto::api::SubmitTask::new("old") })
        .await?;
    let mut v1 = hub.agent("v1", &[]).await?;
    let (_, g) = v1.take_task().await?;
    v1.send(json!({"type": "task_complete", "task_id": id, "generation": g, "tokens_used": 777})).await?;
    v1.expect("task_ack").await?;
    let by_agent = hub.admin_client().call(&GetUsage { by: UsageBy::Agent, ..Default::default() }).await?;
    let row = |k: &str| by_agent.rows.iter().find(|r| r.key == k).cloned().unwrap();
    assert_eq!((row("a1").reports, row("a1").input_tokens, row("a1").cost_usd), (2, 2000, 1.75));
    assert_eq!(row("v1").total_tokens, 777);
    assert!((by_agent.total.cost_usd - 2.25).abs() < 1e-9);
    let by_model = hub.admin_client().call(&GetUsage { by: UsageBy::Model, ..Default::default() }).await?;
    let keys: Vec<&str> = by_model.rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["opus", "sonnet", "unknown"]);
    let by_day = hub.admin_client().call(&GetUsage { by: UsageBy::Day, ..Default::default() }).await?;
    assert_eq!((by_day.rows.len(), by_day.rows[0].key.as_str()), (1, by_day.until.as_str()));
    // An agent sees only its own spend.
    let t2 = hub.token("a2").await?;
    let own = hub.client(Some(&t2)).call(&GetUsage::default()).await?;
    assert_eq!(own.rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a2"]);
    let m = hub.client(None).metrics().await?;
    // The fleet's total, and nothing per agent, to callers without a token.
    assert!(m.contains("\nagentcom_usage_cost_usd_total 2.25\n") && !m.contains("agent=\""), "{m}");
    let out = std::process::Command::new(bin())
        .args(["usage", "--by", "model"])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("MODEL") && table.contains("opus") && table.contains("$2.2500"), "{table}");
    let (s, v) = hub.admin().get("/api/usage?since=yesterday").await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    Ok(())
}

/// A local HTTP server that records every POST body, answering with scripted statuses.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(statuses: Vec<u16>) -> anyhow::Result<Receiver> {
        use axum::routing::post;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(statuses)));
        let (b, s) = (bodies.clone(), script.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |body: axum::Json<Value>| {
                let (b, s) = (b.clone(), s.clone());
                async move {
                    b.lock().unwrap().push(body.0);
                    let code = s.lock().unwrap().pop_front().unwrap_or(200);
                    axum::http::StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, bodies, _task: task })
    }

    async fn received(&self, n: usize) -> anyhow::Result<Vec<Value>> {
        eventually(&format!("{n} webhook posts"), || async {
            let b = self.bodies.lock().unwrap().clone();
            if b.len() >= n {
                Ok(b)
            } else {
                Err(format!("{b:?}"))
            }
        })
        .await
    }
}

#[tokio::test]
async fn webhooks_tell_people_and_budgets_stop_spending() -> R {
    // The JSON hook refuses twice first: it is retried.
    let json_hook = Receiver::start(vec![500, 503]).await?;
    let slack_hook = Receiver::start(vec![]).await?;
    // The URL carries a secret, as Slack's and most hooks' do: logs name the host only.
    let config = format!(
        "[budgets.agents.spender]\ndaily_usd = 1.0\n\n\
         [[webhooks]]\nurl = \"{}?key=hook-secret-3141\"\nevents = [\"needs_input\", \"budget_exhausted\"]\nretry_ms = 20\n\n\
         [[webhooks]]\nurl = \"{}\"\nformat = \"slack\"\nevents = [\"dead_letter\", \"agent_offline\"]\nagent_offline_after_ms = 200\n",
        json_hook.url, slack_hook.url
    );
    let hub = Hub::start(bin(), &config)?;
    let id =
        hub.submit(proto::api::SubmitTask { max_retries: 0, ..proto::api::SubmitTask::new("ask, then fail") }).await?;
    let mut a = hub.agent("spender", &[]).await?;
    let (_, g) = a.take_task().await?;
    a.send(json!({"type": "needs_input", "task_id": id, "request_id": "r1", "question": "Merge it?"})).await?;
    let posts = json_hook.received(3).await?;
    assert!(posts.iter().all(|p| p["event"] == "needs_input"), "the same notification, retried: {posts:?}");
    assert_eq!(
        (posts[2]["question"]["question"].as_str(), posts[2]["agent_id"].as_str()),
        (Some("Merge it?"), Some("spender"))
    );
    let logs = eventually("the refusals logged", || async {
        let logs = hub.logs().join("\n");
        if logs.matches("webhook refused the notification").count() >= 2 {
            Ok(logs)
        } else {
            Err(logs)
        }
    })
    .await?;
    assert!(logs.contains("127.0.0.1") && !logs.contains("hook-secret-3141"), "{logs}");
    a.send(json!({"type": "task_failed", "task_id": id, "generation": g, "reason": "tests red",
        "usage": {"cost_usd": 1.25, "input_tokens": 10}}))
        .await?;
    assert_eq!(a.expect("task_ack").await?["status"], "dead_letter");
    let slack = slack_hook.received(1).await?;
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains("dead letter") && text.contains("tests red") && slack[0].as_object().unwrap().len() == 1,
        "{slack:?}"
    );
    let posts = json_hook.received(4).await?;
    assert_eq!(posts[3]["event"], "budget_exhausted");
    assert!(posts[3]["text"].as_str().unwrap().contains("$1.25 of $1.00"), "{:?}", posts[3]);
    // Over budget: its next task waits (for another agent).
    let next = hub.submit_text("after the budget").await?;
    // The submission was dispatched before its 201; a ping answered after it is the proof.
    a.send(json!({"type": "ping"})).await?;
    assert_eq!(a.recv().await?["type"], "pong", "nothing offered to an agent over budget");
    let agents = hub.admin_client().call(&proto::api::ListAgents::default()).await?;
    assert!(agents.agents[0].spend.exhausted);
    let mut b = hub.agent("other", &[]).await?;
    assert_eq!(b.take_task().await?.0, next);
    // An agent gone for longer than agent_offline_after_ms: the Slack hook hears of it.
    a.close().await;
    let slack = slack_hook.received(2).await?;
    assert!(slack[1]["text"].as_str().unwrap().contains("agent spender has been offline"), "{slack:?}");
    Ok(())
}

#[tokio::test]
async fn agentcom_events_follows_the_stream_from_the_shell() -> R {
    use std::io::BufRead;
    let hub = Hub::start(bin(), "")?;
    let mut follow = testkit::Owned::new(
        std::process::Command::new(bin())
            .args(["events", "--json"])
            .env("AGENTCOM_URL", hub.url())
            .env("AGENTCOM_TOKEN", &hub.admin_token)
            .stdout(std::process::Stdio::piped())
            .spawn()?,
        "agentcom events",
    );
    let stdout = follow.take_stdout().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Submit until the follower is connected and prints it (its connection races the first one).
    let line = eventually("a task event printed as JSON", || async {
        let id = hub.submit_text("shell").await.map_err(|e| e.to_string())?;
        while let Ok(l) = rx.try_recv() {
            let e: Event = serde_json::from_str(&l).map_err(|e| format!("{e}: {l}"))?;
            if matches!(&e.kind, EventKind::Task { task_id, .. } if *task_id == id) {
                return Ok(l);
            }
        }
        Err("nothing yet".into())
    })
    .await?;
    assert!(line.contains("\"type\":\"task\"") && line.contains("\"to\":\"queued\""), "{line}");
    follow.kill9();
    Ok(())
}
