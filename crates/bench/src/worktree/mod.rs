//! Worktrees (issue 19), with real git, real sidecars and a real hub, on a repository of 10,000
//! files and 200 MB: (a) a task's submission (and its assignment) → its wake running in a fresh
//! worktree, against a plain `git worktree add` of the same repository in the same run; (b) 20
//! sidecars on one repository working through 200 tasks that each change a file: worktrees left,
//! commits lost, disk use before and after. After each part it waits as users do and prints
//! every daemon's CPU while nothing happens.

mod fleet;
mod latency;

use anyhow::{bail, Context, Result};
use proto::api::{TaskDetail, TaskStatus};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::git::git;
use testkit::Hub;

#[derive(clap::Args)]
pub struct Args {
    /// Tasks in the latency run (as many plain `git worktree add`s beside them).
    #[arg(long, default_value_t = 40)]
    tasks: usize,
    /// Files in the repository.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Size of the repository's files, in MB (10^6 bytes).
    #[arg(long, default_value_t = 200)]
    mb: u64,
    /// Sidecars in the fleet run, all on the one repository.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Tasks in the fleet run, in all (each changes one file).
    #[arg(long, default_value_t = 200)]
    fleet_tasks: usize,
    /// Seconds of waiting, as users do, after each part (every daemon's CPU meanwhile).
    #[arg(long, default_value_t = 60)]
    idle_s: u64,
    /// Only one part: `latency` or `fleet`.
    #[arg(long)]
    only: Option<String>,
}

/// The agent: confirms, appends its task id to the file its description names (`edit PATH`),
/// records where it ran, and reports success.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
touch "$R/$T.started"
set -- $AGENTCOM_TASK_DESCRIPTION
echo "$T" >> "$2"
pwd -P > "$MARKS/$T.cwd"
printf '%s' '{"status":"success"}' > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

/// The wake command: the moment it runs (ns since the epoch, before anything else) into
/// `$MARKS/<task>.t`, then the agent.
fn wake_command(root: &Path) -> String {
    let marks = root.join("marks").display().to_string();
    let agent = root.join("agent.sh").display().to_string();
    format!("date +%s%N > '{marks}'/\"$AGENTCOM_TASK_ID.t\"; MARKS='{marks}' exec sh '{agent}'")
}

/// The file task `n` edits.
fn file_of(n: usize, files: usize) -> String {
    let i = (n * 7919) % files;
    format!("d{:03}/f{:05}.txt", i / 100, i)
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom worktree benchmark (release binary {})", bin.display());
    let bin = &bin.canonicalize().with_context(|| format!("{} not found", bin.display()))?;
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("marks"))?;
    std::fs::write(root.path().join("agent.sh"), AGENT)?;
    let repo = root.path().join("project");
    let t0 = Instant::now();
    let bytes = make_repo(&repo, args.files, args.mb * 1_000_000)?;
    println!(
        "repository: {} files, {:.0} MB in the checkout, {:.0} MB in .git (packed), made in {:.1} s",
        args.files,
        bytes as f64 / 1e6,
        disk_use(&repo.join(".git")) as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let only = args.only.as_deref();
    if let Some(o) = only.filter(|o| !["latency", "fleet"].contains(o)) {
        bail!("--only {o}: latency or fleet");
    }
    let result = async {
        if only != Some("fleet") {
            latency::run(bin, root.path(), &repo, &args).await?;
        }
        if only != Some("latency") {
            fleet::run(bin, root.path(), &repo, &args).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let left = crate::procs::reap_left_under(root.path());
    println!("processes left behind: {left}");
    result
}

/// A repository on `main` with one commit of `files` files of text (`bytes` in all) in folders
/// of 100, packed as a clone is.
fn make_repo(dir: &Path, files: usize, bytes: u64) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    let each = (bytes / files as u64).max(1) as usize;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut total = 0u64;
    for i in 0..files {
        let folder = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        let mut text = String::with_capacity(each);
        // Lines of text, the last one whole: an agent's `echo >> file` starts a line of its own.
        while text.len() + 1 < each {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let line = format!("{:016x}{:016x} line of file {i}\n", x.wrapping_mul(0x2545_F491_4F6C_DD1D), x);
            text.push_str(&line[..line.len().min(each - 1 - text.len())]);
        }
        text.push('\n');
        total += text.len() as u64;
        std::fs::write(folder.join(format!("f{i:05}.txt")), text)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "the project"])?;
    git(dir, &["repack", "-a", "-d", "-q", "--window=0"])?;
    Ok(total)
}

/// Bytes allocated on disk under `path` (each inode once, links not followed).
pub fn disk_use(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
        let mut n = if seen.insert((m.dev(), m.ino())) { m.blocks() * 512 } else { 0 };
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                n += walk(&e.path(), seen);
            }
        }
        n
    }
    walk(path, &mut HashSet::new())
}

/// Nanoseconds since the epoch.
pub fn epoch_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A sidecar in worktree mode on `repo` with the defaults a user has.
fn sidecar_config(agent: &str, token: &str, hub: &Hub, wake: &str, repo: &Path) -> String {
    format!(
        "agent_id = \"{agent}\"\ntoken = \"{token}\"\nhub_url = \"{}\"\nwake_command = {}\nrepo_dir = {}\nworkspace = \"worktree\"\n",
        hub.ws_url(),
        testkit::toml_string(wake),
        testkit::toml_string(&repo.display().to_string())
    )
}

/// The worktrees `repo` has besides itself.
fn extra_worktrees(repo: &Path) -> Result<usize> {
    Ok(testkit::git::worktrees(repo)?.len().saturating_sub(1))
}

/// Polls until `repo` has no worktree but itself, for at most `limit`.
async fn until_no_worktrees(repo: &Path, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let n = extra_worktrees(repo)?;
        if n == 0 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("{n} worktrees still there after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until every task in `ids` is completed (an error if one ends otherwise), for at most
/// `limit`, calling `each_second` about once a second meanwhile.
async fn until_completed(
    hub: &Hub,
    ids: &[String],
    limit: Duration,
    mut each_second: impl FnMut(),
) -> Result<Vec<TaskDetail>> {
    let client = hub.admin_client();
    let t0 = Instant::now();
    let mut done: Vec<Option<TaskDetail>> = vec![None; ids.len()];
    let mut last_tick = Instant::now();
    loop {
        for (i, id) in ids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let t = client.call(&proto::api::GetTask { task_id: id.clone() }).await?;
            match t.task.status {
                TaskStatus::Completed => done[i] = Some(t),
                TaskStatus::DeadLetter | TaskStatus::Cancelled => {
                    bail!("task {id} ended {:?}: {:?}", t.task.status, t.task.last_error)
                }
                _ => break,
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        if t0.elapsed() > limit {
            let n = done.iter().filter(|d| d.is_some()).count();
            bail!("{n} of {} tasks completed after {limit:?}", ids.len());
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            each_second();
            last_tick = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the hub last assigned the task (epoch ms), from its history.
fn assigned_at(t: &TaskDetail) -> Option<u64> {
    t.history.iter().rev().find(|h| h.to == TaskStatus::Assigned).map(|h| h.at)
}

/// The epoch ms of the sidecar's first log line `message` about `task_id`.
fn log_ms(logs: &[String], task_id: &str, message: &str) -> Option<f64> {
    logs.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
        if v["message"] != message || v["task_id"] != task_id {
            return None;
        }
        let t = humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0)
    })
}

/// `git args` in `dir` as a person types it (no user or system config), timed.
fn timed_git(dir: &Path, args: &[&str]) -> Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

/// Sorted copies, p50, p99 and max, as `p50 X / p99 Y / max Z ms`.
fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.0} / p99 {:.0} / max {:.0} ms",
        crate::pct(&s, 0.5),
        crate::pct(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN)
    )
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    crate::pct(&s, 0.5)
}

/// Folders in a sidecar's worktrees dir (its lock file aside).
fn task_folders(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
        .unwrap_or(0)
}

fn worktrees_dir(sidecar_dir: &Path) -> PathBuf {
    sidecar_dir.join("state").join("worktrees")
}
