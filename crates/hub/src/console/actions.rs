//! The dashboard's POST handlers. Each one first checks the request's `Origin` (403 otherwise),
//! then the session (the login form otherwise), reads a bounded form body within the configured
//! time, and asks the core exactly as the JSON API does; success redirects (303) to the page to
//! look at next, failure shows the hub's reason. An agent token's dashboard is read-only except
//! for answering the questions of tasks it submitted (the core checks that part).

use super::session::{clear_cookie, cookie_id, set_cookie, Sessions};
use super::view::{layout, task, task_href};
use super::{csrf, error_page, html, login_page, safe_next, viewer, NoSession, Viewer};
use crate::core::api::Authenticate;
use crate::http::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::api::{AnswerTask, ApiError, ErrorCode, RestartAgent};
use serde_json::{Map, Value};

/// Forms that carry no free text beyond a reason or an answer.
const SMALL_FORM: usize = 64 * 1024;

/// A form's fields in order; the first of a repeated name wins.
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// A field with surrounding blanks removed, `None` when empty.
    fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// Reads an `application/x-www-form-urlencoded` body of at most `limit` bytes within `timeout`.
async fn read_form(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Form, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(ErrorCode::InvalidBody)
            .msg("the dashboard takes forms (application/x-www-form-urlencoded); scripts use the JSON API"));
    }
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            return Err(ApiError::new(ErrorCode::InvalidBody)
                .msg(format!("the form did not arrive within {} ms", timeout.as_millis())))
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(ErrorCode::BodyTooLarge).msg(format!("the form is over {limit} bytes")));
        }
        Ok(Ok(b)) => b,
    };
    Ok(Form(url::form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()))
}

/// A refused POST: the reason and nothing of the hub's data.
fn forbidden(msg: String) -> Response {
    tracing::warn!(reason = %msg, "dashboard POST refused");
    let e = ApiError::new(ErrorCode::Forbidden).msg(msg);
    html(StatusCode::FORBIDDEN, layout::error(None, &e))
}

/// Whose dashboard offers an action.
#[derive(Clone, Copy)]
enum Offered {
    /// The admin's only.
    Admin,
    /// Every viewer's (the core checks what each may do).
    Any,
}

/// The origin check, the viewer, the refusal of an admin's action to anyone else, then the
/// form of at most `limit` bytes: what every action does before it asks the core.
async fn begin(
    s: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    offered: Offered,
) -> Result<(Viewer, Form), Response> {
    csrf::check_origin(headers, s.console.tls).map_err(forbidden)?;
    let v = viewer(s, headers).await.map_err(|why| login_page(why, "/"))?;
    if let (Offered::Admin, Some(a)) = (offered, v.agent()) {
        let e = ApiError::new(ErrorCode::Forbidden).msg(format!(
            "agent {a}'s dashboard is read-only: it may answer the questions of tasks it submitted, nothing else"
        ));
        return Err(error_page(Some(&v), &e));
    }
    match read_form(headers, body, limit, s.net.body_read_timeout).await {
        Ok(f) => Ok((v, f)),
        Err(e) => Err(error_page(Some(&v), &e)),
    }
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

pub async fn login(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if let Err(m) = csrf::check_origin(&headers, s.console.tls) {
        return forbidden(m);
    }
    let f = match read_form(&headers, body, SMALL_FORM, s.net.body_read_timeout).await {
        Ok(f) => f,
        Err(e) => return error_page(None, &e),
    };
    let next = safe_next(f.get("next").unwrap_or("/"));
    let token = f.text("token").unwrap_or("").to_string();
    if let Err(m) = proto::check_token(&token) {
        return login_page(NoSession::Refused(m), &next);
    }
    match super::ask(&s, &token, Authenticate).await {
        Ok(role) => {
            let id = Sessions::new_id();
            let c = &s.console;
            let ttl = c.limits.session_ttl.as_secs().max(1);
            c.sessions().create(&id, token, crate::clock::wall_ms());
            tracing::info!(role = role.name(), "dashboard login");
            let cookie = set_cookie(c.cookie_name(), &id, ttl, c.tls);
            (StatusCode::SEE_OTHER, [(header::LOCATION, next), (header::SET_COOKIE, cookie)]).into_response()
        }
        Err(e) if matches!(e.error, ErrorCode::InvalidToken | ErrorCode::Unauthorized) => {
            tracing::info!("dashboard login refused: unknown token");
            let m = "That token is neither this hub's admin token nor a current agent token.";
            login_page(NoSession::Refused(m.into()), &next)
        }
        Err(e) => error_page(None, &e),
    }
}

pub async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(m) = csrf::check_origin(&headers, s.console.tls) {
        return forbidden(m);
    }
    let c = &s.console;
    if let Some(id) = cookie_id(&headers, c.cookie_name()) {
        c.sessions().remove(&id);
    }
    let cookie = clear_cookie(c.cookie_name(), c.tls);
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_string()), (header::SET_COOKIE, cookie)]).into_response()
}

/// The submission form as the JSON API's body, so it is validated by the same code.
fn submission(f: &Form) -> Result<Map<String, Value>, Vec<String>> {
    let mut m = Map::new();
    let mut errors = Vec::new();
    m.insert("description".into(), Value::String(f.get("description").unwrap_or("").to_string()));
    if let Some(p) = f.text("priority") {
        m.insert("priority".into(), Value::String(p.to_string()));
    }
    if let Some(caps) = f.text("capabilities") {
        let caps: Vec<Value> =
            caps.split(',').map(str::trim).filter(|c| !c.is_empty()).map(|c| Value::String(c.into())).collect();
        m.insert("needed_capabilities".into(), Value::Array(caps));
    }
    if let Some(a) = f.text("assign_to") {
        m.insert("assign_to".into(), Value::String(a.to_string()));
    }
    if let Some(n) = f.text("max_retries") {
        match n.parse::<u64>() {
            Ok(n) => {
                m.insert("max_retries".into(), Value::from(n));
            }
            Err(_) => errors.push("max_retries: expected an integer from 0 to 100".to_string()),
        }
    }
    if errors.is_empty() {
        Ok(m)
    } else {
        Err(errors)
    }
}

pub async fn submit(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    // Percent-encoding can triple each byte of the largest submission.
    let limit = s.limits.max_submission_bytes().saturating_mul(3);
    let (v, f) = match begin(&s, &headers, body, limit, Offered::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let task = match submission(&f).and_then(proto::api::SubmitTask::from_json) {
        Ok(t) => t,
        Err(errors) => return error_page(Some(&v), &ApiError::fields(errors)),
    };
    if let Err(e) = crate::http::check_sizes(&task, &s.limits) {
        return error_page(Some(&v), &e);
    }
    match super::data::call(&s, &v, task).await {
        Ok(t) => see_other(&task_href(&t.task_id)),
        Err(e) => error_page(Some(&v), &e),
    }
}

/// Cancel or retry, then back to the task (or to the listing the button was on).
async fn change(s: AppState, headers: HeaderMap, body: axum::body::Body, task_id: String, retry: bool) -> Response {
    let (v, f) = match begin(&s, &headers, body, SMALL_FORM, Offered::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let back = f.text("back").map(safe_next).unwrap_or_else(|| task_href(&task_id));
    let done = if retry {
        super::data::call(&s, &v, proto::api::RetryTask { task_id }).await
    } else {
        super::data::call(&s, &v, proto::api::CancelTask { task_id }).await
    };
    match done {
        Ok(_) => see_other(&back),
        Err(e) => error_page(Some(&v), &e),
    }
}

pub async fn cancel(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    change(s, headers, body, task_id, false).await
}

pub async fn retry(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    change(s, headers, body, task_id, true).await
}

/// A person's review of a change waiting for it: approve (the integrator merges it) or reject
/// with a reason (back to an agent).
pub async fn review(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let (v, f) = match begin(&s, &headers, body, SMALL_FORM + proto::MAX_REASON * 12, Offered::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let href = task_href(&task_id);
    let done = match f.get("decision") {
        Some("approve") => super::data::call(&s, &v, proto::api::ApproveTask { task_id }).await.map(|_| ()),
        Some("reject") => {
            let mut m = Map::new();
            m.insert("reason".into(), Value::String(f.text("reason").unwrap_or("").to_string()));
            match proto::api::RejectTask::from_json(&task_id, m) {
                Ok(r) => super::data::call(&s, &v, r).await.map(|_| ()),
                Err(errors) => Err(ApiError::fields(errors)),
            }
        }
        _ => Err(ApiError::new(ErrorCode::ValidationFailed).msg("decision: approve or reject")),
    };
    match done {
        Ok(()) => see_other(&href),
        Err(e) => error_page(Some(&v), &e),
    }
}

pub async fn answer(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let limit = SMALL_FORM + proto::MAX_ANSWER * 12;
    let (v, f) = match begin(&s, &headers, body, limit, Offered::Any).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The typed answer, else the option picked.
    let answer = f.text("answer").or_else(|| f.text("choice")).unwrap_or("");
    let answer = match AnswerTask::new(&task_id, answer, f.text("request_id")) {
        Ok(a) => a,
        Err(errors) => return error_page(Some(&v), &ApiError::fields(errors)),
    };
    let href = task_href(&task_id);
    match super::data::call(&s, &v, answer).await {
        Ok(_) => see_other(&href),
        Err(e) => error_page(Some(&v), &e),
    }
}

pub async fn restart(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let (v, f) = match begin(&s, &headers, body, SMALL_FORM, Offered::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if f.get("confirm") != Some("yes") {
        let e = ApiError::new(ErrorCode::ValidationFailed)
            .msg("confirm: a restart is confirmed on its confirmation page (the Restart… link of the agent)");
        return error_page(Some(&v), &e);
    }
    let mut m = Map::new();
    if let Some(r) = f.text("reason") {
        m.insert("reason".into(), Value::String(r.to_string()));
    }
    m.insert("force".into(), Value::Bool(f.get("force") == Some("true")));
    let restart = match RestartAgent::from_json(&agent_id, m) {
        Ok(r) => r,
        Err(errors) => return error_page(Some(&v), &ApiError::fields(errors)),
    };
    match super::data::call(&s, &v, restart).await {
        Ok(r) => html(StatusCode::OK, task::restart_done(&v, &r.agent_id, &r.reason, r.force)),
        Err(e) => error_page(Some(&v), &e),
    }
}
