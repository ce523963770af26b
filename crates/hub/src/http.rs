//! HTTP routes: the AgentCom v1 core subset plus `/metrics`, `GET /ws` for agents, and the
//! dashboard's pages (merged from [`crate::console`]).
//! Handlers parse and validate the typed requests of `proto::api`, ask the core (writes, and who
//! a token is) or the store's reader (reads, off the core thread), and map the answers to status
//! codes: this is the only place that knows them.

use crate::auth::Role;
use crate::authz;
use crate::config::{Limits, NetLimits, Timings};
use crate::core::api::{ApiRequest, ApiResult, Reply};
use crate::ha;
use crate::model::TaskStatus;
use crate::paging;
use crate::server::ConnTicket;
use crate::store::{Reader, TaskQuery};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use proto::api::{
    ApiError, Checkpoint, CreateToken, ErrorCode, Health, HealthStatus, HubRole, ListAgents, ListDeadLetter, ListTasks,
    ListTokens, RestartAgent, SubmitTask, TaskDetail, TaskList,
};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct AppState {
    /// Whether this hub serves (it leads) and from which core, or where the leader is.
    pub role: crate::ha::RoleRx,
    pub timings: Timings,
    pub limits: Limits,
    pub net: NetLimits,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub next_conn: Arc<AtomicU64>,
    /// The connection layer's counters, for `/metrics`.
    pub conns: Arc<crate::server::ConnLimits>,
    pub bus: Arc<crate::events::EventBus>,
    /// Readers of `GET /api/events` at once.
    pub event_readers: Arc<crate::feed::ReaderSlots>,
    /// How long a standby that knows no leader (an election under way) holds an agent's
    /// socket before telling it so: zero for a single hub.
    pub election_wait: std::time::Duration,
    /// The dashboard's sessions.
    pub console: Arc<crate::console::Console>,
}

/// Bodies of routes that take no real payload (tokens, restarts, cancel, retry).
const SMALL_BODY: usize = 64 * 1024;

impl AppState {
    /// The leader's core and reader, or the answer that sends the client to the leader.
    pub fn serving(&self) -> Result<crate::ha::Serving, NotServing> {
        match &*self.role.borrow() {
            ha::Role::Leader(s) => Ok(s.clone()),
            ha::Role::Standby { leader } => Err(NotServing(leader.as_ref().map(|l| l.url.clone()))),
        }
    }
}

/// This hub stopped leading between the gate and the handler: the client retries, at the leader
/// when one is known.
pub struct NotServing(Option<String>);

impl IntoResponse for NotServing {
    fn into_response(self) -> Response {
        let mut e = ApiError::new(ErrorCode::NotLeader).msg("this hub is no longer the leader; retry");
        e.leader = self.0;
        error(e)
    }
}

impl From<NotServing> for Response {
    fn from(n: NotServing) -> Response {
        n.into_response()
    }
}

/// A standby's answer: 307 to the leader (with the same path and query), or 503 when no leader
/// is known yet. Clients follow it only to hubs they were configured with.
fn not_leader(leader: Option<&crate::ha::LeaderInfo>, path_and_query: Option<&str>) -> Response {
    match leader {
        Some(l) => {
            let location = format!("{}{}", l.url.trim_end_matches('/'), path_and_query.unwrap_or("/"));
            let mut e =
                ApiError::new(ErrorCode::NotLeader).msg(format!("this hub is a standby; the leader is {}", l.url));
            e.leader = Some(l.url.clone());
            let mut r = (StatusCode::TEMPORARY_REDIRECT, Json(e)).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => error(
            ApiError::new(ErrorCode::NotLeader).msg("this hub is a standby and no leader is known yet; retry shortly"),
        ),
    }
}

/// On a standby, every route but `/health`, `/metrics` and `/ws` sends the client to the leader.
async fn gate(State(s): State<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let open = matches!(req.uri().path(), "/health" | "/metrics" | "/ws");
    let standby = match &*s.role.borrow() {
        ha::Role::Leader(_) => None,
        ha::Role::Standby { leader } => Some(leader.clone()),
    };
    match standby {
        Some(leader) if !open => not_leader(leader.as_ref(), req.uri().path_and_query().map(|p| p.as_str())),
        _ => next.run(req).await,
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws))
        .route("/api/tasks", post(submit).get(list_tasks))
        .route("/api/tasks/dead-letter", get(dead_letter))
        .route("/api/tasks/stats", get(stats))
        .route("/api/tasks/{task_id}", get(get_task))
        .route("/api/tasks/{task_id}/retry", post(retry))
        .route("/api/tasks/{task_id}/cancel", post(cancel))
        .route("/api/tasks/{task_id}/input", post(answer))
        .route("/api/events", get(crate::feed::events))
        .route("/api/usage", get(usage))
        .route("/api/agents", get(agents))
        .route("/api/agents/{agent_id}", get(agent))
        .route("/api/agents/{agent_id}/checkpoint", get(get_checkpoint).put(put_checkpoint))
        .route("/api/admin/agents/{agent_id}/restart", post(restart_agent))
        .route("/admin/tokens", post(create_token).get(list_tokens))
        .route("/admin/tokens/{agent_id}", axum::routing::delete(revoke_token))
        .merge(crate::console::routes())
        // Bodies are read by `read_json` with each route's own limit.
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async { error(ApiError::new(ErrorCode::NotFound).msg("no such route")) })
        .method_not_allowed_fallback(|| async { error(ApiError::new(ErrorCode::MethodNotAllowed)) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized | ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::UnknownAgent | ErrorCode::AgentNotConnected => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidJson | ErrorCode::InvalidBody | ErrorCode::InvalidQuery => StatusCode::BAD_REQUEST,
        ErrorCode::BodyTooLarge | ErrorCode::FieldTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::InvalidState => StatusCode::CONFLICT,
        ErrorCode::StorageUnavailable
        | ErrorCode::ShuttingDown
        | ErrorCode::Overloaded
        | ErrorCode::QueueFull
        | ErrorCode::NotLeader => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error(e: ApiError) -> Response {
    (status_of(e.error), Json(e)).into_response()
}

/// The response of a core reply: 201 for what was created, 200 for the rest.
fn respond(r: ApiResult) -> Response {
    match r {
        Err(e) => error(e),
        Ok(reply) => match reply {
            Reply::Submitted(v) => (StatusCode::CREATED, Json(v)).into_response(),
            Reply::TokenCreated(v) => (StatusCode::CREATED, Json(v)).into_response(),
            Reply::Changed(v) => Json(v).into_response(),
            Reply::Stats(v) => Json(v).into_response(),
            Reply::Agents(v) => Json(v).into_response(),
            Reply::Agent(v) => Json(v).into_response(),
            Reply::Tokens(v) => Json(v).into_response(),
            Reply::Revoked(v) => Json(v).into_response(),
            Reply::Restart(v) => Json(v).into_response(),
            Reply::CheckpointStored(v) => Json(v).into_response(),
            Reply::Answered(v) => Json(v).into_response(),
            Reply::Metrics(t) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], t).into_response(),
            Reply::Role(_) => error(ApiError::new(ErrorCode::Unknown).msg("unexpected reply")),
        },
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

async fn call(s: &AppState, headers: &HeaderMap, req: ApiRequest) -> Response {
    match s.serving() {
        Ok(serving) => respond(serving.core.call(bearer(headers), req).await),
        Err(r) => r.into_response(),
    }
}

/// Who the token belongs to (any role); reads need nothing more.
pub(crate) async fn role(s: &AppState, headers: &HeaderMap) -> Result<Role, Response> {
    let serving = s.serving()?;
    match serving.core.call(bearer(headers), ApiRequest::Authenticate).await {
        Ok(Reply::Role(r)) => Ok(r),
        Ok(_) => Err(error(ApiError::new(ErrorCode::Unknown))),
        Err(e) => Err(error(e)),
    }
}

/// Runs a blocking read on `reader`, off the async workers and off the core, on a thread that
/// yields the CPU to dispatch (the API's and the dashboard's reads alike).
pub(crate) async fn read_with<T: Send + 'static>(
    reader: Arc<dyn Reader>,
    f: impl FnOnce(&dyn Reader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let reading = move || {
        osutil::sched::lower_this_thread();
        f(reader.as_ref())
    };
    match tokio::task::spawn_blocking(reading).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::new(ErrorCode::StorageUnavailable).msg(e.to_string())),
        Err(e) => Err(ApiError::new(ErrorCode::Unknown).msg(e.to_string())),
    }
}

async fn read<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&dyn Reader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    read_with(s.serving()?.reader, f).await.map_err(error)
}

/// Bodies over their limit are still read (and thrown away, within the body timeout) up to this
/// many times the limit, and at least [`DRAIN_MIN`], so the client sees the 413 instead of a
/// reset while it is still sending.
const DRAIN_FACTOR: usize = 8;
const DRAIN_MIN: usize = 16 << 20;

/// Reads a JSON object body of at most `limit` bytes within `timeout`; every rejection (size,
/// syntax, shape, a client too slow to send it) is a JSON error.
async fn read_json(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Map<String, Value>, Response> {
    use futures_util::StreamExt;
    let read = async {
        let mut stream = body.into_data_stream();
        let (mut bytes, mut seen) = (Vec::new(), 0usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| error(ApiError::new(ErrorCode::InvalidBody).msg(e.to_string())))?;
            seen += chunk.len();
            if seen <= limit {
                bytes.extend_from_slice(&chunk);
            } else if seen > limit.saturating_mul(DRAIN_FACTOR).max(DRAIN_MIN) {
                break;
            }
        }
        if seen > limit {
            return Err(error(ApiError::new(ErrorCode::BodyTooLarge).msg(format!("the body is over {limit} bytes"))));
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            let e = ApiError::new(ErrorCode::InvalidBody)
                .msg(format!("the body did not arrive within {} ms", timeout.as_millis()));
            return Err(error(e));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(ApiError::new(ErrorCode::InvalidJson).msg("the body must be a JSON object"))),
        Err(e) => Err(error(ApiError::new(ErrorCode::InvalidJson).msg(e.to_string()))),
    }
}

fn invalid(errors: Vec<String>) -> Response {
    error(ApiError::fields(errors))
}

fn bad_query(e: QueryRejection) -> Response {
    error(ApiError::new(ErrorCode::InvalidQuery).msg(e.body_text()))
}

/// The configured size limits of a submission, each naming its field.
pub(crate) fn check_sizes(t: &SubmitTask, l: &Limits) -> Result<(), ApiError> {
    let too_large = |field: &str, size: String, max: String| {
        ApiError::new(ErrorCode::FieldTooLarge).msg(format!("{field}: {size}, more than the hub accepts ({max})"))
    };
    let chars = t.description.chars().count();
    if chars > l.max_description_chars {
        let max = format!("max_description_chars = {}", l.max_description_chars);
        return Err(too_large("description", format!("{chars} characters"), max));
    }
    let meta = serde_json::to_vec(&t.metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if meta > l.max_metadata_bytes {
        let max = format!("max_metadata_bytes = {}", l.max_metadata_bytes);
        return Err(too_large("metadata", format!("{meta} bytes"), max));
    }
    let extra = serde_json::to_vec(&t.extra).map(|v| v.len()).unwrap_or(usize::MAX);
    if extra > l.max_extra_bytes {
        let largest = t.extra.iter().max_by_key(|(_, v)| v.to_string().len()).map(|(k, _)| k.as_str()).unwrap_or("");
        let max = format!("max_extra_bytes = {}", l.max_extra_bytes);
        return Err(too_large(&format!("{largest} (with the other v1 fields)"), format!("{extra} bytes"), max));
    }
    Ok(())
}

async fn health(State(s): State<AppState>) -> Response {
    let (role, leader, term) = match &*s.role.borrow() {
        ha::Role::Leader(serving) => (HubRole::Leader, None, (serving.term > 0).then_some(serving.term)),
        ha::Role::Standby { leader } => {
            (HubRole::Standby, leader.as_ref().map(|l| l.url.clone()), leader.as_ref().map(|l| l.term))
        }
    };
    Json(Health { status: HealthStatus::Ok, version: env!("CARGO_PKG_VERSION").into(), role: Some(role), leader, term })
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let Ok(serving) = s.serving() else {
        // A standby reports only what it has: its connections, and that it does not lead.
        let mut text = String::from(
            "# HELP agentcom_hub_leader Whether this hub leads.\n# TYPE agentcom_hub_leader gauge\nagentcom_hub_leader 0\n",
        );
        s.conns.render(&mut text);
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response();
    };
    match serving.core.call(None, ApiRequest::Metrics).await {
        Ok(Reply::Metrics(mut text)) => {
            text.push_str("# HELP agentcom_hub_leader Whether this hub leads.\n# TYPE agentcom_hub_leader gauge\nagentcom_hub_leader 1\n");
            s.conns.render(&mut text);
            crate::feed::render_metrics(&s, &mut text);
            s.console.render_metrics(&mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        other => respond(other),
    }
}

async fn ws(State(s): State<AppState>, ticket: Option<Extension<ConnTicket>>, upgrade: WebSocketUpgrade) -> Response {
    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
    // During an election, answering "no leader" at once makes every agent retry in a tight
    // loop: wait (bounded) for the outcome, which may be that this hub now leads.
    let mut role = s.role.clone();
    let electing = |r: &ha::Role| matches!(r, ha::Role::Standby { leader: None });
    if electing(&role.borrow_and_update()) && !s.election_wait.is_zero() {
        let outcome = async {
            tokio::select! {
                _ = role.wait_for(|r| !electing(r)) => {}
                _ = s.shutdown.cancelled() => {}
            }
        };
        let _ = tokio::time::timeout(s.election_wait, outcome).await;
    }
    let serving = match &*s.role.borrow() {
        ha::Role::Leader(serving) => Ok(serving.clone()),
        ha::Role::Standby { leader } => Err(leader.as_ref().map(|l| l.ws_url.clone()).unwrap_or_default()),
    };
    let serving = match serving {
        Ok(serving) => serving,
        // A standby takes the socket only to say, with a close code, where the leader is.
        Err(leader_ws) => {
            return upgrade.on_upgrade(move |socket| crate::ws::redirect(socket, leader_ws));
        }
    };
    let w = crate::ws::WsConn {
        conn,
        core: serving.core.clone(),
        role: s.role.clone(),
        term: serving.term,
        timings: s.timings.clone(),
        identify_timeout: s.net.identify_timeout,
        shutdown: s.shutdown.clone(),
        ticket: ticket.map(|Extension(t)| t),
    };
    let tracker = s.tracker.clone();
    // Small buffers: an idle agent should cost a few KiB, not tungstenite's 128 KiB default.
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(proto::MAX_FRAME_BYTES)
        .max_frame_size(proto::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| tracker.track_future(crate::ws::serve(socket, w)))
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let m = match read_json(body, s.limits.max_submission_bytes(), s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let task = match SubmitTask::from_json(m) {
        Ok(t) => t,
        Err(errors) => return invalid(errors),
    };
    if let Err(e) = check_sizes(&task, &s.limits) {
        return error(e);
    }
    call(&s, &headers, ApiRequest::Submit(task)).await
}

async fn list(
    s: &AppState,
    headers: &HeaderMap,
    status: Option<TaskStatus>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Response {
    let role = match role(s, headers).await {
        Ok(role) => role,
        Err(r) => return r,
    };
    let limit = match paging::page_size(limit) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let before_seq: Option<i64> = match paging::decode(cursor.as_deref()) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let q = TaskQuery { status, before_seq, limit };
    // A page is up to a thousand tasks, megabytes of JSON: it is built on the reading thread, so
    // the runtime's workers (sockets, agents' frames) never wait behind it.
    let page = read(s, move |r| {
        let (rows, more) = r.list_tasks(q)?;
        let next_cursor = if more { rows.last().map(|t| paging::encode(&t.head.seq)) } else { None };
        let tasks: Vec<_> = rows
            .into_iter()
            .map(|t| {
                let mut view = t.view();
                crate::authz::withhold_content(&role, &mut view);
                view
            })
            .collect();
        Ok(serde_json::to_vec(&TaskList { count: tasks.len(), tasks, next_cursor }).expect("a task list serializes"))
    });
    match page.await {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(r) => r,
    }
}

async fn list_tasks(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListTasks>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => list(&s, &headers, q.status, q.limit, q.cursor).await,
        Err(e) => bad_query(e),
    }
}

async fn dead_letter(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListDeadLetter>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => list(&s, &headers, Some(TaskStatus::DeadLetter), q.limit, q.cursor).await,
        Err(e) => bad_query(e),
    }
}

async fn stats(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, ApiRequest::Stats).await
}

async fn get_task(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let role = match role(&s, &headers).await {
        Ok(role) => role,
        Err(r) => return r,
    };
    let wanted = id.clone();
    let found = read(&s, move |r| {
        let Some(task) = r.task(&wanted)? else { return Ok(None) };
        Ok(Some((task, r.transitions(&wanted)?)))
    })
    .await;
    match found {
        Ok(Some((task, mut history))) => {
            let mut view = task.view();
            if crate::authz::withhold_content(&role, &mut view) {
                history.clear();
            }
            Json(TaskDetail { task: view, history }).into_response()
        }
        Ok(None) => error(ApiError::new(ErrorCode::NotFound).msg(format!("no task {id}"))),
        Err(r) => r,
    }
}

async fn retry(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::Retry(id)).await
}

async fn cancel(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::Cancel(id)).await
}

async fn answer(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let m = match read_json(body, SMALL_BODY + proto::MAX_ANSWER * 4, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let answer = match m.get("answer") {
        Some(Value::String(a)) if a.trim().is_empty() => {
            errors.push("answer: must not be empty".into());
            String::new()
        }
        Some(Value::String(a)) if a.chars().count() > proto::MAX_ANSWER => {
            errors.push(format!("answer: longer than {} characters", proto::MAX_ANSWER));
            String::new()
        }
        Some(Value::String(a)) => a.clone(),
        Some(_) => {
            errors.push("answer: expected string".into());
            String::new()
        }
        None => {
            errors.push("answer: required".into());
            String::new()
        }
    };
    let request_id = match m.get("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.len() <= 64 => Some(r.clone()),
        Some(_) => {
            errors.push("request_id: expected a string of at most 64 characters".into());
            None
        }
    };
    if !errors.is_empty() {
        return invalid(errors);
    }
    call(&s, &headers, ApiRequest::Answer(proto::api::AnswerTask { task_id, answer, request_id })).await
}

async fn usage(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<proto::api::GetUsage>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let role = match role(&s, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let today = crate::clock::wall_ms() / crate::store::DAY_MS;
    let day = |v: &Option<String>, name: &str, default: u64| match v {
        None => Ok(default),
        Some(d) => crate::feed::parse_day(d)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery).msg(format!("{name}: expected a day as YYYY-MM-DD"))),
    };
    let (since, until) = match (day(&q.since, "since", today.saturating_sub(29)), day(&q.until, "until", today)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(e),
    };
    if until < since || until - since > 3660 {
        return error(
            ApiError::new(ErrorCode::InvalidQuery).msg("until: must be a day from since to ten years after it"),
        );
    }
    // An agent sees what it spent; the admin sees everyone.
    let only = match &role {
        Role::Admin => None,
        Role::Agent(a) => Some(a.clone()),
    };
    let by = q.by;
    let range = (since * crate::store::DAY_MS, (until + 1) * crate::store::DAY_MS);
    match read(&s, move |r| r.usage(by, range.0, range.1, only.as_deref())).await {
        Ok(rows) => Json(crate::feed::usage_report(by, since, until, rows)).into_response(),
        Err(r) => r,
    }
}

async fn agents(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListAgents>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => call(&s, &headers, ApiRequest::Agents { limit: q.limit, cursor: q.cursor }).await,
        Err(e) => bad_query(e),
    }
}

async fn agent(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::Agent(agent_id)).await
}

/// A response naming the problem when `id` is not a valid agent id.
fn bad_agent_id(id: &str) -> Option<Response> {
    proto::api::check_agent_id(id).err().map(|e| invalid(vec![e]))
}

async fn create_token(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let m = match read_json(body, SMALL_BODY, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let req: CreateToken = match m.get("agent_id") {
        Some(Value::String(a)) => CreateToken { agent_id: a.clone() },
        Some(_) => return invalid(vec!["agent_id: expected string".into()]),
        None => return invalid(vec!["agent_id: required".into()]),
    };
    if let Some(r) = bad_agent_id(&req.agent_id) {
        return r;
    }
    call(&s, &headers, ApiRequest::CreateToken(req.agent_id)).await
}

async fn list_tokens(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListTokens>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => call(&s, &headers, ApiRequest::ListTokens { limit: q.limit, cursor: q.cursor }).await,
        Err(e) => bad_query(e),
    }
}

async fn revoke_token(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::RevokeToken(agent_id)).await
}

async fn restart_agent(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let m = match read_json(body, SMALL_BODY, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let reason = match m.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.chars().count() > proto::MAX_REASON => {
            errors.push(format!("reason: longer than {} characters", proto::MAX_REASON));
            None
        }
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => {
            errors.push("reason: expected string".into());
            None
        }
    };
    let force = match m.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push("force: expected boolean".into());
            false
        }
    };
    if !errors.is_empty() {
        return invalid(errors);
    }
    call(&s, &headers, ApiRequest::RestartAgent(RestartAgent { agent_id, reason, force })).await
}

async fn put_checkpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let m = match read_json(body, s.limits.max_checkpoint_bytes, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(r) = bad_agent_id(&agent_id) {
        return r;
    }
    call(&s, &headers, ApiRequest::PutCheckpoint { agent_id, body: m }).await
}

async fn get_checkpoint(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    let role = match role(&s, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(e) = authz::may_checkpoint(&role, &agent_id, "read") {
        return error(e);
    }
    let wanted = agent_id.clone();
    match read(&s, move |r| r.checkpoint(&wanted)).await {
        Ok(Some((checkpoint, updated_at))) => Json(Checkpoint { agent_id, updated_at, checkpoint }).into_response(),
        Ok(None) => error(ApiError::new(ErrorCode::NotFound).msg(format!("no checkpoint for {agent_id}"))),
        Err(r) => r,
    }
}
