//! The dashboard's templates (maud: every interpolated value is HTML-escaped, so task text,
//! questions and ids from agents are shown as text, never run) and the embedded assets.
//!
//! Parts of a page that change live are wrapped by [`live`]: an element with an id and a
//! signature of its content. The script refetches the page when an event concerns it and swaps
//! in only the parts whose signature changed, so a half-typed answer survives a refresh.

pub mod fleet;
pub mod layout;
pub mod task;
pub mod tasks;

use maud::{html, Markup};
use proto::api::{AgentStatus, Priority, TaskStatus};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

pub const APP_JS: &str = include_str!("../assets/app.js");
pub const APP_CSS: &str = include_str!("../assets/app.css");

fn short_hash(s: &str) -> String {
    // SipHash with fixed keys: the same content gives the same signature in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Asset URLs carry their content's hash, so browsers cache them until the binary changes.
pub fn js_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| format!("/console/app.js?v={}", &short_hash(APP_JS)[..12]))
}

pub fn css_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| format!("/console/app.css?v={}", &short_hash(APP_CSS)[..12]))
}

/// A part of the page the script may replace when its content changed.
pub fn live(id: &str, inner: Markup) -> Markup {
    let sig = short_hash(&inner.0);
    html! { div id=(id) data-live="" data-sig=(sig) { (inner) } }
}

/// Text cut to `max` characters (with an ellipsis), for table cells.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

pub use human::{long_duration as dur, utc};

/// `12 s ago`, with the exact time as a tooltip.
pub fn ago(now: u64, at: u64) -> Markup {
    html! { time datetime=(at) title=(utc(at)) { (dur(now.saturating_sub(at))) " ago" } }
}

pub use human::bytes;

pub fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

pub fn task_status(s: TaskStatus) -> Markup {
    html! { span class={ "badge st-" (s.as_str()) } data-status=(s.as_str()) { (s.as_str().replace('_', " ")) } }
}

pub fn agent_status(s: AgentStatus) -> Markup {
    html! { span class={ "badge ag-" (s.as_str()) } data-status=(s.as_str()) { (s.as_str()) } }
}

pub fn priority(p: Priority) -> Markup {
    html! { span class={ "prio p-" (p.as_str()) } { (p.as_str()) } }
}

pub fn needs_input_badge() -> Markup {
    html! { span.badge.needs-input { "needs input" } }
}

/// A JSON value as people read it: strings as they are, the rest pretty-printed.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// A progress line on one line.
pub fn progress_text(v: &serde_json::Value) -> String {
    clip(&proto::api::progress_text(v), 2000)
}

/// The path of a task's page.
pub fn task_href(task_id: &str) -> String {
    format!("/tasks/{}", proto::api::encode(task_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped_and_formats_read_well() {
        let evil = "<script>alert(1)</script>\"'&";
        let m = html! { p title=(evil) { (evil) } };
        assert_eq!(
            m.into_string(),
            "<p title=\"&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;\">&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;</p>"
        );
        assert_eq!(task_href("a b/../c"), "/tasks/a%20b%2F..%2Fc");
        assert_eq!(utc(20_779 * 86_400_000 + 3_723_000), "2026-11-22 01:02:03 UTC");
        assert_eq!(
            (dur(59_999), dur(60_000), dur(3_660_000), dur(90_000_000)),
            ("59 s".into(), "1 min".into(), "1 h 1 min".into(), "1 d 1 h".into())
        );
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!((usd(0.25), usd(0.001)), ("$0.25".into(), "$0.0010".into()));
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        let a = live("x", html! { "one" });
        let b = live("x", html! { "two" });
        assert_ne!(a.0, b.0);
        assert_eq!(a.0, live("x", html! { "one" }).0);
    }
}
