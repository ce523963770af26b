//! Daemons benchmark: 200 definitions; cold apply, edit one file → new pid online (measured
//! from the file's save, with the watcher running), and a plan with nothing changed.

use crate::pct;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::Supervised;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 200)]
    definitions: usize,
    /// Definitions for the pm2 run (every pm2 command costs hundreds of ms).
    #[arg(long, default_value_t = 200)]
    pm2_definitions: usize,
    #[arg(long)]
    no_pm2: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 0.5)
}

fn write_def(root: &Path, i: usize, secs: u64) -> Result<()> {
    let dir = root.join(format!("team{}/svc{i}", i % 10));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("daemon.toml"), format!("command = \"sleep\"\nargs = [\"{secs}\"]\n"))?;
    Ok(())
}

fn pid_of(s: &Supervised, backend: &str, name: &str) -> Option<u64> {
    let out = s.run(&["ps", "--json", "--backend", backend]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter().find(|p| p["name"] == name && p["status"] == "online").and_then(|p| p["pid"].as_u64())
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("daemons benchmark: {} definitions", args.definitions);
    one(bin, "native", args.definitions).await?;
    if !args.no_pm2 {
        one(bin, "pm2", args.pm2_definitions).await?;
    }
    Ok(())
}

async fn one(bin: &Path, backend: &str, n: usize) -> Result<()> {
    let pm2_home = tempfile::tempdir()?;
    let mut s = Supervised::new(bin)?;
    s.env.push(("PM2_HOME".into(), pm2_home.path().display().to_string()));
    let root_dir = tempfile::tempdir()?;
    let root = root_dir.path().canonicalize()?;
    for i in 0..n {
        write_def(&root, i, 100_000)?;
    }
    let r = root.display().to_string();
    // A supervisor already running and empty: "cold" means no daemon runs yet.
    if backend == "native" {
        let mut d = s.cmd(&["supervisor"]).stderr(Stdio::null()).spawn()?;
        testkit::eventually_blocking("the supervisor to start", || {
            if s.run(&["ps"]).status.success() {
                Ok(())
            } else {
                Err("no answer".into())
            }
        })?;
        let _ = d.try_wait();
    } else {
        let _ = std::process::Command::new("pm2").arg("ping").env("PM2_HOME", pm2_home.path()).output()?;
    }
    let t0 = Instant::now();
    let out = s.run(&["daemons", "apply", "--root", &r, "--backend", backend]);
    let cold = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut plans = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let out = s.run(&["daemons", "plan", "--root", &r, "--backend", backend, "--json"]);
        plans.push(t0.elapsed().as_secs_f64() * 1000.0);
        let items: Vec<Value> = serde_json::from_slice(&out.stdout)?;
        if items.iter().any(|i| i["action"] != "unchanged") {
            bail!("plan not clean after apply");
        }
    }
    let mut watcher = s
        .cmd(&["daemons", "watch", "--root", &r, "--backend", backend])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    let mut edits = Vec::new();
    for round in 0..5 {
        let i = round * 7 % n;
        let name = format!("daemons:team{}.svc{i}", i % 10);
        let old = pid_of(&s, backend, &name);
        let t0 = Instant::now();
        write_def(&root, i, 200_000 + round as u64)?;
        loop {
            let now = pid_of(&s, backend, &name);
            if now.is_some() && now != old {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{name} never restarted");
            }
            if backend == "native" {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        edits.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    println!("{backend}: cold apply of {n} definitions: {cold:.2} s");
    println!(
        "{backend}: edit one file -> new pid online (watcher, 200 ms debounce included): median {:.0} ms over 5 edits",
        median(edits)
    );
    println!("{backend}: plan with nothing changed ({n} definitions, whole command): median {:.1} ms", median(plans));
    if backend == "pm2" {
        let _ = std::process::Command::new("pm2").arg("kill").env("PM2_HOME", pm2_home.path()).output();
    }
    Ok(())
}
