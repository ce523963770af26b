//! Single transitions, with the clock as a number.

use super::fake_hub::*;
use super::*;
use crate::files::{Found, ResultBytes};
use crate::queue::QueueFile;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connected machine that has accepted `ID` and spawned its first wake (pgid 7) at t = 0.
pub fn waking() -> Machine {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let hub = FakeHub::new(4);
    let actions = m.handle(Event::Frame(hub.assign()), ms(0));
    assert!(matches!(actions[0], Action::Persist { required: true, .. }), "{actions:?}");
    assert!(matches!(&actions[1], Action::Send(AgentFrame::TaskAccepted { .. })), "ack after the persist: {actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::SpawnWake { attempt: 1, .. })));
    m.handle(Event::WakeSpawned { task_id: ID.into(), attempt: 1, pgid: 7 }, ms(1));
    m
}

/// What a look finds once the agent is done: started, and a closed result saying success.
fn succeeded() -> Observation {
    Observation {
        task_id: ID.into(),
        started: Found::Regular(()),
        progress: Found::Missing,
        result: Found::Regular(ResultBytes { bytes: success(), age: None }),
        needs_input: Found::Missing,
        usage: Found::Missing,
        result_closed: true,
        agent_alive: None,
    }
}

pub fn sent(actions: &[Action]) -> Vec<&AgentFrame> {
    actions.iter().filter_map(|a| if let Action::Send(f) = a { Some(f) } else { None }).collect()
}

#[test]
fn a_wake_that_runs_too_long_is_stopped_and_counted_as_a_timeout() {
    let mut m = waking();
    assert_eq!(m.next_deadline(), Some(ms(5000)));
    assert!(m.handle(Event::Tick, ms(4999)).is_empty(), "not due yet");
    let stop = m.handle(Event::Tick, ms(5000));
    assert_eq!(stop, vec![Action::StopGroup { pgid: 7, task_id: ID.into() }]);
    assert_eq!(m.next_deadline(), None, "stopping, not ticking again");
    let outcome = WakeOutcome::Exited { success: false, code: None, desc: "signal: 15".into() };
    let exit = Event::WakeExited { task_id: ID.into(), attempt: 1, outcome, started: false, log_tail: String::new() };
    let a = m.handle(exit, ms(5100));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::WakeResult { status, error: Some(e), .. }] if status == "timeout" && e.contains("5000ms")),
        "{a:?}"
    );
    // The first retry waits 10 ms.
    assert_eq!(m.next_deadline(), Some(ms(5110)));
    let a = m.handle(Event::Tick, ms(5110));
    assert!(a.iter().any(|a| matches!(a, Action::SpawnWake { attempt: 2, .. })), "{a:?}");
}

#[test]
fn confirmation_deadline_fails_only_without_started() {
    let mut m = waking();
    let outcome = WakeOutcome::Exited { success: true, code: Some(0), desc: "exit status: 0".into() };
    m.handle(
        Event::WakeExited { task_id: ID.into(), attempt: 1, outcome, started: false, log_tail: String::new() },
        ms(10),
    );
    assert_eq!(m.next_deadline(), Some(ms(1010)));
    let look = m.handle(Event::Tick, ms(1010));
    assert!(matches!(look[..], [Action::Observe { look: Look::ConfirmationDue, .. }]), "{look:?}");
    let observation = Observation {
        task_id: ID.into(),
        started: Found::Missing,
        progress: Found::Missing,
        result: Found::Missing,
        needs_input: Found::Missing,
        usage: Found::Missing,
        result_closed: false,
        agent_alive: None,
    };
    let a = m.handle(Event::Observed { look: Look::ConfirmationDue, observation }, ms(1010));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::TaskFailed { reason: Some(r), generation: 4, .. }] if r == "confirmation_timeout"),
        "{a:?}"
    );
}

#[test]
fn storage_unavailable_resends_the_report_a_second_later() {
    let mut m = waking();
    let observation = succeeded();
    let a = m.handle(Event::Observed { look: Look::Watch, observation }, ms(20));
    assert!(sent(&a).iter().any(|f| matches!(f, AgentFrame::TaskComplete { .. })), "{a:?}");
    let err = proto::ErrorFrame::new(proto::FrameErrorCode::StorageUnavailable).task(ID);
    assert!(m.handle(Event::Frame(HubFrame::Error(err)), ms(30)).is_empty());
    assert_eq!(m.next_deadline(), Some(ms(1030)));
    let a = m.handle(Event::Tick, ms(1030));
    assert!(matches!(sent(&a)[..], [AgentFrame::TaskComplete { generation: 4, .. }]), "{a:?}");
    // The ack finishes it: files removed before the queue is emptied.
    let a =
        m.handle(Event::Frame(HubFrame::TaskAck { task_id: ID.into(), status: proto::AckStatus::Complete }), ms(1040));
    assert!(matches!(a[..], [Action::RemoveFiles { keep_result_as: None, .. }, Action::Persist { .. }]), "{a:?}");
    assert_eq!(m.slot(), &Slot::Idle);
}

#[test]
fn unsafe_task_ids_are_rejected_or_ignored_and_never_reach_a_path() {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let mut hub = FakeHub::new(1);
    let HubFrame::TaskAssign(mut a) = hub.assign() else { unreachable!() };
    a.task_id = "../../victim/data".into();
    let actions = m.handle(Event::Frame(HubFrame::TaskAssign(a)), ms(0));
    assert!(
        matches!(&actions[..], [Action::Send(AgentFrame::TaskRejected { reason: Some(r), .. })] if r.starts_with("invalid_task_id")),
        "{actions:?}"
    );
    for f in [
        HubFrame::TaskCancelled { task_id: "../x".into(), timestamp: 0, reason: None },
        HubFrame::TaskContinue { task_id: "a/b".into(), generation: 1 },
        HubFrame::TaskAck { task_id: ".hidden".into(), status: proto::AckStatus::Complete },
    ] {
        assert!(m.handle(Event::Frame(f), ms(1)).is_empty());
    }
    assert_eq!(m.slot(), &Slot::Idle);
    assert!(hub.received.is_empty());
    hub.received.clear();
}

#[test]
fn a_failed_accept_persist_rejects_the_task_and_acks_nothing() {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let hub = FakeHub::new(1);
    m.handle(Event::Frame(hub.assign()), ms(0));
    // The executor dropped everything after the failed persist and says so.
    let a = m.handle(Event::PersistFailed, ms(1));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::TaskRejected { reason: Some(r), .. }] if r.starts_with("storage_error")),
        "{a:?}"
    );
    assert_eq!(m.slot(), &Slot::Idle);
}

#[test]
fn restart_waits_for_the_working_task_unless_forced() {
    let mut m = waking();
    let restart = |force| Event::Frame(HubFrame::RestartSidecar { reason: "upgrade".into(), force });
    let a = m.handle(restart(false), ms(10));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::RestartOutcome { outcome: proto::RestartOutcome::Deferred, .. }])
            && a.len() == 1,
        "deferred while a wake runs, and the hub is told: {a:?}"
    );
    let a = m.handle(restart(true), ms(11));
    assert!(a.contains(&Action::StopGroup { pgid: 7, task_id: ID.into() }), "{a:?}");
    assert!(matches!(a.last(), Some(Action::Exit)), "{a:?}");
    let Slot::Active(h) = m.slot() else { panic!() };
    assert_eq!((&h.phase, h.wakes), (&Phase::Accepted, 0), "kept, to be woken again after task_recovering");
    // Without a supervisor it refuses: exiting would stop the agent.
    let mut alone = Machine::new(cfg(true), false, QueueFile::default(), None, Duration::ZERO);
    alone.handle(Event::Connected, ms(0));
    let a = alone.handle(restart(true), ms(1));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::RestartOutcome { outcome: proto::RestartOutcome::Refused, reason: Some(r) }]
            if r.contains("no supervisor")),
        "{a:?}"
    );
}

fn wake_exit(outcome: WakeOutcome, attempt: u32, log_tail: &str) -> Event {
    Event::WakeExited { task_id: ID.into(), attempt, outcome, started: false, log_tail: log_tail.into() }
}

/// Issue 18: a wake that fails for a reason waiting cannot cure fails the task at once, saying
/// which; only a failure that may pass (any other exit) is tried again.
#[test]
fn a_wake_that_cannot_run_fails_at_once_with_its_reason() {
    let failed = |a: &[Action]| -> Option<String> {
        sent(a).iter().find_map(|f| match f {
            AgentFrame::TaskFailed { reason, .. } => reason.clone(),
            _ => None,
        })
    };
    let mut m = waking();
    let missing = WakeOutcome::SpawnFailed { reason: "repo_dir /x/repo does not exist".into(), lasting: true };
    let a = m.handle(wake_exit(missing, 1, ""), ms(2));
    assert_eq!(failed(&a).as_deref(), Some("wake_failed: cannot start: repo_dir /x/repo does not exist"));
    let mut m = waking();
    let not_found = WakeOutcome::Exited { success: false, code: Some(127), desc: "exit status: 127".into() };
    let a = m.handle(wake_exit(not_found, 1, "sh: 1: claudex: not found"), ms(2));
    let reason = failed(&a).unwrap_or_default();
    assert!(reason.starts_with("wake_failed: command not found") && reason.contains("claudex: not found"), "{reason}");
    // Out of processes for a moment: tried again.
    let mut m = waking();
    let busy = WakeOutcome::SpawnFailed { reason: "Resource temporarily unavailable".into(), lasting: false };
    let a = m.handle(wake_exit(busy, 1, ""), ms(2));
    assert_eq!(failed(&a), None, "{a:?}");
    assert_eq!(m.next_deadline(), Some(ms(12)), "the first retry after 10 ms");
}

/// Issue 18: the count of wake attempts survives a restart of the sidecar during the backoff:
/// the next attempt is the next number, not the failed one again.
#[test]
fn the_wake_count_survives_a_restart_during_the_backoff() {
    let mut m = waking();
    let exit = WakeOutcome::Exited { success: false, code: Some(1), desc: "exit status: 1".into() };
    let a = m.handle(wake_exit(exit, 1, ""), ms(2));
    let Some(Action::Persist { queue, .. }) = a.iter().find(|x| matches!(x, Action::Persist { .. })) else {
        panic!("the backoff is on record: {a:?}")
    };
    let record = queue.active.clone().unwrap();
    assert!(record.wake_failed && record.wake_attempts == 1, "{record:?}");
    // The sidecar restarts from that record; the hub says continue.
    let mut m = Machine::new(cfg(true), true, QueueFile { active: Some(record), recovering: None }, None, ms(0));
    m.handle(Event::Start, ms(0));
    m.handle(Event::Connected, ms(0));
    let cont = HubFrame::TaskContinue { task_id: ID.into(), generation: 4 };
    m.handle(Event::Frame(cont), ms(1));
    let due = m.next_deadline().expect("the retry is armed");
    assert!(due > ms(1), "in the future: {due:?}");
    let a = m.handle(Event::Tick, due);
    assert!(a.iter().any(|x| matches!(x, Action::SpawnWake { attempt: 2, .. })), "attempt 2, not 1 again: {a:?}");
}

/// Worktree mode: a worktree that cannot be made fails the attempt at once, saying why, with
/// no wake; one whose commit fails reports the failure (the worktree is kept as it is).
#[test]
fn a_worktree_that_cannot_be_made_or_committed_fails_the_attempt_saying_why() {
    let mut m = Machine::new(cfg_in(true, true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let hub = FakeHub::new(1);
    let actions = m.handle(Event::Frame(hub.assign()), ms(0));
    assert!(actions.iter().any(|a| matches!(a, Action::PrepareWorkspace { .. })), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::SpawnWake { .. })), "no wake before the worktree: {actions:?}");
    let reason = "max_worktrees (2) reached".to_string();
    let actions = m.handle(Event::WorkspaceFailed { task_id: ID.into(), reason }, ms(5));
    let failed = sent(&actions).into_iter().find_map(|f| match f {
        AgentFrame::TaskFailed { reason: Some(r), .. } => Some(r.clone()),
        _ => None,
    });
    assert_eq!(failed.as_deref(), Some("worktree_setup_failed: max_worktrees (2) reached"), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::SpawnWake { .. } | Action::CommitWorkspace { .. })));

    let mut m = Machine::new(cfg_in(true, true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    m.handle(Event::Frame(hub.assign()), ms(0));
    let workspace = crate::workspace::Workspace {
        path: "/w/task-1".into(),
        branch: "agentcom/task-1".into(),
        base_sha: "0".repeat(40),
        base_branch: None,
    };
    let actions = m.handle(Event::WorkspaceReady { task_id: ID.into(), workspace: workspace.clone() }, ms(1));
    let cwd = actions.iter().find_map(|a| match a {
        Action::SpawnWake { cwd, .. } => Some(cwd.clone()),
        _ => None,
    });
    assert_eq!(cwd, Some(Some(workspace.path.clone())), "the wake runs in the worktree: {actions:?}");
    m.handle(Event::WakeSpawned { task_id: ID.into(), attempt: 1, pgid: 7 }, ms(2));
    // The agent's result: what it left is committed before the report.
    let observation = succeeded();
    let actions = m.handle(Event::Observed { look: Look::Watch, observation }, ms(20));
    let reported =
        sent(&actions).iter().any(|f| matches!(f, AgentFrame::TaskComplete { .. } | AgentFrame::TaskFailed { .. }));
    assert!(!reported, "no report before the commit: {actions:?}");
    assert!(
        actions.iter().any(|a| matches!(a, Action::CommitWorkspace { workspace: w, .. } if *w == workspace)),
        "{actions:?}"
    );
    let actions = m.handle(Event::CommitFailed { task_id: ID.into(), reason: "git add: disk full".into() }, ms(30));
    let failed = sent(&actions).into_iter().find_map(|f| match f {
        AgentFrame::TaskFailed { reason: Some(r), change, .. } => Some((r.clone(), change.clone())),
        _ => None,
    });
    assert_eq!(failed, Some(("workspace_commit_failed: git add: disk full".into(), None)), "{actions:?}");
    let actions =
        m.handle(Event::Frame(HubFrame::TaskAck { task_id: ID.into(), status: proto::AckStatus::DeadLetter }), ms(31));
    assert!(
        actions.iter().any(|a| matches!(a, Action::ReleaseWorkspace { keep: true, .. })),
        "kept for a person: {actions:?}"
    );
}
