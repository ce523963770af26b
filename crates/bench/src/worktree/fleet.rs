//! Part (b): many sidecars in worktree mode on one repository (each with its own worktrees dir,
//! as the docs require), tasks that each change a file, all submitted at once. Then: worktrees
//! left (`git worktree list`, the folders, `.git/worktrees`), commits lost (every task's branch
//! has its commit, with its change), the main checkout untouched, and disk use before and after,
//! part by part; every daemon's CPU during the run and while idle afterwards.

use super::{
    disk_use, extra_worktrees, file_of, sidecar_config, task_folders, until_completed, until_no_worktrees,
    wake_command, worktrees_dir, Args,
};
use crate::procs::{children_cpu_secs, cpu_now, cpu_per_minute, Daemon};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::git::git;
use testkit::{Hub, Sidecar};

/// Disk use of the parts that may change, in bytes.
#[derive(Clone, Copy, Default)]
struct Disk {
    objects: u64,
    refs: u64,
    logs: u64,
    admin: u64,
    git_other: u64,
    checkout: u64,
    sidecars: u64,
}

impl Disk {
    fn total(&self) -> u64 {
        self.objects + self.refs + self.logs + self.admin + self.git_other + self.checkout + self.sidecars
    }
    fn rows(&self) -> [(&'static str, u64); 7] {
        [
            (".git/objects", self.objects),
            (".git/refs + packed-refs", self.refs),
            (".git/logs (reflogs)", self.logs),
            (".git/worktrees", self.admin),
            (".git, the rest", self.git_other),
            ("the main checkout", self.checkout),
            ("the sidecars' folders", self.sidecars),
        ]
    }
}

fn measure(repo: &Path, sidecars: &[PathBuf]) -> Disk {
    let g = repo.join(".git");
    let objects = disk_use(&g.join("objects"));
    let refs = disk_use(&g.join("refs")) + disk_use(&g.join("packed-refs"));
    let logs = disk_use(&g.join("logs"));
    let admin = disk_use(&g.join("worktrees"));
    let git_all = disk_use(&g);
    let repo_all = disk_use(repo);
    Disk {
        objects,
        refs,
        logs,
        admin,
        git_other: git_all - objects - refs - logs - admin,
        checkout: repo_all - git_all,
        sidecars: sidecars.iter().map(|d| disk_use(d)).sum(),
    }
}

pub async fn run(bin: &Path, root: &Path, repo: &Path, args: &Args) -> Result<()> {
    println!(
        "\n(b) {} sidecars in worktree mode on one repository, {} tasks each changing a file, submitted at once",
        args.agents, args.fleet_tasks
    );
    let hub = Hub::start_in(bin, &root.join("hub-b"), "")?;
    let wake = wake_command(root);
    let mut sidecars = Vec::new();
    let mut dirs = Vec::new();
    for n in 0..args.agents {
        let agent = format!("wt-{n}");
        let token = hub.token(&agent).await?;
        let dir = root.join("fleet").join(&agent);
        let s = Sidecar::start(bin, &dir, &sidecar_config(&agent, &token, &hub, &wake, repo))?;
        s.wait_log("identified to the hub").await?;
        sidecars.push(s);
        dirs.push(dir);
    }
    let main_head = git(repo, &["rev-parse", "main"])?;
    let before = measure(repo, &dirs);
    let mut daemons = vec![Daemon::new("hub", hub.pid())];
    daemons.extend(sidecars.iter().enumerate().map(|(n, s)| Daemon::new(format!("wt-{n}"), s.pid())));
    let cpu0 = cpu_now(&daemons);
    let children0: Vec<f64> = sidecars.iter().map(|s| children_cpu_secs(s.pid())).collect();

    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(args.fleet_tasks);
    for n in 0..args.fleet_tasks {
        ids.push(hub.submit_text(&format!("edit {}", file_of(n, args.files))).await?);
    }
    let mut most = 0usize;
    let done = until_completed(&hub, &ids, Duration::from_secs(3600), || {
        most = most.max(extra_worktrees(repo).unwrap_or(0));
    })
    .await?;
    let all_done = t0.elapsed();
    let released = until_no_worktrees(repo, Duration::from_secs(300)).await?;
    let run_time = t0.elapsed();
    let during = cpu_per_minute(&daemons, &cpu0, run_time);
    let children: f64 = sidecars.iter().zip(&children0).map(|(s, c0)| children_cpu_secs(s.pid()) - c0).sum();

    // Commits lost: each task's branch must hold its commit, with the change the hub has.
    let mut lost = Vec::new();
    for (n, (id, t)) in ids.iter().zip(&done).enumerate() {
        if let Err(e) = check_commit(repo, id, t, &file_of(n, args.files), &main_head) {
            lost.push(format!("{id}: {e}"));
        }
    }
    let left_listed = extra_worktrees(repo)?;
    let left_folders: usize = dirs.iter().map(|d| task_folders(&worktrees_dir(d))).sum();
    let left_admin = std::fs::read_dir(repo.join(".git").join("worktrees")).map(|d| d.count()).unwrap_or(0);
    let main_clean =
        git(repo, &["status", "--porcelain"])?.is_empty() && git(repo, &["rev-parse", "main"])? == main_head;
    let after = measure(repo, &dirs);

    println!(
        "{} tasks completed in {:.1} s ({:.1} tasks/s); the last worktree removed {:.1} s after the last completion; at most {most} worktrees at once (sampled each second)",
        ids.len(),
        all_done.as_secs_f64(),
        ids.len() as f64 / all_done.as_secs_f64(),
        released.as_secs_f64()
    );
    println!(
        "worktrees left: {left_listed} in `git worktree list`, {left_folders} task folders in the worktrees dirs, {left_admin} in .git/worktrees"
    );
    println!(
        "commits lost: {} of {} (each task's branch holds its commit, its change and nothing else)",
        lost.len(),
        ids.len()
    );
    for l in lost.iter().take(10) {
        println!("  LOST {l}");
    }
    println!("main checkout: {}", if main_clean { "untouched (same commit, clean)" } else { "CHANGED" });
    let trouble: Vec<String> = sidecars
        .iter()
        .flat_map(|s| s.logs())
        .filter(|l| l.contains("release the worktree") || l.contains("\"level\":\"ERROR\""))
        .collect();
    println!("sidecar log lines about releasing worktrees or errors: {}", trouble.len());
    for l in trouble.iter().take(10) {
        println!("  {}", l.chars().take(400).collect::<String>());
    }
    println!("disk use, allocated bytes:       before         after          change");
    for ((name, b), (_, a)) in before.rows().iter().zip(after.rows()) {
        println!("  {name:<26} {b:>12} {a:>12} {:>+12}", a as i64 - *b as i64);
    }
    let (b, a) = (before.total(), after.total());
    let branches =
        (after.objects + after.refs + after.logs) as i64 - (before.objects + before.refs + before.logs) as i64;
    println!(
        "  {:<26} {b:>12} {a:>12} {:>+12}  (the branches: objects, refs and reflogs {:+}; the rest {:+})",
        "total",
        a as i64 - b as i64,
        branches,
        a as i64 - b as i64 - branches
    );
    let side = |v: &[f64]| {
        let mut s = v[1..].to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        (crate::pct(&s, 0.5), s.last().copied().unwrap_or(0.0), s.iter().sum::<f64>())
    };
    let (s50, smax, ssum) = side(&during);
    println!(
        "CPU s/min during the run ({:.0} s): hub {:.3}; sidecars p50 {s50:.3}, max {smax:.3}, all {ssum:.3}; their git commands and wakes {:.3} s/min in all ({:.0} s)",
        run_time.as_secs_f64(),
        during[0],
        children * 60.0 / run_time.as_secs_f64(),
        children
    );

    // Waiting as users do, the fleet idle.
    let cpu1 = cpu_now(&daemons);
    let window = Duration::from_secs(args.idle_s);
    tokio::time::sleep(window).await;
    let idle = cpu_per_minute(&daemons, &cpu1, window);
    let (i50, imax, isum) = side(&idle);
    println!(
        "idle {} s afterwards, CPU s/min: hub {:.3}; sidecars p50 {i50:.3}, max {imax:.3}, all {isum:.3}",
        args.idle_s, idle[0]
    );
    drop(sidecars);
    drop(hub);
    Ok(())
}

/// The task's branch holds exactly one commit over `main`, the hub's change names it, and the
/// file it edited ends with the task's id.
fn check_commit(repo: &Path, id: &str, t: &proto::api::TaskDetail, file: &str, main: &str) -> Result<()> {
    let branch = format!("agentcom/{id}");
    let head = git(repo, &["rev-parse", "--verify", "-q", &branch]).context("no branch")?;
    let change = t.task.change.as_ref().context("no change at the hub")?;
    anyhow::ensure!(change.head_sha == head, "the hub has {} but the branch is at {head}", change.head_sha);
    anyhow::ensure!(change.base_sha == main, "based on {}, not main", change.base_sha);
    let count = git(repo, &["rev-list", "--count", &format!("{main}..{branch}")])?;
    anyhow::ensure!(count == "1", "{count} commits over main");
    let text = git(repo, &["show", &format!("{branch}:{file}")])?;
    anyhow::ensure!(text.lines().last() == Some(id), "{file} does not end with the task id");
    Ok(())
}
