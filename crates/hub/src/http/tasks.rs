//! The task routes: submit, list, one task, its diff, retry, cancel, answer, stats, and the
//! integration queue (approve, reject, the queue per target).

use super::*;

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

pub(super) async fn submit(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
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
    create(&s, &headers, task).await
}

pub(super) async fn list(
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

pub(super) async fn list_tasks(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListTasks>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => list(&s, &headers, q.status, q.limit, q.cursor).await,
        Err(e) => bad_query(e),
    }
}

pub(super) async fn dead_letter(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListDeadLetter>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => list(&s, &headers, Some(TaskStatus::DeadLetter), q.limit, q.cursor).await,
        Err(e) => bad_query(e),
    }
}

pub(super) async fn stats(State(s): State<AppState>, headers: HeaderMap) -> Response {
    call(&s, &headers, proto::api::GetStats).await
}

pub(super) async fn get_task(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let role = match role(&s, &headers).await {
        Ok(role) => role,
        Err(r) => return r,
    };
    let wanted = id.clone();
    let found = read(&s, move |r| {
        let Some(task) = r.task(&wanted)? else { return Ok(None) };
        let children = crate::store::read_children(r, &task.head.children)?;
        Ok(Some((task, r.transitions(&wanted)?, children)))
    })
    .await;
    match found {
        Ok(Some((task, mut history, children))) => {
            let mut view = task.view();
            if crate::authz::withhold_content(&role, &mut view) {
                history.clear();
            }
            Json(TaskDetail { task: view, history, children }).into_response()
        }
        Ok(None) => error(ApiError::new(ErrorCode::NotFound).msg(format!("no task {id}"))),
        Err(r) => r,
    }
}

/// `?format=patch`: the patch alone, as `git apply` reads it.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct DiffQuery {
    #[serde(default)]
    format: Option<String>,
}

pub(super) async fn diff(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Response {
    let raw = match q {
        Ok(Query(q)) => match q.format.as_deref() {
            None | Some("json") => false,
            Some("patch") => true,
            Some(other) => {
                return error(
                    ApiError::new(ErrorCode::InvalidQuery)
                        .msg(format!("format: {:?} is not one of json, patch", human::printable(other))),
                )
            }
        },
        Err(e) => return bad_query(e),
    };
    let role = match role(&s, &headers).await {
        Ok(role) => role,
        Err(r) => return r,
    };
    let wanted = id.clone();
    let found = read(&s, move |r| {
        let Some(task) = r.task(&wanted)? else { return Ok(None) };
        Ok(Some((task.head, r.patch(&wanted)?)))
    })
    .await;
    let (head, patch) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return error(ApiError::new(ErrorCode::NotFound).msg(format!("no task {id}"))),
        Err(r) => return r,
    };
    if let Role::Agent(me) = &role {
        if head.submitted_by != *me && head.assigned_to.as_deref() != Some(me.as_str()) {
            return error(
                ApiError::new(ErrorCode::Forbidden)
                    .msg(format!("an agent token (agent {me}) reads the diff only of tasks it submitted or holds")),
            );
        }
    }
    // The patch of an earlier attempt is not shown with a later attempt's change.
    let patch = patch.filter(|_| head.change.is_some());
    let diff = TaskDiff {
        task_id: head.task_id,
        change: head.change,
        generation: patch.as_ref().map(|p| p.generation),
        cut: patch.as_ref().is_some_and(|p| p.cut),
        patch: patch.map(|p| p.patch).unwrap_or_default(),
    };
    if raw {
        let cut = if diff.cut { "true" } else { "false" };
        return (
            [
                (header::CONTENT_TYPE, "text/x-diff; charset=utf-8"),
                (header::HeaderName::from_static("x-agentcom-patch-cut"), cut),
            ],
            diff.patch,
        )
            .into_response();
    }
    Json(diff).into_response()
}

pub(super) async fn approve(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, proto::api::ApproveTask { task_id: id }).await
}

pub(super) async fn reject(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    call_json(&s, &headers, body, SMALL_BODY, |m| proto::api::RejectTask::from_json(&id, m)).await
}

pub(super) async fn integrations(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<proto::api::ListIntegrations>, QueryRejection>,
) -> Response {
    call_query(&s, &headers, q).await
}

pub(super) async fn retry(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, proto::api::RetryTask { task_id: id }).await
}

pub(super) async fn cancel(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    call(&s, &headers, proto::api::CancelTask { task_id: id }).await
}

pub(super) async fn answer(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let limit = SMALL_BODY + proto::MAX_ANSWER * 4;
    call_json(&s, &headers, body, limit, |m| proto::api::AnswerTask::from_json(&task_id, m)).await
}
