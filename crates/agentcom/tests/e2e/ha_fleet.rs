//! The load guarantee of several hubs on PostgreSQL, with real processes only: 100 real
//! sidecars (each waking a fake agent that records every run) work on tasks that a submitter
//! sends all along through whichever hub leads, while the leader is SIGKILLed 20 times in a row
//! (each time a standby takes over and the killed hub comes back as a standby). Counted at the
//! end: no task acknowledged with 201 is lost, and none is run or completed twice.

use crate::bin;
use futures_util::StreamExt;
use proto::api::{AgentStatus, GetStats, GetTask, Stats, TaskStatus};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{eventually, HubCluster, Sidecar};

const HUBS: usize = 3;
const AGENTS: usize = 100;
const FAILOVERS: usize = 20;
/// Submitters, each at its own pace: together about 80 tasks a second at most, well within what
/// 100 sidecars on two cores finish, so the queue stays short and each round sees work flowing.
const SUBMITTERS: usize = 5;
const SUBMIT_EVERY: Duration = Duration::from_millis(60);
/// Completions the new leader must record before the next kill: work flows again.
const ADVANCE: u64 = 10;

/// Leases of 1 s; the accept and grace timeouts are longer than a failover takes (no task is
/// requeued by a timer while its agent is reconnecting) but the accept timeout is short enough
/// that a task whose `task_assign` died with a leader is assigned again before the end.
const HUB_CONFIG: &str = "lease_ms = 1000\naccept_timeout_ms = 5000\ngrace_period_ms = 30000\n";

/// The fake agent: records its run (task id, agent) in `$RUNS`, says it started, works for up
/// to two seconds (so that tasks are in flight at each kill, in every phase), and writes its
/// result atomically.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
echo "$T $AGENTCOM_AGENT_ID" >> "$RUNS"
touch "$R/$T.started"
sleep "$(( $$ % 2 )).$(( $$ % 10 ))"
printf '{"status":"success"}' > "$R/.$T.tmp" && mv "$R/.$T.tmp" "$R/$T.json"
"#;

/// What the submitter sent: the ids acknowledged with 201, and how many attempts were not.
#[derive(Default)]
struct Submitted {
    acked: Mutex<Vec<String>>,
    redirected: AtomicU64,
    failed: AtomicU64,
}

/// Submits one task every [`SUBMIT_EVERY`] until `stop`, to the hub it believes leads; follows a
/// 307 / `not_leader` to the leader it names (only a hub of the cluster), and after any other
/// failure tries the next hub. Only a 201 counts: an attempt that failed may or may not have
/// been recorded, and is not counted either way.
async fn submit_continuously(
    name: usize,
    urls: Vec<String>,
    token: String,
    stop: Arc<AtomicBool>,
    out: Arc<Submitted>,
) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client builds");
    let mut at = 0;
    let mut pace = tokio::time::interval(SUBMIT_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        pace.tick().await;
        n += 1;
        let sent = http
            .post(format!("{}/api/tasks", urls[at]))
            .bearer_auth(&token)
            .json(&json!({"description": format!("fleet task {name}-{n}")}))
            .send()
            .await;
        let answer = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json::<serde_json::Value>().await.unwrap_or_default())
            }
            Err(_) => (0, serde_json::Value::Null),
        };
        match answer {
            (201, body) => {
                let id = body["task_id"].as_str().expect("a 201 names its task").to_string();
                out.acked.lock().unwrap().push(id);
            }
            (307 | 503, body) if body["error"] == "not_leader" => {
                out.redirected.fetch_add(1, Ordering::Relaxed);
                let named = body["leader"].as_str().and_then(|l| urls.iter().position(|u| u == l));
                at = named.unwrap_or((at + 1) % urls.len());
            }
            _ => {
                out.failed.fetch_add(1, Ordering::Relaxed);
                at = (at + 1) % urls.len();
            }
        }
    }
}

/// Every run the fake agents recorded: task id → how many times it ran.
fn runs(path: &Path) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let id = line.split(' ').next().unwrap_or_default().to_string();
        *count.entry(id).or_insert(0) += 1;
    }
    count
}

/// Stats from the hub that leads now. Under load a leader may also lose its lease on its own
/// (a renewal late past the lease): the test counts such takeovers but does not forbid them.
async fn leader_stats(c: &HubCluster) -> Result<(usize, Stats), String> {
    for i in (0..c.len()).filter(|i| c.is_running(*i)) {
        if c.leads(i).await.is_some() {
            let s = c.hub(i).admin_client().call(&GetStats).await.map_err(|e| format!("hub {i}: {e}"))?;
            return Ok((i, s));
        }
    }
    Err("no hub leads".into())
}

/// The leader's completed count once it is [`ADVANCE`] past `from`.
async fn advanced(c: &HubCluster, from: u64) -> Result<u64, String> {
    let (_, s) = leader_stats(c).await?;
    match completed(&s) {
        done if done >= from + ADVANCE => Ok(done),
        done => Err(format!("{done} completed, waiting for {}", from + ADVANCE)),
    }
}

fn completed(s: &Stats) -> u64 {
    s.by_status.get(&TaskStatus::Completed).copied().unwrap_or(0)
}

/// The lease keeper's lines that say leadership moved for a reason other than our SIGKILLs.
fn lease_events(logs: &[String]) -> Vec<String> {
    const NOTABLE: [&str; 4] = [
        "took the lease but could not start leading; standing by again",
        "stepping down",
        "the leader's lease expired; terminating its database sessions",
        "lease renewal failed; retrying",
    ];
    logs.iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["message"].as_str().is_some_and(|m| NOTABLE.contains(&m)))
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sidecars_through_twenty_leader_sigkills_lose_nothing_and_run_nothing_twice() -> anyhow::Result<()> {
    let mut c = HubCluster::start(bin(), HUBS, HUB_CONFIG)?;
    let (first_leader, first_term) = c.settled().await?;
    let root = tempfile::tempdir()?;
    let script = root.path().join("agent.sh");
    std::fs::write(&script, AGENT)?;
    let runs_file: PathBuf = root.path().join("runs");
    let wake = format!("RUNS='{}' sh '{}'", runs_file.display(), script.display());
    let hub_urls: Vec<String> = c.ws_urls().iter().map(|u| testkit::toml_string(u)).collect();
    let hub_list = format!("hub_url = [{}]\nrescan_interval_ms = 1000\n", hub_urls.join(", "));

    let mut sidecars = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let agent = format!("agent-{i:03}");
        let token = c.hub(first_leader).token(&agent).await?;
        let cfg = testkit::sidecar_config(&agent, &token, "ws://unused", Some(&wake));
        sidecars.push(Sidecar::start(bin(), &root.path().join(&agent), &testkit::merge_config(&cfg, &hub_list))?);
    }
    eventually("every sidecar to be identified at the leader", || async {
        let (_, s) = leader_stats(&c).await?;
        let connected: u64 = s.agents.iter().filter(|(st, _)| **st != AgentStatus::Offline).map(|(_, n)| n).sum();
        if connected >= AGENTS as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(Submitted::default());
    let admin = c.hub(first_leader).admin_token.clone();
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|i| tokio::spawn(submit_continuously(i, c.urls(), admin.clone(), stop.clone(), submitted.clone())))
        .collect();
    eventually("tasks to flow", || advanced(&c, 0)).await?;

    let mut logs = Vec::new();
    for round in 1..=FAILOVERS {
        let t0 = std::time::Instant::now();
        let (leader, term) = c.settled().await?;
        let (_, before) = eventually("the leader's stats", || leader_stats(&c)).await?;
        let in_flight = [TaskStatus::Assigned, TaskStatus::Working]
            .iter()
            .map(|st| before.by_status.get(st).copied().unwrap_or(0))
            .sum::<u64>();
        logs.extend(c.kill9(leader));
        let (next, _) = c.wait_leader_after(term).await?;
        c.restart(leader)?;
        let (_, s) = eventually("the new leader's stats", || leader_stats(&c)).await?;
        let done =
            eventually(&format!("completions to advance after failover {round}"), || advanced(&c, completed(&s)))
                .await?;
        println!(
            "failover {round}: hub {leader} killed in term {term} with {in_flight} tasks in flight, hub {next} leads; \
             {done} completed; {:?}",
            t0.elapsed()
        );
    }

    stop.store(true, Ordering::SeqCst);
    for s in submitters {
        s.await?;
    }
    let acked = submitted.acked.lock().unwrap().clone();
    let final_stats = eventually("every task to be completed", || async {
        let (_, s) = leader_stats(&c).await?;
        if completed(&s) == s.total {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    let (leader, last_term) = c.settled().await?;
    for i in 0..c.len() {
        logs.extend(c.hub(i).logs());
    }

    // Every acknowledged task is completed at the leader, with one completion in its history.
    let client = c.hub(leader).admin_client();
    let details: Vec<_> = futures_util::stream::iter(acked.iter())
        .map(|id| {
            let client = client.clone();
            async move { (id.clone(), client.call(&GetTask { task_id: id.clone() }).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut lost = Vec::new();
    let mut completed_twice = Vec::new();
    for (id, detail) in details {
        match detail {
            Ok(d) if d.task.status == TaskStatus::Completed => {
                let completions = d.history.iter().filter(|t| t.to == TaskStatus::Completed).count();
                if completions != 1 {
                    completed_twice.push((id, d.history));
                }
            }
            other => lost.push((id, format!("{other:?}"))),
        }
    }

    // Every task ran exactly once: each acknowledged one, and any whose 201 was lost with a hub.
    let runs = runs(&runs_file);
    let run_twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    let acked_runs: Vec<_> = acked.iter().filter_map(|id| runs.get(id).map(|n| (id, *n))).collect();
    let total_runs: usize = runs.values().sum();
    let events = lease_events(&logs);
    for e in &events {
        println!("lease event: {e}");
    }
    let took: Vec<u64> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "this hub leads now")
        .filter_map(|v| v["took_ms"].as_u64())
        .collect();
    println!("new leaders loaded in (ms): {took:?}");
    println!(
        "ha fleet: {AGENTS} sidecars, {HUBS} hubs, {FAILOVERS} failovers by SIGKILL, terms {first_term} to {last_term} \
         ({} takeovers without a kill, {} lease events); acked {}, \
         submissions redirected {}, failed {}; tasks at the hub {}, completed {}; runs {total_runs} \
         ({} distinct tasks), run twice {}, completed twice {}, acked lost {}",
        last_term - first_term - FAILOVERS as u64,
        events.len(),
        acked.len(),
        submitted.redirected.load(Ordering::Relaxed),
        submitted.failed.load(Ordering::Relaxed),
        final_stats.total,
        completed(&final_stats),
        runs.len(),
        run_twice.len(),
        completed_twice.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged tasks not completed: {lost:?}");
    assert!(completed_twice.is_empty(), "tasks completed more than once: {completed_twice:?}");
    assert!(run_twice.is_empty(), "tasks run more than once: {run_twice:?}");
    assert_eq!(acked_runs.len(), acked.len(), "every acknowledged task ran");
    assert_eq!(runs.len() as u64, completed(&final_stats), "every completed task ran, and every run completed one");
    assert!(acked.len() > FAILOVERS * ADVANCE as usize, "tasks flowed all along: {} acked", acked.len());
    drop(sidecars);
    Ok(())
}

/// A standby that takes over and then loads for longer than the lease (a big state, a slow
/// database: here the tables it reads are locked for a while) keeps renewing its lease while it
/// loads: the other standby does not depose it, and it serves in the next term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_that_loads_for_longer_than_its_lease_keeps_it() -> anyhow::Result<()> {
    const LEASE: Duration = Duration::from_millis(1000);
    let mut c = HubCluster::start(bin(), 3, &format!("lease_ms = {}\n", LEASE.as_millis()))?;
    let (leader, term) = c.settled().await?;
    // The loader reads these in this order; each one holds it up for half a lease, so each of
    // its statements stays well within the statement timeout (the lease) while the whole load
    // takes longer than the lease.
    let tables = ["tasks", "tokens", "agents"];
    let mut locks = Vec::new();
    for table in tables {
        locks.push(testkit::postgres::TableLock::take(&c.database_url, table)?);
    }
    c.kill9(leader);
    for (table, lock) in tables.iter().zip(locks) {
        eventually(&format!("the new leader to wait on {table} for half a lease"), || async {
            let url = c.database_url.clone();
            match testkit::postgres::lock_waiters(&url, table, "agentcom-hub", LEASE / 2) {
                Ok(n) if n > 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        drop(lock);
    }
    let (now, new_term) = c.settled().await?;
    assert_ne!(now, leader);
    assert_eq!(new_term, term + 1, "one takeover: the hub that loaded for {:?} was not deposed", LEASE * 3 / 2);
    let logs: Vec<String> = (0..c.len()).filter(|i| c.is_running(*i)).flat_map(|i| c.hub(i).logs()).collect();
    assert_eq!(lease_events(&logs).iter().filter(|l| l.contains("expired")).count(), 0, "{logs:?}");
    Ok(())
}
