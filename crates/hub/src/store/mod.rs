//! The hub's durable store, behind two narrow traits so a PostgreSQL backend can sit beside SQLite.
//!
//! [`Store`] is the writer, owned by the core thread: it loads the state at start and takes one
//! batch of [`Mutation`]s per group commit, returning only once the batch is durable (the core
//! releases acks and replies only after that). [`Reader`] serves the API's reads on other
//! threads, so a large listing never holds up dispatch; it sees only committed data, and
//! since nothing is acknowledged before its commit, a client always reads its own writes.

pub(crate) mod pg;
mod pg_tls;
mod sqlite;

pub use pg::{PgReader, PgStore};
pub use pg_tls::{Database, SslMode};
pub use sqlite::{SqliteReader, SqliteStore};

use crate::model::{AgentRecord, Outcome, Payload, StoredTask, TaskHead, TaskStatus, TokenRecord, Transition};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path} is corrupt or unreadable: {message}")]
    Corrupt { path: String, message: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored {what} cannot be decoded: {message}")]
    Decode { what: String, message: String },
    #[error("cannot open database {path}: {message}")]
    Open { path: String, message: String },
    #[error("PostgreSQL: {}", pg::describe(.0))]
    Postgres(#[from] postgres::Error),
    /// Another hub leads now: this one's writes are fenced off.
    #[error("this hub is no longer the leader (its term {term} ended)")]
    Deposed { term: u64 },
}

#[derive(Debug, Clone)]
pub enum Mutation {
    InsertTask {
        head: Box<TaskHead>,
        payload: Box<Payload>,
    },
    PutHead(Box<TaskHead>),
    SetOutcome {
        task_id: String,
        outcome: Box<Outcome>,
    },
    AddTransition {
        task_id: String,
        transition: Transition,
    },
    /// One `task_progress`; the store keeps the latest [`PROGRESS_KEPT`] of each task.
    AddProgress {
        task_id: String,
        generation: u64,
        at: u64,
        body: Value,
    },
    PutToken(TokenRecord),
    DeleteTokens {
        agent_id: String,
    },
    PutCheckpoint {
        agent_id: String,
        body: Value,
        at: u64,
    },
    PutAgent(AgentRecord),
    /// The patch of an attempt's change; a task keeps the latest one.
    PutPatch {
        task_id: String,
        patch: Box<StoredPatch>,
    },
    /// What one attempt reported it cost.
    AddUsage {
        task_id: String,
        agent_id: String,
        generation: u64,
        at: u64,
        usage: proto::Usage,
    },
}

/// The patch of one attempt's change (`git diff base head`, at most [`proto::MAX_PATCH_BYTES`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPatch {
    pub generation: u64,
    pub at: u64,
    pub patch: String,
    /// The sidecar cut the patch at the bound.
    pub cut: bool,
}

/// Progress lines kept per task.
pub const PROGRESS_KEPT: i64 = 100;

/// The newest transitions a task's history shows: each read is bounded, however long a task
/// lived (requeues and questions each add a line).
pub const HISTORY_SHOWN: i64 = 1000;

/// Everything the core needs at start (and after a failed commit, to go back to the truth).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every task that is not terminal, in submission order.
    pub open: Vec<TaskHead>,
    pub max_seq: i64,
    pub counts: HashMap<TaskStatus, u64>,
    pub tokens: Vec<TokenRecord>,
    pub agents: Vec<AgentRecord>,
    /// Usage since the start of the current UTC day, by agent: (cost in USD, tokens).
    pub spend_today: HashMap<String, (f64, u64)>,
}

pub trait Store: Send + 'static {
    /// Everything the core holds in memory; `day_start_ms` is the start of the current UTC day.
    fn load(&mut self, day_start_ms: u64) -> Result<Snapshot, StoreError>;
    /// The head of any task, terminal ones included (a retry brings one back).
    fn head(&mut self, task_id: &str) -> Result<Option<TaskHead>, StoreError>;
    /// The payloads of the given tasks (those that exist).
    fn payloads(&mut self, task_ids: &[&str]) -> Result<HashMap<String, Payload>, StoreError>;
    /// Applies the batch in one transaction and makes it durable before returning.
    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError>;
}

/// Which tasks a listing wants: newest first, below the cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// Only tasks submitted before this one (the `seq` of the previous page's last row).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

pub trait Reader: Send + Sync + 'static {
    /// The page, and whether more rows follow it. Rows carry their `seq` for the next cursor.
    fn list_tasks(&self, q: TaskQuery) -> Result<(Vec<StoredTask>, bool), StoreError>;
    fn task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError>;
    /// The task's newest [`HISTORY_SHOWN`] transitions, oldest first.
    fn transitions(&self, task_id: &str) -> Result<Vec<Transition>, StoreError>;
    /// The kept progress lines of one attempt, oldest first: (when, body).
    fn progress(&self, task_id: &str, generation: u64) -> Result<Vec<(u64, Value)>, StoreError>;
    fn checkpoint(&self, agent_id: &str) -> Result<Option<(Value, u64)>, StoreError>;
    /// The latest patch an attempt of the task reported.
    fn patch(&self, task_id: &str) -> Result<Option<StoredPatch>, StoreError>;
    /// Usage between two instants (ms, `until` excluded), grouped; only `agent`'s when given.
    fn usage(
        &self,
        by: proto::api::UsageBy,
        since_ms: u64,
        until_ms: u64,
        agent: Option<&str>,
    ) -> Result<Vec<proto::api::UsageRow>, StoreError>;
}

/// A free-text column (a transition's reason, a model name: an agent's own words) as every store
/// keeps it. PostgreSQL's text cannot hold NUL, and one agent's NUL must never fail the commit of
/// a whole batch, so it becomes U+FFFD in every store alike.
pub fn stored_text(s: &str) -> Cow<'_, str> {
    match s.contains('\0') {
        true => Cow::Owned(s.replace('\0', "\u{FFFD}")),
        false => Cow::Borrowed(s),
    }
}

/// The tree below a task (`TaskHead::children`, and theirs), with each one's status, as its
/// page shows it: at most [`proto::api::CHILDREN_SHOWN`] tasks, level by level (the children
/// first); a child the store no longer has is left out.
pub fn read_children<R: Reader + ?Sized>(r: &R, ids: &[String]) -> Result<Vec<proto::api::ChildTask>, StoreError> {
    let mut budget = proto::api::CHILDREN_SHOWN;
    let mut level: Vec<(Vec<usize>, String)> = ids.iter().enumerate().map(|(i, id)| (vec![i], id.clone())).collect();
    let mut tree: Vec<proto::api::ChildTask> = Vec::new();
    while !level.is_empty() && budget > 0 {
        let mut next = Vec::new();
        for (path, id) in level.into_iter().take(budget) {
            let Some(t) = r.task(&id)? else { continue };
            budget -= 1;
            let node = proto::api::ChildTask {
                task_id: t.head.task_id,
                status: t.head.status,
                description: t.payload.description.chars().take(proto::api::CHILD_DESCRIPTION).collect(),
                assigned_to: t.head.assigned_to,
                last_error: t.head.last_error,
                children: Vec::new(),
            };
            // Where it goes: under the node its path names (paths count the nodes kept).
            let mut siblings = &mut tree;
            for &i in &path[..path.len() - 1] {
                siblings = &mut siblings[i].children;
            }
            let at = siblings.len();
            siblings.push(node);
            let mut own = path.clone();
            *own.last_mut().expect("paths are never empty") = at;
            next.extend(t.head.children.into_iter().enumerate().map(|(i, c)| {
                let mut p = own.clone();
                p.push(i);
                (p, c)
            }));
        }
        level = next;
    }
    Ok(tree)
}

/// Milliseconds in a day, for UTC day arithmetic.
pub const DAY_MS: u64 = 86_400_000;

/// A stored value as JSON text (both stores keep heads, payloads and outcomes as JSON).
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("stored types always serialize")
}

/// A stored JSON text back as its value; `what` names it in the error.
fn decode<T: serde::de::DeserializeOwned>(what: impl Fn() -> String, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Decode { what: what(), message: e.to_string() })
}
