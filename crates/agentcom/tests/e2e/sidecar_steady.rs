//! A sidecar beside an agent that works for seconds and asks a question answered seconds later,
//! as people and agents do (issues 23 and 24): it parks while nothing is due (CPU time, not wall
//! time, over the window), its memory stays near its idle size, the answer reaches the agent,
//! and a hub restart meanwhile neither takes the task back nor loses the question.

use crate::bin;
use proto::api::{AnswerTask, TaskStatus};
use serde_json::Value;
use std::path::PathBuf;
use testkit::{eventually, Hub, Sidecar};

type R = anyhow::Result<()>;

/// Writes `.started` and a progress line, asks, then counts its polls (one each 50 ms) in
/// `$C/polls` while the question is open, so a test can wait for a window to pass on an event.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
touch "$R/$T.started"
echo '{"step":"thinking"}' >> "$R/$T.progress"
printf '%s' '{"question":"Deploy?","options":["yes","no"]}' > "$R/.$T.q" && mv "$R/.$T.q" "$R/$T.needs-input"
while [ -e "$R/$T.needs-input" ]; do sleep 0.05; echo . >> "$C/polls"; done
answer=$(cat "$R/$T.input")
printf '{"status":"success","answer":"%s"}' "$answer" > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> anyhow::Result<Env> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("control"))?;
        std::fs::write(root.path().join("agent.sh"), AGENT)?;
        Ok(Env { root })
    }
    fn polls(&self) -> usize {
        std::fs::read_to_string(self.root.path().join("control/polls")).unwrap_or_default().lines().count()
    }
    /// Waits until the agent has polled `n` more times than now: at least `n` × 50 ms passed.
    async fn polls_pass(&self, n: usize) -> R {
        let from = self.polls();
        eventually(&format!("{n} polls of the agent"), || async {
            let now = self.polls();
            (now >= from + n).then_some(()).ok_or_else(|| format!("{} polls", now - from))
        })
        .await
    }
    async fn sidecar(&self, hub: &Hub, agent: &str) -> anyhow::Result<Sidecar> {
        let token = hub.token(agent).await?;
        let wake = format!(
            "CONTROL='{}' sh '{}'",
            self.root.path().join("control").display(),
            self.root.path().join("agent.sh").display()
        );
        let cfg = testkit::sidecar_config(agent, &token, &hub.ws_url(), Some(&wake));
        Sidecar::start(bin(), &self.dir(agent), &cfg)
    }
    fn dir(&self, agent: &str) -> PathBuf {
        self.root.path().join(agent)
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    osutil::procfs::stat(pid as i32).map(|s| s.cpu_ticks).unwrap_or(0)
}

fn rss(pid: u32) -> u64 {
    osutil::procfs::rss_bytes(pid as i32).unwrap_or(0)
}

async fn open_question(hub: &Hub, id: &str) -> anyhow::Result<Value> {
    eventually("the question to reach the hub", || async {
        let t = serde_json::to_value(hub.task(id).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        (!t["needs_input"].is_null()).then(|| t.clone()).ok_or_else(|| t.to_string())
    })
    .await
}

async fn answer(hub: &Hub, id: &str, text: &str) -> R {
    let a = AnswerTask { task_id: id.into(), answer: text.into(), request_id: None };
    hub.admin_client().call(&a).await?;
    Ok(())
}

fn input_file(s: &Sidecar, id: &str) -> PathBuf {
    s.results().join(format!("{id}.input"))
}

#[tokio::test]
async fn a_sidecar_parks_while_its_agent_works_and_waits_and_the_answer_arrives() -> R {
    let e = Env::new()?;
    let hub = Hub::start(bin(), "")?;
    let s = e.sidecar(&hub, "steady").await?;
    s.wait_log("identified to the hub").await?;
    let idle_rss = rss(s.pid());
    let id = hub.submit_text("work, then ask").await?;
    open_question(&hub, &id).await?;
    // The agent has written progress and asked; it polls for the answer. Over 40 of its polls
    // (2 s at least) a spinning sidecar burns most of the window; a parked one next to nothing.
    e.polls_pass(2).await?;
    let (cpu0, polls0, t0) = (cpu_ticks(s.pid()), e.polls(), std::time::Instant::now());
    e.polls_pass(40).await?;
    let used = cpu_ticks(s.pid()) - cpu0;
    let window = t0.elapsed();
    let ticks_per_s = osutil::procfs::clock_ticks();
    assert!(
        used * 10 <= ticks_per_s * 2,
        "the sidecar used {used} ticks of CPU ({ticks_per_s}/s) over {window:?} ({} polls) of a waiting agent",
        e.polls() - polls0
    );
    let grown = rss(s.pid()).saturating_sub(idle_rss);
    assert!(grown < 4 << 20, "RSS grew by {grown} bytes from {idle_rss} while the question was open");
    // `task list` says which task waits for a person.
    let list = std::process::Command::new(bin())
        .args(["task", "list", "--url", &hub.url(), "--token", &hub.admin_token])
        .output()?;
    let list = String::from_utf8(list.stdout)?;
    assert!(list.lines().any(|l| l.starts_with(&id) && l.contains("working (asks)")), "{list}");
    answer(&hub, &id, "yes").await?;
    let done = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!(serde_json::to_value(&done)?["result"]["answer"], "yes");
    let answer_file = input_file(&s, &id);
    eventually("the answer file to go with the task's files", || async {
        (!answer_file.exists()).then_some(()).ok_or_else(|| "still there".to_string())
    })
    .await
}

#[tokio::test]
async fn a_hub_restart_under_a_waiting_agent_keeps_the_task_its_holder_and_the_question() -> R {
    let e = Env::new()?;
    // A short claim window: a sidecar that does not claim its task at once loses it within it.
    let config = testkit::merge_config(&testkit::fast_config(), "grace_period_ms = 1500\n");
    let mut hub = Hub::start(bin(), &config)?;
    let s = e.sidecar(&hub, "holder").await?;
    let id = hub.submit_text("work through a hub restart").await?;
    let asked = open_question(&hub, &id).await?;
    let generation = asked["generation"].as_u64();
    hub.restart_after_kill(bin(), &config)?;
    eventually("the sidecar to identify again", || async {
        let n = s.logs().iter().filter(|l| l.contains("identified to the hub")).count();
        (n >= 2).then_some(()).ok_or_else(|| format!("{n} identifies"))
    })
    .await?;
    // Well past the claim window (40 polls: 2 s at least) the task is still the holder's.
    e.polls_pass(40).await?;
    let t = serde_json::to_value(hub.task(&id).await?)?;
    assert_eq!(
        (t["status"].as_str(), t["assigned_to"].as_str(), t["generation"].as_u64()),
        (Some("working"), Some("holder"), generation),
        "{t}"
    );
    assert_eq!(t["needs_input"]["request_id"], asked["needs_input"]["request_id"], "{t}");
    answer(&hub, &id, "after the restart").await?;
    let done = serde_json::to_value(hub.wait_status(&id, TaskStatus::Completed).await?)?;
    assert_eq!(done["result"]["answer"], "after the restart");
    let history = done["history"].as_array().unwrap();
    assert!(history.iter().all(|h| h["to"] != "queued" || h["from"].is_null()), "never taken back: {done}");
    assert_eq!(history.iter().filter(|h| h["to"] == "completed").count(), 1);
    assert_eq!(done["generation"].as_u64(), generation);
    Ok(())
}
