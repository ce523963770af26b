//! `GET /console/events`: the event stream for a dashboard session. It is `GET /api/events`
//! itself (same bus, window, resume with `Last-Event-ID`, audience and slow-reader rules), asked
//! with the session's token; and it ends when the session does: logout, expiry, or a token that
//! no longer authenticates (checked every `console_recheck_ms`).

use super::session::cookie_id;
use crate::core::api::Authenticate;
use crate::http::AppState;
use crate::server::ConnTicket;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use futures_util::StreamExt;
use proto::api::{ApiError, ErrorCode, FollowEvents};
use std::time::Duration;

pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ticket: Option<Extension<ConnTicket>>,
    q: Result<Query<FollowEvents>, QueryRejection>,
) -> Response {
    let c = &s.console;
    let no_session = || {
        let e = ApiError::new(ErrorCode::Unauthorized).msg("no dashboard session (log in at /)");
        crate::http::error(e)
    };
    let Some(id) = cookie_id(&headers, c.cookie_name()) else { return no_session() };
    let Some(sess) = c.sessions().get(&id, crate::clock::wall_ms()) else { return no_session() };
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", sess.token)) else { return no_session() };
    let mut asked = HeaderMap::new();
    asked.insert(header::AUTHORIZATION, bearer);
    if let Some(last) = headers.get("last-event-id") {
        asked.insert("last-event-id", last.clone());
    }
    let r = crate::feed::events(State(s.clone()), asked, ticket, q).await;
    if r.status() == StatusCode::UNAUTHORIZED {
        c.sessions().remove_token(&sess.token);
        return r;
    }
    if !r.status().is_success() {
        return r;
    }
    let (parts, body) = r.into_parts();
    let stream = body.into_data_stream().take_until(Box::pin(session_ends(s.clone(), id, sess.token, sess.expires_at)));
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Resolves when the session is over: expired, logged out, or its token revoked.
async fn session_ends(s: AppState, id: String, token: String, expires_at: u64) {
    let left = expires_at.saturating_sub(crate::clock::wall_ms());
    let expiry = tokio::time::sleep(Duration::from_millis(left));
    tokio::pin!(expiry);
    let mut tick = tokio::time::interval(s.console.limits.recheck);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut expiry => return,
            _ = tick.tick() => {
                if s.console.sessions().get(&id, crate::clock::wall_ms()).is_none() {
                    return;
                }
                if let Err(e) = super::ask(&s, &token, Authenticate).await {
                    if matches!(e.error, ErrorCode::InvalidToken | ErrorCode::Unauthorized) {
                        s.console.sessions().remove_token(&token);
                        return;
                    }
                }
            }
        }
    }
}
