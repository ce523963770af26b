//! The dashboard's session, CSRF and role rules, end to end: no data and no action without a
//! session, cookies and their expiry, bounded sessions, revoked tokens, forged cross-origin forms
//! (from a plain client and from a real browser), an agent token's read-only view, TLS.

use crate::dashboard_support::*;
use futures_util::StreamExt;
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};
use testkit::browser::Browser;
use testkit::{eventually, Hub, WsAgent};

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
