//! One task: what it is, where it stands, its open question (and the form to answer it), its
//! progress lines as they come, result, usage, the change on its branch (diffstat and patch)
//! and history; the restart confirmation too.

use super::layout::{page, ViewKind};
use super::{ago, clip, json_text, live, priority, progress_text, task_href, task_status, usd, utc};
use crate::console::data::TaskPage;
use crate::console::Viewer;
use maud::{html, Markup};
use proto::api::{AgentView, TaskStatus, TaskView};

fn facts(t: &TaskView, now: u64) -> Markup {
    html! {
        dl.facts {
            dt { "Status" } dd #task-status { (task_status(t.status)) }
            dt { "Priority" } dd { (priority(t.priority)) }
            dt { "Agent" } dd #task-agent { (t.assigned_to.as_deref().unwrap_or("—")) }
            dt { "Attempts" } dd { (t.attempts) " (" (t.failures) " failed, max_retries " (t.max_retries) ")" }
            dt { "Submitted by" } dd { (t.submitted_by) }
            dt { "Created" } dd { (utc(t.created_at)) }
            dt { "Updated" } dd { (ago(now, t.updated_at)) }
            @if let Some(c) = t.completed_at { dt { "Finished" } dd { (utc(c)) } }
            @if let Some(r) = t.retry_at { dt { "Retry at" } dd { (utc(r)) } }
            @if !t.needed_capabilities.is_empty() { dt { "Needs" } dd { (t.needed_capabilities.join(", ")) } }
            @if let Some(a) = &t.assign_to { dt { "Pinned to" } dd { (a) } }
            @if let Some(e) = &t.last_error { dt { "Last error" } dd.error { (clip(e, 4000)) } }
            @if t.limited_attempts > 0 { dt { "Limited" } dd #task-limited { (t.limited_attempts) " attempt(s) stopped by a model provider's limit (not failures)" } }
            @if let Some(nb) = t.not_before { dt { "Not before" } dd { (utc(nb)) @if let Some(p) = &t.prefer_agent { " (for " (p) ", which holds its session)" } } }
            @if t.max_cost_usd.is_some() || t.max_tokens.is_some() {
                dt { "Caps" } dd #task-caps {
                    @if let Some(c) = t.max_cost_usd { "max " (usd(c)) " " }
                    @if let Some(n) = t.max_tokens { "max " (n) " tokens" }
                }
            }
            @if let Some(s) = t.sessions.last() { dt { "Session" } dd { code { (s.session_id) } " on " (s.agent_id) " (attempt " (s.generation) ")" } }
        }
    }
}

/// The open question, and the form to answer it when the viewer may.
fn question(v: &Viewer, t: &TaskView, now: u64) -> Markup {
    let may_answer = v.is_admin() || v.agent() == Some(t.submitted_by.as_str());
    html! {
        @if let Some(q) = &t.needs_input {
            section.question #question data-request-id=(q.request_id) {
                h2 { "The agent asks " small.muted { "(" (ago(now, q.since)) ")" } }
                p.q #question-text { (q.question) }
                @if !q.options.is_empty() && !may_answer {
                    ul.options { @for o in &q.options { li { code { (o) } } } }
                }
                @if may_answer {
                    form #answer method="post" action={ (task_href(&t.task_id)) "/answer" } {
                        input type="hidden" name="request_id" value=(q.request_id);
                        @if !q.options.is_empty() {
                            div.choices {
                                @for o in &q.options {
                                    label.choice { input type="radio" name="choice" value=(o); " " (o) }
                                }
                            }
                        }
                        label { "Answer " @if !q.options.is_empty() { small { "(or pick an option above)" } } textarea #answer-text name="answer" rows="3" maxlength=(proto::MAX_ANSWER) {} }
                        button type="submit" { "Send the answer" }
                    }
                } @else {
                    p.muted { "Only the admin or the task's submitter (" (t.submitted_by) ") may answer." }
                }
            }
        }
        @if let Some(a) = &t.answer {
            p.banner #answer-pending {
                "Answered by " (a.answered_by) " " (ago(now, a.answered_at)) ": " q { (clip(&a.answer, 500)) }
                " — waiting for the agent's sidecar to confirm it wrote the answer."
            }
        }
    }
}

fn actions(v: &Viewer, t: &TaskView) -> Markup {
    let href = task_href(&t.task_id);
    let cancellable = !matches!(t.status, TaskStatus::Completed | TaskStatus::Cancelled);
    let retryable = matches!(t.status, TaskStatus::DeadLetter | TaskStatus::Cancelled | TaskStatus::WaitingRetry);
    html! {
        @if v.is_admin() && (cancellable || retryable) {
            div.actions {
                @if retryable {
                    form.inline method="post" action={ (href) "/retry" } { button #retry type="submit" { "Retry" } }
                }
                @if cancellable {
                    form.inline method="post" action={ (href) "/cancel" } { button.danger #cancel type="submit" { "Cancel task" } }
                }
            }
        }
    }
}

fn outcome(t: &TaskView) -> Markup {
    html! {
        @if let Some(r) = &t.result {
            h2 { "Result" }
            pre #task-result { (clip(&json_text(r), 20_000)) }
        }
        @if !t.report.is_empty() {
            h2 { "Report" }
            pre { (clip(&json_text(&serde_json::Value::Object(t.report.clone())), 20_000)) }
        }
        @if let Some(u) = &t.usage {
            h2 { "Usage" }
            table.grid.narrow #task-usage {
                tbody {
                    tr { th { "Input tokens" } td.num { (u.input_tokens.unwrap_or(0)) } }
                    tr { th { "Output tokens" } td.num { (u.output_tokens.unwrap_or(0)) } }
                    tr { th { "Total tokens" } td.num { (u.tokens()) } }
                    tr { th { "Cost" } td.num { (usd(u.cost_usd.unwrap_or(0.0))) } }
                    @if let Some(m) = &u.model { tr { th { "Model" } td { (m) } } }
                }
            }
        }
    }
}

/// Where the task's change stands on its way to the target branch, and the review form when a
/// person decides.
fn integration(v: &Viewer, t: &TaskView) -> Markup {
    let Some(i) = &t.integration else { return html! {} };
    let waiting = i.status == proto::api::IntegrationStatus::WaitingReview;
    html! {
        section #integration {
            h2 { "Integration" }
            dl.facts {
                dt { "Status" } dd #integration-status { span class={ "badge int-" (i.status.as_str()) } { (i.status.as_str()) } " into " code { (i.target) } }
                dt { "Attempts" } dd { (i.attempts) }
                @if let Some(sha) = &i.merged_sha { dt { "Merged at" } dd { code { (short(sha)) } } }
                @if let Some(sha) = &i.tested_sha { dt { "Checked" } dd { code { (short(sha)) } } }
                @if !i.conflicts.is_empty() { dt { "Conflicts" } dd { @for c in &i.conflicts { code { (c) } " " } } }
            }
            @if let Some(tail) = &i.output_tail { pre #integration-output { (clip(tail, 8000)) } }
            @if waiting && v.is_admin() {
                form #review method="post" action={ (task_href(&t.task_id)) "/review" } {
                    label { "Reason " small { "(to reject: the agent reads it)" } textarea name="reason" rows="2" maxlength=(proto::MAX_REASON) {} }
                    div.actions {
                        button #approve type="submit" name="decision" value="approve" { "Approve and merge" }
                        button.danger #reject type="submit" name="decision" value="reject" { "Reject" }
                    }
                }
            }
        }
    }
}

/// Patch bytes a page shows (the route `/api/tasks/:id/diff` has it all).
const PATCH_SHOWN: usize = 256 * 1024;

/// The change the latest attempt committed: branch, diffstat, files, and the patch with its
/// added and removed lines marked.
fn change(p: &TaskPage) -> Markup {
    let Some(c) = &p.detail.task.change else { return html! {} };
    let patch = p.patch.as_ref();
    let text = patch.map(|p| p.patch.as_str()).unwrap_or("");
    let mut end = text.len().min(PATCH_SHOWN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = patch.is_some_and(|p| p.cut) || end < text.len();
    html! {
        section #change {
            h2 { "Change" }
            dl.facts {
                dt { "Branch" } dd { code #change-branch { (c.branch) } }
                dt { "Commits" } dd { (c.commits) " (" code { (short(&c.base_sha)) } " → " code #change-head { (short(&c.head_sha)) } ")" }
                dt { "Diffstat" } dd #change-stat {
                    (c.files_changed) " files changed, "
                    span.good { "+" (c.insertions) } " "
                    span.bad { "−" (c.deletions) }
                }
            }
            @if !c.files.is_empty() {
                details {
                    summary { (c.files.len()) " files" @if (c.files.len() as u64) < c.files_changed { " (of " (c.files_changed) ")" } }
                    ul #change-files { @for f in &c.files { li { code { (f) } } } }
                }
            }
            @if !text.is_empty() {
                pre.diff #change-patch {
                    @for line in text[..end].lines() {
                        @let class = diff_class(line);
                        span class=(class) { (line) } "\n"
                    }
                }
                @if cut { p.muted #patch-cut { "The patch is cut here; the branch has all of it." } }
            }
        }
    }
}

/// A commit id as `git log --oneline` shows it (ids are checked hex at the edge).
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn diff_class(line: &str) -> &'static str {
    match line.as_bytes().first() {
        _ if line.starts_with("+++") || line.starts_with("---") => "file",
        Some(b'+') => "add",
        Some(b'-') => "del",
        Some(b'@') => "hunk",
        _ if line.starts_with("diff ") => "file",
        _ => "ctx",
    }
}

/// Transitions shown at most (a task retried by hand again and again has no bound).
const HISTORY_SHOWN: usize = 500;

fn history(p: &TaskPage) -> Markup {
    let all = &p.detail.history;
    let shown = &all[all.len().saturating_sub(HISTORY_SHOWN)..];
    html! {
        h2 { "History" }
        @if shown.len() < all.len() { p.muted { "The latest " (shown.len()) " of " (all.len()) " transitions." } }
        table.grid #task-history {
            thead { tr { th { "When" } th { "From" } th { "To" } th { "Why" } th { "Agent" } th { "Gen." } } }
            tbody {
                @for h in shown {
                    tr {
                        td { (utc(h.at)) }
                        td { @match h.from { Some(f) => (task_status(f)), None => "—" } }
                        td { (task_status(h.to)) }
                        td { (clip(&h.reason, 500)) }
                        td { (h.agent_id.as_deref().unwrap_or("—")) }
                        td.num { (h.generation) }
                    }
                }
            }
        }
    }
}

/// The tree below a task, a row each, indented by depth.
fn tree_rows(children: &[proto::api::ChildTask], depth: usize) -> Markup {
    html! {
        @for c in children {
            tr data-task=(c.task_id) data-depth=(depth) {
                td { ("\u{a0}\u{a0}\u{a0}".repeat(depth)) "└ " a href=(task_href(&c.task_id)) { code { (clip(&c.task_id, 80)) } } }
                td { (task_status(c.status)) }
                td { (c.assigned_to.as_deref().unwrap_or("—")) }
                td { (clip(&c.description, 200)) @if let Some(e) = &c.last_error { " " span.error { (clip(e, 200)) } } }
            }
            (tree_rows(&c.children, depth + 1))
        }
    }
}

/// Where the task stands among others: its parent, what it waits for, the children it made.
fn family(p: &TaskPage) -> Markup {
    let t = &p.detail.task;
    let children = &p.detail.children;
    html! {
        @if t.parent_task_id.is_some() || !t.depends_on.is_empty() || !children.is_empty() {
            h2 { "Family" }
            dl.facts {
                @if let Some(parent) = &t.parent_task_id {
                    dt { "Parent" } dd #task-parent { a href=(task_href(parent)) { code { (parent) } } }
                }
                @if !t.depends_on.is_empty() {
                    dt { "Depends on" }
                    dd #task-depends-on { @for d in &t.depends_on { a href=(task_href(d)) { code { (d) } } " " } }
                }
            }
            @if !children.is_empty() {
                table.grid #task-children {
                    thead { tr { th { "Child" } th { "Status" } th { "Agent" } th { "Description" } } }
                    tbody { (tree_rows(children, 0)) }
                }
            }
        }
    }
}

pub fn render(v: &Viewer, p: &TaskPage, now: u64) -> Markup {
    let t = &p.detail.task;
    let progress = html! {
        h2 { "Progress " small.muted { "(attempt " (t.generation) ")" } }
        ol #progress-log .log data-generation=(t.generation) {
            @for (at, line) in &p.progress { li { time { (utc(*at)) } " " span { (progress_text(line)) } } }
        }
        @if p.progress.is_empty() { p.muted #no-progress { "No progress reported for this attempt yet." } }
    };
    let body = html! {
        h1 { "Task " code { (clip(&t.task_id, 80)) } }
        pre.description #task-description { (t.description) }
        (live("task-facts", facts(t, now)))
        (live("task-question", question(v, t, now)))
        (live("task-actions", actions(v, t)))
        (live("task-progress", progress))
        (live("task-outcome", outcome(t)))
        (live("task-integration", integration(v, t)))
        (live("task-change", change(p)))
        (live("task-family", family(p)))
        (live("task-history", history(p)))
    };
    page(v, ViewKind::Task, &format!("Task {}", clip(&t.task_id, 40)), Some(&t.task_id), body)
}

/// The confirmation step before an agent is told to restart.
pub fn restart_confirm(v: &Viewer, a: &AgentView) -> Markup {
    let working = a.current_task.is_some();
    let body = html! {
        h1 { "Restart agent " code { (a.agent_id) } "?" }
        dl.facts {
            dt { "Status" } dd { (super::agent_status(a.status)) }
            dt { "Current task" } dd { @match &a.current_task { Some(t) => a href=(task_href(t)) { code { (t) } }, None => "none" } }
            @if let Some(s) = a.process_info.as_ref().and_then(|p| p.supervisor.as_deref()) { dt { "Supervisor" } dd { (s) } }
        }
        p { "The hub tells the agent's sidecar to restart itself (through its supervisor). "
            @if working { "It is working on a task: “force” restarts it anyway, and the task is recovered after the restart." } }
        form #restart method="post" action={ "/agents/" (proto::api::encode(&a.agent_id)) "/restart" } {
            label { "Reason " small { "(optional)" } input name="reason" maxlength=(proto::MAX_REASON) placeholder="admin_commanded"; }
            label.choice { input type="checkbox" name="force" value="true"; " force (even while a task is working)" }
            div.actions {
                button.danger #confirm-restart type="submit" name="confirm" value="yes" { "Restart " (a.agent_id) }
                a.button href="/" { "Keep it running" }
            }
        }
    };
    page(v, ViewKind::Other, "Restart agent", None, body)
}

/// After the restart was commanded.
pub fn restart_done(v: &Viewer, agent_id: &str, reason: &str, force: bool) -> Markup {
    let body = html! {
        h1 { "Restart commanded" }
        p.banner #restart-done { "Agent " code { (agent_id) } " was told to restart (" (reason) @if force { ", forced" } ")." }
        p { a href="/" { "Back to the fleet" } }
    };
    page(v, ViewKind::Other, "Restart commanded", None, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::TaskDetail;

    #[test]
    fn the_change_shows_its_diffstat_and_the_patch_line_by_line() {
        let task: TaskView = serde_json::from_value(serde_json::json!({
            "task_id": "t-1", "description": "d", "priority": "normal", "metadata": {}, "needed_capabilities": [],
            "assign_to": null, "max_retries": 3, "extra": {}, "status": "completed", "generation": 2,
            "assigned_to": null, "assigned_at": null, "attempts": 1, "failures": 0, "retry_at": null, "result": null,
            "report": {}, "last_error": null, "progress": null, "submitted_by": "admin", "created_at": 0,
            "updated_at": 0, "completed_at": null,
            "change": {"branch": "agentcom/t-1", "base_sha": "a".repeat(40), "head_sha": "b".repeat(40), "commits": 2,
                       "files_changed": 1, "insertions": 3, "deletions": 1, "files": ["<x>.rs"]}
        }))
        .unwrap();
        let patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+<script>alert(1)</script>\n";
        let page = TaskPage {
            detail: TaskDetail { task, history: vec![], children: vec![] },
            progress: vec![],
            patch: Some(crate::store::StoredPatch { generation: 2, at: 0, patch: patch.into(), cut: true }),
        };
        let v = Viewer { role: crate::auth::Role::Admin, token: String::new(), last_event: "1-0".into() };
        let html = render(&v, &page, 0).into_string();
        assert!(html.contains("<code id=\"change-branch\">agentcom/t-1</code>"), "{html}");
        assert!(html.contains(&format!("<code id=\"change-head\">{}</code>", "b".repeat(12))));
        assert!(html.contains("1 files changed, <span class=\"good\">+3</span> <span class=\"bad\">−1</span>"));
        assert!(html.contains("<code>&lt;x&gt;.rs</code>"), "paths are text");
        assert!(html.contains("<span class=\"del\">-old</span>"));
        assert!(
            html.contains("<span class=\"add\">+&lt;script&gt;alert(1)&lt;/script&gt;</span>"),
            "the patch is text"
        );
        assert!(
            html.contains("<span class=\"file\">+++ b/x</span>")
                && html.contains("<span class=\"hunk\">@@ -1 +1 @@</span>")
        );
        assert!(html.contains("id=\"patch-cut\""));
        // No change, no section.
        let mut none = page;
        none.detail.task.change = None;
        assert!(!render(&v, &none, 0).into_string().contains("id=\"change\""));
    }
}
