//! The integration queue (issue 21), with real git, a bare repository as the remote, real
//! sidecars in worktree mode pushing their branches and the real integrator: (a) `--agents`
//! agents working through `--tasks` tasks that change disjoint files, a `check_command` that takes
//! `--check-ms`, once per `--batch` value: every change merged, linear history, none lost or twice,
//! changes merged per minute; (b) two agents changing the same line: one merges, the other gets
//! the conflict, re-applies its edit on the new base, and merges; the time from the conflict to
//! the merge. After each run it waits as users do and prints every daemon's CPU meanwhile.

use crate::procs::{children_cpu_secs, cpu_now, cpu_per_minute, Daemon};
use anyhow::{bail, Context, Result};
use proto::api::{IntegrationStatus, ListTasks, TaskDetail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::git::{bare_remote, files_at, git, show};
use testkit::{integrator_config, sidecar_config, toml_string, Hub, Sidecar};

#[derive(clap::Args)]
pub struct Args {
    /// Agents (sidecars in worktree mode, each on its own clone).
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Tasks, each changing a file of its own.
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// How long the check takes, in ms (`sleep`).
    #[arg(long, default_value_t = 1000)]
    check_ms: u64,
    /// `batch_max` values, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Conflict runs in part (b).
    #[arg(long, default_value_t = 5)]
    conflicts: usize,
    /// Seconds of waiting, as users do, after each run (every daemon's CPU meanwhile).
    #[arg(long, default_value_t = 60)]
    idle_s: u64,
}

/// Writes the file the description names (`write NAME`); on integration feedback it starts
/// again from the target's tip first, as an agent resolving a conflict would.
const AGENT: &str = r#"case "$AGENTCOM_TASK_JSON" in
  *integration_feedback*) git fetch -q origin main && git reset -q --hard origin/main ;;
esac
name=$(printf %s "$AGENTCOM_TASK_DESCRIPTION" | sed -n "s/^write \([a-z0-9.-]*\) .*/\1/p")
printf %s "$AGENTCOM_TASK_DESCRIPTION" | sed "s/^write [a-z0-9.-]* //" > "$name""#;

/// Sidecar settings left at their defaults (the tests shorten them).
const USER_DEFAULTS: [&str; 3] = ["ping_interval_ms", "pong_timeout_ms", "rescan_interval_ms"];

struct Fleet {
    hub: Hub,
    bare: PathBuf,
    agents: Vec<Sidecar>,
    integrator: Sidecar,
}

impl Fleet {
    async fn start(bin: &Path, root: &Path, agents: usize, integrate: &str) -> Result<Fleet> {
        let bare = bare_remote(root)?;
        let hub = Hub::start_in(bin, &root.join("hub"), "")?;
        let bin_dir = bin.canonicalize()?.parent().context("bin dir")?.display().to_string();
        let env = vec![("PATH".to_string(), format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()))];
        let quoted = format!("'{}'", AGENT.replace('\'', r"'\''"));
        let mut sidecars = Vec::new();
        for n in 0..agents {
            let name = format!("a{n}");
            let token = hub.token(&name).await?;
            let clone = root.join(format!("{name}-clone"));
            git(root, &["clone", "-q", &bare.display().to_string(), &clone.display().to_string()])?;
            let wake = format!("agentcom run-agent -- sh -c {quoted}");
            // The tests' fast pings and rescans are left out: the idle CPU is a user's.
            let mut cfg: String = sidecar_config(&name, &token, &hub.ws_url(), Some(&wake))
                .lines()
                .filter(|l| !USER_DEFAULTS.iter().any(|k| l.starts_with(k)))
                .map(|l| format!("{l}\n"))
                .collect();
            cfg.push_str(&format!(
                "repo_dir = {}\nworkspace = \"worktree\"\npush_remote = \"origin\"\n",
                toml_string(&clone.display().to_string())
            ));
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("sidecar.toml"), cfg)?;
            let s = Sidecar::launch(bin, &dir, &dir.join("sidecar.toml"), None, &env)?;
            s.wait_log("identified to the hub").await?;
            sidecars.push(s);
        }
        let dir = root.join("integrator");
        std::fs::create_dir_all(&dir)?;
        let clone = dir.join("clone");
        git(root, &["clone", "-q", &bare.display().to_string(), &clone.display().to_string()])?;
        let token = hub.token("integrator").await?;
        let cfg = integrator_config("integrator", &token, &hub.ws_url(), &clone, &dir.join("state"), integrate);
        std::fs::write(dir.join("integrate.toml"), cfg)?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["integrate", "--log-format", "json", "--config"]).arg(dir.join("integrate.toml"));
        let integrator = Sidecar::spawn(cmd, &dir)?;
        integrator.wait_log("identified to the hub").await?;
        Ok(Fleet { hub, bare, agents: sidecars, integrator })
    }

    fn daemons(&self) -> Vec<Daemon> {
        let mut d = vec![Daemon::new("hub", self.hub.pid()), Daemon::new("integrator", self.integrator.pid())];
        d.extend(self.agents.iter().enumerate().map(|(n, s)| Daemon::new(format!("a{n}"), s.pid())));
        d
    }

    /// Each task's integration status as the hub lists it.
    async fn statuses(&self) -> Result<HashMap<String, IntegrationStatus>> {
        let page = self.hub.admin_client().call(&ListTasks { status: None, limit: Some(1000), cursor: None }).await?;
        Ok(page.tasks.into_iter().filter_map(|t| Some((t.task_id, t.integration?.status))).collect())
    }

    /// Waits as users do; every daemon's CPU meanwhile, printed.
    async fn idle(&self, idle_s: u64) {
        let daemons = self.daemons();
        let before = cpu_now(&daemons);
        let window = Duration::from_secs(idle_s);
        tokio::time::sleep(window).await;
        let per_min = cpu_per_minute(&daemons, &before, window);
        let agents = &per_min[2..];
        let max = agents.iter().copied().fold(0.0, f64::max);
        println!(
            "  idle {idle_s} s afterwards, CPU s/min: hub {:.3}, integrator {:.3}, agents' sidecars max {max:.3}, all {:.3}",
            per_min[0],
            per_min[1],
            agents.iter().sum::<f64>()
        );
    }
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    let root = tempfile::tempdir()?;
    println!(
        "(a) {} agents, {} tasks changing disjoint files, a check of {} ms (`sleep`), real git, a bare remote",
        args.agents, args.tasks, args.check_ms
    );
    for (n, batch) in args.batch.iter().enumerate() {
        throughput(bin, &root.path().join(format!("batch{n}")), &args, *batch).await?;
    }
    println!("\n(b) two agents change the same line at once, {} times", args.conflicts);
    conflicts(bin, &root.path().join("conflicts"), &args).await
}

async fn throughput(bin: &Path, root: &Path, args: &Args, batch: usize) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let check = format!("sleep {}", args.check_ms as f64 / 1000.0);
    let integrate = format!("check_command = {}\nbatch_max = {batch}\n", toml_string(&check));
    let fleet = Fleet::start(bin, root, args.agents, &integrate).await?;
    let daemons = fleet.daemons();
    let cpu0 = cpu_now(&daemons);
    let checks0 = children_cpu_secs(fleet.integrator.pid());
    let before = git(&fleet.bare, &["rev-list", "--count", "main"])?.parse::<usize>()?;
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(args.tasks);
    for n in 0..args.tasks {
        ids.push(fleet.hub.submit_text(&format!("write f{n}.txt {n}")).await?);
    }
    let (mut first_queued, mut last_merged) = (None, None);
    let mut stuck = Vec::new();
    loop {
        let s = fleet.statuses().await?;
        if first_queued.is_none() && ids.iter().any(|id| s.contains_key(id)) {
            first_queued = Some(t0.elapsed());
        }
        let merged = ids.iter().filter(|id| s.get(*id) == Some(&IntegrationStatus::Merged)).count();
        if merged == ids.len() {
            last_merged = Some(t0.elapsed());
            break;
        }
        stuck = ids
            .iter()
            .filter(|id| matches!(s.get(*id), Some(IntegrationStatus::WaitingReview | IntegrationStatus::Rejected)))
            .cloned()
            .collect();
        if !stuck.is_empty() || t0.elapsed() > Duration::from_secs(3600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run_time = t0.elapsed();
    let Some(last) = last_merged else { bail!("batch_max {batch}: not every change merged: {stuck:?}") };
    let first = first_queued.unwrap_or_default();
    let during = cpu_per_minute(&daemons, &cpu0, run_time);
    let checks = children_cpu_secs(fleet.integrator.pid()) - checks0;
    let after = git(&fleet.bare, &["rev-list", "--count", "main"])?.parse::<usize>()?;
    let linear = git(&fleet.bare, &["rev-list", "--merges", "main"])?.is_empty();
    let files = files_at(&fleet.bare, "main")?;
    let mut lost = 0;
    for n in 0..args.tasks {
        if !files.contains(&format!("f{n}.txt")) || show(&fleet.bare, "main", &format!("f{n}.txt"))? != n.to_string() {
            lost += 1;
        }
    }
    let pushes = git(&fleet.bare, &["reflog", "--format=%H", "main"]).map(|l| l.lines().count()).unwrap_or(0);
    println!("\nbatch_max {batch}:");
    println!(
        "  {} of {} merged in {:.1} s from the first submission; commits on main +{} ({}), lost {lost}, history {}",
        ids.len(),
        args.tasks,
        last.as_secs_f64(),
        after - before,
        if after - before == args.tasks { "each change once" } else { "NOT each change once" },
        if linear { "linear" } else { "WITH MERGES" },
    );
    let window = (last - first).as_secs_f64();
    println!(
        "  merged per minute: {:.1} (from the first change queued at {:.1} s to the last merged, {window:.1} s){}",
        args.tasks as f64 * 60.0 / window,
        first.as_secs_f64(),
        if pushes > 1 { format!("; {pushes} entries in the remote's reflog of main") } else { String::new() }
    );
    let agents = &during[2..];
    println!(
        "  CPU s/min during the run ({:.0} s): hub {:.3}, integrator {:.3} (its runs, git and checks: {:.1} s in all), agents' sidecars max {:.3}",
        run_time.as_secs_f64(),
        during[0],
        during[1],
        checks,
        agents.iter().copied().fold(0.0, f64::max)
    );
    fleet.idle(args.idle_s).await;
    Ok(())
}

/// Seconds from the history row of the conflict to the integration's last change (the merge).
fn conflict_to_merged(t: &TaskDetail) -> Option<f64> {
    let at = t.history.iter().find(|h| h.reason.contains("integration conflict"))?.at;
    let merged = t.task.integration.as_ref().filter(|i| i.status == IntegrationStatus::Merged)?.updated_at;
    Some(merged.saturating_sub(at) as f64 / 1000.0)
}

async fn conflicts(bin: &Path, root: &Path, args: &Args) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let fleet = Fleet::start(bin, root, 2, "check_command = \"true\"\n").await?;
    let mut times = Vec::new();
    for n in 0..args.conflicts {
        let a = fleet.hub.submit_text(&format!("write shared.txt one-{n}")).await?;
        let b = fleet.hub.submit_text(&format!("write shared.txt two-{n}")).await?;
        let ids = [a, b];
        let t0 = Instant::now();
        loop {
            let s = fleet.statuses().await?;
            if ids.iter().all(|id| s.get(id) == Some(&IntegrationStatus::Merged)) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("conflict {n}: not both merged: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut conflicted = 0;
        for id in &ids {
            let t = fleet.hub.task(id).await?;
            if let Some(s) = conflict_to_merged(&t) {
                conflicted += 1;
                times.push(s);
            }
        }
        let content = show(&fleet.bare, "main", "shared.txt")?;
        if conflicted != 1 || !(content.ends_with(&format!("-{n}"))) {
            bail!("conflict {n}: {conflicted} conflicts, main has {content:?}");
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let linear = git(&fleet.bare, &["rev-list", "--merges", "main"])?.is_empty();
    println!(
        "  each time: one merged, the other got the conflict, started again from main and merged; history {}",
        if linear { "linear" } else { "WITH MERGES" }
    );
    println!(
        "  conflict -> merged: p50 {:.2} s, max {:.2} s over {} runs (the task queued again, the agent's new attempt, its branch pushed, integrated)",
        crate::pct(&times, 0.5),
        times.last().copied().unwrap_or(0.0),
        times.len()
    );
    fleet.idle(args.idle_s).await;
    Ok(())
}
