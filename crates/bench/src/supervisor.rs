//! Supervisor benchmark, native and pm2 in the same run: daemon RSS idle and with 100
//! processes, `ps --json` vs `pm2 jlist`, SIGKILL of a child until its replacement is visible,
//! starting 100 processes, and the hub's restart command until the sidecar is identified again.

use crate::{pct, rss_bytes};
use anyhow::{bail, Context, Result};
use proto::control::{ProcSpec, Request, Response};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use supervisor::client::Client;
use testkit::{Hub, Supervised};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    processes: usize,
    /// Repetitions of `ps` / `jlist` and of the respawn measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Skip the pm2 half (when pm2 is not installed).
    #[arg(long)]
    no_pm2: bool,
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 0.5)
}

fn time_cmd(mut c: Command) -> Result<f64> {
    let t0 = Instant::now();
    let out = c.output()?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("supervisor benchmark: agentcom (native) vs pm2, {} processes", args.processes);
    native(bin, &args).await?;
    if !args.no_pm2 {
        pm2(bin, &args).await?;
    }
    restart_round_trip(bin, false).await?;
    if !args.no_pm2 {
        restart_round_trip(bin, true).await?;
    }
    Ok(())
}

async fn native(bin: &Path, args: &Args) -> Result<()> {
    let s = Supervised::new(bin)?;
    let mut daemon = s.cmd(&["supervisor"]).stderr(std::process::Stdio::null()).spawn()?;
    let dir = s.dir();
    let mut client =
        testkit::eventually("the supervisor to start", || async { Client::connect(&dir).map_err(|e| e.to_string()) })
            .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_bytes(daemon.id())?;

    // 100 starts over the control socket (what one `daemons apply` does).
    let t0 = Instant::now();
    for i in 0..args.processes {
        let spec = ProcSpec::new(&format!("p{i}"), "sleep", vec!["100000".into()]);
        client.call(&Request::Start { spec: Box::new(spec) })?;
    }
    let start_socket = t0.elapsed().as_secs_f64();
    // And 10 more through the CLI, one process each, as a user types them.
    let mut cli = Vec::new();
    for i in 0..10 {
        let mut c = s.cmd(&["start", &format!("cli{i}"), "--", "sleep", "100000"]);
        c.stdout(std::process::Stdio::null());
        cli.push(time_cmd(c)?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss_bytes(daemon.id())?;

    let mut ps = Vec::new();
    for _ in 0..args.runs {
        let mut c = s.cmd(&["ps", "--json"]);
        c.stdout(std::process::Stdio::null());
        ps.push(time_cmd(c)?);
    }

    // SIGKILL a child; time until `ps` shows its replacement online.
    // Each round a different, stable process: a single crash, not a crash loop (which backs off).
    let mut respawn = Vec::new();
    for round in 0..args.runs.min(args.processes) {
        let name = format!("p{round}");
        let before = find(&mut client, &name)?;
        let old = before["pid"].as_u64().context("pid")?;
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL)?;
        loop {
            let p = find(&mut client, &name)?;
            if p["status"] == "online" && p["pid"].as_u64().is_some_and(|pid| pid != old && pid != 0) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("no replacement for {name}: {p}");
            }
        }
        respawn.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "native: supervisor RSS idle {:.1} MB, with {} processes {:.1} MB",
        idle as f64 / 1e6,
        args.processes + 10,
        loaded as f64 / 1e6
    );
    println!(
        "native: start {} processes over the socket {:.3} s; `agentcom start` CLI, one process: median {:.1} ms",
        args.processes,
        start_socket,
        median_ms(cli)
    );
    println!(
        "native: `agentcom ps --json` with {} processes: median {:.1} ms (wall, whole command)",
        args.processes + 10,
        median_ms(ps)
    );
    let r = {
        let mut r = respawn.clone();
        r.sort_by(|a, b| a.total_cmp(b));
        r
    };
    println!(
        "native: SIGKILL of a child -> replacement pid online: median {:.1} ms, p99 {:.1} ms",
        pct(&r, 0.5),
        pct(&r, 0.99)
    );
    testkit::signal(daemon.id(), nix::sys::signal::Signal::SIGTERM)?;
    let _ = testkit::wait_exit(&mut daemon);
    Ok(())
}

fn find(client: &mut Client, name: &str) -> Result<Value> {
    match client.call(&Request::Ps)? {
        Response::List { processes } => {
            Ok(serde_json::to_value(processes.into_iter().find(|p| p.name == name).context("missing")?)?)
        }
        other => bail!("unexpected {other:?}"),
    }
}

fn pm2_cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("pm2");
    c.args(args).env("PM2_HOME", home);
    c
}

fn pm2_daemon_pid(home: &Path) -> Result<u32> {
    Ok(std::fs::read_to_string(home.join("pm2.pid"))?.trim().parse()?)
}

async fn pm2(_bin: &Path, args: &Args) -> Result<()> {
    // Its own PM2_HOME, and `pm2 kill` on any way out of here.
    let home = testkit::Pm2Home::new()?;
    let h = home.path();
    time_cmd(pm2_cmd(h, &["ping"]))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(pm2_daemon_pid(h)?)?;
    let apps: Vec<Value> = (0..args.processes)
        .map(|i| json!({"name": format!("p{i}"), "script": "sleep", "args": ["100000"], "interpreter": "none", "autorestart": true}))
        .collect();
    let file: PathBuf = h.join("eco.config.js");
    std::fs::write(&file, format!("module.exports = {};", json!({ "apps": apps })))?;
    let start = time_cmd(pm2_cmd(h, &["start", file.to_str().unwrap()]))? / 1000.0;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loaded = rss_bytes(pm2_daemon_pid(h)?)?;
    let mut jl = Vec::new();
    for _ in 0..args.runs.min(10) {
        jl.push(time_cmd(pm2_cmd(h, &["jlist"]))?);
    }
    let mut respawn = Vec::new();
    for round in 0..args.runs.min(5) {
        let name = format!("p{round}");
        let list = supervisor::pm2::parse_jlist(&String::from_utf8_lossy(&pm2_cmd(h, &["jlist"]).output()?.stdout))?;
        let old = list.iter().find(|e| e["name"] == name.as_str()).and_then(|e| e["pid"].as_u64()).context("pid")?;
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL)?;
        loop {
            let list =
                supervisor::pm2::parse_jlist(&String::from_utf8_lossy(&pm2_cmd(h, &["jlist"]).output()?.stdout))?;
            let e = list.iter().find(|e| e["name"] == name.as_str()).cloned().unwrap_or_default();
            if e["pm2_env"]["status"] == "online" && e["pid"].as_u64().is_some_and(|p| p != old && p != 0) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("pm2 did not replace {name}");
            }
        }
        respawn.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "pm2:    daemon RSS idle {:.1} MB, with {} processes {:.1} MB",
        idle as f64 / 1e6,
        args.processes,
        loaded as f64 / 1e6
    );
    println!("pm2:    `pm2 start` of {} apps from one ecosystem file: {start:.3} s", args.processes);
    println!("pm2:    `pm2 jlist` with {} processes: median {:.1} ms", args.processes, median_ms(jl));
    println!(
        "pm2:    SIGKILL of a child -> replacement pid online (seen through jlist): median {:.1} ms",
        median_ms(respawn)
    );
    let _ = pm2_cmd(h, &["kill"]).output();
    Ok(())
}

/// POST restart at the hub until the sidecar is identified again with restart_count + 1.
async fn restart_round_trip(bin: &Path, under_pm2: bool) -> Result<()> {
    let hub = Hub::start(bin, "")?;
    let root = tempfile::tempdir()?;
    let token = hub.token("rt").await?;
    let cfg_text = testkit::sidecar_config("rt", &token, &hub.ws_url(), Some("true"));
    let cfg = root.path().join("rt.toml");
    std::fs::write(&cfg, cfg_text)?;
    let pm2_home = tempfile::tempdir()?;
    let mut s = Supervised::new(bin)?;
    s.env.push(("PM2_HOME".into(), pm2_home.path().display().to_string()));
    let backend = if under_pm2 { "pm2" } else { "native" };
    s.ok(&[
        "start",
        "rt",
        "--backend",
        backend,
        "--",
        bin.to_str().unwrap(),
        "sidecar",
        "--config",
        cfg.to_str().unwrap(),
    ])?;
    let agent = |hub: &Hub| {
        let api = hub.admin();
        async move {
            let (_, a) = api.get("/api/agents").await?;
            Ok::<Value, anyhow::Error>(a["agents"][0].clone())
        }
    };
    testkit::eventually("the sidecar to connect", || async {
        match agent(&hub).await {
            Ok(a) if a["connected"] == true => Ok(()),
            Ok(a) => Err(a.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let mut times = Vec::new();
    for round in 1..=5u64 {
        let t0 = Instant::now();
        let (st, _) = hub.admin().post("/api/admin/agents/rt/restart", json!({"reason": "bench"})).await?;
        if st != 200 {
            bail!("restart refused: {st}");
        }
        loop {
            let a = agent(&hub).await?;
            if a["connected"] == true && a["process_info"]["restart_count"] == round {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("sidecar not back: {a}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{backend}: hub restart command -> sidecar identified again with restart_count + 1: median {:.0} ms (5 rounds)",
        median_ms(times)
    );
    let _ = s.run(&["delete", "rt", "--backend", backend]);
    if under_pm2 {
        let _ = pm2_cmd(pm2_home.path(), &["kill"]).output();
    }
    Ok(())
}
