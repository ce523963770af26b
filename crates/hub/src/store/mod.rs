//! The hub's durable store: a narrow trait so a PostgreSQL backend can sit beside SQLite.
//!
//! The core hands the store one batch of [`Mutation`]s per group commit; `commit` returns only
//! once the batch is durable, and the core releases acks and replies only after that.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::model::{AgentRecord, Task, TaskStatus, TokenRecord, Transition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path} is corrupt or unreadable: {message}")]
    Corrupt { path: String, message: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored task {task_id} cannot be decoded: {message}")]
    Decode { task_id: String, message: String },
    #[error("cannot open database {path}: {message}")]
    Open { path: String, message: String },
}

#[derive(Debug, Clone)]
pub enum Mutation {
    PutTask(Box<Task>),
    AddTransition { task_id: String, transition: Transition },
    PutToken(TokenRecord),
    DeleteTokens { agent_id: String },
    PutCheckpoint { agent_id: String, body: serde_json::Value, at: u64 },
    PutAgent(AgentRecord),
}

pub trait Store: Send + 'static {
    /// Every task that is not terminal, in submission order.
    fn open_tasks(&mut self) -> Result<Vec<Task>, StoreError>;
    fn max_seq(&mut self) -> Result<i64, StoreError>;
    /// Applies the batch in one transaction and makes it durable before returning.
    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError>;
    fn task(&mut self, task_id: &str) -> Result<Option<Task>, StoreError>;
    fn transitions(&mut self, task_id: &str) -> Result<Vec<Transition>, StoreError>;
    /// Newest first.
    fn list_tasks(&mut self, status: Option<TaskStatus>, limit: usize) -> Result<Vec<Task>, StoreError>;
    fn count_by_status(&mut self) -> Result<Vec<(TaskStatus, u64)>, StoreError>;
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError>;
    fn checkpoint(&mut self, agent_id: &str) -> Result<Option<(serde_json::Value, u64)>, StoreError>;
    /// Every agent the hub has seen, as last recorded.
    fn agents(&mut self) -> Result<Vec<AgentRecord>, StoreError>;
}
