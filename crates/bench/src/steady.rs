//! Daemons at human speed (issue 23): the CPU every daemon uses per minute while idle, while
//! its agent works (a progress line every 5 s), and while a question waits for a person; and
//! a person's answer → the agent's `.input` when answered 1, 10 and 60 s after the question.
//! Production timings (30 s pings, 2 s rescans): a loop that never parks shows at once.

use crate::procs::{cpu_now, cpu_per_minute, Daemon};
use crate::{pct, supervised_sidecar, PRODUCTION_SIDECAR};
use anyhow::{Context, Result};
use proto::api::AnswerTask;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::{eventually, Hub, Supervised};

#[derive(clap::Args)]
pub struct Args {
    /// Sidecars (each beside its own agent), and so answers per delay.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// How long each CPU window lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    window_s: u64,
    /// Seconds between a question and its answer, one round each (the first is the waiting window).
    #[arg(long, value_delimiter = ',', default_value = "60,10,1")]
    answer_after_s: Vec<u64>,
}

/// Confirms, writes a progress line every 5 s until `$C/ask` exists, then asks and waits for the
/// answer as the README's shell agent does (polling each second for `.needs-input` to go).
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
touch "$R/$T.started"
i=0
while [ ! -e "$C/ask" ]; do
  [ $((i % 25)) = 0 ] && echo "{\"step\":$i}" >> "$R/$T.progress"
  i=$((i+1)); sleep 0.2
done
printf '%s' '{"question":"Ship it?","options":["yes","no"]}' > "$R/.$T.q" && mv "$R/.$T.q" "$R/$T.needs-input"
while [ -e "$R/$T.needs-input" ]; do sleep 1; done
echo '{"status":"success"}' > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom steady-state benchmark (release binary {})", bin.display());
    // The supervisor runs commands in its own folder: the binary by its absolute path.
    let bin = &bin.canonicalize().with_context(|| format!("{} not found", bin.display()))?;
    let root = tempfile::tempdir()?;
    let control = root.path().join("control");
    std::fs::create_dir_all(&control)?;
    std::fs::write(root.path().join("agent.sh"), AGENT)?;
    let hub = Hub::start(bin, "")?;
    let sup = Supervised::new(bin)?;
    let mut sidecars = Vec::new();
    for n in 0..args.agents {
        let agent = format!("steady-{n}");
        let wake = format!("CONTROL='{}' sh '{}'", control.display(), root.path().join("agent.sh").display());
        let dir = supervised_sidecar(bin, &sup, &hub, root.path(), &agent, &wake, PRODUCTION_SIDECAR).await?;
        sidecars.push((agent, dir.join("results")));
    }
    // The guard's watchdog over one of them, as users run it beside an agent.
    let repo = root.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    testkit::git::git(&repo, &["init", "-q", "-b", "main"])?;
    testkit::git::git(&repo, &["commit", "-q", "--allow-empty", "-m", "init"])?;
    let watch = [
        "start",
        "watchdog",
        "--",
        bin.to_str().unwrap(),
        "guard",
        "watch",
        "--repo",
        repo.to_str().unwrap(),
        "--process",
        "steady-0",
        "--hub",
        &hub.url(),
        "--token",
        &hub.admin_token,
    ];
    sup.ok(&watch)?;
    eventually("every sidecar to be identified", || async {
        let (_, a) = hub.admin().get("/api/agents").await.map_err(|e| e.to_string())?;
        let n = a["agents"].as_array().map(|v| v.iter().filter(|x| x["connected"] == true).count()).unwrap_or(0);
        (n == args.agents).then_some(()).ok_or_else(|| format!("{n} connected"))
    })
    .await?;
    let mut daemons = vec![Daemon { name: "hub".into(), pid: hub.pid() }];
    let sup_pid = sup.supervisor_pid().context("supervisor pid")? as u32;
    daemons.push(Daemon { name: "supervisor".into(), pid: sup_pid });
    let watchdog = sup.proc("watchdog")?["pid"].as_u64().context("watchdog pid")? as u32;
    daemons.push(Daemon { name: "guard watch".into(), pid: watchdog });
    for (agent, _) in &sidecars {
        let pid = sup.proc(agent)?["pid"].as_u64().context("sidecar pid")? as u32;
        daemons.push(Daemon { name: agent.clone(), pid });
    }
    let window = Duration::from_secs(args.window_s);
    println!("{} sidecars under the supervisor, a guard watchdog, one hub; windows of {window:?}", args.agents);

    // Idle.
    let before = cpu_now(&daemons);
    tokio::time::sleep(window).await;
    let idle = cpu_per_minute(&daemons, &before, window);

    // Working: every agent writes a progress line each 5 s.
    let mut tasks = Vec::new();
    for n in 0..args.agents {
        tasks.push(hub.submit_text(&format!("steady work {n}")).await?);
    }
    wait_all_working(&hub, &tasks).await?;
    let before = cpu_now(&daemons);
    tokio::time::sleep(window).await;
    let working = cpu_per_minute(&daemons, &before, window);

    // Waiting for a person, then answers after each delay (the first delay's wait is measured).
    std::fs::write(control.join("ask"), b"")?;
    let mut waiting = Vec::new();
    let mut latencies = Vec::new();
    for (round, delay) in args.answer_after_s.iter().enumerate() {
        if round > 0 {
            tasks.clear();
            for n in 0..args.agents {
                tasks.push(hub.submit_text(&format!("steady ask {round}-{n}")).await?);
            }
        }
        wait_all_asked(&hub, &tasks).await?;
        let before = cpu_now(&daemons);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(*delay)).await;
        if round == 0 {
            waiting = cpu_per_minute(&daemons, &before, t0.elapsed());
        }
        let mut lat = Vec::new();
        for (id, (_, results)) in tasks.iter().zip(&sidecars) {
            lat.push(answer_to_input(&hub, id, results).await?);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        latencies.push((*delay, lat));
        for id in &tasks {
            hub.wait_status(id, proto::api::TaskStatus::Completed).await?;
        }
    }

    println!("\nCPU seconds per minute (user + system):");
    println!("{:<14} {:>8} {:>8} {:>8}", "daemon", "idle", "working", "waiting");
    let show = |i: usize| format!("{:<14} {:>8.3} {:>8.3} {:>8.3}", daemons[i].name, idle[i], working[i], waiting[i]);
    for i in 0..3 {
        println!("{}", show(i));
    }
    let side = |v: &[f64]| {
        let mut s = v[3..].to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        (pct(&s, 0.5), s.last().copied().unwrap_or(0.0))
    };
    let (i50, imax) = side(&idle);
    let (w50, wmax) = side(&working);
    let (q50, qmax) = side(&waiting);
    println!("{:<14} {:>8.3} {:>8.3} {:>8.3}", "sidecar p50", i50, w50, q50);
    println!("{:<14} {:>8.3} {:>8.3} {:>8.3}", "sidecar max", imax, wmax, qmax);
    println!("\nanswer -> <task>.input ({} answers per delay):", args.agents);
    for (delay, lat) in &latencies {
        println!(
            "  answered {delay:>3} s after the question: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(lat, 0.5),
            pct(lat, 0.99),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}

async fn wait_all_working(hub: &Hub, tasks: &[String]) -> Result<()> {
    for id in tasks {
        hub.wait_status(id, proto::api::TaskStatus::Working).await?;
    }
    Ok(())
}

async fn wait_all_asked(hub: &Hub, tasks: &[String]) -> Result<()> {
    for id in tasks {
        eventually(&format!("{id} to ask"), || async {
            let t = hub.task(id).await.map_err(|e| e.to_string())?;
            t.task.needs_input.is_some().then_some(()).ok_or_else(|| format!("{:?}", t.task.status))
        })
        .await?;
    }
    Ok(())
}

/// Answers `id` and times until the sidecar has written `<id>.input` (or the agent already took it).
async fn answer_to_input(hub: &Hub, id: &str, results: &Path) -> Result<f64> {
    let input: PathBuf = results.join(format!("{id}.input"));
    let asked = results.join(format!("{id}.needs-input"));
    let t0 = Instant::now();
    hub.admin_client().call(&AnswerTask { task_id: id.into(), answer: "yes".into(), request_id: None }).await?;
    while !input.exists() && asked.exists() {
        if t0.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the answer to {id} did not arrive within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}
