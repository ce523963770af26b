//! HTTP routes: the AgentCom v1 core subset plus `/metrics`, and `GET /ws` for agents.
//! Handlers only parse and validate; every decision is the core's.

use crate::config::Timings;
use crate::core::{ApiBody, ApiError, ApiRequest, ApiResult, CoreHandle, NewTask};
use crate::model::{Priority, TaskStatus};
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct AppState {
    pub core: CoreHandle,
    pub timings: Timings,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub next_conn: Arc<AtomicU64>,
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
        .route("/api/agents", get(agents))
        .route("/api/agents/{agent_id}/checkpoint", get(get_checkpoint).put(put_checkpoint))
        .route("/api/admin/agents/{agent_id}/restart", post(restart_agent))
        .route("/admin/tokens", post(create_token).get(list_tokens))
        .route("/admin/tokens/{agent_id}", axum::routing::delete(revoke_token))
        .fallback(|| async { error(ApiError::new(404, "not_found").msg("no such route")) })
        .method_not_allowed_fallback(|| async { error(ApiError::new(405, "method_not_allowed")) })
        .with_state(state)
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "error": e.error });
    if let Some(m) = e.message {
        body["message"] = m.into();
    }
    (status, Json(body)).into_response()
}

fn respond(r: ApiResult) -> Response {
    match r {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            match body {
                ApiBody::Json(v) => (status, Json(v)).into_response(),
                ApiBody::Text(t) => (status, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], t).into_response(),
            }
        }
        Err(e) => error(e),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

async fn call(s: &AppState, headers: &HeaderMap, req: ApiRequest) -> Response {
    respond(s.core.call(bearer(headers), req).await)
}

/// A JSON object body whose every rejection (size, syntax, shape) is a JSON error.
struct JsonBody(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status().as_u16();
            let code = if status == 413 { "body_too_large" } else { "invalid_body" };
            error(ApiError::new(status, code).msg(e.body_text()))
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Map::new()));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(JsonBody(m)),
            Ok(_) => Err(error(ApiError::new(400, "invalid_json").msg("the body must be a JSON object"))),
            Err(e) => Err(error(ApiError::new(400, "invalid_json").msg(e.to_string()))),
        }
    }
}

fn invalid(errors: Vec<String>) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": "validation_failed", "errors": errors }))).into_response()
}

fn opt_str(m: &Map<String, Value>, key: &str, max: usize, errors: &mut Vec<String>) -> Option<String> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > max => {
            errors.push(format!("{key}: longer than {max} characters"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(format!("{key}: expected string"));
            None
        }
    }
}

/// Fields the hub owns; a submission may not set them.
const RESERVED: &[&str] =
    &["task_id", "status", "generation", "assigned_at", "assigned_to", "type", "attempts", "failures"];

fn parse_new_task(mut m: Map<String, Value>) -> Result<NewTask, Vec<String>> {
    let mut errors = Vec::new();
    let description = match m.get("description") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push("description: must not be empty".into());
            String::new()
        }
        Some(Value::String(_)) => opt_str(&m, "description", proto::MAX_DESCRIPTION, &mut errors).unwrap_or_default(),
        Some(_) => {
            errors.push("description: expected string".into());
            String::new()
        }
        None => {
            errors.push("description: required".into());
            String::new()
        }
    };
    let priority = match opt_str(&m, "priority", 16, &mut errors).map(|p| p.parse::<Priority>()) {
        None => Priority::Normal,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            errors.push(format!("priority: {e}"));
            Priority::Normal
        }
    };
    let metadata = match m.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            errors.push("metadata: expected object".into());
            json!({})
        }
    };
    let max_retries = match m.get("max_retries") {
        None | Some(Value::Null) => 3,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 100) => n.as_u64().unwrap_or(3) as u32,
        Some(_) => {
            errors.push("max_retries: expected an integer from 0 to 100".into());
            3
        }
    };
    let needed_capabilities = match m.get("needed_capabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 64 => {
            let mut caps = Vec::new();
            for (i, c) in items.iter().enumerate() {
                match c {
                    Value::String(s) if !s.is_empty() && s.len() <= proto::MAX_SHORT => caps.push(s.clone()),
                    _ => errors.push(format!(
                        "needed_capabilities[{i}]: expected a non-empty string up to {} characters",
                        proto::MAX_SHORT
                    )),
                }
            }
            caps
        }
        Some(_) => {
            errors.push("needed_capabilities: expected an array of at most 64 strings".into());
            Vec::new()
        }
    };
    let assign_to = opt_str(&m, "assign_to", proto::MAX_AGENT_ID, &mut errors);
    for k in RESERVED {
        if m.contains_key(*k) {
            errors.push(format!("{k}: set by the hub, not by a submission"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for k in ["description", "priority", "metadata", "max_retries", "needed_capabilities", "assign_to"] {
        m.remove(k);
    }
    Ok(NewTask { description, priority, metadata, max_retries, needed_capabilities, assign_to, extra: m })
}

async fn health() -> Response {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    respond(s.core.call(None, ApiRequest::Metrics).await)
}

async fn ws(State(s): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
    let (core, timings, shutdown, tracker) = (s.core.clone(), s.timings.clone(), s.shutdown.clone(), s.tracker.clone());
    // Small buffers: an idle agent should cost a few KiB, not tungstenite's 128 KiB default.
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(proto::MAX_FRAME_BYTES)
        .max_frame_size(proto::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| tracker.track_future(crate::ws::serve(socket, conn, core, timings, shutdown)))
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, body: Result<JsonBody, Response>) -> Response {
    let JsonBody(m) = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse_new_task(m) {
        Ok(n) => call(&s, &headers, ApiRequest::Submit(n)).await,
        Err(errors) => invalid(errors),
    }
}

async fn list_tasks(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let status = match q.get("status").map(|v| v.parse::<TaskStatus>()) {
        None => None,
        Some(Ok(st)) => Some(st),
        Some(Err(e)) => return error(ApiError::new(400, "invalid_query").msg(format!("status: {e}"))),
    };
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => return error(ApiError::new(400, "invalid_query").msg("limit: expected an integer from 1 to 10000")),
    };
    call(&s, &headers, ApiRequest::ListTasks { status, limit }).await
}

async fn dead_letter(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, ApiRequest::ListTasks { status: Some(TaskStatus::DeadLetter), limit: 10_000 }).await
}

async fn stats(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, ApiRequest::Stats).await
}

async fn get_task(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::GetTask(id)).await
}

async fn retry(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::Retry(id)).await
}

async fn cancel(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::Cancel(id)).await
}

async fn agents(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, ApiRequest::Agents).await
}

/// A response naming the problem when `id` is not a valid agent id.
fn bad_agent_id(id: &str) -> Option<Response> {
    let bad = id.is_empty() || id.chars().count() > proto::MAX_AGENT_ID || id.chars().any(char::is_control);
    bad.then(|| invalid(vec![format!("agent_id: must be 1 to {} printable characters", proto::MAX_AGENT_ID)]))
}

async fn create_token(State(s): State<AppState>, headers: HeaderMap, body: Result<JsonBody, Response>) -> Response {
    let JsonBody(m) = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let agent_id = match m.get("agent_id") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => return invalid(vec!["agent_id: expected string".into()]),
        None => return invalid(vec!["agent_id: required".into()]),
    };
    if let Some(r) = bad_agent_id(&agent_id) {
        return r;
    }
    call(&s, &headers, ApiRequest::CreateToken(agent_id)).await
}

async fn list_tokens(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, ApiRequest::ListTokens).await
}

async fn revoke_token(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::RevokeToken(agent_id)).await
}

async fn restart_agent(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: Result<JsonBody, Response>,
) -> Response {
    let JsonBody(m) = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let reason = opt_str(&m, "reason", proto::MAX_REASON, &mut errors).unwrap_or_else(|| "admin_commanded".into());
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
    call(&s, &headers, ApiRequest::RestartAgent { agent_id, reason, force }).await
}

async fn put_checkpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: Result<JsonBody, Response>,
) -> Response {
    let JsonBody(m) = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = bad_agent_id(&agent_id) {
        return r;
    }
    call(&s, &headers, ApiRequest::PutCheckpoint { agent_id, body: Value::Object(m) }).await
}

async fn get_checkpoint(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    call(&s, &headers, ApiRequest::GetCheckpoint(agent_id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_errors_name_fields() {
        let m = json!({"priority": "asap", "max_retries": -1, "needed_capabilities": ["ok", 3], "status": "done"});
        let errors = parse_new_task(m.as_object().unwrap().clone()).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("description: required")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("priority:")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("max_retries:")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("needed_capabilities[1]:")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("status:")), "{errors:?}");
    }

    #[test]
    fn v1_fields_pass_through() {
        let m = json!({"description": "d", "repo": "r", "routing_decision": {"target_type": "wake"}});
        let t = parse_new_task(m.as_object().unwrap().clone()).unwrap();
        assert_eq!(t.extra["repo"], "r");
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.max_retries, 3);
    }
}
