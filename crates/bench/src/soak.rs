//! A fleet run as users run it, for minutes (issue 24): one hub, sidecars under our supervisor,
//! shell agents working 5–40 s, a third of them asking a question answered 5–60 s later, a task
//! every 3 s, and at random moments hub restarts (SIGTERM and SIGKILL), sidecar SIGKILLs,
//! graceful and forced agent restarts, cancels and extra event-stream readers. Every minute it
//! prints each daemon's RSS, CPU, descriptors and threads; at the end it checks that every task
//! ended once, that every answer a person was told was taken either reached its agent or is
//! shown undelivered, and that no daemon grew.

use crate::{cpu_secs, rss_bytes, supervised_sidecar, PRODUCTION_SIDECAR};
use anyhow::{bail, Context, Result};
use proto::api::TaskStatus;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{eventually, Follower, Hub, Supervised};

#[derive(clap::Args)]
pub struct Args {
    /// How long tasks keep coming, in minutes (the chaos scales with it).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Sidecars (each beside its own shell agent): 8 keep up with a task every 3 s.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// A task is submitted this often.
    #[arg(long, default_value_t = 3000)]
    submit_every_ms: u64,
    /// Seed of the random choices (default: random); printed, so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Extra hub settings (TOML lines), e.g. `event_window = 100` to see what the hub's
    /// memory holds.
    #[arg(long, default_value = "")]
    hub_extra: String,
}

/// Works `$1` seconds (a progress line every 2 s), asking a question halfway when `$2` is 1.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
set -- $AGENTCOM_TASK_DESCRIPTION
work=$2; ask=$4
touch "$R/$T.started"
half=$((work / 2)); i=0
while [ $i -lt $half ]; do [ $((i % 2)) = 0 ] && echo "{\"at\":$i}" >> "$R/$T.progress"; sleep 1; i=$((i+1)); done
if [ "$ask" = 1 ]; then
  printf '%s' '{"question":"Go on?","options":["yes","no"]}' > "$R/.$T.q" && mv "$R/.$T.q" "$R/$T.needs-input"
  while [ -e "$R/$T.needs-input" ]; do sleep 1; done
fi
while [ $i -lt $work ]; do [ $((i % 2)) = 0 ] && echo "{\"at\":$i}" >> "$R/$T.progress"; sleep 1; i=$((i+1)); done
echo '{"status":"success"}' > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

/// xorshift64*: enough randomness for a schedule, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Chaos {
    HubRestart,
    HubKill,
    SidecarKill,
    GracefulRestart,
    ForcedRestart,
    Cancel,
    Reader,
}

/// What happened, counted for the summary.
#[derive(Default)]
struct Tally {
    chaos: BTreeMap<String, u32>,
    answers_taken: Vec<(String, String)>,
    answers_refused: u32,
}

struct Fleet<'a> {
    bin: &'a Path,
    hub: Hub,
    hub_config: String,
    sup: Supervised,
    agents: Vec<String>,
}

impl Fleet<'_> {
    fn pid_of(&self, name: &str) -> Option<u32> {
        self.sup.proc(name).ok()?["pid"].as_u64().filter(|p| *p > 0).map(|p| p as u32)
    }

    /// (name, pid) of every daemon now.
    fn daemons(&self) -> Vec<(String, u32)> {
        let mut d = vec![("hub".to_string(), self.hub.pid())];
        if let Some(p) = self.sup.supervisor_pid() {
            d.push(("supervisor".into(), p as u32));
        }
        for a in &self.agents {
            if let Some(p) = self.pid_of(a) {
                d.push((a.clone(), p));
            }
        }
        d
    }
}

fn count(path: String) -> u64 {
    std::fs::read_dir(path).map(|d| d.count() as u64).unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    let bin = &bin.canonicalize().with_context(|| format!("{} not found", bin.display()))?;
    let seed = args.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random seed");
        u64::from_le_bytes(b) | 1
    });
    println!(
        "agentcom soak: {} min, {} sidecars, a task every {} ms, seed {seed}",
        args.minutes, args.agents, args.submit_every_ms
    );
    let mut rng = Rng(seed);
    let root = tempfile::tempdir()?;
    std::fs::write(root.path().join("agent.sh"), AGENT)?;
    // Production-like timings, with a claim window short enough to show a lost claim in minutes.
    let hub_config = format!(
        "grace_period_ms = 60000\naccept_timeout_ms = 60000\nretry_base_ms = 1000\n{}\n",
        args.hub_extra.replace("\\n", "\n")
    );
    let hub = Hub::start_in(bin, &root.path().join("hub"), &hub_config)?;
    let mut sup = Supervised::new(bin)?;
    sup.env.retain(|(k, _)| k != "AGENTCOM_SUPERVISOR_MEMORY_CHECK_MS");
    let mut agents = Vec::new();
    for n in 0..args.agents {
        let agent = format!("soak-{n}");
        let wake = format!("sh '{}'", root.path().join("agent.sh").display());
        let extra = format!("{PRODUCTION_SIDECAR}reconnect_max_ms = 2000\nconfirmation_timeout_ms = 30000\n");
        supervised_sidecar(bin, &sup, &hub, root.path(), &agent, &wake, &extra).await?;
        agents.push(agent);
    }
    let mut fleet = Fleet { bin, hub, hub_config, sup, agents };

    // The chaos, scaled from the 24-minute run of the issue, at random moments after minute 1.
    let total = Duration::from_secs(args.minutes * 60);
    let scale = |n: u64| ((n * args.minutes).div_ceil(24)).max(1);
    let mut schedule: Vec<(Duration, Chaos)> = Vec::new();
    for (kind, n) in [
        (Chaos::HubRestart, scale(2)),
        (Chaos::HubKill, scale(2)),
        (Chaos::SidecarKill, scale(5)),
        (Chaos::GracefulRestart, scale(4)),
        (Chaos::ForcedRestart, scale(1)),
        (Chaos::Cancel, scale(6)),
        (Chaos::Reader, scale(3)),
    ] {
        for _ in 0..n {
            let at = rng.range(60_000, (total.as_millis() as u64).saturating_sub(30_000).max(61_000));
            schedule.push((Duration::from_millis(at), kind));
        }
    }
    schedule.sort();
    schedule.reverse();

    let t0 = Instant::now();
    let mut tally = Tally::default();
    let mut tasks: Vec<String> = Vec::new();
    let mut answers: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let mut readers: Vec<(Instant, Follower)> = Vec::new();
    let mut next_submit = Duration::ZERO;
    let mut next_minute = Duration::from_secs(60);
    let mut next_look = Duration::ZERO;
    let mut samples: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut last_cpu: HashMap<(String, u32), f64> = HashMap::new();
    let mut draining_since: Option<Instant> = None;
    println!("\nmin  daemon       RSS MB  CPU s/min  fds  threads");
    loop {
        let now = t0.elapsed();
        let submitting = now < total;
        if submitting && now >= next_submit {
            let work = rng.range(5, 40);
            let ask = u64::from(rng.range(0, 2) == 0);
            match fleet.hub.submit_text(&format!("work {work} ask {ask}")).await {
                Ok(id) => tasks.push(id),
                Err(e) => println!("     (submit refused while the hub restarts: {e})"),
            }
            next_submit += Duration::from_millis(args.submit_every_ms);
        }
        while schedule.last().is_some_and(|(at, _)| *at <= now) && submitting {
            let (_, kind) = schedule.pop().expect("checked");
            chaos(&mut fleet, kind, &mut rng, &tasks, &mut readers).await?;
            *tally.chaos.entry(format!("{kind:?}")).or_default() += 1;
        }
        readers.retain(|(until, _)| *until > Instant::now());
        if now >= next_look {
            next_look = now + Duration::from_secs(1);
            look_and_answer(&fleet.hub, &mut rng, &mut answers, &mut tally, !submitting).await;
        }
        if now >= next_minute {
            next_minute += Duration::from_secs(60);
            report_minute(&fleet, now.as_secs() / 60, &mut last_cpu, &mut samples);
        }
        if !submitting {
            let since = *draining_since.get_or_insert_with(Instant::now);
            if all_ended(&fleet.hub, &tasks).await {
                break;
            }
            if since.elapsed() > Duration::from_secs(600) {
                bail!("tasks still open 10 minutes after the last submission");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report_minute(&fleet, t0.elapsed().as_secs() / 60 + 1, &mut last_cpu, &mut samples);
    check(&fleet.hub, &tasks, &tally, &samples).await
}

async fn chaos(
    fleet: &mut Fleet<'_>,
    kind: Chaos,
    rng: &mut Rng,
    tasks: &[String],
    readers: &mut Vec<(Instant, Follower)>,
) -> Result<()> {
    let agent = fleet.agents[rng.range(0, fleet.agents.len() as u64 - 1) as usize].clone();
    let at = format!("{:>4}", "");
    match kind {
        Chaos::HubRestart => {
            println!("{at} chaos: hub restart (SIGTERM)");
            let (bin, config) = (fleet.bin, fleet.hub_config.clone());
            fleet.hub.restart(bin, &config)?;
        }
        Chaos::HubKill => {
            println!("{at} chaos: hub SIGKILL and restart");
            let (bin, config) = (fleet.bin, fleet.hub_config.clone());
            fleet.hub.restart_after_kill(bin, &config)?;
        }
        Chaos::SidecarKill => {
            if let Some(pid) = fleet.pid_of(&agent) {
                println!("{at} chaos: SIGKILL sidecar {agent}");
                testkit::signal(pid, nix::sys::signal::Signal::SIGKILL)?;
            }
        }
        Chaos::GracefulRestart | Chaos::ForcedRestart => {
            let force = kind == Chaos::ForcedRestart;
            println!("{at} chaos: agent restart {agent}{}", if force { " --force" } else { "" });
            let path = format!("/api/admin/agents/{agent}/restart");
            let _ = fleet.hub.admin().post(&path, json!({"reason": "soak", "force": force})).await;
        }
        Chaos::Cancel => {
            let open: Vec<&String> = tasks.iter().rev().take(20).collect();
            if !open.is_empty() {
                let id = open[rng.range(0, open.len() as u64 - 1) as usize];
                println!("{at} chaos: cancel {id}");
                let _ = fleet.hub.admin().post(&format!("/api/tasks/{id}/cancel"), json!({})).await;
            }
        }
        Chaos::Reader => {
            if let Ok(f) = Follower::start(fleet.hub.admin_client(), None).await {
                println!("{at} chaos: an extra event-stream reader for 2 minutes");
                readers.push((Instant::now() + Duration::from_secs(120), f));
            }
        }
    }
    Ok(())
}

/// Schedules an answer 5–60 s after each question seen (at once while draining), and gives
/// those that are due.
async fn look_and_answer(
    hub: &Hub,
    rng: &mut Rng,
    answers: &mut BTreeMap<(String, String), Instant>,
    tally: &mut Tally,
    draining: bool,
) {
    let Ok((200, page)) = hub.admin().get("/api/tasks?status=working&limit=1000").await else { return };
    for t in page["tasks"].as_array().into_iter().flatten() {
        let (Some(id), Some(rid)) = (t["task_id"].as_str(), t["needs_input"]["request_id"].as_str()) else {
            continue;
        };
        let delay = if draining { 0 } else { rng.range(5, 60) };
        answers.entry((id.to_string(), rid.to_string())).or_insert_with(|| Instant::now() + Duration::from_secs(delay));
    }
    let due: Vec<(String, String)> =
        answers.iter().filter(|(_, at)| **at <= Instant::now()).map(|(k, _)| k.clone()).collect();
    for (id, rid) in due {
        let body = json!({"task_id": id, "answer": "yes", "request_id": rid});
        match hub.admin().post(&format!("/api/tasks/{id}/input"), body).await {
            Ok((200, _)) => tally.answers_taken.push((id.clone(), rid.clone())),
            Ok((409, _)) => tally.answers_refused += 1,
            // The hub is restarting: try again at the next look.
            _ => continue,
        }
        answers.insert((id, rid), Instant::now() + Duration::from_secs(86_400 * 365));
    }
}

fn report_minute(
    fleet: &Fleet<'_>,
    minute: u64,
    last_cpu: &mut HashMap<(String, u32), f64>,
    samples: &mut HashMap<String, Vec<(u64, u64)>>,
) {
    for (name, pid) in fleet.daemons() {
        let rss = rss_bytes(pid).unwrap_or(0);
        let cpu = cpu_secs(Some(pid)).unwrap_or(0.0);
        // A restarted daemon (a new pid) starts its own count.
        let used = cpu - last_cpu.insert((name.clone(), pid), cpu).unwrap_or(0.0);
        let fds = count(format!("/proc/{pid}/fd"));
        println!("{minute:>3}  {name:<11} {:>7.1} {:>10.2} {fds:>4} {:>8}", rss as f64 / 1e6, used, threads(pid));
        samples.entry(name).or_default().push((minute, rss));
    }
}

async fn all_ended(hub: &Hub, tasks: &[String]) -> bool {
    let Ok((200, v)) = hub.admin().get("/api/tasks/stats").await else { return false };
    let by = &v["by_status"];
    let open: u64 =
        ["queued", "assigned", "working", "waiting_retry"].iter().map(|s| by[*s].as_u64().unwrap_or(0)).sum();
    open == 0 && !tasks.is_empty()
}

async fn check(hub: &Hub, tasks: &[String], tally: &Tally, samples: &HashMap<String, Vec<(u64, u64)>>) -> Result<()> {
    let mut problems = Vec::new();
    let mut ended: BTreeMap<String, u32> = BTreeMap::new();
    let mut histories: HashMap<String, Vec<String>> = HashMap::new();
    for id in tasks {
        let t = eventually(&format!("task {id}"), || async { hub.task(id).await.map_err(|e| e.to_string()) }).await?;
        let terminal: Vec<&proto::api::Transition> = t.history.iter().filter(|h| h.to.is_terminal()).collect();
        if terminal.len() != 1 || !matches!(t.task.status, TaskStatus::Completed | TaskStatus::Cancelled) {
            problems.push(format!("{id} ended {} times, now {}: {:?}", terminal.len(), t.task.status, t.history));
        }
        *ended.entry(t.task.status.to_string()).or_default() += 1;
        histories.insert(id.clone(), t.history.iter().map(|h| h.reason.clone()).collect());
    }
    let mut delivered = 0;
    let mut undelivered = 0;
    for (id, rid) in &tally.answers_taken {
        let h = histories.get(id).cloned().unwrap_or_default();
        if h.iter().any(|r| *r == format!("answer to {rid} delivered")) {
            delivered += 1;
        } else if h.iter().any(|r| r.starts_with(&format!("answer to {rid} not delivered"))) {
            undelivered += 1;
        } else {
            problems.push(format!(
                "the answer to {id} {rid} was taken but neither delivered nor reported undelivered: {h:?}"
            ));
        }
    }
    println!("\ntasks: {} submitted, ended {:?}", tasks.len(), ended);
    println!(
        "answers: {} taken ({delivered} delivered, {undelivered} shown undelivered), {} refused as closed",
        tally.answers_taken.len(),
        tally.answers_refused
    );
    println!("chaos: {:?}", tally.chaos);
    // Growth: each sidecar's and the supervisor's RSS at the end against its second minute.
    for (name, s) in samples {
        if name == "hub" || s.len() < 3 {
            continue;
        }
        let (early, last) = (s[1].1, s[s.len() - 1].1);
        if last > early + early / 2 + (2 << 20) {
            problems.push(format!("{name} grew from {:.1} MB to {:.1} MB", early as f64 / 1e6, last as f64 / 1e6));
        }
    }
    if problems.is_empty() {
        println!(
            "invariants: every task ended once; every answer taken was delivered or shown undelivered; no daemon grew"
        );
        Ok(())
    } else {
        for p in &problems {
            println!("VIOLATION: {p}");
        }
        bail!("{} invariant violations", problems.len())
    }
}
