//! A question belongs to the attempt that asked it (issue 24): a forced restart, a sidecar
//! SIGKILL and a reassignment, each with a question open. The person's answer either reaches
//! the agent once or is refused (or shown undelivered) with the reason; never "sent" and lost.

use crate::bin;
use proto::api::{AnswerTask, ErrorCode, TaskStatus};
use serde_json::{json, Value};
use std::path::PathBuf;
use testkit::{eventually, Follower, Hub, Sidecar, Supervised};

type R = anyhow::Result<()>;

/// Asks a question named after its run (`run1?`, `run2?`, ...), waits for the answer, and puts
/// it in the result. Each run is recorded in `$C/runs` with its pid.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
echo "$AGENTCOM_AGENT_ID $$" >> "$C/runs"
n=$(wc -l < "$C/runs" | tr -d ' ')
touch "$R/$T.started"
echo '{"step":"about to ask"}' >> "$R/$T.progress"
printf '{"question":"run%s?"}' "$n" > "$R/.$T.q" && mv "$R/.$T.q" "$R/$T.needs-input"
while [ -e "$R/$T.needs-input" ]; do sleep 0.05; done
printf '{"status":"success","answer":"%s"}' "$(cat "$R/$T.input")" > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

struct Env {
    root: tempfile::TempDir,
    hub: Hub,
}

impl Env {
    fn new(hub_config: &str) -> anyhow::Result<Env> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("control"))?;
        std::fs::write(root.path().join("agent.sh"), AGENT)?;
        Ok(Env { root, hub: Hub::start(bin(), hub_config)? })
    }

    /// Writes a sidecar config for `agent` and returns its path.
    async fn config(&self, agent: &str) -> anyhow::Result<PathBuf> {
        let token = self.hub.token(agent).await?;
        let wake = format!(
            "CONTROL='{}' sh '{}'",
            self.root.path().join("control").display(),
            self.root.path().join("agent.sh").display()
        );
        let dir = self.root.path().join(agent);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, testkit::sidecar_config(agent, &token, &self.hub.ws_url(), Some(&wake)))?;
        Ok(path)
    }

    async fn sidecar(&self, agent: &str) -> anyhow::Result<Sidecar> {
        let cfg = self.config(agent).await?;
        Sidecar::start_file(bin(), cfg.parent().unwrap(), &cfg)
    }

    fn runs(&self) -> Vec<(String, i32)> {
        std::fs::read_to_string(self.root.path().join("control/runs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, p)| (a.to_string(), p.parse().unwrap_or(0))))
            .collect()
    }

    /// Waits until the task's open question is `question`; returns its request id.
    async fn asked(&self, id: &str, question: &str) -> anyhow::Result<String> {
        eventually(&format!("the question {question:?} to be open"), || async {
            let t = self.task(id).await.map_err(|e| e.to_string())?;
            match t["needs_input"]["question"].as_str() {
                Some(q) if q == question => Ok(t["needs_input"]["request_id"].as_str().unwrap_or("").to_string()),
                _ => Err(t.to_string()),
            }
        })
        .await
    }

    async fn task(&self, id: &str) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.hub.task(id).await?)?)
    }

    async fn answer(&self, id: &str, request_id: &str, text: &str) -> anyhow::Result<(u16, Value)> {
        let body = serde_json::to_value(AnswerTask {
            task_id: id.into(),
            answer: text.into(),
            request_id: Some(request_id.into()),
        })?;
        self.hub.admin().post(&format!("/api/tasks/{id}/input"), body).await
    }

    fn history(t: &Value) -> Vec<String> {
        t["history"].as_array().unwrap().iter().map(|h| h["reason"].as_str().unwrap_or("").to_string()).collect()
    }

    async fn history_has(&self, id: &str, prefix: &str) -> R {
        eventually(&format!("a history line {prefix:?}"), || async {
            let t = self.task(id).await.map_err(|e| e.to_string())?;
            let h = Env::history(&t);
            h.iter().any(|r| r.starts_with(prefix)).then_some(()).ok_or_else(|| format!("{h:#?}"))
        })
        .await
    }
}

/// The refusal of an answer to a closed question: 409 with the reason.
fn refused(st: u16, v: &Value) {
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], json!(ErrorCode::InvalidState), "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("closed unanswered"), "{v}");
}

#[tokio::test]
async fn a_forced_restart_closes_the_open_question_and_its_late_answer_is_refused() -> R {
    let e = Env::new("")?;
    let s = Supervised::new(bin())?;
    let cfg = e.config("forced").await?;
    s.ok(&["start", "forced", "--", bin().to_str().unwrap(), "sidecar", "--config", cfg.to_str().unwrap()])?;
    let id = e.hub.submit_text("ask, be restarted, ask again").await?;
    let first = e.asked(&id, "run1?").await?;
    let (st, v) =
        e.hub.admin().post("/api/admin/agents/forced/restart", json!({"reason": "stuck", "force": true})).await?;
    assert_eq!(st, 200, "{v}");
    e.history_has(&id, &format!("question {first} closed unanswered")).await?;
    let (st, v) = e.answer(&id, &first, "too late").await?;
    refused(st, &v);
    // The agent runs again from the start and asks afresh: that answer arrives.
    let second = e.asked(&id, "run2?").await?;
    assert_ne!(second, first);
    let (st, v) = e.answer(&id, &second, "go").await?;
    assert_eq!((st, v["sent"].as_bool()), (200, Some(true)), "{v}");
    let done = serde_json::to_value(e.hub.wait_status(&id, TaskStatus::Completed).await?)?;
    assert_eq!(done["result"]["answer"], "go");
    assert_eq!(done["generation"], 1, "the same attempt, continued: {done}");
    Ok(())
}

#[tokio::test]
async fn an_answer_given_while_the_sidecar_is_down_after_a_sigkill_reaches_the_agent_once() -> R {
    let e = Env::new("")?;
    let mut s = e.sidecar("killed").await?;
    let id = e.hub.submit_text("ask across a crash").await?;
    let rid = e.asked(&id, "run1?").await?;
    s.kill9();
    eventually("the hub to see the agent gone", || async {
        let (_, a) = e.hub.admin().get("/api/agents").await.map_err(|e| e.to_string())?;
        let gone = a["agents"].as_array().unwrap().iter().any(|x| x["agent_id"] == "killed" && x["connected"] == false);
        gone.then_some(()).ok_or_else(|| a.to_string())
    })
    .await?;
    let (st, v) = e.answer(&id, &rid, "while you were away").await?;
    assert_eq!((st, v["sent"].as_bool()), (200, Some(false)), "{v}");
    let cfg = e.root.path().join("killed/sidecar.toml");
    let _s = Sidecar::start_file(bin(), cfg.parent().unwrap(), &cfg)?;
    let done = serde_json::to_value(e.hub.wait_status(&id, TaskStatus::Completed).await?)?;
    assert_eq!(done["result"]["answer"], "while you were away");
    let history = Env::history(&done);
    assert_eq!(history.iter().filter(|r| *r == &format!("answer to {rid} delivered")).count(), 1, "{history:#?}");
    assert_eq!(e.runs().len(), 1, "the agent was not started again");
    Ok(())
}

#[tokio::test]
async fn a_reassigned_task_closes_its_question_and_the_next_agent_asks_afresh() -> R {
    let config = testkit::merge_config(&testkit::fast_config(), "grace_period_ms = 300\n");
    let e = Env::new(&config)?;
    let events = Follower::start(e.hub.admin_client(), None).await?;
    let mut s = e.sidecar("first").await?;
    let id = e.hub.submit_text("ask, lose the agent, ask again").await?;
    let rid = e.asked(&id, "run1?").await?;
    s.kill9();
    e.history_has(&id, &format!("question {rid} closed unanswered: its attempt ended")).await?;
    let (st, v) = e.answer(&id, &rid, "to nobody").await?;
    refused(st, &v);
    events.until("input_closed", |ev| ev.kind.name() == "input_closed").await?;
    let _next = e.sidecar("second").await?;
    let rid2 = e.asked(&id, "run2?").await?;
    let (st, _) = e.answer(&id, &rid2, "yes").await?;
    assert_eq!(st, 200);
    let done = serde_json::to_value(e.hub.wait_status(&id, TaskStatus::Completed).await?)?;
    assert_eq!((done["result"]["answer"].as_str(), done["assigned_to"].as_str()), (Some("yes"), Some("second")));
    Ok(())
}
