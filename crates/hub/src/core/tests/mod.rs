//! The core driven directly, with a manual clock: leases, claims, retries and timers are tested
//! by advancing time, never by sleeping; a real SQLite store underneath, whose commits can be
//! made to fail as on a full disk.

use super::api::{Authenticate, CoreRequest};
use super::*;
use crate::auth::Role;
use crate::clock::ManualClock;
use crate::store::{Reader, SqliteStore, TaskQuery};
use proto::api::{AnswerTask, CancelTask, CreateToken, RetryTask, RevokeTokens};
use proto::api::{RestartAgent, SubmitTask};
use proto::{AckStatus, Identify};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod attempts;
mod deps;
mod limits;

const ADMIN: &str = "test-admin-token-0123456789";

/// A real SQLite store whose commits can be made to fail as on a full disk.
struct FlakyStore {
    inner: SqliteStore,
    full: Arc<AtomicBool>,
}

impl Store for FlakyStore {
    fn load(&mut self, day_start_ms: u64) -> Result<Snapshot, StoreError> {
        self.inner.load(day_start_ms)
    }
    fn head(&mut self, id: &str) -> Result<Option<TaskHead>, StoreError> {
        self.inner.head(id)
    }
    fn payloads(&mut self, ids: &[&str]) -> Result<HashMap<String, Payload>, StoreError> {
        self.inner.payloads(ids)
    }
    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            let e = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, Some("database or disk is full".into()))));
        }
        self.inner.commit(batch)
    }
}

struct Harness {
    bus: Arc<crate::events::EventBus>,
    core: Core<FlakyStore, ManualClock>,
    clock: ManualClock,
    full: Arc<AtomicBool>,
    reader: crate::store::SqliteReader,
    _dir: tempfile::TempDir,
}

fn timings() -> Timings {
    Timings {
        grace_period: Duration::from_secs(60),
        accept_timeout: Duration::from_secs(30),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
        reject_cooldown: Duration::from_secs(5),
        ..Timings::default()
    }
}

fn harness_with(limits: Limits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let inner = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
    let reader = inner.reader(1).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = FlakyStore { inner, full: full.clone() };
    let bus = crate::events::EventBus::new(1, 1000, 1000);
    let core = Core::new(store, clock.clone(), timings(), limits, ADMIN, bus.clone()).unwrap();
    Harness { bus, core, clock, full, reader, _dir: dir }
}

fn harness() -> Harness {
    harness_with(Limits::default())
}

struct Agent {
    conn: ConnId,
    rx: mpsc::Receiver<Out>,
}

impl Agent {
    /// Every frame sent to this agent since the last look.
    fn frames(&mut self) -> Vec<HubFrame> {
        let mut out = Vec::new();
        while let Ok(o) = self.rx.try_recv() {
            if let Out::Frame(f) = o {
                out.push(f);
            }
        }
        out
    }

    fn assigned(&mut self) -> Option<(String, u64)> {
        self.frames().into_iter().find_map(|f| match f {
            HubFrame::TaskAssign(a) => Some((a.task_id, a.generation)),
            _ => None,
        })
    }
}

impl Harness {
    /// Asks the core as the HTTP layer does; the answer is released after the batch's flush.
    fn api<R: CoreRequest>(&mut self, token: &str, req: R) -> Result<R::Answer, ApiError> {
        let (tx, mut rx) = oneshot::channel();
        self.core.step([Event::Api { auth: Some(token.into()), req: req.into_request(tx) }]);
        rx.try_recv().expect("a reply is released after the flush")
    }

    fn submit(&mut self, token: &str, description: &str) -> Result<String, ApiError> {
        Ok(self.api(token, SubmitTask::new(description))?.task_id)
    }

    fn agent_token(&mut self, agent_id: &str) -> String {
        self.api(ADMIN, CreateToken { agent_id: agent_id.into() }).unwrap().token
    }

    fn connect(&mut self, conn: ConnId, agent_id: &str, token: &str) -> Agent {
        self.connect_in(conn, agent_id, token, None)
    }

    /// An agent that says which model provider account it uses.
    fn connect_in(&mut self, conn: ConnId, agent_id: &str, token: &str, account: Option<&str>) -> Agent {
        self.connect_as(conn, Identify { account: account.map(str::to_string), ..identify(agent_id, token) })
    }

    /// An agent that identifies with `id` on connection `conn`.
    fn connect_as(&mut self, conn: ConnId, id: Identify) -> Agent {
        let (tx, rx) = mpsc::channel(64);
        self.core
            .step([Event::Connected { conn, tx }, Event::Frame { conn, frame: AgentFrame::Identify(Box::new(id)) }]);
        Agent { conn, rx }
    }

    fn frame(&mut self, agent: &Agent, frame: AgentFrame) {
        self.core.step([Event::Frame { conn: agent.conn, frame }]);
    }

    fn disconnect(&mut self, agent: Agent) {
        self.core.step([Event::Disconnected { conn: agent.conn }]);
    }

    /// Moves the clock and lets the core fire what became due.
    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.core.step([]);
    }

    fn status(&self, task_id: &str) -> (TaskStatus, u64) {
        let t = self.reader.task(task_id).unwrap().expect("stored");
        (t.head.status, t.head.generation)
    }
}

#[test]
fn a_failed_commit_rolls_back_everything_the_batch_changed() {
    let mut h = harness();
    let token = h.agent_token("a1");
    h.submit(ADMIN, "before").unwrap();
    h.full.store(true, Ordering::SeqCst);
    let err = h.submit(ADMIN, "lost?").unwrap_err();
    assert_eq!(err.error, ErrorCode::StorageUnavailable);
    assert!(err.message.unwrap().contains("disk is full"));
    assert_eq!(h.core.open_task_count(), 1, "the refused submission is gone from memory");
    // A revoke that did not commit leaves the token valid; a token that did not commit is not.
    assert!(h.api(ADMIN, RevokeTokens { agent_id: "a1".into() }).is_err());
    let refused_token = h.api(ADMIN, CreateToken { agent_id: "a2".into() });
    assert!(refused_token.is_err(), "a created token is only shown once it is durable");
    h.full.store(false, Ordering::SeqCst);
    assert!(matches!(h.api(&token, Authenticate), Ok(Role::Agent(a)) if a == "a1"));
    assert_eq!(h.core.tokens.len(), 1, "memory went back to the durable tokens");
    assert_eq!(h.core.metrics.commit_errors, 3);
    h.submit(ADMIN, "after").unwrap();
    let (rows, _) = h.reader.list_tasks(TaskQuery { limit: 10, ..Default::default() }).unwrap();
    let stored: Vec<_> = rows.into_iter().map(|t| t.payload.description).collect();
    assert_eq!(stored, ["after", "before"], "the refused submission was never stored, nothing else lost");
}

#[test]
fn a_failed_commit_keeps_agents_connected_and_their_task_assignable() {
    let mut h = harness();
    let token = h.agent_token("a1");
    h.full.store(true, Ordering::SeqCst);
    // The identify's presence record fails to commit; the socket is still there.
    let mut a = h.connect(1, "a1", &token);
    h.full.store(false, Ordering::SeqCst);
    let id = h.submit(ADMIN, "work").unwrap();
    h.advance(Duration::from_secs(1)); // the core retries dispatch after a failed commit
    assert_eq!(a.assigned().map(|(t, _)| t), Some(id));
}

#[test]
fn a_disconnected_holder_keeps_its_task_for_the_grace_period_only() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, generation) = a.assigned().expect("assigned at once");
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    h.disconnect(a);
    h.advance(Duration::from_secs(59));
    assert_eq!(h.status(&id), (TaskStatus::Working, generation), "still inside the lease");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.status(&id), (TaskStatus::Queued, generation + 1), "requeued with a new generation");
}

#[test]
fn a_reconnected_holder_must_claim_its_task_within_the_window() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, generation) = a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    h.disconnect(a);
    // Back within the lease, claiming with task_recovering: the task carries on.
    let mut b = h.connect(2, "a1", &token);
    h.frame(&b, AgentFrame::TaskRecovering { task_id: id.clone(), last_status: None });
    assert!(b.frames().iter().any(|f| matches!(f, HubFrame::TaskContinue { generation: g, .. } if *g == generation)));
    h.advance(Duration::from_secs(120));
    assert_eq!(h.status(&id), (TaskStatus::Working, generation));
    // Back again, saying nothing about it: after the window the task goes to someone else.
    h.disconnect(b);
    let _c = h.connect(3, "a1", &token);
    h.advance(Duration::from_secs(59));
    assert_eq!(h.status(&id).0, TaskStatus::Working);
    h.advance(Duration::from_secs(1));
    let history = h.reader.transitions(&id).unwrap();
    let requeue = history.iter().find(|t| t.reason.starts_with("unclaimed")).expect("requeued as unclaimed");
    assert_eq!((requeue.to, requeue.generation), (TaskStatus::Queued, generation + 1));
}

#[test]
fn an_unaccepted_assignment_is_requeued_after_the_accept_timeout() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "work").unwrap();
    let (_, generation) = a.assigned().unwrap();
    h.advance(Duration::from_millis(29_999));
    assert_eq!(h.status(&id), (TaskStatus::Assigned, generation));
    h.advance(Duration::from_millis(1));
    // Requeued, and handed straight back to the only (idle) agent with the next generation.
    assert_eq!(h.status(&id), (TaskStatus::Assigned, generation + 2));
    assert_eq!(a.assigned(), Some((id, generation + 2)));
}

#[test]
fn failures_back_off_doubling_then_dead_letter() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.api(ADMIN, SubmitTask { max_retries: 2, ..SubmitTask::new("flaky") }).unwrap().task_id;
    for (failure, backoff) in [(1, 1_000), (2, 2_000)] {
        let (_, generation) = a.assigned().expect("assigned");
        h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
        let reason = Some(format!("boom {failure}"));
        h.frame(
            &a,
            AgentFrame::TaskFailed {
                task_id: id.clone(),
                generation,
                reason,
                error: None,
                usage: None,
                change: None,
                session_id: None,
            },
        );
        assert!(a.frames().iter().any(|f| matches!(f, HubFrame::TaskAck { status: AckStatus::Retried, .. })));
        assert_eq!(h.status(&id).0, TaskStatus::WaitingRetry);
        h.advance(Duration::from_millis(backoff - 1));
        assert_eq!(h.status(&id).0, TaskStatus::WaitingRetry, "failure {failure}: not before {backoff} ms");
        h.advance(Duration::from_millis(1));
    }
    let (_, generation) = a.assigned().expect("third attempt");
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    h.frame(
        &a,
        AgentFrame::TaskFailed {
            task_id: id.clone(),
            generation,
            reason: Some("boom 3".into()),
            error: None,
            usage: None,
            change: None,
            session_id: None,
        },
    );
    assert_eq!(h.status(&id).0, TaskStatus::DeadLetter);
    assert!(a.frames().iter().any(|f| matches!(f, HubFrame::TaskAck { status: AckStatus::DeadLetter, .. })));
}

#[test]
fn a_busy_rejection_pauses_the_agent_for_the_cooldown() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "work").unwrap();
    a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskRejected { task_id: id.clone(), reason: Some("busy".into()) });
    assert_eq!(h.status(&id).0, TaskStatus::Queued);
    h.advance(Duration::from_millis(4_999));
    assert_eq!(a.assigned(), None, "not offered again during the cooldown");
    h.advance(Duration::from_millis(1));
    assert!(a.assigned().is_some(), "offered again after it");
}

#[test]
fn agents_cancel_and_retry_only_what_they_submitted() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let t2 = h.agent_token("a2");
    let mine = h.submit(&t1, "mine").unwrap();
    let admins = h.submit(ADMIN, "admin's").unwrap();
    let e = h.api(&t2, CancelTask { task_id: mine.clone() }).unwrap_err();
    assert_eq!(e.error, ErrorCode::Forbidden);
    assert!(e.message.unwrap().contains("submitted by a1"));
    assert_eq!(h.api(&t1, CancelTask { task_id: admins.clone() }).unwrap_err().error, ErrorCode::Forbidden);
    assert_eq!(h.status(&admins).0, TaskStatus::Queued, "nothing changed");
    assert!(h.api(&t1, CancelTask { task_id: mine.clone() }).is_ok());
    // The cancelled task was loaded back for the check and leaves memory again.
    assert_eq!(h.api(&t2, RetryTask { task_id: mine.clone() }).unwrap_err().error, ErrorCode::Forbidden);
    assert_eq!(h.core.open_task_count(), 1);
    assert!(h.api(&t1, RetryTask { task_id: mine }).is_ok());
    assert!(h.api(ADMIN, CancelTask { task_id: admins }).is_ok());
}

#[test]
fn restart_tells_unknown_from_offline() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let a = h.connect(1, "a1", &token);
    h.disconnect(a);
    let restart = |agent_id: &str| RestartAgent { agent_id: agent_id.into(), reason: None, force: false };
    let e = h.api(ADMIN, restart("nobody")).unwrap_err();
    assert_eq!(e.error, ErrorCode::UnknownAgent);
    let e = h.api(ADMIN, restart("a1")).unwrap_err();
    assert_eq!(e.error, ErrorCode::AgentNotConnected);
    assert!(e.message.unwrap().contains("offline"));
}

#[test]
fn the_open_task_limit_refuses_more() {
    let mut h = harness_with(Limits { max_open_tasks: 2, ..Limits::default() });
    h.submit(ADMIN, "1").unwrap();
    h.submit(ADMIN, "2").unwrap();
    assert_eq!(h.submit(ADMIN, "3").unwrap_err().error, ErrorCode::QueueFull);
}

#[test]
fn a_queued_task_is_handed_out_with_its_stored_payload() {
    let mut h = harness();
    let mut submit = SubmitTask::new("from disk");
    submit.extra.insert("repo".into(), serde_json::json!("r"));
    h.api(ADMIN, submit).unwrap();
    assert!(h.core.tasks.values().all(|o| o.payload.is_none()), "memory keeps only the head once committed");
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let assign = a.frames().into_iter().find_map(|f| match f {
        HubFrame::TaskAssign(t) => Some(t),
        _ => None,
    });
    let assign = assign.expect("assigned on identify");
    assert_eq!((assign.description.as_str(), &assign.extra["repo"]), ("from disk", &serde_json::json!("r")));
}

#[test]
fn a_backlog_no_idle_agent_can_take_does_not_hold_up_the_rest() {
    let mut h = harness();
    for n in 0..2_000 {
        let mut t = SubmitTask::new(format!("gpu {n}"));
        t.needed_capabilities = vec!["gpu".into()];
        t.priority = proto::api::Priority::Urgent;
        h.api(ADMIN, t).unwrap();
    }
    let plain = h.submit(ADMIN, "anyone").unwrap();
    let token = h.agent_token("cpu");
    let mut cpu = h.connect(1, "cpu", &token);
    assert_eq!(cpu.assigned().map(|(t, _)| t), Some(plain), "the urgent backlog needs a GPU");
    assert_eq!(h.core.queued_count(), 2_000);
    let token = h.agent_token("gpu");
    let mut gpu = h.connect_as(2, Identify { capabilities: vec!["gpu".into()], ..identify("gpu", &token) });
    let (first, _) = gpu.assigned().expect("the oldest GPU task");
    let (rows, _) =
        h.reader.list_tasks(TaskQuery { status: Some(TaskStatus::Assigned), limit: 10, ..Default::default() }).unwrap();
    assert!(rows.iter().any(|t| t.head.task_id == first && t.payload.description == "gpu 0"));
}

/// Every event published so far, by name.
fn event_names(bus: &crate::events::EventBus) -> Vec<&'static str> {
    bus.subscribe(Some("1-0")).backlog.iter().map(|p| p.name).collect()
}

/// What an agent says when it connects: its id and token, protocol 1, nothing else.
fn identify(agent_id: &str, token: &str) -> Identify {
    Identify {
        agent_id: agent_id.into(),
        token: token.into(),
        name: None,
        status: None,
        capabilities: vec![],
        client_type: None,
        protocol_version: Some(1),
        pm2_info: None,
        process_info: None,
        ollama_url: None,
        account: None,
    }
}

/// A `task_complete` reporting `result` and `usage`, and nothing else.
fn completed(id: &str, generation: u64, result: serde_json::Value, usage: Option<proto::Usage>) -> AgentFrame {
    AgentFrame::TaskComplete {
        task_id: id.into(),
        generation,
        result: Some(result),
        tokens_used: None,
        verification_report: None,
        verification_history: None,
        usage,
        change: None,
        session_id: None,
    }
}

/// A plain success.
fn complete(id: &str, generation: u64) -> AgentFrame {
    completed(id, generation, serde_json::json!({"status": "success"}), None)
}

fn needs_input(task_id: &str, request_id: &str, question: &str) -> AgentFrame {
    AgentFrame::NeedsInput {
        task_id: task_id.into(),
        request_id: request_id.into(),
        question: question.into(),
        options: vec!["yes".into(), "no".into()],
    }
}

#[test]
fn a_question_is_asked_answered_and_delivered_across_a_reconnect() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "ask me").unwrap();
    a.assigned().unwrap();
    h.frame(&a, AgentFrame::TaskAccepted { task_id: id.clone() });
    h.frame(&a, needs_input(&id, "g1-1", "Deploy to prod?"));
    h.frame(&a, needs_input(&id, "g1-1", "Deploy to prod?")); // re-sent after a blip: no change
    let t = h.reader.task(&id).unwrap().unwrap();
    let q = t.head.needs_input.clone().expect("the question is stored");
    assert_eq!((q.request_id.as_str(), q.options.len()), ("g1-1", 2));
    assert_eq!(h.reader.transitions(&id).unwrap().iter().filter(|t| t.reason.starts_with("needs input")).count(), 1);
    // The answer goes out at once to the connected holder...
    let answer =
        proto::api::AnswerTask { task_id: id.clone(), answer: "yes, go".into(), request_id: Some("g1-1".into()) };
    assert!(matches!(h.api(ADMIN, answer), Ok(r) if r.sent));
    let inputs = |a: &mut Agent| a.frames().into_iter().filter(|f| matches!(f, HubFrame::TaskInput { .. })).count();
    assert_eq!(inputs(&mut a), 1);
    // ...and again after a reconnect, until the sidecar confirms it wrote it.
    h.disconnect(a);
    let mut b = h.connect(2, "a1", &token);
    h.frame(
        &b,
        AgentFrame::StateReport { task_id: Some(id.clone()), status: None, generation: None, assigned_at: None },
    );
    assert_eq!(inputs(&mut b), 1);
    h.frame(&b, AgentFrame::TaskInputAck { task_id: id.clone(), request_id: "g1-1".into() });
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.needs_input, t.head.answer), (None, None));
    let names = event_names(&h.bus);
    for n in ["needs_input", "input_answered", "input_delivered"] {
        assert_eq!(names.iter().filter(|x| **x == n).count(), 1, "{n} in {names:?}");
    }
}

#[test]
fn a_holder_asking_in_a_loop_is_refused_after_the_limit_of_its_attempt() {
    let mut h = harness();
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    let id = h.submit(ADMIN, "ask me").unwrap();
    a.assigned().unwrap();
    let max = super::questions::MAX_PER_ATTEMPT;
    for n in 0..max + 5 {
        h.frame(&a, needs_input(&id, &format!("q{n}"), "again?"));
    }
    let asked =
        |h: &Harness| h.reader.transitions(&id).unwrap().iter().filter(|t| t.reason.starts_with("needs input")).count();
    assert_eq!(asked(&h), max as usize);
    assert_eq!(event_names(&h.bus).iter().filter(|n| **n == "needs_input").count(), max as usize);
    let refused = a
        .frames()
        .into_iter()
        .filter(|f| matches!(f, HubFrame::Error(e) if e.error == proto::FrameErrorCode::InvalidState))
        .count();
    assert_eq!(refused, 5, "each question over the limit is answered with an error");
    let open = h.reader.task(&id).unwrap().unwrap().head.needs_input.unwrap();
    assert_eq!(open.request_id, format!("q{}", max - 1), "the last question allowed stays open");
    // The next attempt may ask again.
    h.frame(&a, AgentFrame::TaskRejected { task_id: id.clone(), reason: Some("later".into()) });
    h.disconnect(a);
    let mut b = h.connect(2, "a1", &token);
    h.advance(std::time::Duration::from_secs(10));
    b.assigned().unwrap();
    h.frame(&b, needs_input(&id, "next", "once more?"));
    assert_eq!(asked(&h), max as usize + 1);
}

#[test]
fn only_the_submitter_or_the_admin_answers_and_only_the_open_question() {
    let mut h = harness();
    let t1 = h.agent_token("a1");
    let t2 = h.agent_token("a2");
    let mut a = h.connect(1, "a1", &t1);
    let id = h.submit(&t2, "a2 asks a1 to work").unwrap();
    a.assigned().unwrap();
    let answer = |r: Option<&str>| proto::api::AnswerTask {
        task_id: id.clone(),
        answer: "ok".into(),
        request_id: r.map(str::to_string),
    };
    assert_eq!(h.api(&t2, answer(None)).unwrap_err().error, ErrorCode::InvalidState, "no question yet");
    h.frame(&a, needs_input(&id, "g1-1", "which branch?"));
    h.frame(&a, needs_input(&id, "g1-2", "which branch, really?"));
    assert_eq!(h.api(&t1, answer(None)).unwrap_err().error, ErrorCode::Forbidden, "a1 did not submit it");
    let stale = h.api(&t2, answer(Some("g1-1"))).unwrap_err();
    assert!(stale.message.unwrap().contains("g1-2"), "a newer question replaced it");
    assert!(h.api(&t2, answer(Some("g1-2"))).is_ok());
    // The holder gives the task back: the question and the answer go with its attempt.
    h.frame(&a, AgentFrame::TaskRejected { task_id: id.clone(), reason: Some("no".into()) });
    let t = h.reader.task(&id).unwrap().unwrap();
    assert_eq!((t.head.needs_input, t.head.answer), (None, None));
}

fn usage(cost: f64) -> proto::Usage {
    proto::Usage {
        input_tokens: Some(100),
        output_tokens: Some(50),
        cost_usd: Some(cost),
        model: Some("m".into()),
        ..Default::default()
    }
}

/// The agent takes the next task, accepts it and completes it reporting `cost`.
fn work_once(h: &mut Harness, a: &mut Agent, cost: f64) -> String {
    let (id, generation) = a.assigned().expect("a task");
    h.frame(a, AgentFrame::TaskAccepted { task_id: id.clone() });
    h.frame(a, completed(&id, generation, serde_json::json!({"status": "success"}), Some(usage(cost))));
    id
}

#[test]
fn an_agent_over_its_budget_gets_no_new_task_until_midnight_utc() {
    let mut limits = Limits::default();
    limits.budgets.agents.insert("a1".into(), crate::config::Budget { daily_usd: Some(1.0), daily_tokens: None });
    let mut h = harness_with(limits);
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    for n in 0..3 {
        h.submit(ADMIN, &format!("t{n}")).unwrap();
    }
    work_once(&mut h, &mut a, 0.6);
    let id = work_once(&mut h, &mut a, 0.5);
    assert_eq!(h.reader.task(&id).unwrap().unwrap().usage.and_then(|u| u.cost_usd), Some(0.5));
    assert_eq!(a.assigned(), None, "over budget: the third task waits");
    assert!(event_names(&h.bus).contains(&"budget_exhausted"));
    let spend = h.core.spend_of("a1");
    assert!(spend.exhausted && (spend.cost_usd - 1.1).abs() < 1e-9, "{spend:?}");
    // Another agent takes it meanwhile; the next day a1 works again.
    let t2 = h.agent_token("a2");
    let mut b = h.connect(2, "a2", &t2);
    assert!(b.assigned().is_some());
    h.submit(ADMIN, "tomorrow's").unwrap();
    let to_midnight = crate::store::DAY_MS - h.clock.now().wall_ms % crate::store::DAY_MS;
    h.advance(Duration::from_millis(to_midnight - 1));
    assert_eq!(a.assigned(), None);
    h.advance(Duration::from_millis(1));
    assert!(a.assigned().is_some(), "a new UTC day");
    assert!(!h.core.spend_of("a1").exhausted);
}

#[test]
fn the_fleet_budget_stops_all_dispatch() {
    let mut limits = Limits::default();
    limits.budgets.fleet = crate::config::Budget { daily_usd: None, daily_tokens: Some(300) };
    let mut h = harness_with(limits);
    let token = h.agent_token("a1");
    let mut a = h.connect(1, "a1", &token);
    for n in 0..3 {
        h.submit(ADMIN, &format!("t{n}")).unwrap();
    }
    work_once(&mut h, &mut a, 0.0);
    work_once(&mut h, &mut a, 0.0);
    assert_eq!(a.assigned(), None, "300 tokens spent: nothing more today");
    assert!(h.core.fleet_spend().exhausted);
}

#[test]
fn events_go_out_only_once_their_batch_is_durable() {
    let mut h = harness();
    h.submit(ADMIN, "seen").unwrap();
    h.full.store(true, Ordering::SeqCst);
    assert!(h.submit(ADMIN, "never happened").is_err());
    h.full.store(false, Ordering::SeqCst);
    let events = h.bus.subscribe(Some("1-0")).backlog;
    let tasks: Vec<_> = events.iter().filter(|p| p.name == "task").collect();
    assert_eq!(tasks.len(), 1, "{:?}", events.iter().map(|p| p.json.clone()).collect::<Vec<_>>());
}
