//! The dashboard (issue 11) in a real browser: Debian's Chromium, headless, over WebDriver,
//! against the real hub binary; agents are played by `testkit::WsAgent` over real WebSockets.
//! Live updates are asserted by polling the DOM (never a fixed sleep) on a page that must not
//! have reloaded. The session, CSRF and role rules are in `dashboard_security.rs`.

use crate::dashboard_support::*;
use serde_json::{json, Value};
use std::path::Path;
use testkit::browser::Browser;
use testkit::{eventually, Hub};

#[tokio::test]
async fn a_task_goes_from_queued_to_completed_live_after_login() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;

    // Submit through the form: the browser lands on the new task's page.
    b.fill("#submit textarea[name=description]", "Make the build reproducible").await?;
    b.click("#submit button[type=submit]").await?;
    b.wait_text("#task-status", "queued").await?;
    let id = task_on_screen(&b).await?;
    assert!(!id.is_empty());
    b.wait_text("#task-description", "Make the build reproducible").await?;
    live(&b).await?;
    mark(&b).await?;

    // An agent takes it, reports progress and completes it: the page follows without a reload.
    let mut a = hub.agent("a1", &[]).await?;
    let (got, g) = a.take_task().await?;
    assert_eq!(got, id);
    b.wait_text("#task-status", "working").await?;
    b.wait_text("#task-agent", "a1").await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": "compiling 3 of 7 crates"})).await?;
    b.wait_text("#progress-log", "compiling 3 of 7 crates").await?;
    a.send(json!({"type": "task_complete", "task_id": id, "generation": g,
        "result": {"status": "success", "summary": "pinned every dependency"},
        "usage": {"input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.42, "model": "m1"}}))
        .await?;
    a.expect("task_ack").await?;
    b.wait_text("#task-status", "completed").await?;
    b.wait_text("#task-result", "pinned every dependency").await?;
    b.wait_text("#task-usage", "$0.42").await?;
    b.wait_text("#task-history", "completed").await?;
    same_page(&b).await?;
    let refreshes = b.js("return Number(document.body.dataset.refreshes)").await?;
    assert!(refreshes.as_u64().unwrap_or(0) >= 1, "parts of the page were refetched: {refreshes}");

    // The fleet page follows agents too: a new agent appears, then its task.
    b.goto(&format!("{}/", hub.url())).await?;
    live(&b).await?;
    mark(&b).await?;
    b.wait_text("#agents", "a1").await?;
    let mut a2 = hub.agent("a2", &[]).await?;
    b.wait_text("#agents", "a2").await?;
    let second = hub
        .submit(proto::api::SubmitTask { assign_to: Some("a2".into()), ..proto::api::SubmitTask::new("second") })
        .await?;
    a2.take_task().await?;
    let row = b.wait_text("tr[data-agent-id=a2]", &second).await?;
    assert!(row.contains("working"), "{row}");
    same_page(&b).await?;
    a.close().await;
    a2.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_gets_the_answer_given_on_the_task_page() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let dir = tempfile::tempdir()?;
    let id = hub.submit_text("Migrate the schema").await?;
    let mut a = hub.agent("a1", &[]).await?;
    let (_, g) = a.take_task().await?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    b.goto(&format!("{}/tasks/{id}", hub.url())).await?;
    live(&b).await?;
    mark(&b).await?;
    assert_eq!(b.text("#question").await?, None);

    // The agent asks; the question and its form appear on the open page.
    a.send(json!({"type": "needs_input", "task_id": id, "request_id": "q-1", "question": "Which database?",
        "options": ["sqlite", "postgres"]}))
        .await?;
    b.wait_text("#question-text", "Which database?").await?;
    same_page(&b).await?;
    // The fleet shows who is waiting, with a badge.
    b.goto(&format!("{}/", hub.url())).await?;
    b.wait_text("#needs-you", "a1").await?;
    b.wait_text("#agents", "needs input").await?;
    b.click("#needs-you a").await?;
    b.wait_text("#question-text", "Which database?").await?;
    live(&b).await?;
    b.click("#answer input[value=postgres]").await?;
    b.fill("#answer-text", "postgres, with a connection pool").await?;
    b.click("#answer button[type=submit]").await?;

    let input = a.expect("task_input").await?;
    assert_eq!(input["task_id"], json!(id));
    assert_eq!(input["request_id"], "q-1");
    assert_eq!(input["answer"], "postgres, with a connection pool");
    b.wait_text("#answer-pending", "waiting for the agent's sidecar").await?;
    live(&b).await?;
    mark(&b).await?;
    a.send(json!({"type": "task_input_ack", "task_id": id, "request_id": "q-1"})).await?;
    eventually("the answered question to leave the page", || async {
        match (b.text("#question").await, b.text("#answer-pending").await) {
            (Ok(None), Ok(None)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    same_page(&b).await?;
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn the_admin_submits_cancels_retries_and_restarts_with_a_confirmation() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    // Under a supervisor, so Restart is offered (an agent without one would only stop).
    let mut a1 = agent_with_process(&hub, "a1", "native", 10, 0).await?;
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;

    // Submit an urgent task no agent can take (it needs a GPU): the queue shows it in its lane.
    b.fill("#submit textarea[name=description]", "Train the model").await?;
    b.client
        .find(testkit::browser::fantoccini::Locator::Css("#submit select[name=priority]"))
        .await?
        .select_by_value("urgent")
        .await?;
    b.fill("#submit input[name=capabilities]", "gpu, cuda").await?;
    b.click("#submit button[type=submit]").await?;
    b.wait_text("#task-status", "queued").await?;
    let id = task_on_screen(&b).await?;
    let t = hub.task(&id).await?.task;
    assert_eq!(
        (t.priority, t.needed_capabilities.clone()),
        (proto::api::Priority::Urgent, vec!["gpu".into(), "cuda".into()])
    );
    b.goto(&format!("{}/queue", hub.url())).await?;
    let lane = b.wait_text("section[data-lane=urgent]", "Train the model").await?;
    assert!(!lane.contains("Nothing queued"), "{lane}");

    // Cancel, then retry, from the task page.
    b.goto(&format!("{}/tasks/{id}", hub.url())).await?;
    b.click("#cancel").await?;
    b.wait_text("#task-status", "cancelled").await?;
    b.click("#retry").await?;
    b.wait_text("#task-status", "queued").await?;

    // A task that fails with no retries left lands in the dead letter queue, live.
    b.goto(&format!("{}/dead-letter", hub.url())).await?;
    live(&b).await?;
    mark(&b).await?;
    let doomed = hub.submit(proto::api::SubmitTask { max_retries: 0, ..proto::api::SubmitTask::new("doomed") }).await?;
    let (got, g) = a1.take_task().await?;
    assert_eq!(got, doomed);
    a1.send(json!({"type": "task_failed", "task_id": doomed, "generation": g, "reason": "boom"})).await?;
    assert_eq!(a1.expect("task_ack").await?["status"], "dead_letter");
    b.wait_text("#dead-letter", "doomed").await?;
    same_page(&b).await?;
    b.click(&format!("tr[data-task-id='{doomed}'] button")).await?;
    b.wait_text("h1", "Dead letter").await?;
    eventually("the retried task to leave the dead letter page", || async {
        match b.text("#dead-letter").await {
            Ok(Some(t)) if !t.contains("doomed") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let (again, _) = a1.take_task().await?;
    assert_eq!(again, doomed, "queued again and handed out");

    // Restart: a confirmation step first, then the agent's sidecar is told.
    b.goto(&format!("{}/", hub.url())).await?;
    b.click("tr[data-agent-id=a1] a.button").await?;
    b.wait_text("h1", "Restart agent").await?;
    b.fill("#restart input[name=reason]", "new config").await?;
    b.click("#restart input[name=force]").await?;
    b.click("#confirm-restart").await?;
    if let Err(e) = b.wait_text("#restart-done", "a1").await {
        anyhow::bail!("{e}: {:?} {:?}", b.client.current_url().await?, b.text("main").await);
    }
    let frame = a1.expect("restart_sidecar").await?;
    assert_eq!((frame["reason"].as_str(), frame["force"].as_bool()), (Some("new config"), Some(true)));
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn text_from_agents_and_users_is_shown_as_text() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let evil = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>&amp;";
    let id = hub.submit_text(evil).await?;
    let agent_id = "<b>bold</b>\"'";
    let mut a = hub.agent(agent_id, &[]).await?;
    let (_, _) = a.take_task().await?;
    a.send(json!({"type": "needs_input", "task_id": id, "request_id": "r<1>", "question": evil, "options": [evil]}))
        .await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": evil})).await?;
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    b.wait_text("#agents", agent_id).await?;
    b.goto(&format!("{}/tasks/{id}", hub.url())).await?;
    assert_eq!(b.wait_text("#task-description", "<script>").await?, evil);
    b.wait_text("#question-text", "onerror").await?;
    b.wait_text("#progress-log", "<img").await?;
    live(&b).await?;
    a.send(json!({"type": "task_progress", "task_id": id, "progress": format!("live {evil}")})).await?;
    b.wait_text("#progress-log", "live <img").await?;
    let injected =
        b.js("return [document.title, document.querySelectorAll('main img, main script, main b').length]").await?;
    assert_eq!(injected, json!(["Task ".to_string() + &id + " · agentcom", 0]));
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn the_fleet_page_with_a_few_agents_and_tasks_screenshot() -> R {
    let budgets = "[budgets]\ndaily_usd = 100.0\n[budgets.agents.claude-1]\ndaily_usd = 5.0\n[budgets.agents.codex-1]\ndaily_usd = 2.0\n";
    let hub = Hub::start(bin(), &format!("{CONFIG}{budgets}"))?;
    let mut claude = agent_with_process(&hub, "claude-1", "agentcom", 182, 0).await?;
    let mut codex = agent_with_process(&hub, "codex-1", "pm2", 240, 2).await?;
    let mut aider = agent_with_process(&hub, "aider-1", "systemd", 96, 1).await?;
    let _idle = agent_with_process(&hub, "gemini-1", "agentcom", 120, 0).await?;
    let pin = |desc: &str, to: &str| proto::api::SubmitTask {
        assign_to: Some(to.into()),
        ..proto::api::SubmitTask::new(desc)
    };

    // codex-1 finished one task (with its cost), claude-1 works, aider-1 waits for a person.
    hub.submit(pin("Bump tokio and fix the deprecations", "codex-1")).await?;
    let (t, g) = codex.take_task().await?;
    codex
        .send(json!({"type": "task_complete", "task_id": t, "generation": g, "result": {"status": "success"},
        "usage": {"input_tokens": 48_000, "output_tokens": 9_500, "cost_usd": 1.37, "model": "gpt-5-codex"}}))
        .await?;
    codex.expect("task_ack").await?;
    hub.submit(pin("Add retries to the webhook sender", "claude-1")).await?;
    let (t, _) = claude.take_task().await?;
    claude.send(json!({"type": "task_progress", "task_id": t, "progress": "writing tests"})).await?;
    let asking = hub.submit(pin("Pick a database for the audit log", "aider-1")).await?;
    aider.take_task().await?;
    aider
        .send(
            json!({"type": "needs_input", "task_id": asking, "request_id": "r1", "question": "SQLite or PostgreSQL?"}),
        )
        .await?;
    for (d, p) in
        [("Document the dashboard", "normal"), ("Upgrade CI runners", "low"), ("Hotfix: token leak in logs", "urgent")]
    {
        hub.submit(proto::api::SubmitTask {
            priority: p.parse().unwrap(),
            needed_capabilities: vec!["gpu".into()],
            ..proto::api::SubmitTask::new(d)
        })
        .await?;
    }

    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    b.wait_text("#needs-you", "aider-1").await?;
    b.wait_text("#agents", "$1.37").await?;
    b.wait_text("#agents", "182.0 MiB").await?;
    let png = b.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "a real picture: {} bytes", png.len());
    std::fs::write(dir.path().join("dashboard.png"), &png)?;
    if let Some(out) = std::env::var_os("AGENTCOM_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&out)?;
        std::fs::write(Path::new(&out).join("dashboard.png"), &png)?;
    }
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn a_page_left_behind_closes_its_event_stream() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let id = hub.submit_text("somewhere to go").await?;
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    // More pages than a browser holds connections to one host (six).
    for n in 0..12 {
        let path = match n % 4 {
            0 => "/queue".to_string(),
            1 => format!("/tasks/{id}"),
            2 => "/tasks".to_string(),
            _ => "/".to_string(),
        };
        b.goto(&format!("{}{path}", hub.url())).await?;
        live(&b).await?;
    }
    // Only the page on screen follows the stream.
    eventually("one event reader at the hub", || async {
        let m = hub.client(None).metrics().await.map_err(|e| e.to_string())?;
        let readers = m.lines().find(|l| l.starts_with("agentcom_event_readers ")).unwrap_or_default().to_string();
        if readers == "agentcom_event_readers 1" {
            Ok(())
        } else {
            Err(readers)
        }
    })
    .await?;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn a_page_cut_off_from_the_hub_catches_up_when_it_is_back() -> R {
    // A window of five events: the page misses more than that while it is cut off.
    let hub = Hub::start(bin(), &format!("{CONFIG}event_window = 5\n"))?;
    let proxy = testkit::Proxy::start(hub.addr).await?;
    let base = format!("http://{}", proxy.addr);
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login_at(&b, &base, &hub.admin_token).await?;
    let id = hub.submit_text("done while nobody watched").await?;
    b.goto(&format!("{base}/tasks/{id}")).await?;
    b.wait_text("#task-status", "queued").await?;
    live(&b).await?;
    mark(&b).await?;

    proxy.cut();
    eventually("the page to notice", || async {
        match b.text("#live-status").await {
            Ok(Some(t)) if t != "live" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let mut a = hub.agent("a1", &[]).await?;
    let (_, g) = a.take_task().await?;
    for n in 0..8 {
        a.send(json!({"type": "task_progress", "task_id": id, "progress": format!("step {n}")})).await?;
    }
    assert_eq!(a.complete(&id, g).await?["status"], "complete");
    proxy.restore();

    // It reconnects, hears that it missed events, and reloads what it shows.
    if let Err(e) = b.wait_text("#task-status", "completed").await {
        let d = b.js("return [document.getElementById('live-status').textContent, document.body.dataset.events, document.body.dataset.refreshes]").await?;
        anyhow::bail!("{e}: {d}");
    }
    b.wait_text("#progress-log", "step 7").await?;
    live(&b).await?;
    same_page(&b).await?;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn a_page_whose_session_ended_says_so() -> R {
    let mut hub = Hub::start(bin(), CONFIG)?;
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    b.wait_text("#session-ended", "").await?;
    assert_eq!(b.js("return document.getElementById('session-ended').hidden").await?, json!(true));
    // Sessions live in the hub's memory: a restarted hub knows none of them.
    hub.restart_after_kill(bin(), &testkit::merge_config(&testkit::fast_config(), CONFIG))?;
    eventually("the page to say the session ended", || async {
        match b.js("return document.getElementById('session-ended').hidden").await {
            Ok(Value::Bool(false)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    b.wait_text("#live-status", "session ended").await?;
    b.click("#session-ended a").await?;
    b.wait_text("#login", "Token").await?;
    b.close().await;
    Ok(())
}
