//! Failover: two hubs on PostgreSQL with `open_tasks` tasks waiting; the leader is SIGKILLed (its
//! database session ends at once) or SIGSTOPped (silent until its lease expires); timed from the
//! signal to the standby's `/health` saying it leads, and to its first `201` for a submission.

use super::{median_max, Args};
use crate::hub::PRODUCTION;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{HubCluster, Postgres};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Stop,
}

pub async fn run(bin: &Path, args: &Args, pg: &Postgres) -> Result<()> {
    println!(
        "\n== failover: 2 hubs, {} open tasks, {} failovers of each kind per lease",
        args.open_tasks, args.repeats
    );
    for lease in &args.lease_ms {
        let mut c = HubCluster::start_on(bin, pg.share(), 2, &format!("{PRODUCTION}lease_ms = {lease}\n"))?;
        let (leader, _) = c.settled().await?;
        fill(&c, leader, args.open_tasks).await?;
        for fault in [Fault::Kill, Fault::Stop] {
            let (mut health, mut api) = (Vec::new(), Vec::new());
            for _ in 0..args.repeats {
                let (h, a) = once(&mut c, fault).await?;
                health.push(h);
                api.push(a);
            }
            println!(
                "lease {lease} ms, leader {}: -> standby's /health says leader: {}; -> first 201 there: {}",
                match fault {
                    Fault::Kill => "SIGKILL",
                    Fault::Stop => "SIGSTOP",
                },
                median_max(&mut health),
                median_max(&mut api)
            );
        }
    }
    Ok(())
}

/// Submits `n` tasks to the leader (nobody works on them: they stay open).
async fn fill(c: &HubCluster, leader: usize, n: usize) -> Result<()> {
    let api = c.hub(leader).admin();
    let mut batch = Vec::new();
    for i in 0..n {
        let api = api.clone();
        batch.push(tokio::spawn(
            async move { api.post("/api/tasks", json!({"description": format!("open {i}")})).await },
        ));
        if batch.len() == 16 || i + 1 == n {
            for b in batch.drain(..) {
                let (status, body) = b.await??;
                if status != 201 {
                    bail!("submit: {status} {body}");
                }
            }
        }
    }
    Ok(())
}

/// One failover; returns the ms from the signal to the standby's health saying it leads, and
/// to its first 201. The old leader is then started again as a standby.
async fn once(c: &mut HubCluster, fault: Fault) -> Result<(f64, f64)> {
    let (leader, term) = c.settled().await?;
    let standby = 1 - leader;
    let t0 = Instant::now();
    match fault {
        Fault::Kill => drop(c.kill9(leader)),
        Fault::Stop => testkit::signal(c.hub(leader).pid(), nix::sys::signal::Signal::SIGSTOP)?,
    }
    let limit = Duration::from_secs(120);
    let leads = async {
        loop {
            if c.leads(standby).await.is_some_and(|t| t > term) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!("hub {standby} did not lead within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let url = format!("{}/api/tasks", c.url(standby));
    let token = c.hub(standby).admin_token.clone();
    let serves = async {
        loop {
            let sent =
                http.post(&url).bearer_auth(&token).json(&json!({"description": "after the failover"})).send().await;
            if sent.is_ok_and(|r| r.status() == 201) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!("hub {standby} did not accept a submission within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let (health, api) = tokio::try_join!(leads, serves)?;
    if matches!(fault, Fault::Stop) {
        drop(c.kill9(leader));
    }
    c.restart(leader)?;
    Ok((health.as_secs_f64() * 1000.0, api.as_secs_f64() * 1000.0))
}
