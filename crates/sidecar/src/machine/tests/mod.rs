//! The machine against a simulated world: a fake hub with the real hub's rules (generation
//! fencing, idempotent acks of a re-sent report, continue/reassign), a results dir in memory,
//! and wakes that run scripted agents (which may ask a person and wait for the answer). Every
//! crash point of every scenario is tested: the run is cut after each action, the agents go on
//! while the sidecar is down, the machine is rebuilt from the `queue.json` the executor would
//! have left, restarted and reconnected, and the task must end exactly once with nothing left
//! over, every question asked once and every answer read once, by the question it answers.

use super::*;
use crate::config::FileConfig;
use crate::files::Observation;
use proto::HubFrame;

const ID: &str = "task-1";

pub fn cfg(wake: bool) -> Arc<SidecarConfig> {
    cfg_in(wake, false)
}

/// With `worktree`, each task runs in a worktree of `/repo` of its own.
pub fn cfg_in(wake: bool, worktree: bool) -> Arc<SidecarConfig> {
    let f = FileConfig {
        workspace: worktree.then(|| "worktree".into()),
        repo_dir: worktree.then(|| "/repo".into()),
        agent_id: Some("a1".into()),
        token: Some("t".into()),
        hub_url: Some("ws://127.0.0.1:1/ws".to_string().into()),
        wake_command: wake.then(|| "agent --task \"${TASK_JSON}\"".into()),
        results_dir: Some("/r".into()),
        state_dir: Some("/s".into()),
        confirmation_timeout_ms: Some(1000),
        wake_timeout_ms: Some(5000),
        wake_retry_delays_ms: Some(vec![10, 20]),
        rescan_interval_ms: Some(100),
        max_result_bytes: Some(1000),
        ..FileConfig::default()
    };
    Arc::new(SidecarConfig::from_file(f, std::path::Path::new("/")).unwrap())
}

mod fake_hub;
mod input;
mod units;
mod world;

use fake_hub::*;
use world::*;

fn success() -> Vec<u8> {
    br#"{"status":"success","answer":42}"#.to_vec()
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "foreground agent succeeds",
            wake: true,
            script: |_| vec![Step::Started, Step::Progress("{\"step\":1}"), Step::Result(success()), Step::Exit(true)],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: None,
        },
        Scenario {
            name: "background agent succeeds after its wake exits",
            wake: true,
            script: |_| vec![Step::Exit(true), Step::Started, Step::Progress("p"), Step::Result(success())],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: None,
        },
        Scenario {
            name: "two failed wakes, then success",
            wake: true,
            script: |attempt| match attempt {
                1 | 2 => vec![Step::Exit(false)],
                _ => vec![Step::Started, Step::Result(success()), Step::Exit(true)],
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: None,
        },
        Scenario {
            name: "every wake fails",
            wake: true,
            script: |_| vec![Step::Exit(false)],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "the agent reports a failure",
            wake: true,
            script: |_| {
                vec![Step::Started, Step::Result(br#"{"status":"failed","reason":"no"}"#.to_vec()), Step::Exit(true)]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "the agent never confirms",
            wake: true,
            script: |_| vec![Step::Exit(true)],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "the agent exits without a result",
            wake: true,
            script: |_| vec![Step::Started, Step::Exit(true)],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "a result too large to send",
            wake: true,
            script: |_| {
                let big = format!("{{\"status\":\"success\",\"x\":\"{}\"}}", "y".repeat(2000));
                vec![Step::Started, Step::Result(big.into_bytes()), Step::Exit(true)]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "cancelled while working",
            wake: true,
            script: |_| vec![Step::Started, Step::Progress("p"), Step::Result(success()), Step::Exit(true)],
            worktree: false,
            cancel_after_start: true,
            want: HubStatus::Cancelled,
            want_cost: None,
        },
        Scenario {
            name: "every wake hangs until the wake timeout",
            wake: true,
            script: |_| vec![],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "no wake command",
            wake: false,
            script: |_| vec![],
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: None,
        },
        Scenario {
            name: "the agent asks a person while working, then succeeds",
            wake: true,
            script: |_| {
                vec![
                    Step::Started,
                    Step::Progress("p"),
                    Step::Ask("Deploy to prod?"),
                    Step::Await("Deploy to prod?"),
                    Step::Result(success()),
                    Step::Exit(true),
                ]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: None,
        },
        Scenario {
            name: "the agent asks the same words twice and replaces a question before its answer",
            wake: true,
            script: |_| {
                vec![
                    Step::Started,
                    Step::Ask("Go on?"),
                    Step::Await("Go on?"),
                    Step::Ask("Go on?"),
                    Step::Await("Go on?"),
                    Step::Ask("Which branch?"),
                    Step::Ask("Which remote?"),
                    Step::Await("Which remote?"),
                    Step::Result(success()),
                    Step::Exit(true),
                ]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: None,
        },
        Scenario {
            name: "a background agent that cost money fails and asked nothing",
            wake: true,
            script: |_| {
                vec![
                    Step::Exit(true),
                    Step::Started,
                    Step::Usage(r#"{"input_tokens":100,"output_tokens":20,"cost_usd":0.25,"model":"m"}"#),
                    Step::Result(br#"{"status":"failed","reason":"tests fail"}"#.to_vec()),
                ]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::DeadLetter,
            want_cost: Some(0.25),
        },
        Scenario {
            name: "usage in the result wins over the usage file",
            wake: true,
            script: |_| {
                vec![
                    Step::Started,
                    Step::Usage(r#"{"cost_usd":0.5}"#),
                    Step::Result(br#"{"status":"success","usage":{"cost_usd":1.5,"input_tokens":3}}"#.to_vec()),
                    Step::Exit(true),
                ]
            },
            worktree: false,
            cancel_after_start: false,
            want: HubStatus::Completed,
            want_cost: Some(1.5),
        },
    ]
}

fn run(s: &Scenario, crash_at: Vec<usize>) -> World {
    let mut w = World::new(s, crash_at.clone());
    w.run(s);
    w
}

/// Each scenario runs in a thread of its own, in `repo_dir` and in a worktree of its own
/// (where every attempt of the agent also edits a file before anything else).
fn each_scenario(f: impl Fn(&Scenario) + Send + Sync + Copy + 'static) {
    let both = scenarios().into_iter().flat_map(|s| [Scenario { worktree: true, ..s.clone() }, s]);
    let handles: Vec<_> = both.map(|s| std::thread::spawn(move || f(&s))).collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn every_scenario_ends_once_without_a_crash() {
    each_scenario(|s| {
        let w = run(s, vec![]);
        w.check(s, &[]);
    });
}

#[test]
fn every_single_crash_point_of_every_scenario() {
    each_scenario(|s| {
        let total = run(s, vec![]).actions;
        assert!(total > 3, "{}: {total} actions", s.name);
        eprintln!("{}: {total} crash points", s.name);
        for k in 0..total {
            let w = run(s, vec![k]);
            w.check(s, &[k]);
        }
    });
}

#[test]
fn every_pair_of_crash_points_of_every_scenario() {
    each_scenario(|s| {
        let total = run(s, vec![]).actions;
        for k1 in 0..total {
            // After a crash the run is longer (recovery); cover its first points too.
            for k2 in k1 + 1..total + 8 {
                let w = run(s, vec![k1, k2]);
                w.check(s, &[k1, k2]);
            }
        }
    });
}
