//! End-to-end tests of the sidecar: the real hub and sidecar binaries, and a fake agent script
//! that writes `.started`, `.progress` and result files the way a real agent's wrapper does.

use crate::bin;
use proto::api::{ListAgents, SubmitTask, TaskDetail, TaskStatus, TaskView};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use testkit::{Hub, Sidecar};

type R = anyhow::Result<()>;

const AGENT: &str = r#"#!/bin/sh
# Fake agent. $1 = mode. CONTROL is a folder the test uses to steer and observe it.
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
echo "$T $1 $$" >> "$C/runs"
wait_go() { while [ ! -f "$C/go" ]; do sleep 0.02; done; }
case "$1" in
  success)
    touch "$R/$T.started"
    echo '{"step":"one"}' >> "$R/$T.progress"
    echo '{"step":"two"}' >> "$R/$T.progress"
    printf '{"status":"success","answer":42,"task":"%s"}' "$T" > "$R/$T.json" ;;
  fail) touch "$R/$T.started"; echo '{"status":"failed","reason":"compile error"}' > "$R/$T.json" ;;
  garbage) touch "$R/$T.started"; echo '{nope' > "$R/$T.json" ;;
  exit3) echo "boom from the wake"; exit 3 ;;
  nostart) exit 0 ;;
  hang) touch "$R/$T.started"; sleep 60 & echo $! > "$C/child.pid"; wait ;;
  block-wake) wait_go; touch "$R/$T.started"; echo '{"status":"success"}' > "$R/$T.json" ;;
  background)
    ( wait_go; touch "$R/$T.started"; sleep 0.05; echo '{"status":"success"}' > "$R/$T.json" ) >/dev/null 2>&1 &
    exit 0 ;;
  block-work) touch "$R/$T.started"; wait_go; echo '{"status":"success"}' > "$R/$T.json" ;;
  quit) touch "$R/$T.started"; exit 0 ;;
esac
"#;

struct Env {
    hub: Hub,
    root: tempfile::TempDir,
}

impl Env {
    fn new(hub_extra: &str) -> anyhow::Result<Env> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("control"))?;
        std::fs::write(root.path().join("agent.sh"), AGENT)?;
        Ok(Env { hub: Hub::start(bin(), hub_extra)?, root })
    }
    fn control(&self) -> PathBuf {
        self.root.path().join("control")
    }
    fn wake(&self, mode: &str) -> String {
        format!("CONTROL='{}' sh '{}' {mode}", self.control().display(), self.root.path().join("agent.sh").display())
    }
    fn go(&self) {
        std::fs::write(self.control().join("go"), b"").unwrap();
    }
    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.control().join("runs")).unwrap_or_default().lines().map(str::to_string).collect()
    }
    /// The pid of the first wake. The queue says `waking` as soon as the wake is spawned, which
    /// can be before the script has written its line, so wait for the line itself.
    async fn first_wake_pid(&self) -> anyhow::Result<i32> {
        testkit::eventually("the wake to record its run", || async {
            let line = self.runs().first().cloned().ok_or("no run yet")?;
            line.split(' ').nth(2).unwrap_or_default().parse().map_err(|e| format!("{line:?}: {e}"))
        })
        .await
    }
    async fn config(&self, agent: &str, mode: Option<&str>, extra: &str) -> anyhow::Result<String> {
        let token = self.hub.token(agent).await?;
        let wake = mode.map(|m| self.wake(m));
        let base = testkit::sidecar_config(agent, &token, &self.hub.ws_url(), wake.as_deref());
        Ok(testkit::merge_config(&base, extra))
    }
    async fn sidecar(&self, agent: &str, mode: Option<&str>, extra: &str) -> anyhow::Result<Sidecar> {
        let cfg = self.config(agent, mode, extra).await?;
        Sidecar::start(bin(), &self.root.path().join(agent), &cfg)
    }
    fn restart(&self, agent: &str) -> anyhow::Result<Sidecar> {
        let dir = self.root.path().join(agent);
        Sidecar::start_file(bin(), &dir, &dir.join("sidecar.toml"))
    }
    fn rewrite_wake(&self, agent: &str, mode: &str) {
        let path = self.root.path().join(agent).join("sidecar.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.lines().filter(|l| !l.starts_with("wake_command")).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, format!("{kept}wake_command = {}\n", testkit::toml_string(&self.wake(mode)))).unwrap();
    }
    async fn submit(&self, desc: &str, max_retries: u32) -> anyhow::Result<String> {
        self.hub.submit(SubmitTask { max_retries, ..SubmitTask::new(desc) }).await
    }
}

/// How many times the task entered `to` (history rows that stay in a status are not entries).
fn count(t: &TaskDetail, to: TaskStatus) -> usize {
    t.history.iter().filter(|h| h.to == to && h.from != Some(to)).count()
}

fn reasons(t: &TaskDetail) -> Vec<&str> {
    t.history.iter().map(|h| h.reason.as_str()).collect()
}

/// The task's files the sidecar owns in the results dir (`.started`, `.json`, `.progress`).
fn task_files(dir: &Path, id: &str) -> Vec<String> {
    let ours = |n: &str| ["started", "json", "progress"].iter().any(|ext| n == format!("{id}.{ext}"));
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| ours(n)).collect())
        .unwrap_or_default()
}

/// The task completed exactly once, on its first assignment, and left no files behind.
/// Runs one task with no retries on a sidecar waking the agent in `mode` (None: no wake
/// command) and returns the reason it ended in the dead letter queue.
async fn dead_letter_reason(mode: Option<&str>, extra: &str) -> anyhow::Result<String> {
    let e = Env::new("")?;
    let _s = e.sidecar("a1", mode, extra).await?;
    let id = e.submit(&format!("runs as {mode:?}"), 0).await?;
    let t = e.hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    Ok(t.task.last_error.unwrap_or_default())
}

async fn completed_once(e: &Env, s: &Sidecar, id: &str) -> anyhow::Result<TaskView> {
    let t = e.hub.wait_status(id, TaskStatus::Completed).await?;
    assert_eq!(count(&t, TaskStatus::Completed), 1, "{t:?}");
    assert_eq!(t.task.attempts, 1, "never reassigned: {t:?}");
    // Result files go only after the hub's ack; wait for the sidecar to clear the queue.
    cleared(s, id).await?;
    Ok(t.task)
}

/// Waits until the sidecar holds no task and `id` has no file left in the results dir.
async fn cleared(s: &Sidecar, id: &str) -> R {
    testkit::eventually("the sidecar to clear the task", || async {
        let (q, files) = (s.queue(), task_files(&s.results(), id));
        if q["active"].is_null() && q["recovering"].is_null() && files.is_empty() {
            Ok(())
        } else {
            Err(format!("{q} {files:?}"))
        }
    })
    .await
}

/// Waits until the hub lists its first agent as `connected` (or not).
async fn agent_connected(e: &Env, want: bool) -> R {
    testkit::eventually("the agent's presence at the hub", || async {
        let a = e.hub.admin_client().call(&ListAgents::default()).await.map_err(|e| e.to_string())?;
        (a.agents.first().is_some_and(|a| a.connected == want)).then_some(()).ok_or_else(|| format!("{a:?}"))
    })
    .await
}

#[tokio::test]
async fn success_with_progress_and_cleanup() -> R {
    let e = Env::new("")?;
    let s = e.sidecar("a1", Some("success"), "").await?;
    let id = e.submit("say hello", 3).await?;
    let t = completed_once(&e, &s, &id).await?;
    assert_eq!(t.result, Some(json!({"status": "success", "answer": 42, "task": id})));
    assert_eq!(t.progress, Some(json!({"step": "two"})), "the last progress line reached the hub");
    let detail = e.hub.task(&id).await?;
    assert!(reasons(&detail).contains(&"wake_result success (attempt 1)"), "{:?}", reasons(&detail));
    assert!(s.queue()["active"].is_null());
    let agents = e.hub.admin_client().call(&ListAgents::default()).await?;
    assert_eq!(agents.agents[0].client_type.as_deref(), Some("sidecar"));
    Ok(())
}

#[tokio::test]
async fn failure_result_is_reported_with_its_reason() -> R {
    let e = Env::new("")?;
    let s = e.sidecar("a1", Some("fail"), "").await?;
    let id = e.submit("break", 0).await?;
    let t = e.hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    assert_eq!(t.task.last_error.as_deref(), Some("compile error"));
    cleared(&s, &id).await
}

#[tokio::test]
async fn wake_failures_are_retried_then_fail_the_task() -> R {
    let e = Env::new("")?;
    let _s = e.sidecar("a1", Some("exit3"), "").await?;
    let id = e.submit("wake me", 0).await?;
    let t = e.hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    assert_eq!(t.task.last_error.as_deref(), Some("wake_failed_after_3_attempts"));
    let wakes: Vec<&str> = reasons(&t).into_iter().filter(|r| r.starts_with("wake_result")).collect();
    assert_eq!(wakes.len(), 4, "the first try and three retries: {wakes:?}");
    assert!(
        wakes[0].starts_with("wake_result failed (attempt 1): exit status: 3")
            && wakes[0].contains("boom from the wake")
    );
    assert!(wakes[3].starts_with("wake_result failed (attempt 4)"));
    assert_eq!(e.runs().len(), 4);
    Ok(())
}

#[tokio::test]
async fn no_wake_command_fails_the_task() -> R {
    assert_eq!(dead_letter_reason(None, "").await?, "no_wake_command_configured");
    Ok(())
}

#[tokio::test]
async fn confirmation_timeout() -> R {
    assert_eq!(dead_letter_reason(Some("nostart"), "confirmation_timeout_ms = 300").await?, "confirmation_timeout");
    Ok(())
}

#[tokio::test]
async fn result_parse_error() -> R {
    let reason = dead_letter_reason(Some("garbage"), "").await?;
    assert!(reason.starts_with("result_parse_error: "), "{reason}");
    Ok(())
}

#[tokio::test]
async fn agent_exiting_without_result_fails_the_task() -> R {
    let reason = dead_letter_reason(Some("quit"), "").await?;
    assert!(reason.starts_with("agent_exited_without_result"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn task_text_never_runs_as_a_command() -> R {
    let e = Env::new("")?;
    let work = e.root.path().join("work");
    std::fs::create_dir_all(&work)?;
    let wake = "printf '%s' ${TASK_DESCRIPTION} > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.desc\"; \
                printf '%s' ${TASK_ID} > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.id\"; \
                touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"; \
                echo '{\"status\":\"success\"}' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"";
    let token = e.hub.token("a1").await?;
    let mut cfg = testkit::sidecar_config("a1", &token, &e.hub.ws_url(), Some(wake));
    cfg.push_str(&format!("repo_dir = {}\n", testkit::toml_string(&work.display().to_string())));
    let s = Sidecar::start(bin(), &e.root.path().join("a1"), &cfg)?;
    for evil in ["$(touch X)", "`touch X`", "'; touch X; '", "\"; touch X; \"", "x && touch X", "$(touch ./X)"] {
        let id = e.submit(evil, 0).await?;
        e.hub.wait_status(&id, TaskStatus::Completed).await?;
        cleared(&s, &id).await?;
        assert!(!work.join("X").exists(), "{evil:?} ran as a command");
    }
    assert!(!s.results().join("X").exists());
    Ok(())
}

#[tokio::test]
async fn description_reaches_the_agent_verbatim() -> R {
    let e = Env::new("")?;
    let wake = "printf '%s' ${TASK_DESCRIPTION} > \"$AGENTCOM_RESULTS_DIR/../seen.txt\"; \
                cp \"$AGENTCOM_TASK_FILE\" \"$AGENTCOM_RESULTS_DIR/../task.json\"; \
                touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"; \
                echo '{\"status\":\"success\"}' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"";
    let token = e.hub.token("a1").await?;
    let s = Sidecar::start(
        bin(),
        &e.root.path().join("a1"),
        &testkit::sidecar_config("a1", &token, &e.hub.ws_url(), Some(wake)),
    )?;
    let text = "it's a \"quoted\" $HOME `x` \\ task\nwith two lines";
    let mut task = SubmitTask::new(text);
    task.metadata.insert("k".into(), json!(1));
    task.extra.insert("repo".into(), json!("r"));
    let id = e.hub.submit(task).await?;
    completed_once(&e, &s, &id).await?;
    assert_eq!(std::fs::read_to_string(s.dir.join("seen.txt"))?, text);
    let task: Value = serde_json::from_slice(&std::fs::read(s.dir.join("task.json"))?)?;
    assert_eq!((task["task_id"].as_str(), task["description"].as_str()), (Some(id.as_str()), Some(text)));
    assert_eq!((task["metadata"]["k"].as_i64(), task["repo"].as_str()), (Some(1), Some("r")));
    Ok(())
}

#[tokio::test]
async fn cancel_mid_work_kills_the_agent_and_frees_the_sidecar() -> R {
    let e = Env::new("")?;
    let s = e.sidecar("a1", Some("hang"), "").await?;
    let id = e.submit("long job", 0).await?;
    s.wait_phase("working").await?;
    let child_pid: i32 = testkit::eventually("the agent's child pid", || async {
        let p = std::fs::read_to_string(e.control().join("child.pid")).map_err(|e| e.to_string())?;
        p.trim().parse().map_err(|e| format!("{p:?}: {e}"))
    })
    .await?;
    let wake_pid = e.first_wake_pid().await?;
    let st = e.hub.admin_client().call(&proto::api::CancelTask { task_id: id.clone() }).await.map(|_| 200).unwrap_or(0);
    assert_eq!(st, 200);
    testkit::eventually("the agent's process group to be stopped by the cancel", || async {
        match (testkit::alive(child_pid), testkit::alive(wake_pid)) {
            (false, false) => Ok(()),
            alive => Err(format!("child, wake alive: {alive:?}")),
        }
    })
    .await?;
    cleared(&s, &id).await?;
    e.rewrite_wake("a1", "success");
    drop(s);
    let s = e.restart("a1")?;
    let next = e.submit("after the cancel", 0).await?;
    completed_once(&e, &s, &next).await?;
    Ok(())
}

/// Kills the sidecar with SIGKILL while the task is in `phase`, lets the agent finish while
/// it is down where the phase allows, restarts it, and checks the task completes exactly once.
async fn crash_in(phase: &str, mode: &str) -> R {
    let e = Env::new("")?;
    let mut s = e.sidecar("a1", Some(mode), "").await?;
    let id = e.submit(&format!("crash while {phase}"), 0).await?;
    s.wait_phase(phase).await?;
    s.kill9();
    e.go();
    let s = e.restart("a1")?;
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn sigkill_while_waking_reruns_the_unconfirmed_wake() -> R {
    let e = Env::new("")?;
    let mut s = e.sidecar("a1", Some("block-wake"), "").await?;
    let id = e.submit("crash while waking", 0).await?;
    s.wait_phase("waking").await?;
    let first = e.first_wake_pid().await?;
    s.kill9();
    assert!(testkit::alive(first), "the wake outlives the sidecar (own process group)");
    // The recovered sidecar stops the orphaned wake and runs it again.
    restart_replaces_the_wake(&e, &id, first).await
}

/// Restarts the sidecar and checks it stops the wake `first` left by its earlier run, wakes
/// the task once more, and completes it exactly once.
async fn restart_replaces_the_wake(e: &Env, id: &str, first: i32) -> R {
    let s = e.restart("a1")?;
    testkit::eventually("the old wake to be replaced", || async {
        match (testkit::alive(first), e.runs()) {
            (false, runs) if runs.len() >= 2 => Ok(()),
            (alive, runs) => Err(format!("first alive: {alive}, runs: {runs:?}")),
        }
    })
    .await?;
    e.go();
    completed_once(e, &s, id).await?;
    assert_eq!(e.runs().len(), 2);
    Ok(())
}

#[tokio::test]
async fn sigkill_while_waiting_for_confirmation() -> R {
    crash_in("waking_confirmation", "background").await
}

#[tokio::test]
async fn sigkill_while_working_never_reruns_a_confirmed_wake() -> R {
    let e = Env::new("")?;
    let mut s = e.sidecar("a1", Some("block-work"), "").await?;
    let id = e.submit("crash while working", 0).await?;
    s.wait_phase("working").await?;
    s.kill9();
    e.go();
    let s = e.restart("a1")?;
    completed_once(&e, &s, &id).await?;
    assert_eq!(e.runs().len(), 1, "a confirmed wake is never run again");
    Ok(())
}

/// Kills the sidecar while its wake blocks, then rewinds `queue.json` to the instant after the
/// accept was persisted and acked, as if the crash came before the wake was recorded.
async fn crash_before_the_wake_is_recorded(e: &Env) -> anyhow::Result<(String, i32)> {
    let mut s = e.sidecar("a1", Some("block-wake"), "").await?;
    let id = e.submit("crash right after accept", 0).await?;
    s.wait_phase("waking").await?;
    let pid = e.first_wake_pid().await?;
    s.kill9();
    let qpath = s.state().join("queue.json");
    let mut q: Value = serde_json::from_slice(&std::fs::read(&qpath)?)?;
    q["active"]["status"] = json!("accepted");
    q["active"]["wake_attempts"] = json!(0);
    q["active"]["wake_pgid"] = Value::Null;
    std::fs::write(&qpath, serde_json::to_vec(&q)?)?;
    Ok((id, pid))
}

#[tokio::test]
async fn sigkill_after_accept_before_the_wake() -> R {
    let e = Env::new("")?;
    let (id, pid) = crash_before_the_wake_is_recorded(&e).await?;
    // No wake ran at all.
    let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))?;
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)?;
    e.go();
    let s = e.restart("a1")?;
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn sigkill_between_spawn_and_record_stops_the_unrecorded_wake() -> R {
    let e = Env::new("")?;
    let (id, first) = crash_before_the_wake_is_recorded(&e).await?;
    assert!(testkit::alive(first));
    // Found by its environment, not by a recorded pid, and replaced.
    restart_replaces_the_wake(&e, &id, first).await
}

#[tokio::test]
async fn result_written_while_the_hub_is_down_is_reported_once_after_both_restart() -> R {
    let mut e = Env::new("")?;
    let mut s = e.sidecar("a1", Some("block-work"), "").await?;
    let id = e.submit("finish during an outage", 0).await?;
    s.wait_phase("working").await?;
    e.hub.kill9();
    e.go();
    s.wait_phase("reporting").await?;
    assert!(task_files(&s.results(), &id).iter().any(|f| f.ends_with(".json")), "kept until the hub acks");
    s.kill9();
    e.hub.restart_after_kill(bin(), &testkit::fast_config())?;
    let s = e.restart("a1")?;
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn hub_restart_mid_task() -> R {
    let mut e = Env::new("")?;
    let s = e.sidecar("a1", Some("block-work"), "").await?;
    let id = e.submit("survive a hub restart", 0).await?;
    s.wait_phase("working").await?;
    e.hub.kill9();
    e.hub.restart_after_kill(bin(), &testkit::fast_config())?;
    // The sidecar reconnects and claims its task with state_report before the agent finishes.
    agent_connected(&e, true).await?;
    e.go();
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn network_cut_and_restored() -> R {
    let e = Env::new("")?;
    let proxy = testkit::Proxy::start(e.hub.addr).await?;
    let token = e.hub.token("a1").await?;
    let cfg = testkit::sidecar_config("a1", &token, &proxy.ws_url(), Some(&e.wake("block-work")));
    let s = Sidecar::start(bin(), &e.root.path().join("a1"), &cfg)?;
    let id = e.submit("work through an outage", 0).await?;
    s.wait_phase("working").await?;
    // The accept travels through the proxy too: cut only once the hub has it.
    e.hub.wait_status(&id, TaskStatus::Working).await?;
    proxy.cut();
    e.go();
    s.wait_phase("reporting").await?;
    // A reconnect attempt is refused while the link is down; the hub has not seen the result.
    s.wait_log("cannot connect to the hub").await?;
    assert_eq!(e.hub.task(&id).await?.task.status, TaskStatus::Working);
    proxy.restore();
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn corrupt_queue_is_moved_aside_and_the_sidecar_carries_on() -> R {
    let e = Env::new("")?;
    let dir = e.root.path().join("a1");
    std::fs::create_dir_all(dir.join("state"))?;
    std::fs::write(dir.join("state/queue.json"), b"{\"active\": {\"task_id\": 12")?;
    let s = e.sidecar("a1", Some("success"), "").await?;
    let aside: Vec<_> = std::fs::read_dir(dir.join("state"))?
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("queue.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path())?, b"{\"active\": {\"task_id\": 12");
    let logged = s.wait_log("queue.json was corrupt; moved it aside and starting with an empty queue").await?;
    assert_eq!(logged["level"], "ERROR");
    testkit::eventually("the hub to be told of the corrupt queue", || async {
        let a = e.hub.admin_client().call(&ListAgents::default()).await.map_err(|e| e.to_string())?;
        let told = a
            .agents
            .first()
            .and_then(|a| a.reported_status.as_deref())
            .is_some_and(|r| r.starts_with("queue_corrupt: moved aside to "));
        told.then_some(()).ok_or_else(|| format!("{a:?}"))
    })
    .await?;
    let id = e.submit("after the corruption", 0).await?;
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_zero_and_keeps_the_task_for_recovery() -> R {
    let e = Env::new("")?;
    let mut s = e.sidecar("a1", Some("block-work"), "").await?;
    let id = e.submit("interrupted", 0).await?;
    s.wait_phase("working").await?;
    let status = s.terminate()?;
    assert!(status.success(), "{status:?}");
    assert_eq!(s.queue()["active"]["task_id"], id.as_str());
    agent_connected(&e, false).await?;
    e.go();
    let s = e.restart("a1")?;
    completed_once(&e, &s, &id).await?;
    Ok(())
}

#[tokio::test]
async fn agentcom_config_json_is_accepted() -> R {
    let e = Env::new("")?;
    let token = e.hub.token("v1-agent").await?;
    let dir = e.root.path().join("v1");
    std::fs::create_dir_all(&dir)?;
    let cfg = json!({
        "agent_id": "v1-agent", "token": token, "hub_url": e.hub.ws_url(), "hub_api_url": e.hub.url(),
        "wake_command": e.wake("success"), "capabilities": ["code"], "confirmation_timeout_ms": 5000,
        "results_dir": "./out", "log_file": "./sidecar.log", "some_future_key": 1
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    let s = Sidecar::start_file(bin(), &dir, &dir.join("config.json"))?;
    let id =
        e.hub.submit(SubmitTask { needed_capabilities: vec!["code".into()], ..SubmitTask::new("v1 config") }).await?;
    e.hub.wait_status(&id, TaskStatus::Completed).await?;
    assert!(dir.join("out").is_dir(), "relative results_dir resolves against the config's folder");
    drop(s);
    Ok(())
}

#[tokio::test]
async fn invalid_config_lists_every_error_and_exits_non_zero() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, "hub_url = \"http://nope\"\nping_interval_ms = 0\ncapabilities = [\"\"]\n")?;
    let out = std::process::Command::new(bin()).args(["sidecar", "--config"]).arg(&cfg).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for f in ["agent_id: required", "token: required", "hub_url:", "ping_interval_ms:", "capabilities[0]:"] {
        assert!(err.contains(f), "{f} missing: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn unusable_results_dir_is_a_clear_error_at_start() -> R {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a-file"), b"")?;
    let cfg = dir.path().join("s.toml");
    let mut text = testkit::sidecar_config("a", "t", "ws://127.0.0.1:9/ws", Some("true"));
    text.push_str(&format!(
        "results_dir = {}\n",
        testkit::toml_string(&dir.path().join("a-file/results").display().to_string())
    ));
    std::fs::write(&cfg, text)?;
    let out = std::process::Command::new(bin()).args(["sidecar", "--config"]).arg(&cfg).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("results dir") && err.contains("a-file/results"), "{err}");
    Ok(())
}

#[tokio::test]
async fn missing_results_dir_is_created() -> R {
    let e = Env::new("")?;
    let s = e.sidecar("a1", Some("success"), "").await?;
    assert!(s.results().is_dir());
    Ok(())
}

#[tokio::test]
async fn run_agent_wraps_a_plain_command_line_agent() -> R {
    let e = Env::new("")?;
    let token = e.hub.token("a1").await?;
    let ok = format!(
        "{} run-agent -- sh -c 'echo working on: \"$AGENTCOM_TASK_DESCRIPTION\"; echo done >&2'",
        sidecar_quote(bin())
    );
    let s = Sidecar::start(
        bin(),
        &e.root.path().join("a1"),
        &testkit::sidecar_config("a1", &token, &e.hub.ws_url(), Some(&ok)),
    )?;
    let id = e.submit("fix it; $(touch X)", 0).await?;
    let t = completed_once(&e, &s, &id).await?;
    let result = t.result.clone().unwrap_or_default();
    assert_eq!((result["status"].as_str(), result["exit_code"].as_i64()), (Some("success"), Some(0)), "{result}");
    let tail: Vec<&str> = result["output_tail"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(tail.contains(&"working on: fix it; $(touch X)") && tail.contains(&"done"), "{tail:?}");
    let line = t.progress.as_ref().and_then(|p| p["line"].as_str());
    assert!(line.is_some(), "output lines are forwarded as progress: {t:?}");
    drop(s);

    let token = e.hub.token("a2").await?;
    let failing = format!("{} run-agent -- sh -c 'echo oops; exit 3'", sidecar_quote(bin()));
    let _s = Sidecar::start(
        bin(),
        &e.root.path().join("a2"),
        &testkit::sidecar_config("a2", &token, &e.hub.ws_url(), Some(&failing)),
    )?;
    let task = SubmitTask { max_retries: 0, assign_to: Some("a2".into()), ..SubmitTask::new("fails") };
    let id = e.hub.submit(task).await?;
    let t = e.hub.wait_status(&id, TaskStatus::DeadLetter).await?;
    assert_eq!(t.task.last_error.as_deref(), Some("sh exited with exit status: 3"));
    Ok(())
}

fn sidecar_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Our hub never sends these, so a scripted peer on a real socket plays a misbehaving hub:
/// malformed frames are logged and ignored, and a second task while busy is rejected.
#[tokio::test]
async fn busy_rejects_and_malformed_hub_frames_are_ignored() -> R {
    let root = tempfile::tempdir()?;
    let hub = testkit::ScriptedHub::bind().await?;
    let wake = "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"";
    let cfg = testkit::merge_config(
        &testkit::sidecar_config("a", "t", &hub.ws_url(), Some(wake)),
        "ping_interval_ms = 600000\n",
    );
    let s = Sidecar::start(bin(), &root.path().join("a"), &cfg)?;
    let mut conn = hub.accept_identified().await?;
    for junk in ["{not json", r#"{"type":"task_assign","task_id":5}"#, r#"{"type":"teleport"}"#, "[]"] {
        conn.send_text(junk).await?;
    }
    let assign = |id: &str| json!({"type":"task_assign","task_id":id,"description":"d","metadata":{},"generation":1,"assigned_at":1});
    conn.send(assign("t1")).await?;
    conn.wait_for("task_accepted").await?;
    s.wait_phase("working").await?;
    conn.send(assign("t2")).await?;
    let (rejected, _) = conn.wait_for("task_rejected").await?;
    assert_eq!((rejected["task_id"].as_str(), rejected["reason"].as_str()), (Some("t2"), Some("busy")));
    assert_eq!(s.queue()["active"]["task_id"], "t1", "the held task is untouched");
    let warned = s.logs().iter().filter(|l| l.contains("ignoring a malformed frame from the hub")).count();
    assert_eq!(warned, 4, "{:?}", s.logs());
    Ok(())
}
