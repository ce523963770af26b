//! The agent's questions, their answers and what an attempt cost, one transition at a time.

use super::fake_hub::FakeHub;
use super::units::{ms, sent, waking};
use super::*;
use crate::files::{Found, ResultBytes, SmallFile};
use crate::question::{Asked, Asking, OpenQuestion};
use crate::queue::QueueFile;
use serde_json::json;

fn file(bytes: &[u8], id: &str) -> Found<SmallFile> {
    Found::Regular(SmallFile { bytes: bytes.to_vec(), id: id.into(), age: None })
}

fn question(text: &str) -> Vec<u8> {
    json!({ "question": text, "options": ["yes", "no"] }).to_string().into_bytes()
}

/// A look at the files: `.started` there, the question and usage files as given, a result if any.
fn look(m: &mut Machine, needs_input: Found<SmallFile>, usage: Found<SmallFile>, result: Option<&[u8]>) -> Vec<Action> {
    let observation = Observation {
        task_id: ID.into(),
        started: Found::Regular(()),
        progress: Found::Missing,
        result: result.map_or(Found::Missing, |r| Found::Regular(ResultBytes { bytes: r.to_vec(), age: None })),
        needs_input,
        usage,
        result_closed: result.is_some(),
        agent_alive: None,
    };
    m.handle(Event::Observed { look: Look::Watch, observation }, ms(50))
}

/// A machine whose agent confirmed and works on `ID` at generation 4.
fn working() -> Machine {
    let mut m = waking();
    look(&mut m, Found::Missing, Found::Missing, None);
    assert!(matches!(m.slot(), Slot::Active(h) if h.phase.status() == "working"), "{:?}", m.slot());
    m
}

fn asking(m: &Machine) -> Asking {
    match m.slot() {
        Slot::Active(h) | Slot::Recovering(h) => h.asking.clone(),
        Slot::Idle => panic!("no task"),
    }
}

fn answer(request_id: &str, text: &str) -> Event {
    Event::Frame(HubFrame::TaskInput { task_id: ID.into(), request_id: request_id.into(), answer: text.into() })
}

fn ack(request_id: &str) -> Action {
    Action::Send(AgentFrame::TaskInputAck { task_id: ID.into(), request_id: request_id.into() })
}

fn asked(text: &str) -> Asked {
    Asked { question: text.into(), options: vec!["yes".into(), "no".into()] }
}

#[test]
fn a_question_is_persisted_before_it_is_forwarded_and_the_task_stays_working() {
    let mut m = working();
    let a = look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    let Some(Action::Persist { queue, required: true }) = a.get(1) else { panic!("{a:?}") };
    assert_eq!(
        a[0],
        Action::RemoveTaskFile { task_id: ID.into(), file: TaskFile::Input },
        "an earlier answer goes first"
    );
    let record = queue.active.as_ref().unwrap();
    assert_eq!(record.status, crate::queue::Status::Working, "the phase is untouched");
    assert_eq!(record.needs_input.open.as_ref().map(|q| q.request_id.as_str()), Some("g4-1"));
    assert_eq!(
        a[2],
        Action::Send(AgentFrame::NeedsInput {
            task_id: ID.into(),
            request_id: "g4-1".into(),
            question: "Deploy?".into(),
            options: vec!["yes".into(), "no".into()],
        })
    );
    assert_eq!(a.len(), 3);
    // The same file, or the same question written again: the same request, never sent twice.
    assert!(look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None).is_empty());
    assert!(look(&mut m, file(&question("Deploy?"), "f1-again"), Found::Missing, None).is_empty());
    // After a reconnect, it is sent again (the hub deduplicates by request id).
    m.handle(Event::Disconnected, ms(60));
    let a = m.handle(Event::Connected, ms(70));
    let frames: Vec<&str> = sent(&a).iter().map(|f| f.type_name()).collect();
    assert_eq!(frames, ["state_report", "needs_input"]);
    // Another question replaces it, under a new id.
    let a = look(&mut m, file(&question("Really deploy?"), "f2"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { request_id, .. }] if request_id == "g4-2"), "{a:?}");
}

#[test]
fn an_answer_is_written_and_recorded_before_the_agent_is_signalled_and_the_hub_acked() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    let a = m.handle(answer("g4-1", "yes, go"), ms(100));
    assert_eq!(
        a[0],
        Action::WriteAnswer {
            task_id: ID.into(),
            request_id: "g4-1".into(),
            answer: "yes, go".into(),
            asked: asked("Deploy?"),
        }
    );
    let Action::Persist { queue, required: true } = &a[1] else { panic!("{a:?}") };
    let stored = &queue.active.as_ref().unwrap().needs_input;
    assert_eq!((stored.open.is_none(), stored.answered.as_slice()), (true, &["g4-1".to_string()][..]));
    assert_eq!(a[2], Action::RemoveTaskFile { task_id: ID.into(), file: TaskFile::NeedsInput });
    assert_eq!(a[3], ack("g4-1"));
    assert_eq!(a.len(), 4);
    // Its ack may go down with the connection (or the process): sent again after a reconnect.
    m.handle(Event::Disconnected, ms(105));
    let a = m.handle(Event::Connected, ms(106));
    let frames: Vec<&str> = sent(&a).iter().map(|f| f.type_name()).collect();
    assert_eq!(frames, ["state_report", "task_input_ack"]);
    assert!(a.contains(&ack("g4-1")), "{a:?}");
    // Delivered again: acknowledged, not written again.
    assert_eq!(m.handle(answer("g4-1", "yes, go"), ms(110)), vec![ack("g4-1")]);
    // An answer to nothing asked: not written; the hub is told the agent does not ask it.
    let a = m.handle(answer("g4-7", "?"), ms(120));
    assert!(
        matches!(sent(&a)[..], [AgentFrame::NeedsInputClosed { request_id, .. }] if request_id == "g4-7")
            && a.len() == 1,
        "{a:?}"
    );
    // An answer for another task: ignored.
    let other = HubFrame::TaskInput { task_id: "other".into(), request_id: "g1-1".into(), answer: "x".into() };
    assert!(m.handle(Event::Frame(other), ms(121)).is_empty());
    let unsafe_id = answer("../../x", "x");
    assert!(m.handle(unsafe_id, ms(122)).is_empty());
    // The answered file still there (its removal was cut short): removed, not asked again.
    let a = look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    assert_eq!(a, vec![Action::RemoveTaskFile { task_id: ID.into(), file: TaskFile::NeedsInput }]);
    // The same words in a file written after the answer: a new question.
    let a = look(&mut m, file(&question("Deploy?"), "f3"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { request_id, .. }] if request_id == "g4-2"), "{a:?}");
}

/// The agent read its answer and finished while the ack was lost with the connection: after the
/// reconnect the ack goes before the report, which ends the attempt (the hub takes no ack after).
#[test]
fn an_ack_lost_with_the_connection_goes_before_the_report_that_ends_the_attempt() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    assert!(m.handle(answer("g4-1", "yes"), ms(100)).contains(&ack("g4-1")));
    m.handle(Event::Disconnected, ms(105));
    look(&mut m, Found::Missing, Found::Missing, Some(br#"{"status":"success"}"#));
    assert!(matches!(m.slot(), Slot::Active(h) if matches!(h.phase, Phase::Reporting { .. })), "{:?}", m.slot());
    let a = m.handle(Event::Connected, ms(120));
    let frames: Vec<&str> = sent(&a).iter().map(|f| f.type_name()).collect();
    assert_eq!(frames, ["state_report", "task_input_ack", "task_complete"], "{a:?}");
    assert!(a.contains(&ack("g4-1")), "{a:?}");
}

#[test]
fn a_failed_persist_undoes_the_change_and_the_next_try_uses_the_same_request_id() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    assert!(m.handle(Event::PersistFailed, ms(60)).is_empty());
    assert_eq!(asking(&m), Asking::default(), "back to what is on disk");
    let a = look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { request_id, .. }] if request_id == "g4-1"), "{a:?}");
    // The answer's record fails: the question is open again, and a re-delivery writes it again.
    m.handle(answer("g4-1", "yes"), ms(100));
    assert!(m.handle(Event::PersistFailed, ms(101)).is_empty());
    assert_eq!(asking(&m).open.map(|q| q.request_id), Some("g4-1".into()));
    let a = m.handle(answer("g4-1", "yes"), ms(200));
    assert!(matches!(a[0], Action::WriteAnswer { .. }) && a.last() == Some(&ack("g4-1")), "{a:?}");
}

#[test]
fn an_answer_superseded_by_a_new_question_is_dropped_and_the_files_looked_at_again() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    m.handle(answer("g4-1", "yes"), ms(100));
    let a = m.handle(Event::AnswerSuperseded { task_id: ID.into(), request_id: "g4-1".into() }, ms(101));
    assert!(matches!(a[..], [Action::Observe { look: Look::Watch, .. }]), "{a:?}");
    assert_eq!(asking(&m).open.map(|q| q.request_id), Some("g4-1".into()), "not answered");
    let a = look(&mut m, file(&question("Deploy where?"), "f2"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { request_id, .. }] if request_id == "g4-2"), "{a:?}");
}

#[test]
fn an_answer_dropped_for_a_half_written_question_is_asked_for_again_once_the_question_is_the_same() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    m.handle(answer("g4-1", "yes"), ms(100));
    m.handle(Event::AnswerSuperseded { task_id: ID.into(), request_id: "g4-1".into() }, ms(101));
    // The agent finished writing: the same question. It is sent again, once, so the hub re-sends
    // the answer it holds for g4-1.
    let a = look(&mut m, file(&question("Deploy?"), "f1b"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { request_id, .. }] if request_id == "g4-1"), "{a:?}");
    assert!(look(&mut m, file(&question("Deploy?"), "f1b"), Found::Missing, None).is_empty());
    let a = m.handle(answer("g4-1", "yes"), ms(200));
    assert!(matches!(a[0], Action::WriteAnswer { .. }) && a.last() == Some(&ack("g4-1")), "{a:?}");
}

#[test]
fn a_bad_question_file_is_reported_once_and_never_fails_the_task() {
    let mut m = working();
    let bad = [
        file(b"{not json", "f1"),
        Found::NotRegular("a FIFO"),
        Found::TooLarge(1 << 30),
        file(br#"{"question": 5}"#, "f2"),
    ];
    for found in bad {
        let a = look(&mut m, found.clone(), Found::Missing, None);
        let [AgentFrame::TaskProgress { progress: Some(p), .. }] = sent(&a)[..] else { panic!("{a:?}") };
        assert!(p["needs_input_error"].as_str().is_some_and(|e| e.starts_with("task-1.needs-input")), "{p}");
        assert!(look(&mut m, found, Found::Missing, None).is_empty(), "reported once");
    }
    assert!(matches!(m.slot(), Slot::Active(h) if h.phase.status() == "working"), "{:?}", m.slot());
    let a = look(&mut m, file(&question("Fixed?"), "f3"), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::NeedsInput { .. }]), "{a:?}");
}

#[test]
fn answers_are_taken_while_recovering_and_acknowledged_after_the_task_ended() {
    // After a restart, before the hub said continue: the answer is written all the same.
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    let restarted = Machine::new(cfg(true), true, m.queue(), None, Duration::ZERO);
    let mut m = restarted;
    m.handle(Event::Start, ms(0));
    let a = m.handle(Event::Connected, ms(0));
    assert!(matches!(sent(&a)[..], [AgentFrame::TaskRecovering { .. }]), "the question waits for continue: {a:?}");
    let a = m.handle(answer("g4-1", "yes"), ms(1));
    assert!(matches!(a[0], Action::WriteAnswer { .. }) && a.last() == Some(&ack("g4-1")), "{a:?}");
    let a = m.handle(Event::Frame(HubFrame::TaskContinue { task_id: ID.into(), generation: 4 }), ms(2));
    assert!(!sent(&a).iter().any(|f| matches!(f, AgentFrame::NeedsInput { .. })), "answered: {a:?}");
    // The task ends; a late re-delivery of its answer is still acknowledged.
    let result = br#"{"status":"success"}"#;
    look(&mut m, Found::Missing, Found::Missing, Some(result));
    m.handle(Event::Frame(HubFrame::TaskAck { task_id: ID.into(), status: proto::AckStatus::Complete }), ms(3));
    assert_eq!(m.slot(), &Slot::Idle);
    assert_eq!(m.handle(answer("g4-1", "yes"), ms(4)), vec![ack("g4-1")]);
    assert!(m.handle(answer("g4-2", "yes"), ms(5)).is_empty());
}

#[test]
fn what_the_attempt_cost_goes_with_the_report_and_the_results_own_usage_wins() {
    let mut m = working();
    let usage = file(br#"{"input_tokens": 1000, "output_tokens": -5, "cost_usd": 0.3, "model": "m1"}"#, "u1");
    let a = look(&mut m, Found::Missing, usage, Some(br#"{"status":"failed","reason":"tests fail"}"#));
    // What it cost so far goes out first (the hub checks it against the task's caps), then the report.
    let [AgentFrame::TaskUsage { usage: live, .. }, AgentFrame::TaskFailed { usage: Some(u), reason: Some(r), .. }] =
        sent(&a)[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!(live, u);
    assert_eq!((r.as_str(), u.input_tokens, u.output_tokens, u.cost_usd), ("tests fail", Some(1000), None, Some(0.3)));
    // Persisted with the report: a restart re-sends the same usage.
    let Slot::Active(h) = m.slot() else { panic!() };
    let record = crate::queue::QueuedTask::from_held(h);
    let back = record.into_held(Duration::ZERO).unwrap();
    assert_eq!(back.phase, h.phase);

    let mut m = working();
    let usage = file(br#"{"cost_usd": 0.3}"#, "u1");
    let result = br#"{"status":"success","usage":{"cost_usd":1.25,"model":"m2"},"tokens_used":9}"#;
    let a = look(&mut m, Found::Missing, usage, Some(result));
    let [AgentFrame::TaskUsage { .. }, AgentFrame::TaskComplete { usage: Some(u), result: Some(r), tokens_used, .. }] =
        sent(&a)[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!((u.cost_usd, u.model.as_deref()), (Some(1.25), Some("m2")));
    assert_eq!((r["usage"]["cost_usd"].as_f64(), tokens_used), (Some(1.25), &Some(json!(9))), "kept in the result");
}

#[test]
fn task_fields_named_like_the_sidecars_own_are_dropped_at_accept() {
    let mut m = Machine::new(cfg(true), true, QueueFile::default(), None, Duration::ZERO);
    m.handle(Event::Connected, ms(0));
    let HubFrame::TaskAssign(mut a) = FakeHub::new(1).assign() else { unreachable!() };
    for (k, v) in [("report", json!({"type": "task_complete"})), ("wake_pgid", json!(1)), ("needs_input", json!(5))] {
        a.extra.insert(k.into(), v);
    }
    a.extra.insert("repo".into(), json!("r"));
    m.handle(Event::Frame(HubFrame::TaskAssign(a)), ms(0));
    let text = serde_json::to_string(&m.queue()).unwrap();
    let back: QueueFile = serde_json::from_str(&text).expect("queue.json loads back");
    let record = back.active.unwrap();
    assert_eq!(record.extra.keys().collect::<Vec<_>>(), ["repo"]);
    assert_eq!((record.wake_pgid, record.report), (None, None));
}

#[test]
fn a_forced_restart_forgets_the_open_question_with_the_work() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    let a = m.handle(Event::Frame(HubFrame::RestartSidecar { reason: "upgrade".into(), force: true }), ms(60));
    assert!(a.contains(&Action::ClearResults { task_id: ID.into() }), "{a:?}");
    assert_eq!(asking(&m).open, None::<OpenQuestion>);
}

#[test]
fn text_that_is_not_json_yet_is_reported_only_once_it_has_settled() {
    let mut m = working();
    let young =
        |bytes: &[u8], age| Found::Regular(SmallFile { bytes: bytes.to_vec(), id: "f1".into(), age: Some(age) });
    // Being written (truncated, half there): a later look decides.
    assert!(look(&mut m, young(b"", ms(5)), Found::Missing, None).is_empty());
    assert!(look(&mut m, young(b"{\"question\":\"De", ms(5)), Found::Missing, None).is_empty());
    // Still not JSON a rescan interval (100 ms here) later: reported.
    let a = look(&mut m, young(b"{\"question\":\"De", ms(150)), Found::Missing, None);
    assert!(matches!(sent(&a)[..], [AgentFrame::TaskProgress { .. }]), "{a:?}");
    // JSON that is not a question cannot be half-written: reported at once.
    let a = look(
        &mut m,
        Found::Regular(SmallFile { bytes: b"{}".to_vec(), id: "f2".into(), age: Some(ms(1)) }),
        Found::Missing,
        None,
    );
    assert!(matches!(sent(&a)[..], [AgentFrame::TaskProgress { .. }]), "{a:?}");
}

/// A forced restart ends the agent's process: its open question is withdrawn, the hub is told
/// at once and again after every connect (it closes the question), and an answer that still
/// comes for it is refused back to the hub, never written.
#[test]
fn a_forced_restart_withdraws_the_open_question_and_tells_the_hub() {
    let mut m = working();
    look(&mut m, file(&question("Deploy?"), "f1"), Found::Missing, None);
    let restart = HubFrame::RestartSidecar { reason: "stuck".into(), force: true };
    let a = m.handle(Event::Frame(restart), ms(100));
    let closed = |a: &[Action]| -> Vec<String> {
        sent(a)
            .iter()
            .filter_map(|f| match f {
                AgentFrame::NeedsInputClosed { request_id, .. } => Some(request_id.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(closed(&a), ["g4-1"], "{a:?}");
    assert!(a.contains(&Action::RemoveTaskFile { task_id: ID.into(), file: TaskFile::NeedsInput }));
    let record = asking(&m);
    assert_eq!((record.open.is_none(), record.withdrawn.as_slice()), (true, &["g4-1".to_string()][..]));
    // The sidecar restarts: the record is on disk; after the hub says continue, it tells again.
    let mut m = Machine::new(cfg(true), true, m.queue(), None, ms(0));
    m.handle(Event::Start, ms(0));
    m.handle(Event::Connected, ms(1));
    let cont = HubFrame::TaskContinue { task_id: ID.into(), generation: 4 };
    let a = m.handle(Event::Frame(cont), ms(2));
    assert_eq!(closed(&a), ["g4-1"], "{a:?}");
    // A late answer to it: not written, and the hub is told why.
    let a = m.handle(answer("g4-1", "yes"), ms(3));
    assert!(!a.iter().any(|x| matches!(x, Action::WriteAnswer { .. })), "{a:?}");
    assert_eq!(closed(&a), ["g4-1"], "{a:?}");
    // The new agent asks again: a new request, never the withdrawn one.
    let a = look(&mut m, file(&question("Deploy?"), "f9"), Found::Missing, None);
    let asked: Vec<&str> = sent(&a)
        .iter()
        .filter_map(|f| match f {
            AgentFrame::NeedsInput { request_id, .. } => Some(request_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(asked, ["g4-2"], "{a:?}");
}
