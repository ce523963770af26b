//! SQLite store: WAL, `synchronous=FULL`, versioned migrations, one transaction per group commit;
//! and a reader over a few read-only connections for the API's reads.

use super::{
    decode, json, stored_text, Mutation, Reader, Snapshot, Store, StoreError, StoredPatch, TaskQuery, PROGRESS_KEPT,
};
use crate::model::{AgentRecord, Payload, TaskHead, TaskStatus, TokenRecord};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod migrations;
mod reader;
use migrations::{Migration, MIGRATIONS};
pub use reader::SqliteReader;

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
                Mutation::PutPatch { task_id, patch: p } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO patches (task_id, generation, at, cut, patch) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![task_id, p.generation as i64, p.at as i64, p.cut, stored_text(&p.patch)])?;
                }
            }
        }
        // With WAL and synchronous=FULL, COMMIT returns after the WAL is fsynced.
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, Priority, Transition};
    use serde_json::json;
    use serde_json::Map;

    pub(crate) fn head(id: &str, seq: i64, status: TaskStatus) -> TaskHead {
        TaskHead::for_test(id, seq, status)
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
