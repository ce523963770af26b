//! Dashboard and event-stream benchmark (issue 11), against the release hub on loopback:
//! 1. the fleet page with 1,000 agents and 10,000 tasks: server time (request to last byte, with
//!    a session) and, in headless Chromium, time to first contentful paint;
//! 2. the event stream with 100 agents working and 10 readers: from a completion's commit (the
//!    agent's `task_ack`, released right after the commit) to the `completed` event at each reader;
//! 3. hub RSS per connected reader;
//! 4. submit → `task_assign` p99 and lifecycles per second, without readers and with 10 attached.

use crate::hub::{simulate, spawn_agents, submit, submit_many, wait_agents, Seen, Step};
use crate::{pct, rss_bytes};
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// Agents on the fleet page.
    #[arg(long, default_value_t = 1000)]
    fleet_agents: usize,
    /// Tasks in the store behind the fleet page.
    #[arg(long, default_value_t = 10_000)]
    fleet_tasks: usize,
    /// Fleet page loads timed (server side).
    #[arg(long, default_value_t = 30)]
    renders: usize,
    /// Only the fleet page's figures (to iterate on the page).
    #[arg(long)]
    fleet_only: bool,
    /// Also save a screenshot of the fleet page, scrolled to where its first rows end, here.
    #[arg(long)]
    screenshot: Option<std::path::PathBuf>,
    /// Page loads timed in the browser (0 skips the browser).
    #[arg(long, default_value_t = 5)]
    paints: usize,
    /// Tasks whose completion is timed from the commit to the browser's DOM (0 skips it).
    #[arg(long, default_value_t = 10)]
    dom_updates: usize,
    /// Working agents for the stream and lifecycle runs.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Event readers attached.
    #[arg(long, default_value_t = 10)]
    readers: usize,
    /// Tasks whose completion is timed at the readers.
    #[arg(long, default_value_t = 5_000)]
    stream_tasks: usize,
    /// Submissions per second while the stream is timed (0: as fast as 32 submitters go, which
    /// saturates this 2-core machine and times its queueing rather than the stream).
    #[arg(long, default_value_t = 500)]
    stream_rate: u64,
    /// Readers opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    rss_readers: usize,
    /// Sequential submissions timed for submit -> task_assign.
    #[arg(long, default_value_t = 2000)]
    latency_tasks: usize,
    /// Tasks for the lifecycle rate.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent HTTP submitters.
    #[arg(long, default_value_t = 32)]
    submitters: usize,
}

/// Production timings, and room for many readers.
const CONFIG: &str = "grace_period_ms = 60000\naccept_timeout_ms = 60000\nheartbeat_timeout_ms = 600000\nmax_event_readers = 5000\nevent_reader_buffer = 65536\n";

/// A dashboard session cookie (`name=value`), logged in with the admin token.
async fn session(hub: &Hub) -> Result<String> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let r = http
        .post(format!("{}/login", hub.url()))
        .header("origin", hub.url())
        .form(&[("token", hub.admin_token.as_str())])
        .send()
        .await?;
    if r.status() != 303 {
        bail!("login: {}", r.status());
    }
    let set = r.headers().get("set-cookie").context("no session cookie")?.to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_string())
}

/// Waits until `n` agents are identified and idle (a fleet of thousands takes a while).
async fn wait_idle(hub: &Hub, n: usize) -> Result<()> {
    wait_agents(hub, n, Duration::from_secs(120)).await
}

async fn wait_done(done: &AtomicU64, target: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            bail!("only {} of {target} tasks completed", done.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom console benchmark (release binary {})", bin.display());
    fleet_page(bin, &args).await?;
    if args.fleet_only {
        return Ok(());
    }
    if args.dom_updates > 0 {
        dom_update(bin, &args).await?;
    }
    stream_latency(bin, &args).await?;
    reader_rss(bin, &args).await?;
    let without = lifecycles(bin, &args, 0).await?;
    let with = lifecycles(bin, &args, args.readers).await?;
    println!(
        "submit -> task_assign, {} sequential submissions, {} agents: without readers p50 {:.2} ms p99 {:.2} ms; with {} readers p50 {:.2} ms p99 {:.2} ms",
        args.latency_tasks, args.agents, without.0, without.1, args.readers, with.0, with.1
    );
    println!(
        "full lifecycles per second ({} tasks, {} submitters): without readers {:.0}/s; with {} readers {:.0}/s",
        args.tasks, args.submitters, without.2, args.readers, with.2
    );
    Ok(())
}

/// 1. The fleet page with a full fleet and a store of tasks.
async fn fleet_page(bin: &Path, args: &Args) -> Result<()> {
    let hub = Hub::start(bin, CONFIG)?;
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut agents = Vec::new();
    for chunk in 0..args.fleet_agents.div_ceil(200) {
        let n = 200.min(args.fleet_agents - chunk * 200);
        let mut part = spawn_agents(&hub, (0..n).map(|i| format!("fleet{chunk}-{i:04}")), &seen, &done);
        agents.append(&mut part);
        wait_idle(&hub, chunk * 200 + n).await?;
    }
    submit_many(&hub, args.fleet_tasks, args.submitters, "bench task").await?;
    wait_done(&done, args.fleet_tasks as u64).await?;
    println!(
        "fleet: {} agents connected and {} tasks completed in {:.1} s",
        args.fleet_agents,
        args.fleet_tasks,
        t0.elapsed().as_secs_f64()
    );
    let cookie = session(&hub).await?;
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..args.renders {
        let t = Instant::now();
        let r = http.get(format!("{}/", hub.url())).header("cookie", &cookie).send().await?;
        if r.status() != 200 {
            bail!("fleet page: {}", r.status());
        }
        let body = r.bytes().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = body.len();
        if !String::from_utf8_lossy(&body).contains("fleet0-0000") {
            bail!("the fleet page does not show the agents");
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "fleet page, {} agents, {} tasks in the store ({:.0} KB of HTML), server time request to last byte over {} loads: p50 {:.1} ms, max {:.1} ms",
        args.fleet_agents,
        args.fleet_tasks,
        size as f64 / 1024.0,
        times.len(),
        pct(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN)
    );
    if args.paints > 0 {
        let dir = tempfile::tempdir()?;
        let b = testkit::browser::Browser::start(dir.path()).await?;
        b.login(&hub.url(), &hub.admin_token).await?;
        let mut fcp = Vec::new();
        let mut loaded = Vec::new();
        let mut received = Vec::new();
        for _ in 0..args.paints {
            b.goto(&format!("{}/", hub.url())).await?;
            // The load event can come before the first paint: wait for its entry.
            let v = testkit::eventually("the first contentful paint", || async {
                let v = b
                    .js("const p = performance.getEntriesByName('first-contentful-paint')[0]; \
                         const n = performance.getEntriesByType('navigation')[0]; \
                         return [p ? p.startTime : null, n ? n.domContentLoadedEventEnd : null, n ? n.responseEnd : null]")
                    .await
                    .map_err(|e| e.to_string())?;
                if v[0].is_null() { Err(format!("not yet: {v}")) } else { Ok(v) }
            })
            .await?;
            if let (Some(p), Some(d), Some(r)) = (v[0].as_f64(), v[1].as_f64(), v[2].as_f64()) {
                fcp.push(p);
                loaded.push(d);
                received.push(r);
            }
        }
        fcp.sort_by(|a, b| a.total_cmp(b));
        loaded.sort_by(|a, b| a.total_cmp(b));
        received.sort_by(|a, b| a.total_cmp(b));
        println!(
            "fleet page in headless Chromium ({} loads): first contentful paint p50 {:.0} ms (max {:.0} ms), DOMContentLoaded p50 {:.0} ms, HTML received p50 {:.0} ms",
            fcp.len(),
            pct(&fcp, 0.5),
            fcp.last().copied().unwrap_or(f64::NAN),
            pct(&loaded, 0.5),
            pct(&received, 0.5)
        );
        if let Some(path) = &args.screenshot {
            b.js("const m = document.querySelector('.more-agents'); if (m) { m.scrollIntoView(); window.scrollBy(0, -250); } return null").await?;
            std::fs::write(path, b.screenshot().await?)?;
            println!("screenshot: {}", path.display());
        }
        b.close().await;
    }
    for a in agents {
        a.abort();
    }
    Ok(())
}

fn wall_ms() -> f64 {
    osutil::clock::epoch_ms() as f64
}

/// From a completion's commit (the agent's `task_ack`) to the task page in Chromium showing
/// `completed`, without a reload (a MutationObserver notes the moment, on the same wall clock).
async fn dom_update(bin: &Path, args: &Args) -> Result<()> {
    let hub = Hub::start(bin, CONFIG)?;
    let dir = tempfile::tempdir()?;
    let b = testkit::browser::Browser::start(dir.path()).await?;
    b.login(&hub.url(), &hub.admin_token).await?;
    let mut a = hub.agent("dom-1", &[]).await?;
    let mut lat = Vec::new();
    for n in 0..args.dom_updates {
        let id = hub.submit_text(&format!("watched {n}")).await?;
        let (got, g) = a.take_task().await?;
        if got != id {
            bail!("took {got}, not {id}");
        }
        b.goto(&format!("{}/tasks/{id}", hub.url())).await?;
        b.wait_text("#task-status", "working").await?;
        b.wait_text("#live-status", "live").await?;
        b.js("window.__seen = null; new MutationObserver(function () {                 const s = document.querySelector('#task-status [data-status]');                 if (!window.__seen && s && s.dataset.status === 'completed') window.__seen = performance.timeOrigin + performance.now();               }).observe(document.querySelector('main'), { subtree: true, childList: true, characterData: true }); return true")
            .await?;
        a.send(json!({"type": "task_complete", "task_id": id, "generation": g, "result": {"status": "success"}}))
            .await?;
        a.expect("task_ack").await?;
        let acked = wall_ms();
        let seen = testkit::eventually("the page to show completed", || async {
            match b.js("return window.__seen").await {
                Ok(v) => v.as_f64().ok_or_else(|| "not yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        lat.push((seen - acked).max(0.0));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "task page in headless Chromium, commit (the agent's ack) -> `completed` in the DOM without a reload, {} tasks: p50 {:.0} ms, max {:.0} ms",
        lat.len(),
        pct(&lat, 0.5),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    b.close().await;
    Ok(())
}

/// One reader of the console's event stream: records when each task's `completed` event arrived.
async fn reader(
    url: String,
    cookie: String,
    arrived: Arc<Mutex<HashMap<String, (Instant, u64)>>>,
    ready: Arc<AtomicU64>,
) -> Result<()> {
    let r = reqwest::Client::new().get(url).header("cookie", cookie).send().await?;
    if r.status() != 200 {
        bail!("events: {}", r.status());
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut stream = r.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            let Ok(v) = serde_json::from_str::<Value>(data.trim_start()) else { continue };
            if v["type"] == "task" && v["to"] == "completed" {
                if let Some(id) = v["task_id"].as_str() {
                    // Wall ms from the hub handling the completion (before its commit) to here.
                    let now_ms = osutil::clock::epoch_ms();
                    let since_handled = now_ms.saturating_sub(v["at"].as_u64().unwrap_or(now_ms));
                    arrived.lock().unwrap().insert(id.to_string(), (Instant::now(), since_handled));
                }
            }
        }
    }
    Ok(())
}

/// A reader that only drains the stream (so the bench's own parsing does not compete with the
/// hub for the machine's two cores).
async fn drain(url: String, cookie: String, ready: Arc<AtomicU64>, bytes: Arc<AtomicU64>) -> Result<()> {
    let r = reqwest::Client::new().get(url).header("cookie", cookie).send().await?;
    if r.status() != 200 {
        bail!("events: {}", r.status());
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        bytes.fetch_add(chunk?.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// A simulated agent that records when each completion was acknowledged (after its commit).
async fn acking_agent(
    url: String,
    id: String,
    token: String,
    acked: Arc<Mutex<HashMap<String, Instant>>>,
) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = json!({"type": "identify", "agent_id": id, "token": token, "protocol_version": 1});
    simulate(ws, &id, hello, |step, task| {
        if let Step::Acked = step {
            acked.lock().unwrap().insert(task.to_string(), Instant::now());
        }
    })
    .await
}

/// 2. Commit → event at the readers, while agents work.
async fn stream_latency(bin: &Path, args: &Args) -> Result<()> {
    let hub = Hub::start(bin, CONFIG)?;
    let cookie = session(&hub).await?;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        tasks.push(tokio::spawn(acking_agent(
            hub.ws_url(),
            format!("w-{i:03}"),
            hub.admin_token.clone(),
            acked.clone(),
        )));
    }
    wait_idle(&hub, args.agents).await?;
    let ready = Arc::new(AtomicU64::new(0));
    let arrivals: Vec<_> = (0..args.readers).map(|_| Arc::new(Mutex::new(HashMap::new()))).collect();
    let mut readers = Vec::new();
    for a in &arrivals {
        readers.push(tokio::spawn(reader(
            format!("{}/console/events", hub.url()),
            cookie.clone(),
            a.clone(),
            ready.clone(),
        )));
    }
    while ready.load(Ordering::Relaxed) < args.readers as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    if args.stream_rate == 0 {
        submit_many(&hub, args.stream_tasks, args.submitters, "bench task").await?;
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.stream_rate as f64));
        let mut sent = Vec::new();
        for n in 0..args.stream_tasks {
            tick.tick().await;
            let api = hub.admin();
            sent.push(tokio::spawn(async move { submit(&api, format!("stream {n}")).await }));
        }
        for s in sent {
            s.await??;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let got = arrivals.iter().map(|a| a.lock().unwrap().len()).min().unwrap_or(0);
        let acks = acked.lock().unwrap().len();
        if got >= args.stream_tasks && acks >= args.stream_tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!("events missing: {got} of {} at the slowest reader, {acks} acks", args.stream_tasks);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let acked = acked.lock().unwrap().clone();
    let mut lat = Vec::new();
    let mut handled = Vec::new();
    let mut early = 0usize;
    for a in &arrivals {
        for (task, (at, since_handled)) in a.lock().unwrap().iter() {
            handled.push(*since_handled as f64);
            let Some(ack) = acked.get(task) else { continue };
            match at.checked_duration_since(*ack) {
                Some(d) => lat.push(d.as_secs_f64() * 1000.0),
                None => {
                    early += 1;
                    lat.push(0.0);
                }
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    handled.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  upper bound, from the hub handling the completion (before its commit's fsync; ms clock) to the reader: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&handled, 0.5),
        pct(&handled, 0.99),
        handled.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "event stream, {} agents working ({:.0} lifecycles/s), {} readers of /console/events: commit (the agent's ack) -> completed event at a reader over {} samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events arrived before the ack)",
        args.agents,
        args.stream_tasks as f64 / secs,
        args.readers,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        early
    );
    for t in tasks.into_iter().chain(readers) {
        t.abort();
    }
    Ok(())
}

/// 3. Memory per connected reader.
async fn reader_rss(bin: &Path, args: &Args) -> Result<()> {
    let hub = Hub::start(bin, CONFIG)?;
    let cookie = session(&hub).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_bytes(hub.pid())?;
    let ready = Arc::new(AtomicU64::new(0));
    let sink = Arc::new(Mutex::new(HashMap::new()));
    let mut readers = Vec::new();
    for _ in 0..args.rss_readers {
        readers.push(tokio::spawn(reader(
            format!("{}/console/events", hub.url()),
            cookie.clone(),
            sink.clone(),
            ready.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < args.rss_readers as u64 {
        if Instant::now() > deadline {
            bail!("only {} readers connected", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One event to every reader, so each stream has sent something.
    hub.submit_text("hello readers").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_bytes(hub.pid())?;
    println!(
        "hub RSS with {} connected readers of /console/events: {:.1} MB (no reader {:.1} MB) = {:.1} KB per reader",
        args.rss_readers,
        rss as f64 / 1e6,
        base as f64 / 1e6,
        rss.saturating_sub(base) as f64 / args.rss_readers as f64 / 1024.0
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// Step 4: submit → assign (p50, p99 in ms) and lifecycles per second, with `readers`
/// attached; the hub bench's workload, with the readers draining the stream meanwhile.
async fn lifecycles(bin: &Path, args: &Args, readers: usize) -> Result<(f64, f64, f64)> {
    let hub = Hub::start(bin, CONFIG)?;
    let cookie = session(&hub).await?;
    let ready = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        tasks.push(tokio::spawn(drain(
            format!("{}/console/events", hub.url()),
            cookie.clone(),
            ready.clone(),
            bytes.clone(),
        )));
    }
    while ready.load(Ordering::Relaxed) < readers as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let workload = crate::hub::Workload {
        agents: args.agents,
        latency_tasks: args.latency_tasks,
        tasks: args.tasks,
        submitters: args.submitters,
    };
    let measured = crate::hub::lifecycles(&hub, &workload).await?;
    for t in tasks {
        t.abort();
    }
    Ok((pct(&measured.latency_ms, 0.5), pct(&measured.latency_ms, 0.99), measured.per_sec()))
}
