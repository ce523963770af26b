//! Tasks that depend on tasks (issue 22): 1,000 tasks as `width` chains `depth` deep (each task
//! depends on the one before it in its chain), submitted by one submitter per chain while
//! `width` simulated agents take and complete them at once; the time from the first submit to
//! the last completion against the same tasks without dependencies. Then the same graph
//! submitted up front (every task but the first of each chain `blocked`), and for each task the
//! time from its dependency's `task_complete` leaving the agent to its own `task_assign`
//! arriving: what the hub adds between the two (a durable commit, then dispatch).

use crate::hub::{simulate, Step};
use crate::pct;
use anyhow::{bail, Result};
use proto::api::SubmitTask;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// Chains side by side (and simulated agents).
    #[arg(long, default_value_t = 10)]
    width: usize,
    /// Tasks in each chain.
    #[arg(long, default_value_t = 100)]
    depth: usize,
    /// Rounds of the with/without comparison (alternating; medians are shown).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// When each task reached its agent, and when its completion left it.
#[derive(Default)]
struct Log {
    assigned: HashMap<String, Instant>,
    completed: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Log>>;

/// A simulated agent that accepts and completes every task at once, logging both instants.
async fn agent(url: String, agent_id: String, token: String, log: Shared, done: Arc<AtomicU64>) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let identify = json!({"type": "identify", "agent_id": agent_id, "token": token, "client_type": "sidecar", "protocol_version": 1});
    simulate(ws, &agent_id, identify, |step, id| match step {
        Step::Assigned => {
            log.lock().unwrap().assigned.insert(id.to_string(), Instant::now());
        }
        Step::Completing => {
            log.lock().unwrap().completed.insert(id.to_string(), Instant::now());
        }
        Step::Acked => {
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await
}

struct Fleet {
    log: Shared,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

async fn fleet(hub: &Hub, n: usize) -> Result<Fleet> {
    let (log, done) = (Shared::default(), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..n {
        let agent_id = format!("dep-{i}");
        let token = hub.token(&agent_id).await?;
        tasks.push(tokio::spawn(agent(hub.ws_url(), agent_id, token, log.clone(), done.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = hub.admin().get("/api/tasks/stats").await?;
        if s["agents"]["idle"].as_u64().unwrap_or(0) as usize + s["agents"]["working"].as_u64().unwrap_or(0) as usize
            >= n
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("agents did not all identify: {s}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Fleet { log, done, tasks })
}

impl Fleet {
    async fn until_done(&self, n: u64) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.done.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!("only {} of {n} completed", self.done.load(Ordering::Relaxed));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        Ok(Instant::now())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Submits `width` chains of `depth`, one submitter per chain; with `linked`, each task depends
/// on the one before it. Returns every chain's ids.
async fn submit_chains(hub: &Hub, width: usize, depth: usize, linked: bool) -> Result<Vec<Vec<String>>> {
    let mut submitters = Vec::new();
    for c in 0..width {
        let client = hub.admin_client();
        submitters.push(tokio::spawn(async move {
            let mut ids: Vec<String> = Vec::with_capacity(depth);
            for k in 0..depth {
                let mut n = SubmitTask::new(format!("chain {c} step {k}"));
                if linked {
                    n.depends_on = ids.last().cloned().into_iter().collect();
                }
                ids.push(client.call(&n).await?.task_id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut chains = Vec::new();
    for s in submitters {
        chains.push(s.await??);
    }
    Ok(chains)
}

/// Whether every task reached its agent only after its dependency's completion left.
fn in_order(log: &Log, chains: &[Vec<String>]) -> bool {
    chains.iter().all(|c| c.windows(2).all(|w| log.completed[&w[0]] <= log.assigned[&w[1]]))
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    let total = args.width * args.depth;
    println!(
        "agentcom dependency benchmark: {total} tasks as {} chains {} deep, {} simulated agents (release binary {})",
        args.width,
        args.depth,
        args.width,
        bin.display()
    );
    let (mut plain, mut linked_secs, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let mut pair = [0.0; 2];
        for (i, linked) in [false, true].into_iter().enumerate() {
            let hub = Hub::start(bin, crate::hub::PRODUCTION)?;
            let f = fleet(&hub, args.width).await?;
            let t0 = Instant::now();
            let chains = submit_chains(&hub, args.width, args.depth, linked).await?;
            let end = f.until_done(total as u64).await?;
            pair[i] = (end - t0).as_secs_f64();
            if linked && !in_order(&f.log.lock().unwrap(), &chains) {
                bail!("a task ran before its dependency completed");
            }
        }
        let overhead = (pair[1] / pair[0] - 1.0) * 100.0;
        println!(
            "  round {round}: submit-to-last-completed without dependencies {:.3} s, with depends_on {:.3} s (every task after its dependency): {overhead:+.1} %",
            pair[0], pair[1]
        );
        plain.push(pair[0]);
        linked_secs.push(pair[1]);
        overhead.is_finite().then(|| overheads.push(overhead));
    }
    for v in [&mut plain, &mut linked_secs, &mut overheads] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "  median of {} rounds: without {:.3} s ({:.0} tasks/s), with {:.3} s ({:.0} tasks/s); overhead {:+.1} % (median of the rounds' overheads)",
        args.rounds,
        pct(&plain, 0.5),
        total as f64 / pct(&plain, 0.5),
        pct(&linked_secs, 0.5),
        total as f64 / pct(&linked_secs, 0.5),
        pct(&overheads, 0.5)
    );
    // The graph waits, blocked, before any agent is there; then the agents run it: one chain of
    // all the tasks (each completion alone in its commit), then the chains side by side.
    for (width, depth) in [(1, total), (args.width, args.depth)] {
        latency(bin, width, depth).await?;
    }
    Ok(())
}

/// Each dependency's `task_complete` leaving its agent → its dependent's `task_assign` arriving.
async fn latency(bin: &Path, width: usize, depth: usize) -> Result<()> {
    let hub = Hub::start(bin, crate::hub::PRODUCTION)?;
    let chains = submit_chains(&hub, width, depth, true).await?;
    let (_, s) = hub.admin().get("/api/tasks/stats").await?;
    let t0 = Instant::now();
    let f = fleet(&hub, width).await?;
    let end = f.until_done((width * depth) as u64).await?;
    let log = f.log.lock().unwrap();
    if !in_order(&log, &chains) {
        bail!("a task ran before its dependency completed");
    }
    let mut lat: Vec<f64> = chains
        .iter()
        .flat_map(|c| c.windows(2).map(|w| (log.assigned[&w[1]] - log.completed[&w[0]]).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {width} chain(s) of {depth} submitted up front ({} queued, {} blocked), run by {width} agent(s) in {:.3} s: dependency's task_complete sent -> dependent's task_assign received ({} pairs) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        s["by_status"]["queued"],
        s["by_status"]["blocked"],
        (end - t0).as_secs_f64(),
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
