//! What the pages show, read the way the JSON API reads it: agents and counts from the core,
//! tasks from the store's reader on a blocking thread (never the core's). An agent token sees
//! only the tasks it submitted or holds; listings for it (and per-lane listings) filter while
//! they page, reading at most [`SCAN_BUDGET`] rows per request and offering the rest as a next page.

use super::Viewer;
use crate::core::api::CoreRequest;
use crate::http::AppState;
use crate::model::StoredTask;
use crate::paging;
use crate::store::{Reader, TaskQuery};
use proto::api::{AgentView, ApiError, ErrorCode, Priority, Stats, TaskDetail, TaskStatus, TaskView};
use serde_json::Value;

/// Rows a filtered listing reads at most per request.
pub const SCAN_BUDGET: usize = 5_000;
/// Rows the store returns per read.
const CHUNK: usize = proto::api::MAX_PAGE as usize;

/// Runs a blocking read on the store's reader, off the async workers and off the core.
pub async fn read<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&dyn Reader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let (_, reader) = super::serving(s)?;
    crate::http::read_with(reader, f).await
}

pub async fn call<R: CoreRequest>(s: &AppState, v: &Viewer, req: R) -> Result<R::Answer, ApiError> {
    super::ask(s, &v.token, req).await
}

/// Whether the viewer may see this task: the admin any, an agent token those it submitted or holds.
pub fn visible(agent: Option<&str>, t: &StoredTask) -> bool {
    match agent {
        None => true,
        Some(me) => t.head.submitted_by == me || t.head.assigned_to.as_deref() == Some(me),
    }
}

/// One page of a task listing.
#[derive(Debug, Default)]
pub struct Page {
    pub tasks: Vec<TaskView>,
    /// Cursor of the next page, when rows may follow.
    pub next: Option<String>,
    /// The page stopped at the scan budget before it was full.
    pub cut_short: bool,
}

/// What a listing asks the store for.
#[derive(Debug, Clone)]
pub struct Listing {
    pub status: Option<TaskStatus>,
    /// Only this lane, when set.
    pub lane: Option<Priority>,
    /// Only what this agent submitted or holds, when set.
    pub agent: Option<String>,
    /// Below this task (the cursor).
    pub before: Option<i64>,
    pub limit: usize,
    /// Rows read at most when filtering.
    pub budget: usize,
}

/// One page of a listing, newest first; a filtered listing reads the store in chunks until the
/// page is full, the rows run out, or `budget` rows were read (then the page is cut short and its
/// cursor continues where the reading stopped).
pub fn scan(r: &dyn Reader, q: &Listing) -> Result<Page, crate::store::StoreError> {
    let filtered = q.agent.is_some() || q.lane.is_some();
    let keep = |t: &StoredTask| visible(q.agent.as_deref(), t) && q.lane.is_none_or(|l| t.head.priority == l);
    let mut page = Page::default();
    let (mut before, mut scanned) = (q.before, 0usize);
    loop {
        let chunk = if filtered { CHUNK.min(q.budget - scanned) } else { q.limit - page.tasks.len() };
        let (rows, more) = r.list_tasks(TaskQuery { status: q.status, before_seq: before, limit: chunk.max(1) })?;
        let n = rows.len();
        let mut last = None;
        for (i, t) in rows.into_iter().enumerate() {
            scanned += 1;
            let seq = t.head.seq;
            last = Some(seq);
            if keep(&t) {
                page.tasks.push(t.view());
                if page.tasks.len() == q.limit {
                    let rest = i + 1 < n || more;
                    page.next = rest.then(|| paging::encode(&seq));
                    return Ok(page);
                }
            }
        }
        before = last.or(before);
        if !more {
            return Ok(page);
        }
        if scanned >= q.budget {
            page.next = before.map(|b| paging::encode(&b));
            page.cut_short = true;
            return Ok(page);
        }
    }
}

/// Tasks with `status` (any when `None`), newest first, below `cursor`, that the viewer may see
/// and that are in `lane` (any when `None`).
pub async fn tasks(
    s: &AppState,
    v: &Viewer,
    status: Option<TaskStatus>,
    lane: Option<Priority>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, ApiError> {
    let q = Listing {
        status,
        lane,
        agent: v.agent().map(str::to_string),
        before: paging::decode(cursor)?,
        limit,
        budget: SCAN_BUDGET,
    };
    read(s, move |r| scan(r, &q)).await
}

/// The queue, lane by lane: up to `per_lane` queued tasks of each lane the viewer may see.
#[derive(Debug, Default)]
pub struct Lanes {
    /// Per lane (urgent first): its tasks, and whether it has more than shown.
    pub lanes: Vec<(Priority, Vec<TaskView>, bool)>,
    /// The scan stopped at its budget: lanes may hold more than they show.
    pub cut_short: bool,
}

pub async fn lanes(s: &AppState, v: &Viewer, per_lane: usize) -> Result<Lanes, ApiError> {
    let agent = v.agent().map(str::to_string);
    read(s, move |r| {
        let mut lanes: Vec<(Priority, Vec<TaskView>, bool)> =
            Priority::ALL.iter().map(|p| (*p, Vec::new(), false)).collect();
        let (mut before, mut scanned) = (None, 0usize);
        loop {
            let chunk = CHUNK.min(SCAN_BUDGET - scanned);
            let q = TaskQuery { status: Some(TaskStatus::Queued), before_seq: before, limit: chunk.max(1) };
            let (rows, more) = r.list_tasks(q)?;
            for t in rows {
                scanned += 1;
                before = Some(t.head.seq);
                if !visible(agent.as_deref(), &t) {
                    continue;
                }
                let lane = &mut lanes[Priority::ALL.iter().position(|p| *p == t.head.priority).unwrap_or(2)];
                if lane.1.len() < per_lane {
                    lane.1.push(t.view());
                } else {
                    lane.2 = true;
                }
            }
            if !more || lanes.iter().all(|l| l.2) {
                return Ok(Lanes { lanes, cut_short: false });
            }
            if scanned >= SCAN_BUDGET {
                return Ok(Lanes { lanes, cut_short: true });
            }
        }
    })
    .await
}

/// The fleet page's data.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Counts for the admin (an agent token sees only itself).
    pub stats: Option<Stats>,
    pub agents: Vec<AgentView>,
    pub next: Option<String>,
}

pub async fn fleet(s: &AppState, v: &Viewer, cursor: Option<String>, limit: u32) -> Result<Fleet, ApiError> {
    match v.agent() {
        None => {
            let stats = call(s, v, proto::api::GetStats).await?;
            let list = call(s, v, proto::api::ListAgents { limit: Some(limit), cursor }).await?;
            Ok(Fleet { stats: Some(stats), agents: list.agents, next: list.next_cursor })
        }
        Some(me) => match call(s, v, proto::api::GetAgent { agent_id: me.to_string() }).await {
            Ok(a) => Ok(Fleet { stats: None, agents: vec![a], next: None }),
            Err(e) if e.error == ErrorCode::UnknownAgent => Ok(Fleet::default()),
            Err(e) => Err(e),
        },
    }
}

/// A task with its history and the kept progress lines of its current attempt.
#[derive(Debug)]
pub struct TaskPage {
    pub detail: TaskDetail,
    pub progress: Vec<(u64, Value)>,
    /// The latest change's patch, when the task shows a change.
    pub patch: Option<crate::store::StoredPatch>,
}

pub async fn task(s: &AppState, v: &Viewer, task_id: &str) -> Result<TaskPage, ApiError> {
    let id = task_id.to_string();
    let agent = v.agent().map(str::to_string);
    let found = read(s, move |r| {
        let Some(task) = r.task(&id)? else { return Ok(None) };
        if !visible(agent.as_deref(), &task) {
            return Ok(Some(Err(task.head.submitted_by)));
        }
        let history = r.transitions(&id)?;
        let progress = r.progress(&id, task.head.generation)?;
        let patch = match task.head.change {
            Some(_) => r.patch(&id)?,
            None => None,
        };
        let children = crate::store::read_children(r, &task.head.children)?;
        Ok(Some(Ok(TaskPage { detail: TaskDetail { task: task.view(), history, children }, progress, patch })))
    })
    .await?;
    match found {
        Some(Ok(p)) => Ok(p),
        Some(Err(_)) => Err(ApiError::new(ErrorCode::Forbidden).msg(format!(
            "task {task_id} is neither submitted nor held by agent {}: an agent's dashboard shows only its own tasks",
            v.agent().unwrap_or_default()
        ))),
        None => Err(ApiError::new(ErrorCode::NotFound).msg(format!("no task {task_id}"))),
    }
}

/// One agent, for the restart confirmation.
pub async fn agent(s: &AppState, v: &Viewer, agent_id: &str) -> Result<AgentView, ApiError> {
    call(s, v, proto::api::GetAgent { agent_id: agent_id.to_string() }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Mutation, SqliteStore, Store};

    fn insert(id: &str, seq: i64, priority: Priority, submitted_by: &str, holder: Option<&str>) -> Mutation {
        let head = crate::model::TaskHead {
            priority,
            assigned_to: holder.map(str::to_string),
            submitted_by: submitted_by.into(),
            ..crate::model::TaskHead::for_test(id, seq, TaskStatus::Queued)
        };
        let payload =
            crate::model::Payload { description: id.into(), metadata: Default::default(), extra: Default::default() };
        Mutation::InsertTask { head: Box::new(head), payload: Box::new(payload) }
    }

    fn ids(p: &Page) -> Vec<&str> {
        p.tasks.iter().map(|t| t.task_id.as_str()).collect()
    }

    #[test]
    fn filtered_listings_page_by_cursor_and_stop_at_their_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let mut batch = Vec::new();
        for i in 1..=30 {
            let (by, holder, lane) = match i % 3 {
                0 => ("a1", None, Priority::Urgent),
                1 => ("admin", Some("a1"), Priority::Normal),
                _ => ("admin", Some("a2"), Priority::Normal),
            };
            batch.push(insert(&format!("t{i:02}"), i, lane, by, holder));
        }
        store.commit(&batch).unwrap();
        let r = store.reader(1).unwrap();
        let q = |agent: Option<&str>, lane, before, limit, budget| Listing {
            status: None,
            lane,
            agent: agent.map(str::to_string),
            before,
            limit,
            budget,
        };
        // The admin: plain pages.
        let p = scan(&r, &q(None, None, None, 4, 10)).unwrap();
        assert_eq!((ids(&p), p.cut_short), (vec!["t30", "t29", "t28", "t27"], false));
        let next: Option<i64> = paging::decode(p.next.as_deref()).unwrap();
        assert_eq!(ids(&scan(&r, &q(None, None, next, 2, 10)).unwrap()), vec!["t26", "t25"]);
        // An agent sees what it submitted or holds, page after page, nothing twice or lost.
        let (mut seen, mut before) = (Vec::new(), None);
        loop {
            let p = scan(&r, &q(Some("a1"), None, before, 3, 1000)).unwrap();
            seen.extend(ids(&p).into_iter().map(str::to_string));
            match p.next {
                Some(c) => before = paging::decode(Some(&c)).unwrap(),
                None => break,
            }
        }
        let want: Vec<String> = (1..=30).rev().filter(|i| i % 3 != 2).map(|i| format!("t{i:02}")).collect();
        assert_eq!(seen, want);
        // A lane; and a budget that runs out before the page is full says so and goes on from there.
        let p = scan(&r, &q(None, Some(Priority::Urgent), None, 100, 1000)).unwrap();
        assert_eq!((p.tasks.len(), p.next), (10, None));
        let p = scan(&r, &q(None, Some(Priority::Urgent), None, 100, 5)).unwrap();
        assert_eq!((ids(&p), p.cut_short), (vec!["t30", "t27"], true));
        let next: Option<i64> = paging::decode(p.next.as_deref()).unwrap();
        assert_eq!(next, Some(26));
    }
}
