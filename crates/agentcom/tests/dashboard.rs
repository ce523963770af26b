//! The dashboard (issue 11) in a real browser: Debian's Chromium, headless, over WebDriver,
//! against the real hub binary; agents are played by `testkit::WsAgent` over real WebSockets.
//! Live updates are asserted by polling the DOM (never a fixed sleep) on a page that must not
//! have reloaded. The session and CSRF rules are also checked with a plain HTTP client.

use futures_util::StreamExt;
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};
use std::path::Path;
use testkit::browser::Browser;
use testkit::{eventually, Hub, WsAgent};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentcom"))
}

type R = anyhow::Result<()>;

/// Short session re-checks, so a revoked token ends an open stream quickly; test agents send no
/// pings, so a slow browser on a loaded machine must not get them evicted for silence.
const CONFIG: &str = "console_recheck_ms = 50\nheartbeat_timeout_ms = 600000\n";

/// Logs in through the form and waits for the fleet page with its live stream connected.
async fn login(b: &Browser, hub: &Hub, token: &str) -> R {
    login_at(b, &hub.url(), token).await
}

/// [`login`] at another address of the hub (a proxy in front of it).
async fn login_at(b: &Browser, base: &str, token: &str) -> R {
    b.goto(&format!("{base}/")).await?;
    b.fill("#token", token).await?;
    b.click("#login button").await?;
    if let Err(e) = b.wait_text("h1", "Fleet").await {
        anyhow::bail!("{e}: {:?}", b.text("main").await?);
    }
    live(b).await
}

/// Waits until the page follows the event stream (events before that are not the page's).
async fn live(b: &Browser) -> R {
    b.wait_text("#live-status", "live").await?;
    Ok(())
}

/// Marks the page; [`same_page`] fails if it was reloaded or left since.
async fn mark(b: &Browser) -> R {
    b.js("window.__mark = 'still here'; return true").await?;
    Ok(())
}

async fn same_page(b: &Browser) -> R {
    assert_eq!(b.js("return window.__mark || null").await?, json!("still here"), "the page was reloaded");
    Ok(())
}

/// The task id of the task page the browser shows.
async fn task_on_screen(b: &Browser) -> anyhow::Result<String> {
    let url = b.client.current_url().await?;
    Ok(url.path().strip_prefix("/tasks/").unwrap_or_default().to_string())
}

/// An agent that says which process it is (shown on the fleet page).
async fn agent_with_process(
    hub: &Hub,
    id: &str,
    supervisor: &str,
    memory_mb: u64,
    restarts: u64,
) -> anyhow::Result<WsAgent> {
    let token = hub.token(id).await?;
    let mut a = WsAgent::connect(&hub.ws_url()).await?;
    a.agent_id = id.into();
    a.send(json!({
        "type": "identify", "agent_id": id, "token": token, "name": id, "status": "idle", "capabilities": [],
        "client_type": "sidecar",
        "process_info": {"supervisor": supervisor, "name": format!("sidecar-{id}"), "status": "online",
            "uptime_ms": 3_725_000 + memory_mb * 1000, "restart_count": restarts, "memory_bytes": memory_mb * 1024 * 1024},
    }))
    .await?;
    a.expect("identified").await?;
    Ok(a)
}

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

/// A plain HTTP client that follows no redirect and keeps no cookie.
fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in over HTTP; returns the `name=value` of the session cookie and the whole Set-Cookie.
async fn http_login(hub: &Hub, token: &str) -> anyhow::Result<(String, String)> {
    let r = http()
        .post(format!("{}/login", hub.url()))
        .header(ORIGIN, hub.url())
        .form(&[("token", token), ("next", "/")])
        .send()
        .await?;
    anyhow::ensure!(r.status() == 303, "login: {}", r.status());
    let set = r.headers().get(SET_COOKIE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    Ok((set.split(';').next().unwrap_or_default().to_string(), set))
}

async fn get(hub: &Hub, path: &str, cookie: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut req = http().get(format!("{}{path}", hub.url()));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

async fn post(
    hub: &Hub,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut req = http().post(format!("{}{path}", hub.url())).header(COOKIE, cookie).form(form);
    if let Some(o) = origin {
        req = req.header(ORIGIN, o);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

async fn task_count(hub: &Hub) -> anyhow::Result<usize> {
    Ok(hub.admin_client().call(&proto::api::ListTasks::default()).await?.count)
}

#[tokio::test]
async fn without_a_session_there_is_no_data_and_foreign_posts_are_refused() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    // Pinned to an agent that never comes, so it stays queued.
    let id = hub
        .submit(proto::api::SubmitTask {
            assign_to: Some("nobody".into()),
            ..proto::api::SubmitTask::new("secret plan alpha")
        })
        .await?;
    let _a = hub.agent("agent-zeta", &[]).await?;

    // No session: every page is the login form and nothing of the hub's data.
    for path in
        ["/", "/queue", "/tasks", "/dead-letter", &format!("/tasks/{id}"), "/agents/agent-zeta/restart", "/?cursor=zz"]
    {
        let (status, body) = get(&hub, path, None).await?;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("id=\"login\""), "{path}: {body}");
        // The form returns to the page asked for: that path is the asker's, not the hub's data.
        let body = body.replace(&format!("name=\"next\" value=\"{path}\""), "");
        for secret in ["secret plan alpha", "agent-zeta", "queued"] {
            assert!(!body.contains(secret), "{path} shows {secret}: {body}");
        }
    }
    let bogus = format!("agentcom_session={}", "ab".repeat(32));
    let (status, body) = get(&hub, "/", Some(&bogus)).await?;
    assert!(status == 401 && !body.contains("agent-zeta"), "an unknown session is no session");
    let (status, body) = get(&hub, "/console/events", None).await?;
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_str::<Value>(&body)?["error"], "unauthorized");
    // Assets hold no data and load without a session.
    assert_eq!(get(&hub, "/console/app.js", None).await?.0, 200);

    // A POST without a session does nothing, whatever its origin.
    let before = task_count(&hub).await?;
    let (status, _) = post(&hub, "/tasks", "", Some(&hub.url()), &[("description", "sneaky")]).await?;
    assert_eq!(status, 401);
    let (status, body) = post(&hub, "/login", "", Some("http://evil.example"), &[("token", &hub.admin_token)]).await?;
    assert!(status == 403 && body.contains("cross-site request forgery"), "{status} {body}");

    // Log in: the cookie is HttpOnly, SameSite=Strict, for the whole hub, with an expiry.
    let (cookie, set) = http_login(&hub, &hub.admin_token).await?;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains(&hub.admin_token), "the cookie is an opaque id, not the token");
    let (status, body) = get(&hub, "/", Some(&cookie)).await?;
    assert!(status == 200 && body.contains("agent-zeta"), "{status}");
    let (_, csp) = {
        let r = http().get(format!("{}/", hub.url())).header(COOKIE, &cookie).send().await?;
        (r.status(), r.headers()["content-security-policy"].to_str()?.to_string())
    };
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // With a session, a POST from another origin, or with none, is refused and changes nothing.
    let (status, body) =
        post(&hub, "/tasks", &cookie, Some("http://evil.example"), &[("description", "pwned")]).await?;
    assert_eq!(status, 403);
    assert!(body.contains("refused") && body.contains("evil.example") && !body.contains("secret plan"), "{body}");
    let (status, body) = post(&hub, "/tasks", &cookie, None, &[("description", "pwned")]).await?;
    assert!(status == 403 && body.contains("no Origin header"), "{body}");
    let (status, _) = post(&hub, &format!("/tasks/{id}/cancel"), &cookie, Some("null"), &[]).await?;
    assert_eq!(status, 403);
    assert_eq!(task_count(&hub).await?, before, "nothing was submitted");
    assert_eq!(hub.task(&id).await?.task.status, proto::api::TaskStatus::Queued, "nothing was cancelled");
    let (status, _) = post(&hub, "/tasks", &cookie, Some(&hub.url()), &[("description", "from the dashboard")]).await?;
    assert_eq!(status, 303, "the same origin is accepted");

    // A real browser, logged in, sent to a page on another origin that posts a form to the hub.
    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &hub.admin_token).await?;
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let evil_url = format!("http://{}", evil.local_addr()?);
    let page = format!(
        "<!doctype html><form method=post action=\"{}/tasks\"><input name=description value=pwned-by-browser></form>\
         <script>document.forms[0].submit()</script>",
        hub.url()
    );
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(page) }));
        let _ = axum::serve(evil, app).await;
    });
    let count = task_count(&hub).await?;
    b.goto(&format!("{evil_url}/")).await?;
    b.wait_text("#error-message", "cross-site request forgery").await?;
    assert_eq!(task_count(&hub).await?, count, "the forged form did nothing");
    server.abort();

    // Logout ends the session: the old cookie shows the login form again.
    let (status, _) = post(&hub, "/logout", &cookie, Some(&hub.url()), &[]).await?;
    assert_eq!(status, 303);
    let (status, body) = get(&hub, "/", Some(&cookie)).await?;
    assert!(status == 401 && body.contains("id=\"login\"") && !body.contains("agent-zeta"));
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn sessions_expire_are_bounded_and_end_with_their_token() -> R {
    let hub = Hub::start(bin(), &format!("{CONFIG}console_max_sessions = 2\n"))?;
    // The cap: a third login ends the oldest session.
    let (first, _) = http_login(&hub, &hub.admin_token).await?;
    let (second, _) = http_login(&hub, &hub.admin_token).await?;
    assert_eq!(get(&hub, "/", Some(&first)).await?.0, 200);
    let (third, _) = http_login(&hub, &hub.admin_token).await?;
    assert_eq!(get(&hub, "/", Some(&first)).await?.0, 401, "the oldest made room");
    assert_eq!(get(&hub, "/", Some(&second)).await?.0, 200);
    assert_eq!(get(&hub, "/", Some(&third)).await?.0, 200);
    // A wrong token logs nobody in.
    let r = http()
        .post(format!("{}/login", hub.url()))
        .header(ORIGIN, hub.url())
        .form(&[("token", "nope-nope-nope")])
        .send()
        .await?;
    let (status, body) = (r.status().as_u16(), r.text().await?);
    assert!(status == 401 && body.contains("neither this hub's admin token"), "{body}");

    // A revoked agent token ends its session at once, open event stream included.
    let token = hub.token("a1").await?;
    let (cookie, _) = http_login(&hub, &token).await?;
    assert_eq!(get(&hub, "/", Some(&cookie)).await?.0, 200);
    let stream = http().get(format!("{}/console/events", hub.url())).header(COOKIE, &cookie).send().await?;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut body = stream.bytes_stream();
    hub.admin_client().call(&proto::api::RevokeTokens { agent_id: "a1".into() }).await?;
    let ended = tokio::time::timeout(testkit::WAIT, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a revoked token ends");
    let (status, page) = get(&hub, "/", Some(&cookie)).await?;
    assert!(status == 401 && page.contains("id=\"login\""), "{page}");
    drop(hub);

    // Sessions expire.
    let hub = Hub::start(bin(), &format!("{CONFIG}console_session_ttl_ms = 300\n"))?;
    let (cookie, set) = http_login(&hub, &hub.admin_token).await?;
    assert!(set.contains("Max-Age=1"), "{set}");
    eventually("the session to expire", || async {
        match get(&hub, "/", Some(&cookie)).await {
            Ok((401, body)) if body.contains("id=\"login\"") => Ok(()),
            other => Err(format!("{:?}", other.map(|(s, _)| s))),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_token_sees_only_its_own_tasks_read_only() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let t1 = hub.token("a1").await?;
    let pin = |desc: &str, to: &str| proto::api::SubmitTask {
        assign_to: Some(to.into()),
        ..proto::api::SubmitTask::new(desc)
    };
    // a1 submits one (for a3 to do), holds one the admin gave it; a2's task is none of its business.
    let own = hub.client(Some(&t1)).call(&pin("submitted by a1", "a3")).await?.task_id;
    let held = hub.submit(pin("held by a1", "a1")).await?;
    let other = hub.submit(pin("only for a2", "a2")).await?;
    let mut a1 = WsAgent::identify(&hub.ws_url(), "a1", &t1, &[]).await?;
    let (got, _) = a1.take_task().await?;
    assert_eq!(got, held);

    let dir = tempfile::tempdir()?;
    let b = Browser::start(dir.path()).await?;
    login(&b, &hub, &t1).await?;
    b.wait_text("header .who", "agent a1").await?;
    b.wait_text("#agents", "a1").await?;
    assert_eq!(b.text("#submit").await?, None, "no submit form");
    assert_eq!(b.text(".cards").await?, None, "no fleet-wide counts");
    assert_eq!(b.js("return document.querySelectorAll('#agents tbody tr').length").await?, json!(1));

    b.goto(&format!("{}/tasks", hub.url())).await?;
    let list = b.wait_text("#task-list", "submitted by a1").await?;
    assert!(list.contains("held by a1") && !list.contains("only for a2"), "{list}");
    b.goto(&format!("{}/queue", hub.url())).await?;
    let queue = b.wait_text("#queue-lanes", "submitted by a1").await?;
    assert!(!queue.contains("only for a2"), "{queue}");
    b.goto(&format!("{}/tasks/{other}", hub.url())).await?;
    b.wait_text("#error-message", "only its own tasks").await?;
    b.goto(&format!("{}/tasks/{own}", hub.url())).await?;
    b.wait_text("#task-status", "queued").await?;
    assert_eq!(b.text("#cancel").await?, None, "read-only: no cancel");

    // Its one action: answering the question of a task it submitted.
    live(&b).await?;
    mark(&b).await?;
    let mut a3 = hub.agent("a3", &[]).await?;
    let (got, g) = a3.take_task().await?;
    assert_eq!(got, own);
    a3.send(json!({"type": "needs_input", "task_id": own, "request_id": "r1", "question": "Ship it?"})).await?;
    b.wait_text("#question-text", "Ship it?").await?;
    same_page(&b).await?;
    b.fill("#answer-text", "yes").await?;
    b.click("#answer button[type=submit]").await?;
    let input = a3.expect("task_input").await?;
    assert_eq!((input["answer"].as_str(), input["request_id"].as_str()), (Some("yes"), Some("r1")));
    assert_eq!(a3.complete(&own, g).await?["status"], "complete");

    // Anything else is refused, even with its session and a proper origin.
    let (cookie, _) = http_login(&hub, &t1).await?;
    for (path, form) in [
        (format!("/tasks/{own}/cancel"), vec![]),
        (format!("/tasks/{other}/retry"), vec![]),
        ("/tasks".to_string(), vec![("description", "x")]),
        ("/agents/a2/restart".to_string(), vec![("confirm", "yes")]),
    ] {
        let (status, body) = post(&hub, &path, &cookie, Some(&hub.url()), &form).await?;
        assert!(status == 403 && body.contains("read-only"), "{path}: {status} {body}");
    }
    assert_eq!(get(&hub, &format!("/tasks/{other}"), Some(&cookie)).await?.0, 403);
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn the_admin_submits_cancels_retries_and_restarts_with_a_confirmation() -> R {
    let hub = Hub::start(bin(), CONFIG)?;
    let mut a1 = hub.agent("a1", &[]).await?;
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

#[tokio::test]
async fn under_tls_the_session_cookie_is_secure_and_origins_must_be_https() -> R {
    let hub = Hub::start_tls(bin(), CONFIG)?;
    let ca = std::fs::read(&hub.tls.as_ref().expect("a TLS hub").ca)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let login = |origin: String| {
        http.post(format!("{}/login", hub.url()))
            .header(ORIGIN, origin)
            .form(&[("token", hub.admin_token.as_str())])
            .send()
    };
    let plain = format!("http://localhost:{}", hub.addr.port());
    let r = login(plain).await?;
    assert_eq!(r.status(), 403, "an http origin for an https hub");
    let r = login(hub.url()).await?;
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str()?.to_string();
    assert!(set.starts_with("__Host-agentcom_session=") && set.contains("; Secure"), "{set}");
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let page = http.get(format!("{}/", hub.url())).header(COOKIE, &cookie).send().await?;
    assert_eq!(page.status(), 200);
    // The plain-HTTP cookie name means nothing here.
    let other = cookie.replacen("__Host-", "", 1);
    let page = http.get(format!("{}/", hub.url())).header(COOKIE, other).send().await?;
    assert_eq!(page.status(), 401);
    Ok(())
}
