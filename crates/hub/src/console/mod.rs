//! The dashboard, served by the hub at `/`: server-rendered pages (maud, every value escaped)
//! with a small embedded script that follows the event stream and refetches what changed.
//!
//! - `session.rs`: login sessions (opaque cookie → token in memory, bounded, expiring).
//! - `csrf.rs`: the `Origin` check every POST passes.
//! - `data.rs`: what a page shows, read from the core (agents, stats) and the store's reader
//!   (tasks), with the agent token's narrower view.
//! - `pages.rs`: the GET handlers; `actions.rs`: the POST handlers (login, submit, cancel, retry,
//!   answer, restart); `live.rs`: the event stream for a session.
//! - `view/`: the templates; `assets/`: the CSS and the script, embedded with `include_str!`.
//!
//! Every request re-checks its session's token with the core (`Authenticate`), so a
//! revoked token ends its sessions at once; no page shows data, and no action runs, without one.

mod actions;
mod csrf;
mod data;
mod live;
mod pages;
pub mod session;
mod view;

use crate::auth::Role;
use crate::config::ConsoleLimits;
use crate::core::api::{Authenticate, CoreRequest};
use crate::http::AppState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use proto::api::{ApiError, ErrorCode};
use std::sync::Mutex;

/// The dashboard's shared state: its sessions and how it is served.
pub struct Console {
    sessions: Mutex<session::Sessions>,
    limits: ConsoleLimits,
    /// The hub serves TLS: cookies are Secure, origins must be https.
    tls: bool,
}

impl Console {
    pub fn new(limits: ConsoleLimits, tls: bool) -> Console {
        let ttl = limits.session_ttl.as_millis() as u64;
        let sessions = session::Sessions::new(limits.max_sessions, limits.max_sessions_per_token, ttl);
        Console { sessions: Mutex::new(sessions), limits, tls }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, session::Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cookie_name(&self) -> &'static str {
        if self.tls {
            session::COOKIE_TLS
        } else {
            session::COOKIE
        }
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The dashboard's gauge for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let n = self.session_count();
        crate::metrics::sample(
            out,
            "agentcom_console_sessions",
            crate::metrics::Kind::Gauge,
            "Dashboard sessions open.",
            n,
        );
    }
}

/// Who is looking: the role the core gave the session's token.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub role: Role,
    token: String,
    /// The event stream's position before the page's data was read: the page follows the
    /// stream from there, so nothing between the read and the stream's start is missed.
    pub last_event: String,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin)
    }
    /// The agent id of an agent token.
    pub fn agent(&self) -> Option<&str> {
        match &self.role {
            Role::Admin => None,
            Role::Agent(a) => Some(a),
        }
    }
}

/// The dashboard's routes, merged into the hub's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::fleet))
        .route("/queue", get(pages::queue))
        .route("/tasks", get(pages::tasks).post(actions::submit))
        .route("/tasks/{task_id}", get(pages::task))
        .route("/tasks/{task_id}/cancel", post(actions::cancel))
        .route("/tasks/{task_id}/retry", post(actions::retry))
        .route("/tasks/{task_id}/answer", post(actions::answer))
        .route("/tasks/{task_id}/review", post(actions::review))
        .route("/dead-letter", get(pages::dead_letter))
        .route("/agents/{agent_id}/restart", get(pages::restart).post(actions::restart))
        .route("/login", post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/console/events", get(live::events))
        .route("/console/app.js", get(|| async { asset(view::APP_JS, "text/javascript; charset=utf-8") }))
        .route("/console/app.css", get(|| async { asset(view::APP_CSS, "text/css; charset=utf-8") }))
        .layer(axum::middleware::map_response(protect))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    // Pages link assets with their content hash, so a new binary's assets are fetched anew.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], body)
        .into_response()
}

/// Headers on every dashboard response: only our own script and style run, nothing frames the
/// pages, nothing is sniffed or cached (pages hold data), no address leaks to another site in a Referer.
async fn protect(mut r: Response) -> Response {
    let h = r.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it browsers send `Origin: null` on POSTs, which the CSRF check refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The core and the store's reader that serve this hub's data: the console's one way to them.
pub(crate) fn serving(
    s: &AppState,
) -> Result<(crate::core::CoreHandle, std::sync::Arc<dyn crate::store::Reader>), ApiError> {
    let serving = s.serving().map_err(|_| {
        ApiError::new(proto::api::ErrorCode::NotLeader).msg("this hub stopped leading; reload to reach the leader")
    })?;
    Ok((serving.core, serving.reader))
}

/// Asks the core with a token (every console request goes through here or [`data::read`]).
pub(crate) async fn ask<R: CoreRequest>(s: &AppState, token: &str, req: R) -> Result<R::Answer, ApiError> {
    let (core, _) = serving(s)?;
    core.ask(Some(token.to_string()), req).await
}

/// Why there is no viewer: shown on the login form.
pub(crate) enum NoSession {
    /// No cookie, or an unknown or expired one.
    Missing,
    /// The token no longer authenticates (revoked, or the admin token changed).
    Revoked(String),
    /// A login attempt that failed, and why.
    Refused(String),
    /// The core could not answer (shutting down, overloaded).
    Unavailable(ApiError),
}

/// The viewer of a request, from its session cookie and the core's word on the token.
pub(crate) async fn viewer(s: &AppState, headers: &HeaderMap) -> Result<Viewer, NoSession> {
    let c = &s.console;
    let Some(id) = session::cookie_id(headers, c.cookie_name()) else { return Err(NoSession::Missing) };
    let Some(sess) = c.sessions().get(&id, crate::clock::wall_ms()) else { return Err(NoSession::Missing) };
    let last_event = s.bus.last_id();
    match ask(s, &sess.token, Authenticate).await {
        Ok(role) => Ok(Viewer { role, token: sess.token, last_event }),
        Err(e) if matches!(e.error, ErrorCode::InvalidToken | ErrorCode::Unauthorized) => {
            c.sessions().remove_token(&sess.token);
            Err(NoSession::Revoked(e.message.unwrap_or_default()))
        }
        Err(e) => Err(NoSession::Unavailable(e)),
    }
}

/// The page for a request without a session: the login form and nothing else.
pub(crate) fn login_page(why: NoSession, next: &str) -> Response {
    let (status, note) = match why {
        NoSession::Missing => (StatusCode::UNAUTHORIZED, None),
        NoSession::Revoked(m) => (StatusCode::UNAUTHORIZED, Some(format!("Your session ended: {m}"))),
        NoSession::Refused(m) => (StatusCode::UNAUTHORIZED, Some(m)),
        NoSession::Unavailable(e) => (crate::http::status_of(e.error), Some(format!("The hub cannot answer: {e}"))),
    };
    html(status, view::layout::login(note.as_deref(), next))
}

pub(crate) fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// An error page for a signed-in viewer.
pub(crate) fn error_page(v: Option<&Viewer>, e: &ApiError) -> Response {
    html(crate::http::status_of(e.error), view::layout::error(v, e))
}

/// Where to go back to after login: a path on this hub only (never `//host` or a scheme).
pub(crate) fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 2048
        && !next.chars().any(char::is_control)
        && !next.starts_with("/login")
        && !next.starts_with("/logout")
        && !next.starts_with("/console/");
    if ok {
        next.to_string()
    } else {
        "/".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_returns_only_to_pages_of_this_hub() {
        assert_eq!(safe_next("/tasks/t-1?x=1"), "/tasks/t-1?x=1");
        for bad in ["//evil.example/", "https://evil.example", "/\\evil", "/login", "evil", "/a\nb", "/console/events"]
        {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }
}
