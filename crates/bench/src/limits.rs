//! A usage limit as a subscriber meets it (issue 20), in real time: the real Claude Code CLI,
//! signed in with an OAuth token, against a scripted Messages API on loopback, wrapped by
//! `agentcom run-agent --usage claude-stream` under a real sidecar (worktree mode) and hub. The
//! model writes a file, then the account hits its limit with the reset `--window-s` seconds away.
//! The bench waits the window out as a user would and prints: model requests during the window
//! (goal 0) and agent processes alive meanwhile, every daemon's CPU while waiting, whether the
//! task completed afterwards with no retry used, and the time from the reset to the resumed
//! request (the hub's timer, the assignment, the worktree adopted, the CLI's start).

use crate::procs::{children_cpu_secs, cpu_now, descendants, Daemon};
use anyhow::{bail, Context, Result};
use proto::api::{AgentStatus, SubmitTask, TaskDetail, TaskStatus};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::anthropic::{self, ScriptedClaude, Seen, Turn};
use testkit::{Hub, Sidecar};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds from the limit to its reset.
    #[arg(long, default_value_t = 60)]
    window_s: u64,
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// What the scripted model answered, and when (epoch ms).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Work,
    Refused,
    Done,
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    let claude = anthropic::claude_bin()?;
    let version = std::process::Command::new(&claude).arg("--version").output()?;
    println!(
        "agentcom limits benchmark (release binary {}; Claude Code {})",
        bin.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let bin = &bin.canonicalize().with_context(|| format!("{} not found", bin.display()))?;
    let root = tempfile::tempdir()?;
    let result = measure(bin, root.path(), &args).await;
    let left = crate::procs::reap_left_under(root.path());
    println!("processes left behind: {left}");
    result
}

async fn measure(bin: &Path, root: &Path, args: &Args) -> Result<()> {
    // The hub's defaults (`limit_wake_spread_ms` 30 s spreads an account's agents; the first,
    // here the only one, is freed at the reset itself).
    let hub = Hub::start_in(bin, &root.join("hub"), "")?;
    let token = hub.token("claude-1").await?;
    let repo = testkit::git::project(&root.join("project"))?;
    let reset_at = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<Vec<(f64, Answer)>>> = Arc::default();
    let (r, l, window) = (reset_at.clone(), log.clone(), args.window_s);
    let model = ScriptedClaude::start(move |s: &Seen| {
        let now = epoch_ms();
        let answer = if s.tool_results().is_empty() {
            Answer::Work
        } else {
            if r.load(Ordering::SeqCst) == 0 {
                r.store((now / 1000.0) as u64 + window, Ordering::SeqCst);
            }
            if now < r.load(Ordering::SeqCst) as f64 * 1000.0 {
                Answer::Refused
            } else {
                Answer::Done
            }
        };
        l.lock().unwrap().push((now, answer));
        match answer {
            Answer::Work => Turn::Tool {
                name: "Write".into(),
                input: json!({"file_path": s.cwd.clone().unwrap_or_default().join("hello.txt"), "content": "hello\n"}),
            },
            Answer::Refused => Turn::usage_limit(r.load(Ordering::SeqCst)),
            Answer::Done => Turn::Text("Done after the limit.".into()),
        }
    })
    .await?;
    let wake = "agentcom run-agent --usage claude-stream -- claude -p \"$AGENTCOM_TASK_DESCRIPTION\" --permission-mode acceptEdits";
    let cfg = format!(
        "agent_id = \"claude-1\"\ntoken = \"{token}\"\nhub_url = \"{}\"\nwake_command = {}\nrepo_dir = {}\nworkspace = \"worktree\"\naccount = \"team-a\"\n",
        hub.ws_url(),
        testkit::toml_string(wake),
        testkit::toml_string(&repo.display().to_string())
    );
    let mut env = model.env_oauth(&root.join("home"));
    let bin_dir = bin.parent().context("the binary's folder")?.display().to_string();
    env.push(("PATH".into(), format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default())));
    let dir = root.join("sidecar");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sidecar.toml"), cfg)?;
    let sidecar = Sidecar::launch(bin, &dir, &dir.join("sidecar.toml"), None, &env)?;
    sidecar.wait_log("identified to the hub").await?;

    let submitted = epoch_ms();
    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("Write hello.txt") }).await?;
    let waiting = until(&hub, &id, Duration::from_secs(180), |t| {
        t.task.status == TaskStatus::Queued && t.task.limited_attempts == 1
    })
    .await?;
    let reset_ms = reset_at.load(Ordering::SeqCst) as f64 * 1000.0;
    let refused_at =
        log.lock().unwrap().iter().find(|(_, a)| *a == Answer::Refused).map(|(t, _)| *t).context("no limit")?;
    let agent = hub.admin_client().call(&proto::api::GetAgent { agent_id: "claude-1".into() }).await?;
    println!(
        "the limit: hit {:.1} s after the submit, reset {:.1} s after it; the hub has the task queued not before {:?} (the reset: {}), failures {}, limited attempts {}; the agent {:?} until {:?}, account {:?}",
        (refused_at - submitted) / 1000.0,
        (reset_ms - refused_at) / 1000.0,
        waiting.task.not_before,
        waiting.task.not_before == Some(reset_ms as u64),
        waiting.task.failures,
        waiting.task.limited_attempts,
        agent.status,
        agent.limited_until,
        agent.account
    );
    if agent.status != AgentStatus::Limited {
        println!("UNEXPECTED: the agent is not shown limited");
    }

    // The window, waited out as a user does: every daemon's CPU, and anything the sidecar runs.
    let daemons = [Daemon::new("hub", hub.pid()), Daemon::new("sidecar", sidecar.pid())];
    let cpu0 = cpu_now(&daemons);
    let children0 = children_cpu_secs(sidecar.pid());
    let t0 = Instant::now();
    let (mut most, mut looks) = (0usize, 0u64);
    while epoch_ms() < reset_ms {
        let alive = descendants(sidecar.pid());
        most = most.max(alive.len());
        if !alive.is_empty() && looks % 20 == 0 {
            let shown: Vec<String> = alive.iter().map(|p| crate::procs::cmdline(*p)).collect();
            println!("  during the window the sidecar runs: {shown:?}");
        }
        looks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited = t0.elapsed();
    let cpu1 = cpu_now(&daemons);
    let children = children_cpu_secs(sidecar.pid()) - children0;

    let done = until(&hub, &id, Duration::from_secs(300), |t| {
        matches!(t.task.status, TaskStatus::Completed | TaskStatus::DeadLetter | TaskStatus::Cancelled)
    })
    .await?;
    let answers = log.lock().unwrap().clone();
    let during = answers.iter().filter(|(t, _)| *t > refused_at && *t < reset_ms).count();
    let resumed = answers.iter().find(|(t, _)| *t >= reset_ms).map(|(t, _)| *t);
    let reassigned = done.history.iter().rev().find(|h| h.to == TaskStatus::Assigned).map(|h| h.at as f64);
    let seen = model.requests();
    let same_session = seen.first().map(|s| &s.session) == seen.last().map(|s| &s.session);
    let same_cwd = seen.first().map(|s| &s.cwd) == seen.last().map(|s| &s.cwd);

    println!(
        "\nwindow: {:.1} s from the limit to the reset (waited {:.1} s of it here, looked {looks} times)",
        (reset_ms - refused_at) / 1000.0,
        waited.as_secs_f64()
    );
    println!("model requests during the window: {during} (goal 0); agent processes alive meanwhile: at most {most}");
    println!(
        "CPU while waiting ({:.0} s): hub {:.3} s ({:.3} s/min), sidecar {:.3} s ({:.3} s/min), the sidecar's children {children:.3} s",
        waited.as_secs_f64(),
        cpu1[0] - cpu0[0],
        (cpu1[0] - cpu0[0]) * 60.0 / waited.as_secs_f64(),
        cpu1[1] - cpu0[1],
        (cpu1[1] - cpu0[1]) * 60.0 / waited.as_secs_f64()
    );
    println!(
        "task: {:?} ({}), attempts {}, limited attempts {}, retries used {} (failures; max_retries 0)",
        done.task.status,
        done.task.result.as_ref().and_then(|r| r["result"].as_str()).unwrap_or("no result"),
        done.task.attempts,
        done.task.limited_attempts,
        done.task.failures
    );
    let ms = |x: Option<f64>| x.map_or("none".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "reset -> the resumed request: {} (reset -> assigned again {}, assigned -> the CLI's request {}); the same session: {same_session}, the same worktree: {same_cwd}",
        ms(resumed.map(|t| t - reset_ms)),
        ms(reassigned.map(|t| t - reset_ms)),
        ms(resumed.zip(reassigned).map(|(r, a)| r - a))
    );
    println!(
        "all model requests: {} ({} work, {} refused, {} answered)",
        answers.len(),
        answers.iter().filter(|(_, a)| *a == Answer::Work).count(),
        answers.iter().filter(|(_, a)| *a == Answer::Refused).count(),
        answers.iter().filter(|(_, a)| *a == Answer::Done).count()
    );
    drop(sidecar);
    drop(hub);
    if done.task.status != TaskStatus::Completed {
        bail!("the task ended {:?}: {:?}", done.task.status, done.task.last_error);
    }
    Ok(())
}

/// Polls the task (every 50 ms) until `ok`, for at most `limit`.
async fn until(hub: &Hub, id: &str, limit: Duration, ok: impl Fn(&TaskDetail) -> bool) -> Result<TaskDetail> {
    let t0 = Instant::now();
    loop {
        let t = hub.task(id).await?;
        if ok(&t) {
            return Ok(t);
        }
        if t0.elapsed() > limit {
            bail!("task {id} after {limit:?}: {:?}; history {:?}", t.task, t.history);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
