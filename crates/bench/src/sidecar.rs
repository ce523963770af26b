//! Sidecar benchmark: memory idle and working (RSS, and from `smaps_rollup` PSS and private
//! pages, issue 17: beside a hub running the same binary, and alone as on an agent machine whose
//! hub runs elsewhere), `task_assign` → `task_accepted` latency (the fsync of queue.json
//! included), and result file written → task `completed` at the hub.
//! With `--failover`: how soon after a standby starts to lead a fleet of sidecars is
//! identified there, the old leader gone and the standby closing with 4001 until then.

use crate::procs::memory;
use crate::{pct, private_bytes, rss_bytes};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{Hub, Sidecar};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Args {
    /// Tasks for the result → completed run.
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Assignments for the accept-latency run.
    #[arg(long, default_value_t = 1000)]
    assigns: usize,
    /// Run the hub with TLS and the sidecar over `wss://`.
    #[arg(long)]
    tls: bool,
    /// Measure failover instead: sidecars moving from a leader that vanishes to a standby.
    #[arg(long)]
    failover: bool,
    /// Sidecars in the failover run.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Leader lease times to simulate (the standby leads this long after the leader vanished).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    lease_ms: Vec<u64>,
}

const STARTED_ONLY: &str = "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"";

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom sidecar benchmark (release binary {})", bin.display());
    let root = tempfile::tempdir()?;
    if args.failover {
        for lease in &args.lease_ms {
            failover(bin, args.agents, Duration::from_millis(*lease), root.path()).await?;
        }
        return Ok(());
    }
    println!("{}", symbol_order_coverage(bin)?);
    let hub = if args.tls { Hub::start_tls(bin, "")? } else { Hub::start(bin, "")? };
    println!("hub at {}", hub.url());
    let token = hub.token("bench-agent").await?;
    let mut cfg = testkit::sidecar_config("bench-agent", &token, &hub.ws_url(), Some(STARTED_ONLY));
    if let Some(tls) = &hub.tls {
        cfg.push_str(&format!("tls_ca_file = {}\n", testkit::toml_string(&tls.ca.display().to_string())));
    }
    // Production cadence for the safety-net rescan: the inotify path is what is measured.
    let cfg = testkit::merge_config(&cfg, "rescan_interval_ms = 2000\nping_interval_ms = 30000\n");
    let sidecar = Sidecar::start(bin, &root.path().join("agent"), &cfg)?;
    sidecar.wait_log("identified to the hub").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(sidecar.pid())?;
    let idle_private = private_bytes(sidecar.pid())?;
    let idle_mem = memory(sidecar.pid())?;

    let api = hub.admin();
    let mut lat = Vec::with_capacity(args.tasks);
    let mut working_rss = 0u64;
    let mut working_mem = idle_mem;
    for n in 0..args.tasks {
        let id = hub.submit_text(&format!("bench {n}")).await?;
        sidecar.wait_phase("working").await?;
        working_rss = working_rss.max(rss_bytes(sidecar.pid())?);
        working_mem = working_mem.max(memory(sidecar.pid())?);
        // The agent's move: write the result atomically (temp file, then rename in).
        let tmp = sidecar.results().join(format!(".{id}.tmp"));
        std::fs::write(&tmp, br#"{"status":"success"}"#)?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, sidecar.results().join(format!("{id}.json")))?;
        loop {
            let (_, t) = api.get(&format!("/api/tasks/{id}")).await?;
            if t["status"] == "completed" {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("task {id} not completed: {t}");
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Wait for the sidecar to clear the task before the next one.
        while !sidecar.queue()["active"].is_null() {
            tokio::task::yield_now().await;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sidecar RSS idle (identified): {:.1} MB, of which private (anonymous) {:.1} MB",
        idle as f64 / 1e6,
        idle_private as f64 / 1e6
    );
    println!("sidecar RSS while working (max over {} tasks): {:.1} MB", args.tasks, working_rss as f64 / 1e6);
    println!("sidecar memory idle (smaps_rollup; the hub maps the same binary): {}", idle_mem.show());
    println!("sidecar memory while working (each figure's max over {} tasks): {}", args.tasks, working_mem.show());
    println!(
        "result file renamed in -> task completed at the hub ({} tasks): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    drop(sidecar);
    drop(hub);
    accept_latency(bin, args.assigns, root.path()).await
}

/// Measures the sidecar alone: this function plays the hub's side of the socket, sends
/// `task_assign` and times the `task_accepted`, which the sidecar sends only after queue.json
/// is fsynced. It then cancels the task so the sidecar is free for the next one.
async fn accept_latency(bin: &Path, n: usize, root: &Path) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = testkit::sidecar_config("acc", "t", &format!("ws://{addr}/ws"), Some("exit 0"));
    let cfg = testkit::merge_config(&cfg, "confirmation_timeout_ms = 600000\nping_interval_ms = 600000\n");
    let sidecar = Sidecar::start(bin, &root.join("acc"), &cfg)?;
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let next_text =
        |m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>| -> Result<Option<serde_json::Value>> {
            match m {
                Some(Ok(Message::Text(t))) => Ok(Some(serde_json::from_str(t.as_str())?)),
                Some(Ok(_)) => Ok(None),
                Some(Err(e)) => Err(e.into()),
                None => bail!("sidecar closed"),
            }
        };
    let hello = loop {
        if let Some(v) = next_text(ws.next().await)? {
            break v;
        }
    };
    if hello["type"] != "identify" {
        bail!("expected identify, got {hello}");
    }
    ws.send(Message::text(json!({"type": "identified", "agent_id": "acc"}).to_string())).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "sidecar memory idle and identified, alone (no other process maps the binary): {}",
        memory(sidecar.pid())?.show()
    );
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("task-{i}");
        let assign = json!({"type": "task_assign", "task_id": id, "description": "x", "metadata": {}, "generation": 1, "assigned_at": 0});
        let t0 = Instant::now();
        ws.send(Message::text(assign.to_string())).await?;
        loop {
            let Some(v) = next_text(ws.next().await)? else { continue };
            if v["type"] == "task_accepted" && v["task_id"] == id.as_str() {
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        ws.send(Message::text(json!({"type": "task_cancelled", "task_id": id, "timestamp": 0}).to_string())).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sidecar.queue()["active"].is_null() {
            if Instant::now() > deadline {
                bail!("cancel not applied");
            }
            tokio::task::yield_now().await;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "task_assign -> task_accepted, queue.json fsynced first ({n} assignments): p50 {:.2} ms, p99 {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    drop(sidecar);
    Ok(())
}

/// How many of `sidecar.order`'s functions the binary has: the sidecar's memory figures hold
/// only while the list matches the code (crate versions and renames change the names).
fn symbol_order_coverage(bin: &Path) -> Result<String> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agentcom/sidecar.order");
    let list = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let nm = std::process::Command::new("nm").arg("--defined-only").arg(bin).output().context("running nm")?;
    let names: std::collections::HashSet<&str> =
        std::str::from_utf8(&nm.stdout)?.lines().filter_map(|l| l.rsplit(' ').next()).collect();
    let wanted: Vec<&str> = list.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let found = wanted.iter().filter(|n| names.contains(*n)).count();
    Ok(format!(
        "sidecar.order: {found} of {} functions found in the binary (below that, run scripts/sidecar-order)",
        wanted.len()
    ))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts a sidecar's socket and reads its `identify`; returns the socket and its agent id.
async fn accept_identify(listener: &tokio::net::TcpListener) -> Result<(Ws, String)> {
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "identify" {
                    return Ok((ws, v["agent_id"].as_str().unwrap_or_default().to_string()));
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before identify"),
        }
    }
}

/// `agents` sidecars with default reconnect timings and `hub_url = [leader, standby]`,
/// identified at the leader for a while (so their connection counts as healthy). The leader
/// vanishes (its sockets dropped, its port closed); the standby closes every connection with
/// 4001 and no leader named until `lease` has passed, then serves. Prints the time from the
/// standby serving to each sidecar identified there, and how many 4001 closes it sent.
async fn failover(bin: &Path, agents: usize, lease: Duration, root: &Path) -> Result<()> {
    let leader = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let standby = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let urls = format!("[\"ws://{}/ws\", \"ws://{}/ws\"]", leader.local_addr()?, standby.local_addr()?);
    let (tx, mut identified) = tokio::sync::mpsc::unbounded_channel::<String>();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut ws, agent)) = accept_identify(&leader).await {
            let _ = ws.send(Message::text(json!({"type": "identified", "agent_id": agent}).to_string())).await;
            let _ = tx.send(agent);
            held.push(ws);
        }
    });
    let mut sidecars = Vec::with_capacity(agents);
    for i in 0..agents {
        let cfg = testkit::sidecar_config(&format!("f{i}"), "t", "ws://unused", None);
        let cfg = testkit::merge_config(
            &cfg,
            &format!("hub_url = {urls}\nping_interval_ms = 600000\nreconnect_base_ms = 1000\nreconnect_max_ms = 60000\nreconnect_healthy_ms = 1000\n"),
        );
        sidecars.push(Sidecar::start(bin, &root.join(format!("failover-{}-{i}", lease.as_millis())), &cfg)?);
    }
    for _ in 0..agents {
        identified.recv().await.ok_or_else(|| anyhow::anyhow!("the leader stopped"))?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.abort();
    let _ = holder.await;
    let gone = Instant::now();
    let serving = gone + lease;
    let (tx, mut at_standby) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let closes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let turned_away = closes.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut ws, agent)) = accept_identify(&standby).await {
            if Instant::now() < serving {
                turned_away.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: proto::CLOSE_NOT_LEADER.into(),
                    reason: "".into(),
                };
                tokio::spawn(async move {
                    let _ = ws.close(Some(close)).await;
                    while ws.next().await.is_some() {}
                });
                continue;
            }
            let _ = ws.send(Message::text(json!({"type": "identified", "agent_id": agent}).to_string())).await;
            let _ = tx.send(Instant::now());
            held.push(ws);
        }
    });
    let mut lat = Vec::with_capacity(agents);
    for _ in 0..agents {
        let at = tokio::time::timeout(Duration::from_secs(300), at_standby.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the standby stopped"))?;
        lat.push(at.saturating_duration_since(serving).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "lease {} ms: standby serving -> {agents} sidecars identified there: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; 4001 closes sent while waiting: {} ({:.1} per sidecar)",
        lease.as_millis(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        closes.load(std::sync::atomic::Ordering::Relaxed),
        closes.load(std::sync::atomic::Ordering::Relaxed) as f64 / agents as f64
    );
    server.abort();
    drop(sidecars);
    Ok(())
}
