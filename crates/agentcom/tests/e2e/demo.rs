//! The README's run command: `agentcom demo` starts a hub, two sidecars and the sample agent,
//! and every task flows to completion.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_runs_every_task_to_completion_and_cleans_up() {
    let bin = Path::new(env!("CARGO_BIN_EXE_agentcom"));
    let out = Command::new(bin).args(["demo", "--work-ms", "150"]).env_remove("AGENTCOM_LOG").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("8 of 8 tasks completed"), "{stdout}");
    assert!(stdout.contains("waiting_retry"), "the flaky task shows a retry: {stdout}");
    assert!(stdout.contains("demo-agent-1") && stdout.contains("demo-agent-2"), "both agents worked: {stdout}");
    let data =
        stdout.lines().find_map(|l| l.split("(data in ").nth(1)).map(|d| d.trim_end_matches(')').to_string()).unwrap();
    assert!(!Path::new(&data).exists(), "the demo's temp data is removed: {data}");
}

/// Ctrl-C stops the demo as a shell expects (exit 130), after its agents are stopped and
/// reaped: none is left working once it has returned (issue 18).
#[test]
fn ctrl_c_stops_the_demo_with_130_and_leaves_no_agent_behind() {
    use std::io::{BufRead, BufReader};
    let bin = Path::new(env!("CARGO_BIN_EXE_agentcom"));
    let mut child = Command::new(bin)
        .args(["demo", "--work-ms", "60000"])
        .env_remove("AGENTCOM_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut data = None;
    // Wait until an agent works on a task: its wake shell is running then.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(d) = line.split("(data in ").nth(1) {
            data = Some(d.trim_end_matches(')').to_string());
        }
        if line.contains("working") && line.contains("demo-agent") {
            break;
        }
    }
    let data = data.expect("the demo says where its data is");
    let working = osutil::procfs::groups_with_env(&[("AGENTCOM_RESULTS_DIR", &format!("{data}/demo-agent-1/results"))]);
    let working2 =
        osutil::procfs::groups_with_env(&[("AGENTCOM_RESULTS_DIR", &format!("{data}/demo-agent-2/results"))]);
    assert!(!working.is_empty() || !working2.is_empty(), "an agent works");
    testkit::signal(child.id(), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = testkit::wait_exit(&mut child).unwrap();
    assert_eq!(status.code(), Some(130));
    for agent in ["demo-agent-1", "demo-agent-2"] {
        let left = osutil::procfs::groups_with_env(&[("AGENTCOM_RESULTS_DIR", &format!("{data}/{agent}/results"))]);
        assert!(left.is_empty(), "{agent}'s wake left running: {left:?}");
    }
    assert!(!Path::new(&data).exists(), "the demo's temp data is removed");
}
