//! The restart policy as a table: each row is a spec's settings and a script of steps (time
//! passing, exits, requests), each expectation the state, the restart count and the delay of
//! the armed restart at that point.

use super::*;
use proto::control::RestartPolicy;
use State::*;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The process, up for this many ms, exits with this code.
    Exit { up: u64, code: Option<i32> },
    /// Time passes; due timers fire.
    Wait(u64),
    /// `agentcom restart`.
    Restart,
    /// State, restart count, and in how many ms the armed restart is due (`None`: none armed).
    Expect(State, u64, Option<u64>),
}
use Step::*;

struct Row {
    name: &'static str,
    settings: fn(&mut ProcSpec),
    steps: &'static [Step],
}

fn always(_: &mut ProcSpec) {}
fn on_failure(s: &mut ProcSpec) {
    s.restart = RestartPolicy::OnFailure;
}
fn never(s: &mut ProcSpec) {
    s.restart = RestartPolicy::Never;
}

const QUICK: u64 = 10;
const LONG: u64 = 5_000;

const ROWS: &[Row] = &[
    // Autorestart × exit code: the first restart is immediate.
    Row {
        name: "always, exit 0",
        settings: always,
        steps: &[
            Exit { up: LONG, code: Some(0) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Expect(Online, 1, None),
        ],
    },
    Row {
        name: "always, exit 1",
        settings: always,
        steps: &[
            Exit { up: LONG, code: Some(1) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Expect(Online, 1, None),
        ],
    },
    Row {
        name: "always, killed",
        settings: always,
        steps: &[Exit { up: LONG, code: Some(137) }, Expect(WaitingRestart, 1, Some(0))],
    },
    Row {
        name: "on-failure, exit 0",
        settings: on_failure,
        steps: &[Exit { up: LONG, code: Some(0) }, Expect(Stopped, 0, None), Wait(60_000), Expect(Stopped, 0, None)],
    },
    Row {
        name: "on-failure, exit 1",
        settings: on_failure,
        steps: &[
            Exit { up: LONG, code: Some(1) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Expect(Online, 1, None),
        ],
    },
    Row {
        name: "on-failure, no status",
        settings: on_failure,
        steps: &[Exit { up: LONG, code: None }, Expect(WaitingRestart, 1, Some(0))],
    },
    Row {
        name: "never, exit 0",
        settings: never,
        steps: &[Exit { up: LONG, code: Some(0) }, Expect(Stopped, 0, None)],
    },
    Row {
        name: "never, exit 1",
        settings: never,
        steps: &[Exit { up: LONG, code: Some(1) }, Expect(Stopped, 0, None)],
    },
    // Exit codes that mean "stopped on purpose", under both restarting policies.
    Row {
        name: "always, stop_exit_codes",
        settings: |s| s.stop_exit_codes = vec![3],
        steps: &[
            Exit { up: LONG, code: Some(4) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Exit { up: LONG, code: Some(3) },
            Expect(Stopped, 1, None),
        ],
    },
    Row {
        name: "on-failure, stop_exit_codes",
        settings: |s| {
            s.restart = RestartPolicy::OnFailure;
            s.stop_exit_codes = vec![3];
        },
        steps: &[Exit { up: LONG, code: Some(3) }, Expect(Stopped, 0, None)],
    },
    // More than max_restarts exits, each within min_uptime: errored until `restart`.
    Row {
        name: "crash loop → errored, restart clears it",
        settings: |s| {
            s.min_uptime_ms = 1_000;
            s.max_restarts = 2;
        },
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 2, Some(100)),
            Wait(100),
            Exit { up: QUICK, code: Some(1) },
            Expect(Errored, 2, None),
            Wait(60_000),
            Expect(Errored, 2, None),
            Restart,
            Expect(Online, 2, None),
            // Counted afresh: two more quick exits are tolerated.
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 3, Some(0)),
        ],
    },
    Row {
        name: "an exit after min_uptime is not unstable",
        settings: |s| {
            s.min_uptime_ms = 1_000;
            s.max_restarts = 1;
        },
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Wait(0),
            Exit { up: 1_000, code: Some(1) },
            Expect(WaitingRestart, 2, Some(100)),
            Wait(100),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 3, Some(150)),
            Wait(150),
            Exit { up: QUICK, code: Some(1) },
            Expect(Errored, 3, None),
        ],
    },
    // Backoff: at once, then 100 ms growing x1.5, capped.
    Row {
        name: "backoff grows x1.5 to its cap",
        settings: |s| s.restart_backoff_max_ms = 300,
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 1, Some(0)),
            Wait(0),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 2, Some(100)),
            Wait(100),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 3, Some(150)),
            Wait(150),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 4, Some(225)),
            Wait(225),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 5, Some(300)),
            Wait(299),
            Expect(WaitingRestart, 5, Some(1)),
            Wait(1),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 6, Some(300)),
        ],
    },
    Row {
        name: "backoff resets after 30 s up",
        settings: always,
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Wait(0),
            Exit { up: QUICK, code: Some(1) },
            Wait(100),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 3, Some(150)),
            Wait(150),
            Exit { up: 30_000, code: Some(1) },
            Expect(WaitingRestart, 4, Some(0)),
            Wait(0),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 5, Some(100)),
        ],
    },
    Row {
        name: "backoff does not reset just short of 30 s",
        settings: always,
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Wait(0),
            Exit { up: QUICK, code: Some(1) },
            Wait(100),
            Exit { up: 29_999, code: Some(1) },
            Expect(WaitingRestart, 3, Some(150)),
        ],
    },
    Row {
        name: "restart_delay_ms comes before every restart, the first included",
        settings: |s| s.restart_delay_ms = 500,
        steps: &[
            Exit { up: LONG, code: Some(1) },
            Expect(WaitingRestart, 1, Some(500)),
            Wait(499),
            Expect(WaitingRestart, 1, Some(1)),
            Wait(1),
            Expect(Online, 1, None),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 2, Some(500)),
        ],
    },
    Row {
        name: "backoff above restart_delay_ms wins",
        settings: |s| {
            s.restart_delay_ms = 120;
            s.max_restarts = 100;
        },
        steps: &[
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 1, Some(120)),
            Wait(120),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 2, Some(120)),
            Wait(120),
            Exit { up: QUICK, code: Some(1) },
            Expect(WaitingRestart, 3, Some(150)),
        ],
    },
    Row {
        name: "restart request while waiting to restart",
        settings: |s| s.restart_delay_ms = 10_000,
        steps: &[
            Exit { up: LONG, code: Some(1) },
            Expect(WaitingRestart, 1, Some(10_000)),
            Restart,
            Expect(Online, 2, None),
            // The old timer no longer matches anything.
            Wait(10_000),
            Expect(Online, 2, None),
        ],
    },
];

#[test]
fn restart_policy_matrix() {
    for row in ROWS {
        let mut s = spec("p");
        (row.settings)(&mut s);
        let mut w = World::with(s);
        for (i, step) in row.steps.iter().enumerate() {
            let at = format!("{}: step {i} ({step:?}) at {} ms", row.name, w.now.mono_ms);
            match *step {
                Exit { up, code } => {
                    assert_eq!(w.state("p"), Online, "{at}: exits only when online");
                    w.advance(up);
                    w.exit("p", code);
                }
                Wait(ms) => w.advance(ms),
                Restart => {
                    let r = w.ask(Request::Restart { name: "p".into() });
                    assert_eq!(message(&r), "ok: restarted p", "{at}");
                }
                Expect(state, restarts, delay) => {
                    let got = (w.state("p"), w.restarts("p"), w.restart_in("p"));
                    assert_eq!(got, (state, restarts, delay), "{at}");
                }
            }
        }
    }
}

#[test]
fn errored_and_stopped_processes_say_why() {
    let mut s = spec("p");
    s.max_restarts = 0;
    let mut w = World::with(s);
    w.advance(QUICK);
    w.exit("p", Some(2));
    assert_eq!(w.state("p"), Errored);
    let reason = w.t.procs["p"].last_reason.clone().unwrap();
    assert_eq!(reason, "exited 1 times within min_uptime (exited (exit status: Some(2)))");
    assert!(w.t.procs["p"].desired, "errored is not a stop: the desired state stays");
    let mut s = spec("q");
    s.restart = RestartPolicy::Never;
    let mut w = World::with(s);
    w.exit("q", Some(0));
    assert!(!w.t.procs["q"].desired, "a process that ended by its policy is not brought back");
}

#[test]
fn a_command_that_cannot_start_follows_the_policy_and_explains_itself() {
    let mut w = World::with(spec("p"));
    w.spawn_fails = Some("server: command not found in PATH".into());
    w.exit("p", Some(1));
    w.advance(0);
    assert_eq!((w.state("p"), w.restarts("p"), w.restart_in("p")), (WaitingRestart, 2, Some(100)));
    assert_eq!(w.t.procs["p"].last_reason.as_deref(), Some("cannot start: server: command not found in PATH"));
    w.spawn_fails = None;
    w.advance(100);
    assert_eq!(w.state("p"), Online);
}
