//! Read-only SQLite connections for the API's reads, used from blocking threads.

use super::*;
use crate::model::{StoredTask, Transition};
use proto::api::{UsageBy, UsageRow};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
    pub(super) fn open(path: &Path, connections: usize) -> Result<SqliteReader, StoreError> {
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

    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
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
            let rows = stmt.query_map(rusqlite::params![task_id, crate::store::HISTORY_SHOWN], |r| {
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

    fn patch(&self, task_id: &str) -> Result<Option<StoredPatch>, StoreError> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT generation, at, cut, patch FROM patches WHERE task_id = ?1")?
                .query_row([task_id], |r| {
                    Ok(StoredPatch {
                        generation: r.get::<_, i64>(0)?.max(0) as u64,
                        at: r.get::<_, i64>(1)?.max(0) as u64,
                        cut: r.get(2)?,
                        patch: r.get(3)?,
                    })
                })
                .optional()?)
        })
    }
}
