//! Agents identified again after a failover: real sidecars (`hub_url` lists of both hubs), and
//! 10,000 simulated agents in this process that reconnect the way the sidecar does (the same
//! hub list rules and the same full-jitter backoff, with the default 1 s base). Each agent has
//! its own token. The leader is SIGKILLed; timed from the standby's `/health` saying it leads
//! to each agent's `identified` there.

use super::Args;
use crate::hub::PRODUCTION;
use crate::{cpu_secs, pct};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use proto::api::{AgentStatus, CreateToken, GetStats};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use testkit::{HubCluster, Postgres, Sidecar};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The sidecar's reconnect settings used by both runs: its defaults, except that a connection
/// counts as healthy (the backoff starts again from the base) after 1 s instead of 30 s, so
/// that each repetition starts from the same backoff.
const BASE: Duration = Duration::from_millis(1000);
const MAX: Duration = Duration::from_secs(60);
const HEALTHY: Duration = Duration::from_millis(1000);

/// Connected agents at hub `i` (known agents that are not offline).
async fn connected(c: &HubCluster, i: usize) -> Result<u64> {
    let s = c.hub(i).admin_client().call(&GetStats).await?;
    Ok(s.agents.iter().filter(|(st, _)| **st != AgentStatus::Offline).map(|(_, n)| n).sum())
}

async fn wait_connected(c: &HubCluster, i: usize, n: usize, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let now = connected(c, i).await.unwrap_or(0);
        if now >= n as u64 {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("only {now} of {n} agents connected at hub {i} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs the leader; returns the standby's index and when (both clocks) it said it leads.
async fn kill_leader(c: &mut HubCluster) -> Result<(usize, usize, Instant, SystemTime, Duration)> {
    let (leader, term) = c.settled().await?;
    let standby = 1 - leader;
    let t0 = Instant::now();
    drop(c.kill9(leader));
    loop {
        if c.leads(standby).await.is_some_and(|t| t > term) {
            return Ok((leader, standby, Instant::now(), SystemTime::now(), t0.elapsed()));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("hub {standby} did not lead within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn summary(what: &str, samples: &mut [f64]) {
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{what}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        pct(samples, 0.5),
        pct(samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len()
    );
}

/// Real sidecars with `hub_url = [hub 0, hub 1]` against two hubs with the default lease.
pub async fn sidecars(bin: &Path, args: &Args, pg: &Postgres) -> Result<()> {
    let n = args.sidecars;
    println!("\n== {n} real sidecars, 2 hubs (default lease), {} leader SIGKILLs", args.fleet_repeats);
    let mut c = HubCluster::start_on(bin, pg.share(), 2, PRODUCTION)?;
    let (leader, _) = c.settled().await?;
    let root = tempfile::tempdir()?;
    let urls: Vec<String> = c.ws_urls().iter().map(|u| testkit::toml_string(u)).collect();
    let extra = format!(
        "hub_url = [{}]\nping_interval_ms = 30000\npong_timeout_ms = 10000\nrescan_interval_ms = 2000\n\
         reconnect_base_ms = {}\nreconnect_max_ms = {}\nreconnect_healthy_ms = {}\n",
        urls.join(", "),
        BASE.as_millis(),
        MAX.as_millis(),
        HEALTHY.as_millis()
    );
    let mut fleet = Vec::with_capacity(n);
    for i in 0..n {
        let agent = format!("sidecar-{i}");
        let token = c.hub(leader).token(&agent).await?;
        let cfg = testkit::merge_config(&testkit::sidecar_config(&agent, &token, "ws://unused", None), &extra);
        fleet.push(Sidecar::start(bin, &root.path().join(&agent), &cfg)?);
    }
    let (mut samples, mut serving_after) = (Vec::new(), Vec::new());
    for _ in 0..args.fleet_repeats {
        let (leader, _) = c.settled().await?;
        wait_connected(&c, leader, n, Duration::from_secs(120)).await?;
        // Long enough identified that each sidecar's backoff starts again from the base.
        tokio::time::sleep(HEALTHY + Duration::from_millis(500)).await;
        let killed_at = SystemTime::now();
        let (killed, standby, _, serving, took) = kill_leader(&mut c).await?;
        serving_after.push(took.as_secs_f64() * 1000.0);
        wait_connected(&c, standby, n, Duration::from_secs(120)).await?;
        for s in &fleet {
            let at = identified_after(&s.logs(), killed_at).with_context(|| format!("{:?}", s.dir))?;
            // Identified before `/health` was seen saying so: the leader served already.
            samples.push(at.duration_since(serving).map_or(0.0, |d| d.as_secs_f64() * 1000.0));
        }
        c.restart(killed)?;
    }
    summary("leader SIGKILL -> standby's /health says leader", &mut serving_after);
    summary(&format!("new leader serving -> each of {n} sidecars identified there"), &mut samples);
    drop(fleet);
    Ok(())
}

/// When a sidecar's log first says it was identified after `after`.
fn identified_after(logs: &[String], after: SystemTime) -> Result<SystemTime> {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "identified to the hub")
        .filter_map(|v| humantime::parse_rfc3339(v["timestamp"].as_str()?).ok())
        .find(|t| *t > after)
        .context("no identify after the failover in the sidecar's log")
}

/// What the simulated agents share: the hubs, and when each agent was last identified.
struct Fleet {
    urls: Vec<String>,
    epoch: Instant,
    /// The wall clock at `epoch`, to compare with the hubs' log times.
    epoch_wall: SystemTime,
    /// Per agent: µs after `epoch` of its last `identified`, 0 for never.
    identified: Vec<AtomicU64>,
}

impl Fleet {
    /// Agents identified after `t`, and each one's time after `from` (wall clock), in ms.
    fn since(&self, t: Instant, from: SystemTime) -> Vec<f64> {
        let t = t.duration_since(self.epoch).as_micros() as u64;
        let from = match from.duration_since(self.epoch_wall) {
            Ok(d) => d.as_micros() as f64,
            Err(e) => -(e.duration().as_micros() as f64),
        };
        self.identified
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|at| *at > t)
            .map(|at| ((at as f64 - from) / 1000.0).max(0.0))
            .collect()
    }

    fn count_since(&self, t: Instant) -> usize {
        let t = t.duration_since(self.epoch).as_micros() as u64;
        self.identified.iter().filter(|a| a.load(Ordering::Relaxed) > t).count()
    }
}

/// When hub `i`'s log says it started to lead after `after`, and how long it took to load.
fn led_at(c: &HubCluster, i: usize, after: SystemTime) -> Result<(SystemTime, u64)> {
    c.hub(i)
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "this hub leads now")
        .filter_map(|v| Some((humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?, v["took_ms"].as_u64()?)))
        .find(|(t, _)| *t > after)
        .context("no \"this hub leads now\" in the new leader's log")
}

fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `n` simulated agents on two hubs with the default lease, each with a token of its own.
pub async fn simulated(bin: &Path, args: &Args, pg: &Postgres) -> Result<()> {
    let n = args.fleet;
    println!("\n== {n} simulated agents, 2 hubs (default lease), {} leader SIGKILLs", args.fleet_repeats);
    let mut c = HubCluster::start_on(bin, pg.share(), 2, PRODUCTION)?;
    let (leader, _) = c.settled().await?;
    let t0 = Instant::now();
    let tokens = tokens(&c, leader, n).await?;
    println!("{n} tokens created in {:.1} s (64 requests at a time)", t0.elapsed().as_secs_f64());

    let fleet = Arc::new(Fleet {
        urls: c.ws_urls(),
        epoch: Instant::now(),
        epoch_wall: SystemTime::now(),
        identified: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let started = Instant::now();
    let agents: Vec<_> =
        tokens.into_iter().enumerate().map(|(i, token)| tokio::spawn(agent(i, token, fleet.clone()))).collect();
    wait_identified(&fleet, started, n, Duration::from_secs(300)).await?;
    let mut first = fleet.since(started, fleet.epoch_wall);
    summary(&format!("{n} agents started at once -> each identified at the leader"), &mut first);

    let (mut samples, mut all, mut serving_after) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.fleet_repeats {
        let (leader, _) = c.settled().await?;
        wait_connected(&c, leader, n, Duration::from_secs(300)).await?;
        tokio::time::sleep(HEALTHY + Duration::from_millis(500)).await;
        let (leader, _) = c.settled().await?;
        let standby_pid = c.hub(1 - leader).pid();
        let cpu_before = (cpu_secs(Some(standby_pid))?, cpu_secs(None)?);
        let overflows_before = listen_overflows();
        let (killed_at, killed_wall) = (Instant::now(), SystemTime::now());
        let (killed, standby, _, _, took) = kill_leader(&mut c).await?;
        let (led, loaded_ms) = led_at(&c, standby, killed_wall)?;
        let before = counters(&c, standby).await?;
        wait_identified(&fleet, killed_at, n, Duration::from_secs(300)).await?;
        let cpu = (cpu_secs(Some(standby_pid))? - cpu_before.0, cpu_secs(None)? - cpu_before.1);
        let wall = killed_at.elapsed().as_secs_f64();
        let overflows = listen_overflows() - overflows_before;
        let after = counters(&c, standby).await?;
        let mut these = fleet.since(killed_at, led);
        these.sort_by(|a, b| a.total_cmp(b));
        let last = these.last().copied().unwrap_or(f64::NAN);
        println!(
            "  failover: the standby led {:.0} ms after the kill (loaded in {loaded_ms} ms), its /health said so after \
             {:.0} ms; all {n} identified there {last:.0} ms after it led; commits {:.0}, connections evicted {:.0}, \
             refused {:.0} meanwhile; CPU from the kill to the last identify ({wall:.2} s): new leader {:.2} s \
             ({:.0} µs per identify), this bench {:.2} s; \
             connections dropped because a listen queue was full (this machine's TcpExt ListenOverflows) {overflows}",
            ms_between(killed_wall, led),
            took.as_secs_f64() * 1000.0,
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
            cpu.0,
            cpu.0 * 1e6 / n as f64,
            cpu.1,
        );
        serving_after.push(ms_between(killed_wall, led));
        all.push(last);
        samples.extend(these);
        c.restart(killed)?;
    }
    summary("leader SIGKILL -> the standby leads (its log)", &mut serving_after);
    summary(&format!("new leader serving -> each of {n} agents identified there"), &mut samples);
    summary(&format!("new leader serving -> all {n} identified"), &mut all);
    for a in agents {
        a.abort();
    }
    Ok(())
}

async fn wait_identified(fleet: &Fleet, after: Instant, n: usize, limit: Duration) -> Result<()> {
    loop {
        let now = fleet.count_since(after);
        if now >= n {
            return Ok(());
        }
        if after.elapsed() > limit {
            bail!("only {now} of {n} agents identified within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connections the kernel dropped because a listen queue was full, on this machine so far.
fn listen_overflows() -> i64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The new leader's commits, evicted and refused connections so far.
async fn counters(c: &HubCluster, i: usize) -> Result<[f64; 3]> {
    let text = c.hub(i).admin_client().metrics().await?;
    let value = |name: &str| -> Result<f64> {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).with_context(|| name.to_string())?;
        Ok(line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0))
    };
    Ok([
        value("agentcom_store_commits_total")?,
        value("agentcom_connections_evicted_total")?,
        value("agentcom_connections_refused_total")?,
    ])
}

/// One token per agent, created through the admin API.
async fn tokens(c: &HubCluster, leader: usize, n: usize) -> Result<Vec<String>> {
    let client = c.hub(leader).admin_client();
    let made: Vec<Result<String>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move { Ok(client.call(&CreateToken { agent_id: format!("fleet-{i}") }).await?.token) }
        })
        .buffered(64)
        .collect()
        .await;
    made.into_iter().collect()
}

/// How a connection ended, as the sidecar's reconnect rules need it.
struct Ended {
    identified_for: Option<Duration>,
    /// Closed by a standby with `CLOSE_NOT_LEADER`: its reason (the leader's URL, or empty).
    not_leader: Option<String>,
}

/// One simulated agent: connects, identifies with its own token, holds the socket; when it
/// ends, picks the next hub and waits exactly as the sidecar's `conn::hubs` and `Backoff` do.
async fn agent(i: usize, token: String, fleet: Arc<Fleet>) {
    let agent_id = format!("fleet-{i}");
    let n = fleet.urls.len();
    let (mut current, mut tried, mut answered, mut failures) = (0usize, 0usize, false, 0u32);
    loop {
        let ended = session(&fleet, i, &agent_id, &token, &fleet.urls[current]).await;
        if ended.identified_for.is_some_and(|d| d >= HEALTHY) {
            failures = 0;
        }
        if ended.identified_for.is_some() {
            tried = 0;
            answered = false;
        }
        answered |= ended.not_leader.is_some();
        let to = match ended.not_leader.as_deref().map(str::trim) {
            None if ended.identified_for.is_some() => None,
            Some(reason) if !reason.is_empty() => {
                Some(fleet.urls.iter().position(|u| u == reason).unwrap_or((current + 1) % n))
            }
            _ => Some((current + 1) % n),
        };
        let wait = match to {
            // A connection that worked and was lost: the same hub, after the backoff.
            None => Some(false),
            Some(to) => {
                tried += 1;
                current = to;
                let round = tried >= n;
                let standby_answered = round && answered;
                if round {
                    tried = 0;
                    answered = false;
                }
                round.then_some(standby_answered)
            }
        };
        let delay = match wait {
            None => continue,
            Some(true) => jitter(BASE),
            Some(false) => {
                let cap = BASE.saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX)).min(MAX);
                failures = failures.saturating_add(1);
                jitter(cap)
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// A uniform delay in `[0, cap]` (full jitter).
fn jitter(cap: Duration) -> Duration {
    let mut b = [0u8; 8];
    let r = getrandom::fill(&mut b).map(|_| u64::from_le_bytes(b)).unwrap_or(0);
    Duration::from_millis(r % (cap.as_millis() as u64 + 1))
}

async fn session(fleet: &Fleet, i: usize, agent_id: &str, token: &str, url: &str) -> Ended {
    let mut ended = Ended { identified_for: None, not_leader: None };
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(10), connect).await else { return ended };
    let identify = json!({"type": "identify", "agent_id": agent_id, "token": token, "status": "idle",
                          "client_type": "sidecar", "protocol_version": 1});
    if ws.send(Message::text(identify.to_string())).await.is_err() {
        return ended;
    }
    let mut since = None;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if since.is_none() && t.as_str().contains("\"identified\"") => {
                fleet.identified[i].store(fleet.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                since = Some(Instant::now());
            }
            Ok(Message::Close(Some(f))) if u16::from(f.code) == proto::CLOSE_NOT_LEADER => {
                ended.not_leader = Some(f.reason.to_string());
                break;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    ended.identified_for = since.map(|s| s.elapsed());
    ended
}
