//! A model provider's limit on the manual clock: not a failure, the agent and its account rest
//! until the reset (or a backoff that grows), the task waits for the agent with its session and
//! resumes it, an operator lifts a limit, and an attempt over its cost cap is stopped.

use super::*;
use proto::api::{AgentStatus, GetAgent, UnlimitAgent};
use proto::Limit;

fn limited(id: &str, generation: u64, reset_at_ms: Option<u64>, session: &str) -> AgentFrame {
    AgentFrame::TaskLimited {
        task_id: id.into(),
        generation,
        limit: Limit { reset_at_ms, retry_after_ms: None, message: Some("API Error: Request rejected (429)".into()) },
        usage: Some(proto::Usage { input_tokens: Some(10), cost_usd: Some(0.01), ..Default::default() }),
        change: None,
        session_id: Some(session.into()),
    }
}

fn agent_view(h: &mut Harness, agent_id: &str) -> proto::api::AgentView {
    h.api(ADMIN, GetAgent { agent_id: agent_id.into() }).unwrap()
}

fn now(h: &Harness) -> u64 {
    h.clock.now().wall_ms
}

/// Takes the next assignment, with the session it says to resume.
fn take(h: &mut Harness, a: &mut Agent) -> Option<(String, u64, Option<String>)> {
    let assign = a.frames().into_iter().find_map(|f| match f {
        HubFrame::TaskAssign(t) => Some(t),
        _ => None,
    })?;
    h.frame(a, AgentFrame::TaskAccepted { task_id: assign.task_id.clone() });
    Some((assign.task_id, assign.generation, assign.resume_session))
}

#[test]
fn a_limited_attempt_is_no_failure_and_its_task_waits_for_the_agent_with_its_session() {
    let mut h = harness();
    let (t1, t2) = (h.agent_token("a1"), h.agent_token("a2"));
    let mut a1 = h.connect(1, "a1", &t1);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, g1, resume) = take(&mut h, &mut a1).expect("assigned");
    assert_eq!(resume, None);
    let reset = now(&h) + 10 * 60_000;
    h.frame(&a1, limited(&id, g1, Some(reset), "sess-1"));
    assert!(a1.frames().iter().any(|f| matches!(f, HubFrame::TaskAck { status: AckStatus::Requeued, .. })));
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.status, t.head.failures, t.head.limited_attempts), (TaskStatus::Queued, 0, 1));
    assert_eq!(t.head.not_before, Some(reset));
    assert_eq!(t.head.sessions.last().map(|s| s.session_id.as_str()), Some("sess-1"));
    let v = agent_view(&mut h, "a1");
    assert_eq!((v.status, v.limited_until), (AgentStatus::Limited, Some(reset)));
    // Nothing for anyone before the reset: not the limited agent, and the task waits.
    let mut a2 = h.connect(2, "a2", &t2);
    h.advance(Duration::from_secs(9 * 60));
    assert!(a1.assigned().is_none() && a2.assigned().is_none());
    let other = h.submit(ADMIN, "other work").unwrap();
    assert_eq!(a2.assigned().map(|(t, _)| t), Some(other.clone()), "an agent of another account works on");
    h.frame(&a2, AgentFrame::TaskAccepted { task_id: other.clone() });
    // At the reset the task goes back to a1 (its session is there), resumed.
    h.advance(Duration::from_secs(60));
    let (got, g2, resume) = take(&mut h, &mut a1).expect("the limited task, to the agent with its session");
    assert_eq!((got.as_str(), resume.as_deref()), (id.as_str(), Some("sess-1")));
    assert_eq!(agent_view(&mut h, "a1").limited_until, None);
    h.frame(&a1, complete(&id, g2));
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.status, t.head.failures, t.head.attempts), (TaskStatus::Completed, 0, 2));
    let history: Vec<String> = h.reader.transitions(&id).unwrap().into_iter().map(|t| t.reason).collect();
    assert!(
        history.iter().any(|r| r.contains("limited by the model provider on a1") && r.contains("not a failure")),
        "{history:?}"
    );
    assert!(history.iter().any(|r| r.contains("resuming session sess-1")), "{history:?}");
}

#[test]
fn without_a_reset_time_the_wait_grows_with_each_limit_in_a_row_and_starts_over_after_a_success() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let mut a1 = h.connect(1, "a1", &t1);
    let id = h.submit(ADMIN, "work").unwrap();
    let mut waits = Vec::new();
    for _ in 0..5 {
        let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
        let start = now(&h);
        h.frame(&a1, limited(&id, g, None, "s"));
        let until = agent_view(&mut h, "a1").limited_until.expect("limited");
        waits.push((until - start) / 1000);
        h.advance(Duration::from_millis(until - start));
    }
    assert_eq!(waits, [60, 300, 900, 1800, 1800]);
    let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
    h.frame(&a1, complete(&id, g));
    let id = h.submit(ADMIN, "more").unwrap();
    let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
    let start = now(&h);
    h.frame(&a1, limited(&id, g, None, "s"));
    assert_eq!(agent_view(&mut h, "a1").limited_until, Some(start + 60_000), "back to the first step");
    assert_eq!(h.reader.task(&id).unwrap().unwrap().head.failures, 0);
}

#[test]
fn a_limit_holds_for_the_whole_account_and_its_agents_are_freed_spread_out() {
    let mut h = harness();
    let tokens: Vec<String> = ["a1", "a2", "a3", "solo"].iter().map(|a| h.agent_token(a)).collect();
    let mut a1 = h.connect_in(1, "a1", &tokens[0], Some("team-a"));
    let _a2 = h.connect_in(2, "a2", &tokens[1], Some("team-a"));
    let id = h.submit(ADMIN, "work").unwrap();
    let (got, g, _) = take(&mut h, &mut a1).expect("the longest idle gets it");
    assert_eq!(got, id);
    let reset = now(&h) + 60_000;
    h.frame(&a1, limited(&id, g, Some(reset), "s"));
    assert_eq!(agent_view(&mut h, "a1").limited_until, Some(reset));
    // The 30 s spread over the account's two agents: the second a little later.
    assert_eq!(agent_view(&mut h, "a2").limited_until, Some(reset + 15_000));
    // One that joins the account now is limited with it; one of no account is not.
    let _a3 = h.connect_in(3, "a3", &tokens[2], Some("team-a"));
    assert!(agent_view(&mut h, "a3").limited_until.is_some_and(|u| u >= reset));
    let _solo = h.connect(4, "solo", &tokens[3]);
    assert_eq!(agent_view(&mut h, "solo").status, AgentStatus::Idle);
    h.advance(Duration::from_millis(60_000));
    assert_eq!(agent_view(&mut h, "a1").status, AgentStatus::Working, "a1 took its task back at the reset");
    assert_eq!(agent_view(&mut h, "a2").status, AgentStatus::Limited);
    h.advance(Duration::from_millis(15_000));
    assert_eq!(agent_view(&mut h, "a2").status, AgentStatus::Idle);
}

#[test]
fn an_operator_lifts_a_limit_and_the_waiting_task_goes_at_once() {
    let mut h = harness();
    let (t1, t2) = (h.agent_token("a1"), h.agent_token("a2"));
    let mut a1 = h.connect_in(1, "a1", &t1, Some("team-a"));
    let _a2 = h.connect_in(2, "a2", &t2, Some("team-a"));
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
    h.frame(&a1, limited(&id, g, Some(now(&h) + 3_600_000), "s"));
    let denied = h.api(&t1, UnlimitAgent { agent_id: "a1".into() }).unwrap_err();
    assert_eq!(denied.error, ErrorCode::Forbidden);
    let lifted = h.api(ADMIN, UnlimitAgent { agent_id: "a1".into() }).unwrap();
    assert_eq!(lifted.unlimited, ["a1", "a2"]);
    assert_eq!(take(&mut h, &mut a1).map(|(t, ..)| t), Some(id), "the task went to a1 at once");
    assert_eq!(agent_view(&mut h, "a2").status, AgentStatus::Idle);
    let unknown = h.api(ADMIN, UnlimitAgent { agent_id: "nobody".into() }).unwrap_err();
    assert_eq!(unknown.error, ErrorCode::UnknownAgent);
}

#[test]
fn limits_and_waiting_tasks_survive_a_hub_restart() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let mut a1 = h.connect(1, "a1", &t1);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
    let reset = now(&h) + 120_000;
    h.frame(&a1, limited(&id, g, Some(reset), "sess-9"));
    drop(a1);
    let store = FlakyStore { inner: SqliteStore::open(&h._dir.path().join("hub.db")).unwrap(), full: h.full.clone() };
    h.core = Core::new(store, h.clock.clone(), timings(), Limits::default(), ADMIN, h.bus.clone()).unwrap();
    let mut a1 = h.connect(5, "a1", &t1);
    assert_eq!(agent_view(&mut h, "a1").limited_until, Some(reset));
    h.advance(Duration::from_millis(119_000));
    assert!(a1.assigned().is_none(), "still limited after the restart");
    h.advance(Duration::from_millis(1_000));
    let (got, _, resume) = take(&mut h, &mut a1).expect("after the reset");
    assert_eq!((got, resume.as_deref()), (id, Some("sess-9")));
}

#[test]
fn an_attempt_over_its_cost_cap_is_stopped_and_not_retried() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let mut a1 = h.connect(1, "a1", &t1);
    let submit = SubmitTask { max_cost_usd: Some(0.5), max_tokens: Some(10_000), ..SubmitTask::new("work") };
    let id = h.api(ADMIN, submit).unwrap().task_id;
    let (_, g, _) = take(&mut h, &mut a1).expect("assigned");
    let live = |cost: f64, tokens: u64| AgentFrame::TaskUsage {
        task_id: id.clone(),
        generation: g,
        usage: proto::Usage { input_tokens: Some(tokens), cost_usd: Some(cost), ..Default::default() },
        session_id: Some("s-1".into()),
    };
    h.frame(&a1, live(0.2, 4_000));
    assert_eq!(h.status(&id).0, TaskStatus::Working);
    a1.frames();
    h.frame(&a1, live(0.6, 6_000));
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!(t.head.status, TaskStatus::DeadLetter);
    let err = t.head.last_error.unwrap();
    assert!(err.starts_with("budget_exceeded: $0.6000 spent, over the task's max_cost_usd $0.5"), "{err}");
    let stop = a1.frames().into_iter().find_map(|f| match f {
        HubFrame::TaskCancelled { reason, .. } => reason,
        _ => None,
    });
    assert_eq!(stop.as_deref(), Some(err.as_str()), "the holder is told to stop, with the reason");
    assert_eq!(t.usage.and_then(|u| u.cost_usd), Some(0.6), "what it cost is recorded");
    h.advance(Duration::from_secs(600));
    assert_eq!(h.status(&id).0, TaskStatus::DeadLetter, "not retried");
}
