//! The dashboard's GET handlers: resolve the viewer (or show the login form and nothing else),
//! read what the page shows, render it.

use super::data;
use super::view::{fleet, task, tasks};
use super::{error_page, html, login_page, viewer, Viewer};
use crate::http::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use proto::api::{ApiError, ErrorCode, Priority, TaskStatus};
use serde::Deserialize;

/// Query of every listing page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<u32>,
    status: Option<TaskStatus>,
    lane: Option<Priority>,
}

/// The viewer and the page's query, or the response that ends the request: the login form
/// without a session, an error page for a malformed query.
async fn start(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<(Viewer, ListQuery), Response> {
    let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let v = viewer(s, headers).await.map_err(|why| login_page(why, &super::safe_next(next)))?;
    match q {
        Ok(Query(q)) => Ok((v, q)),
        Err(e) => Err(error_page(Some(&v), &ApiError::new(ErrorCode::InvalidQuery).msg(e.body_text()))),
    }
}

fn page_size(limit: Option<u32>, default: u32) -> Result<usize, ApiError> {
    crate::paging::page_size(Some(limit.unwrap_or(default)))
}

/// The page of tasks the query asks for (its cursor and size), of `status` and `lane`,
/// rendered by `render`; or the error page.
async fn task_page(
    s: &AppState,
    v: &Viewer,
    q: &ListQuery,
    status: Option<TaskStatus>,
    lane: Option<Priority>,
    render: impl FnOnce(&data::Page) -> maud::Markup,
) -> Response {
    let limit = match page_size(q.limit, proto::api::DEFAULT_PAGE) {
        Ok(l) => l,
        Err(e) => return error_page(Some(v), &e),
    };
    match data::tasks(s, v, status, lane, q.cursor.as_deref(), limit).await {
        Ok(p) => html(StatusCode::OK, render(&p)),
        Err(e) => error_page(Some(v), &e),
    }
}

pub async fn fleet(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (v, q) = match start(&s, &headers, &uri, q).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A whole fleet of up to a thousand agents on one page.
    let limit = match page_size(q.limit, proto::api::MAX_PAGE) {
        Ok(l) => l as u32,
        Err(e) => return error_page(Some(&v), &e),
    };
    match data::fleet(&s, &v, q.cursor, limit).await {
        Ok(f) => html(StatusCode::OK, fleet::render(&v, &f, crate::clock::wall_ms())),
        Err(e) => error_page(Some(&v), &e),
    }
}

pub async fn tasks(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (v, q) = match start(&s, &headers, &uri, q).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    task_page(&s, &v, &q, q.status, None, |p| tasks::list(&v, q.status, p, crate::clock::wall_ms())).await
}

pub async fn queue(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (v, q) = match start(&s, &headers, &uri, q).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let now = crate::clock::wall_ms();
    if let Some(lane) = q.lane {
        return task_page(&s, &v, &q, Some(TaskStatus::Queued), Some(lane), |p| tasks::lane(&v, lane, p, now)).await;
    }
    let total = match v.is_admin() {
        true => data::call(&s, &v, proto::api::GetStats)
            .await
            .ok()
            .and_then(|st| st.by_status.get(&TaskStatus::Queued).copied()),
        false => None,
    };
    match data::lanes(&s, &v, 25).await {
        Ok(l) => html(StatusCode::OK, tasks::queue(&v, &l, total, now)),
        Err(e) => error_page(Some(&v), &e),
    }
}

pub async fn dead_letter(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (v, q) = match start(&s, &headers, &uri, q).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let render = |p: &data::Page| tasks::dead_letter(&v, p, crate::clock::wall_ms());
    task_page(&s, &v, &q, Some(TaskStatus::DeadLetter), None, render).await
}

pub async fn task(State(s): State<AppState>, headers: HeaderMap, uri: Uri, Path(task_id): Path<String>) -> Response {
    let (v, _) = match start(&s, &headers, &uri, Ok(Query(ListQuery::default()))).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match data::task(&s, &v, &task_id).await {
        Ok(p) => html(StatusCode::OK, task::render(&v, &p, crate::clock::wall_ms())),
        Err(e) => error_page(Some(&v), &e),
    }
}

/// The confirmation step of a restart.
pub async fn restart(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(agent_id): Path<String>,
) -> Response {
    let (v, _) = match start(&s, &headers, &uri, Ok(Query(ListQuery::default()))).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(e) = crate::authz::admin_only(&v.role, "restarting agents") {
        return error_page(Some(&v), &e);
    }
    match data::agent(&s, &v, &agent_id).await {
        Ok(a) => html(StatusCode::OK, task::restart_confirm(&v, &a)),
        Err(e) => error_page(Some(&v), &e),
    }
}
