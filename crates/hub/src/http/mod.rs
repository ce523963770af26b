//! HTTP routes: the AgentCom v1 core subset plus `/metrics`, `GET /ws` for agents, and the
//! dashboard's pages (merged from [`crate::console`]).
//! Handlers parse and validate the typed requests of `proto::api`, ask the core (writes, and who
//! a token is) or the store's reader (reads, off the core thread), and map the answers to status
//! codes: this is the only place that knows them.

use crate::auth::Role;
use crate::authz;
use crate::config::{Limits, NetLimits, Timings};
use crate::core::api::{Authenticate, CoreRequest, Metrics};
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
    ListTokens, RestartAgent, SubmitTask, TaskDetail, TaskDiff, TaskList,
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

mod agents;
mod tasks;
use agents::*;
pub(crate) use tasks::check_sizes;
use tasks::*;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws))
        .route("/api/tasks", post(submit).get(list_tasks))
        .route("/api/tasks/dead-letter", get(dead_letter))
        .route("/api/tasks/stats", get(stats))
        .route("/api/tasks/{task_id}", get(get_task))
        .route("/api/tasks/{task_id}/diff", get(diff))
        .route("/api/tasks/{task_id}/approve", post(approve))
        .route("/api/tasks/{task_id}/reject", post(reject))
        .route("/api/integrations", get(integrations))
        .route("/api/tasks/{task_id}/retry", post(retry))
        .route("/api/tasks/{task_id}/cancel", post(cancel))
        .route("/api/tasks/{task_id}/input", post(answer))
        .route("/api/events", get(crate::feed::events))
        .route("/api/usage", get(usage))
        .route("/api/agents", get(agents))
        .route("/api/agents/{agent_id}", get(agent))
        .route("/api/agents/{agent_id}/checkpoint", get(get_checkpoint).put(put_checkpoint))
        .route("/api/admin/agents/{agent_id}/restart", post(restart_agent))
        .route("/api/admin/agents/{agent_id}/unlimit", post(unlimit_agent))
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

/// Asks the core with the request's bearer token; the error as its response.
pub(crate) async fn ask<R: CoreRequest>(s: &AppState, headers: &HeaderMap, req: R) -> Result<R::Answer, Response> {
    let serving = s.serving()?;
    serving.core.ask(bearer(headers), req).await.map_err(error)
}

/// The core's answer as JSON with 200, or its error.
async fn call<R: CoreRequest>(s: &AppState, headers: &HeaderMap, req: R) -> Response
where
    R::Answer: serde::Serialize,
{
    match ask(s, headers, req).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// The core's answer to the request a query string makes, or why the query is malformed.
async fn call_query<R: CoreRequest>(s: &AppState, headers: &HeaderMap, q: Result<Query<R>, QueryRejection>) -> Response
where
    R::Answer: serde::Serialize,
{
    match q {
        Ok(Query(q)) => call(s, headers, q).await,
        Err(e) => bad_query(e),
    }
}

/// The core's answer to the request a JSON body of at most `limit` bytes makes once `parse`
/// has checked it, or every field it found invalid.
async fn call_json<R: CoreRequest>(
    s: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    parse: impl FnOnce(Map<String, Value>) -> Result<R, Vec<String>>,
) -> Response
where
    R::Answer: serde::Serialize,
{
    let m = match read_json(body, limit, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match parse(m) {
        Ok(req) => call(s, headers, req).await,
        Err(errors) => invalid(errors),
    }
}

/// The core's answer as JSON with 201 (what the request created), or its error.
async fn create<R: CoreRequest>(s: &AppState, headers: &HeaderMap, req: R) -> Response
where
    R::Answer: serde::Serialize,
{
    match ask(s, headers, req).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => r,
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Who the token belongs to (any role); reads need nothing more.
pub(crate) async fn role(s: &AppState, headers: &HeaderMap) -> Result<Role, Response> {
    ask(s, headers, Authenticate).await
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

fn leader_metric(out: &mut String, leads: bool) {
    crate::metrics::sample(
        out,
        "agentcom_hub_leader",
        crate::metrics::Kind::Gauge,
        "Whether this hub leads.",
        u8::from(leads),
    );
}

async fn metrics(State(s): State<AppState>) -> Response {
    let Ok(serving) = s.serving() else {
        // A standby reports only what it has: its connections, and that it does not lead.
        let mut text = String::new();
        leader_metric(&mut text, false);
        s.conns.render(&mut text);
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response();
    };
    match serving.core.ask(None, Metrics).await {
        Ok(mut text) => {
            leader_metric(&mut text, true);
            s.conns.render(&mut text);
            crate::feed::render_metrics(&s, &mut text);
            s.console.render_metrics(&mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        Err(e) => error(e),
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
