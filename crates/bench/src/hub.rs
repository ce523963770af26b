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
use testkit::Hub;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

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
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await?;
    let identify = json!({"type": "identify", "agent_id": agent_id, "token": token, "client_type": "sidecar", "protocol_version": 1});
    ws.send(Message::text(identify.to_string())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let v: Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("task_assign") => {
                let id = v["task_id"].as_str().unwrap_or_default().to_string();
                seen.lock().unwrap().insert(id.clone(), Instant::now());
                let g = v["generation"].as_u64().unwrap_or(0);
                ws.send(Message::text(
                    json!({"type": "task_accepted", "task_id": id, "protocol_version": 1}).to_string(),
                ))
                .await?;
                ws.send(Message::text(
                    json!({"type": "task_complete", "task_id": id, "generation": g, "result": {"status": "success"}, "protocol_version": 1})
                        .to_string(),
                ))
                .await?;
            }
            Some("task_ack") if v["status"] == "complete" => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Some("error") => bail!("agent {agent_id}: {v}"),
            _ => {}
        }
    }
    Ok(())
}

async fn wait_agents(hub: &Hub, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
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
    let mut agents = Vec::new();
    for i in 0..w.agents {
        agents.push(tokio::spawn(agent(
            hub.ws_url(),
            hub.ws_connector(),
            format!("bench-{i}"),
            hub.admin_token.clone(),
            seen.clone(),
            done.clone(),
        )));
    }
    wait_agents(hub, w.agents).await?;

    let api = hub.admin();
    let mut lat = Vec::with_capacity(w.latency_tasks);
    for n in 0..w.latency_tasks {
        let t0 = Instant::now();
        let (s, v) = api.post("/api/tasks", json!({"description": format!("latency {n}")})).await?;
        if s != 201 {
            bail!("submit: {s} {v}");
        }
        let id = v["task_id"].as_str().context("task_id")?.to_string();
        let got = loop {
            if let Some(t) = seen.lock().unwrap().get(&id) {
                break *t;
            }
            tokio::task::yield_now().await;
        };
        lat.push(got.duration_since(t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));

    let commits_before = commits(hub).await?;
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let per = w.tasks / w.submitters;
    let mut subs = Vec::new();
    for s in 0..w.submitters {
        let api = hub.admin();
        subs.push(tokio::spawn(async move {
            for n in 0..per {
                let (st, v) = api.post("/api/tasks", json!({"description": format!("load {s}-{n}")})).await?;
                if st != 201 {
                    bail!("submit: {st} {v}");
                }
            }
            Ok(())
        }));
    }
    for s in subs {
        s.await??;
    }
    let total = (per * w.submitters) as u64;
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
