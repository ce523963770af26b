//! Daemons benchmark: 200 definitions (`daemon.toml` files, or apps in `ecosystem.edn` files);
//! cold apply, edit one file → new pid online (measured from the file's save, with the watcher
//! running), and a plan with nothing changed. Then pm2's `watch` in the native supervisor:
//! a write below a watched path → the new pid online.

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
    /// Which definitions: `toml` (one daemon.toml each), `edn` (ecosystem.edn files of five
    /// apps each), or `both`.
    #[arg(long, default_value = "both")]
    format: String,
    /// Rounds of the watch measurement.
    #[arg(long, default_value_t = 20)]
    watch_rounds: usize,
}

/// Apps per `ecosystem.edn` file in the EDN run.
const APPS_PER_FILE: usize = 5;

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

/// The EDN file holding app `i`, with every app of it; `edited` gives one app other args.
fn write_edn(root: &Path, file: usize, edited: Option<(usize, u64)>) -> Result<()> {
    let dir = root.join(format!("team{}/group{file}", file % 10));
    std::fs::create_dir_all(&dir)?;
    let mut text = String::from("{:apps [\n");
    for k in 0..APPS_PER_FILE {
        let i = file * APPS_PER_FILE + k;
        let secs = match edited {
            Some((e, s)) if e == i => s,
            _ => 100_000,
        };
        text.push_str(&format!(
            "  {{:name \"app{i}\" :script \"sleep\" :args [\"{secs}\"] :interpreter \"none\" :kill_timeout 2000 :env {{:APP \"{i}\"}}}}\n"
        ));
    }
    text.push_str("]}\n");
    std::fs::write(dir.join("ecosystem.edn"), text)?;
    Ok(())
}

fn pid_of(s: &Supervised, backend: &str, name: &str) -> Option<u64> {
    let out = s.run(&["ps", "--json", "--backend", backend]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter().find(|p| p["name"] == name && p["status"] == "online").and_then(|p| p["pid"].as_u64())
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("daemons benchmark: {} definitions", args.definitions);
    let formats: &[&str] = match args.format.as_str() {
        "both" => &["toml", "edn"],
        "toml" => &["toml"],
        "edn" => &["edn"],
        other => bail!("--format {other}: expected toml, edn or both"),
    };
    for format in formats {
        one(bin, "native", args.definitions, format).await?;
        if !args.no_pm2 {
            one(bin, "pm2", args.pm2_definitions, format).await?;
        }
    }
    watch(bin, args.watch_rounds)?;
    Ok(())
}

/// A write below a watched path → the process's new pid online (native supervisor, the
/// default watch_delay of 100 ms included).
fn watch(bin: &Path, rounds: usize) -> Result<()> {
    let s = Supervised::new(bin)?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src)?;
    s.ok(&[
        "start",
        "watched",
        "--watch",
        src.to_str().unwrap(),
        "--kill-timeout-ms",
        "2000",
        "--",
        "sleep",
        "100000",
    ])?;
    let mut client = testkit::eventually_blocking("the supervisor to answer", || {
        supervisor::client::Client::connect(&s.dir()).map_err(|e| e.to_string())
    })?;
    let pid = |c: &mut supervisor::client::Client| -> Option<u32> {
        match c.call(&proto::control::Request::Ps).ok()? {
            proto::control::Response::List { processes } => {
                processes.into_iter().find(|p| p.name == "watched" && p.status == "online").map(|p| p.pid)
            }
            _ => None,
        }
    };
    let mut times = Vec::new();
    for round in 0..rounds {
        let old = testkit::eventually_blocking("the watched process online", || {
            pid(&mut client).ok_or_else(|| "not online".into())
        })?;
        // A quiet moment between rounds, so each write is a change of its own.
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        std::fs::write(src.join(format!("file{}.js", round % 3)), format!("round {round}"))?;
        loop {
            if pid(&mut client).is_some_and(|p| p != old) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no restart after a change");
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "native: watch: a write below a watched path -> new pid online (watch_delay 100 ms included): median {:.0} ms, p90 {:.0} ms, max {:.0} ms over {rounds} writes",
        pct(&sorted, 0.5),
        pct(&sorted, 0.9),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

async fn one(bin: &Path, backend: &str, n: usize, format: &str) -> Result<()> {
    let pm2_home = tempfile::tempdir()?;
    let mut s = Supervised::new(bin)?;
    s.env.push(("PM2_HOME".into(), pm2_home.path().display().to_string()));
    let root_dir = tempfile::tempdir()?;
    let root = root_dir.path().canonicalize()?;
    let edn = format == "edn";
    if edn {
        for file in 0..n.div_ceil(APPS_PER_FILE) {
            write_edn(&root, file, None)?;
        }
    } else {
        for i in 0..n {
            write_def(&root, i, 100_000)?;
        }
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
        let name = if edn { format!("daemons:app{i}") } else { format!("daemons:team{}.svc{i}", i % 10) };
        let old = pid_of(&s, backend, &name);
        let t0 = Instant::now();
        if edn {
            write_edn(&root, i / APPS_PER_FILE, Some((i, 200_000 + round as u64)))?;
        } else {
            write_def(&root, i, 200_000 + round as u64)?;
        }
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
    let what = if edn {
        format!("{n} EDN apps in {} ecosystem.edn files", n.div_ceil(APPS_PER_FILE))
    } else {
        format!("{n} daemon.toml")
    };
    println!("{backend}: cold apply of {what}: {cold:.2} s");
    println!(
        "{backend}: edit one file ({what}) -> new pid online (watcher, 200 ms debounce included): median {:.0} ms over 5 edits",
        median(edits)
    );
    println!("{backend}: plan with nothing changed ({what}, whole command): median {:.1} ms", median(plans));
    if backend == "pm2" {
        let _ = std::process::Command::new("pm2").arg("kill").env("PM2_HOME", pm2_home.path()).output();
    }
    Ok(())
}
