//! Hostile-input benchmark (issue 9): the hub serving 100 working agents while 20,000 half-open
//! connections hold sockets, and a backlog of 100,000 queued tasks (memory, 1,000-row pages, and
//! dispatch latency while pages are read in a loop).

use crate::hub::{assigned_at, spawn_agents, Seen};
use crate::{pct, rss_bytes};
use anyhow::{bail, Context, Result};
use proto::api::{GetStats, ListTasks, SubmitTask};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// Half-open connections held during the flood.
    #[arg(long, default_value_t = 20_000)]
    half_open: usize,
    /// Processes holding them (one process may not hold more than its open-files limit).
    #[arg(long, default_value_t = 4)]
    holders: usize,
    /// Working agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Sequential submissions timed for submit -> task_assign.
    #[arg(long, default_value_t = 2000)]
    latency_tasks: usize,
    /// Tasks queued for the memory and listing figures.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Description size of each queued task.
    #[arg(long, default_value_t = 2048)]
    task_bytes: usize,
    /// How soon a holder re-opens a socket the hub closed (the hub keeps fewer unidentified
    /// sockets than the flood, so it closes some all the time: a shorter delay is a faster
    /// connection churn on the same two cores).
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u64,
}

/// `bench hold-sockets`: keeps `count` half-open connections to `addr` (a request head without
/// its final empty line), opening a new one `reconnect_ms` after the hub closes one. Prints `ready`.
#[derive(clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    addr: std::net::SocketAddr,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u64,
}

pub async fn hold(args: HoldArgs) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opened = Arc::new(AtomicU64::new(0));
    for _ in 0..args.count {
        let (addr, opened, reconnect_ms) = (args.addr, opened.clone(), args.reconnect_ms);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    if s.write_all(b"GET /ws HTTP/1.1\r\nHost: flood\r\n").await.is_ok() {
                        if first {
                            opened.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        }
                        let mut buf = [0u8; 256];
                        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(reconnect_ms)).await;
            }
        });
        tokio::task::yield_now().await;
    }
    while (opened.load(Ordering::Relaxed) as usize) < args.count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

struct Agents {
    seen: Seen,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

async fn start_agents(hub: &Hub, n: usize) -> Result<Agents> {
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicU64::new(0));
    let tasks = spawn_agents(hub, (0..n).map(|i| format!("bench-{i}")), &seen, &done);
    testkit::eventually(&format!("{n} agents identified"), || async {
        let s = hub.admin_client().call(&GetStats).await.map_err(|e| e.to_string())?;
        let idle = s.agents.get(&proto::api::AgentStatus::Idle).copied().unwrap_or(0) as usize;
        if idle >= n {
            Ok(())
        } else {
            Err(format!("{idle} idle"))
        }
    })
    .await?;
    Ok(Agents { seen, tasks })
}

/// Submits one task at a time and times each until an agent holds its `task_assign`.
async fn latencies(hub: &Hub, seen: &Seen, n: usize) -> Result<Vec<f64>> {
    let client = hub.admin_client();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let id = client.call(&SubmitTask::new(format!("latency {i}"))).await?.task_id;
        lat.push(assigned_at(seen, &id).await.duration_since(t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom hostile-input benchmark (release binary {})", bin.display());
    flood(bin, &args).await?;
    backlog(bin, &args).await
}

async fn flood(bin: &Path, args: &Args) -> Result<()> {
    // Production settings: the flood is met by eviction, not by a short header timeout.
    let hub = Hub::start(bin, "heartbeat_timeout_ms = 600000\n")?;
    let agents = start_agents(&hub, args.agents).await?;
    let me = std::env::current_exe()?;
    let mut holders = Vec::new();
    let t0 = Instant::now();
    for _ in 0..args.holders {
        let mut child = Command::new(&me)
            .args([
                "hold-sockets",
                "--addr",
                &hub.addr.to_string(),
                "--count",
                &(args.half_open / args.holders).to_string(),
                "--reconnect-ms",
                &args.reconnect_ms.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("holder stdout")?;
        holders.push((testkit::Owned::new(child, "socket holder"), BufReader::new(out)));
    }
    for (_, out) in holders.iter_mut() {
        let mut line = String::new();
        let read = tokio::task::block_in_place(|| out.read_line(&mut line));
        if read? == 0 || line.trim() != "ready" {
            bail!("a socket holder did not get its connections open");
        }
    }
    println!(
        "{} half-open connections opened in {:.1} s by {} processes (each closed one re-opened after {} ms)",
        args.half_open,
        t0.elapsed().as_secs_f64(),
        args.holders,
        args.reconnect_ms
    );
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (client, stop) = (hub.client(None), stop.clone());
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut failed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match client.call(&proto::api::GetHealth).await {
                    Ok(_) => times.push(t0.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (times, failed)
        })
    };
    let lat = latencies(&hub, &agents.seen, args.latency_tasks).await?;
    stop.store(true, Ordering::Relaxed);
    let (mut health, failed) = probe.await?;
    health.sort_by(|a, b| a.total_cmp(b));
    let m = hub.client(None).metrics().await?;
    println!(
        "during the flood: submit -> task_assign p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} agents, {} sequential submissions)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        args.agents,
        lat.len()
    );
    println!(
        "during the flood: /health answered {} of {} probes, p50 {:.2} ms, p99 {:.2} ms",
        health.len(),
        health.len() + failed,
        pct(&health, 0.5),
        pct(&health, 0.99)
    );
    println!(
        "hub: {} connections open (limit {}), {} evicted, {} refused; RSS {:.1} MB",
        metric(&m, "agentcom_connections_open "),
        metric(&m, "agentcom_connections_max "),
        metric(&m, "agentcom_connections_evicted_total "),
        metric(&m, "agentcom_connections_refused_total "),
        rss_bytes(hub.pid())? as f64 / 1e6
    );
    drop(holders);
    for a in agents.tasks {
        a.abort();
    }
    Ok(())
}

async fn backlog(bin: &Path, args: &Args) -> Result<()> {
    let hub = Hub::start(bin, "heartbeat_timeout_ms = 600000\n")?;
    let empty = rss_bytes(hub.pid())?;
    let t0 = Instant::now();
    let submitters = 32;
    let mut subs = Vec::new();
    for s in 0..submitters {
        let client = hub.admin_client();
        // The remainder goes to the first submitters: exactly `queued` in all.
        let per = args.queued / submitters + usize::from(s < args.queued % submitters);
        let bytes = args.task_bytes;
        subs.push(tokio::spawn(async move {
            for n in 0..per {
                let mut t = SubmitTask::new(format!("{s}-{n} {}", "x".repeat(bytes)));
                // Nobody can take these: they stay queued, as a backlog does.
                t.needed_capabilities = vec!["a-capability-no-agent-has".into()];
                client.call(&t).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in subs {
        s.await??;
    }
    let queued = args.queued;
    let secs = t0.elapsed().as_secs_f64();
    let rss = rss_bytes(hub.pid())?;
    println!(
        "{queued} queued tasks of {} B submitted in {secs:.1} s ({:.0}/s): hub RSS {:.1} MB (empty {:.1} MB)",
        args.task_bytes,
        queued as f64 / secs,
        rss as f64 / 1e6,
        empty as f64 / 1e6
    );
    let client = hub.admin_client();
    let mut pages = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let page = client.call(&ListTasks { limit: Some(1000), ..Default::default() }).await?;
        pages.push(t0.elapsed().as_secs_f64() * 1000.0);
        if page.count != queued.min(1000) {
            bail!("a page of {} rows, not {}", page.count, queued.min(1000));
        }
    }
    pages.sort_by(|a, b| a.total_cmp(b));
    println!(
        "GET /api/tasks?limit=1000 with them: p50 {:.1} ms, max {:.1} ms (20 pages)",
        pct(&pages, 0.5),
        pages.last().copied().unwrap_or(0.0)
    );
    let agents = start_agents(&hub, args.agents).await?;
    let quiet = latencies(&hub, &agents.seen, args.latency_tasks / 2).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, stop) = (hub.admin_client(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.call(&ListTasks { limit: Some(1000), ..Default::default() }).await.is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let busy = latencies(&hub, &agents.seen, args.latency_tasks / 2).await?;
    stop.store(true, Ordering::Relaxed);
    let listed = reader.await?;
    println!(
        "submit -> task_assign with the backlog: p50 {:.2} ms, p99 {:.2} ms; while 1,000-row pages are read in a loop ({listed} pages): p50 {:.2} ms, p99 {:.2} ms",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&busy, 0.5),
        pct(&busy, 0.99)
    );
    for a in agents.tasks {
        a.abort();
    }
    Ok(())
}
