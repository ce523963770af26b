//! Agents that ask a person, and what an attempt cost (issue 11), against the real sidecar
//! binary: the real hub end to end (it stores the question, takes the answer over its API and
//! re-sends it until the sidecar confirms), and a scripted hub for what ours never does (answers
//! to questions never asked, re-deliveries on demand). Claude Code is a script printing its
//! documented `--output-format json` object.

use crate::bin;
use proto::api::{AnswerTask, GetUsage, SubmitTask, TaskStatus, UsageBy};
use serde_json::{json, Value};
use std::path::PathBuf;
use testkit::{Hub, ScriptedConn, ScriptedHub, Sidecar};

type R = anyhow::Result<()>;

/// The fake agent. `$1` picks its behaviour; CONTROL is the folder the test steers it with.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
touch "$R/$T.started"
ask() { printf '%s' "$1" > "$R/.$T.q"; mv "$R/.$T.q" "$R/$T.needs-input"; }
wait_gone() { while [ -e "$R/$T.needs-input" ] || [ -L "$R/$T.needs-input" ]; do sleep 0.02; done; }
wait_for() { while [ ! -f "$C/$1" ]; do sleep 0.02; done; }
case "$1" in
  ask)
    ask '{"question":"Deploy to prod?","options":["yes","no"]}'
    wait_gone
    answer=$(cat "$R/$T.input"); rm -f "$R/$T.input"
    echo '{"step":"got the answer"}' >> "$R/$T.progress"
    wait_for go
    printf '{"status":"success","answer":"%s"}' "$answer" > "$R/$T.json" ;;
  hostile)
    mkfifo "$R/$T.needs-input"; wait_for step1; rm -f "$R/$T.needs-input"
    ln -s /dev/zero "$R/$T.needs-input"; wait_for step2; rm -f "$R/$T.needs-input"
    printf '{nope' > "$R/$T.needs-input"; wait_for step3
    ask '{"question":"Still there?"}'
    wait_gone
    printf '{"status":"success","answer":"%s"}' "$(cat "$R/$T.input")" > "$R/$T.json" ;;
  usage)
    printf '{"input_tokens":100,"output_tokens":20,"cost_usd":0.25,"model":"m1","cost_center":"x"}' > "$R/$T.usage"
    echo '{"status":"failed","reason":"tests fail"}' > "$R/$T.json" ;;
  ask-then-finish)
    ask '{"question":"FYI: deploying"}'
    wait_for go
    echo '{"status":"success","usage":{"input_tokens":7,"output_tokens":3,"cost_usd":0.01,"model":"m2"}}' > "$R/$T.json" ;;
esac
"#;

/// Claude Code, as `claude -p ... --output-format json` prints: a log line on stderr, the
/// result object as the one line on stdout.
const CLAUDE: &str = r#"#!/bin/sh
echo "claude: working on it" >&2
case "$1" in
  success) printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"duration_ms":12000,"duration_api_ms":11000,"num_turns":4,"result":"Fixed the bug.\nAll tests pass.","stop_reason":"end_turn","session_id":"0e639165-79b1-4bd4-bb0f-4cb4c15115d4","total_cost_usd":0.0421,"usage":{"input_tokens":12,"cache_creation_input_tokens":300,"cache_read_input_tokens":15000,"output_tokens":450},"modelUsage":{"claude-haiku-4-5":{"inputTokens":100,"outputTokens":5,"costUSD":0.0021},"claude-sonnet-4-5":{"inputTokens":15212,"outputTokens":445,"costUSD":0.04}},"permission_denials":[]}' ;;
  max-turns) printf '%s\n' '{"type":"result","subtype":"error_max_turns","is_error":true,"duration_ms":9000,"num_turns":3,"session_id":"s2","total_cost_usd":0.5,"usage":{"input_tokens":1000,"output_tokens":200},"modelUsage":{"claude-sonnet-4-5":{"costUSD":0.5}},"permission_denials":[],"errors":["Reached maximum number of turns (3)"]}'; exit 1 ;;
  plain) echo "hello, no JSON here" ;;
esac
"#;

struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> anyhow::Result<Env> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("control"))?;
        std::fs::write(root.path().join("agent.sh"), AGENT)?;
        std::fs::write(root.path().join("claude.sh"), CLAUDE)?;
        Ok(Env { root })
    }
    fn control(&self, name: &str) -> R {
        Ok(std::fs::write(self.root.path().join("control").join(name), b"")?)
    }
    fn wake(&self, mode: &str) -> String {
        let (control, agent) = (self.root.path().join("control"), self.root.path().join("agent.sh"));
        format!("CONTROL='{}' sh '{}' {mode}", control.display(), agent.display())
    }
    fn claude(&self, mode: &str) -> String {
        format!(
            "'{}' run-agent --usage claude-json -- sh '{}' {mode}",
            bin().display(),
            self.root.path().join("claude.sh").display()
        )
    }
    fn dir(&self, agent: &str) -> PathBuf {
        self.root.path().join(agent)
    }
    /// A sidecar on a scripted hub (which never answers pings).
    fn scripted(&self, hub: &ScriptedHub, wake: &str) -> anyhow::Result<Sidecar> {
        let cfg = testkit::merge_config(
            &testkit::sidecar_config("a", "t", &hub.ws_url(), Some(wake)),
            "ping_interval_ms = 600000\n",
        );
        Sidecar::start(bin(), &self.dir("a"), &cfg)
    }
}

fn assign(id: &str, generation: u64) -> Value {
    json!({"type": "task_assign", "task_id": id, "description": "d", "metadata": {}, "generation": generation, "assigned_at": 1})
}

fn answer(id: &str, request_id: &str, text: &str) -> Value {
    json!({"type": "task_input", "task_id": id, "request_id": request_id, "answer": text})
}

fn log_count(s: &Sidecar, message: &str) -> usize {
    s.logs().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["message"] == message).count()
}

/// Acknowledges the report and waits until the sidecar holds nothing and left no file.
async fn finish(conn: &mut ScriptedConn, s: &Sidecar, id: &str, status: &str) -> R {
    conn.send(json!({"type": "task_ack", "task_id": id, "status": status})).await?;
    testkit::eventually("the sidecar to clear the task", || async {
        let q = s.queue();
        let files: Vec<String> = std::fs::read_dir(s.results())
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(id))
            .collect();
        (q["active"].is_null() && files.is_empty()).then_some(()).ok_or_else(|| format!("{q} {files:?}"))
    })
    .await
}

#[tokio::test]
async fn a_question_reaches_the_hub_and_its_answer_the_agent_once() -> R {
    let e = Env::new()?;
    let hub = ScriptedHub::bind().await?;
    let s = e.scripted(&hub, &e.wake("ask"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t1", 3)).await?;
    let (asked, _) = conn.wait_for("needs_input").await?;
    assert_eq!(
        asked,
        json!({"type": "needs_input", "task_id": "t1", "request_id": "g3-1", "question": "Deploy to prod?",
               "options": ["yes", "no"], "protocol_version": 1})
    );
    let queued = s.wait_phase("working").await?;
    assert_eq!(queued["needs_input"]["open"]["request_id"], "g3-1", "on record before it was sent");
    conn.send(answer("t1", "g3-1", "yes, ship it")).await?;
    let (ack, _) = conn.wait_for("task_input_ack").await?;
    assert_eq!((ack["task_id"].as_str(), ack["request_id"].as_str()), (Some("t1"), Some("g3-1")));
    let (progress, _) = conn.wait_for("task_progress").await?;
    assert_eq!(progress["progress"]["step"], "got the answer");
    // The hub delivers it again (its ack was lost): acknowledged, not written again.
    conn.send(answer("t1", "g3-1", "yes, ship it")).await?;
    conn.wait_for("task_input_ack").await?;
    assert!(!s.results().join("t1.input").exists(), "the agent consumed it; it is not written again");
    // An answer to a question never asked: ignored, no ack.
    conn.send(answer("t1", "g3-9", "?")).await?;
    s.wait_log("ignoring an answer to a question that is not open").await?;
    e.control("go")?;
    let (done, before) = conn.wait_for("task_complete").await?;
    assert!(before.iter().all(|f| f["type"] != "task_input_ack"), "no ack for g3-9: {before:?}");
    assert_eq!(done["result"], json!({"status": "success", "answer": "yes, ship it"}));
    finish(&mut conn, &s, "t1", "complete").await
}

#[tokio::test]
async fn a_question_survives_a_sidecar_crash_and_is_asked_under_the_same_request() -> R {
    let e = Env::new()?;
    let hub = ScriptedHub::bind().await?;
    let mut s = e.scripted(&hub, &e.wake("ask"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t2", 1)).await?;
    let (asked, _) = conn.wait_for("needs_input").await?;
    assert_eq!(asked["request_id"], "g1-1");
    s.kill9();
    drop(conn);
    let s = Sidecar::start_file(bin(), &e.dir("a"), &e.dir("a").join("sidecar.toml"))?;
    let mut conn = hub.accept_identified().await?;
    let (recovering, _) = conn.wait_for("task_recovering").await?;
    assert_eq!(recovering["task_id"], "t2");
    conn.send(json!({"type": "task_continue", "task_id": "t2", "generation": 1})).await?;
    let (again, before) = conn.wait_for("needs_input").await?;
    assert_eq!((again["request_id"].as_str(), again["question"].as_str()), (Some("g1-1"), Some("Deploy to prod?")));
    assert!(before.iter().all(|f| f["type"] != "needs_input"), "{before:?}");
    conn.send(answer("t2", "g1-1", "no")).await?;
    conn.wait_for("task_input_ack").await?;
    e.control("go")?;
    let (done, before) = conn.wait_for("task_complete").await?;
    assert!(before.iter().all(|f| f["type"] != "needs_input"), "asked once after the restart: {before:?}");
    assert_eq!(done["result"]["answer"], "no");
    finish(&mut conn, &s, "t2", "complete").await
}

#[tokio::test]
async fn bad_question_files_are_reported_once_each_and_never_fail_the_task() -> R {
    let e = Env::new()?;
    let hub = ScriptedHub::bind().await?;
    let s = e.scripted(&hub, &e.wake("hostile"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t3", 1)).await?;
    for (step, problem) in [("step1", "is a FIFO"), ("step2", "is a symbolic link"), ("step3", "not JSON")] {
        let (p, _) = conn.wait_for("task_progress").await?;
        let error = p["progress"]["needs_input_error"].as_str().unwrap_or_default().to_string();
        assert!(error.starts_with("t3.needs-input") && error.contains(problem), "{error}");
        e.control(step)?;
    }
    let (asked, before) = conn.wait_for("needs_input").await?;
    assert!(before.iter().all(|f| f["type"] != "task_failed"), "{before:?}");
    assert_eq!(asked["question"], "Still there?");
    conn.send(answer("t3", "g1-1", "yes")).await?;
    let (done, before) = conn.wait_for("task_complete").await?;
    assert!(before.iter().all(|f| f["type"] != "task_progress"), "each bad file reported once: {before:?}");
    assert_eq!(done["result"]["answer"], "yes");
    assert_eq!(log_count(&s, "the agent's question cannot be forwarded"), 3);
    finish(&mut conn, &s, "t3", "complete").await
}

#[tokio::test]
async fn a_usage_file_goes_with_a_failure() -> R {
    let e = Env::new()?;
    let hub = ScriptedHub::bind().await?;
    let s = e.scripted(&hub, &e.wake("usage"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t4", 2)).await?;
    let (failed, _) = conn.wait_for("task_failed").await?;
    assert_eq!(failed["reason"], "tests fail");
    assert_eq!(failed["usage"], json!({"input_tokens": 100, "output_tokens": 20, "cost_usd": 0.25, "model": "m1"}));
    finish(&mut conn, &s, "t4", "dead_letter").await
}

#[tokio::test]
async fn run_agent_reads_claude_codes_json_into_the_result_and_the_usage() -> R {
    let e = Env::new()?;
    let hub = ScriptedHub::bind().await?;
    let s = e.scripted(&hub, &e.claude("success"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t5", 1)).await?;
    let (done, before) = conn.wait_for("task_complete").await?;
    let usage = json!({"input_tokens": 15312, "output_tokens": 450, "cost_usd": 0.0421, "model": "claude-sonnet-4-5"});
    assert_eq!(done["usage"], usage);
    let result = &done["result"];
    assert_eq!(
        (result["status"].as_str(), result["result"].as_str()),
        (Some("success"), Some("Fixed the bug.\nAll tests pass."))
    );
    assert_eq!(
        (&result["usage"], result["session_id"].as_str()),
        (&usage, Some("0e639165-79b1-4bd4-bb0f-4cb4c15115d4"))
    );
    assert_eq!(result["output_tail"], json!(["claude: working on it"]), "the answer is not repeated in the tail");
    let lines: Vec<&Value> = before.iter().filter(|f| f["type"] == "task_progress").collect();
    assert_eq!(lines.len(), 2, "both output lines were streamed as progress: {before:?}");
    finish(&mut conn, &s, "t5", "complete").await?;

    // An error Claude Code reports (and its exit status) fails the task; it cost money too.
    drop(s);
    let s = e.scripted(&hub, &e.claude("max-turns"))?;
    let mut conn = hub.accept_identified().await?;
    conn.send(assign("t6", 1)).await?;
    let (failed, _) = conn.wait_for("task_failed").await?;
    assert_eq!(
        failed["reason"],
        "claude reported an error (error_max_turns): Reached maximum number of turns (3) (sh exited with exit status: 1)"
    );
    assert_eq!(
        failed["usage"],
        json!({"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.5, "model": "claude-sonnet-4-5"})
    );
    finish(&mut conn, &s, "t6", "dead_letter").await
}

/// The real hub end to end: the question shows on the task, a person answers while the
/// sidecar is down (SIGKILL), and the answer still reaches the agent once, after the restart.
#[tokio::test]
async fn the_real_hub_delivers_an_answer_given_while_the_sidecar_was_down() -> R {
    let e = Env::new()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("a1").await?;
    let cfg = testkit::sidecar_config("a1", &token, &hub.ws_url(), Some(&e.wake("ask")));
    let mut s = Sidecar::start(bin(), &e.dir("a1"), &cfg)?;
    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("asks a person") }).await?;
    let question = testkit::eventually("the question at the hub", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?.task;
        t.needs_input.clone().ok_or_else(|| format!("{t:?}"))
    })
    .await?;
    assert_eq!(
        (question.question.as_str(), question.options.as_slice()),
        ("Deploy to prod?", &["yes".to_string(), "no".to_string()][..])
    );
    assert_eq!(hub.task(&id).await?.task.status, TaskStatus::Working, "asking does not change the status");
    s.kill9();
    let answer = AnswerTask {
        task_id: id.clone(),
        answer: "yes, ship it".into(),
        request_id: Some(question.request_id.clone()),
    };
    let answered = hub.admin_client().call(&answer).await?;
    assert!(!answered.sent, "the sidecar is down");
    let s = Sidecar::start_file(bin(), &e.dir("a1"), &e.dir("a1").join("sidecar.toml"))?;
    testkit::eventually("the answer to be confirmed", || async {
        let t = hub.task(&id).await.map_err(|e| e.to_string())?.task;
        (t.answer.is_none() && t.needs_input.is_none()).then_some(()).ok_or_else(|| format!("{t:?}"))
    })
    .await?;
    e.control("go")?;
    let t = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!(t.task.result, Some(json!({"status": "success", "answer": "yes, ship it"})));
    let reasons: Vec<&str> = t.history.iter().map(|h| h.reason.as_str()).collect();
    let asked = reasons.iter().filter(|r| r.starts_with("needs input:")).count();
    let delivered = reasons.iter().filter(|r| r.starts_with("answer to ") && r.ends_with(" delivered")).count();
    assert_eq!((asked, delivered), (1, 1), "asked once, delivered once: {reasons:?}");
    assert_eq!(log_count(&s, "ignoring an answer to a question that is not open"), 0);
    Ok(())
}

/// The real hub: it takes the frames the sidecar sends for questions and usage (its schema
/// validates them field by field) and keeps the usage, and the task runs to its end as before.
#[tokio::test]
async fn the_real_hub_accepts_questions_and_usage_and_claude_json_results() -> R {
    let e = Env::new()?;
    let hub = Hub::start(bin(), "")?;
    let token = hub.token("a1").await?;
    let cfg = testkit::sidecar_config("a1", &token, &hub.ws_url(), Some(&e.wake("ask-then-finish")));
    let s = Sidecar::start(bin(), &e.dir("a1"), &cfg)?;
    let id = hub.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("asks, then finishes") }).await?;
    testkit::eventually("the question to be forwarded", || async {
        let q = s.queue();
        q["active"]["needs_input"]["open"]["request_id"].as_str().map(|_| ()).ok_or_else(|| q.to_string())
    })
    .await?;
    e.control("go")?;
    let t = hub.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!(t.task.result.as_ref().map(|r| r["usage"]["cost_usd"].clone()), Some(json!(0.01)));
    // The task's usage sums its attempts; the model is kept per attempt.
    let usage = t.task.usage.clone().unwrap_or_default();
    assert_eq!((usage.cost_usd, usage.tokens()), (Some(0.01), 10), "{t:?}");
    assert_eq!(log_count(&s, "error from the hub"), 0, "{:?}", s.logs());
    assert_eq!(log_count(&s, "identified to the hub"), 1, "never disconnected");

    for (agent, mode, end) in [
        ("c1", "success", TaskStatus::Completed),
        ("c2", "max-turns", TaskStatus::DeadLetter),
        ("c3", "plain", TaskStatus::DeadLetter),
    ] {
        let token = hub.token(agent).await?;
        let cfg = testkit::sidecar_config(agent, &token, &hub.ws_url(), Some(&e.claude(mode)));
        let _s = Sidecar::start(bin(), &e.dir(agent), &cfg)?;
        let task = SubmitTask { max_retries: 0, assign_to: Some(agent.into()), ..SubmitTask::new(mode) };
        let id = hub.submit(task).await?;
        let t = hub.wait_status(&id, end).await?.task;
        match mode {
            "success" => {
                assert_eq!(t.result.as_ref().map(|r| r["result"].clone()), Some(json!("Fixed the bug.\nAll tests pass.")));
                let usage = t.usage.clone().unwrap_or_default();
                assert_eq!((usage.cost_usd, usage.tokens()), (Some(0.0421), 15_762), "{t:?}");
            }
            "max-turns" => assert!(t.last_error.as_deref().unwrap_or_default().starts_with("claude reported an error (error_max_turns)"), "{t:?}"),
            _ => assert_eq!(
                t.last_error.as_deref(),
                Some("claude-json: no result object on stdout (expected the output of `claude -p ... --output-format json`)")
            ),
        }
    }
    let by_model = hub.admin_client().call(&GetUsage { by: UsageBy::Model, ..GetUsage::default() }).await?;
    let models: Vec<(&str, u64)> = by_model.rows.iter().map(|r| (r.key.as_str(), r.reports)).collect();
    assert_eq!(models, [("claude-sonnet-4-5", 2), ("m2", 1)], "{by_model:?}");
    Ok(())
}
