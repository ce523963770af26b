//! Part (a): submit → the wake running in a fresh worktree, one task at a time, each round beside
//! a plain `git worktree add` of the same repository (in alternating order, so both meet the same
//! page cache and writeback); then the hub and sidecar idle, as users leave them.

use super::{
    assigned_at, epoch_ns, file_of, log_ms, p50, sidecar_config, spread, timed_git, until_completed,
    until_no_worktrees, wake_command, Args,
};
use crate::procs::{cpu_now, cpu_per_minute, Daemon};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{Hub, Sidecar};

/// One sidecar round's times, in ms.
struct Round {
    /// The bench's clock before the submit → the wake's first command.
    submit: f64,
    /// The hub's assignment (its history, ms) → the wake's first command.
    assign: f64,
    /// From the sidecar's log: accepted → worktree ready → wake command started → the wake's
    /// first command.
    prepare: Option<f64>,
    spawn: Option<f64>,
    shell: Option<f64>,
    /// Assigned (hub) → accepted (sidecar log).
    accept: Option<f64>,
}

pub async fn run(bin: &Path, root: &Path, repo: &Path, args: &Args) -> Result<()> {
    println!(
        "\n(a) submit -> wake running in a fresh worktree, {} tasks, each beside a plain `git worktree add`",
        args.tasks
    );
    let hub = Hub::start_in(bin, &root.join("hub-a"), "")?;
    let token = hub.token("wt-1").await?;
    let cfg = sidecar_config("wt-1", &token, &hub, &wake_command(root), repo);
    let side_dir = root.join("sidecar-a");
    let sidecar = Sidecar::start(bin, &side_dir, &cfg)?;
    sidecar.wait_log("identified to the hub").await?;
    let plain_dir = root.join("plain");
    std::fs::create_dir_all(&plain_dir)?;
    let mut plain = Vec::new();
    let mut rounds = Vec::new();
    for n in 0..args.tasks {
        let plain_first = n % 2 == 0;
        if plain_first {
            plain.push(plain_add(repo, &plain_dir, n)?);
        }
        rounds.push(task_round(&hub, &sidecar, root, repo, n, args.files).await?);
        if !plain_first {
            plain.push(plain_add(repo, &plain_dir, n)?);
        }
    }
    let col = |f: fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).collect::<Vec<f64>>();
    let submit = col(|r| Some(r.submit));
    println!("plain `git worktree add -b B PATH main` (whole command): {}", spread(&plain));
    println!("submit -> wake running in its worktree:               {}", spread(&submit));
    println!("hub assigned -> wake running:                         {}", spread(&col(|r| Some(r.assign))));
    println!("  of which assigned -> accepted (queue.json fsynced): {}", spread(&col(|r| r.accept)));
    println!("  accepted -> worktree ready (prepare: git steps):    {}", spread(&col(|r| r.prepare)));
    println!("  worktree ready -> wake command started:             {}", spread(&col(|r| r.spawn)));
    println!("  wake command started -> its first command ran:      {}", spread(&col(|r| r.shell)));
    let ratio = p50(&submit) / p50(&plain);
    println!(
        "ratio of p50s (submit -> wake / plain add): {ratio:.2} (goal <= 1.2); submit -> wake p50 {:.0} ms (goal < 500 ms)",
        p50(&submit)
    );

    // Waiting as users do: nothing to do, the sidecar in worktree mode and the hub idle.
    let daemons = [Daemon::new("hub", hub.pid()), Daemon::new("sidecar", sidecar.pid())];
    let before = cpu_now(&daemons);
    let window = Duration::from_secs(args.idle_s);
    tokio::time::sleep(window).await;
    let idle = cpu_per_minute(&daemons, &before, window);
    println!("idle {} s afterwards, CPU s/min: hub {:.3}, sidecar {:.3}", args.idle_s, idle[0], idle[1]);
    drop(sidecar);
    drop(hub);
    Ok(())
}

/// A plain `git worktree add` of a new branch from `main`, timed; then removed (not timed).
fn plain_add(repo: &Path, dir: &Path, n: usize) -> Result<f64> {
    let path = dir.join(format!("w{n}"));
    let shown = path.display().to_string();
    let branch = format!("plain/{n}");
    let took = timed_git(repo, &["worktree", "add", "-q", "-b", &branch, &shown, "main"])?;
    timed_git(repo, &["worktree", "remove", "--force", &shown])?;
    timed_git(repo, &["branch", "-q", "-D", &branch])?;
    Ok(took.as_secs_f64() * 1000.0)
}

/// One task through the sidecar: submitted, its wake's first moment read from its mark, then
/// waited for until completed and its worktree removed, so rounds never overlap.
async fn task_round(hub: &Hub, sidecar: &Sidecar, root: &Path, repo: &Path, n: usize, files: usize) -> Result<Round> {
    let submitted = epoch_ns();
    let id = hub.submit_text(&format!("edit {}", file_of(n, files))).await?;
    let done = until_completed(hub, std::slice::from_ref(&id), Duration::from_secs(300), || {}).await?;
    until_no_worktrees(repo, Duration::from_secs(120)).await?;
    let t0 = Instant::now();
    while !sidecar.queue()["active"].is_null() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the sidecar still holds {id}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mark = root.join("marks").join(format!("{id}.t"));
    let woke: u128 = std::fs::read_to_string(&mark)
        .with_context(|| format!("{}", mark.display()))?
        .trim()
        .parse()
        .context("the wake's timestamp")?;
    let cwd = std::fs::read_to_string(root.join("marks").join(format!("{id}.cwd")))?;
    if !cwd.trim().ends_with(&format!("/worktrees/{id}")) {
        bail!("the wake of {id} ran in {cwd}, not its worktree");
    }
    let woke_ms = woke as f64 / 1e6;
    let assigned = assigned_at(&done[0]).context("no assignment in the history")? as f64;
    let logs = sidecar.logs();
    let accepted = log_ms(&logs, &id, "task accepted");
    let ready = log_ms(&logs, &id, "worktree ready");
    let started = log_ms(&logs, &id, "wake command started");
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Round {
        submit: (woke - submitted) as f64 / 1e6,
        assign: woke_ms - assigned,
        accept: diff(Some(assigned), accepted),
        prepare: diff(accepted, ready),
        spawn: diff(ready, started),
        shell: diff(started, Some(woke_ms)),
    })
}
