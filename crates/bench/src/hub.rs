//! Hub benchmark: simulated agents over real WebSockets on loopback against the release hub.

use crate::{pct, rss_bytes};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Api, Hub};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

#[derive(clap::Args)]
pub struct Args {
    /// Simulated agents for the latency and throughput runs.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Sequential submissions for the latency run.
    #[arg(long, default_value_t = 2000)]
    latency_tasks: usize,
    /// Tasks for the throughput run.
    #[arg(long, default_value_t = 20000)]
    tasks: usize,
    /// Concurrent HTTP submitters in the throughput run.
    #[arg(long, default_value_t = 32)]
    submitters: usize,
    /// Idle connection counts to measure RSS at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Serve TLS: agents on wss://, submissions over https://.
    #[arg(long)]
    tls: bool,
}

pub type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// What a simulated agent tells its caller of each task, as it happens.
pub enum Step {
    /// Its `task_assign` arrived.
    Assigned,
    /// Its `task_complete` is about to leave.
    Completing,
    /// The hub acknowledged the completion (after its commit).
    Acked,
}

/// A simulated agent on `ws`: identifies with `identify`, then accepts and completes every task
/// it is given at once, telling `on` each [`Step`] of each task (by its id).
pub async fn simulate(
    mut ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    agent_id: &str,
    identify: Value,
    mut on: impl FnMut(Step, &str),
) -> Result<()> {
    ws.send(Message::text(identify.to_string())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let v: Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("task_assign") => {
                let id = v["task_id"].as_str().unwrap_or_default().to_string();
                on(Step::Assigned, &id);
                let g = v["generation"].as_u64().unwrap_or(0);
                ws.send(Message::text(
                    json!({"type": "task_accepted", "task_id": id, "protocol_version": 1}).to_string(),
                ))
                .await?;
                let complete = json!({"type": "task_complete", "task_id": id, "generation": g, "result": {"status": "success"}, "protocol_version": 1});
                on(Step::Completing, &id);
                ws.send(Message::text(complete.to_string())).await?;
            }
            Some("task_ack") if v["status"] == "complete" => on(Step::Acked, v["task_id"].as_str().unwrap_or_default()),
            Some("error") => bail!("agent {agent_id}: {v}"),
            _ => {}
        }
    }
    Ok(())
}

/// One simulated agent: identifies with the admin token, then accepts and completes every
/// task it is given, recording when each `task_assign` arrived.
pub async fn agent(
    url: String,
    connector: Option<Connector>,
    agent_id: String,
    token: String,
    seen: Seen,
    done: Arc<AtomicU64>,
) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await?;
    let identify = json!({"type": "identify", "agent_id": agent_id, "token": token, "client_type": "sidecar", "protocol_version": 1});
    simulate(ws, &agent_id, identify, |step, id| match step {
        Step::Assigned => {
            seen.lock().unwrap().insert(id.to_string(), Instant::now());
        }
        Step::Completing => {}
        Step::Acked => {
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await
}

/// A simulated [`agent`] for each id, all with the admin token, recording in `seen` and `done`.
pub fn spawn_agents(
    hub: &Hub,
    ids: impl Iterator<Item = String>,
    seen: &Seen,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    ids.map(|id| {
        tokio::spawn(agent(hub.ws_url(), hub.ws_connector(), id, hub.admin_token.clone(), seen.clone(), done.clone()))
    })
    .collect()
}

/// Waits, for at most `limit`, until `n` agents are identified and idle.
pub async fn wait_agents(hub: &Hub, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, s) = hub.admin().get("/api/tasks/stats").await?;
        if s["agents"]["idle"].as_u64().unwrap_or(0) as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("agents did not all identify: {s}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the agents' `seen` first holds `id`: the instant its `task_assign` arrived.
pub async fn assigned_at(seen: &Seen, id: &str) -> Instant {
    loop {
        if let Some(t) = seen.lock().unwrap().get(id) {
            return *t;
        }
        tokio::task::yield_now().await;
    }
}

/// Submits one task described `description`; the hub must take it (201). Its answer.
pub async fn submit(api: &Api, description: String) -> Result<Value> {
    let (st, v) = api.post("/api/tasks", json!({ "description": description })).await?;
    if st != 201 {
        bail!("submit: {st} {v}");
    }
    Ok(v)
}

/// Submits `n` tasks from `submitters` concurrent clients, described `{prefix} {client}-{k}`.
pub async fn submit_many(hub: &Hub, n: usize, submitters: usize, prefix: &str) -> Result<()> {
    let per = n.div_ceil(submitters);
    let mut subs = Vec::new();
    for s in 0..submitters {
        let (api, prefix) = (hub.admin(), prefix.to_string());
        let count = per.min(n.saturating_sub(s * per));
        subs.push(tokio::spawn(async move {
            for k in 0..count {
                submit(&api, format!("{prefix} {s}-{k}")).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in subs {
        s.await??;
    }
    Ok(())
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom hub benchmark ({} agents, release binary {})", args.agents, bin.display());
    let hub = if args.tls { Hub::start_tls(bin, PRODUCTION)? } else { Hub::start(bin, PRODUCTION)? };
    println!("hub at {} (agents on {})", hub.url(), hub.ws_url());
    let workload = Workload {
        agents: args.agents,
        latency_tasks: args.latency_tasks,
        tasks: args.tasks,
        submitters: args.submitters,
    };
    let f = lifecycles(&hub, &workload).await?;
    println!(
        "submit -> task_assign latency ({} sequential submissions, HTTP 201 durable): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        f.latency_ms.len(),
        pct(&f.latency_ms, 0.5),
        pct(&f.latency_ms, 0.99),
        f.latency_ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "full lifecycles (submit, assign, accept, complete; each step fsynced): {} in {:.2} s = {:.0} lifecycles/s",
        f.lifecycles,
        f.secs,
        f.per_sec()
    );
    println!(
        "  {} durable commits for {} state changes: group commit put {:.1} changes in each fsync",
        f.commits,
        f.lifecycles * 4,
        (f.lifecycles * 4) as f64 / f.commits.max(1.0)
    );
    println!("hub RSS after the runs: {:.1} MB", rss_bytes(hub.pid())? as f64 / 1e6);
    drop(hub);

    // 3. Memory per idle identified connection, on a fresh hub.
    for n in args.idle {
        idle_rss(bin, n, args.tls).await?;
    }
    Ok(())
}

/// Production timings: nothing here depends on a short timeout.
pub const PRODUCTION: &str = "grace_period_ms = 60000\naccept_timeout_ms = 60000\nheartbeat_timeout_ms = 600000\n";

/// The lifecycle workload: simulated agents that accept and complete at once.
pub struct Workload {
    pub agents: usize,
    /// Sequential submissions for the latency run.
    pub latency_tasks: usize,
    /// Tasks for the throughput run.
    pub tasks: usize,
    /// Concurrent HTTP submitters in the throughput run.
    pub submitters: usize,
}

/// What [`lifecycles`] measured.
pub struct Lifecycles {
    /// Submit → `task_assign` at the agent, sorted, in ms.
    pub latency_ms: Vec<f64>,
    pub lifecycles: u64,
    pub secs: f64,
    /// Durable commits the hub made during the throughput run.
    pub commits: f64,
}

impl Lifecycles {
    pub fn per_sec(&self) -> f64 {
        self.lifecycles as f64 / self.secs
    }
}

/// Runs the workload against `hub` (which must lead): first one submission at a time, from
/// just before the POST to the agent's receipt; then concurrent submitters while the agents
/// complete as fast as they are fed.
pub async fn lifecycles(hub: &Hub, w: &Workload) -> Result<Lifecycles> {
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicU64::new(0));
    let agents = spawn_agents(hub, (0..w.agents).map(|i| format!("bench-{i}")), &seen, &done);
    wait_agents(hub, w.agents, Duration::from_secs(60)).await?;

    let api = hub.admin();
    let mut lat = Vec::with_capacity(w.latency_tasks);
    for n in 0..w.latency_tasks {
        let t0 = Instant::now();
        let v = submit(&api, format!("latency {n}")).await?;
        let id = v["task_id"].as_str().context("task_id")?.to_string();
        lat.push(assigned_at(&seen, &id).await.duration_since(t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));

    let commits_before = commits(hub).await?;
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    // Whole rounds of the submitters: the total is what they all send.
    let total = w.tasks / w.submitters * w.submitters;
    submit_many(hub, total, w.submitters, "load").await?;
    let total = total as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.load(Ordering::Relaxed) - before < total {
        if Instant::now() > deadline {
            bail!("throughput run did not finish");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n_commits = commits(hub).await? - commits_before;
    for a in agents {
        a.abort();
    }
    Ok(Lifecycles { latency_ms: lat, lifecycles: total, secs, commits: n_commits })
}

async fn commits(hub: &Hub) -> Result<f64> {
    let (_, m) = hub.admin().get("/metrics").await?;
    let text = m.as_str().unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("agentcom_store_commits_total ")).context("commits metric")?;
    Ok(line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0))
}

async fn idle_rss(bin: &Path, n: usize, tls: bool) -> Result<()> {
    let config = "heartbeat_timeout_ms = 600000\n";
    let hub = if tls { Hub::start_tls(bin, config)? } else { Hub::start(bin, config)? };
    let base = rss_bytes(hub.pid())?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut conns = Vec::with_capacity(n);
    let t0 = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut batch = Vec::new();
        for i in chunk {
            let (url, connector) = (hub.ws_url(), hub.ws_connector());
            let token = hub.admin_token.clone();
            let i = *i;
            batch.push(tokio::spawn(async move {
                let (mut ws, _) =
                    tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector).await?;
                let id =
                    json!({"type": "identify", "agent_id": format!("idle-{i}"), "token": token, "protocol_version": 1});
                ws.send(Message::text(id.to_string())).await?;
                loop {
                    let Some(msg) = ws.next().await else { bail!("closed before identified") };
                    if let Message::Text(t) = msg? {
                        if t.as_str().contains("\"identified\"") {
                            return Ok::<_, anyhow::Error>(ws);
                        }
                        bail!("unexpected {t}");
                    }
                }
            }));
        }
        for b in batch {
            conns.push(b.await??);
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_bytes(hub.pid())?;
    println!(
        "{n} idle identified connections (opened in {connect_secs:.2} s): hub RSS {:.1} MB (empty {:.1} MB) = {:.1} KB per connection",
        rss as f64 / 1e6,
        base as f64 / 1e6,
        (rss.saturating_sub(base)) as f64 / n as f64 / 1024.0
    );
    drop(conns);
    Ok(())
}
