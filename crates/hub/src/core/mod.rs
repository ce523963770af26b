//! The hub core: one thread owns every task, agent, token and timer, and receives a closed
//! [`Event`] enum over a bounded channel.
//!
//! Events are handled in batches. All store mutations a batch produces are committed in one
//! durable transaction (group commit), and only then are the batch's effects released: acks,
//! `task_assign` pushes, HTTP replies. So an ack or a 201 always means "on disk", and a crash
//! between handling and committing loses nothing anyone was told about. Time comes from an
//! injected [`Clock`], so every timer is unit-tested by advancing it (see `tests.rs`).
//!
//! - `tasks.rs`: submissions, the one `transition` function, reports, retry and cancel.
//! - `agents.rs`: connections, identify, presence, bans, the frames agents send.
//! - `dispatch.rs`: matching queued tasks with idle agents, and the timers.
//! - `api.rs`: the HTTP requests the core answers, and who may make them.
//! - `questions.rs`: agents that ask a person for input, and the answers on their way back.
//! - `budget.rs`: usage as reported, spend per UTC day, agents over budget.
//! - `deps.rs`: tasks that depend on tasks (`blocked`), children, cancels that cascade.

mod agents;
pub mod api;
mod budget;
mod deps;
mod dispatch;
mod integration;
mod limits;
mod questions;
mod queue;
mod tasks;
#[cfg(test)]
mod tests;

use crate::clock::{Clock, Now};
use crate::config::{Limits, Timings};
use crate::events::{Audience, EventBus};
use crate::metrics::Metrics;
use crate::model::{Payload, TaskHead, TaskStatus, TokenRecord};
use crate::store::{Mutation, Snapshot, Store, StoreError};
use agents::{Agent, Ban, Conn};
use api::{ApiRequest, CoreRequest, PendingReply};
use proto::api::{ApiError, ErrorCode, EventKind};
use proto::{AgentFrame, ErrorFrame, FrameErrorCode, HubFrame};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub type ConnId = u64;

/// What the core tells one connection task.
#[derive(Debug)]
pub enum Out {
    Frame(HubFrame),
    Identified(String),
    IdentifyFailed,
    Close(u16, String),
}

/// Frames waiting for one socket. A peer that does not read them is closed, never buffered for.
pub const OUT_CAPACITY: usize = 64;
pub type OutTx = mpsc::Sender<Out>;

/// Events waiting for the core; senders wait when it is full (backpressure, not memory).
pub const EVENT_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub enum Event {
    Connected {
        conn: ConnId,
        tx: OutTx,
    },
    Frame {
        conn: ConnId,
        frame: AgentFrame,
    },
    /// The connection broke the violation limit and is being closed with 1008.
    Banned {
        conn: ConnId,
    },
    Disconnected {
        conn: ConnId,
    },
    Api {
        auth: Option<String>,
        req: ApiRequest,
    },
    Shutdown,
}

/// Cloneable sender side used by the HTTP and WebSocket layers.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Event>,
}

impl CoreHandle {
    pub async fn send(&self, ev: Event) {
        // A closed channel means the core has stopped (shutdown); nothing useful is left to do.
        let _ = self.tx.send(ev).await;
    }

    /// For a thread outside the runtime (the lease keeper). False when the core has stopped.
    pub fn blocking_send(&self, ev: Event) -> bool {
        self.tx.blocking_send(ev).is_ok()
    }

    /// Asks the core `req` with `auth`'s token and waits for its typed answer.
    pub async fn ask<R: CoreRequest>(&self, auth: Option<String>, req: R) -> Result<R::Answer, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Api { auth, req: req.into_request(tx) }).await;
        rx.await.unwrap_or_else(|_| Err(ApiError::new(ErrorCode::ShuttingDown)))
    }
}

/// How an outgoing frame is treated when its batch fails to commit.
#[derive(Debug)]
enum SendKind {
    /// Does not depend on durable state (pong, identified, errors): sent regardless.
    Plain,
    /// Confirms a durable change; replaced by a `storage_unavailable` error if the commit fails.
    Ack { task_id: String },
    /// A push of new durable state (`task_assign`, `task_cancelled`): dropped if the commit fails.
    Push { dispatch_started: Option<Instant> },
}

#[derive(Debug)]
enum Effect {
    Send { conn: ConnId, out: Out, kind: SendKind },
    Reply(Box<dyn PendingReply>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    AcceptDeadline {
        task_id: String,
        generation: u64,
    },
    Grace {
        task_id: String,
        generation: u64,
    },
    RetryDue {
        task_id: String,
        generation: u64,
    },
    /// A reconnected agent must claim the task it holds before this fires.
    Claim {
        task_id: String,
        generation: u64,
        conn: ConnId,
    },
    Redispatch,
    /// Midnight UTC: budgets start over.
    NewDay,
    /// A task held back until a limit's reset may be queued now.
    NotBefore {
        task_id: String,
    },
    /// An agent's provider limit may have ended.
    LimitEnds {
        agent_id: String,
    },
}

struct OpenTask {
    head: TaskHead,
    /// Kept only from submission until the batch commits: a task handed out in the batch that
    /// submitted it cannot be read back from the store yet. Otherwise read when assigned.
    payload: Option<Box<Payload>>,
    /// When the task last entered the queue, for the dispatch latency histogram.
    queued_at: Instant,
    /// After `task_rejected`: not offered to this agent again before the instant.
    rejected_by: Option<(String, Instant)>,
    /// Set when the holder reconnects on this connection; cleared by any frame about the task.
    unclaimed: Option<ConnId>,
    /// Questions asked in an attempt: (generation, count). Each adds a history line, an event and
    /// notifications, so a holder may ask only so many (`questions::MAX_PER_ATTEMPT`).
    questions: (u64, u32),
    /// The last question closed unanswered and why, to tell a person who answers it late.
    closed_question: Option<(String, String)>,
    /// The agent and generation of the attempt the hub last took back (lease, claim or accept
    /// timeout): its late `task_complete` is taken while nobody else holds the task.
    taken_from: Option<(String, u64)>,
}

impl OpenTask {
    fn new(head: TaskHead, now: Instant) -> Self {
        OpenTask {
            head,
            payload: None,
            queued_at: now,
            rejected_by: None,
            unclaimed: None,
            questions: (0, 0),
            closed_question: None,
            taken_from: None,
        }
    }
}

pub struct Core<S: Store, C: Clock> {
    store: S,
    clock: C,
    /// The time of what is being handled; read from the clock at each entry point.
    now: Now,
    t: Timings,
    limits: Limits,
    admin_hash: String,
    tasks: HashMap<String, OpenTask>,
    /// Queued tasks by class, each in dispatch order: lane, then submission order.
    queue: queue::Queue,
    agents: BTreeMap<String, Agent>,
    conns: HashMap<ConnId, Conn>,
    tokens: HashMap<String, TokenRecord>,
    bans: HashMap<String, Ban>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    next_seq: i64,
    counts: HashMap<TaskStatus, u64>,
    pending: Vec<Mutation>,
    effects: Vec<Effect>,
    /// Tasks whose payload is held in memory until this batch commits.
    fresh: Vec<String>,
    /// Events of this batch, published once it commits.
    events: Vec<(EventKind, Audience)>,
    bus: Arc<EventBus>,
    spending: budget::Spending,
    deps: deps::Deps,
    dispatch_needed: bool,
    metrics: Metrics,
    /// Another hub leads now (a commit was fenced off): this core stops.
    deposed: bool,
    /// Per serial key, its tasks held by agents now (a key's next task waits for none).
    serial_held: HashMap<String, u32>,
}

const MAX_BATCH: usize = 1024;

impl<S: Store, C: Clock> Core<S, C> {
    /// Loads durable state. Tasks that were held when the hub stopped get a grace lease,
    /// so agents reconnecting after a hub restart carry on.
    pub fn new(
        store: S,
        clock: C,
        t: Timings,
        limits: Limits,
        admin_token: &str,
        bus: Arc<EventBus>,
    ) -> Result<Self, StoreError> {
        let now = clock.now();
        let mut core = Core {
            store,
            clock,
            now,
            t,
            limits,
            admin_hash: crate::auth::hash_token(admin_token),
            tasks: HashMap::new(),
            queue: queue::Queue::default(),
            agents: BTreeMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            bans: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_seq: 1,
            counts: HashMap::new(),
            pending: Vec::new(),
            effects: Vec::new(),
            fresh: Vec::new(),
            events: Vec::new(),
            bus,
            spending: budget::Spending::default(),
            deps: deps::Deps::default(),
            dispatch_needed: true,
            metrics: Metrics::default(),
            deposed: false,
            serial_held: HashMap::new(),
        };
        core.reload()?;
        core.arm_new_day();
        Ok(core)
    }

    /// Replaces every durable part of the state with what the store holds: at start, and after
    /// a failed commit, when memory ran ahead of the disk. Live connections stay attached.
    fn reload(&mut self) -> Result<(), StoreError> {
        let day_start = budget::day_start(self.now.wall_ms);
        let Snapshot { open, max_seq, counts, tokens, agents, spend_today } = self.store.load(day_start)?;
        self.spending.restore(budget::day_of(self.now.wall_ms), spend_today);
        self.next_seq = self.next_seq.max(max_seq + 1);
        self.counts = counts;
        self.tokens = tokens.into_iter().map(|r| (r.hash.clone(), r)).collect();
        let live: HashMap<String, ConnId> =
            self.conns.iter().filter_map(|(id, c)| c.agent.clone().map(|a| (a, *id))).collect();
        let mut remembered: BTreeMap<String, Agent> = BTreeMap::new();
        for r in agents {
            let mut agent = Agent::from_record(r);
            if let Some(old) = self.agents.remove(&agent.agent_id) {
                agent.keep_live_state(old);
            }
            remembered.insert(agent.agent_id.clone(), agent);
        }
        // Agents connected in a batch that never committed are still connected.
        for (agent_id, old) in std::mem::take(&mut self.agents) {
            if live.contains_key(&agent_id) {
                remembered.insert(agent_id, old);
            }
        }
        for (agent_id, conn) in &live {
            if let Some(a) = remembered.get_mut(agent_id) {
                a.conn = Some(*conn);
            }
        }
        self.agents = remembered;
        self.tasks.clear();
        self.queue.clear();
        self.timers.clear();
        self.serial_held.clear();
        for a in self.agents.values_mut() {
            a.current_task = None;
        }
        let mono = self.now.mono;
        for head in open {
            let id = head.task_id.clone();
            match head.status {
                TaskStatus::Queued => match head.not_before.filter(|t| *t > self.now.wall_ms) {
                    Some(t) => {
                        let wait = Duration::from_millis(t - self.now.wall_ms);
                        self.arm(wait, Timer::NotBefore { task_id: id.clone() })
                    }
                    None => self.queue.insert(&head),
                },
                TaskStatus::Assigned | TaskStatus::Working => {
                    if let Some(k) = &head.serial_key {
                        *self.serial_held.entry(k.clone()).or_default() += 1;
                    }
                    let holder = head.assigned_to.clone().unwrap_or_default();
                    let connected = self.agents.get(&holder).is_some_and(|a| a.conn.is_some());
                    if let Some(a) = self.agents.get_mut(&holder) {
                        a.current_task = Some(id.clone());
                    }
                    if !connected {
                        self.arm(
                            self.t.grace_period,
                            Timer::Grace { task_id: id.clone(), generation: head.generation },
                        );
                    }
                    if head.status == TaskStatus::Assigned {
                        let generation = head.generation;
                        self.arm(self.t.accept_timeout, Timer::AcceptDeadline { task_id: id.clone(), generation });
                    }
                }
                TaskStatus::WaitingRetry => {
                    let wait = Duration::from_millis(head.retry_at.unwrap_or(0).saturating_sub(self.now.wall_ms));
                    self.arm(wait, Timer::RetryDue { task_id: id.clone(), generation: head.generation });
                }
                TaskStatus::Blocked => {}
                _ => continue,
            }
            self.tasks.insert(id, OpenTask::new(head, mono));
        }
        self.rebuild_deps();
        self.fresh.clear();
        self.arm_limits();
        self.dispatch_needed = true;
        Ok(())
    }

    pub fn open_task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Reads the clock: every entry point calls it first, so one event sees one time.
    fn tick(&mut self) {
        self.now = self.clock.now();
    }

    /// Handles a batch: each event, the due timers, dispatch, then the group commit.
    pub fn step(&mut self, batch: impl IntoIterator<Item = Event>) {
        for ev in batch {
            self.handle(ev);
        }
        self.fire_timers();
        if self.dispatch_needed {
            self.dispatch();
        }
        self.flush();
    }

    /// When the next timer is due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Runs the core until `Shutdown` or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        // Only to wait on the channel with a timeout; everything else here is blocking.
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "cannot start the core's timer runtime"),
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = self
                .next_due()
                .map(|at| at.saturating_duration_since(self.clock.now().mono))
                .unwrap_or(Duration::from_secs(3600));
            match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(ev)) => batch.push(ev),
                Ok(None) => break,
                Err(_) => {}
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|e| matches!(e, Event::Shutdown));
            self.step(batch.drain(..).filter(|e| !matches!(e, Event::Shutdown)));
            if stop || self.deposed {
                break;
            }
        }
        if self.deposed {
            tracing::warn!("hub core stopped: another hub leads; nothing more was written");
            return;
        }
        self.flush();
        tracing::info!(open_tasks = self.tasks.len(), "hub core stopped; all writes committed");
    }

    /// Commits the batch's mutations, then releases its effects.
    fn flush(&mut self) {
        let committed = if self.pending.is_empty() {
            Ok(())
        } else {
            let started = self.clock.now().mono;
            let r = self.store.commit(&self.pending);
            self.metrics.commits += 1;
            self.metrics.commit_seconds.observe(self.clock.now().mono.saturating_duration_since(started));
            r
        };
        self.pending.clear();
        let effects = std::mem::take(&mut self.effects);
        match committed {
            Ok(()) => {
                for (kind, audience) in std::mem::take(&mut self.events) {
                    self.bus.publish(self.now.wall_ms, kind, audience);
                }
                // The store has them now; memory keeps only the small heads.
                for id in std::mem::take(&mut self.fresh) {
                    if let Some(o) = self.tasks.get_mut(&id) {
                        o.payload = None;
                    }
                }
                for e in effects {
                    match e {
                        Effect::Send { conn, out, kind } => {
                            if let SendKind::Push { dispatch_started: Some(t) } = kind {
                                self.metrics
                                    .dispatch_latency
                                    .observe(self.clock.now().mono.saturating_duration_since(t));
                            }
                            self.deliver(conn, out);
                        }
                        Effect::Reply(reply) => reply.send(None),
                    }
                }
            }
            Err(err @ StoreError::Deposed { .. }) => {
                tracing::error!(error = %err, "a commit was fenced off: another hub leads; this core stops");
                self.events.clear();
                self.deposed = true;
                let refused = ApiError::new(ErrorCode::NotLeader).msg("this hub stopped leading; retry at the leader");
                for e in effects {
                    match e {
                        Effect::Send { conn, out, kind: SendKind::Plain } => self.deliver(conn, out),
                        Effect::Send { .. } => {}
                        Effect::Reply(reply) => reply.send(Some(refused.clone())),
                    }
                }
            }
            Err(err) => {
                self.events.clear();
                self.metrics.commit_errors += 1;
                tracing::error!(error = %err, "store commit failed; nothing in this batch was acknowledged");
                let unavailable = ApiError::new(ErrorCode::StorageUnavailable).msg(err.to_string());
                for e in effects {
                    match e {
                        Effect::Send { conn, out, kind } => match kind {
                            SendKind::Plain => self.deliver(conn, out),
                            SendKind::Ack { task_id } => {
                                let e = ErrorFrame::new(FrameErrorCode::StorageUnavailable)
                                    .task(&task_id)
                                    .message(err.to_string());
                                self.deliver(conn, Out::Frame(HubFrame::Error(e)))
                            }
                            SendKind::Push { .. } => {}
                        },
                        Effect::Reply(reply) => reply.send(Some(unavailable.clone())),
                    }
                }
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "cannot reload state from the store");
                }
                // Retry later rather than spinning on a failing disk.
                self.dispatch_needed = false;
                self.arm(Duration::from_secs(1), Timer::Redispatch);
            }
        }
    }

    /// Hands a frame to a connection's task; a connection that does not keep up is closed.
    fn deliver(&mut self, conn: ConnId, out: Out) {
        let Some(c) = self.conns.get(&conn) else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(out) {
            tracing::warn!(
                conn,
                agent_id = c.agent.as_deref().unwrap_or(""),
                "connection does not read its frames; closing it"
            );
            // The task sees its channel closed and ends the socket; the core forgets it now.
            self.on_disconnect(conn);
        }
    }

    fn send(&mut self, conn: ConnId, frame: HubFrame, kind: SendKind) {
        self.effects.push(Effect::Send { conn, out: Out::Frame(frame), kind });
    }

    /// Records an event of this batch; it goes out once the batch is durable.
    fn event(&mut self, kind: EventKind, audience: Audience) {
        self.events.push((kind, audience));
    }

    fn send_error(&mut self, conn: ConnId, e: ErrorFrame) {
        self.send(conn, HubFrame::Error(e), SendKind::Plain);
    }

    fn arm(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((self.now.mono + after, self.timer_seq), timer);
    }

    fn fire_timers(&mut self) {
        self.tick();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now.mono {
                break;
            }
            let timer = entry.remove();
            self.on_timer(timer);
        }
    }

    fn handle(&mut self, ev: Event) {
        self.tick();
        match ev {
            Event::Connected { conn, tx } => {
                self.conns.insert(conn, Conn { tx, agent: None });
                self.metrics.ws_connections_total += 1;
            }
            Event::Frame { conn, frame } => self.on_frame(conn, frame),
            Event::Banned { conn } => self.on_banned(conn),
            Event::Disconnected { conn } => self.on_disconnect(conn),
            Event::Api { auth, req } => {
                let reply = self.on_api(auth, req);
                self.effects.push(Effect::Reply(reply));
            }
            Event::Shutdown => {}
        }
    }
}

/// Starts the core on its own thread. The store is blocking; a dedicated thread keeps its
/// fsyncs off the async workers, and a single owner needs no locks.
pub fn spawn<S: Store, C: Clock>(core: Core<S, C>) -> (CoreHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
    let handle = std::thread::Builder::new()
        .name("hub-core".into())
        .spawn(move || core.run(rx))
        .expect("spawn the hub core thread");
    (CoreHandle { tx }, handle)
}
