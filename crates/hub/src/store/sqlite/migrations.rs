//! The SQLite schema's versions: each entry moves it one version up (`PRAGMA user_version`).

use super::super::json;
use crate::model::{Outcome, Payload, TaskHead};
use rusqlite::{params, Transaction};
use serde_json::{Map, Value};

pub(super) enum Migration {
    Sql(&'static str),
    /// A step that needs code (reshaping stored JSON).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Each entry moves the schema one version up; `PRAGMA user_version` records how far we got.
pub(super) const MIGRATIONS: &[Migration] = &[
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
    Migration::Sql(
        "CREATE TABLE patches (
            task_id TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            at INTEGER NOT NULL,
            cut INTEGER NOT NULL,
            patch TEXT NOT NULL
        );",
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
