//! Several real hub processes on one real PostgreSQL: election, standbys that send clients and
//! agents to the leader, and failover after SIGKILL, SIGSTOP and a lost database connection,
//! with tasks in flight continuing through `task_recovering`.

use crate::bin;
use proto::api::{HubRole, TaskStatus};
use serde_json::json;
use std::net::SocketAddr;
use testkit::{eventually, Closed, HubCluster, Proxy, WsAgent};

type R = anyhow::Result<()>;

/// `n` hubs on one fresh database with a lease of `lease_ms`.
fn cluster(n: usize, lease_ms: u64) -> anyhow::Result<HubCluster> {
    HubCluster::start(bin(), n, &format!("lease_ms = {lease_ms}\n"))
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

const ADMIN: &str = "test-admin-token-0123456789abcdef";

#[tokio::test]
async fn one_hub_leads_and_the_standbys_send_clients_and_agents_to_it() -> R {
    let c = cluster(3, 1000)?;
    let (l, term) = c.settled().await?;
    assert!(term >= 1);
    let s = (l + 1) % 3;
    let http = no_redirects();

    // A read and a write on a standby: 307 to the same path on the leader, with a JSON body.
    let r = http.get(format!("{}/api/tasks?limit=5", c.url(s))).bearer_auth(ADMIN).send().await?;
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], format!("{}/api/tasks?limit=5", c.url(l)).as_str());
    let body: serde_json::Value = r.json().await?;
    assert_eq!((body["error"].as_str(), body["leader"].as_str()), (Some("not_leader"), Some(c.url(l).as_str())));
    let r = http
        .post(format!("{}/api/tasks", c.url(s)))
        .bearer_auth(ADMIN)
        .json(&json!({"description": "x"}))
        .send()
        .await?;
    assert_eq!(r.status(), 307);
    let listed = c.hub(l).admin().get("/api/tasks").await?;
    assert_eq!(listed.1["count"], 0, "the standby wrote nothing: {listed:?}");

    // An agent at a standby is told where the leader is.
    let mut a = WsAgent::connect(&c.ws_url(s)).await?;
    assert_eq!(a.closed().await?, Closed::Code(proto::CLOSE_NOT_LEADER, c.ws_url(l)));

    // Metrics say who leads; health and metrics need no token on a standby either.
    let metric = |text: String| text.lines().find(|l| l.starts_with("agentcom_hub_leader ")).map(str::to_string);
    let standby_metrics = reqwest::get(format!("{}/metrics", c.url(s))).await?.text().await?;
    assert_eq!(metric(standby_metrics).as_deref(), Some("agentcom_hub_leader 0"));
    let leader_metrics = http.get(format!("{}/metrics", c.url(l))).bearer_auth(ADMIN).send().await?.text().await?;
    assert_eq!(metric(leader_metrics).as_deref(), Some("agentcom_hub_leader 1"));
    Ok(())
}

#[tokio::test]
async fn after_a_sigkill_of_the_leader_a_standby_serves_and_tasks_in_flight_continue() -> R {
    let mut c = cluster(2, 1000)?;
    let (l, term) = c.settled().await?;
    let s = 1 - l;
    let token = c.hub(l).token("a").await?;
    let mut a = WsAgent::identify(&c.ws_url(l), "a", &token, &[]).await?;
    let held = c.hub(l).submit_text("held").await?;
    let (_, generation) = a.take_task().await?;
    let queued = c.hub(l).submit_text("queued").await?;

    c.kill9(l);
    assert_eq!(a.closed().await?, Closed::Dropped);
    let (now, new_term) = c.settled().await?;
    assert_eq!((now, new_term), (s, term + 1), "the standby took over in the next term");

    // The agent re-identifies at the new leader and carries on with what it held.
    let mut a = WsAgent::identify(&c.ws_url(s), "a", &token, &[]).await?;
    a.send(json!({"type": "task_recovering", "task_id": held})).await?;
    assert_eq!(a.expect("task_continue").await?["generation"], generation);
    assert_eq!(a.complete(&held, generation).await?["status"], "complete");
    let (next, g2) = a.take_task().await?;
    assert_eq!(next, queued, "the queued task was not lost");
    assert_eq!(a.complete(&next, g2).await?["status"], "complete");
    for id in [&held, &queued] {
        assert_eq!(c.hub(s).task(id).await?.task.status, TaskStatus::Completed);
    }

    // The old leader comes back as a standby.
    c.restart(l)?;
    assert_eq!(c.settled().await?, (s, term + 1));
    Ok(())
}

#[tokio::test]
async fn a_paused_leader_is_replaced_writes_nothing_more_and_steps_down_when_continued() -> R {
    let c = cluster(2, 1000)?;
    let (l, term) = c.settled().await?;
    let s = 1 - l;
    let token = c.hub(l).token("a").await?;
    let mut a = WsAgent::identify(&c.ws_url(l), "a", &token, &[]).await?;
    let held = c.hub(l).submit_text("held").await?;
    let (_, generation) = a.take_task().await?;

    let pid = nix::unistd::Pid::from_raw(c.hub(l).pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    // Sent to the paused leader: a completion and a submission, both waiting in its sockets.
    a.send(
        json!({"type": "task_complete", "task_id": held, "generation": generation, "result": {"status": "success"}}),
    )
    .await?;
    let late_submit = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/tasks", c.url(l)))
            .bearer_auth(ADMIN)
            .json(&json!({"description": "sent to a paused leader"}))
            .send(),
    );

    let (now, new_term) = eventually("the standby to take over from the paused leader", || async {
        let h = c.health(s).await.map_err(|e| e.to_string())?;
        match (h.role, h.term) {
            (Some(HubRole::Leader), Some(t)) => Ok((s, t)),
            _ => Err(format!("{h:?}")),
        }
    })
    .await?;
    assert_eq!((now, new_term), (s, term + 1));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;

    // The old leader recorded neither: the task is still the agent's, the submission was refused.
    // Refused, or its connection timed out while the hub was paused: either way not 201.
    if let Ok(submitted) = late_submit.await? {
        assert_ne!(submitted.status(), 201, "{:?}", submitted.text().await);
    }
    assert_eq!(c.settled().await?, (s, term + 1), "the continued hub stands by");
    let detail = c.hub(s).task(&held).await?;
    assert_eq!((detail.task.status, detail.task.generation), (TaskStatus::Working, generation));
    let all = c.hub(s).admin().get("/api/tasks").await?.1;
    assert_eq!(all["count"], 1, "only the first task exists: {all}");

    // Its agent is sent on, and finishes the task there, once.
    let closed = a.closed().await?;
    assert!(
        matches!(&closed, Closed::Code(code, to) if *code == proto::CLOSE_NOT_LEADER && (to == &c.ws_url(s) || to.is_empty())),
        "{closed:?}"
    );
    let mut a = WsAgent::identify(&c.ws_url(s), "a", &token, &[]).await?;
    a.send(json!({"type": "task_recovering", "task_id": held})).await?;
    assert_eq!(a.expect("task_continue").await?["generation"], generation);
    assert_eq!(a.complete(&held, generation).await?["status"], "complete");
    assert_eq!(c.hub(s).task(&held).await?.task.status, TaskStatus::Completed);
    Ok(())
}

/// A cluster whose hub 0 reaches the database only through a proxy that can be cut, and leads.
async fn with_hub_0_behind_a_proxy(extra: &str) -> anyhow::Result<(HubCluster, Proxy, String)> {
    let mut c = HubCluster::start(bin(), 0, extra)?;
    let database_url = c.database_url.clone();
    let mut url = reqwest::Url::parse(&database_url)?;
    let upstream: SocketAddr =
        format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432)).parse()?;
    let proxy = Proxy::start(upstream).await?;
    url.set_port(Some(proxy.addr.port())).map_err(|_| anyhow::anyhow!("set port"))?;
    c.add(Some(url.as_str()))?;
    eventually("hub 0 to lead", || async {
        let h = c.health(0).await.map_err(|e| e.to_string())?;
        if h.role == Some(HubRole::Leader) {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await?;
    Ok((c, proxy, database_url))
}

#[tokio::test]
async fn an_agent_arriving_during_an_election_is_held_and_served_by_its_winner() -> R {
    let (c, proxy, _) = with_hub_0_behind_a_proxy("lease_ms = 1000\nelection_wait_ms = 60000\n").await?;
    let token = c.hub(0).token("a").await?;
    proxy.cut();
    eventually("hub 0 to stand by, knowing no leader", || async {
        let h = c.health(0).await.map_err(|e| e.to_string())?;
        if h.role == Some(HubRole::Standby) && h.leader.is_none() {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await?;
    let (ws, t) = (c.ws_url(0), token.clone());
    let arriving = tokio::spawn(async move { WsAgent::identify(&ws, "a", &t, &[]).await });
    // Held: its handshake is not answered while no hub leads.
    eventually("the agent's connection to arrive", || async {
        let text = reqwest::get(format!("{}/metrics", c.url(0))).await.map_err(|e| e.to_string())?;
        let text = text.text().await.map_err(|e| e.to_string())?;
        let open = text.lines().find_map(|l| l.strip_prefix("agentcom_connections_open ")).unwrap_or("0");
        // This request's connection and the agent's.
        if open.parse::<u64>().unwrap_or(0) >= 2 {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await?;
    let held = c.hub(0).logs().len();
    eventually("the hub to try the database again while the agent waits", || async {
        let tried = c.hub(0).logs()[held..].iter().any(|l| l.contains("lease round failed"));
        if tried {
            Ok(())
        } else {
            Err("no new attempt yet".to_string())
        }
    })
    .await?;
    assert!(!arriving.is_finished(), "the agent was answered while no hub led");
    proxy.restore();
    let mut a = arriving.await??;
    let id = c.hub(0).submit_text("after the election").await?;
    let (got, generation) = a.take_task().await?;
    assert_eq!(got, id);
    assert_eq!(a.complete(&id, generation).await?["status"], "complete");
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_database_steps_down_and_rejoins_as_a_standby() -> R {
    // Hub 0 reaches the database only through the proxy, and leads.
    let (mut c, proxy, _) = with_hub_0_behind_a_proxy("lease_ms = 1000\n").await?;
    c.add(None)?;
    let (l, term) = c.settled().await?;
    assert_eq!(l, 0);
    let token = c.hub(0).token("a").await?;
    let mut a = WsAgent::identify(&c.ws_url(0), "a", &token, &[]).await?;
    let held = c.hub(0).submit_text("held").await?;
    let (_, generation) = a.take_task().await?;

    proxy.cut();
    eventually("hub 1 to take over", || async {
        let h = c.health(1).await.map_err(|e| e.to_string())?;
        if h.role == Some(HubRole::Leader) && h.term == Some(term + 1) {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await?;
    // Hub 0 cannot tell who leads while it cannot read the database; it stops serving.
    let closed = a.closed().await?;
    assert!(matches!(&closed, Closed::Code(code, _) if *code == proto::CLOSE_NOT_LEADER), "{closed:?}");
    eventually("hub 0 to stand by", || async {
        let h = c.health(0).await.map_err(|e| e.to_string())?;
        if h.role == Some(HubRole::Standby) {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await?;

    let mut a = WsAgent::identify(&c.ws_url(1), "a", &token, &[]).await?;
    a.send(json!({"type": "task_recovering", "task_id": held})).await?;
    assert_eq!(a.expect("task_continue").await?["generation"], generation);
    assert_eq!(a.complete(&held, generation).await?["status"], "complete");

    proxy.restore();
    assert_eq!(c.settled().await?, (1, term + 1), "back on the network, hub 0 stands by behind hub 1");
    Ok(())
}
