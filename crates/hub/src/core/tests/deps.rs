//! Tasks that depend on tasks and tasks that create tasks: `blocked` until the dependencies
//! complete, `dependency_failed` when one cannot, refusals at submit, children only of the task
//! an agent holds, limits, cancels that cascade, and all of it across a reload.

use super::*;

fn after(h: &mut Harness, token: &str, desc: &str, deps: &[&str]) -> Result<proto::api::TaskSubmitted, ApiError> {
    let n = SubmitTask { depends_on: deps.iter().map(|d| d.to_string()).collect(), ..SubmitTask::new(desc) };
    h.api(token, n)
}

fn child(h: &mut Harness, token: &str, parent: &str) -> Result<String, ApiError> {
    let n = SubmitTask { parent_task_id: Some(parent.into()), ..SubmitTask::new("a child") };
    Ok(h.api(token, n)?.task_id)
}

fn report(h: &mut Harness, a: &Agent, id: &str, generation: u64, ok: bool) {
    h.frame(a, AgentFrame::TaskAccepted { task_id: id.into() });
    let frame = if ok {
        completed(id, generation, serde_json::json!({"status": "success", "output": id}), None)
    } else {
        AgentFrame::TaskFailed {
            task_id: id.into(),
            generation,
            reason: Some("broken".into()),
            error: None,
            usage: None,
            change: None,
            session_id: None,
        }
    };
    h.frame(a, frame);
}

fn error_of(r: Result<impl std::fmt::Debug, ApiError>) -> (ErrorCode, String) {
    let e = r.unwrap_err();
    (e.error, e.message.unwrap_or_default())
}

#[test]
fn a_dependent_waits_blocked_and_is_queued_when_its_dependencies_complete() {
    let mut h = harness();
    let first = h.submit(ADMIN, "first").unwrap();
    let second = h.submit(ADMIN, "second").unwrap();
    let s = after(&mut h, ADMIN, "then", &[&first, &second]).unwrap();
    assert_eq!(s.status, TaskStatus::Blocked);
    let then = s.task_id;
    assert_eq!(h.status(&then).0, TaskStatus::Blocked);
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    // The blocked task is never offered: the agent gets the first, then the second.
    let (got, g) = a.assigned().unwrap();
    assert_eq!(got, first);
    report(&mut h, &a, &first, g, true);
    assert_eq!(h.status(&then).0, TaskStatus::Blocked, "one dependency is still open");
    let (got, g) = a.assigned().unwrap();
    assert_eq!(got, second);
    report(&mut h, &a, &second, g, true);
    assert_eq!(a.assigned().map(|(t, _)| t), Some(then.clone()), "queued and handed out in the same batch");
    let reasons: Vec<_> = h.reader.transitions(&then).unwrap().into_iter().map(|t| (t.to, t.reason)).collect();
    assert_eq!(reasons[1], (TaskStatus::Queued, format!("dependencies completed (the last: {second})")));
    assert_eq!(h.core.deps.blocked(), 0);
    // A dependency that already completed does not block.
    assert_eq!(after(&mut h, ADMIN, "late", &[&first]).unwrap().status, TaskStatus::Queued);
}

#[test]
fn a_failed_dependency_fails_its_dependents_down_the_chain() {
    let mut h = harness();
    let dep = h.api(ADMIN, SubmitTask { max_retries: 0, ..SubmitTask::new("fails") }).unwrap().task_id;
    let b = after(&mut h, ADMIN, "b", &[&dep]).unwrap().task_id;
    let c = after(&mut h, ADMIN, "c", &[&b]).unwrap().task_id;
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let (_, g) = a.assigned().unwrap();
    report(&mut h, &a, &dep, g, false);
    let tb = h.reader.task(&b).unwrap().unwrap().head;
    assert_eq!(
        (tb.status, tb.last_error.as_deref()),
        (TaskStatus::DeadLetter, Some(format!("dependency_failed: {dep}").as_str()))
    );
    let tc = h.reader.task(&c).unwrap().unwrap().head;
    assert_eq!((tc.status, tc.last_error), (TaskStatus::DeadLetter, Some(format!("dependency_failed: {b}"))));
    assert_eq!(a.assigned(), None, "nothing was queued");
    // A retry of the dependent is refused while its dependency stays failed; once that one is
    // retried, the dependent goes back to waiting for it.
    let (code, msg) = error_of(h.api(ADMIN, RetryTask { task_id: b.clone() }));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains(&dep) && msg.contains("dead_letter"), "{msg}");
    assert_eq!(h.status(&b).0, TaskStatus::DeadLetter);
    h.api(ADMIN, RetryTask { task_id: dep.clone() }).unwrap();
    assert_eq!(h.api(ADMIN, RetryTask { task_id: b.clone() }).unwrap().status, TaskStatus::Blocked);
    let (_, g) = a.assigned().unwrap();
    report(&mut h, &a, &dep, g, true);
    assert_eq!(a.assigned().map(|(t, _)| t), Some(b));
}

#[test]
fn unknown_failed_and_cyclic_dependencies_are_refused_at_submit() {
    let mut h = harness();
    let (code, msg) = error_of(after(&mut h, ADMIN, "x", &["task-nope"]));
    assert_eq!((code, msg.as_str()), (ErrorCode::ValidationFailed, "depends_on[0]: no task task-nope"));
    let gone = h.submit(ADMIN, "cancelled").unwrap();
    h.api(ADMIN, CancelTask { task_id: gone.clone() }).unwrap();
    let (code, msg) = error_of(after(&mut h, ADMIN, "x", &[&gone]));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("is cancelled"), "{msg}");
    // A child may not wait for its parent (which may be waiting for it).
    let parent = h.submit(ADMIN, "parent").unwrap();
    let n =
        SubmitTask { parent_task_id: Some(parent.clone()), depends_on: vec![parent.clone()], ..SubmitTask::new("c") };
    let (code, msg) = error_of(h.api(ADMIN, n));
    assert_eq!(code, ErrorCode::ValidationFailed);
    assert!(msg.contains("cycle"), "{msg}");
    assert_eq!(h.core.open_task_count(), 1, "nothing refused was kept");
}

#[test]
fn an_agent_creates_children_only_of_the_task_it_holds_while_it_holds_it() {
    let mut h = harness_with(Limits { max_children_per_task: 2, max_task_depth: 1, ..Limits::default() });
    let t1 = h.agent_token("a1");
    let t2 = h.agent_token("a2");
    let mut a = h.connect(1, "a1", &t1);
    let parent = h.submit(ADMIN, "parent").unwrap();
    let (_, g) = a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskAccepted { task_id: parent.clone() });
    let (code, msg) = error_of(child(&mut h, &t2, &parent));
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(msg.contains("only of the task it holds") && msg.contains("held by a1"), "{msg}");
    let c1 = child(&mut h, &t1, &parent).unwrap();
    let c2 = child(&mut h, &t1, &parent).unwrap();
    let (code, msg) = error_of(child(&mut h, &t1, &parent));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("max_children_per_task = 2"), "{msg}");
    let (code, msg) = error_of(child(&mut h, ADMIN, &c1));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("max_task_depth = 1"), "{msg}");
    let stored = h.reader.task(&parent).unwrap().unwrap().head;
    assert_eq!(stored.children, [c1.clone(), c2.clone()]);
    let kid = h.reader.task(&c1).unwrap().unwrap().head;
    assert_eq!((kid.parent_task_id.as_deref(), kid.depth, kid.submitted_by.as_str()), (Some(parent.as_str()), 1, "a1"));
    report(&mut h, &a, &parent, g, true);
    let (code, msg) = error_of(child(&mut h, &t1, &parent));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("is completed"), "{msg}");
}

#[test]
fn cancelling_a_task_cancels_its_open_children_and_tells_their_holders() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let t2 = h.agent_token("a2");
    let mut a = h.connect(1, "a1", &t1);
    let parent = h.submit(ADMIN, "parent").unwrap();
    let (_, _) = a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskAccepted { task_id: parent.clone() });
    let running = child(&mut h, &t1, &parent).unwrap();
    let mut b = h.connect(2, "a2", &t2);
    assert_eq!(b.assigned().map(|(t, _)| t), Some(running.clone()));
    let waiting = h
        .api(
            &t1,
            SubmitTask {
                parent_task_id: Some(parent.clone()),
                depends_on: vec![running.clone()],
                ..SubmitTask::new("w")
            },
        )
        .unwrap();
    assert_eq!(waiting.status, TaskStatus::Blocked);
    h.api(ADMIN, CancelTask { task_id: parent.clone() }).unwrap();
    for id in [&parent, &running, &waiting.task_id] {
        assert_eq!(h.status(id).0, TaskStatus::Cancelled, "{id}");
    }
    assert!(b.frames().iter().any(|f| matches!(f, HubFrame::TaskCancelled { task_id, .. } if *task_id == running)));
    let why = h.reader.transitions(&running).unwrap().pop().unwrap().reason;
    assert_eq!(why, format!("cancelled with its parent {parent}"));
}

#[test]
fn who_waits_on_whom_survives_a_reload() {
    let mut h = harness();
    let first = h.submit(ADMIN, "first").unwrap();
    let then = after(&mut h, ADMIN, "then", &[&first]).unwrap().task_id;
    h.core.reload().unwrap();
    assert_eq!(h.core.deps.blocked(), 1);
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let (_, g) = a.assigned().unwrap();
    report(&mut h, &a, &first, g, true);
    assert_eq!(a.assigned().map(|(t, _)| t), Some(then));
}

#[test]
fn a_completion_that_did_not_commit_does_not_unblock_anything() {
    let mut h = harness();
    let first = h.submit(ADMIN, "first").unwrap();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let (_, g) = a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskAccepted { task_id: first.clone() });
    h.full.store(true, Ordering::SeqCst);
    report(&mut h, &a, &first, g, true);
    h.full.store(false, Ordering::SeqCst);
    assert_eq!(h.status(&first).0, TaskStatus::Working, "the completion is not on disk");
    // What the failed batch did in memory is gone with it: the dependency is still open.
    assert_eq!(after(&mut h, ADMIN, "then", &[&first]).unwrap().status, TaskStatus::Blocked);
}

#[test]
fn a_parents_page_shows_the_tree_below_it() {
    let mut h = harness();
    let parent = h.submit(ADMIN, "parent").unwrap();
    let c1 = child(&mut h, ADMIN, &parent).unwrap();
    let c2 = child(&mut h, ADMIN, &parent).unwrap();
    let g = child(&mut h, ADMIN, &c1).unwrap();
    let ids = h.reader.task(&parent).unwrap().unwrap().head.children;
    let tree = crate::store::read_children(&h.reader, &ids).unwrap();
    let shape: Vec<(String, Vec<String>)> =
        tree.iter().map(|c| (c.task_id.clone(), c.children.iter().map(|g| g.task_id.clone()).collect())).collect();
    assert_eq!(shape, [(c1, vec![g]), (c2, vec![])]);
    assert!(tree.iter().all(|c| c.status == TaskStatus::Queued && c.description == "a child"));
}
