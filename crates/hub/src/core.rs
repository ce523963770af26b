//! The hub core: one thread owns every task, agent, token and timer, and receives a closed
//! [`Event`] enum over a channel.
//!
//! Events are handled in batches. All store mutations a batch produces are committed in one
//! durable transaction (group commit), and only then are the batch's effects released: acks,
//! `task_assign` pushes, HTTP replies. So an ack or a 201 always means "on disk", and a crash
//! between handling and committing loses nothing anyone was told about.

use crate::auth::{self, Role};
use crate::config::Timings;
use crate::metrics::Metrics;
use crate::model::{now_ms, AgentRecord, Priority, Task, TaskStatus, TokenRecord, Transition};
use crate::store::{Mutation, Store, StoreError};
use proto::{AgentFrame, ErrorFrame, HubFrame, Identify, ProcessInfo, TaskAssign};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};

pub type ConnId = u64;

/// What the core tells one connection task.
#[derive(Debug)]
pub enum Out {
    Frame(HubFrame),
    Identified(String),
    IdentifyFailed,
    Close(u16, String),
}
pub type OutTx = tmpsc::UnboundedSender<Out>;

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
        reply: oneshot::Sender<ApiResult>,
    },
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct NewTask {
    pub description: String,
    pub priority: Priority,
    pub metadata: Value,
    pub max_retries: u32,
    pub needed_capabilities: Vec<String>,
    pub assign_to: Option<String>,
    pub extra: Map<String, Value>,
}

#[derive(Debug)]
pub enum ApiRequest {
    Submit(NewTask),
    ListTasks { status: Option<TaskStatus>, limit: usize },
    GetTask(String),
    Stats,
    Retry(String),
    Cancel(String),
    Agents,
    CreateToken(String),
    ListTokens,
    RevokeToken(String),
    RestartAgent { agent_id: String, reason: String, force: bool },
    PutCheckpoint { agent_id: String, body: Value },
    GetCheckpoint(String),
    Metrics,
}

#[derive(Debug)]
pub enum ApiBody {
    Json(Value),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    pub message: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: &str) -> Self {
        ApiError { status, error: error.into(), message: None }
    }
    pub fn msg(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }
}

pub type ApiResult = Result<(u16, ApiBody), ApiError>;

fn ok(status: u16, v: Value) -> ApiResult {
    Ok((status, ApiBody::Json(v)))
}

/// Cloneable sender side used by the HTTP and WebSocket layers.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Event>,
}

impl CoreHandle {
    pub fn send(&self, ev: Event) {
        // A closed channel means the core has stopped (shutdown); nothing useful is left to do.
        let _ = self.tx.send(ev);
    }

    pub async fn call(&self, auth: Option<String>, req: ApiRequest) -> ApiResult {
        let (reply, rx) = oneshot::channel();
        self.send(Event::Api { auth, req, reply });
        rx.await.unwrap_or_else(|_| Err(ApiError::new(503, "shutting_down")))
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
    Reply { reply: oneshot::Sender<ApiResult>, result: ApiResult },
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
}

struct OpenTask {
    task: Task,
    /// When the task last entered the queue, for the dispatch latency histogram.
    queued_at: Instant,
    /// After `task_rejected`: not offered to this agent again before the instant.
    rejected_by: Option<(String, Instant)>,
    /// Set when the holder reconnects on this connection; cleared by any frame about the task.
    unclaimed: Option<ConnId>,
}

impl OpenTask {
    fn new(task: Task) -> Self {
        OpenTask { task, queued_at: Instant::now(), rejected_by: None, unclaimed: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Idle,
    Working,
    Restarting,
    Offline,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 4] =
        [AgentStatus::Idle, AgentStatus::Working, AgentStatus::Restarting, AgentStatus::Offline];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Working => "working",
            AgentStatus::Restarting => "restarting",
            AgentStatus::Offline => "offline",
        }
    }
}

struct Agent {
    agent_id: String,
    conn: Option<ConnId>,
    name: Option<String>,
    client_type: Option<String>,
    capabilities: BTreeSet<String>,
    process_info: Option<ProcessInfo>,
    reported_status: Option<String>,
    resources: Option<Map<String, Value>>,
    connected_at: Option<u64>,
    last_seen: u64,
    current_task: Option<String>,
    restarting: bool,
    /// Orders idle agents: the one idle longest gets the next task.
    idle_since: u64,
    /// After a `busy` rejection the agent gets no new task before this instant.
    paused_until: Option<Instant>,
}

impl Agent {
    fn from_record(r: AgentRecord) -> Agent {
        Agent {
            agent_id: r.agent_id,
            conn: None,
            name: r.name,
            client_type: r.client_type,
            capabilities: r.capabilities.into_iter().collect(),
            process_info: r.process_info,
            reported_status: None,
            resources: None,
            connected_at: r.connected_at,
            last_seen: r.last_seen,
            current_task: None,
            restarting: r.restarting,
            idle_since: r.last_seen,
            paused_until: None,
        }
    }

    fn record(&self) -> AgentRecord {
        AgentRecord {
            agent_id: self.agent_id.clone(),
            name: self.name.clone(),
            client_type: self.client_type.clone(),
            capabilities: self.capabilities.iter().cloned().collect(),
            process_info: self.process_info.clone(),
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            restarting: self.restarting,
        }
    }

    fn status(&self) -> AgentStatus {
        if self.restarting {
            AgentStatus::Restarting
        } else if self.conn.is_none() {
            AgentStatus::Offline
        } else if self.current_task.is_some() {
            AgentStatus::Working
        } else {
            AgentStatus::Idle
        }
    }
}

struct Conn {
    tx: OutTx,
    agent: Option<String>,
}

struct Ban {
    level: usize,
    until: Instant,
    last: Instant,
}

pub struct Core<S: Store> {
    store: S,
    t: Timings,
    admin_hash: String,
    tasks: HashMap<String, OpenTask>,
    /// Queued tasks in dispatch order: lane, then submission order.
    queue: BTreeSet<(Priority, i64, String)>,
    agents: HashMap<String, Agent>,
    conns: HashMap<ConnId, Conn>,
    tokens: HashMap<String, TokenRecord>,
    bans: HashMap<String, Ban>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    next_seq: i64,
    counts: HashMap<TaskStatus, u64>,
    pending: Vec<Mutation>,
    effects: Vec<Effect>,
    dispatch_needed: bool,
    metrics: Metrics,
}

const MAX_BATCH: usize = 1024;

impl<S: Store> Core<S> {
    /// Loads durable state. Tasks that were held when the hub stopped get a grace lease,
    /// so agents reconnecting after a hub restart carry on.
    pub fn new(mut store: S, t: Timings, admin_token: &str) -> Result<Self, StoreError> {
        let next_seq = store.max_seq()? + 1;
        let tokens = store.tokens()?.into_iter().map(|r| (r.hash.clone(), r)).collect();
        let mut counts = HashMap::new();
        for (s, n) in store.count_by_status()? {
            counts.insert(s, n);
        }
        let mut core = Core {
            store,
            t,
            admin_hash: auth::hash_token(admin_token),
            tasks: HashMap::new(),
            queue: BTreeSet::new(),
            agents: HashMap::new(),
            conns: HashMap::new(),
            tokens,
            bans: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_seq,
            counts,
            pending: Vec::new(),
            effects: Vec::new(),
            dispatch_needed: true,
            metrics: Metrics::default(),
        };
        // Agents seen before the restart are listed (offline) until they reconnect.
        for r in core.store.agents()? {
            let agent = Agent::from_record(r);
            core.agents.insert(agent.agent_id.clone(), agent);
        }
        core.load_open_tasks()?;
        Ok(core)
    }

    /// Records the agent's presence; it rides along with the next group commit.
    fn record_agent(&mut self, agent_id: &str) {
        if let Some(a) = self.agents.get(agent_id) {
            self.pending.push(Mutation::PutAgent(a.record()));
        }
    }

    /// Rebuilds the in-memory task state from the store: at start, and after a failed commit.
    fn load_open_tasks(&mut self) -> Result<(), StoreError> {
        self.tasks.clear();
        self.queue.clear();
        self.timers.clear();
        for a in self.agents.values_mut() {
            a.current_task = None;
        }
        let now_ms = now_ms();
        for task in self.store.open_tasks()? {
            let id = task.task_id.clone();
            match task.status {
                TaskStatus::Queued => {
                    self.queue.insert((task.priority, task.seq, id.clone()));
                }
                TaskStatus::Assigned | TaskStatus::Working => {
                    let holder = task.assigned_to.clone().unwrap_or_default();
                    let connected = self.agents.get(&holder).is_some_and(|a| a.conn.is_some());
                    if let Some(a) = self.agents.get_mut(&holder) {
                        a.current_task = Some(id.clone());
                    }
                    if !connected {
                        self.arm(
                            self.t.grace_period,
                            Timer::Grace { task_id: id.clone(), generation: task.generation },
                        );
                    }
                    if task.status == TaskStatus::Assigned {
                        self.arm(
                            self.t.accept_timeout,
                            Timer::AcceptDeadline { task_id: id.clone(), generation: task.generation },
                        );
                    }
                }
                TaskStatus::WaitingRetry => {
                    let wait = Duration::from_millis(task.retry_at.unwrap_or(0).saturating_sub(now_ms));
                    self.arm(wait, Timer::RetryDue { task_id: id.clone(), generation: task.generation });
                }
                _ => continue,
            }
            self.tasks.insert(id, OpenTask::new(task));
        }
        self.dispatch_needed = true;
        Ok(())
    }

    pub fn open_task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Runs the core until `Shutdown` or until every sender is gone.
    pub fn run(mut self, rx: mpsc::Receiver<Event>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = self
                .timers
                .keys()
                .next()
                .map(|(at, _)| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(ev) => batch.push(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            let mut stop = false;
            for ev in batch.drain(..) {
                if matches!(ev, Event::Shutdown) {
                    stop = true;
                    continue;
                }
                self.handle(ev);
            }
            self.fire_timers();
            if self.dispatch_needed {
                self.dispatch();
            }
            self.flush();
            if stop {
                break;
            }
        }
        self.flush();
        tracing::info!(open_tasks = self.tasks.len(), "hub core stopped; all writes committed");
    }

    /// Commits the batch's mutations, then releases its effects.
    fn flush(&mut self) {
        let committed = if self.pending.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = self.store.commit(&self.pending);
            self.metrics.commits += 1;
            self.metrics.commit_seconds.observe(started.elapsed());
            r
        };
        self.pending.clear();
        let effects = std::mem::take(&mut self.effects);
        match committed {
            Ok(()) => {
                for e in effects {
                    match e {
                        Effect::Send { conn, out, kind } => {
                            if let SendKind::Push { dispatch_started: Some(t) } = kind {
                                self.metrics.dispatch_latency.observe(t.elapsed());
                            }
                            self.deliver(conn, out);
                        }
                        Effect::Reply { reply, result } => {
                            let _ = reply.send(result);
                        }
                    }
                }
            }
            Err(err) => {
                self.metrics.commit_errors += 1;
                tracing::error!(error = %err, "store commit failed; nothing in this batch was acknowledged");
                let unavailable = ApiError::new(503, "storage_unavailable").msg(err.to_string());
                for e in effects {
                    match e {
                        Effect::Send { conn, out, kind } => match kind {
                            SendKind::Plain => self.deliver(conn, out),
                            SendKind::Ack { task_id } => self.deliver(
                                conn,
                                Out::Frame(HubFrame::Error(
                                    ErrorFrame::new("storage_unavailable").task(&task_id).message(err.to_string()),
                                )),
                            ),
                            SendKind::Push { .. } => {}
                        },
                        Effect::Reply { reply, result } => {
                            let failed = match result {
                                Ok(_) => Err(unavailable.clone()),
                                e @ Err(_) => e,
                            };
                            let _ = reply.send(failed);
                        }
                    }
                }
                // Memory ran ahead of the disk: go back to what is durable.
                if let Err(e) = self.load_open_tasks() {
                    tracing::error!(error = %e, "cannot reload state from the store");
                }
                if let Ok(c) = self.store.count_by_status() {
                    self.counts = c.into_iter().collect();
                }
                // Retry later rather than spinning on a failing disk.
                self.dispatch_needed = false;
                self.arm(Duration::from_secs(1), Timer::Redispatch);
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, out: Out) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(out);
        }
    }

    fn send(&mut self, conn: ConnId, frame: HubFrame, kind: SendKind) {
        self.effects.push(Effect::Send { conn, out: Out::Frame(frame), kind });
    }

    fn send_error(&mut self, conn: ConnId, e: ErrorFrame) {
        self.send(conn, HubFrame::Error(e), SendKind::Plain);
    }

    fn reply(&mut self, reply: oneshot::Sender<ApiResult>, result: ApiResult) {
        self.effects.push(Effect::Reply { reply, result });
    }

    fn arm(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((Instant::now() + after, self.timer_seq), timer);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.on_timer(timer);
        }
    }

    /// Commits pending writes so a read sees everything handled before it.
    fn sync_reads(&mut self) {
        if !self.pending.is_empty() {
            self.flush();
        }
    }

    // ---- state changes -------------------------------------------------------------------

    /// The one place a task changes status: persists the task and a history row, keeps the
    /// queue index, the holder's `current_task` and the status counts in step.
    fn transition(&mut self, task_id: &str, to: TaskStatus, reason: String, change: impl FnOnce(&mut Task)) {
        let Some(open) = self.tasks.get_mut(task_id) else {
            return;
        };
        let task = &mut open.task;
        let from = task.status;
        let old_holder = from.is_held().then(|| task.assigned_to.clone()).flatten();
        if from == TaskStatus::Queued {
            self.queue.remove(&(task.priority, task.seq, task.task_id.clone()));
        }
        change(task);
        task.status = to;
        task.updated_at = now_ms();
        if to.is_terminal() {
            task.completed_at = Some(task.updated_at);
        }
        if to == TaskStatus::Queued {
            open.queued_at = Instant::now();
            self.queue.insert((task.priority, task.seq, task.task_id.clone()));
            self.dispatch_needed = true;
        }
        let new_holder = to.is_held().then(|| task.assigned_to.clone()).flatten();
        let transition = Transition {
            at: task.updated_at,
            from: Some(from),
            to,
            reason,
            agent_id: task.assigned_to.clone(),
            generation: task.generation,
        };
        tracing::debug!(task_id, from = %from, to = %to, reason = %transition.reason, "task transition");
        self.pending.push(Mutation::PutTask(Box::new(task.clone())));
        self.pending.push(Mutation::AddTransition { task_id: task_id.to_string(), transition });
        if from != to {
            *self.counts.entry(from).or_default() = self.counts.get(&from).copied().unwrap_or(0).saturating_sub(1);
            *self.counts.entry(to).or_default() += 1;
        }
        if old_holder != new_holder {
            if let Some(a) = old_holder.and_then(|h| self.agents.get_mut(&h)) {
                if a.current_task.as_deref() == Some(task_id) {
                    a.current_task = None;
                    a.idle_since = now_ms();
                    self.dispatch_needed = true;
                }
            }
            if let Some(a) = new_holder.and_then(|h| self.agents.get_mut(&h)) {
                a.current_task = Some(task_id.to_string());
            }
        }
        if to.is_terminal() {
            self.tasks.remove(task_id);
        }
    }

    fn requeue(&mut self, task_id: &str, reason: String) {
        self.transition(task_id, TaskStatus::Queued, reason, |t| {
            t.generation += 1;
            t.assigned_to = None;
            t.assigned_at = None;
            t.retry_at = None;
        });
    }

    /// Brings a terminal task back into memory so it can be retried.
    fn reopen(&mut self, task_id: &str) -> Result<Option<TaskStatus>, StoreError> {
        if let Some(t) = self.tasks.get(task_id) {
            return Ok(Some(t.task.status));
        }
        let Some(task) = self.store.task(task_id)? else {
            return Ok(None);
        };
        let status = task.status;
        self.tasks.insert(task_id.to_string(), OpenTask::new(task));
        Ok(Some(status))
    }

    // ---- scheduling ----------------------------------------------------------------------

    fn available(a: &Agent, now: Instant) -> bool {
        a.conn.is_some() && !a.restarting && a.current_task.is_none() && a.paused_until.is_none_or(|u| u <= now)
    }

    fn eligible(t: &OpenTask, a: &Agent, now: Instant) -> bool {
        if let Some(pin) = &t.task.assign_to {
            if pin != &a.agent_id {
                return false;
            }
        }
        if let Some((who, until)) = &t.rejected_by {
            if who == &a.agent_id && *until > now {
                return false;
            }
        }
        t.task.needed_capabilities.iter().all(|c| a.capabilities.contains(c))
    }

    /// Matches queued tasks (lane, then FIFO) with idle agents (longest idle first).
    fn dispatch(&mut self) {
        self.dispatch_needed = false;
        if self.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut idle: Vec<&Agent> = self.agents.values().filter(|a| Self::available(a, now)).collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_by(|a, b| (a.idle_since, &a.agent_id).cmp(&(b.idle_since, &b.agent_id)));
        let mut plan = Vec::new();
        for (_, _, id) in &self.queue {
            if idle.is_empty() {
                break;
            }
            let t = &self.tasks[id];
            if let Some(pos) = idle.iter().position(|a| Self::eligible(t, a, now)) {
                plan.push((id.clone(), idle.remove(pos).agent_id.clone()));
            }
        }
        for (task_id, agent_id) in plan {
            self.assign(&task_id, &agent_id);
        }
    }

    fn assign(&mut self, task_id: &str, agent_id: &str) {
        let Some(conn) = self.agents.get(agent_id).and_then(|a| a.conn) else {
            return;
        };
        let now = now_ms();
        let agent = agent_id.to_string();
        self.transition(task_id, TaskStatus::Assigned, format!("assigned to {agent_id}"), |t| {
            t.generation += 1;
            t.attempts += 1;
            t.assigned_to = Some(agent);
            t.assigned_at = Some(now);
        });
        let open = &self.tasks[task_id];
        let t = &open.task;
        let frame = HubFrame::TaskAssign(TaskAssign {
            task_id: t.task_id.clone(),
            description: t.description.clone(),
            metadata: t.metadata.clone(),
            generation: t.generation,
            assigned_at: now,
            priority: Some(t.priority.as_str().to_string()),
            extra: t.extra.clone(),
        });
        let (generation, queued_at) = (t.generation, open.queued_at);
        self.send(conn, frame, SendKind::Push { dispatch_started: Some(queued_at) });
        self.arm(self.t.accept_timeout, Timer::AcceptDeadline { task_id: task_id.to_string(), generation });
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::AcceptDeadline { task_id, generation } => {
                let due = self
                    .tasks
                    .get(&task_id)
                    .is_some_and(|o| o.task.generation == generation && o.task.status == TaskStatus::Assigned);
                if due {
                    let secs = self.t.accept_timeout.as_secs_f64();
                    self.requeue(&task_id, format!("accept_timeout: no task_accepted within {secs}s"));
                }
            }
            Timer::Grace { task_id, generation } => {
                let Some(o) = self.tasks.get(&task_id) else {
                    return;
                };
                let holder_online =
                    o.task.assigned_to.as_ref().and_then(|a| self.agents.get(a)).is_some_and(|a| a.conn.is_some());
                if o.task.generation == generation && o.task.status.is_held() && !holder_online {
                    let secs = self.t.grace_period.as_secs_f64();
                    self.requeue(&task_id, format!("lease_expired: agent offline for {secs}s"));
                }
            }
            Timer::RetryDue { task_id, generation } => {
                let due = self
                    .tasks
                    .get(&task_id)
                    .is_some_and(|o| o.task.generation == generation && o.task.status == TaskStatus::WaitingRetry);
                if due {
                    self.transition(&task_id, TaskStatus::Queued, "retry_due".into(), |t| t.retry_at = None);
                }
            }
            Timer::Claim { task_id, generation, conn } => {
                let due = self.tasks.get(&task_id).is_some_and(|o| {
                    o.unclaimed == Some(conn) && o.task.generation == generation && o.task.status.is_held()
                });
                if due {
                    let secs = self.t.grace_period.as_secs_f64();
                    let reason =
                        format!("unclaimed: agent reconnected without task_recovering or state_report within {secs}s");
                    self.requeue(&task_id, reason);
                }
            }
            Timer::Redispatch => self.dispatch_needed = true,
        }
    }

    // ---- events --------------------------------------------------------------------------

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected { conn, tx } => {
                self.conns.insert(conn, Conn { tx, agent: None });
                self.metrics.ws_connections_total += 1;
            }
            Event::Frame { conn, frame } => self.on_frame(conn, frame),
            Event::Banned { conn } => {
                self.metrics.bans += 1;
                if let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) {
                    let now = Instant::now();
                    let ban = self.bans.entry(agent.clone()).or_insert(Ban { level: 0, until: now, last: now });
                    // Escalation resets after an hour of good behaviour.
                    if now.duration_since(ban.last) > Duration::from_secs(3600) {
                        ban.level = 0;
                    }
                    let d = self.t.bans[ban.level.min(self.t.bans.len() - 1)];
                    ban.until = now + d;
                    ban.last = now;
                    ban.level += 1;
                    tracing::warn!(agent_id = %agent, ban_ms = d.as_millis() as u64, "too many protocol violations; identify refused for a while");
                }
            }
            Event::Disconnected { conn } => self.on_disconnect(conn),
            Event::Api { auth, req, reply } => {
                let result = self.on_api(auth, req);
                self.reply(reply, result);
            }
            Event::Shutdown => {}
        }
    }

    fn on_disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(agent_id) = c.agent else { return };
        let Some(agent) = self.agents.get_mut(&agent_id) else {
            return;
        };
        if agent.conn != Some(conn) {
            return; // replaced by a newer connection
        }
        agent.conn = None;
        agent.last_seen = now_ms();
        tracing::info!(agent_id = %agent_id, "agent disconnected");
        if let Some(task_id) = agent.current_task.clone() {
            if let Some(g) = self.tasks.get(&task_id).map(|o| o.task.generation) {
                self.arm(self.t.grace_period, Timer::Grace { task_id, generation: g });
            }
        }
        self.record_agent(&agent_id);
    }

    fn on_frame(&mut self, conn: ConnId, frame: AgentFrame) {
        let agent_id = self.conns.get(&conn).and_then(|c| c.agent.clone());
        if let AgentFrame::Identify(id) = frame {
            return self.on_identify(conn, agent_id, *id);
        }
        let Some(agent_id) = agent_id else {
            return self.send_error(conn, ErrorFrame::new("not_identified"));
        };
        if let Some(a) = self.agents.get_mut(&agent_id) {
            a.last_seen = now_ms();
        }
        self.note_claim(&agent_id, &frame);
        match frame {
            AgentFrame::Identify(_) => unreachable!("handled above"),
            AgentFrame::Ping => self.send(conn, HubFrame::Pong { timestamp: now_ms() }, SendKind::Plain),
            AgentFrame::Status { status } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.reported_status = Some(status.clone());
                }
                self.send(conn, HubFrame::StatusUpdated { status }, SendKind::Plain);
            }
            AgentFrame::TaskAccepted { task_id } => self.on_accepted(conn, &agent_id, task_id),
            AgentFrame::TaskRejected { task_id, reason } => self.on_rejected(conn, &agent_id, task_id, reason),
            AgentFrame::TaskProgress { task_id, progress, execution_event } => {
                if let Some(o) = self.tasks.get_mut(&task_id) {
                    if o.task.assigned_to.as_deref() == Some(&agent_id) {
                        o.task.progress = progress.or(execution_event);
                    }
                }
            }
            AgentFrame::WakeResult { task_id, status, attempt, error } => {
                let held = self.tasks.get(&task_id).filter(|o| o.task.assigned_to.as_deref() == Some(&agent_id));
                if let Some(o) = held {
                    let t = &o.task;
                    let mut reason = format!("wake_result {status}");
                    if let Some(a) = attempt {
                        reason.push_str(&format!(" (attempt {a})"));
                    }
                    if let Some(e) = error {
                        reason.push_str(&format!(": {e}"));
                    }
                    let tr = Transition {
                        at: now_ms(),
                        from: Some(t.status),
                        to: t.status,
                        reason,
                        agent_id: Some(agent_id.clone()),
                        generation: t.generation,
                    };
                    self.pending.push(Mutation::AddTransition { task_id, transition: tr });
                }
            }
            AgentFrame::TaskComplete {
                task_id,
                generation,
                result,
                tokens_used,
                verification_report,
                verification_history,
            } => {
                let mut report = Map::new();
                for (k, v) in [
                    ("tokens_used", tokens_used),
                    ("verification_report", verification_report),
                    ("verification_history", verification_history),
                ] {
                    if let Some(v) = v {
                        report.insert(k.into(), v);
                    }
                }
                self.on_report(conn, &agent_id, task_id, generation, Ok((result, report)));
            }
            AgentFrame::TaskFailed { task_id, generation, reason, error } => {
                let why = reason.or(error).unwrap_or_else(|| "unknown".into());
                self.on_report(conn, &agent_id, task_id, generation, Err(why));
            }
            AgentFrame::TaskRecovering { task_id, .. } => {
                let held = self.held_by(&task_id, &agent_id);
                let frame = match held {
                    Some(generation) => HubFrame::TaskContinue { task_id, generation },
                    None => HubFrame::TaskReassign { task_id },
                };
                self.send(conn, frame, SendKind::Plain);
            }
            AgentFrame::StateReport { task_id, generation, .. } => {
                self.on_state_report(conn, &agent_id, task_id, generation)
            }
            AgentFrame::AgentRestarting { reason } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.restarting = true;
                }
                self.record_agent(&agent_id);
                tracing::info!(agent_id = %agent_id, reason = reason.as_deref().unwrap_or(""), "agent restarting");
            }
            AgentFrame::ResourceReport(map) => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    // Our sidecars send their supervisor's view here when it changes.
                    if let Some(info) = map.get("process_info").and_then(|v| serde_json::from_value(v.clone()).ok()) {
                        a.process_info = Some(info);
                    }
                    a.resources = Some(map);
                }
            }
        }
    }

    /// Any frame about a task the agent holds (for the current attempt) claims it after a reconnect.
    fn note_claim(&mut self, agent_id: &str, frame: &AgentFrame) {
        let (task_id, generation) = match frame {
            AgentFrame::TaskAccepted { task_id }
            | AgentFrame::TaskProgress { task_id, .. }
            | AgentFrame::WakeResult { task_id, .. }
            | AgentFrame::TaskRecovering { task_id, .. } => (task_id, None),
            AgentFrame::TaskComplete { task_id, generation, .. }
            | AgentFrame::TaskFailed { task_id, generation, .. } => (task_id, Some(*generation)),
            AgentFrame::StateReport { task_id: Some(task_id), generation, .. } => (task_id, *generation),
            _ => return,
        };
        if let Some(current) = self.held_by(task_id, agent_id) {
            if generation.is_none_or(|g| g == current) {
                if let Some(o) = self.tasks.get_mut(task_id) {
                    o.unclaimed = None;
                }
            }
        }
    }

    /// The generation of `task_id` if `agent_id` holds it now.
    fn held_by(&self, task_id: &str, agent_id: &str) -> Option<u64> {
        self.tasks
            .get(task_id)
            .filter(|o| o.task.status.is_held() && o.task.assigned_to.as_deref() == Some(agent_id))
            .map(|o| o.task.generation)
    }

    fn on_identify(&mut self, conn: ConnId, bound: Option<String>, id: Identify) {
        let refuse = |core: &mut Self, e: ErrorFrame| {
            core.send_error(conn, e);
            core.effects.push(Effect::Send { conn, out: Out::IdentifyFailed, kind: SendKind::Plain });
        };
        if let Some(b) = &bound {
            if b != &id.agent_id {
                return refuse(
                    self,
                    ErrorFrame::new("already_identified").message(format!("this connection is agent {b}")),
                );
            }
        }
        if let Some(ban) = self.bans.get(&id.agent_id) {
            let now = Instant::now();
            if ban.until > now {
                let ms = ban.until.duration_since(now).as_millis() as u64;
                self.send_error(conn, ErrorFrame { retry_after_ms: Some(ms), ..ErrorFrame::new("identify_refused") });
                self.effects.push(Effect::Send {
                    conn,
                    out: Out::Close(1008, "identify refused after protocol violations".into()),
                    kind: SendKind::Plain,
                });
                return;
            }
        }
        let hash = auth::hash_token(&id.token);
        let allowed = if auth::hashes_equal(&hash, &self.admin_hash) {
            Ok(())
        } else {
            match self.tokens.get(&hash) {
                Some(rec) if auth::hashes_equal(&rec.hash, &hash) && rec.agent_id == id.agent_id => Ok(()),
                Some(_) => Err("token_agent_mismatch"),
                None => Err("invalid_token"),
            }
        };
        if let Err(e) = allowed {
            tracing::warn!(agent_id = %id.agent_id, error = e, "identify refused");
            return refuse(self, ErrorFrame::new(e));
        }
        let agent_id = id.agent_id.clone();
        let now = now_ms();
        if !self.agents.contains_key(&agent_id) {
            // First identify since the hub started: the store may say it holds a task.
            let held = self
                .tasks
                .values()
                .find(|o| o.task.status.is_held() && o.task.assigned_to.as_deref() == Some(agent_id.as_str()))
                .map(|o| o.task.task_id.clone());
            self.agents.insert(
                agent_id.clone(),
                Agent {
                    agent_id: agent_id.clone(),
                    conn: None,
                    name: None,
                    client_type: None,
                    capabilities: BTreeSet::new(),
                    process_info: None,
                    reported_status: None,
                    resources: None,
                    connected_at: None,
                    last_seen: now,
                    current_task: held,
                    restarting: false,
                    idle_since: now,
                    paused_until: None,
                },
            );
        }
        let agent = self.agents.get_mut(&agent_id).expect("inserted above");
        let replaced = agent.conn.filter(|c| *c != conn);
        agent.conn = Some(conn);
        agent.name = id.name;
        agent.client_type = id.client_type;
        agent.capabilities = id.capabilities.into_iter().collect();
        agent.process_info = id.process_info.or(id.pm2_info);
        agent.reported_status = id.status;
        agent.connected_at = Some(now);
        agent.last_seen = now;
        agent.restarting = false;
        agent.paused_until = None;
        if agent.current_task.is_none() {
            agent.idle_since = now;
        }
        // A new connection must claim the task the hub thinks it holds, or lose it after the
        // grace period: a sidecar that restarted with an empty queue must not block forever.
        let claim = agent.current_task.clone().filter(|_| replaced.is_some() || bound.is_none());
        if let Some(task_id) = claim {
            if let Some(o) = self.tasks.get_mut(&task_id) {
                o.unclaimed = Some(conn);
                let generation = o.task.generation;
                self.arm(self.t.grace_period, Timer::Claim { task_id, generation, conn });
            }
        }
        if let Some(old) = replaced {
            if let Some(c) = self.conns.get_mut(&old) {
                c.agent = None;
            }
            self.effects.push(Effect::Send {
                conn: old,
                out: Out::Close(1000, "replaced by a newer connection".into()),
                kind: SendKind::Plain,
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(agent_id.clone());
        }
        tracing::info!(agent_id = %agent_id, replaced = replaced.is_some(), "agent identified");
        self.record_agent(&agent_id);
        self.effects.push(Effect::Send { conn, out: Out::Identified(agent_id.clone()), kind: SendKind::Plain });
        self.send(conn, HubFrame::Identified { agent_id }, SendKind::Plain);
        self.dispatch_needed = true;
    }

    fn on_accepted(&mut self, conn: ConnId, agent_id: &str, task_id: String) {
        match self.tasks.get(&task_id).map(|o| (o.task.status, o.task.assigned_to.as_deref() == Some(agent_id))) {
            Some((TaskStatus::Assigned, true)) => {
                self.transition(&task_id, TaskStatus::Working, format!("accepted by {agent_id}"), |_| {});
                let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: "accepted".into() };
                self.send(conn, ack, SendKind::Ack { task_id });
            }
            Some((TaskStatus::Working, true)) => {
                let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: "accepted".into() };
                self.send(conn, ack, SendKind::Plain);
            }
            Some(_) => self.send_error(conn, ErrorFrame::new("invalid_state").task(&task_id)),
            None => self.send_error(conn, ErrorFrame::new("not_found").task(&task_id)),
        }
    }

    fn on_rejected(&mut self, conn: ConnId, agent_id: &str, task_id: String, reason: Option<String>) {
        if self.held_by(&task_id, agent_id).is_none() {
            return self.send_error(conn, ErrorFrame::new("invalid_state").task(&task_id));
        }
        let reason = reason.unwrap_or_else(|| "unspecified".into());
        let until = Instant::now() + self.t.reject_cooldown;
        self.requeue(&task_id, format!("rejected by {agent_id}: {reason}"));
        if let Some(o) = self.tasks.get_mut(&task_id) {
            o.rejected_by = Some((agent_id.to_string(), until));
        }
        if reason == "busy" {
            if let Some(a) = self.agents.get_mut(agent_id) {
                a.paused_until = Some(until);
            }
        }
        self.arm(self.t.reject_cooldown, Timer::Redispatch);
        let ack = HubFrame::TaskAck { task_id: task_id.clone(), status: "requeued".into() };
        self.send(conn, ack, SendKind::Ack { task_id });
    }

    /// `task_complete` (Ok) or `task_failed` (Err), fenced by generation.
    fn on_report(
        &mut self,
        conn: ConnId,
        agent_id: &str,
        task_id: String,
        generation: u64,
        outcome: Result<(Option<Value>, Map<String, Value>), String>,
    ) {
        let current = match self.tasks.get(&task_id) {
            Some(o) => Some(o.task.clone()),
            None => match self.store.task(&task_id) {
                Ok(t) => t,
                Err(e) => {
                    return self
                        .send_error(conn, ErrorFrame::new("storage_unavailable").task(&task_id).message(e.to_string()))
                }
            },
        };
        let Some(task) = current else {
            return self.send_error(conn, ErrorFrame::new("not_found").task(&task_id));
        };
        if task.generation != generation {
            let e = ErrorFrame::new("stale_generation")
                .task(&task_id)
                .message(format!("generation {generation} is stale; current is {}", task.generation));
            return self.send_error(conn, e);
        }
        let mine = task.assigned_to.as_deref() == Some(agent_id);
        // A re-sent report for the same attempt (the sidecar did not see our ack) is acked again.
        let repeat = match (&outcome, task.status) {
            (Ok(_), TaskStatus::Completed) if mine => Some("complete"),
            (Err(_), TaskStatus::WaitingRetry) if mine => Some("retried"),
            (Err(_), TaskStatus::DeadLetter) if mine => Some("dead_letter"),
            _ => None,
        };
        if let Some(status) = repeat {
            return self.send(conn, HubFrame::TaskAck { task_id, status: status.into() }, SendKind::Plain);
        }
        if !task.status.is_held() || !mine {
            let e = ErrorFrame::new("invalid_state").task(&task_id).message(format!("task is {}", task.status));
            return self.send_error(conn, e);
        }
        let ack_status = match outcome {
            Ok((result, report)) => {
                self.transition(&task_id, TaskStatus::Completed, format!("completed by {agent_id}"), |t| {
                    t.result = result;
                    t.report = report;
                });
                "complete"
            }
            Err(why) => {
                let failures = task.failures + 1;
                if failures > task.max_retries {
                    let reason = format!("dead_letter after {failures} failures: {why}");
                    self.transition(&task_id, TaskStatus::DeadLetter, reason, |t| {
                        t.failures = failures;
                        t.last_error = Some(why);
                    });
                    "dead_letter"
                } else {
                    let backoff = self.backoff(failures);
                    let retry_at = now_ms() + backoff.as_millis() as u64;
                    let reason =
                        format!("failed ({why}); retry {failures}/{} in {}ms", task.max_retries, backoff.as_millis());
                    self.transition(&task_id, TaskStatus::WaitingRetry, reason, |t| {
                        t.failures = failures;
                        t.last_error = Some(why);
                        t.retry_at = Some(retry_at);
                    });
                    self.arm(backoff, Timer::RetryDue { task_id: task_id.clone(), generation });
                    "retried"
                }
            }
        };
        self.send(
            conn,
            HubFrame::TaskAck { task_id: task_id.clone(), status: ack_status.into() },
            SendKind::Ack { task_id },
        );
    }

    /// 1 s doubling per failure, capped (5 min by default).
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.t.retry_base.saturating_mul(factor).min(self.t.retry_max)
    }

    fn on_state_report(&mut self, conn: ConnId, agent_id: &str, task_id: Option<String>, generation: Option<u64>) {
        let Some(task_id) = task_id else {
            // The agent holds nothing. Release a task it held on an earlier connection (not yet
            // claimed on this one) now rather than after the lease; a task assigned on this
            // connection may simply still be in flight to it.
            let held = self.agents.get(agent_id).and_then(|a| a.current_task.clone());
            if let Some(held) = held.filter(|h| self.tasks.get(h).is_some_and(|o| o.unclaimed == Some(conn))) {
                self.requeue(&held, format!("released: {agent_id} reports no task"));
            }
            return self.send(
                conn,
                HubFrame::StateReportAck { task_id: None, action: "continue".into() },
                SendKind::Plain,
            );
        };
        let action = match self.held_by(&task_id, agent_id) {
            Some(g) if generation.is_none_or(|r| r == g) => "continue",
            _ => "abort",
        };
        self.send(conn, HubFrame::StateReportAck { task_id: Some(task_id), action: action.into() }, SendKind::Plain);
    }

    // ---- HTTP API ------------------------------------------------------------------------

    fn authenticate(&self, bearer: Option<&str>) -> Result<Role, ApiError> {
        let token =
            bearer.ok_or_else(|| ApiError::new(401, "unauthorized").msg("missing Authorization: Bearer token"))?;
        let hash = auth::hash_token(token);
        if auth::hashes_equal(&hash, &self.admin_hash) {
            return Ok(Role::Admin);
        }
        match self.tokens.get(&hash) {
            Some(rec) if auth::hashes_equal(&rec.hash, &hash) => Ok(Role::Agent(rec.agent_id.clone())),
            _ => Err(ApiError::new(401, "invalid_token")),
        }
    }

    fn on_api(&mut self, bearer: Option<String>, req: ApiRequest) -> ApiResult {
        if let ApiRequest::Metrics = req {
            return Ok((200, ApiBody::Text(self.render_metrics())));
        }
        let role = self.authenticate(bearer.as_deref())?;
        let admin_only = matches!(
            req,
            ApiRequest::CreateToken(_)
                | ApiRequest::ListTokens
                | ApiRequest::RevokeToken(_)
                | ApiRequest::RestartAgent { .. }
        );
        if admin_only && role != Role::Admin {
            return Err(ApiError::new(403, "forbidden").msg("this route needs the admin token"));
        }
        let store_err = |e: StoreError| ApiError::new(503, "storage_unavailable").msg(e.to_string());
        match req {
            ApiRequest::Metrics => unreachable!("handled above"),
            ApiRequest::Submit(n) => self.submit(n, &role),
            ApiRequest::ListTasks { status, limit } => {
                self.sync_reads();
                let tasks = self.store.list_tasks(status, limit).map_err(store_err)?;
                let tasks: Vec<Value> = tasks.into_iter().map(|t| self.task_json(t)).collect();
                ok(200, json!({ "count": tasks.len(), "tasks": tasks }))
            }
            ApiRequest::GetTask(id) => {
                self.sync_reads();
                let task = self.store.task(&id).map_err(store_err)?;
                let Some(task) = task else {
                    return Err(ApiError::new(404, "not_found").msg(format!("no task {id}")));
                };
                let history = self.store.transitions(&id).map_err(store_err)?;
                let mut v = self.task_json(task);
                v["history"] = serde_json::to_value(history).expect("transitions serialize");
                ok(200, v)
            }
            ApiRequest::Stats => {
                let mut by = Map::new();
                let mut total = 0;
                for s in TaskStatus::ALL {
                    let n = self.counts.get(&s).copied().unwrap_or(0);
                    total += n;
                    by.insert(s.as_str().into(), n.into());
                }
                let mut agents = Map::new();
                for s in AgentStatus::ALL {
                    agents.insert(s.as_str().into(), self.agents.values().filter(|a| a.status() == s).count().into());
                }
                ok(200, json!({ "total": total, "by_status": by, "agents": agents }))
            }
            ApiRequest::Retry(id) => {
                let status = self.reopen(&id).map_err(store_err)?;
                match status {
                    None => Err(ApiError::new(404, "not_found").msg(format!("no task {id}"))),
                    Some(TaskStatus::DeadLetter | TaskStatus::Cancelled | TaskStatus::WaitingRetry) => {
                        self.transition(&id, TaskStatus::Queued, format!("retried by {}", role.name()), |t| {
                            t.generation += 1;
                            t.failures = 0;
                            t.retry_at = None;
                            t.assigned_to = None;
                            t.assigned_at = None;
                            t.completed_at = None;
                        });
                        ok(200, json!({ "status": "queued", "task_id": id }))
                    }
                    Some(s) => {
                        self.drop_if_terminal(&id);
                        Err(ApiError::new(409, "invalid_state").msg(format!(
                            "task is {s}; only dead_letter, cancelled or waiting_retry tasks can be retried"
                        )))
                    }
                }
            }
            ApiRequest::Cancel(id) => {
                let status = self.reopen(&id).map_err(store_err)?;
                match status {
                    None => Err(ApiError::new(404, "not_found").msg(format!("no task {id}"))),
                    Some(s @ (TaskStatus::Completed | TaskStatus::Cancelled)) => {
                        self.drop_if_terminal(&id);
                        Err(ApiError::new(409, "invalid_state").msg(format!("task is already {s}")))
                    }
                    Some(s) => {
                        let holder = if s.is_held() { self.tasks[&id].task.assigned_to.clone() } else { None };
                        self.transition(&id, TaskStatus::Cancelled, format!("cancelled by {}", role.name()), |_| {});
                        if let Some(conn) = holder.and_then(|h| self.agents.get(&h)).and_then(|a| a.conn) {
                            let frame = HubFrame::TaskCancelled { task_id: id.clone(), timestamp: now_ms() };
                            self.send(conn, frame, SendKind::Push { dispatch_started: None });
                        }
                        ok(200, json!({ "status": "cancelled", "task_id": id }))
                    }
                }
            }
            ApiRequest::Agents => {
                let mut list: Vec<&Agent> = self.agents.values().collect();
                list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
                let agents: Vec<Value> = list.into_iter().map(agent_json).collect();
                ok(200, json!({ "agents": agents }))
            }
            ApiRequest::CreateToken(agent_id) => {
                let token = auth::generate_token();
                let rec =
                    TokenRecord { hash: auth::hash_token(&token), agent_id: agent_id.clone(), created_at: now_ms() };
                self.pending.push(Mutation::PutToken(rec.clone()));
                self.tokens.insert(rec.hash.clone(), rec.clone());
                ok(201, json!({ "agent_id": agent_id, "token": token, "created_at": rec.created_at }))
            }
            ApiRequest::ListTokens => {
                let mut list: Vec<&TokenRecord> = self.tokens.values().collect();
                list.sort_by(|a, b| (&a.agent_id, a.created_at).cmp(&(&b.agent_id, b.created_at)));
                let tokens: Vec<Value> = list
                    .into_iter()
                    .map(
                        |r| json!({ "agent_id": r.agent_id, "created_at": r.created_at, "fingerprint": &r.hash[..12] }),
                    )
                    .collect();
                ok(200, json!({ "tokens": tokens }))
            }
            ApiRequest::RevokeToken(agent_id) => {
                let before = self.tokens.len();
                self.tokens.retain(|_, r| r.agent_id != agent_id);
                let revoked = before - self.tokens.len();
                if revoked == 0 {
                    return Err(ApiError::new(404, "not_found").msg(format!("no token for agent {agent_id}")));
                }
                self.pending.push(Mutation::DeleteTokens { agent_id: agent_id.clone() });
                if let Some(conn) = self.agents.get(&agent_id).and_then(|a| a.conn) {
                    self.effects.push(Effect::Send {
                        conn,
                        out: Out::Close(1008, "token revoked".into()),
                        kind: SendKind::Plain,
                    });
                }
                ok(200, json!({ "status": "revoked", "agent_id": agent_id, "revoked": revoked }))
            }
            ApiRequest::RestartAgent { agent_id, reason, force } => {
                let Some(conn) = self.agents.get(&agent_id).and_then(|a| a.conn) else {
                    return Err(ApiError::new(404, "agent_not_connected"));
                };
                self.send(conn, HubFrame::RestartSidecar { reason: reason.clone(), force }, SendKind::Plain);
                ok(
                    200,
                    json!({ "status": "restart_commanded", "agent_id": agent_id, "reason": reason, "force": force }),
                )
            }
            ApiRequest::PutCheckpoint { agent_id, body } => {
                if let Role::Agent(me) = &role {
                    if me != &agent_id {
                        return Err(
                            ApiError::new(403, "forbidden").msg("an agent token may only write its own checkpoint")
                        );
                    }
                }
                let at = now_ms();
                self.pending.push(Mutation::PutCheckpoint { agent_id: agent_id.clone(), body, at });
                ok(200, json!({ "status": "stored", "agent_id": agent_id, "updated_at": at }))
            }
            ApiRequest::GetCheckpoint(agent_id) => {
                // A checkpoint holds the agent's conversation: only it and the admin may read it.
                if let Role::Agent(me) = &role {
                    if me != &agent_id {
                        return Err(
                            ApiError::new(403, "forbidden").msg("an agent token may only read its own checkpoint")
                        );
                    }
                }
                self.sync_reads();
                match self.store.checkpoint(&agent_id).map_err(store_err)? {
                    Some((body, at)) => ok(200, json!({ "agent_id": agent_id, "updated_at": at, "checkpoint": body })),
                    None => Err(ApiError::new(404, "not_found").msg(format!("no checkpoint for {agent_id}"))),
                }
            }
        }
    }

    /// A terminal task loaded by `reopen` that was not changed goes back out of memory.
    fn drop_if_terminal(&mut self, id: &str) {
        if self.tasks.get(id).is_some_and(|o| o.task.status.is_terminal()) {
            self.tasks.remove(id);
        }
    }

    fn submit(&mut self, n: NewTask, role: &Role) -> ApiResult {
        let now = now_ms();
        let task_id = format!("task-{}", auth::random_hex(8));
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = Task {
            task_id: task_id.clone(),
            seq,
            description: n.description,
            priority: n.priority,
            metadata: n.metadata,
            needed_capabilities: n.needed_capabilities,
            assign_to: n.assign_to,
            max_retries: n.max_retries,
            extra: n.extra,
            status: TaskStatus::Queued,
            generation: 0,
            assigned_to: None,
            assigned_at: None,
            attempts: 0,
            failures: 0,
            retry_at: None,
            result: None,
            report: Map::new(),
            last_error: None,
            progress: None,
            submitted_by: role.name().to_string(),
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        let priority = task.priority;
        self.pending.push(Mutation::PutTask(Box::new(task.clone())));
        self.pending.push(Mutation::AddTransition {
            task_id: task_id.clone(),
            transition: Transition {
                at: now,
                from: None,
                to: TaskStatus::Queued,
                reason: format!("submitted by {}", role.name()),
                agent_id: None,
                generation: 0,
            },
        });
        *self.counts.entry(TaskStatus::Queued).or_default() += 1;
        self.metrics.submitted += 1;
        self.queue.insert((priority, seq, task_id.clone()));
        self.tasks.insert(task_id.clone(), OpenTask::new(task));
        self.dispatch_needed = true;
        ok(201, json!({ "status": "queued", "task_id": task_id, "priority": priority.as_str(), "created_at": now }))
    }

    fn task_json(&self, mut task: Task) -> Value {
        // Progress is kept in memory between transitions; the open copy is the freshest.
        if let Some(p) = self.tasks.get(&task.task_id).and_then(|o| o.task.progress.clone()) {
            task.progress = Some(p);
        }
        let mut v = serde_json::to_value(task).expect("tasks serialize");
        v.as_object_mut().expect("object").remove("seq");
        v
    }

    fn render_metrics(&self) -> String {
        let mut by_status: Vec<(&str, u64)> =
            TaskStatus::ALL.iter().map(|s| (s.as_str(), self.counts.get(s).copied().unwrap_or(0))).collect();
        by_status.sort();
        let agents: Vec<(&str, u64)> = AgentStatus::ALL
            .iter()
            .map(|s| (s.as_str(), self.agents.values().filter(|a| a.status() == *s).count() as u64))
            .collect();
        let ws = self.conns.len() as u64;
        self.metrics.render(&by_status, &agents, ws)
    }
}

fn agent_json(a: &Agent) -> Value {
    json!({
        "agent_id": a.agent_id,
        "name": a.name,
        "status": a.status().as_str(),
        "connected": a.conn.is_some(),
        "connected_at": a.connected_at,
        "last_seen": a.last_seen,
        "capabilities": a.capabilities,
        "client_type": a.client_type,
        "current_task": a.current_task,
        "reported_status": a.reported_status,
        "process_info": a.process_info,
        "pm2_info": a.process_info,
        "resources": a.resources,
    })
}

/// Starts the core on its own thread. The store is blocking; a dedicated thread keeps its
/// fsyncs off the async workers, and a single owner needs no locks.
pub fn spawn<S: Store>(core: Core<S>) -> (CoreHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("hub-core".into())
        .spawn(move || core.run(rx))
        .expect("spawn the hub core thread");
    (CoreHandle { tx }, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A real SQLite store whose commits can be made to fail as on a full disk.
    struct FullDisk {
        inner: SqliteStore,
        full: Arc<AtomicBool>,
    }

    impl Store for FullDisk {
        fn open_tasks(&mut self) -> Result<Vec<Task>, StoreError> {
            self.inner.open_tasks()
        }
        fn max_seq(&mut self) -> Result<i64, StoreError> {
            self.inner.max_seq()
        }
        fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
            if self.full.load(Ordering::SeqCst) {
                let e = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
                return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    e,
                    Some("database or disk is full".into()),
                )));
            }
            self.inner.commit(batch)
        }
        fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
            self.inner.task(id)
        }
        fn transitions(&mut self, id: &str) -> Result<Vec<Transition>, StoreError> {
            self.inner.transitions(id)
        }
        fn list_tasks(&mut self, s: Option<TaskStatus>, limit: usize) -> Result<Vec<Task>, StoreError> {
            self.inner.list_tasks(s, limit)
        }
        fn count_by_status(&mut self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
            self.inner.count_by_status()
        }
        fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
            self.inner.tokens()
        }
        fn checkpoint(&mut self, a: &str) -> Result<Option<(Value, u64)>, StoreError> {
            self.inner.checkpoint(a)
        }
        fn agents(&mut self) -> Result<Vec<AgentRecord>, StoreError> {
            self.inner.agents()
        }
    }

    const ADMIN: &str = "test-admin-token-0123456789";

    fn submit(core: &mut Core<FullDisk>, description: &str) -> ApiResult {
        let (reply, mut rx) = oneshot::channel();
        let req = ApiRequest::Submit(NewTask {
            description: description.into(),
            priority: Priority::Normal,
            metadata: json!({}),
            max_retries: 3,
            needed_capabilities: vec![],
            assign_to: None,
            extra: Map::new(),
        });
        core.handle(Event::Api { auth: Some(ADMIN.into()), req, reply });
        core.flush();
        rx.try_recv().expect("a reply is released after the flush")
    }

    #[test]
    fn a_failed_commit_acknowledges_nothing_and_the_hub_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let store = FullDisk { inner: SqliteStore::open(&dir.path().join("hub.db")).unwrap(), full: full.clone() };
        let mut core = Core::new(store, Timings::default(), ADMIN).unwrap();

        assert!(submit(&mut core, "before").is_ok());
        full.store(true, Ordering::SeqCst);
        let err = submit(&mut core, "lost?").unwrap_err();
        assert_eq!((err.status, err.error.as_str()), (503, "storage_unavailable"));
        assert!(err.message.unwrap().contains("disk is full"));
        assert_eq!(core.open_task_count(), 1, "memory went back to what is durable");
        assert_eq!(core.metrics.commit_errors, 1);

        full.store(false, Ordering::SeqCst);
        let ok = submit(&mut core, "after").unwrap();
        let ApiBody::Json(v) = ok.1 else { panic!("json") };
        assert_eq!(v["status"], "queued");
        let stored: Vec<String> = core.store.list_tasks(None, 10).unwrap().into_iter().map(|t| t.description).collect();
        assert_eq!(stored, ["after", "before"], "the refused submission was never stored, nothing else lost");
    }
}
