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
