//! Store conformance: the same batches committed to `SqliteStore` and `PgStore` read back the
//! same through every method of `Store` and `Reader`, and the same as [`model::Model`], the
//! contract written as plain data. PostgreSQL is a real server (`testkit::Postgres`).

#[path = "store_conformance/model.rs"]
mod model;

use hub::model::{AgentRecord, Outcome, Payload, Priority, StoredTask, TaskHead, TokenRecord, Transition};
use hub::store::{
    Database, Mutation, PgReader, PgStore, Reader, SqliteStore, Store, StoreError, TaskQuery, DAY_MS, HISTORY_SHOWN,
    PROGRESS_KEPT,
};
use model::Model;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use proto::api::{TaskStatus, UsageBy, UsageRow};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::Postgres;

const TIMEOUT: Duration = Duration::from_secs(10);
/// A UTC midnight (2024-10-04): every instant in these tests is a few days after it.
const DAY0: u64 = 20_000 * DAY_MS;

// ---- backends --------------------------------------------------------------------------------

/// Where a backend's rows are, for the few checks the traits cannot make (row counts).
enum Raw {
    Sqlite(PathBuf),
    Pg(String),
}

struct Backend {
    name: &'static str,
    store: Box<dyn Store>,
    reader: Box<dyn Reader>,
    raw: Raw,
}

impl Backend {
    fn sqlite(dir: &Path) -> Backend {
        let path = dir.join("hub.db");
        let store = SqliteStore::open(&path).unwrap();
        let reader = Box::new(store.reader(2).unwrap());
        Backend { name: "sqlite", store: Box::new(store), reader, raw: Raw::Sqlite(path) }
    }

    fn pg(url: &str) -> Backend {
        let store = Box::new(PgStore::open(&db(url), 0, TIMEOUT).unwrap());
        let reader = Box::new(PgReader::open(&db(url), 2, TIMEOUT).unwrap());
        Backend { name: "postgres", store, reader, raw: Raw::Pg(url.to_string()) }
    }

    /// Runs one statement outside the store; returns its first column of the first row.
    fn sql(&self, statement: &str) -> i64 {
        match &self.raw {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(TIMEOUT).unwrap();
                conn.query_row(statement, [], |r| r.get(0)).unwrap()
            }
            Raw::Pg(url) => pg_client(url).query_one(statement, &[]).unwrap().get(0),
        }
    }

    fn rows(&self, table: &str) -> i64 {
        self.sql(&format!("SELECT COUNT(*) FROM {table}"))
    }

    /// Every table emptied (the schema and, in PostgreSQL, the leader row kept), so one database
    /// serves many proptest cases.
    fn clear(&self) {
        match &self.raw {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(TIMEOUT).unwrap();
                let tables: Vec<String> = {
                    let mut stmt = conn
                        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
                        .unwrap();
                    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
                    rows.collect::<Result<_, _>>().unwrap()
                };
                let mut sql: String = tables.iter().map(|t| format!("DELETE FROM {t};")).collect();
                sql.push_str("DELETE FROM sqlite_sequence;");
                conn.execute_batch(&sql).unwrap();
            }
            Raw::Pg(url) => {
                let mut c = pg_client(url);
                let tables: Vec<String> = c
                    .query(
                        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'
                         AND tablename NOT IN ('agentcom_schema', 'leader')",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                // DELETE, not TRUNCATE: a few rows go faster than new files for every table.
                c.batch_execute(&tables.iter().map(|t| format!("DELETE FROM {t};")).collect::<String>()).unwrap();
            }
        }
    }

    /// Everything the traits can tell about the stored data, in a comparable form.
    fn state(&mut self, probe: &Probe) -> State {
        let snap = self.store.load(probe.day_start).unwrap();
        let mut agents = snap.agents;
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let ids: Vec<&str> = probe.task_ids.iter().map(String::as_str).collect();
        let r = &self.reader;
        State {
            snapshot: Snap {
                open: snap.open,
                max_seq: snap.max_seq,
                counts: snap.counts.into_iter().collect(),
                tokens: canonical_tokens(snap.tokens),
                agents,
                spend_today: snap.spend_today.into_iter().collect(),
            },
            heads: ids.iter().map(|id| self.store.head(id).unwrap()).collect(),
            payloads: self.store.payloads(&ids).unwrap().into_iter().collect(),
            tasks: ids.iter().map(|id| r.task(id).unwrap()).collect(),
            transitions: ids.iter().map(|id| r.transitions(id).unwrap()).collect(),
            pages: statuses().map(|s| (s, pages(r.as_ref(), s, probe.page))).collect(),
            checkpoints: probe.agents.iter().map(|a| r.checkpoint(a).unwrap()).collect(),
            usage: probe
                .usage_queries()
                .map(|(by, since, until, agent)| r.usage(by, since, until, agent).unwrap())
                .collect(),
        }
    }
}

/// The store's view of a test database: as a hub sees `database_url`.
fn db(url: &str) -> Database {
    Database::new(url, None).unwrap()
}

fn pg_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// A temp dir on tmpfs when there is one: SQLite fsyncs every commit, and a thousand proptest
/// cases need not wait on a disk for that.
fn fast_tempdir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

/// Every page of a listing, following the cursor as the API does.
fn pages(r: &dyn Reader, status: Option<TaskStatus>, limit: usize) -> Vec<Page> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let (tasks, more) = r.list_tasks(TaskQuery { status, before_seq: before, limit }).unwrap();
        before = tasks.last().map(|t| t.head.seq);
        out.push((tasks.into_iter().map(|t| t.head.task_id).collect(), more));
        assert!(out.len() < 1000, "the listing never ends");
        if !more {
            return out;
        }
    }
}

// ---- what is compared ------------------------------------------------------------------------

/// What to ask every backend.
pub struct Probe {
    task_ids: Vec<String>,
    agents: Vec<String>,
    /// The start of "today" for `load`.
    day_start: u64,
    page: usize,
}

impl Probe {
    fn new(task_ids: &[&str], agents: &[&str]) -> Probe {
        let mut task_ids: Vec<String> = task_ids.iter().map(|s| s.to_string()).collect();
        task_ids.push("never-inserted".into());
        Probe { task_ids, agents: agents.iter().map(|s| s.to_string()).collect(), day_start: DAY0 + DAY_MS, page: 2 }
    }

    /// Every grouping, over a few windows, for everyone and for each agent.
    fn usage_queries(&self) -> impl Iterator<Item = (UsageBy, u64, u64, Option<&str>)> {
        let windows = [(0, DAY0 + 10 * DAY_MS), (DAY0 + DAY_MS, DAY0 + 2 * DAY_MS)];
        let agents: Vec<Option<&str>> =
            std::iter::once(None).chain(self.agents.iter().map(|a| Some(a.as_str()))).collect();
        [UsageBy::Agent, UsageBy::Model, UsageBy::Day].into_iter().flat_map(move |by| {
            let agents = agents.clone();
            windows
                .into_iter()
                .flat_map(move |(since, until)| agents.clone().into_iter().map(move |a| (by, since, until, a)))
        })
    }
}

/// `load()`, with the order of its sets (tokens, agents: the core keys them) made canonical.
#[derive(Debug, PartialEq)]
pub struct Snap {
    open: Vec<TaskHead>,
    max_seq: i64,
    counts: BTreeMap<TaskStatus, u64>,
    tokens: Vec<TokenRecord>,
    agents: Vec<AgentRecord>,
    spend_today: BTreeMap<String, (f64, u64)>,
}

/// One page of a listing: its task ids, and whether another follows.
pub type Page = (Vec<String>, bool);

#[derive(Debug, PartialEq)]
pub struct State {
    snapshot: Snap,
    heads: Vec<Option<TaskHead>>,
    payloads: BTreeMap<String, Payload>,
    tasks: Vec<Option<StoredTask>>,
    transitions: Vec<Vec<Transition>>,
    pages: Vec<(Option<TaskStatus>, Vec<Page>)>,
    checkpoints: Vec<Option<(Value, u64)>>,
    usage: Vec<Vec<UsageRow>>,
}

pub fn canonical_tokens(mut tokens: Vec<TokenRecord>) -> Vec<TokenRecord> {
    tokens.sort_by(|a, b| (&a.agent_id, a.created_at, &a.hash).cmp(&(&b.agent_id, b.created_at, &b.hash)));
    tokens
}

/// No status filter, then each status.
pub fn statuses() -> impl Iterator<Item = Option<TaskStatus>> {
    std::iter::once(None).chain(TaskStatus::ALL.into_iter().map(Some))
}

/// The UTC day of an instant as `YYYY-MM-DD` (the civil-from-days algorithm).
pub fn day(at_ms: u64) -> String {
    let z = (at_ms / DAY_MS) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

// ---- building batches ------------------------------------------------------------------------

fn head(id: &str, seq: i64, status: TaskStatus) -> TaskHead {
    TaskHead {
        task_id: id.into(),
        seq,
        priority: Priority::Normal,
        status,
        generation: 0,
        needed_capabilities: vec!["rust".into()],
        assign_to: None,
        max_retries: 3,
        assigned_to: None,
        assigned_at: None,
        attempts: 0,
        failures: 0,
        retry_at: None,
        last_error: None,
        submitted_by: "admin".into(),
        created_at: DAY0 + seq as u64,
        updated_at: DAY0 + seq as u64,
        completed_at: None,
        needs_input: None,
        answer: None,
    }
}

fn insert(id: &str, seq: i64, status: TaskStatus) -> Mutation {
    let mut metadata = Map::new();
    metadata.insert("n".into(), json!(seq));
    metadata.insert("big".into(), json!(u64::MAX));
    let payload = Payload { description: format!("do {id} ✓"), metadata, extra: Map::new() };
    Mutation::InsertTask { head: Box::new(head(id, seq, status)), payload: Box::new(payload) }
}

fn put_head(h: &TaskHead) -> Mutation {
    Mutation::PutHead(Box::new(h.clone()))
}

fn transition(id: &str, from: Option<TaskStatus>, to: TaskStatus, reason: &str, generation: u64) -> Mutation {
    let transition = Transition { at: DAY0 + 1, from, to, reason: reason.into(), agent_id: None, generation };
    Mutation::AddTransition { task_id: id.into(), transition }
}

fn progress(id: &str, generation: u64, step: u64) -> Mutation {
    Mutation::AddProgress { task_id: id.into(), generation, at: DAY0 + step, body: json!({ "step": step }) }
}

fn outcome(id: &str, result: Value) -> Mutation {
    let mut report = Map::new();
    report.insert("tokens_used".into(), json!(7));
    Mutation::SetOutcome { task_id: id.into(), outcome: Box::new(Outcome { result: Some(result), report }) }
}

#[allow(clippy::too_many_arguments)]
fn usage(
    task: &str,
    agent: &str,
    at: u64,
    model: Option<&str>,
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cost: Option<f64>,
) -> Mutation {
    Mutation::AddUsage {
        task_id: task.into(),
        agent_id: agent.into(),
        generation: 1,
        at,
        usage: proto::Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: total,
            cost_usd: cost,
            model: model.map(str::to_string),
        },
    }
}

fn token(hash: &str, agent: &str, at: u64) -> Mutation {
    Mutation::PutToken(TokenRecord { hash: hash.into(), agent_id: agent.into(), created_at: at })
}

fn revoke(agent: &str) -> Mutation {
    Mutation::DeleteTokens { agent_id: agent.into() }
}

fn agent(id: &str, last_seen: u64) -> Mutation {
    Mutation::PutAgent(AgentRecord {
        agent_id: id.into(),
        name: Some(format!("{id} ✓")),
        client_type: Some("sidecar".into()),
        capabilities: vec!["rust".into()],
        process_info: Some(proto::ProcessInfo { restart_count: Some(2), ..Default::default() }),
        connected_at: None,
        last_seen,
        restarting: false,
    })
}

fn checkpoint(agent: &str, body: Value, at: u64) -> Mutation {
    Mutation::PutCheckpoint { agent_id: agent.into(), body, at }
}

// ---- running a scenario on both --------------------------------------------------------------

/// SQLite, PostgreSQL and the model, fed the same batches.
struct Both {
    backends: Vec<Backend>,
    model: Model,
    _dir: tempfile::TempDir,
    // Last: its drop removes the database the backend above is connected to.
    _pg: Postgres,
}

impl Both {
    fn new() -> Both {
        let pg = Postgres::start().unwrap();
        let dir = fast_tempdir();
        let backends = vec![Backend::sqlite(dir.path()), Backend::pg(&pg.database().unwrap())];
        Both { backends, model: Model::default(), _dir: dir, _pg: pg }
    }

    fn commit(&mut self, batch: &[Mutation]) {
        for b in &mut self.backends {
            b.store.commit(batch).unwrap_or_else(|e| panic!("{}: the batch failed: {e}", b.name));
        }
        self.model.commit(batch);
    }

    /// Runs the same assertions against each backend.
    fn each(&mut self, check: impl Fn(&mut Backend)) {
        for b in &mut self.backends {
            check(b);
        }
    }

    /// Every backend reads back exactly what the model says.
    fn agree(&mut self, probe: &Probe) {
        let expected = self.model.state(probe);
        for b in &mut self.backends {
            let got = b.state(probe);
            assert_eq!(got, expected, "{} differs from the contract", b.name);
        }
    }
}

fn ids(tasks: &[StoredTask]) -> Vec<&str> {
    tasks.iter().map(|t| t.head.task_id.as_str()).collect()
}

// ---- scenarios -------------------------------------------------------------------------------

#[test]
fn one_batch_with_every_kind_of_mutation() {
    let mut both = Both::new();
    let mut h = head("a", 1, TaskStatus::Queued);
    let mut batch = vec![insert("a", 1, TaskStatus::Queued)];
    // Several changes to one task in one batch: the last head wins.
    for (status, generation) in [(TaskStatus::Assigned, 1), (TaskStatus::Working, 1), (TaskStatus::Completed, 1)] {
        h.status = status;
        h.generation = generation;
        h.updated_at += 1;
        batch.push(put_head(&h));
    }
    h.assigned_to = Some("agent-1".into());
    h.completed_at = Some(DAY0 + 9);
    batch.push(put_head(&h));
    batch.extend([
        outcome("a", json!({"status": "success"})),
        transition("a", None, TaskStatus::Queued, "submitted by admin", 0),
        transition("a", Some(TaskStatus::Queued), TaskStatus::Assigned, "assigned to agent-1", 1),
        transition("a", Some(TaskStatus::Assigned), TaskStatus::Working, "accepted", 1),
        transition("a", Some(TaskStatus::Working), TaskStatus::Completed, "completed", 1),
        progress("a", 1, 1),
        progress("a", 1, 2),
        usage("a", "agent-1", DAY0 + DAY_MS + 5, Some("gpt-5"), Some(10), Some(5), None, Some(0.25)),
        token("hash-1", "agent-1", DAY0),
        checkpoint("agent-1", json!({"objective": "ship it"}), DAY0 + 3),
        agent("agent-1", DAY0 + 4),
    ]);
    both.commit(&batch);
    let expected_head = h.clone();
    both.each(|b| {
        let t = b.reader.task("a").unwrap().expect("the task");
        assert_eq!(t.head, expected_head, "{}", b.name);
        assert_eq!(b.store.head("a").unwrap().as_ref(), Some(&expected_head), "{}", b.name);
        assert_eq!(t.outcome.unwrap().result, Some(json!({"status": "success"})), "{}", b.name);
        assert_eq!(t.progress, Some(json!({"step": 2})), "{}", b.name);
        let u = t.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens, u.cost_usd),
            (Some(10), Some(5), None, Some(0.25))
        );
        let reasons: Vec<String> = b.reader.transitions("a").unwrap().into_iter().map(|t| t.reason).collect();
        assert_eq!(reasons, ["submitted by admin", "assigned to agent-1", "accepted", "completed"], "{}", b.name);
        assert_eq!(b.reader.checkpoint("agent-1").unwrap(), Some((json!({"objective": "ship it"}), DAY0 + 3)));
        let snap = b.store.load(DAY0 + DAY_MS).unwrap();
        assert!(snap.open.is_empty(), "{}: a completed task is not open", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Completed), Some(&1), "{}", b.name);
        assert_eq!((snap.tokens.len(), snap.agents.len()), (1, 1), "{}", b.name);
        assert_eq!(snap.spend_today["agent-1"], (0.25, 15), "{}", b.name);
    });
    both.agree(&Probe::new(&["a"], &["agent-1"]));
}

#[test]
fn a_long_history_shows_its_newest_lines() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Working)]);
    let lines: Vec<Mutation> = (0..HISTORY_SHOWN + 5)
        .map(|i| transition("a", Some(TaskStatus::Working), TaskStatus::Working, &format!("line {i}"), 1))
        .collect();
    both.commit(&lines);
    both.each(|b| {
        let shown = b.reader.transitions("a").unwrap();
        assert_eq!(shown.len(), HISTORY_SHOWN as usize, "{}", b.name);
        assert_eq!(
            (shown[0].reason.as_str(), shown.last().unwrap().reason.as_str()),
            ("line 5", format!("line {}", HISTORY_SHOWN + 4).as_str()),
            "{}",
            b.name
        );
    });
    both.agree(&Probe::new(&["a"], &[]));
}

#[test]
fn progress_keeps_the_last_lines_and_shows_the_current_generation() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Working), insert("b", 2, TaskStatus::Working)]);
    // 150 lines for `a` over two batches; the oldest 50 go. Lines 0 and 49 carry generations of
    // their own, so whether they were kept shows through the reader.
    let line = |i: u64| {
        let generation = match i {
            0 => 5,
            49 => 6,
            50 => 7,
            _ => 0,
        };
        progress("a", generation, i)
    };
    both.commit(&(0..100).map(line).collect::<Vec<_>>());
    both.commit(&(100..150).map(line).chain([progress("b", 0, 1)]).collect::<Vec<_>>());
    let shown = |b: &mut Backend, generation: u64| {
        let mut h = head("a", 1, TaskStatus::Working);
        h.generation = generation;
        b.store.commit(&[put_head(&h)]).unwrap();
        b.reader.task("a").unwrap().unwrap().progress
    };
    both.each(|b| {
        assert_eq!(b.rows("progress"), PROGRESS_KEPT + 1, "{}: 100 of a's lines and b's one", b.name);
        assert_eq!(shown(b, 0), Some(json!({"step": 149})), "{}: the latest of the generation", b.name);
        assert_eq!(shown(b, 5), None, "{}: line 0 was dropped", b.name);
        assert_eq!(shown(b, 6), None, "{}: line 49 was dropped", b.name);
        assert_eq!(shown(b, 7), Some(json!({"step": 50})), "{}: line 50 was kept", b.name);
        assert_eq!(shown(b, 8), None, "{}: a new attempt starts without progress", b.name);
        assert_eq!(b.reader.task("b").unwrap().unwrap().progress, Some(json!({"step": 1})), "{}", b.name);
        // Every kept line of one attempt, oldest first, with its time (the task page's list).
        let lines = b.reader.progress("a", 0).unwrap();
        let steps: Vec<u64> = (51..150).filter(|i| *i != 0 && *i != 49).collect();
        let want: Vec<(u64, Value)> = steps.iter().map(|i| (DAY0 + i, json!({ "step": i }))).collect();
        assert_eq!(lines, want, "{}: generation 0's kept lines", b.name);
        assert_eq!(b.reader.progress("a", 7).unwrap(), vec![(DAY0 + 50, json!({"step": 50}))], "{}", b.name);
        assert_eq!(b.reader.progress("nope", 0).unwrap(), vec![], "{}", b.name);
    });
    let mut h = head("a", 1, TaskStatus::Working);
    h.generation = 8;
    both.model.commit(&[put_head(&h)]);
    both.agree(&Probe::new(&["a", "b"], &[]));
}

#[test]
fn usage_reports_by_agent_model_and_day_with_an_agent_filter() {
    let mut both = Both::new();
    let (d1, d2) = (DAY0 + DAY_MS + 10, DAY0 + 2 * DAY_MS + 10);
    both.commit(&[
        insert("t", 1, TaskStatus::Working),
        // Mixed case and non-ASCII: rows come in byte order, whatever the database's collation.
        usage("t", "a", DAY0 + 10, Some("gpt-5"), Some(100), Some(50), None, Some(1.5)),
        usage("t", "B", d1, Some("Claude"), Some(10), None, None, Some(0.25)),
        usage("t", "ärger", d1, None, None, None, Some(40), None),
        usage("t", "a", d2, Some("claude"), Some(1), Some(2), Some(99), Some(0.125)),
        usage("t", "a_1", d2, Some("unknown"), None, Some(3), None, None),
    ]);
    let row = |key: &str, reports, input, output, total, cost| UsageRow {
        key: key.into(),
        reports,
        input_tokens: input,
        output_tokens: output,
        total_tokens: total,
        cost_usd: cost,
    };
    let all = (0, DAY0 + 10 * DAY_MS);
    both.each(|b| {
        let by_agent = b.reader.usage(UsageBy::Agent, all.0, all.1, None).unwrap();
        let expected = vec![
            row("B", 1, 10, 0, 10, 0.25),
            row("a", 2, 101, 52, 249, 1.625),
            row("a_1", 1, 0, 3, 3, 0.0),
            row("ärger", 1, 0, 0, 40, 0.0),
        ];
        assert_eq!(by_agent, expected, "{}", b.name);
        let by_model: Vec<String> =
            b.reader.usage(UsageBy::Model, all.0, all.1, None).unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(by_model, ["Claude", "claude", "gpt-5", "unknown"], "{}: no model counts as unknown", b.name);
        let by_day = b.reader.usage(UsageBy::Day, all.0, all.1, Some("a")).unwrap();
        assert_eq!(
            by_day,
            vec![row("2024-10-04", 1, 100, 50, 150, 1.5), row("2024-10-06", 1, 1, 2, 99, 0.125)],
            "{}",
            b.name
        );
        let one_day = b.reader.usage(UsageBy::Agent, DAY0 + DAY_MS, DAY0 + 2 * DAY_MS, None).unwrap();
        assert_eq!(one_day.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["B", "ärger"], "{}", b.name);
        let spend = b.store.load(DAY0 + DAY_MS).unwrap().spend_today;
        assert_eq!(spend.get("a"), Some(&(0.125, 3)), "{}: only today's, input + output", b.name);
        assert_eq!(spend.get("ärger"), Some(&(0.0, 40)), "{}: the total when that is all", b.name);
        let t = b.reader.task("t").unwrap().unwrap().usage.unwrap();
        assert_eq!((t.input_tokens, t.output_tokens, t.total_tokens), (Some(111), Some(55), Some(139)), "{}", b.name);
        assert_eq!(t.cost_usd, Some(1.875), "{}", b.name);
    });
    both.agree(&Probe::new(&["t"], &["a", "B", "a_1", "ärger", "nobody"]));
}

#[test]
fn tokens_are_put_and_revoked_in_batch_order() {
    let mut both = Both::new();
    both.commit(&[token("h1", "a", 1), revoke("a"), token("h2", "a", 2), token("h3", "b", 3), token("h4", "b", 3)]);
    both.commit(&[revoke("b"), token("h4", "b", 4), token("h2", "c", 5)]);
    both.each(|b| {
        let tokens = canonical_tokens(b.store.load(0).unwrap().tokens);
        let seen: Vec<(&str, &str, u64)> =
            tokens.iter().map(|t| (t.hash.as_str(), t.agent_id.as_str(), t.created_at)).collect();
        assert_eq!(seen, [("h4", "b", 4), ("h2", "c", 5)], "{}: a put hash moves to its new agent", b.name);
    });
    both.agree(&Probe::new(&[], &["a", "b", "c"]));
}

#[test]
fn checkpoints_and_agents_keep_the_last_write() {
    let mut both = Both::new();
    both.commit(&[
        checkpoint("a", json!({"v": 1}), 1),
        checkpoint("a", json!({"v": 2, "nul": "x\u{0}y", "é": [1.5, null]}), 2),
        agent("a", 10),
        agent("b", 11),
        agent("a", 12),
    ]);
    both.commit(&[checkpoint("b", json!({}), 3)]);
    both.each(|b| {
        let (body, at) = b.reader.checkpoint("a").unwrap().unwrap();
        assert_eq!((body, at), (json!({"v": 2, "nul": "x\u{0}y", "é": [1.5, null]}), 2), "{}", b.name);
        assert_eq!(b.reader.checkpoint("nobody").unwrap(), None, "{}", b.name);
        let mut agents = b.store.load(0).unwrap().agents;
        agents.sort_by(|x, y| x.agent_id.cmp(&y.agent_id));
        let seen: Vec<(&str, u64)> = agents.iter().map(|a| (a.agent_id.as_str(), a.last_seen)).collect();
        assert_eq!(seen, [("a", 12), ("b", 11)], "{}", b.name);
    });
    both.agree(&Probe::new(&[], &["a", "b", "nobody"]));
}

#[test]
fn load_payloads_and_paged_listings() {
    let mut both = Both::new();
    let statuses = [
        TaskStatus::Queued,
        TaskStatus::Completed,
        TaskStatus::Queued,
        TaskStatus::Working,
        TaskStatus::DeadLetter,
        TaskStatus::Queued,
        TaskStatus::Cancelled,
        TaskStatus::WaitingRetry,
    ];
    // Sequence numbers with gaps, as after cancelled submissions.
    let batch: Vec<Mutation> =
        statuses.iter().enumerate().map(|(i, s)| insert(&format!("t{i}"), 3 * i as i64 + 2, *s)).collect();
    both.commit(&batch);
    both.each(|b| {
        let snap = b.store.load(0).unwrap();
        let open: Vec<&str> = snap.open.iter().map(|h| h.task_id.as_str()).collect();
        assert_eq!(open, ["t0", "t2", "t3", "t5", "t7"], "{}: open tasks in submission order", b.name);
        assert_eq!(snap.max_seq, 23, "{}", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Queued), Some(&3), "{}", b.name);
        assert_eq!(snap.counts.get(&TaskStatus::Assigned), None, "{}", b.name);
        let payloads = b.store.payloads(&["t1", "nope", "t6"]).unwrap();
        assert_eq!(payloads.len(), 2, "{}", b.name);
        assert_eq!(payloads["t6"].description, "do t6 ✓", "{}", b.name);
        assert_eq!(payloads["t6"].metadata["big"], json!(u64::MAX), "{}", b.name);
        let page = |status, before_seq, limit| b.reader.list_tasks(TaskQuery { status, before_seq, limit }).unwrap();
        let (first, more) = page(None, None, 3);
        assert_eq!((ids(&first), more), (vec!["t7", "t6", "t5"], true), "{}", b.name);
        let (next, more) = page(None, Some(first[2].head.seq), 3);
        assert_eq!((ids(&next), more), (vec!["t4", "t3", "t2"], true), "{}", b.name);
        let (last, more) = page(None, Some(next[2].head.seq), 3);
        assert_eq!((ids(&last), more), (vec!["t1", "t0"], false), "{}", b.name);
        let (queued, more) = page(Some(TaskStatus::Queued), None, 2);
        assert_eq!((ids(&queued), more), (vec!["t5", "t2"], true), "{}", b.name);
        let (queued, more) = page(Some(TaskStatus::Queued), Some(queued[1].head.seq), 2);
        assert_eq!((ids(&queued), more), (vec!["t0"], false), "{}", b.name);
        let (exact, more) = page(Some(TaskStatus::Working), None, 1);
        assert_eq!((ids(&exact), more), (vec!["t3"], false), "{}: a full last page has no next", b.name);
        assert_eq!(page(Some(TaskStatus::Assigned), None, 5), (vec![], false), "{}", b.name);
    });
    let names: Vec<String> = (0..statuses.len()).map(|i| format!("t{i}")).collect();
    both.agree(&Probe::new(&names.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
}

#[test]
fn hostile_text_is_kept_the_same_way() {
    let mut both = Both::new();
    // An agent's rejection reason and model name are its own words: a NUL (which PostgreSQL's
    // text cannot hold) must not fail the commit, and both stores keep the same thing.
    let reason = "rejected by a: \u{0}bad\u{1b}[31m ✓ \"'; DROP TABLE tasks; --";
    both.commit(&[
        insert("t", 1, TaskStatus::Queued),
        transition("t", Some(TaskStatus::Assigned), TaskStatus::Queued, reason, 1),
        usage("t", "a", DAY0, Some("m\u{0}odel"), Some(1), None, None, None),
        progress("t", 0, 1),
    ]);
    both.each(|b| {
        let kept = &b.reader.transitions("t").unwrap()[0].reason;
        assert_eq!(kept, &reason.replace('\0', "\u{FFFD}"), "{}", b.name);
        let models = b.reader.usage(UsageBy::Model, 0, DAY0 + DAY_MS, None).unwrap();
        assert_eq!(models[0].key, "m\u{FFFD}odel", "{}", b.name);
        assert_eq!(b.rows("tasks"), 1, "{}", b.name);
    });
    both.agree(&Probe::new(&["t"], &["a"]));
}

#[test]
fn a_failed_batch_writes_nothing() {
    let mut both = Both::new();
    both.commit(&[insert("a", 1, TaskStatus::Queued)]);
    // The second insert of `a` breaks the batch after the rest of it was written.
    let bad = [token("h", "x", 1), progress("a", 0, 1), agent("x", 1), insert("a", 2, TaskStatus::Queued)];
    both.each(|b| {
        assert!(b.store.commit(&bad).is_err(), "{}", b.name);
        for table in ["tokens", "progress", "agents"] {
            assert_eq!(b.rows(table), 0, "{}: {table}", b.name);
        }
        // And the store goes on.
        b.store.commit(&[token("h2", "y", 2)]).unwrap();
    });
    both.model.commit(&[token("h2", "y", 2)]);
    both.agree(&Probe::new(&["a"], &["x", "y"]));
}

// ---- PostgreSQL only -------------------------------------------------------------------------

#[test]
fn migrations_run_by_several_hubs_at_once_end_at_one_version() {
    let pg = Postgres::start().unwrap();
    let reference = pg.database().unwrap();
    PgStore::open(&db(&reference), 0, TIMEOUT).unwrap();
    let schema = |url: &str| -> (i64, i32, i32, Vec<String>) {
        let mut c = pg_client(url);
        let row = c.query_one("SELECT COUNT(*), MIN(version), MAX(version) FROM agentcom_schema", &[]).unwrap();
        let tables = c
            .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (row.get(0), row.get(1), row.get(2), tables)
    };
    let expected = schema(&reference);
    assert_eq!(expected.0, 1);
    for _ in 0..3 {
        let url = pg.database().unwrap();
        let start = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            let hubs: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        PgStore::open(&db(&url), 0, TIMEOUT).map(drop)
                    })
                })
                .collect();
            for h in hubs {
                h.join().unwrap().expect("every hub migrates or finds the schema migrated");
            }
        });
        assert_eq!(schema(&url), expected);
        let leaders: i64 = pg_client(&url).query_one("SELECT COUNT(*) FROM leader", &[]).unwrap().get(0);
        assert_eq!(leaders, 1);
    }
}

#[test]
fn a_deposed_writer_is_refused_and_writes_nothing() {
    let pg = Postgres::start().unwrap();
    let url = pg.database().unwrap();
    let mut old = PgStore::open(&db(&url), 7, TIMEOUT).unwrap();
    let set_term = |term: i64| {
        pg_client(&url).execute("UPDATE leader SET term = $1 WHERE id = 1", &[&term]).unwrap();
    };
    set_term(7);
    old.commit(&[insert("a", 1, TaskStatus::Queued)]).unwrap();
    // Another hub takes over.
    set_term(8);
    let mut h = head("a", 1, TaskStatus::Assigned);
    h.generation = 1;
    let batch = [
        insert("b", 2, TaskStatus::Queued),
        put_head(&h),
        transition("a", Some(TaskStatus::Queued), TaskStatus::Assigned, "assigned", 1),
        token("h", "x", 1),
        agent("x", 1),
        checkpoint("x", json!({}), 1),
        progress("a", 1, 1),
        usage("a", "x", 1, None, Some(1), None, None, None),
    ];
    match old.commit(&batch) {
        Err(StoreError::Deposed { term }) => assert_eq!(term, 7),
        other => panic!("expected Deposed, got {other:?}"),
    }
    let backend = Backend {
        name: "postgres",
        store: Box::new(old),
        reader: Box::new(PgReader::open(&db(&url), 1, TIMEOUT).unwrap()),
        raw: Raw::Pg(url.clone()),
    };
    assert_eq!(backend.reader.task("a").unwrap().unwrap().head.status, TaskStatus::Queued);
    for (table, rows) in [
        ("tasks", 1),
        ("transitions", 0),
        ("tokens", 0),
        ("agents", 0),
        ("checkpoints", 0),
        ("progress", 0),
        ("usage", 0),
    ] {
        assert_eq!(backend.rows(table), rows, "{table}");
    }
    assert_eq!(backend.sql("SELECT term FROM leader"), 8);
    // The new leader writes.
    let mut new = PgStore::open(&db(&url), 8, TIMEOUT).unwrap();
    new.commit(&batch).unwrap();
    assert_eq!(backend.reader.task("a").unwrap().unwrap().head.status, TaskStatus::Assigned);
}

// ---- random batches --------------------------------------------------------------------------

const AGENTS: [&str; 7] = ["a", "B", "a-1", "a_1", "Zed", "ärger", "a b"];
const MODELS: [&str; 5] = ["gpt-5", "Claude", "unknown", "m\u{0}x", "b"];
const REASONS: [&str; 5] = ["submitted by admin", "rejected by a: \u{0}", "ünïcode ✓", "", "line\nbreak"];

/// One step of a random history; indices pick from the pools and from the tasks so far.
#[derive(Debug, Clone)]
enum Op {
    Insert { status: usize, gap: i64 },
    Head { task: usize, status: usize, generation: u64, holder: Option<usize>, at: u64 },
    Outcome { task: usize, n: u64 },
    Transition { task: usize, to: usize, reason: usize, agent: Option<usize> },
    Progress { task: usize, generation: u64, lines: u64 },
    Usage { task: usize, agent: usize, at: u64, model: Option<usize>, tokens: [Option<u64>; 3], quarters: Option<u32> },
    Token { hash: usize, agent: usize, at: u64 },
    Revoke { agent: usize },
    Checkpoint { agent: usize, n: u64, at: u64 },
    Agent { agent: usize, seen: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let task = 0..16usize;
    let agent = 0..AGENTS.len();
    prop_oneof![
        3 => (0..7usize, 1..3i64).prop_map(|(status, gap)| Op::Insert { status, gap }),
        4 => (task.clone(), 0..7usize, 0..3u64, proptest::option::of(agent.clone()), 0..50u64)
            .prop_map(|(task, status, generation, holder, at)| Op::Head { task, status, generation, holder, at }),
        1 => (task.clone(), 0..4u64).prop_map(|(task, n)| Op::Outcome { task, n }),
        3 => (task.clone(), 0..7usize, 0..REASONS.len(), proptest::option::of(agent.clone()))
            .prop_map(|(task, to, reason, agent)| Op::Transition { task, to, reason, agent }),
        3 => (task.clone(), 0..3u64, prop_oneof![9 => 1..4u64, 1 => 95..125u64])
            .prop_map(|(task, generation, lines)| Op::Progress { task, generation, lines }),
        3 => (
            task.clone(),
            agent.clone(),
            0..4 * DAY_MS,
            proptest::option::of(0..MODELS.len()),
            [proptest::option::of(0..1000u64), proptest::option::of(0..1000u64), proptest::option::of(0..1000u64)],
            proptest::option::of(0..40u32),
        )
            .prop_map(|(task, agent, at, model, tokens, quarters)| Op::Usage { task, agent, at, model, tokens, quarters }),
        2 => (0..6usize, agent.clone(), 0..4u64).prop_map(|(hash, agent, at)| Op::Token { hash, agent, at }),
        1 => agent.clone().prop_map(|agent| Op::Revoke { agent }),
        1 => (agent.clone(), 0..3u64, 0..9u64).prop_map(|(agent, n, at)| Op::Checkpoint { agent, n, at }),
        1 => (agent, 0..9u64).prop_map(|(agent, seen)| Op::Agent { agent, seen }),
    ]
}

fn histories() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 1..10), 1..5)
}

/// Turns ops into the batches a core could send: a task is only touched after its insert
/// (or never inserted at all: `ghost`, whose changes touch nothing).
fn materialize(history: &[Vec<Op>]) -> (Vec<Vec<Mutation>>, Vec<String>) {
    let mut heads: Vec<TaskHead> = Vec::new();
    let mut seq = 0;
    let pick = |heads: &[TaskHead], i: usize| -> (String, i64) {
        match heads.get(i % (heads.len() + 1)) {
            Some(h) => (h.task_id.clone(), h.seq),
            None => ("ghost".to_string(), 0),
        }
    };
    let batches = history
        .iter()
        .map(|ops| {
            let mut batch = Vec::new();
            for op in ops {
                match *op {
                    Op::Insert { status, gap } => {
                        seq += gap;
                        let id = format!("t{}", heads.len());
                        batch.push(insert(&id, seq, TaskStatus::ALL[status]));
                        heads.push(head(&id, seq, TaskStatus::ALL[status]));
                    }
                    Op::Head { task, status, generation, holder, at } => {
                        let (id, seq) = pick(&heads, task);
                        let mut h = head(&id, seq, TaskStatus::ALL[status]);
                        h.generation = generation;
                        h.assigned_to = holder.map(|a| AGENTS[a].to_string());
                        h.updated_at = DAY0 + at;
                        h.last_error = Some(REASONS[task % REASONS.len()].to_string());
                        batch.push(put_head(&h));
                    }
                    Op::Outcome { task, n } => batch.push(outcome(&pick(&heads, task).0, json!({ "n": n }))),
                    Op::Transition { task, to, reason, agent } => {
                        let (id, _) = pick(&heads, task);
                        let Mutation::AddTransition { task_id, mut transition } =
                            transition(&id, None, TaskStatus::ALL[to], REASONS[reason], (task % 3) as u64)
                        else {
                            unreachable!()
                        };
                        transition.from = (to > 0).then(|| TaskStatus::ALL[to - 1]);
                        transition.agent_id = agent.map(|a| AGENTS[a].to_string());
                        batch.push(Mutation::AddTransition { task_id, transition });
                    }
                    Op::Progress { task, generation, lines } => {
                        let (id, _) = pick(&heads, task);
                        batch.extend((0..lines).map(|i| progress(&id, generation, i)));
                    }
                    Op::Usage { task, agent, at, model, tokens, quarters } => {
                        let (id, _) = pick(&heads, task);
                        // Costs in quarters of a dollar add up exactly in any order.
                        let cost = quarters.map(|q| f64::from(q) / 4.0);
                        let model = model.map(|m| MODELS[m]);
                        batch.push(usage(&id, AGENTS[agent], DAY0 + at, model, tokens[0], tokens[1], tokens[2], cost));
                    }
                    Op::Token { hash, agent, at } => batch.push(token(&format!("hash-{hash}"), AGENTS[agent], at)),
                    Op::Revoke { agent } => batch.push(revoke(AGENTS[agent])),
                    Op::Checkpoint { agent, n, at } => {
                        batch.push(checkpoint(AGENTS[agent], json!({ "n": n, "who": AGENTS[agent] }), at))
                    }
                    Op::Agent { agent: a, seen } => batch.push(agent(AGENTS[a], seen)),
                }
            }
            batch
        })
        .collect();
    let mut ids: Vec<String> = heads.into_iter().map(|h| h.task_id).collect();
    ids.push("ghost".into());
    (batches, ids)
}

/// Commits a random history to each backend (emptied first) and compares it with the model.
fn check_history(backends: &mut [Backend], history: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let (batches, ids) = materialize(history);
    let mut model = Model::default();
    for b in backends.iter_mut() {
        b.clear();
    }
    for batch in &batches {
        for b in backends.iter_mut() {
            let committed = b.store.commit(batch);
            prop_assert!(committed.is_ok(), "{}: {:?}", b.name, committed);
        }
        model.commit(batch);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut probe = Probe::new(&ids, &AGENTS);
    probe.agents.push("nobody".into());
    let expected = model.state(&probe);
    for b in backends.iter_mut() {
        let got = b.state(&probe);
        prop_assert_eq!(&got, &expected, "{} differs from the contract", b.name);
    }
    Ok(())
}

fn run_histories(cases: u32, backends: Vec<Backend>) {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let backends = RefCell::new(backends);
    let (ran, mutations) = (Cell::new(0u32), Cell::new(0usize));
    let result = TestRunner::new(config).run(&histories(), |h| {
        ran.set(ran.get() + 1);
        mutations.set(mutations.get() + h.iter().map(Vec::len).sum::<usize>());
        check_history(&mut backends.borrow_mut(), &h)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(ran.get() >= cases, "{} cases ran", ran.get());
    assert!(mutations.get() >= cases as usize, "{} ops in {} cases", mutations.get(), ran.get());
}

#[test]
fn random_histories_on_sqlite_match_the_contract() {
    let dir = fast_tempdir();
    run_histories(1000, vec![Backend::sqlite(dir.path())]);
}

#[test]
fn random_histories_on_postgres_and_sqlite_match_the_contract() {
    let pg = Postgres::start().unwrap();
    let dir = fast_tempdir();
    run_histories(100, vec![Backend::sqlite(dir.path()), Backend::pg(&pg.database().unwrap())]);
}
