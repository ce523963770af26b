//! SQLite store: WAL, `synchronous=FULL`, versioned migrations, one transaction per group commit;
//! and a reader over a few read-only connections for the API's reads.

use super::{stored_text, Mutation, Reader, Snapshot, Store, StoreError, TaskQuery, PROGRESS_KEPT};
use crate::model::{AgentRecord, Outcome, Payload, StoredTask, TaskHead, TaskStatus, TokenRecord, Transition};
use proto::api::{UsageBy, UsageRow};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

enum Migration {
    Sql(&'static str),
    /// A step that needs code (reshaping stored JSON).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Each entry moves the schema one version up; `PRAGMA user_version` records how far we got.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
        "CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            status TEXT NOT NULL,
            updated_at INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX tasks_status ON tasks(status, seq);
        CREATE TABLE transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            at INTEGER NOT NULL,
            from_status TEXT,
            to_status TEXT NOT NULL,
            reason TEXT NOT NULL,
            agent_id TEXT,
            generation INTEGER NOT NULL
        );
        CREATE INDEX transitions_task ON transitions(task_id, id);
        CREATE TABLE tokens (
            hash TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX tokens_agent ON tokens(agent_id);",
    ),
    Migration::Sql(
        "CREATE TABLE checkpoints (
            agent_id TEXT PRIMARY KEY,
            body TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        );",
    ),
    Migration::Sql(
        "CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            body TEXT NOT NULL
        );",
    ),
    Migration::Code(split_task_bodies),
    Migration::Sql(
        "CREATE TABLE usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            generation INTEGER NOT NULL,
            at INTEGER NOT NULL,
            model TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            total_tokens INTEGER,
            cost_usd REAL
        );
        CREATE INDEX usage_at ON usage(at);
        CREATE INDEX usage_task ON usage(task_id);",
    ),
];

/// Version 4: a task's one JSON body becomes head (rewritten on every transition), payload
/// (written once) and outcome, and progress gets a table of its own.
fn split_task_bodies(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE tasks_v4 (
            task_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            status TEXT NOT NULL,
            generation INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            head TEXT NOT NULL,
            payload TEXT NOT NULL,
            outcome TEXT
        );
        CREATE TABLE progress (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            generation INTEGER NOT NULL,
            at INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX progress_task ON progress(task_id, id);",
    )?;
    let rows: Vec<(String, String)> = {
        let mut stmt = tx.prepare("SELECT task_id, body FROM tasks ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let bad = |task_id: &str, e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("task {task_id}: {e}").into())
    };
    for (task_id, body) in rows {
        let Value::Object(mut m) = serde_json::from_str(&body).map_err(|e| bad(&task_id, e.to_string()))? else {
            return Err(bad(&task_id, "not an object".into()));
        };
        let take = |m: &mut Map<String, Value>, k: &str| m.remove(k).unwrap_or(Value::Null);
        let as_map = |v: Value| match v {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        let payload = Payload {
            description: take(&mut m, "description").as_str().unwrap_or_default().to_string(),
            metadata: as_map(take(&mut m, "metadata")),
            extra: as_map(take(&mut m, "extra")),
        };
        let result = take(&mut m, "result");
        let report = as_map(take(&mut m, "report"));
        let outcome = (!result.is_null() || !report.is_empty())
            .then(|| Outcome { result: (!result.is_null()).then_some(result), report });
        let progress = take(&mut m, "progress");
        let head: TaskHead = serde_json::from_value(Value::Object(m)).map_err(|e| bad(&task_id, e.to_string()))?;
        tx.execute(
            "INSERT INTO tasks_v4 (task_id, seq, status, generation, updated_at, head, payload, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                head.task_id,
                head.seq,
                head.status.as_str(),
                head.generation as i64,
                head.updated_at as i64,
                json(&head),
                json(&payload),
                outcome.as_ref().map(json),
            ],
        )?;
        if !progress.is_null() {
            tx.execute(
                "INSERT INTO progress (task_id, generation, at, body) VALUES (?1, ?2, ?3, ?4)",
                params![head.task_id, head.generation as i64, head.updated_at as i64, progress.to_string()],
            )?;
        }
    }
    tx.execute_batch(
        "DROP TABLE tasks;
         ALTER TABLE tasks_v4 RENAME TO tasks;
         CREATE INDEX tasks_status ON tasks(status, seq);",
    )
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("stored types always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(what: impl Fn() -> String, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Decode { what: what(), message: e.to_string() })
}

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (or creates) the database, checks it and runs pending migrations.
    /// A file that exists but is not a healthy database is an error, never a fresh start.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt { path: shown.clone(), message: e.to_string() };
        let conn =
            Connection::open(path).map_err(|e| StoreError::Open { path: shown.clone(), message: e.to_string() })?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(corrupt)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(corrupt)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(corrupt)?;
        if check != "ok" {
            return Err(StoreError::Corrupt { path: shown, message: check });
        }
        let mut store = SqliteStore { conn, path: path.to_path_buf() };
        store.migrate().map_err(corrupt)?;
        Ok(store)
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        let version: usize = self.conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "schema version {version} is newer than this agentcom ({}); upgrade agentcom",
                MIGRATIONS.len()
            )));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            match step {
                Migration::Sql(sql) => tx.execute_batch(sql)?,
                Migration::Code(f) => f(&tx)?,
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader over `connections` read-only connections to the same database.
    pub fn reader(&self, connections: usize) -> Result<SqliteReader, StoreError> {
        SqliteReader::open(&self.path, connections)
    }
}

fn parse_status(s: &str) -> rusqlite::Result<TaskStatus> {
    s.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

impl Store for SqliteStore {
    fn load(&mut self, day_start_ms: u64) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT task_id, head FROM tasks WHERE status NOT IN ('completed','dead_letter','cancelled') ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, head) = row?;
                snap.open.push(decode(|| format!("task {id}"), &head)?);
            }
        }
        snap.max_seq = self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |r| r.get(0))?;
        {
            let mut stmt = self.conn.prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
            let rows =
                stmt.query_map([], |r| Ok((parse_status(&r.get::<_, String>(0)?)?, r.get::<_, i64>(1)? as u64)))?;
            for row in rows {
                let (s, n) = row?;
                snap.counts.insert(s, n);
            }
        }
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT hash, agent_id, created_at FROM tokens ORDER BY agent_id, created_at")?;
            let rows = stmt.query_map([], |r| {
                Ok(TokenRecord { hash: r.get(0)?, agent_id: r.get(1)?, created_at: r.get::<_, i64>(2)? as u64 })
            })?;
            snap.tokens = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT agent_id, COALESCE(SUM(cost_usd), 0.0),
                        COALESCE(SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)), 0),
                        COALESCE(SUM(CASE WHEN input_tokens IS NULL AND output_tokens IS NULL THEN total_tokens ELSE 0 END), 0)
                 FROM usage WHERE at >= ?1 GROUP BY agent_id",
            )?;
            let rows = stmt.query_map([day_start_ms as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?, r.get::<_, i64>(2)? + r.get::<_, i64>(3)?))
            })?;
            for row in rows {
                let (agent, cost, tokens) = row?;
                snap.spend_today.insert(agent, (cost, tokens.max(0) as u64));
            }
        }
        let mut stmt = self.conn.prepare_cached("SELECT agent_id, body FROM agents ORDER BY agent_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (agent_id, body) = row?;
            // Presence is a convenience: a record we cannot read is skipped, not fatal.
            match serde_json::from_str::<AgentRecord>(&body) {
                Ok(a) => snap.agents.push(a),
                Err(e) => tracing::warn!(agent_id = %agent_id, error = %e, "skipping an unreadable agent record"),
            }
        }
        Ok(snap)
    }

    fn head(&mut self, task_id: &str) -> Result<Option<TaskHead>, StoreError> {
        let head: Option<String> = self
            .conn
            .prepare_cached("SELECT head FROM tasks WHERE task_id = ?1")?
            .query_row([task_id], |r| r.get(0))
            .optional()?;
        head.map(|h| decode(|| format!("task {task_id}"), &h)).transpose()
    }

    fn payloads(&mut self, task_ids: &[&str]) -> Result<HashMap<String, Payload>, StoreError> {
        let mut out = HashMap::with_capacity(task_ids.len());
        let mut stmt = self.conn.prepare_cached("SELECT payload FROM tasks WHERE task_id = ?1")?;
        for id in task_ids {
            if let Some(p) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
                out.insert(id.to_string(), decode(|| format!("payload of {id}"), &p)?);
            }
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for m in batch {
            match m {
                Mutation::InsertTask { head, payload } => {
                    tx.prepare_cached(
                        "INSERT INTO tasks (task_id, seq, status, generation, updated_at, head, payload)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        head.task_id,
                        head.seq,
                        head.status.as_str(),
                        head.generation as i64,
                        head.updated_at as i64,
                        json(head),
                        json(payload)
                    ])?;
                }
                Mutation::PutHead(head) => {
                    tx.prepare_cached(
                        "UPDATE tasks SET status = ?2, generation = ?3, updated_at = ?4, head = ?5 WHERE task_id = ?1",
                    )?
                    .execute(params![
                        head.task_id,
                        head.status.as_str(),
                        head.generation as i64,
                        head.updated_at as i64,
                        json(head)
                    ])?;
                }
                Mutation::SetOutcome { task_id, outcome } => {
                    tx.prepare_cached("UPDATE tasks SET outcome = ?2 WHERE task_id = ?1")?
                        .execute(params![task_id, json(outcome)])?;
                }
                Mutation::AddTransition { task_id, transition: tr } => {
                    tx.prepare_cached(
                        "INSERT INTO transitions (task_id, at, from_status, to_status, reason, agent_id, generation)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        task_id,
                        tr.at as i64,
                        tr.from.map(TaskStatus::as_str),
                        tr.to.as_str(),
                        stored_text(&tr.reason),
                        tr.agent_id,
                        tr.generation as i64
                    ])?;
                }
                Mutation::AddProgress { task_id, generation, at, body } => {
                    tx.prepare_cached("INSERT INTO progress (task_id, generation, at, body) VALUES (?1, ?2, ?3, ?4)")?
                        .execute(params![task_id, *generation as i64, *at as i64, body.to_string()])?;
                    tx.prepare_cached(
                        "DELETE FROM progress WHERE task_id = ?1 AND id <= (
                           SELECT id FROM progress WHERE task_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    )?
                    .execute(params![task_id, PROGRESS_KEPT])?;
                }
                Mutation::PutToken(t) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO tokens (hash, agent_id, created_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![t.hash, t.agent_id, t.created_at as i64])?;
                }
                Mutation::DeleteTokens { agent_id } => {
                    tx.prepare_cached("DELETE FROM tokens WHERE agent_id = ?1")?.execute(params![agent_id])?;
                }
                Mutation::PutCheckpoint { agent_id, body, at } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO checkpoints (agent_id, body, updated_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![agent_id, body.to_string(), *at as i64])?;
                }
                Mutation::AddUsage { task_id, agent_id, generation, at, usage: u } => {
                    tx.prepare_cached(
                        "INSERT INTO usage (task_id, agent_id, generation, at, model, input_tokens, output_tokens,
                           total_tokens, cost_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        task_id,
                        agent_id,
                        *generation as i64,
                        *at as i64,
                        u.model.as_deref().map(stored_text),
                        u.input_tokens.map(|n| n as i64),
                        u.output_tokens.map(|n| n as i64),
                        u.total_tokens.map(|n| n as i64),
                        u.cost_usd
                    ])?;
                }
                Mutation::PutAgent(a) => {
                    tx.prepare_cached("INSERT OR REPLACE INTO agents (agent_id, body) VALUES (?1, ?2)")?
                        .execute(params![a.agent_id, json(a)])?;
                }
            }
        }
        // With WAL and synchronous=FULL, COMMIT returns after the WAL is fsynced.
        tx.commit()?;
        Ok(())
    }
}

/// Read-only connections for the API's reads, used from blocking threads.
pub struct SqliteReader {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// One task row as read: id, head, payload, outcome, latest progress, usage (JSON texts).
type TaskRow = (String, String, String, Option<String>, Option<String>, Option<String>);

/// The columns every task read selects, in [`SqliteReader::row`]'s order.
const TASK_COLUMNS: &str = "t.task_id, t.head, t.payload, t.outcome,
    (SELECT p.body FROM progress p WHERE p.task_id = t.task_id AND p.generation = t.generation
     ORDER BY p.id DESC LIMIT 1),
    (SELECT CASE WHEN COUNT(*) = 0 THEN NULL ELSE json_object(
        'input_tokens', SUM(u.input_tokens), 'output_tokens', SUM(u.output_tokens),
        'total_tokens', SUM(u.total_tokens), 'cost_usd', SUM(u.cost_usd)) END
     FROM usage u WHERE u.task_id = t.task_id)";

impl SqliteReader {
    fn open(path: &Path, connections: usize) -> Result<SqliteReader, StoreError> {
        let shown = path.display().to_string();
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            // Read-write but query-only: a read-only connection to a WAL database fails with an
            // I/O error when it has to rebuild the shared-memory index (after a crash).
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| StoreError::Open { path: shown.clone(), message: e.to_string() })?;
            conn.pragma_update(None, "query_only", true)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conns.push(Mutex::new(conn));
        }
        Ok(SqliteReader { conns, next: AtomicUsize::new(0) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let conn = self.conns[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    }

    fn decode_task((id, head, payload, outcome, progress, usage): TaskRow) -> Result<StoredTask, StoreError> {
        Ok(StoredTask {
            head: decode(|| format!("task {id}"), &head)?,
            payload: decode(|| format!("payload of {id}"), &payload)?,
            outcome: outcome.map(|o| decode(|| format!("outcome of {id}"), &o)).transpose()?,
            progress: progress.map(|p| decode(|| format!("progress of {id}"), &p)).transpose()?,
            usage: usage.map(|u| decode(|| format!("usage of {id}"), &u)).transpose()?,
        })
    }
}

impl Reader for SqliteReader {
    fn list_tasks(&self, q: TaskQuery) -> Result<(Vec<StoredTask>, bool), StoreError> {
        self.with(|conn| {
            // One more row than asked tells whether a next page exists.
            let limit = q.limit as i64 + 1;
            let before = q.before_seq.unwrap_or(i64::MAX);
            let rows: Vec<_> = match q.status {
                Some(s) => {
                    let sql = format!(
                        "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.status = ?1 AND t.seq < ?2 ORDER BY t.seq DESC LIMIT ?3"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map(params![s.as_str(), before, limit], Self::row)?;
                    rows.collect::<Result<_, _>>()?
                }
                None => {
                    let sql =
                        format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.seq < ?1 ORDER BY t.seq DESC LIMIT ?2");
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map(params![before, limit], Self::row)?;
                    rows.collect::<Result<_, _>>()?
                }
            };
            let more = rows.len() > q.limit;
            let tasks = rows.into_iter().take(q.limit).map(Self::decode_task).collect::<Result<Vec<_>, _>>()?;
            Ok((tasks, more))
        })
    }

    fn task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        self.with(|conn| {
            let sql = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.task_id = ?1");
            let row = conn.prepare_cached(&sql)?.query_row([task_id], Self::row).optional()?;
            row.map(Self::decode_task).transpose()
        })
    }

    fn transitions(&self, task_id: &str) -> Result<Vec<Transition>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, from_status, to_status, reason, agent_id, generation FROM (
                   SELECT * FROM transitions WHERE task_id = ?1 ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id",
            )?;
            let rows = stmt.query_map(rusqlite::params![task_id, super::HISTORY_SHOWN], |r| {
                let from: Option<String> = r.get(1)?;
                Ok(Transition {
                    at: r.get::<_, i64>(0)? as u64,
                    from: from.as_deref().map(parse_status).transpose()?,
                    to: parse_status(&r.get::<_, String>(2)?)?,
                    reason: r.get(3)?,
                    agent_id: r.get(4)?,
                    generation: r.get::<_, i64>(5)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn progress(&self, task_id: &str, generation: u64) -> Result<Vec<(u64, Value)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT at, body FROM progress WHERE task_id = ?1 AND generation = ?2 ORDER BY id")?;
            let rows = stmt.query_map(params![task_id, generation as i64], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, String>(1)?))
            })?;
            let rows: Vec<(u64, String)> = rows.collect::<Result<_, _>>()?;
            rows.into_iter().map(|(at, body)| Ok((at, decode(|| format!("progress of {task_id}"), &body)?))).collect()
        })
    }

    fn usage(
        &self,
        by: UsageBy,
        since_ms: u64,
        until_ms: u64,
        agent: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let key = match by {
            UsageBy::Agent => "agent_id",
            UsageBy::Model => "COALESCE(model, 'unknown')",
            UsageBy::Day => "strftime('%Y-%m-%d', at / 1000, 'unixepoch')",
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
                    COALESCE(SUM(COALESCE(total_tokens, COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0))), 0),
                    COALESCE(SUM(cost_usd), 0.0)
             FROM usage WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR agent_id = ?3) GROUP BY k ORDER BY k"
        );
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![since_ms as i64, until_ms as i64, agent], |r| {
                Ok(UsageRow {
                    key: r.get(0)?,
                    reports: r.get::<_, i64>(1)? as u64,
                    input_tokens: r.get::<_, i64>(2)?.max(0) as u64,
                    output_tokens: r.get::<_, i64>(3)?.max(0) as u64,
                    total_tokens: r.get::<_, i64>(4)?.max(0) as u64,
                    cost_usd: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn checkpoint(&self, agent_id: &str) -> Result<Option<(Value, u64)>, StoreError> {
        self.with(|conn| {
            let row: Option<(String, i64)> = conn
                .prepare_cached("SELECT body, updated_at FROM checkpoints WHERE agent_id = ?1")?
                .query_row([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row.map(|(body, at)| decode(|| format!("checkpoint of {agent_id}"), &body).map(|v| (v, at as u64)))
                .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Priority;
    use serde_json::json;

    pub(crate) fn head(id: &str, seq: i64, status: TaskStatus) -> TaskHead {
        TaskHead {
            task_id: id.into(),
            seq,
            priority: Priority::Normal,
            status,
            generation: 0,
            needed_capabilities: vec![],
            assign_to: None,
            max_retries: 3,
            assigned_to: None,
            assigned_at: None,
            attempts: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
            submitted_by: "admin".into(),
            created_at: 1,
            updated_at: 1,
            completed_at: None,
            needs_input: None,
            answer: None,
        }
    }

    fn insert(id: &str, seq: i64, status: TaskStatus) -> Mutation {
        let payload = Payload { description: format!("do {id}"), metadata: Map::new(), extra: Map::new() };
        Mutation::InsertTask { head: Box::new(head(id, seq, status)), payload: Box::new(payload) }
    }

    #[test]
    fn commit_reopen_and_read_pages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        {
            let mut s = SqliteStore::open(&p).unwrap();
            let mut batch = vec![insert("a", 1, TaskStatus::Queued), insert("b", 2, TaskStatus::Completed)];
            batch.extend((3..=7).map(|i| insert(&format!("t{i}"), i, TaskStatus::Queued)));
            batch.push(Mutation::AddTransition {
                task_id: "a".into(),
                transition: Transition {
                    at: 5,
                    from: None,
                    to: TaskStatus::Queued,
                    reason: "submitted".into(),
                    agent_id: None,
                    generation: 0,
                },
            });
            batch.push(Mutation::SetOutcome {
                task_id: "b".into(),
                outcome: Box::new(Outcome { result: Some(json!({"ok": 1})), report: Map::new() }),
            });
            s.commit(&batch).unwrap();
        }
        let mut s = SqliteStore::open(&p).unwrap();
        let snap = s.load(0).unwrap();
        assert_eq!(snap.open.len(), 6);
        assert_eq!(snap.open[0].task_id, "a");
        assert_eq!(snap.max_seq, 7);
        assert_eq!(snap.counts[&TaskStatus::Queued], 6);
        assert_eq!(s.payloads(&["t3", "nope"]).unwrap()["t3"].description, "do t3");
        let r = s.reader(2).unwrap();
        assert_eq!(r.transitions("a").unwrap()[0].reason, "submitted");
        let b = r.task("b").unwrap().unwrap();
        assert_eq!(b.outcome.unwrap().result, Some(json!({"ok": 1})));
        let (page, more) =
            r.list_tasks(TaskQuery { status: Some(TaskStatus::Queued), before_seq: None, limit: 4 }).unwrap();
        let ids: Vec<_> = page.iter().map(|t| t.head.task_id.as_str()).collect();
        assert_eq!((ids, more), (vec!["t7", "t6", "t5", "t4"], true));
        let (page, more) =
            r.list_tasks(TaskQuery { status: Some(TaskStatus::Queued), before_seq: Some(4), limit: 4 }).unwrap();
        let ids: Vec<_> = page.iter().map(|t| t.head.task_id.as_str()).collect();
        assert_eq!((ids, more), (vec!["t3", "a"], false));
    }

    #[test]
    fn progress_is_per_generation_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        s.commit(&[insert("a", 1, TaskStatus::Working)]).unwrap();
        let batch: Vec<_> = (0..150)
            .map(|i| Mutation::AddProgress { task_id: "a".into(), generation: 0, at: i, body: json!({"step": i}) })
            .collect();
        s.commit(&batch).unwrap();
        let r = s.reader(1).unwrap();
        assert_eq!(r.task("a").unwrap().unwrap().progress, Some(json!({"step": 149})));
        let kept: i64 = r.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM progress", [], |r| r.get(0))?)).unwrap();
        assert_eq!(kept, PROGRESS_KEPT);
        let lines = r.progress("a", 0).unwrap();
        assert_eq!(
            (lines.len() as i64, lines[0].clone(), lines.last().cloned()),
            (PROGRESS_KEPT, (50, json!({"step": 50})), Some((149, json!({"step": 149}))))
        );
        assert!(r.progress("a", 1).unwrap().is_empty() && r.progress("nope", 0).unwrap().is_empty());
        // A new attempt starts without the previous attempt's progress.
        let mut h = head("a", 1, TaskStatus::Assigned);
        h.generation = 1;
        s.commit(&[Mutation::PutHead(Box::new(h))]).unwrap();
        assert_eq!(r.task("a").unwrap().unwrap().progress, None);
    }

    #[test]
    fn a_version_3_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        {
            let conn = Connection::open(&p).unwrap();
            for m in &MIGRATIONS[..3] {
                let Migration::Sql(sql) = m else { unreachable!() };
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            let old = json!({"task_id": "old", "seq": 9, "description": "legacy", "priority": "high",
                "metadata": {"k": 1}, "needed_capabilities": ["rust"], "assign_to": null, "max_retries": 2,
                "extra": {"repo": "r"}, "status": "completed", "generation": 3, "assigned_to": "a1",
                "assigned_at": 5, "attempts": 3, "failures": 1, "retry_at": null, "result": {"status": "success"},
                "report": {"tokens_used": 7}, "last_error": "x", "progress": {"p": 1}, "submitted_by": "admin",
                "created_at": 1, "updated_at": 6, "completed_at": 6});
            conn.execute(
                "INSERT INTO tasks (task_id, seq, status, updated_at, body) VALUES ('old', 9, 'completed', 6, ?1)",
                [old.to_string()],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        let t = s.reader(1).unwrap().task("old").unwrap().unwrap();
        assert_eq!((t.head.priority, t.head.generation, t.head.attempts), (Priority::High, 3, 3));
        assert_eq!((t.payload.description.as_str(), &t.payload.extra["repo"]), ("legacy", &json!("r")));
        let o = t.outcome.unwrap();
        assert_eq!((o.result, o.report["tokens_used"].clone()), (Some(json!({"status": "success"})), json!(7)));
        assert_eq!(t.progress, Some(json!({"p": 1})));
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(&p).err().expect("must refuse a corrupt file");
        let msg = err.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
    }
}
