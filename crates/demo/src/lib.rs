//! `agentcom demo`: a hub, two sidecars and a sample agent in one process tree, a handful of
//! tasks, and their flow to completion shown live. Also `agentcom sample-agent`, the small
//! program the demo's sidecars wake: it plays an agent with the same files a real one writes.

use anyhow::{bail, Context, Result};
use client::Client;
use proto::api::{CreateToken, ListTasks, Priority, SubmitTask, TaskList, TaskStatus, TaskView};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TASKS: &[(&str, &str, &[&str])] = &[
    ("Fix the intermittent integration test in ci.yml", "high", &[]),
    ("Add --json output to the report command", "normal", &[]),
    ("Upgrade tokio and fix the deprecations", "normal", &["rust"]),
    ("Security: rotate the leaked API key in config/", "urgent", &[]),
    ("Write docs for the retry policy (flaky: fails once, then succeeds)", "normal", &[]),
    ("Profile the slow startup and cut it in half", "low", &["rust"]),
    ("Rename the Widget type to Component everywhere", "normal", &[]),
    ("Triage the 3 newest GitHub issues", "high", &[]),
];

pub struct DemoOptions {
    /// How long the sample agent works on each task.
    pub work_ms: u64,
    /// Keep the hub and sidecar data here instead of a temp dir.
    pub data_dir: Option<PathBuf>,
}

/// How the demo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every task finished.
    Finished,
    /// Ctrl-C (or SIGTERM) stopped it; its agents were stopped and reaped too.
    Interrupted,
}

/// Runs the demo until every task is finished or `shutdown` is cancelled (Ctrl-C).
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<Ended> {
    let temp;
    let root = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempdir()?;
            temp.clone()
        }
    };
    std::fs::create_dir_all(&root)?;
    let admin = format!("demo-{}", random_hex());
    let hub_cfg = hub::HubConfig::load(hub::Overrides {
        config: None,
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(root.join("hub")),
        admin_token: Some(admin.clone()),
        ..Default::default()
    })?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let hub_task = tokio::spawn(hub::run_reporting(hub_cfg, shutdown.clone(), Some(ready_tx)));
    let addr = ready_rx.await.context("the hub did not start")?;
    let url = format!("http://{addr}");
    let api = Client::new(&url, Some(admin), None)?;
    println!("agentcom demo");
    println!("  hub      {url}  (data in {})", root.display());

    let mut ids = Vec::new();
    for (desc, prio, caps) in TASKS {
        let mut task = SubmitTask::new(*desc);
        task.priority = prio.parse::<Priority>().map_err(anyhow::Error::msg)?;
        task.needed_capabilities = caps.iter().map(|c| c.to_string()).collect();
        task.max_retries = 2;
        ids.push(api.call(&task).await?.task_id);
    }
    let exe = std::env::current_exe().context("find the agentcom binary")?;
    let wake =
        format!("{} sample-agent --work-ms {}", sidecar::wake::shell_quote(&exe.display().to_string()), opts.work_ms);
    let mut sidecars = Vec::new();
    let agents = [("demo-agent-1", vec!["rust".to_string()]), ("demo-agent-2", vec![])];
    for (name, caps) in agents.clone() {
        let token = api.call(&CreateToken { agent_id: name.into() }).await?.token;
        let dir = root.join(name);
        let file = sidecar::config::FileConfig {
            agent_id: Some(name.into()),
            token: Some(token),
            hub_url: Some(format!("ws://{addr}/ws").into()),
            capabilities: Some(caps.clone()),
            wake_command: Some(wake.clone()),
            rescan_interval_ms: Some(500),
            ..Default::default()
        };
        let cfg = sidecar::SidecarConfig::from_file(file, &dir).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
        println!("  sidecar  {name}  capabilities {caps:?}  results in {}", cfg.results_dir.display());
        sidecars.push(tokio::spawn(sidecar::run(cfg, sidecar::Host::unsupervised(), shutdown.clone())));
    }
    println!("  wake     {wake}");
    println!();

    println!("submitted {} tasks before the agents connect, so priorities decide the order;", ids.len());
    println!("watching them flow (Ctrl-C stops everything cleanly)\n");

    let outcome = watch(&api, &ids, &shutdown).await;
    let interrupted = shutdown.is_cancelled();
    shutdown.cancel();
    for s in sidecars {
        s.await.context("sidecar task")??;
    }
    hub_task.await.context("hub task")??;
    // A sidecar leaves its agent working when it stops (it recovers the task when it starts
    // again); the demo's agents go with the demo: stopped, and waited for until they are gone.
    for (name, _) in &agents {
        let dir = root.join(name).join("results").display().to_string();
        for group in osutil::procfs::groups_with_env(&[("AGENTCOM_RESULTS_DIR", &dir)]) {
            osutil::pgroup::stop_group(group, nix::sys::signal::Signal::SIGTERM, Duration::from_secs(2)).await;
        }
    }
    if opts.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    outcome.map(|()| if interrupted { Ended::Interrupted } else { Ended::Finished })
}

async fn watch(api: &Client, ids: &[String], shutdown: &CancellationToken) -> Result<()> {
    let t0 = Instant::now();
    let mut last: HashMap<String, (String, String, String)> = HashMap::new();
    let deadline = Duration::from_secs(120);
    loop {
        if shutdown.is_cancelled() {
            println!("\ninterrupted; stopping the hub and sidecars");
            return Ok(());
        }
        let page = api.call(&ListTasks { limit: Some(100), ..Default::default() }).await?;
        let tasks: Vec<TaskView> = page.tasks.into_iter().filter(|t| ids.contains(&t.task_id)).collect();
        let mut done = 0;
        for t in tasks.iter().rev() {
            let agent = t.assigned_to.clone().unwrap_or_else(|| "-".into());
            // The hub shows the current attempt's progress only: a re-assigned task starts afresh.
            let progress = t.progress.as_ref().and_then(|p| p["step"].as_str()).unwrap_or_default().to_string();
            if t.status.is_terminal() {
                done += 1;
            }
            let now = (t.status.to_string(), agent.clone(), progress.clone());
            if last.get(&t.task_id) != Some(&now) {
                let status = t.status;
                let what = match status {
                    TaskStatus::Assigned | TaskStatus::Working if !progress.is_empty() => {
                        format!("{status:<13} {agent}  {progress}")
                    }
                    TaskStatus::Assigned | TaskStatus::Working => format!("{status:<13} {agent}"),
                    TaskStatus::WaitingRetry => format!("{status:<13} {}", t.last_error.as_deref().unwrap_or("")),
                    _ => status.to_string(),
                };
                println!(
                    "[{:>5.1}s] {:<8} {:<46}  {what}",
                    t0.elapsed().as_secs_f64(),
                    t.priority,
                    shorten(&t.description, 46)
                );
                last.insert(t.task_id.clone(), now);
            }
        }
        if done == ids.len() {
            let completed = tasks.iter().filter(|t| t.status == TaskStatus::Completed).count();
            println!("\n{completed} of {} tasks completed in {:.1}s", ids.len(), t0.elapsed().as_secs_f64());
            print!("{}", client::render::tasks(&TaskList { count: tasks.len(), tasks, next_cursor: None }));
            return Ok(());
        }
        if t0.elapsed() > deadline {
            bail!("the demo did not finish within {deadline:?}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(150)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// `s` in at most `max` characters, with an ellipsis when it was cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn random_hex() -> String {
    let mut s = String::new();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    for b in (nanos ^ (std::process::id() as u128) << 64).to_le_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agentcom-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `agentcom sample-agent`: writes `<task>.started`, a few progress lines, then the result,
/// the way a real agent's wrapper would. A task whose description says "flaky" fails on its
/// first attempt (generation 1) to show retries.
pub fn sample_agent(work_ms: u64) -> Result<()> {
    let id = std::env::var("AGENTCOM_TASK_ID").context("AGENTCOM_TASK_ID is not set (run me from a sidecar wake)")?;
    let dir = PathBuf::from(std::env::var("AGENTCOM_RESULTS_DIR").context("AGENTCOM_RESULTS_DIR is not set")?);
    let desc = std::env::var("AGENTCOM_TASK_DESCRIPTION").unwrap_or_default();
    let generation: u64 = std::env::var("AGENTCOM_TASK_GENERATION").ok().and_then(|g| g.parse().ok()).unwrap_or(1);
    std::fs::write(dir.join(format!("{id}.started")), b"")?;
    let steps = ["reading the code", "making the change", "running the tests"];
    for (i, step) in steps.iter().enumerate() {
        append_line(
            &dir.join(format!("{id}.progress")),
            &json!({"step": format!("{}/{} {step}", i + 1, steps.len())}),
        )?;
        std::thread::sleep(Duration::from_millis(work_ms / steps.len() as u64));
    }
    let result: Value = if desc.contains("flaky") && generation <= 1 {
        json!({"status": "failed", "reason": "tests failed on the first try"})
    } else {
        json!({"status": "success", "summary": format!("done: {desc}"), "tokens_used": 1200 + desc.len()})
    };
    osutil::fs::write_atomic(&dir.join(format!("{id}.json")), result.to_string().as_bytes())?;
    Ok(())
}

fn append_line(path: &Path, v: &Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{v}")?;
    Ok(())
}
