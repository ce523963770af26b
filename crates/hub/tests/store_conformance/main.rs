//! Store conformance: the same batches committed to `SqliteStore` and `PgStore` read back the
//! same through every method of `Store` and `Reader`, and the same as [`model::Model`], the
//! contract written as plain data. PostgreSQL is a real server (`testkit::Postgres`).

mod model;
mod pg_only;
mod random;
mod scenarios;

use hub::model::{AgentRecord, Outcome, Payload, StoredTask, TaskHead, TokenRecord, Transition};
use hub::store::{
    Database, Mutation, PgReader, PgStore, Reader, SqliteStore, Store, StoreError, StoredPatch, TaskQuery, DAY_MS,
    HISTORY_SHOWN, PROGRESS_KEPT,
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
            patches: ids.iter().map(|id| r.patch(id).unwrap()).collect(),
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
    patches: Vec<Option<StoredPatch>>,
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

/// The UTC day of an instant as `YYYY-MM-DD`.
pub fn day(at_ms: u64) -> String {
    human::format_day(at_ms / DAY_MS)
}

// ---- building batches ------------------------------------------------------------------------

fn head(id: &str, seq: i64, status: TaskStatus) -> TaskHead {
    // Some heads carry a family (a parent, dependencies, children): stored in the head's JSON.
    let family = seq % 4 == 2;
    TaskHead {
        needed_capabilities: vec!["rust".into()],
        created_at: DAY0 + seq as u64,
        updated_at: DAY0 + seq as u64,
        parent_task_id: family.then(|| format!("parent-of-{id}")),
        depends_on: if family { vec![format!("dep-{id}-1"), format!("dep-{id}-2")] } else { vec![] },
        depth: u32::from(family),
        children: if family { vec![format!("child-of-{id}")] } else { vec![] },
        ..TaskHead::for_test(id, seq, status)
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
        account: Some("team-a".into()),
        limited_until: Some(last_seen + 60_000),
        limit_reason: Some("429 · resets 9pm".into()),
        limit_level: 2,
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
