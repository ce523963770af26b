//! The agent routes: agents, restart, unlimit, checkpoints, tokens, usage.

use super::*;

pub(super) async fn usage(
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

pub(super) async fn agents(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListAgents>, QueryRejection>,
) -> Response {
    call_query(&s, &headers, q).await
}

pub(super) async fn agent(State(s): State<AppState>, headers: HeaderMap, Path(agent_id): Path<String>) -> Response {
    call(&s, &headers, proto::api::GetAgent { agent_id }).await
}

/// A response naming the problem when `id` is not a valid agent id.
fn bad_agent_id(id: &str) -> Option<Response> {
    proto::api::check_agent_id(id).err().map(|e| invalid(vec![e]))
}

pub(super) async fn create_token(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let m = match read_json(body, SMALL_BODY, s.net.body_read_timeout).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match CreateToken::from_json(m) {
        Ok(req) => create(&s, &headers, req).await,
        Err(errors) => invalid(errors),
    }
}

pub(super) async fn list_tokens(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListTokens>, QueryRejection>,
) -> Response {
    call_query(&s, &headers, q).await
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
) -> Response {
    call(&s, &headers, proto::api::RevokeTokens { agent_id }).await
}

pub(super) async fn restart_agent(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
    body: axum::body::Body,
) -> Response {
    call_json(&s, &headers, body, SMALL_BODY, |m| RestartAgent::from_json(&agent_id, m)).await
}

pub(super) async fn unlimit_agent(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
) -> Response {
    call(&s, &headers, proto::api::UnlimitAgent { agent_id }).await
}

pub(super) async fn put_checkpoint(
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
    call(&s, &headers, proto::api::PutCheckpoint { agent_id, checkpoint: m }).await
}

pub(super) async fn get_checkpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(agent_id): Path<String>,
) -> Response {
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
