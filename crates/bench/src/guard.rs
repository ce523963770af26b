//! Guard benchmark: from restarting into a bad change to the old version healthy again,
//! beyond the health timeout itself (which the guard must wait out before judging).

use crate::pct;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::Supervised;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The health timeout given to each upgrade, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    health_timeout_ms: u64,
}

const AGENT: &str = r#"#!/bin/sh
V=$(cat VERSION)
echo "starting $V" > "$STATE/health"
case "$V" in bad*) exec sleep 100000 ;; esac
echo "ok $V" > "$STATE/health"
exec sleep 100000
"#;

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    let root = tempfile::tempdir()?;
    let repo = root.path().join("repo");
    let state = root.path().join("state");
    std::fs::create_dir_all(&state)?;
    testkit::git::versioned_agent(&repo, AGENT)?;
    let sup = Supervised::new(bin)?;
    let st = format!("STATE={}", state.display());
    sup.ok(&["start", "agent", "--cwd", repo.to_str().unwrap(), "--env", &st, "--", "sh", "agent.sh"])?;
    let health_file = state.join("health");
    let health = format!("grep -qx \"ok $(cat VERSION)\" '{}'", health_file.display());
    let read = || std::fs::read_to_string(&health_file).unwrap_or_default().trim().to_string();
    let mut beyond = Vec::new();
    for round in 0..args.rounds {
        let branch = format!("bad-{round}");
        testkit::git::version_branch(&repo, &branch, &branch)?;
        testkit::eventually_blocking("the old version to be healthy", || {
            let now = read();
            if now == "ok 1" {
                Ok(())
            } else {
                Err(now)
            }
        })?;
        let timeout = format!("{}ms", args.health_timeout_ms);
        let child = sup
            .cmd(&[
                "upgrade",
                "--repo",
                repo.to_str().unwrap(),
                "--process",
                "agent",
                "--branch",
                &branch,
                "--test",
                "true",
                "--health",
                &health,
                "--health-timeout",
                &timeout,
                "--stable-for",
                "500ms",
                "--check-interval",
                "20ms",
                "--json",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        // The bad version's first line marks the restart into it; the old version's "ok 1" after
        // that marks it healthy again.
        let deadline = Instant::now() + Duration::from_secs(60);
        let t_bad = loop {
            if read() == format!("starting bad-{round}") {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!("never restarted into the bad change");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let t_ok = loop {
            if read() == "ok 1" {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!("the old version never came back");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let out = child.wait_with_output()?;
        let report: Value = serde_json::from_slice(&out.stdout)?;
        if report["outcome"] != "rolled-back" {
            bail!("expected a rollback: {report}");
        }
        let total = t_ok.duration_since(t_bad).as_secs_f64() * 1000.0;
        beyond.push(total - args.health_timeout_ms as f64);
    }
    beyond.sort_by(|a, b| a.total_cmp(b));
    println!(
        "guard: restart into a bad change -> old version healthy again, beyond the {} ms health timeout: median {:.0} ms, max {:.0} ms ({} rounds)",
        args.health_timeout_ms,
        pct(&beyond, 0.5),
        beyond.last().copied().unwrap_or(0.0),
        beyond.len()
    );
    Ok(())
}
