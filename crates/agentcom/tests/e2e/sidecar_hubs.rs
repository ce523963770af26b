//! The sidecar with several hubs (issue 13): it tries its `hub_url`s in order, follows a
//! standby's `CLOSE_NOT_LEADER` (4001) to the leader it names only if that leader is one of
//! its own URLs, and after the leader dies finds the next one through the list, recovering its
//! task there exactly as after a hub restart. Scripted hubs play the standbys (our hub does not
//! send 4001 yet); the move with a task uses real hub binaries, the new leader taking over the
//! old one's data dir as a hub on the shared database will.

use crate::bin;
use proto::api::{SubmitTask, TaskStatus};
use serde_json::{json, Value};
use testkit::{Hub, RefusingPort, ScriptedHub, Sidecar};

type R = anyhow::Result<()>;

/// A TOML array of the URLs.
fn urls(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|u| testkit::toml_string(u)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Sidecar settings with these hubs; no pings (scripted hubs do not answer them).
fn config(hubs: &[String], wake: Option<&str>) -> String {
    let base = testkit::sidecar_config("a1", "tok", "ws://unused", wake);
    testkit::merge_config(&base, &format!("hub_url = {}\nping_interval_ms = 600000\n", urls(hubs)))
}

/// The hubs the sidecar tried to connect to, in order, from its log.
fn attempts(s: &Sidecar) -> Vec<String> {
    s.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "connecting to the hub")
        .map(|v| v["hub_url"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn log_count(s: &Sidecar, message: &str) -> usize {
    s.logs().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["message"] == message).count()
}

/// A standby that reads the sidecar's identify and closes with 4001 naming `leader`.
async fn standby_turns_away(standby: &ScriptedHub, leader: &str) -> anyhow::Result<Value> {
    let mut conn = standby.accept_ws().await?;
    let hello = conn.recv().await?;
    conn.close_with(proto::CLOSE_NOT_LEADER, leader).await?;
    Ok(hello)
}

#[tokio::test]
async fn a_standby_naming_a_configured_leader_is_followed_at_once() -> R {
    let root = tempfile::tempdir()?;
    let (standby, leader) = (ScriptedHub::bind().await?, ScriptedHub::bind().await?);
    let dead = RefusingPort::new()?;
    // The leader is last: the sidecar goes there straight from the standby, skipping the dead hub.
    let hubs = [standby.ws_url(), dead.ws_url(), leader.ws_url()];
    let s = Sidecar::start(bin(), &root.path().join("a1"), &config(&hubs, None))?;
    let hello = standby_turns_away(&standby, &leader.ws_url()).await?;
    assert_eq!(hello["type"], "identify");
    let mut conn = leader.accept_identified().await?;
    let (report, _) = conn.wait_for("state_report").await?;
    assert_eq!((report["task_id"].clone(), report["status"].as_str()), (Value::Null, Some("idle")));
    s.wait_log("identified to the hub").await?;
    assert_eq!(attempts(&s), [standby.ws_url(), leader.ws_url()]);
    assert_eq!(log_count(&s, "cannot connect to the hub"), 0, "the dead hub was never tried");
    Ok(())
}

#[tokio::test]
async fn a_leader_that_is_not_configured_is_never_followed_and_warned_about_once() -> R {
    let root = tempfile::tempdir()?;
    let (standby, leader, stranger) =
        (ScriptedHub::bind().await?, ScriptedHub::bind().await?, ScriptedHub::bind().await?);
    let hubs = [standby.ws_url(), leader.ws_url()];
    let s = Sidecar::start(bin(), &root.path().join("a1"), &config(&hubs, None))?;
    // Round one: the standby names a hub the operator never configured; the leader does not
    // know a leader yet either. Round two, after the backoff: the same, then the leader serves.
    standby_turns_away(&standby, &stranger.ws_url()).await?;
    standby_turns_away(&leader, "").await?;
    standby_turns_away(&standby, &stranger.ws_url()).await?;
    let _conn = leader.accept_identified().await?;
    s.wait_log("identified to the hub").await?;
    assert_eq!(attempts(&s), [hubs[0].clone(), hubs[1].clone(), hubs[0].clone(), hubs[1].clone()]);
    let warned = "a standby hub named a leader that is not in hub_url; not following it (the token goes only to configured hubs): add it to hub_url if it is yours";
    assert_eq!(log_count(&s, warned), 1, "once, though named twice");
    assert!(!stranger.has_pending_connection(), "the token never went to the unlisted hub");
    Ok(())
}

/// The fake agent: confirms, then finishes once the test says go.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
touch "$R/$T.started"
while [ ! -f "$CONTROL/go" ]; do sleep 0.02; done
printf '{"status":"success","task":"%s"}' "$T" > "$R/$T.json"
"#;

/// The leader dies mid-task; a standby takes over its state (here: its data dir, as hubs on
/// one PostgreSQL share it) on its own address. The sidecar finds it through its list and
/// recovers the task there with `state_report`, as after a hub restart: completed once.
#[tokio::test]
async fn after_the_leader_dies_the_task_is_recovered_at_the_next_hub_in_the_list() -> R {
    let root = tempfile::tempdir()?;
    let control = root.path().join("control");
    std::fs::create_dir_all(&control)?;
    std::fs::write(root.path().join("agent.sh"), AGENT)?;
    let wake = format!("CONTROL='{}' sh '{}'", control.display(), root.path().join("agent.sh").display());
    let mut leader = Hub::start(bin(), "")?;
    let mut standby = Hub::start(bin(), "")?;
    let dead = RefusingPort::new()?;
    let token = leader.token("a1").await?;
    let hubs = [dead.ws_url(), leader.ws_url(), standby.ws_url()];
    let cfg = testkit::merge_config(
        &testkit::sidecar_config("a1", &token, &leader.ws_url(), Some(&wake)),
        &format!("hub_url = {}\n", urls(&hubs)),
    );
    let s = Sidecar::start(bin(), &root.path().join("a1"), &cfg)?;
    let id = leader.submit(SubmitTask { max_retries: 0, ..SubmitTask::new("survive a failover") }).await?;
    s.wait_phase("working").await?;
    leader.wait_status(&id, TaskStatus::Working).await?;
    // The standby's own process goes; the one that takes over serves the leader's state on
    // the standby's address.
    let standby_addr = standby.addr.to_string();
    standby.kill9();
    leader.kill9();
    // `leader` still owns the data dir (a temp dir): it lives until the end of the test.
    let new_leader = Hub::start_at(bin(), &leader.dir, &testkit::fast_config(), &standby_addr)?;
    testkit::eventually("the sidecar to identify at the new leader", || async {
        let at = s
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "identified to the hub")
            .filter_map(|v| v["hub_url"].as_str().map(str::to_string))
            .collect::<Vec<_>>();
        (at.last() == Some(&hubs[2])).then_some(()).ok_or_else(|| format!("{at:?}"))
    })
    .await?;
    std::fs::write(control.join("go"), b"")?;
    let t = new_leader.wait_status(&id, TaskStatus::Completed).await?;
    assert_eq!(t.task.attempts, 1, "never reassigned: {t:?}");
    assert_eq!(t.task.result, Some(json!({"status": "success", "task": id})));
    let completed = t.history.iter().filter(|h| h.to == TaskStatus::Completed && h.from != Some(h.to)).count();
    assert_eq!(completed, 1);
    testkit::eventually("the sidecar to clear the task", || async {
        let q = s.queue();
        q["active"].is_null().then_some(()).ok_or_else(|| q.to_string())
    })
    .await?;
    Ok(())
}
