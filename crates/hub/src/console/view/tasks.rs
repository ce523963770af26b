//! Task listings: every task (by status), the queue lane by lane, the dead letter queue.

use super::layout::{page, ViewKind};
use super::{ago, clip, live, needs_input_badge, priority, task_href, task_status};
use crate::console::data::{Lanes, Page};
use crate::console::Viewer;
use maud::{html, Markup};
use proto::api::{Priority, TaskStatus, TaskView};

/// What a listing's rows offer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Plain,
    /// A retry button on each row (the dead letter queue, for the admin).
    Retry,
}

fn table(id: &str, tasks: &[TaskView], now: u64, rows: Rows) -> Markup {
    html! {
        table.grid id=(id) {
            thead { tr {
                th { "Task" } th { "Status" } th { "Priority" } th { "Description" } th { "Agent" }
                th { "Submitted by" } th { "Attempts" } th { "Updated" }
                @if rows == Rows::Retry { th {} }
            } }
            tbody {
                @for t in tasks {
                    tr data-task-id=(t.task_id) {
                        td { a href=(task_href(&t.task_id)) { code { (clip(&t.task_id, 40)) } } }
                        td { (task_status(t.status)) @if t.needs_input.is_some() { " " (needs_input_badge()) } }
                        td { (priority(t.priority)) }
                        td.desc { (clip(&t.description, 140)) }
                        td { (t.assigned_to.as_deref().map(|a| clip(a, 40)).unwrap_or_else(|| "—".into())) }
                        td { (clip(&t.submitted_by, 40)) }
                        td.num { (t.attempts) @if t.failures > 0 { " (" (t.failures) " failed)" } }
                        td { (ago(now, t.updated_at)) }
                        @if rows == Rows::Retry {
                            td { form.inline method="post" action={ (task_href(&t.task_id)) "/retry" } {
                                input type="hidden" name="back" value="/dead-letter";
                                button.small type="submit" { "Retry" }
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn pager(base: &str, p: &Page) -> Markup {
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        @if p.cut_short {
            p.muted { "Looked through " (crate::console::data::SCAN_BUDGET) " tasks for this page; older ones may match too." }
        }
        p.pager {
            a href=(base) { "Newest" }
            @if let Some(c) = &p.next { " · " a #next-page href={ (base) (sep) "cursor=" (c) } { "Older →" } }
        }
    }
}

fn empty(what: &str) -> Markup {
    html! { p.muted.empty { (what) } }
}

/// `/tasks`: every task the viewer may see, newest first, by status.
pub fn list(v: &Viewer, status: Option<TaskStatus>, p: &Page, now: u64) -> Markup {
    let base = match status {
        Some(s) => format!("/tasks?status={}", s.as_str()),
        None => "/tasks".into(),
    };
    let body = html! {
        h1 { @match v.agent() { Some(a) => { "Tasks of agent " (a) }, None => "Tasks" } }
        @if v.agent().is_some() { p.muted { "Tasks this agent submitted or holds." } }
        nav.tabs {
            a href="/tasks" aria-current=[status.is_none().then_some("page")] { "all" }
            @for s in TaskStatus::ALL {
                a href={ "/tasks?status=" (s.as_str()) } aria-current=[(status == Some(s)).then_some("page")] { (s.as_str().replace('_', " ")) }
            }
        }
        (live("task-list", html! {
            @if p.tasks.is_empty() { (empty("No tasks here.")) } @else { (table("tasks", &p.tasks, now, Rows::Plain)) }
            (pager(&base, p))
        }))
        @if v.is_admin() { (super::fleet::submit_form()) }
    };
    page(v, ViewKind::Tasks, "Tasks", None, body)
}

/// `/queue`: queued tasks lane by lane.
pub fn queue(v: &Viewer, lanes: &Lanes, queued_total: Option<u64>, now: u64) -> Markup {
    let body = html! {
        h1 { "Queue" }
        p.muted {
            "Queued tasks by priority lane, newest first; agents take urgent before high before normal before low, oldest first within a lane."
            @if let Some(n) = queued_total { " " strong #queued-total { (n) } " queued in all." }
        }
        (live("queue-lanes", html! {
            @if lanes.cut_short { p.muted { "Looked through the newest " (crate::console::data::SCAN_BUDGET) " queued tasks." } }
            @for (lane, tasks, more) in &lanes.lanes {
                section.lane data-lane=(lane.as_str()) {
                    h2 { (priority(*lane)) " " small.muted { (tasks.len()) @if *more { "+" } " shown" } }
                    @if tasks.is_empty() { (empty("Nothing queued in this lane.")) } @else { (table(&format!("lane-{}", lane.as_str()), tasks, now, Rows::Plain)) }
                    @if *more { p.pager { a href={ "/queue?lane=" (lane.as_str()) } { "All of lane " (lane.as_str()) " →" } } }
                }
            }
        }))
    };
    page(v, ViewKind::Queue, "Queue", None, body)
}

/// `/queue?lane=L`: one lane, paged.
pub fn lane(v: &Viewer, lane: Priority, p: &Page, now: u64) -> Markup {
    let base = format!("/queue?lane={}", lane.as_str());
    let body = html! {
        h1 { "Queue: lane " (priority(lane)) }
        p { a href="/queue" { "← every lane" } }
        (live("queue-lane", html! {
            @if p.tasks.is_empty() { (empty("Nothing queued in this lane.")) } @else { (table(&format!("lane-{}", lane.as_str()), &p.tasks, now, Rows::Plain)) }
            (pager(&base, p))
        }))
    };
    page(v, ViewKind::Queue, "Queue", None, body)
}

/// `/dead-letter`: tasks that failed more often than they may; the admin can queue them again.
pub fn dead_letter(v: &Viewer, p: &Page, now: u64) -> Markup {
    let rows = if v.is_admin() { Rows::Retry } else { Rows::Plain };
    let body = html! {
        h1 { "Dead letter" }
        p.muted { "Tasks that failed more times than their max_retries allow. Retry queues one again with a fresh count." }
        (live("dead-letter", html! {
            @if p.tasks.is_empty() { (empty("No dead-lettered tasks.")) } @else { (table("dead-letter-tasks", &p.tasks, now, rows)) }
            (pager("/dead-letter", p))
        }))
    };
    page(v, ViewKind::DeadLetter, "Dead letter", None, body)
}
