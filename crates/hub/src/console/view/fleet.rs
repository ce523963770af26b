//! The fleet: counts, who needs a person, and every agent with its process and spend.

use super::layout::{page, ViewKind};
use super::{agent_status, ago, bytes, clip, dur, live, needs_input_badge, task_href, usd};
use crate::console::data::Fleet;
use crate::console::Viewer;
use maud::{html, Markup};
use proto::api::{AgentStatus, AgentView, Priority, Spend, TaskStatus};

fn spend(s: &Spend) -> Markup {
    html! {
        span.spend {
            (usd(s.cost_usd))
            @if let Some(b) = s.budget_usd {
                " / " (usd(b))
                meter min="0" max=(b.max(f64::MIN_POSITIVE)) value=(s.cost_usd.min(b)) {}
            }
            @if s.tokens > 0 || s.budget_tokens.is_some() {
                small.tokens { (s.tokens) " tokens" @if let Some(b) = s.budget_tokens { " / " (b) } }
            }
            @if s.exhausted { " " span.badge.exhausted { "budget exhausted" } }
        }
    }
}

fn agent_row(v: &Viewer, a: &AgentView, now: u64) -> Markup {
    let p = a.process_info.as_ref().or(a.pm2_info.as_ref());
    html! {
        tr data-agent-id=(a.agent_id) {
            td.id {
                strong { (clip(&a.agent_id, 64)) }
                @if let Some(n) = a.name.as_deref().filter(|n| *n != a.agent_id) { br; small { (clip(n, 64)) } }
                @if let Some(pn) = p.and_then(|p| p.name.as_deref()) { br; small.muted { "process " (clip(pn, 64)) } }
            }
            td.status {
                (agent_status(a.status)) @if a.needs_input { " " (needs_input_badge()) }
                @if let Some(until) = a.limited_until {
                    br; small.muted.limit { "model provider limit until " (super::utc(until))
                        @if let Some(acct) = &a.account { " (account " (acct) ")" }
                        @if let Some(why) = &a.limit_reason { ": " (clip(why, 120)) } }
                }
                @if let Some(r) = a.restart.as_ref().filter(|r| r.outcome == proto::RestartOutcome::Refused || r.outcome == proto::RestartOutcome::Deferred) {
                    br; small.muted.restart-outcome { "restart " (r.outcome.as_str()) @if let Some(why) = &r.reason { ": " (clip(why, 120)) } }
                }
            }
            td.task {
                @match &a.current_task {
                    Some(t) => a href=(task_href(t)) { code { (clip(t, 40)) } },
                    None => span.muted { "—" },
                }
            }
            td { (p.and_then(|p| p.supervisor.as_deref()).unwrap_or("—")) }
            td.num { @match p.and_then(|p| p.uptime_ms) { Some(u) => (dur(u)), None => "—" } }
            td.num { @match p.and_then(|p| p.restart_count) { Some(r) => (r), None => "—" } }
            td.num { @match p.and_then(|p| p.memory_bytes) { Some(m) => (bytes(m)), None => "—" } }
            td { @if a.connected { span.muted { "now" } } @else { (ago(now, a.last_seen)) } }
            td.num { (spend(&a.spend)) }
            @if v.is_admin() {
                td {
                    // Only where a supervisor would start it again: elsewhere a restart only stops it.
                    @if a.connected && a.status != AgentStatus::Restarting && a.restartable() {
                        a.button.small href={ "/agents/" (proto::api::encode(&a.agent_id)) "/restart" } { "Restart…" }
                    }
                }
            }
        }
    }
}

/// Counts and the agents that wait for a person.
fn summary(f: &Fleet) -> Markup {
    let waiting: Vec<&AgentView> = f.agents.iter().filter(|a| a.needs_input).collect();
    html! {
        @if let Some(st) = &f.stats {
            div.cards {
                @for s in [TaskStatus::Queued, TaskStatus::Assigned, TaskStatus::Working, TaskStatus::WaitingRetry, TaskStatus::DeadLetter, TaskStatus::Completed] {
                    div.card data-count=(s.as_str()) {
                        span.n { (st.by_status.get(&s).copied().unwrap_or(0)) }
                        span.l { (s.as_str().replace('_', " ")) }
                    }
                }
                @for s in AgentStatus::ALL {
                    div.card.agents data-count={ "agents-" (s.as_str()) } {
                        span.n { (st.agents.get(&s).copied().unwrap_or(0)) }
                        span.l { "agents " (s.as_str()) }
                    }
                }
            }
        }
        @if !waiting.is_empty() {
            div.banner.attention #needs-you {
                strong { "Waiting for you: " }
                @for (i, a) in waiting.iter().enumerate() {
                    @if i > 0 { ", " }
                    @match &a.current_task {
                        Some(t) => a href=(task_href(t)) { (clip(&a.agent_id, 64)) },
                        None => (clip(&a.agent_id, 64)),
                    }
                }
            }
        }
    }
}

/// The form that queues a task (admin only).
pub fn submit_form() -> Markup {
    html! {
        details.submit open {
            summary { "Submit a task" }
            form #submit method="post" action="/tasks" {
                label { "Description" textarea name="description" required rows="3" maxlength="10000" {} }
                div.row {
                    label { "Priority"
                        select name="priority" {
                            @for p in Priority::ALL { option value=(p.as_str()) selected[p == Priority::Normal] { (p.as_str()) } }
                        }
                    }
                    label { "Capabilities " small { "(comma-separated)" } input name="capabilities" maxlength="2000"; }
                    label { "Assign to " small { "(agent id)" } input name="assign_to" maxlength=(proto::MAX_AGENT_ID); }
                    label { "Max retries" input name="max_retries" type="number" min="0" max="100" value="3"; }
                }
                button type="submit" { "Submit" }
            }
        }
    }
}

/// Agent rows rendered at once; the others wait until they are scrolled near.
const FIRST_ROWS: usize = 50;

pub fn render(v: &Viewer, f: &Fleet, now: u64) -> Markup {
    let agents = html! {
        @if f.agents.is_empty() {
            p.muted #no-agents {
                @match v.agent() {
                    Some(a) => { "Agent " (a) " has not connected to this hub yet." },
                    None => { "No agent has connected to this hub yet." },
                }
            }
        } @else {
            // The rows below the first screens are a table of their own that the browser lays out
            // only when it scrolls near (`content-visibility`): a thousand agents paint as fast as
            // fifty. Fixed column widths keep the two tables' columns in line.
            @let (first, rest) = f.agents.split_at(f.agents.len().min(FIRST_ROWS));
            div #agents {
                table.grid.agents {
                    thead { tr {
                        th { "Agent" } th { "Status" } th { "Current task" } th { "Supervisor" } th { "Uptime" }
                        th { "Restarts" } th { "Memory" } th { "Last seen" } th { "Spend today" }
                        @if v.is_admin() { th {} }
                    } }
                    tbody { @for a in first { (agent_row(v, a, now)) } }
                }
                @if !rest.is_empty() {
                    div class={ "more-agents rows-" (rest.len().div_ceil(100).clamp(1, 10) * 100) } {
                        table.grid.agents { tbody { @for a in rest { (agent_row(v, a, now)) } } }
                    }
                }
            }
        }
        @if let Some(c) = &f.next { p.pager { a href={ "/?cursor=" (c) } { "Next agents →" } } }
    };
    let body = html! {
        h1 { "Fleet" }
        (live("fleet-summary", summary(f)))
        (live("fleet-agents", agents))
        @if v.is_admin() { (submit_form()) }
        @if let Some(a) = v.agent() {
            p { a href="/tasks" { "Tasks of agent " (a) " →" } }
        }
    };
    page(v, ViewKind::Fleet, "Fleet", None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Fleet {
        let agent = |i: usize| -> AgentView {
            serde_json::from_value(serde_json::json!({
                "agent_id": format!("a{i:04}"), "status": "idle", "connected": true, "last_seen": 0, "capabilities": []
            }))
            .unwrap()
        };
        Fleet { stats: None, agents: (0..n).map(agent).collect(), next: None }
    }

    fn viewer() -> Viewer {
        Viewer { role: crate::auth::Role::Admin, token: String::new(), last_event: "1-0".into() }
    }

    #[test]
    fn every_agent_is_listed_and_those_past_the_first_screens_wait_to_be_laid_out() {
        let html = render(&viewer(), &fleet(FIRST_ROWS + 130), 0).into_string();
        assert_eq!(html.matches("<tr data-agent-id=").count(), FIRST_ROWS + 130, "every agent has its row");
        let (first, rest) = html.split_once("more-agents").expect("a second table for the rest");
        assert_eq!(first.matches("<tr data-agent-id=").count(), FIRST_ROWS);
        assert!(rest.starts_with(" rows-200\""), "130 rows are sized as 200: {}", &rest[..20]);
        let small = render(&viewer(), &fleet(3), 0).into_string();
        assert!(!small.contains("more-agents") && small.matches("<tr data-agent-id=").count() == 3);
    }
}
