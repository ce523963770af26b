//! PostgreSQL store, for several hubs on one database (one leader at a time, see `ha.rs`).
//!
//! The same logical schema as SQLite's, with embedded versioned migrations that hubs starting
//! together run safely (under an advisory lock). Every commit of the leader is fenced: in the
//! same transaction it checks that the leader row still carries its term, so a deposed leader
//! (paused, cut off) cannot assign, complete or requeue anything. A group commit is a handful of
//! statements whatever its size: rows of one kind go in one `UNNEST` statement.

use super::{
    decode, json, stored_text, Database, Mutation, Reader, Snapshot, Store, StoreError, StoredPatch, TaskQuery,
    PROGRESS_KEPT,
};
use crate::model::{AgentRecord, Payload, StoredTask, TaskHead, TaskStatus, TokenRecord, Transition};
use postgres::Client;
use proto::api::{UsageBy, UsageRow};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6167_656e_7401;

/// Each entry moves the schema one version up.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        generation BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        head TEXT NOT NULL,
        payload TEXT NOT NULL,
        outcome TEXT
    );
    CREATE INDEX tasks_status ON tasks(status, seq);
    CREATE TABLE transitions (
        id BIGSERIAL PRIMARY KEY,
        task_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        reason TEXT NOT NULL,
        agent_id TEXT,
        generation BIGINT NOT NULL
    );
    CREATE INDEX transitions_task ON transitions(task_id, id);
    CREATE TABLE tokens (hash TEXT PRIMARY KEY, agent_id TEXT NOT NULL, created_at BIGINT NOT NULL);
    CREATE INDEX tokens_agent ON tokens(agent_id);
    CREATE TABLE checkpoints (agent_id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at BIGINT NOT NULL);
    CREATE TABLE agents (agent_id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE progress (
        id BIGSERIAL PRIMARY KEY,
        task_id TEXT NOT NULL,
        generation BIGINT NOT NULL,
        at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX progress_task ON progress(task_id, id);
    CREATE TABLE usage (
        id BIGSERIAL PRIMARY KEY,
        task_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        generation BIGINT NOT NULL,
        at BIGINT NOT NULL,
        model TEXT,
        input_tokens BIGINT,
        output_tokens BIGINT,
        total_tokens BIGINT,
        cost_usd DOUBLE PRECISION
    );
    CREATE INDEX usage_at ON usage(at);
    CREATE INDEX usage_task ON usage(task_id);
    CREATE TABLE leader (
        id INT PRIMARY KEY CHECK (id = 1),
        term BIGINT NOT NULL,
        holder TEXT,
        url TEXT,
        ws_url TEXT,
        expires_at TIMESTAMPTZ NOT NULL,
        pids INT[] NOT NULL DEFAULT '{}',
        commits BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO leader (id, term, expires_at) VALUES (1, 0, now());
",
    "
    CREATE TABLE patches (
        task_id TEXT PRIMARY KEY,
        generation BIGINT NOT NULL,
        at BIGINT NOT NULL,
        cut BOOLEAN NOT NULL,
        patch TEXT NOT NULL
    );
",
];

/// How every connection to PostgreSQL is made (TLS as `database_url` says, see `pg_tls.rs`):
/// keepalives and timeouts so that a cut network or a paused server is noticed within
/// `timeout`, never waited on for ever.
pub fn connect(db: &Database, timeout: Duration) -> Result<Client, StoreError> {
    let mut client = db.open(|cfg| {
        cfg.connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .tcp_user_timeout(timeout)
            .application_name("agentcom-hub")
    })?;
    // Notices ("already exists, skipping") are not worth a log line each time a hub connects.
    client.batch_execute(&format!(
        "SET statement_timeout = {}; SET client_min_messages = warning",
        timeout.as_millis().max(1)
    ))?;
    Ok(client)
}

/// What went wrong, with the server's own message (`postgres::Error` alone says "db error").
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Runs the pending migrations; hubs starting together wait for each other on a lock.
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| {
        client.batch_execute("CREATE TABLE IF NOT EXISTS agentcom_schema (version INT NOT NULL)")?;
        let version: i32 = match client.query_opt("SELECT version FROM agentcom_schema", &[])? {
            Some(row) => row.get(0),
            None => {
                client.execute("INSERT INTO agentcom_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Open {
                path: "agentcom_schema".into(),
                message: format!(
                    "schema version {version} is newer than this agentcom ({}); upgrade agentcom",
                    MIGRATIONS.len()
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("UPDATE agentcom_schema SET version = $1", &[&((i + 1) as i32)])?;
            tx.commit()?;
        }
        Ok(())
    })();
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    result
}

fn parse_status(s: &str, what: &str) -> Result<TaskStatus, StoreError> {
    s.parse().map_err(|e: String| StoreError::Decode { what: what.into(), message: e })
}

/// The leader's writer: one connection, fenced by its term.
pub struct PgStore {
    client: Client,
    term: u64,
    db: Database,
    timeout: Duration,
}

impl PgStore {
    pub fn open(db: &Database, term: u64, timeout: Duration) -> Result<PgStore, StoreError> {
        let mut client = connect(db, timeout)?;
        migrate(&mut client)?;
        Ok(PgStore { client, term, db: db.clone(), timeout })
    }

    /// A lost connection is opened again on the next use: every commit is fenced by the term,
    /// so a new session cannot write for a leader that was replaced meanwhile.
    fn reconnect_if_closed(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = connect(&self.db, self.timeout)?;
        }
        Ok(())
    }

    /// This connection's server process, recorded so a successor can cut it off.
    pub fn backend_pid(&mut self) -> Result<i32, StoreError> {
        Ok(self.client.query_one("SELECT pg_backend_pid()", &[])?.get(0))
    }
}

/// Keeps the last of each key, in first-seen order (one row per key in an `UNNEST` upsert).
fn last_by_key<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> Vec<T> {
    let mut order: Vec<&str> = Vec::new();
    let mut by: HashMap<&str, T> = HashMap::new();
    for (k, v) in items {
        if by.insert(k, v).is_none() {
            order.push(k);
        }
    }
    order.into_iter().filter_map(|k| by.remove(k)).collect()
}

impl Store for PgStore {
    fn load(&mut self, day_start_ms: u64) -> Result<Snapshot, StoreError> {
        self.reconnect_if_closed()?;
        let mut snap = Snapshot::default();
        for row in self.client.query(
            "SELECT task_id, head FROM tasks WHERE status NOT IN ('completed','dead_letter','cancelled') ORDER BY seq",
            &[],
        )? {
            let (id, head): (String, String) = (row.get(0), row.get(1));
            snap.open.push(decode(|| format!("task {id}"), &head)?);
        }
        snap.max_seq = self.client.query_one("SELECT COALESCE(MAX(seq), 0) FROM tasks", &[])?.get(0);
        for row in self.client.query("SELECT status, COUNT(*) FROM tasks GROUP BY status", &[])? {
            let s: String = row.get(0);
            let n: i64 = row.get(1);
            snap.counts.insert(parse_status(&s, "a task status")?, n as u64);
        }
        for row in
            self.client.query("SELECT hash, agent_id, created_at FROM tokens ORDER BY agent_id, created_at", &[])?
        {
            snap.tokens.push(TokenRecord {
                hash: row.get(0),
                agent_id: row.get(1),
                created_at: row.get::<_, i64>(2) as u64,
            });
        }
        for row in self.client.query(
            "SELECT agent_id, COALESCE(SUM(cost_usd), 0)::float8,
                    COALESCE(SUM(CASE WHEN input_tokens IS NULL AND output_tokens IS NULL THEN COALESCE(total_tokens, 0)
                                      ELSE COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0) END), 0)::int8
             FROM usage WHERE at >= $1 GROUP BY agent_id",
            &[&(day_start_ms as i64)],
        )? {
            let (agent, cost, tokens): (String, f64, i64) = (row.get(0), row.get(1), row.get(2));
            snap.spend_today.insert(agent, (cost, tokens.max(0) as u64));
        }
        for row in self.client.query("SELECT agent_id, body FROM agents ORDER BY agent_id", &[])? {
            let (agent_id, body): (String, String) = (row.get(0), row.get(1));
            match serde_json::from_str::<AgentRecord>(&body) {
                Ok(a) => snap.agents.push(a),
                Err(e) => tracing::warn!(agent_id = %agent_id, error = %e, "skipping an unreadable agent record"),
            }
        }
        Ok(snap)
    }

    fn head(&mut self, task_id: &str) -> Result<Option<TaskHead>, StoreError> {
        self.reconnect_if_closed()?;
        let row = self.client.query_opt("SELECT head FROM tasks WHERE task_id = $1", &[&task_id])?;
        row.map(|r| decode(|| format!("task {task_id}"), &r.get::<_, String>(0))).transpose()
    }

    fn payloads(&mut self, task_ids: &[&str]) -> Result<HashMap<String, Payload>, StoreError> {
        self.reconnect_if_closed()?;
        let ids: Vec<&str> = task_ids.to_vec();
        let mut out = HashMap::with_capacity(ids.len());
        for row in self.client.query("SELECT task_id, payload FROM tasks WHERE task_id = ANY($1)", &[&ids])? {
            let (id, p): (String, String) = (row.get(0), row.get(1));
            let payload = decode(|| format!("payload of {id}"), &p)?;
            out.insert(id, payload);
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        self.reconnect_if_closed()?;
        let term = self.term;
        let mut tx = self.client.transaction()?;
        // The fence: only the current term's leader writes. The row lock it takes also orders
        // this commit before any takeover.
        if tx.execute("UPDATE leader SET commits = commits + 1 WHERE id = 1 AND term = $1", &[&(term as i64)])? == 0 {
            return Err(StoreError::Deposed { term });
        }
        let inserts: Vec<_> = batch
            .iter()
            .filter_map(|m| match m {
                Mutation::InsertTask { head, payload } => Some((head, payload)),
                _ => None,
            })
            .collect();
        if !inserts.is_empty() {
            let ids: Vec<&str> = inserts.iter().map(|(h, _)| h.task_id.as_str()).collect();
            let seqs: Vec<i64> = inserts.iter().map(|(h, _)| h.seq).collect();
            let statuses: Vec<&str> = inserts.iter().map(|(h, _)| h.status.as_str()).collect();
            let gens: Vec<i64> = inserts.iter().map(|(h, _)| h.generation as i64).collect();
            let updated: Vec<i64> = inserts.iter().map(|(h, _)| h.updated_at as i64).collect();
            let heads: Vec<String> = inserts.iter().map(|(h, _)| json(h)).collect();
            let payloads: Vec<String> = inserts.iter().map(|(_, p)| json(p)).collect();
            tx.execute(
                "INSERT INTO tasks (task_id, seq, status, generation, updated_at, head, payload)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[])",
                &[&ids, &seqs, &statuses, &gens, &updated, &heads, &payloads],
            )?;
        }
        let heads = last_by_key(batch.iter().filter_map(|m| match m {
            Mutation::PutHead(h) => Some((h.task_id.as_str(), h)),
            _ => None,
        }));
        if !heads.is_empty() {
            let ids: Vec<&str> = heads.iter().map(|h| h.task_id.as_str()).collect();
            let statuses: Vec<&str> = heads.iter().map(|h| h.status.as_str()).collect();
            let gens: Vec<i64> = heads.iter().map(|h| h.generation as i64).collect();
            let updated: Vec<i64> = heads.iter().map(|h| h.updated_at as i64).collect();
            let bodies: Vec<String> = heads.iter().map(json).collect();
            tx.execute(
                "UPDATE tasks SET status = u.status, generation = u.generation, updated_at = u.updated_at, head = u.head
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[])
                   AS u(task_id, status, generation, updated_at, head)
                 WHERE tasks.task_id = u.task_id",
                &[&ids, &statuses, &gens, &updated, &bodies],
            )?;
        }
        let outcomes = last_by_key(batch.iter().filter_map(|m| match m {
            Mutation::SetOutcome { task_id, outcome } => Some((task_id.as_str(), (task_id, outcome))),
            _ => None,
        }));
        if !outcomes.is_empty() {
            let ids: Vec<&str> = outcomes.iter().map(|(id, _)| id.as_str()).collect();
            let bodies: Vec<String> = outcomes.iter().map(|(_, o)| json(o)).collect();
            tx.execute(
                "UPDATE tasks SET outcome = u.outcome FROM UNNEST($1::text[], $2::text[]) AS u(task_id, outcome)
                 WHERE tasks.task_id = u.task_id",
                &[&ids, &bodies],
            )?;
        }
        let trs: Vec<(&String, &Transition)> = batch
            .iter()
            .filter_map(|m| match m {
                Mutation::AddTransition { task_id, transition } => Some((task_id, transition)),
                _ => None,
            })
            .collect();
        if !trs.is_empty() {
            let ids: Vec<&str> = trs.iter().map(|(id, _)| id.as_str()).collect();
            let at: Vec<i64> = trs.iter().map(|(_, t)| t.at as i64).collect();
            let from: Vec<Option<&str>> = trs.iter().map(|(_, t)| t.from.map(TaskStatus::as_str)).collect();
            let to: Vec<&str> = trs.iter().map(|(_, t)| t.to.as_str()).collect();
            let reason: Vec<Cow<'_, str>> = trs.iter().map(|(_, t)| stored_text(&t.reason)).collect();
            let agent: Vec<Option<&str>> = trs.iter().map(|(_, t)| t.agent_id.as_deref()).collect();
            let gen: Vec<i64> = trs.iter().map(|(_, t)| t.generation as i64).collect();
            tx.execute(
                "INSERT INTO transitions (task_id, at, from_status, to_status, reason, agent_id, generation)
                 SELECT task_id, at, from_status, to_status, reason, agent_id, generation
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])
                   WITH ORDINALITY AS u(task_id, at, from_status, to_status, reason, agent_id, generation, ord)
                 ORDER BY ord",
                &[&ids, &at, &from, &to, &reason, &agent, &gen],
            )?;
        }
        let progress: Vec<(&String, &u64, &u64, &Value)> = batch
            .iter()
            .filter_map(|m| match m {
                Mutation::AddProgress { task_id, generation, at, body } => Some((task_id, generation, at, body)),
                _ => None,
            })
            .collect();
        if !progress.is_empty() {
            let ids: Vec<&str> = progress.iter().map(|p| p.0.as_str()).collect();
            let gens: Vec<i64> = progress.iter().map(|p| *p.1 as i64).collect();
            let at: Vec<i64> = progress.iter().map(|p| *p.2 as i64).collect();
            let bodies: Vec<String> = progress.iter().map(|p| p.3.to_string()).collect();
            tx.execute(
                "INSERT INTO progress (task_id, generation, at, body)
                 SELECT task_id, generation, at, body
                 FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[]) WITH ORDINALITY AS u(task_id, generation, at, body, ord)
                 ORDER BY ord",
                &[&ids, &gens, &at, &bodies],
            )?;
            let mut touched = ids.clone();
            touched.sort_unstable();
            touched.dedup();
            tx.execute(
                "DELETE FROM progress p USING UNNEST($1::text[]) AS t(task_id)
                 WHERE p.task_id = t.task_id AND p.id <= (
                   SELECT q.id FROM progress q WHERE q.task_id = t.task_id ORDER BY q.id DESC OFFSET $2 LIMIT 1)",
                &[&touched, &PROGRESS_KEPT],
            )?;
        }
        let usage: Vec<_> = batch
            .iter()
            .filter_map(|m| match m {
                Mutation::AddUsage { task_id, agent_id, generation, at, usage } => {
                    Some((task_id, agent_id, generation, at, usage))
                }
                _ => None,
            })
            .collect();
        if !usage.is_empty() {
            let col = |f: fn(&proto::Usage) -> Option<u64>| -> Vec<Option<i64>> {
                usage.iter().map(|u| f(u.4).map(|n| n as i64)).collect()
            };
            let (input, output, total) = (col(|u| u.input_tokens), col(|u| u.output_tokens), col(|u| u.total_tokens));
            let ids: Vec<&str> = usage.iter().map(|u| u.0.as_str()).collect();
            let agents: Vec<&str> = usage.iter().map(|u| u.1.as_str()).collect();
            let gens: Vec<i64> = usage.iter().map(|u| *u.2 as i64).collect();
            let at: Vec<i64> = usage.iter().map(|u| *u.3 as i64).collect();
            let models: Vec<Option<Cow<'_, str>>> =
                usage.iter().map(|u| u.4.model.as_deref().map(stored_text)).collect();
            let cost: Vec<Option<f64>> = usage.iter().map(|u| u.4.cost_usd).collect();
            tx.execute(
                "INSERT INTO usage (task_id, agent_id, generation, at, model, input_tokens, output_tokens, total_tokens, cost_usd)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::int8[],
                                      $8::int8[], $9::float8[])",
                &[&ids, &agents, &gens, &at, &models, &input, &output, &total, &cost],
            )?;
        }
        // Tokens are rare and order matters (revoke, then create): one by one, in order.
        for m in batch {
            match m {
                Mutation::PutToken(t) => {
                    tx.execute(
                        "INSERT INTO tokens (hash, agent_id, created_at) VALUES ($1, $2, $3)
                         ON CONFLICT (hash) DO UPDATE SET agent_id = excluded.agent_id, created_at = excluded.created_at",
                        &[&t.hash, &t.agent_id, &(t.created_at as i64)],
                    )?;
                }
                Mutation::DeleteTokens { agent_id } => {
                    tx.execute("DELETE FROM tokens WHERE agent_id = $1", &[agent_id])?;
                }
                // Patches come one per finished attempt: no batch is worth building.
                Mutation::PutPatch { task_id, patch: p } => {
                    tx.execute(
                        "INSERT INTO patches (task_id, generation, at, cut, patch) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (task_id) DO UPDATE SET generation = excluded.generation, at = excluded.at,
                           cut = excluded.cut, patch = excluded.patch",
                        &[task_id, &(p.generation as i64), &(p.at as i64), &p.cut, &stored_text(&p.patch).as_ref()],
                    )?;
                }
                _ => {}
            }
        }
        let checkpoints = last_by_key(batch.iter().filter_map(|m| match m {
            Mutation::PutCheckpoint { agent_id, body, at } => Some((agent_id.as_str(), (agent_id, body, at))),
            _ => None,
        }));
        for (agent_id, body, at) in checkpoints {
            tx.execute(
                "INSERT INTO checkpoints (agent_id, body, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (agent_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                &[agent_id, &body.to_string(), &(*at as i64)],
            )?;
        }
        let agents = last_by_key(batch.iter().filter_map(|m| match m {
            Mutation::PutAgent(a) => Some((a.agent_id.as_str(), a)),
            _ => None,
        }));
        if !agents.is_empty() {
            let ids: Vec<&str> = agents.iter().map(|a| a.agent_id.as_str()).collect();
            let bodies: Vec<String> = agents.iter().map(json).collect();
            tx.execute(
                "INSERT INTO agents (agent_id, body) SELECT * FROM UNNEST($1::text[], $2::text[])
                 ON CONFLICT (agent_id) DO UPDATE SET body = excluded.body",
                &[&ids, &bodies],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The columns every task read selects, in [`PgReader::decode`]'s order.
const TASK_COLUMNS: &str = "t.task_id, t.head, t.payload, t.outcome,
    (SELECT p.body FROM progress p WHERE p.task_id = t.task_id AND p.generation = t.generation
     ORDER BY p.id DESC LIMIT 1),
    (SELECT CASE WHEN COUNT(*) = 0 THEN NULL ELSE json_build_object(
        'input_tokens', SUM(u.input_tokens), 'output_tokens', SUM(u.output_tokens),
        'total_tokens', SUM(u.total_tokens), 'cost_usd', SUM(u.cost_usd))::text END
     FROM usage u WHERE u.task_id = t.task_id)";

/// Connections for the API's reads, used from blocking threads; any hub may read.
pub struct PgReader {
    conns: Vec<Mutex<Client>>,
    next: AtomicUsize,
    db: Database,
    timeout: Duration,
}

impl PgReader {
    pub fn open(db: &Database, connections: usize, timeout: Duration) -> Result<PgReader, StoreError> {
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            conns.push(Mutex::new(connect(db, timeout)?));
        }
        Ok(PgReader { conns, next: AtomicUsize::new(0), db: db.clone(), timeout })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut conn = self.conns[i].lock().unwrap_or_else(|e| e.into_inner());
        if conn.is_closed() {
            *conn = connect(&self.db, self.timeout)?;
        }
        f(&mut conn)
    }

    fn decode(row: &postgres::Row) -> Result<StoredTask, StoreError> {
        let id: String = row.get(0);
        let (head, payload): (String, String) = (row.get(1), row.get(2));
        let (outcome, progress, usage): (Option<String>, Option<String>, Option<String>) =
            (row.get(3), row.get(4), row.get(5));
        Ok(StoredTask {
            head: decode(|| format!("task {id}"), &head)?,
            payload: decode(|| format!("payload of {id}"), &payload)?,
            outcome: outcome.map(|o| decode(|| format!("outcome of {id}"), &o)).transpose()?,
            progress: progress.map(|p| decode(|| format!("progress of {id}"), &p)).transpose()?,
            usage: usage.map(|u| decode(|| format!("usage of {id}"), &u)).transpose()?,
        })
    }
}

impl Drop for PgReader {
    /// The blocking client closes its session with a `block_on` of its own, which panics on a
    /// thread that drives the async runtime, where the last handle on a reader may be dropped
    /// (an HTTP handler when the hub steps down): the sessions are closed on a thread of their own.
    fn drop(&mut self) {
        let conns = std::mem::take(&mut self.conns);
        if !conns.is_empty() {
            let _ = std::thread::Builder::new().name("pg-reader-close".into()).spawn(move || drop(conns));
        }
    }
}

impl Reader for PgReader {
    fn list_tasks(&self, q: TaskQuery) -> Result<(Vec<StoredTask>, bool), StoreError> {
        self.with(|c| {
            let limit = q.limit as i64 + 1;
            let before = q.before_seq.unwrap_or(i64::MAX);
            let rows = match q.status {
                Some(s) => c.query(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.status = $1 AND t.seq < $2 ORDER BY t.seq DESC LIMIT $3"),
                    &[&s.as_str(), &before, &limit],
                )?,
                None => c.query(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.seq < $1 ORDER BY t.seq DESC LIMIT $2"),
                    &[&before, &limit],
                )?,
            };
            let more = rows.len() > q.limit;
            let tasks = rows.iter().take(q.limit).map(Self::decode).collect::<Result<Vec<_>, _>>()?;
            Ok((tasks, more))
        })
    }

    fn task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        self.with(|c| {
            let row = c.query_opt(&format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.task_id = $1"), &[&task_id])?;
            row.as_ref().map(Self::decode).transpose()
        })
    }

    fn transitions(&self, task_id: &str) -> Result<Vec<Transition>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT at, from_status, to_status, reason, agent_id, generation FROM (
                   SELECT * FROM transitions WHERE task_id = $1 ORDER BY id DESC LIMIT $2
                 ) newest ORDER BY id",
                &[&task_id, &super::HISTORY_SHOWN],
            )?;
            rows.iter()
                .map(|r| {
                    let from: Option<String> = r.get(1);
                    Ok(Transition {
                        at: r.get::<_, i64>(0) as u64,
                        from: from.as_deref().map(|f| parse_status(f, "a transition")).transpose()?,
                        to: parse_status(&r.get::<_, String>(2), "a transition")?,
                        reason: r.get(3),
                        agent_id: r.get(4),
                        generation: r.get::<_, i64>(5) as u64,
                    })
                })
                .collect()
        })
    }

    fn progress(&self, task_id: &str, generation: u64) -> Result<Vec<(u64, Value)>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT at, body FROM progress WHERE task_id = $1 AND generation = $2 ORDER BY id",
                &[&task_id, &(generation as i64)],
            )?;
            rows.iter()
                .map(|r| {
                    let body: String = r.get(1);
                    Ok((r.get::<_, i64>(0).max(0) as u64, decode(|| format!("progress of {task_id}"), &body)?))
                })
                .collect()
        })
    }

    fn checkpoint(&self, agent_id: &str) -> Result<Option<(Value, u64)>, StoreError> {
        self.with(|c| {
            let row = c.query_opt("SELECT body, updated_at FROM checkpoints WHERE agent_id = $1", &[&agent_id])?;
            row.map(|r| {
                let body: String = r.get(0);
                decode(|| format!("checkpoint of {agent_id}"), &body).map(|v| (v, r.get::<_, i64>(1) as u64))
            })
            .transpose()
        })
    }

    fn patch(&self, task_id: &str) -> Result<Option<StoredPatch>, StoreError> {
        self.with(|c| {
            let row = c.query_opt("SELECT generation, at, cut, patch FROM patches WHERE task_id = $1", &[&task_id])?;
            Ok(row.map(|r| StoredPatch {
                generation: r.get::<_, i64>(0).max(0) as u64,
                at: r.get::<_, i64>(1).max(0) as u64,
                cut: r.get(2),
                patch: r.get(3),
            }))
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
            UsageBy::Day => "to_char(to_timestamp(at / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        };
        // Rows in byte order, as SQLite gives them, whatever the database's collation.
        let sql = format!(
            "SELECT ({key}) COLLATE \"C\" AS k, COUNT(*)::int8, COALESCE(SUM(input_tokens), 0)::int8, COALESCE(SUM(output_tokens), 0)::int8,
                    COALESCE(SUM(COALESCE(total_tokens, COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0))), 0)::int8,
                    COALESCE(SUM(cost_usd), 0)::float8
             FROM usage WHERE at >= $1 AND at < $2 AND ($3::text IS NULL OR agent_id = $3)
             GROUP BY k ORDER BY k"
        );
        self.with(|c| {
            let rows = c.query(&sql, &[&(since_ms as i64), &(until_ms as i64), &agent])?;
            Ok(rows
                .iter()
                .map(|r| UsageRow {
                    key: r.get(0),
                    reports: r.get::<_, i64>(1).max(0) as u64,
                    input_tokens: r.get::<_, i64>(2).max(0) as u64,
                    output_tokens: r.get::<_, i64>(3).max(0) as u64,
                    total_tokens: r.get::<_, i64>(4).max(0) as u64,
                    cost_usd: r.get(5),
                })
                .collect())
        })
    }
}
