//! End-to-end tests of the supervisor (real processes, real signals) and of sidecars that
//! know their process and restart on the hub's command, under the native supervisor and pm2.

use crate::bin;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use testkit::{eventually, eventually_blocking, Hub, Supervised};

type R = anyhow::Result<()>;

#[tokio::test]
async fn ps_without_a_supervisor_says_so_in_one_line() -> R {
    let s = Supervised::new(bin())?;
    let out = s.run(&["ps"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: no supervisor running"), "{err}");
    assert!(s.supervisor_pid().is_none(), "ps must not launch a supervisor");
    Ok(())
}

#[tokio::test]
async fn start_launches_the_supervisor_and_children_know_their_name() -> R {
    let s = Supervised::new(bin())?;
    let envfile = s.dir().with_file_name("env.txt");
    let script = format!(
        "echo \"$AGENTCOM_PROCESS_NAME $AGENTCOM_SUPERVISOR_SOCKET $EXTRA\" > '{}'; exec sleep 1000",
        envfile.display()
    );
    s.ok(&["start", "envy", "--env", "EXTRA=yes", "--", "sh", "-c", &script])?;
    assert!(s.supervisor_pid().is_some());
    let p = s.wait_for("envy", "online", |p| p["status"] == "online").await?;
    // `echo > file` creates the file before it writes: wait for the whole line.
    let seen = eventually("the child to write its environment", || async {
        let seen = std::fs::read_to_string(&envfile).unwrap_or_default();
        if seen.ends_with('\n') {
            Ok(seen)
        } else {
            Err(seen)
        }
    })
    .await?;
    assert_eq!(seen.trim(), format!("envy {} yes", s.dir().canonicalize()?.join("supervisor.sock").display()));
    // ps --json: documented field names and types.
    for (k, check) in [
        ("name", p["name"].is_string()),
        ("pid", p["pid"].as_u64().is_some_and(|v| v > 0)),
        ("status", p["status"].is_string()),
        ("uptime_ms", p["uptime_ms"].is_u64()),
        ("restart_count", p["restart_count"] == 0),
        ("memory_bytes", p["memory_bytes"].as_u64().is_some_and(|v| v > 0)),
        ("cpu_percent", p["cpu_percent"].is_number()),
        ("exit_code", p.get("exit_code").is_some()),
    ] {
        assert!(check, "field {k} in {p}");
    }
    let table = s.ok(&["ps"])?;
    assert!(table.starts_with("ID  NAME") && table.contains("envy") && table.contains("online"), "{table}");
    Ok(())
}

#[tokio::test]
async fn crash_restarts_with_backoff_then_errored_until_restart() -> R {
    let s = Supervised::new(bin())?;
    let runs = s.dir().with_file_name("runs.txt");
    let script = format!("date +%s%N >> '{}'; exit 3", runs.display());
    s.ok(&["start", "crasher", "--max-restarts", "3", "--restart-backoff-ms", "100", "--", "sh", "-c", &script])?;
    let p = s.wait_for("crasher", "errored", |p| p["status"] == "errored").await?;
    assert_eq!(p["restart_count"], 3);
    assert_eq!(p["exit_code"], 3);
    assert_eq!(p["pid"], 0);
    let stamps: Vec<u128> = std::fs::read_to_string(&runs)?.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(stamps.len(), 4, "first run and three restarts");
    let gaps: Vec<f64> = stamps.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    // A backoff happened: the later restarts waited at least 100 ms, then 150 ms (x1.5).
    // (How soon the first one comes is a figure for the bench, not a test.)
    assert!(gaps[1] >= 100.0 && gaps[2] >= 150.0, "gaps {gaps:?}");
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "crasher"])?)?;
    assert!(d["last_restart_reason"].as_str().unwrap().contains("within min_uptime"), "{d}");
    s.ok(&["restart", "crasher"])?;
    eventually("restart to clear errored and run it again", || async {
        let n = std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        if n >= 5 {
            Ok(())
        } else {
            Err(format!("{n} runs"))
        }
    })
    .await
}

#[tokio::test]
async fn stop_kills_grandchildren_and_reports_only_when_all_are_gone() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "family", "--", "sh", "-c", "sleep 1000 & sleep 1000 & wait"])?;
    let p = s.wait_for("family", "online", |p| p["status"] == "online").await?;
    let pgid = p["pid"].as_i64().unwrap() as i32;
    let members = eventually("the children to start", || async {
        let m = Supervised::group(pgid);
        if m.len() >= 3 {
            Ok(m)
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await?;
    assert_eq!(s.ok(&["stop", "family"])?.trim(), "stopped family");
    for pid in &members {
        assert!(!testkit::alive(*pid), "{pid} of the group survived the stop");
    }
    assert_eq!(s.proc("family")?["status"], "stopped");
    s.ok(&["delete", "family"])?;
    assert!(s.proc("family").is_err());
    Ok(())
}

#[tokio::test]
async fn kill_timeout_escalates_to_sigkill() -> R {
    let s = Supervised::new(bin())?;
    let ready = s.dir().with_file_name("trapped");
    let stubborn = format!("trap '' TERM; touch '{}'; while :; do sleep 0.05; done", ready.display());
    s.ok(&["start", "stubborn", "--kill-timeout-ms", "300", "--", "sh", "-c", &stubborn])?;
    let p = s.wait_for("stubborn", "online", |p| p["status"] == "online").await?;
    // Online means spawned; the shell ignores TERM only once it has run the trap.
    eventually("the child to set its trap", || async {
        if ready.exists() {
            Ok(())
        } else {
            Err("no".into())
        }
    })
    .await?;
    let pid = p["pid"].as_i64().unwrap() as i32;
    let t0 = Instant::now();
    s.ok(&["stop", "stubborn"])?;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300), "stopped before the kill timeout: {took:?}");
    assert!(!testkit::alive(pid));
    assert!(Supervised::group(pid).is_empty());
    Ok(())
}

#[tokio::test]
async fn logs_rotate_and_follow_loses_no_line() -> R {
    let s = Supervised::new(bin())?;
    let chatty = "i=0; while :; do i=$((i+1)); echo \"line $i\"; echo \"warn $i\" >&2; sleep 0.003; done";
    s.ok(&["start", "chatty", "--log-max-bytes", "3000", "--log-keep", "2", "--", "sh", "-c", chatty])?;
    s.wait_for("chatty", "online", |p| p["status"] == "online").await?;
    let mut follow = s.cmd(&["logs", "chatty", "-f", "--lines", "0"]).stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut nums = Vec::new();
    let logs = s.dir().join("logs");
    // Until two rotations happened while following and enough lines came through.
    let followed = eventually_blocking("two rotations while following", || {
        while let Ok(l) = rx.try_recv() {
            if let Some(n) = l
                .strip_prefix("[out] ")
                .and_then(|r| r.rsplit("line ").next())
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                nums.push(n);
            }
        }
        if logs.join("chatty-out.log.2").exists() && nums.len() > 100 {
            Ok(())
        } else {
            Err(format!("{} lines", nums.len()))
        }
    });
    let _ = follow.kill();
    let _ = follow.wait();
    followed?;
    assert!(logs.join("chatty-out.log.1").exists(), "no rotation happened");
    assert!(logs.join("chatty-out.log.2").exists() && !logs.join("chatty-out.log.3").exists(), "keep = 2");
    assert!(nums.len() > 100, "followed only {} lines", nums.len());
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "a gap in the followed lines: {nums:?}");
    let tail = s.ok(&["logs", "chatty", "--lines", "5"])?;
    assert_eq!(tail.lines().count(), 5, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("[out] 20") || l.starts_with("[err] 20")), "timestamped: {tail}");
    Ok(())
}

#[tokio::test]
async fn supervisor_restarted_brings_desired_processes_back() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "keep", "--", "sleep", "1000"])?;
    s.ok(&["start", "parked", "--", "sleep", "1000"])?;
    let before = s.wait_for("keep", "online", |p| p["status"] == "online").await?;
    s.ok(&["stop", "parked"])?;
    let old = before["pid"].as_i64().unwrap() as i32;
    let sup = s.supervisor_pid().unwrap();
    testkit::signal(sup as u32, nix::sys::signal::Signal::SIGKILL)?;
    eventually("the supervisor to die", || async {
        if testkit::alive(sup) {
            Err("alive".into())
        } else {
            Ok(())
        }
    })
    .await?;
    assert!(testkit::alive(old), "children outlive a killed supervisor");
    let mut daemon =
        s.cmd(&["supervisor"]).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    let after = s
        .wait_for("keep", "online again", |p| p["status"] == "online" && p["pid"].as_i64() != Some(old as i64))
        .await?;
    assert!(!testkit::alive(old), "the orphan from before was stopped, not left running");
    assert_eq!(s.proc("parked")?["status"], "stopped", "a stopped process stays stopped");
    assert!(after["pid"].as_u64().unwrap() > 0);
    testkit::signal(daemon.id(), nix::sys::signal::Signal::SIGTERM)?;
    let status = testkit::wait_exit(&mut daemon)?;
    assert!(status.success());
    assert!(!testkit::alive(after["pid"].as_i64().unwrap() as i32), "a stopping supervisor stops its children");
    Ok(())
}

#[tokio::test]
async fn failing_health_check_and_memory_limit_restart_the_process() -> R {
    let s = Supervised::new(bin())?;
    let flag = s.dir().with_file_name("healthy");
    let health = format!("test -f '{}'", flag.display());
    s.ok(&[
        "start",
        "sick",
        "--health-cmd",
        &health,
        "--health-interval-ms",
        "50",
        "--health-failures",
        "1",
        "--",
        "sleep",
        "1000",
    ])?;
    s.wait_for("sick", "restarted", |p| p["restart_count"].as_u64() >= Some(1)).await?;
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "sick"])?)?;
    assert!(d["last_restart_reason"].as_str().unwrap().starts_with("health check failed 2 times"), "{d}");
    std::fs::write(&flag, b"")?;
    // Counted after the fix: a restart already decided may still land, none after it.
    let count = s.proc("sick")?["restart_count"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.proc("sick")?["restart_count"].as_u64().unwrap() <= count + 1, "healthy again: no more restarts");

    let hog = "x=$(head -c 40000000 /dev/zero | tr '\\0' a); sleep 1000";
    s.ok(&["start", "hog", "--max-memory-bytes", "20000000", "--", "sh", "-c", hog])?;
    s.wait_for("hog", "restarted for memory", |p| p["restart_count"].as_u64() >= Some(1)).await?;
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "hog"])?)?;
    assert!(d["last_restart_reason"].as_str().unwrap().starts_with("memory"), "{d}");
    Ok(())
}

// ---- sidecars under a supervisor ----------------------------------------------------------

const WORKER: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; C="$CONTROL"
echo "$T $$" >> "$C/runs"
touch "$R/$T.started"
while [ ! -f "$C/go" ]; do sleep 0.02; done
echo '{"status":"success"}' > "$R/$T.json"
"#;

struct Fleet {
    hub: Hub,
    root: tempfile::TempDir,
}

impl Fleet {
    fn new() -> anyhow::Result<Fleet> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("control"))?;
        std::fs::write(root.path().join("worker.sh"), WORKER)?;
        Ok(Fleet { hub: Hub::start(bin(), "")?, root })
    }

    async fn config(&self, agent: &str) -> anyhow::Result<std::path::PathBuf> {
        let token = self.hub.token(agent).await?;
        let wake = format!(
            "CONTROL='{}' sh '{}'",
            self.root.path().join("control").display(),
            self.root.path().join("worker.sh").display()
        );
        let dir = self.root.path().join(agent);
        std::fs::create_dir_all(&dir)?;
        let cfg = testkit::sidecar_config(agent, &token, &self.hub.ws_url(), Some(&wake));
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, cfg)?;
        Ok(path)
    }

    async fn agent(&self, id: &str) -> anyhow::Result<Value> {
        let (_, a) = self.hub.admin().get("/api/agents").await?;
        Ok(a["agents"].as_array().unwrap().iter().find(|x| x["agent_id"] == id).cloned().unwrap_or(Value::Null))
    }

    async fn wait_agent(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        eventually(&format!("agent {id} {what}"), || async {
            match self.agent(id).await {
                Ok(a) if pred(&a) => Ok(a),
                Ok(a) => Err(a.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    async fn restart(&self, id: &str, force: bool) -> anyhow::Result<()> {
        let (st, v) = self
            .hub
            .admin()
            .post(&format!("/api/admin/agents/{id}/restart"), json!({"reason": "test", "force": force}))
            .await?;
        anyhow::ensure!(st == 200, "restart: {st} {v}");
        Ok(())
    }
}

#[tokio::test]
async fn hub_restart_command_restarts_a_sidecar_under_the_native_supervisor() -> R {
    let f = Fleet::new()?;
    let s = Supervised::new(bin())?;
    let cfg = f.config("sc1").await?;
    s.ok(&["start", "sc1", "--", bin().to_str().unwrap(), "sidecar", "--config", cfg.to_str().unwrap()])?;
    let a = f.wait_agent("sc1", "identified", |a| a["connected"] == true).await?;
    assert_eq!(a["process_info"]["supervisor"], "native");
    assert_eq!(a["process_info"]["name"], "sc1");
    assert_eq!(a["process_info"]["restart_count"], 0);
    assert_eq!(a["pm2_info"]["name"], "sc1", "also sent as AgentCom's pm2_info");
    let pid = s.proc("sc1")?["pid"].as_u64().unwrap();
    f.restart("sc1", false).await?;
    let back = f
        .wait_agent("sc1", "re-identified after the restart", |a| {
            a["connected"] == true && a["process_info"]["restart_count"] == 1
        })
        .await?;
    assert_eq!(back["status"], "idle");
    let p = s.proc("sc1")?;
    assert_ne!(p["pid"].as_u64().unwrap(), pid, "a new process");
    assert_eq!(p["exit_code"], 0, "the sidecar exited cleanly");
    Ok(())
}

#[tokio::test]
async fn restart_commanded_mid_task_waits_for_the_task() -> R {
    let f = Fleet::new()?;
    let s = Supervised::new(bin())?;
    let cfg = f.config("sc2").await?;
    s.ok(&["start", "sc2", "--", bin().to_str().unwrap(), "sidecar", "--config", cfg.to_str().unwrap()])?;
    f.wait_agent("sc2", "identified", |a| a["connected"] == true).await?;
    let id = f
        .hub
        .submit(
            proto::api::SubmitTask::from_json(
                json!({"description": "long", "max_retries": 0}).as_object().unwrap().clone(),
            )
            .unwrap(),
        )
        .await?;
    f.wait_agent("sc2", "working", |a| a["status"] == "working").await?;
    let started = f.root.path().join("sc2/results").join(format!("{id}.started"));
    eventually("the agent to confirm the task", || async {
        if started.exists() {
            Ok(())
        } else {
            Err("no .started".into())
        }
    })
    .await?;
    f.restart("sc2", false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = f.agent("sc2").await?;
    assert_eq!(
        (a["status"].as_str(), a["connected"].as_bool()),
        (Some("working"), Some(true)),
        "deferred while working: {a}"
    );
    assert_eq!(s.proc("sc2")?["restart_count"], 0);
    std::fs::write(f.root.path().join("control/go"), b"")?;
    let t = serde_json::to_value(f.hub.wait_status(&id, proto::api::TaskStatus::Completed).await?)?;
    f.wait_agent("sc2", "back after the deferred restart", |a| {
        a["connected"] == true && a["process_info"]["restart_count"] == 1
    })
    .await?;
    let t2 = serde_json::to_value(f.hub.task(&id).await?)?;
    let completions = t2["history"].as_array().unwrap().iter().filter(|h| h["to"] == "completed").count();
    assert_eq!((completions, t["attempts"].as_u64()), (1, Some(1)), "completed exactly once");
    let runs = std::fs::read_to_string(f.root.path().join("control/runs"))?;
    assert_eq!(runs.lines().count(), 1, "the agent ran once");
    Ok(())
}

#[tokio::test]
async fn without_a_supervisor_the_restart_is_refused_and_the_sidecar_stays() -> R {
    let f = Fleet::new()?;
    let cfg = f.config("lonely").await?;
    let sc = testkit::Sidecar::start_file(bin(), cfg.parent().unwrap(), &cfg)?;
    let a = f.wait_agent("lonely", "identified", |a| a["connected"] == true).await?;
    assert_eq!(a["process_info"]["supervisor"], "none");
    // `agentcom agent restart` waits for the answer and fails with the sidecar's reason.
    let events = testkit::Follower::start(f.hub.admin_client(), None).await?;
    let out = std::process::Command::new(bin())
        .args(["agent", "restart", "lonely", "--url", &f.hub.url(), "--token", &f.hub.admin_token])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refusal is a failure: {stderr}");
    assert!(stderr.contains("lonely refused to restart: no supervisor detected"), "{stderr}");
    let a = f.agent("lonely").await?;
    assert_eq!((a["connected"].as_bool(), a["restart"]["outcome"].as_str()), (Some(true), Some("refused")), "{a}");
    assert!(testkit::alive(sc.pid() as i32));
    events.until("the refusal in the event stream", |e| e.kind.name() == "restart").await?;
    assert!(events
        .events()
        .iter()
        .any(|e| matches!(&e.kind, proto::api::EventKind::Restart { outcome: proto::RestartOutcome::Refused, .. })));
    Ok(())
}

// ---- real pm2 -----------------------------------------------------------------------------

#[tokio::test]
async fn pm2_backend_start_ps_stop_delete_and_redaction() -> R {
    let pm2 = testkit::Pm2Home::new()?;
    let mut s = Supervised::new(bin())?;
    pm2.apply(&mut s);
    s.ok(&["start", "napper", "--backend", "pm2", "--env", "API_KEY=hunter2", "--", "sleep", "1000"])?;
    let p = s.ok(&["ps", "--json", "--backend", "pm2"])?;
    let list: Vec<Value> = serde_json::from_str(&p)?;
    let napper = list.iter().find(|e| e["name"] == "napper").expect("listed");
    assert_eq!(napper["status"], "online");
    assert!(napper["pid"].as_u64().unwrap() > 0);
    let d = s.ok(&["describe", "--json", "napper", "--backend", "pm2"])?;
    assert!(!d.contains("hunter2"), "env values are redacted");
    assert!(d.contains("<redacted>"));
    let table = s.ok(&["describe", "napper", "--backend", "pm2"])?;
    assert!(!table.contains("hunter2") && table.lines().any(|l| l.starts_with("status") && l.ends_with("online")));
    s.ok(&["stop", "napper", "--backend", "pm2"])?;
    let list: Vec<Value> = serde_json::from_str(&s.ok(&["ps", "--json", "--backend", "pm2"])?)?;
    assert_eq!(list.iter().find(|e| e["name"] == "napper").unwrap()["status"], "stopped");
    s.ok(&["delete", "napper", "--backend", "pm2"])?;
    let list: Vec<Value> = serde_json::from_str(&s.ok(&["ps", "--json", "--backend", "pm2"])?)?;
    assert!(list.iter().all(|e| e["name"] != "napper"));
    Ok(())
}

#[tokio::test]
async fn hub_restart_command_round_trip_under_real_pm2() -> R {
    let pm2 = testkit::Pm2Home::new()?;
    let f = Fleet::new()?;
    let mut s = Supervised::new(bin())?;
    pm2.apply(&mut s);
    let cfg = f.config("pm2-agent").await?;
    s.ok(&[
        "start",
        "pm2-agent",
        "--backend",
        "pm2",
        "--",
        bin().to_str().unwrap(),
        "sidecar",
        "--config",
        cfg.to_str().unwrap(),
    ])?;
    let a = f.wait_agent("pm2-agent", "identified", |a| a["connected"] == true).await?;
    assert_eq!(a["process_info"]["supervisor"], "pm2");
    assert_eq!(a["process_info"]["name"], "pm2-agent");
    assert_eq!(a["process_info"]["restart_count"], 0);
    f.restart("pm2-agent", false).await?;
    f.wait_agent("pm2-agent", "back under pm2", |a| a["connected"] == true && a["process_info"]["restart_count"] == 1)
        .await?;
    s.ok(&["delete", "pm2-agent", "--backend", "pm2"])?;
    Ok(())
}

#[tokio::test]
async fn forced_restart_mid_task_stops_the_agent_and_the_task_is_continued_after_recovery() -> R {
    let f = Fleet::new()?;
    let s = Supervised::new(bin())?;
    let cfg = f.config("sc3").await?;
    s.ok(&["start", "sc3", "--", bin().to_str().unwrap(), "sidecar", "--config", cfg.to_str().unwrap()])?;
    f.wait_agent("sc3", "identified", |a| a["connected"] == true).await?;
    let id = f
        .hub
        .submit(
            proto::api::SubmitTask::from_json(
                json!({"description": "interrupted by force", "max_retries": 0}).as_object().unwrap().clone(),
            )
            .unwrap(),
        )
        .await?;
    let runs = f.root.path().join("control/runs");
    let run_count = || std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
    eventually("the agent to start", || async {
        if run_count() >= 1 {
            Ok(())
        } else {
            Err("0 runs".into())
        }
    })
    .await?;
    f.restart("sc3", true).await?;
    // Back with restart_count 1, and the task woken again from the start on the same attempt.
    f.wait_agent("sc3", "back after the forced restart", |a| {
        a["connected"] == true && a["process_info"]["restart_count"] == 1
    })
    .await?;
    eventually("the task to be woken again after recovery", || async {
        if run_count() >= 2 {
            Ok(())
        } else {
            Err(format!("{} runs", run_count()))
        }
    })
    .await?;
    let first: i32 = std::fs::read_to_string(&runs)?.lines().next().unwrap().split(' ').nth(1).unwrap().parse()?;
    eventually("the forced restart to stop the first agent process", || async {
        if testkit::alive(first) {
            Err(format!("{first} alive"))
        } else {
            Ok(())
        }
    })
    .await?;
    std::fs::write(f.root.path().join("control/go"), b"")?;
    let t = serde_json::to_value(f.hub.wait_status(&id, proto::api::TaskStatus::Completed).await?)?;
    let completions = t["history"].as_array().unwrap().iter().filter(|h| h["to"] == "completed").count();
    assert_eq!((completions, t["attempts"].as_u64()), (1, Some(1)), "continued, not reassigned: {t}");
    Ok(())
}
