//! The page shell (navigation, who is signed in, the live indicator), the login form and the
//! error page.

use super::{css_url, js_url};
use crate::console::Viewer;
use maud::{html, Markup, DOCTYPE};
use proto::api::ApiError;

/// Which page this is, for the script (what to follow) and the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Fleet,
    Queue,
    Tasks,
    Task,
    DeadLetter,
    Other,
}

impl ViewKind {
    fn name(self) -> &'static str {
        match self {
            ViewKind::Fleet => "fleet",
            ViewKind::Queue => "queue",
            ViewKind::Tasks => "tasks",
            ViewKind::Task => "task",
            ViewKind::DeadLetter => "dead_letter",
            ViewKind::Other => "other",
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · agentcom" }
            link rel="stylesheet" href=(css_url());
            script src=(js_url()) defer {}
        }
    }
}

/// A page for a signed-in viewer. `task_id` names the task a task page follows.
pub fn page(v: &Viewer, kind: ViewKind, title: &str, task_id: Option<&str>, body: Markup) -> Markup {
    let nav = [
        (ViewKind::Fleet, "/", "Fleet"),
        (ViewKind::Queue, "/queue", "Queue"),
        (ViewKind::Tasks, "/tasks", "Tasks"),
        (ViewKind::DeadLetter, "/dead-letter", "Dead letter"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-view=(kind.name()) data-task-id=[task_id] data-last-event-id=(v.last_event) data-role=(if v.is_admin() { "admin" } else { "agent" }) {
                header.top {
                    a.brand href="/" { "agentcom" }
                    nav {
                        @for (k, href, label) in nav {
                            a href=(href) aria-current=[(k == kind).then_some("page")] { (label) }
                        }
                    }
                    span.spacer {}
                    @if kind != ViewKind::Other {
                        span #live-status .live.off title="Live updates from the hub's event stream" { "connecting…" }
                    }
                    span.who {
                        @match v.agent() {
                            None => { "admin" }
                            Some(a) => { "agent " strong { (a) } " · read-only" }
                        }
                    }
                    form.inline method="post" action="/logout" { button.link type="submit" { "Log out" } }
                }
                div #session-ended .banner.error hidden { "Your session ended. " a href="/" { "Log in again" } }
                main { (body) }
            }
        }
    }
}

/// The only thing a request without a session sees.
pub fn login(note: Option<&str>, next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body data-view="login" {
                main.login {
                    h1 { "agentcom" }
                    p { "Log in with the hub's admin token (" code { "admin.token" } " in its data dir) or an agent token. An agent token sees only its own tasks." }
                    @if let Some(n) = note { p.banner.error { (n) } }
                    form #login method="post" action="/login" {
                        label for="token" { "Token" }
                        input #token type="password" name="token" required autocomplete="off" maxlength=(proto::MAX_TOKEN) autofocus;
                        input type="hidden" name="next" value=(next);
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// An action or page that failed, with the hub's reason.
pub fn error(v: Option<&Viewer>, e: &ApiError) -> Markup {
    let body = html! {
        h1 { "Not done" }
        p.banner.error #error-message { (e.to_string()) }
        p { a href="/" { "Back to the fleet" } }
    };
    match v {
        Some(v) => page(v, ViewKind::Other, "Not done", None, body),
        None => html! {
            (DOCTYPE)
            html lang="en" { (head("Not done")) body data-view="other" { main { (body) } } }
        },
    }
}
