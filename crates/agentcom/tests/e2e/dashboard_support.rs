//! Helpers shared by the dashboard's end-to-end tests: logging in through the form, telling a
//! live patch from a reload, agents that report their process, and a plain HTTP client for the
//! session and CSRF rules. Each test file uses some of them.
#![allow(dead_code)]

use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::json;
use testkit::browser::Browser;
use testkit::{Hub, WsAgent};

pub use crate::bin;

pub type R = anyhow::Result<()>;

/// Short session re-checks, so a revoked token ends an open stream quickly; test agents send no
/// pings, so a slow browser on a loaded machine must not get them evicted for silence.
pub const CONFIG: &str = "console_recheck_ms = 50\nheartbeat_timeout_ms = 600000\n";

/// Logs in through the form and waits for the fleet page with its live stream connected.
pub async fn login(b: &Browser, hub: &Hub, token: &str) -> R {
    login_at(b, &hub.url(), token).await
}

/// [`login`] at another address of the hub (a proxy in front of it).
pub async fn login_at(b: &Browser, base: &str, token: &str) -> R {
    b.login(base, token).await?;
    live(b).await
}

/// Waits until the page follows the event stream (events before that are not the page's).
pub async fn live(b: &Browser) -> R {
    b.wait_text("#live-status", "live").await?;
    Ok(())
}

/// Marks the page; [`same_page`] fails if it was reloaded or left since.
pub async fn mark(b: &Browser) -> R {
    b.js("window.__mark = 'still here'; return true").await?;
    Ok(())
}

pub async fn same_page(b: &Browser) -> R {
    assert_eq!(b.js("return window.__mark || null").await?, json!("still here"), "the page was reloaded");
    Ok(())
}

/// The task id of the task page the browser shows.
pub async fn task_on_screen(b: &Browser) -> anyhow::Result<String> {
    let url = b.client.current_url().await?;
    Ok(url.path().strip_prefix("/tasks/").unwrap_or_default().to_string())
}

/// An agent that says which process it is (shown on the fleet page).
pub async fn agent_with_process(
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

/// A plain HTTP client that follows no redirect and keeps no cookie.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in over HTTP; returns the `name=value` of the session cookie and the whole Set-Cookie.
pub async fn http_login(hub: &Hub, token: &str) -> anyhow::Result<(String, String)> {
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

pub async fn get(hub: &Hub, path: &str, cookie: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut req = http().get(format!("{}{path}", hub.url()));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

pub async fn post(
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

pub async fn task_count(hub: &Hub) -> anyhow::Result<usize> {
    Ok(hub.admin_client().call(&proto::api::ListTasks::default()).await?.count)
}
