//! SQLite store: WAL, `synchronous=FULL`, versioned migrations, one transaction per group commit.

use super::{Mutation, Store, StoreError};
use crate::model::{AgentRecord, Task, TaskStatus, TokenRecord, Transition};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// Each entry moves the schema one version up; `PRAGMA user_version` records how far we got.
const MIGRATIONS: &[&str] = &[
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
    "CREATE TABLE checkpoints (
        agent_id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    "CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        body TEXT NOT NULL
    );",
];

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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decode(task_id: String, body: String) -> Result<Task, StoreError> {
        serde_json::from_str(&body).map_err(|e| StoreError::Decode { task_id, message: e.to_string() })
    }

    fn query_tasks(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Task>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(Self::decode(id, body)?);
        }
        Ok(out)
    }
}

fn status_col(s: Option<TaskStatus>) -> Option<&'static str> {
    s.map(TaskStatus::as_str)
}

fn parse_status(s: &str) -> rusqlite::Result<TaskStatus> {
    s.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

impl Store for SqliteStore {
    fn open_tasks(&mut self) -> Result<Vec<Task>, StoreError> {
        self.query_tasks(
            "SELECT task_id, body FROM tasks WHERE status NOT IN ('completed','dead_letter','cancelled') ORDER BY seq",
            [],
        )
    }

    fn max_seq(&mut self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |r| r.get(0))?)
    }

    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for m in batch {
            match m {
                Mutation::PutTask(t) => {
                    let body = serde_json::to_string(t).expect("tasks always serialize");
                    tx.prepare_cached(
                        "INSERT INTO tasks (task_id, seq, status, updated_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(task_id) DO UPDATE SET status = excluded.status,
                           updated_at = excluded.updated_at, body = excluded.body",
                    )?
                    .execute(params![
                        t.task_id,
                        t.seq,
                        t.status.as_str(),
                        t.updated_at as i64,
                        body
                    ])?;
                }
                Mutation::AddTransition { task_id, transition: tr } => {
                    tx.prepare_cached(
                        "INSERT INTO transitions (task_id, at, from_status, to_status, reason, agent_id, generation)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        task_id,
                        tr.at as i64,
                        status_col(tr.from),
                        tr.to.as_str(),
                        tr.reason,
                        tr.agent_id,
                        tr.generation as i64
                    ])?;
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
                Mutation::PutAgent(a) => {
                    let body = serde_json::to_string(a).expect("an agent record serializes");
                    tx.prepare_cached("INSERT OR REPLACE INTO agents (agent_id, body) VALUES (?1, ?2)")?
                        .execute(params![a.agent_id, body])?;
                }
            }
        }
        // With WAL and synchronous=FULL, COMMIT returns after the WAL is fsynced.
        tx.commit()?;
        Ok(())
    }

    fn task(&mut self, task_id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.query_tasks("SELECT task_id, body FROM tasks WHERE task_id = ?1", [task_id])?.pop())
    }

    fn transitions(&mut self, task_id: &str) -> Result<Vec<Transition>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, from_status, to_status, reason, agent_id, generation FROM transitions WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([task_id], |r| {
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
    }

    fn list_tasks(&mut self, status: Option<TaskStatus>, limit: usize) -> Result<Vec<Task>, StoreError> {
        let limit = limit as i64;
        match status {
            Some(s) => self.query_tasks(
                "SELECT task_id, body FROM tasks WHERE status = ?1 ORDER BY seq DESC LIMIT ?2",
                params![s.as_str(), limit],
            ),
            None => self.query_tasks("SELECT task_id, body FROM tasks ORDER BY seq DESC LIMIT ?1", params![limit]),
        }
    }

    fn count_by_status(&mut self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((parse_status(&r.get::<_, String>(0)?)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT hash, agent_id, created_at FROM tokens ORDER BY agent_id, created_at")?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenRecord { hash: r.get(0)?, agent_id: r.get(1)?, created_at: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn checkpoint(&mut self, agent_id: &str) -> Result<Option<(serde_json::Value, u64)>, StoreError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row("SELECT body, updated_at FROM checkpoints WHERE agent_id = ?1", [agent_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(body, at)| {
            serde_json::from_str(&body)
                .map(|v| (v, at as u64))
                .map_err(|e| StoreError::Decode { task_id: format!("checkpoint:{agent_id}"), message: e.to_string() })
        })
        .transpose()
    }

    fn agents(&mut self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT agent_id, body FROM agents ORDER BY agent_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (agent_id, body) = row?;
            // Presence is a convenience: a record we cannot read is skipped, not fatal.
            match serde_json::from_str(&body) {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(agent_id = %agent_id, error = %e, "skipping an unreadable agent record"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Priority;
    use serde_json::json;

    fn task(id: &str, seq: i64, status: TaskStatus) -> Task {
        Task {
            task_id: id.into(),
            seq,
            description: "d".into(),
            priority: Priority::Normal,
            metadata: json!({}),
            needed_capabilities: vec![],
            assign_to: None,
            max_retries: 3,
            extra: Default::default(),
            status,
            generation: 0,
            assigned_to: None,
            assigned_at: None,
            attempts: 0,
            failures: 0,
            retry_at: None,
            result: None,
            report: Default::default(),
            last_error: None,
            progress: None,
            submitted_by: "admin".into(),
            created_at: 1,
            updated_at: 1,
            completed_at: None,
        }
    }

    #[test]
    fn commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        {
            let mut s = SqliteStore::open(&p).unwrap();
            s.commit(&[
                Mutation::PutTask(Box::new(task("a", 1, TaskStatus::Queued))),
                Mutation::PutTask(Box::new(task("b", 2, TaskStatus::Completed))),
                Mutation::AddTransition {
                    task_id: "a".into(),
                    transition: Transition {
                        at: 5,
                        from: None,
                        to: TaskStatus::Queued,
                        reason: "submitted".into(),
                        agent_id: None,
                        generation: 0,
                    },
                },
            ])
            .unwrap();
        }
        let mut s = SqliteStore::open(&p).unwrap();
        let open = s.open_tasks().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].task_id, "a");
        assert_eq!(s.max_seq().unwrap(), 2);
        assert_eq!(s.transitions("a").unwrap()[0].reason, "submitted");
        assert_eq!(s.list_tasks(Some(TaskStatus::Completed), 10).unwrap().len(), 1);
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
