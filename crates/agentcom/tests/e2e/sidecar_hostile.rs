//! Hostile and odd input against the real sidecar binary (issue 9): task text that tries to
//! run as shell code, results over the hub's frame limit, FIFOs, symlinks and directories
//! where files should be, a hub that sends a task id that is a path, and data that would make
//! naive code panic. The real hub where it plays itself; a scripted hub where the hub's side
//! is the hostile one.

use crate::bin;
use proto::api::{SubmitTask, TaskStatus, TaskView};
use serde_json::{json, Value};
use std::path::PathBuf;
use testkit::{Hub, ScriptedHub, Sidecar};

type R = anyhow::Result<()>;

/// A fake agent: `$1` picks what it leaves in the results dir.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
touch "$R/$T.started"
case "$1" in
  success) echo '{"status":"success"}' > "$R/$T.json" ;;
  fifo) mkfifo "$R/$T.json" ;;
  zero) ln -s /dev/zero "$R/$T.json" ;;
  dir) mkdir "$R/$T.json" ;;
  zero-progress) ln -s /dev/zero "$R/$T.progress" ;;
  big)
    { printf '{"status":"success","x":"'; head -c 1500000 /dev/zero | tr '\0' x; printf '"}'; } > "$R/.$T.tmp"
    mv "$R/.$T.tmp" "$R/$T.json" ;;
  odd)
    printf 'not utf8 \377\376\n' >> "$R/$T.progress"
    head -c 3000000 /dev/zero | tr '\0' y >> "$R/$T.progress"
    printf '\n{"step":"after"}\n' >> "$R/$T.progress"
    printf '{"status":{"nested":"%s"}}' "$(head -c 5000 /dev/zero | tr '\0' z)" > "$R/$T.json" ;;
esac
"#;

struct Env {
    hub: Hub,
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> anyhow::Result<Env> {
        let root = tempfile::tempdir()?;
        std::fs::write(root.path().join("agent.sh"), AGENT)?;
        Ok(Env { hub: Hub::start(bin(), "")?, root })
    }
    /// The wake runs the agent in the mode last set with [`Env::mode`].
    fn wake(&self) -> String {
        let (agent, mode) = (self.root.path().join("agent.sh"), self.root.path().join("mode"));
        format!("sh '{}' \"$(cat '{}')\"", agent.display(), mode.display())
    }
    fn mode(&self, mode: &str) -> R {
        Ok(std::fs::write(self.root.path().join("mode"), mode)?)
    }
    async fn sidecar(&self, agent: &str, wake: &str, extra: &str) -> anyhow::Result<Sidecar> {
        let token = self.hub.token(agent).await?;
        let base = testkit::sidecar_config(agent, &token, &self.hub.ws_url(), Some(wake));
        Sidecar::start(bin(), &self.root.path().join(agent), &testkit::merge_config(&base, extra))
    }
    /// Runs one task to its end on `agent` (no retries); returns the task.
    async fn run(&self, agent: &str, desc: &str, end: TaskStatus) -> anyhow::Result<TaskView> {
        let task = SubmitTask { max_retries: 0, assign_to: Some(agent.into()), ..SubmitTask::new(desc) };
        let id = self.hub.submit(task).await?;
        Ok(self.hub.wait_status(&id, end).await?.task)
    }
}

async fn idle(s: &Sidecar) -> R {
    testkit::eventually("the sidecar to be idle", || async {
        let q = s.queue();
        if q["active"].is_null() && q["recovering"].is_null() {
            Ok(())
        } else {
            Err(q.to_string())
        }
    })
    .await
}

fn log_count(s: &Sidecar, message: &str) -> usize {
    s.logs().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["message"] == message).count()
}

/// Sidecar settings for a scripted hub, which never answers pings.
fn scripted_config(hub: &ScriptedHub, wake: &str) -> String {
    testkit::merge_config(&testkit::sidecar_config("a", "t", &hub.ws_url(), Some(wake)), "ping_interval_ms = 600000\n")
}

/// The payloads of issue 9 that ran on main, and quotes that broke the wake.
const PAYLOADS: &[&str] = &[
    "$(touch pwned)",
    "`touch pwned`",
    "\"; touch pwned; \"",
    "'\"$(touch pwned)\"'",
    "\\'$(touch pwned)",
    "it's a \"quoted\" $HOME * task\nwith two lines",
];

/// AgentCom's own example wake command, and a placeholder in every quoting context: the agent
/// receives exactly the task's bytes, and nothing in them runs.
#[tokio::test]
async fn placeholders_deliver_task_text_verbatim_and_never_run_it() -> R {
    let e = Env::new()?;
    let work = e.root.path().join("work");
    std::fs::create_dir_all(&work)?;
    let out = e.root.path().join("seen");
    std::fs::create_dir_all(&out)?;
    let o = out.display();
    let wake = format!(
        "printf '%s\\n' agent --message \"Task: ${{TASK_JSON}}\" --session-id ${{TASK_ID}} > '{o}/argv'; \
         printf %s \"${{TASK_DESCRIPTION}}\" > '{o}/double'; \
         printf %s '${{TASK_DESCRIPTION}}' > '{o}/single'; \
         printf %s ${{TASK_DESCRIPTION}}x > '{o}/bare'; \
         touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"; \
         echo '{{\"status\":\"success\"}}' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\""
    );
    let repo = format!("repo_dir = {}", testkit::toml_string(&work.display().to_string()));
    let s = e.sidecar("a1", &wake, &repo).await?;
    for payload in PAYLOADS {
        let t = e.run("a1", payload, TaskStatus::Completed).await?;
        let id = t.task_id.as_str();
        for file in ["double", "single"] {
            assert_eq!(std::fs::read_to_string(out.join(file))?, *payload, "{file} for {payload:?}");
        }
        assert_eq!(std::fs::read_to_string(out.join("bare"))?, format!("{payload}x"));
        let argv = std::fs::read_to_string(out.join("argv"))?;
        let lines: Vec<&str> = argv.splitn(3, '\n').collect();
        assert_eq!(lines[..2], ["agent", "--message"], "{argv}");
        let rest = lines[2].strip_prefix("Task: ").expect("the message");
        let (json_text, tail) = rest.rsplit_once("\n--session-id\n").expect("the session id");
        assert_eq!(tail, format!("{id}\n"));
        let task: Value = serde_json::from_str(json_text)?;
        assert_eq!((task["task_id"].as_str(), task["description"].as_str()), (Some(id), Some(*payload)));
        assert!(!work.join("pwned").exists(), "{payload:?} ran");
        idle(&s).await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_unsafe_wake_command_is_refused_at_start_naming_its_column() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("s.toml");
    let base =
        testkit::sidecar_config("a", "t", "ws://127.0.0.1:9/ws", Some("claude -p \"$(echo ${TASK_DESCRIPTION})\""));
    let text = testkit::merge_config(&base, "ping_interval_ms = 0\n");
    std::fs::write(&cfg, text)?;
    let out = std::process::Command::new(bin()).args(["sidecar", "--config"]).arg(&cfg).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wake_command: line 1, column 19: ${TASK_DESCRIPTION} is inside $(...)"), "{err}");
    assert!(err.contains("ping_interval_ms:"), "listed with the other errors: {err}");
    Ok(())
}

/// The hub closes on a frame over 1 MiB; on main the sidecar re-sent the result forever.
#[tokio::test]
async fn a_result_over_the_frame_limit_fails_once_and_is_kept_for_the_operator() -> R {
    let e = Env::new()?;
    e.mode("big")?;
    let s = e.sidecar("a1", &e.wake(), "").await?;
    let t = e.run("a1", "a big answer", TaskStatus::DeadLetter).await?;
    let id = t.task_id.as_str();
    let reason = t.last_error.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("result_too_large: {}", s.results().join(format!("{id}.json")).display())),
        "{reason}"
    );
    let kept = PathBuf::from(reason.rsplit_once("kept as ").map(|(_, p)| p).unwrap_or_default());
    idle(&s).await?;
    testkit::eventually("the result file set aside", || async {
        let len = std::fs::metadata(&kept).map(|m| m.len()).map_err(|e| e.to_string())?;
        (len > 1_500_000).then_some(()).ok_or_else(|| format!("{len} bytes"))
    })
    .await?;
    assert!(kept.starts_with(s.results()));
    assert!(!s.results().join(format!("{id}.json")).exists());
    assert_eq!(log_count(&s, "identified to the hub"), 1, "the connection was never closed");
    // And it serves the next task.
    e.mode("success")?;
    e.run("a1", "small this time", TaskStatus::Completed).await?;
    Ok(())
}

#[tokio::test]
async fn fifo_symlink_and_directory_results_fail_the_task_and_the_sidecar_keeps_serving() -> R {
    let e = Env::new()?;
    let mut s = e.sidecar("a2", &e.wake(), "").await?;
    for (m, want) in [
        ("fifo", "is a FIFO, not a regular file"),
        ("zero", "is a symbolic link, not a regular file"),
        ("dir", "is a directory, not a regular file"),
        ("zero-progress", "progress_file_invalid"),
    ] {
        e.mode(m)?;
        let t = e.run("a2", m, TaskStatus::DeadLetter).await?;
        let reason = t.last_error.as_deref().unwrap_or_default();
        assert!(reason.contains(want), "{m}: {reason}");
        idle(&s).await?;
    }
    assert_eq!(log_count(&s, "task failed"), 4, "each bad file is reported once, not on every rescan");
    e.mode("success")?;
    e.run("a2", "a normal task", TaskStatus::Completed).await?;
    assert!(s.terminate()?.success(), "SIGTERM still ends it");
    Ok(())
}

#[tokio::test]
async fn odd_progress_and_results_never_panic() -> R {
    let e = Env::new()?;
    e.mode("odd")?;
    let s = e.sidecar("a1", &e.wake(), "").await?;
    let t = e.run("a1", "odd data", TaskStatus::DeadLetter).await?;
    let reason = t.last_error.as_deref().unwrap_or_default();
    assert!(reason.starts_with("status: {\"nested\":\"zzz") && reason.chars().count() <= 210, "{reason}");
    assert_eq!(t.progress, Some(json!({"step": "after"})), "progress after a 3 MB line still arrives");
    idle(&s).await?;
    assert!(s.logs().iter().all(|l| !l.contains("panicked")));
    Ok(())
}

/// A hub (or anyone on a cleartext ws:// path) sends a task id that is a path: the sidecar
/// rejects it and never reads, writes or deletes anything by it.
#[tokio::test]
async fn a_task_id_that_is_a_path_is_rejected_and_never_used() -> R {
    let root = tempfile::tempdir()?;
    let victim = root.path().join("victim");
    std::fs::create_dir_all(&victim)?;
    std::fs::write(victim.join("data.json"), b"precious")?;
    std::fs::write(victim.join("data.started"), b"")?;
    let hub = ScriptedHub::bind().await?;
    let wake = "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"";
    let s = Sidecar::start(bin(), &root.path().join("a"), &scripted_config(&hub, wake))?;
    let mut conn = hub.accept_identified().await?;
    let evil = "../../victim/data";
    let assign = |id: &str| json!({"type": "task_assign", "task_id": id, "description": "d", "metadata": {}, "generation": 1, "assigned_at": 1});
    conn.send(assign(evil)).await?;
    let (rejected, _) = conn.wait_for("task_rejected").await?;
    assert_eq!(rejected["task_id"], evil);
    assert!(
        rejected["reason"].as_str().unwrap_or_default().starts_with("invalid_task_id: task_id: must be"),
        "{rejected}"
    );
    for frame in [
        json!({"type": "task_cancelled", "task_id": evil, "timestamp": 0}),
        json!({"type": "task_ack", "task_id": evil, "status": "complete"}),
        json!({"type": "task_continue", "task_id": evil, "generation": 1}),
        json!({"type": "error", "error": "not_found", "task_id": evil}),
    ] {
        conn.send(frame).await?;
    }
    // Still serving: a valid task is accepted.
    conn.send(assign("fine-1")).await?;
    let (accepted, _) = conn.wait_for("task_accepted").await?;
    assert_eq!(accepted["task_id"], "fine-1");
    s.wait_phase("working").await?;
    assert_eq!(std::fs::read(victim.join("data.json"))?, b"precious");
    assert!(victim.join("data.started").exists());
    let warned = s.logs().iter().filter(|l| l.contains("ignoring a frame with an unsafe task id")).count();
    assert_eq!(warned, 4, "{:?}", s.logs());
    Ok(())
}

/// Linux refuses an environment string over 128 KiB: a task whose JSON is larger fails with
/// the reason, at once, and the sidecar goes on (a scripted hub: ours caps task sizes itself).
#[tokio::test]
async fn a_task_too_large_for_the_environment_fails_with_its_reason() -> R {
    let root = tempfile::tempdir()?;
    let hub = ScriptedHub::bind().await?;
    let wake = "printf %s \"${TASK_JSON}\" > /dev/null";
    let s = Sidecar::start(bin(), &root.path().join("a"), &scripted_config(&hub, wake))?;
    let mut conn = hub.accept_identified().await?;
    let big = "m".repeat(200 * 1024);
    conn.send(json!({"type": "task_assign", "task_id": "big-1", "description": "d", "metadata": {"blob": big},
                     "generation": 3, "assigned_at": 1}))
        .await?;
    let (failed, _) = conn.wait_for("task_failed").await?;
    assert_eq!((failed["task_id"].as_str(), failed["generation"].as_u64()), (Some("big-1"), Some(3)));
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("task_too_large_for_wake: ${TASK_JSON} (AGENTCOM_TASK_JSON)"), "{reason}");
    conn.send(json!({"type": "task_ack", "task_id": "big-1", "status": "dead_letter"})).await?;
    idle(&s).await?;
    Ok(())
}

/// `run-agent` drains any output: on main a line of invalid UTF-8 stopped its reader, and the
/// agent then blocked for good on a full pipe.
#[tokio::test]
async fn run_agent_drains_invalid_utf8_and_endless_lines() -> R {
    let e = Env::new()?;
    let wake = format!(
        "'{}' run-agent -- sh -c 'printf \"bad \\377\\376 bytes\\n\"; head -c 5000000 /dev/zero | tr \"\\0\" q; echo; echo done'",
        bin().display()
    );
    let s = e.sidecar("a1", &wake, "").await?;
    let t = e.run("a1", "noisy agent", TaskStatus::Completed).await?;
    let tail: Vec<&str> = t
        .result
        .as_ref()
        .and_then(|r| r["output_tail"].as_array())
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(tail.first().copied(), Some("bad \u{fffd}\u{fffd} bytes"), "{tail:?}");
    assert_eq!(tail.get(1).map(|l| l.len()), Some(2000), "a long line is cut, not held whole");
    assert_eq!(tail.last().copied(), Some("done"));
    idle(&s).await?;
    Ok(())
}
