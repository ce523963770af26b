//! What belongs to an attempt: its question and answer close with it (and say so), a sidecar
//! that withdraws a question closes it, and finished work reported after the hub took the task
//! back is kept while nobody else holds the task.

use super::*;

/// A task accepted by a fresh agent `a1` on connection 1, with the agent's token.
fn working(h: &mut Harness) -> (Agent, String, String, u64) {
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, generation) = a.assigned().expect("assigned at once");
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    (a, token, id, generation)
}

fn answer(h: &mut Harness, id: &str, request_id: &str) -> Result<proto::api::Answered, ApiError> {
    h.api(ADMIN, AnswerTask { task_id: id.into(), answer: "yes".into(), request_id: Some(request_id.into()) })
}

fn reasons(h: &Harness, id: &str) -> Vec<String> {
    h.reader.transitions(id).unwrap().into_iter().map(|t| t.reason).collect()
}

#[test]
fn a_question_closes_with_its_attempt_and_a_late_answer_is_refused_with_the_reason() {
    let mut h = harness();
    let (a, _, id, _) = working(&mut h);
    h.frame(&a, needs_input(&id, "g1-1", "Deploy?"));
    h.disconnect(a);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status(&id).0, TaskStatus::Queued);
    let history = reasons(&h, &id);
    assert!(history.iter().any(|r| r.starts_with("question g1-1 closed unanswered: its attempt ended")), "{history:?}");
    assert!(event_names(&h.bus).contains(&"input_closed"));
    let refused = answer(&mut h, &id, "g1-1").unwrap_err();
    assert_eq!(refused.error, ErrorCode::InvalidState);
    let message = refused.message.unwrap();
    assert!(message.contains("g1-1 was closed unanswered") && message.contains("lease_expired"), "{message}");
}

#[test]
fn an_answer_not_yet_delivered_when_the_attempt_ends_is_shown_undelivered() {
    let mut h = harness();
    let (a, _, id, _) = working(&mut h);
    h.frame(&a, needs_input(&id, "g1-1", "Deploy?"));
    h.disconnect(a);
    assert!(!answer(&mut h, &id, "g1-1").unwrap().sent);
    h.advance(Duration::from_secs(60));
    let history = reasons(&h, &id);
    assert!(history.iter().any(|r| r.starts_with("answer to g1-1 not delivered: its attempt ended")), "{history:?}");
    assert!(event_names(&h.bus).contains(&"input_undelivered"));
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.needs_input, t.head.answer), (None, None));
}

#[test]
fn a_withdrawn_question_closes_and_an_answer_the_agent_refuses_is_undelivered() {
    let mut h = harness();
    let (mut a, _, id, _) = working(&mut h);
    h.frame(&a, needs_input(&id, "g1-1", "Deploy?"));
    // The agent was restarted: its sidecar withdraws the question (and says so again later).
    let closed = |rid: &str| AgentFrame::NeedsInputClosed {
        task_id: id.clone(),
        request_id: rid.into(),
        reason: Some("the agent was started again".into()),
    };
    h.frame(&a, closed("g1-1"));
    h.frame(&a, closed("g1-1"));
    let history = reasons(&h, &id);
    let lines: Vec<&String> = history.iter().filter(|r| r.starts_with("question g1-1 closed unanswered")).collect();
    assert_eq!(lines.len(), 1, "a repeat changes nothing: {history:?}");
    assert!(lines[0].contains("the agent was started again"));
    let refused = answer(&mut h, &id, "g1-1").unwrap_err();
    assert!(refused.message.unwrap().contains("closed unanswered"));
    // A question answered, whose answer the sidecar cannot place: undelivered, not pending.
    h.frame(&a, needs_input(&id, "g1-2", "Really?"));
    assert!(answer(&mut h, &id, "g1-2").unwrap().sent);
    a.frames();
    h.frame(&a, closed("g1-2"));
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.needs_input, t.head.answer), (None, None));
    assert!(reasons(&h, &id).iter().any(|r| r.starts_with("answer to g1-2 not delivered")));
    assert_eq!(event_names(&h.bus).iter().filter(|n| **n == "input_undelivered").count(), 1);
    // The task goes on: the holder still holds it.
    assert_eq!(h.status(&id).0, TaskStatus::Working);
}

#[test]
fn finished_work_reported_after_the_hub_took_the_task_back_is_kept_while_nobody_else_holds_it() {
    let mut h = harness();
    let (a, token, id, generation) = working(&mut h);
    h.disconnect(a);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status(&id), (TaskStatus::Queued, generation + 1), "taken back");
    // The holder comes back late with the finished work of its attempt: kept, not run again.
    let mut b = h.connect(2, "a1", &token);
    assert_eq!(b.assigned().map(|(t, _)| t), Some(id.clone()), "offered to the same agent again");
    h.frame(&b, complete(&id, generation));
    assert_eq!(h.status(&id).0, TaskStatus::Completed);
    let acks: Vec<HubFrame> = b.frames().into_iter().filter(|f| matches!(f, HubFrame::TaskAck { .. })).collect();
    assert!(matches!(&acks[..], [HubFrame::TaskAck { status: AckStatus::Complete, .. }]), "{acks:?}");
    assert!(reasons(&h, &id).iter().any(|r| r.contains("reported after the hub took it back")));
}

#[test]
fn a_late_report_never_takes_a_task_another_agent_holds_now() {
    let mut h = harness();
    let (a, token, id, generation) = working(&mut h);
    let t2 = h.agent_token("a2");
    h.disconnect(a);
    let mut other = h.connect(5, "a2", &t2);
    h.advance(Duration::from_secs(60));
    let (_, now_gen) = other.assigned().expect("a2 takes it");
    assert!(now_gen > generation);
    let mut b = h.connect(2, "a1", &token);
    h.frame(&b, complete(&id, generation));
    assert_eq!(h.status(&id), (TaskStatus::Assigned, now_gen), "a2 keeps it");
    let stale =
        b.frames().into_iter().any(|f| matches!(f, HubFrame::Error(e) if e.error == FrameErrorCode::StaleGeneration));
    assert!(stale);
    // A late failure is never taken either (the task is queued again anyway).
    let mut h = harness();
    let (a, token, id, generation) = working(&mut h);
    h.disconnect(a);
    h.advance(Duration::from_secs(60));
    let b = h.connect(2, "a1", &token);
    let failed = AgentFrame::TaskFailed {
        task_id: id.clone(),
        generation,
        reason: Some("x".into()),
        error: None,
        usage: None,
        change: None,
        session_id: None,
    };
    h.frame(&b, failed);
    assert_ne!(h.status(&id).0, TaskStatus::WaitingRetry);
}

/// Issue 18: the uptime an agent reported when it connected counts on while it stays connected
/// (the dashboard showed "0 s" for ever), and stops counting once it is gone.
#[test]
fn an_agents_uptime_counts_on_while_it_is_connected() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let info = proto::ProcessInfo {
        supervisor: Some("native".into()),
        status: Some("online".into()),
        uptime_ms: Some(1_000),
        ..Default::default()
    };
    let _a = h.connect_as(1, proto::Identify { process_info: Some(info), ..identify("a1", &token) });
    h.advance(Duration::from_secs(90));
    let uptime = |h: &mut Harness| {
        h.api(ADMIN, proto::api::GetAgent { agent_id: "a1".into() }).unwrap().process_info.unwrap().uptime_ms
    };
    assert_eq!(uptime(&mut h), Some(91_000));
    h.core.step([Event::Disconnected { conn: 1 }]);
    h.advance(Duration::from_secs(60));
    assert_eq!(uptime(&mut h), Some(1_000), "gone: what it last said, not a clock still running");
}

fn change(head: &str, patch: Option<&str>) -> proto::Change {
    proto::Change {
        branch: "agentcom/t".into(),
        base_sha: "a".repeat(40),
        head_sha: head.into(),
        base_branch: None,
        commits: 1,
        files_changed: 1,
        insertions: 1,
        deletions: 0,
        files: vec!["x".into()],
        patch: patch.map(str::to_string),
        patch_cut: false,
    }
}

fn with_change(mut frame: AgentFrame, c: proto::Change) -> AgentFrame {
    if let AgentFrame::TaskComplete { change, .. } = &mut frame {
        *change = Some(Box::new(c));
    }
    frame
}

/// A report's change is kept on the task without its patch, the patch apart; a failed
/// attempt's change shows until a later attempt reports its own, and a stale report's change
/// is dropped with the report.
#[test]
fn a_reported_change_is_kept_on_the_task_and_its_patch_apart() {
    let mut h = harness();
    let (mut a, _, id, generation) = working(&mut h);
    let failed = AgentFrame::TaskFailed {
        task_id: id.clone(),
        generation,
        reason: Some("tests fail".into()),
        error: None,
        usage: None,
        change: Some(Box::new(change(&"b".repeat(40), Some("+one\n")))),
        session_id: None,
    };
    h.frame(&a, failed);
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!(t.head.change, Some(change(&"b".repeat(40), None)), "without its patch");
    let p = h.reader.patch(&id).unwrap().expect("the patch");
    assert_eq!((p.generation, p.patch.as_str(), p.cut), (generation, "+one\n", false));
    // A stale report (the old generation again) changes nothing.
    let stale = with_change(complete(&id, generation), change(&"c".repeat(40), Some("+stale\n")));
    h.advance(Duration::from_secs(1));
    let (retry_id, retry_gen) = a.assigned().expect("the retry, after its backoff");
    assert_eq!(retry_id, id);
    h.frame(&a, stale);
    assert_eq!(h.reader.patch(&id).unwrap().unwrap().patch, "+one\n");
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    let done = with_change(complete(&id, retry_gen), change(&"d".repeat(40), Some("+two\n")));
    h.frame(&a, done);
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!(t.head.status, TaskStatus::Completed);
    assert_eq!(t.head.change.map(|c| c.head_sha), Some("d".repeat(40)));
    assert_eq!(h.reader.patch(&id).unwrap().unwrap().patch, "+two\n");
}

/// Tasks of one serial key go one at a time, in the order they were queued, whatever their
/// lanes; tasks of other keys (or none) go beside them.
#[test]
fn a_serial_key_hands_out_one_task_at_a_time_in_submission_order() {
    let mut h = harness();
    let (t1, t2, t3) = (h.agent_token("a1"), h.agent_token("a2"), h.agent_token("a3"));
    let serial = |d: &str, p: proto::api::Priority| SubmitTask {
        serial_key: Some("deploy".into()),
        priority: p,
        ..SubmitTask::new(d)
    };
    let first = h.api(ADMIN, serial("first", proto::api::Priority::Low)).unwrap().task_id;
    let second = h.api(ADMIN, serial("second", proto::api::Priority::Urgent)).unwrap().task_id;
    let free = h.submit(ADMIN, "no key").unwrap();
    let mut a1 = h.connect(1, "a1", &t1);
    let mut a2 = h.connect(2, "a2", &t2);
    let mut a3 = h.connect(3, "a3", &t3);
    let got: Vec<String> =
        [&mut a1, &mut a2, &mut a3].into_iter().filter_map(|a| a.assigned().map(|(t, _)| t)).collect();
    assert!(got.contains(&first) && got.contains(&free) && !got.contains(&second), "{got:?}");
    // The first ends: the second goes.
    let (who, g) = [(&a1, 1), (&a2, 2), (&a3, 3)]
        .into_iter()
        .find(|(_, n)| got.get(n - 1) == Some(&first))
        .map(|(a, _)| (a.conn, h.status(&first).1))
        .unwrap();
    let a = Agent { conn: who, rx: mpsc::channel(1).1 };
    h.frame(&a, AgentFrame::TaskAccepted { task_id: first.clone() });
    h.frame(&a, complete(&first, g));
    assert_eq!(h.status(&first).0, TaskStatus::Completed);
    assert_eq!(h.status(&second).0, TaskStatus::Assigned, "the key's next task goes once the first ended");
}
