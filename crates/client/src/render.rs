//! Output of the CLI commands: a table or summary for people (scripts use `--json`).

use super::{age, list, now_ms, opt, table, when};
use proto::api::{AgentList, Event, EventKind, Spend, TaskDetail, TaskList, TaskView, TokenList, UsageReport};

/// A description for a table: one line, cut with an ellipsis.
fn rows(tasks: &[TaskView]) -> Vec<Vec<String>> {
    let now = now_ms();
    tasks
        .iter()
        .map(|t| {
            // A task waiting for a person says so where people look first.
            let status = match (&t.needs_input, &t.answer) {
                (Some(_), _) => format!("{} (asks)", t.status),
                (None, Some(_)) => format!("{} (answered)", t.status),
                _ => t.status.to_string(),
            };
            vec![
                t.task_id.clone(),
                status,
                t.priority.to_string(),
                opt(&t.assigned_to),
                t.generation.to_string(),
                t.attempts.to_string(),
                age(Some(t.created_at), now),
                t.description.clone(),
            ]
        })
        .collect()
}

pub fn tasks(v: &TaskList) -> String {
    if v.tasks.is_empty() {
        return "no tasks\n".into();
    }
    let mut out = table(
        &["TASK", "STATUS", "PRIORITY", "AGENT", "GEN", "ATTEMPTS", "CREATED", "DESCRIPTION"],
        &rows(&v.tasks),
        48,
    );
    if v.next_cursor.is_some() {
        out.push_str(&format!("(first {} shown; --limit for more, --json for the cursor)\n", v.count));
    }
    out
}

/// `3 files changed, +10 -2`, as `git diff --shortstat` puts it.
pub fn diffstat(c: &proto::Change) -> String {
    format!("{} files changed, +{} -{}", c.files_changed, c.insertions, c.deletions)
}

/// The patch as `git apply` reads it; a cut patch ends with a line that says so.
pub fn diff(d: &proto::api::TaskDiff) -> String {
    let Some(c) = &d.change else { return format!("# task {} changed nothing\n", d.task_id) };
    let mut out = d.patch.clone();
    if d.cut {
        out.push_str(&format!(
            "# the patch is cut at {} bytes; the branch {} ({}) has all of it\n",
            proto::MAX_PATCH_BYTES,
            c.branch,
            c.head_sha
        ));
    }
    out
}

pub fn task(d: &TaskDetail) -> String {
    let now = now_ms();
    let t = &d.task;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20} {v}\n"));
    line("task_id", t.task_id.clone());
    line("status", t.status.to_string());
    line("priority", t.priority.to_string());
    line("description", t.description.replace('\n', "\n                     "));
    line("generation", t.generation.to_string());
    line("assigned_to", opt(&t.assigned_to));
    line("attempts", t.attempts.to_string());
    line("failures", format!("{} of max_retries {}", t.failures, t.max_retries));
    line("needed_capabilities", list(&t.needed_capabilities));
    line("assign_to", opt(&t.assign_to));
    line("last_error", opt(&t.last_error));
    if let Some(p) = &t.parent_task_id {
        line("parent", p.clone());
    }
    if !t.depends_on.is_empty() {
        line("depends_on", list(&t.depends_on));
    }
    line("submitted_by", t.submitted_by.clone());
    line("created", when(Some(t.created_at), now));
    line("updated", when(Some(t.updated_at), now));
    if t.completed_at.is_some() {
        line("completed", when(t.completed_at, now));
    }
    if t.retry_at.is_some() {
        line("retry_at", when(t.retry_at, now));
    }
    if t.metadata.as_object().is_some_and(|m| !m.is_empty()) {
        line("metadata", t.metadata.to_string());
    }
    if let Some(r) = &t.result {
        line("result", r.to_string());
    }
    if let Some(p) = &t.progress {
        line("progress", p.to_string());
    }
    if let Some(q) = &t.needs_input {
        let options = if q.options.is_empty() { String::new() } else { format!(" [{}]", q.options.join(" / ")) };
        line("NEEDS INPUT", format!("{}{options}", q.question));
        line(
            "  asked",
            format!(
                "{} (request {}; answer with `agentcom task answer {} TEXT`)",
                when(Some(q.since), now),
                q.request_id,
                t.task_id
            ),
        );
    }
    if let Some(a) = &t.answer {
        line(
            "answer",
            format!(
                "{:?} by {}, {}, not yet confirmed by the agent",
                a.answer,
                a.answered_by,
                when(Some(a.answered_at), now)
            ),
        );
    }
    if let Some(u) = &t.usage {
        line("usage", usage_cell(u));
    }
    if t.limited_attempts > 0 {
        line("limited_attempts", format!("{} (model provider limits; not failures)", t.limited_attempts));
    }
    if t.not_before.is_some() {
        line("not_before", when(t.not_before, now));
    }
    if let Some(p) = &t.prefer_agent {
        line("prefer_agent", format!("{p} (holds its session)"));
    }
    if t.max_cost_usd.is_some() || t.max_tokens.is_some() {
        let cost = t.max_cost_usd.map(|c| format!("${c}")).unwrap_or_else(|| "-".into());
        let tokens = t.max_tokens.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        line("caps", format!("max_cost_usd {cost}, max_tokens {tokens}"));
    }
    if let Some(s) = t.sessions.last() {
        line("session", format!("{} on {} (attempt {})", s.session_id, s.agent_id, s.generation));
    }
    if let Some(i) = &t.integration {
        let sha = i.merged_sha.clone().map(|s| format!(" at {s}")).unwrap_or_default();
        line("integration", format!("{} into {}{sha} (attempt {})", i.status, i.target, i.attempts));
        if !i.conflicts.is_empty() {
            line("  conflicts", i.conflicts.join(", "));
        }
        if let Some(tail) = &i.output_tail {
            line("  output", tail.replace('\n', "\n                     "));
        }
        if i.status == proto::api::IntegrationStatus::WaitingReview {
            line("  review", format!("agentcom task approve {0} | agentcom task reject {0} --reason R", t.task_id));
        }
    }
    if let Some(o) = &t.integrates {
        line("integrates", o.clone());
    }
    if let Some(c) = &t.change {
        line("change", format!("{} ({} commits, {})", c.branch, c.commits, diffstat(c)));
        line("  commits", format!("{}..{}", c.base_sha, c.head_sha));
        line("  diff", format!("agentcom task diff {}", t.task_id));
    }
    if !d.children.is_empty() {
        out.push_str(&format!("children ({}):\n", d.children.len()));
        tree(&mut out, &d.children, 1);
    }
    out.push_str("history:\n");
    for h in &d.history {
        let from = h.from.map(|f| f.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  {}  {:>13} -> {:<13} gen {:<3} {}\n",
            when(Some(h.at), now),
            from,
            h.to.to_string(),
            h.generation,
            h.reason
        ));
    }
    out
}

/// Spend against budget, as `$1.20 / $5.00` (and tokens when a token budget is set).
pub fn spend(s: &Spend) -> String {
    let mut out = match s.budget_usd {
        Some(b) => format!("${:.2} / ${b:.2}", s.cost_usd),
        None if s.cost_usd > 0.0 => format!("${:.2}", s.cost_usd),
        None => "-".into(),
    };
    if let Some(b) = s.budget_tokens {
        out.push_str(&format!(" {} / {b} tok", s.tokens));
    }
    if s.exhausted {
        out.push_str(" OVER");
    }
    out
}

fn usage_cell(u: &proto::Usage) -> String {
    let mut parts = Vec::new();
    if let Some(c) = u.cost_usd {
        parts.push(format!("${c:.4}"));
    }
    parts.push(format!("{} tokens", u.tokens()));
    if let Some(m) = &u.model {
        parts.push(m.clone());
    }
    parts.join(", ")
}

pub fn agents(v: &AgentList) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = v
        .agents
        .iter()
        .map(|a| {
            let mut status = if a.needs_input { format!("{} (needs input)", a.status) } else { a.status.to_string() };
            if let Some(until) = a.limited_until {
                status.push_str(&format!(" until {}", human::utc(until)));
            }
            vec![
                a.agent_id.clone(),
                status,
                opt(&a.current_task),
                a.capabilities.join(","),
                a.process_info.as_ref().and_then(|p| p.restart_count).map(|r| r.to_string()).unwrap_or("-".into()),
                spend(&a.spend),
                age(Some(a.last_seen), now),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no agents\n".into();
    }
    table(&["AGENT", "STATUS", "TASK", "CAPABILITIES", "RESTARTS", "SPEND TODAY", "LAST SEEN"], &rows, 40)
}

pub fn usage(v: &UsageReport) -> String {
    let row = |r: &proto::api::UsageRow, key: &str| {
        vec![
            key.to_string(),
            r.reports.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            r.total_tokens.to_string(),
            format!("${:.4}", r.cost_usd),
        ]
    };
    let mut rows: Vec<Vec<String>> = v.rows.iter().map(|r| row(r, &r.key)).collect();
    rows.push(row(&v.total, "TOTAL"));
    let by = match v.by {
        proto::api::UsageBy::Agent => "AGENT",
        proto::api::UsageBy::Model => "MODEL",
        proto::api::UsageBy::Day => "DAY",
    };
    let mut out = format!("usage from {} to {} (UTC days)\n", v.since, v.until);
    out.push_str(&table(&[by, "REPORTS", "INPUT", "OUTPUT", "TOKENS", "COST"], &rows, 40));
    out
}

/// One event as a line for people.
pub fn event(e: &Event) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at);
    let ts = humantime::format_rfc3339_millis(at);
    let what = match &e.kind {
        EventKind::Task { task_id, from, to, reason, .. } => match from {
            Some(f) => format!("task {task_id} {f} -> {to}: {reason}"),
            None => format!("task {task_id} {to}: {reason}"),
        },
        EventKind::Progress { task_id, agent_id, progress, .. } => {
            format!("progress {task_id} ({agent_id}): {}", proto::api::progress_text(progress))
        }
        EventKind::Wake { task_id, agent_id, status, attempt, error } => {
            let attempt = attempt.map(|a| format!(" (attempt {a})")).unwrap_or_default();
            let error = error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
            format!("wake {task_id} ({agent_id}) {status}{attempt}{error}")
        }
        EventKind::Restart { agent_id, outcome, reason } => {
            let reason = reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
            format!("restart {agent_id} {}{reason}", outcome.as_str())
        }
        EventKind::Agent { agent_id, status, .. } => format!("agent {agent_id} {status}"),
        EventKind::Limited { agent_id, account, until, reason } => {
            let account = account.as_ref().map(|a| format!(" (account {a})")).unwrap_or_default();
            format!("LIMITED {agent_id}{account} until {}: {reason}", human::utc(*until))
        }
        EventKind::Unlimited { agent_id, by } => format!("unlimited {agent_id} ({by})"),
        EventKind::Integration { task_id, integration: i } => {
            let sha = i.merged_sha.as_ref().map(|s| format!(" at {}", &s[..s.len().min(12)])).unwrap_or_default();
            let tail =
                i.output_tail.as_ref().map(|t| format!(": {}", t.lines().last().unwrap_or(""))).unwrap_or_default();
            format!("integration {task_id} -> {} {}{sha}{tail}", i.target, i.status)
        }
        EventKind::NeedsInput { task_id, agent_id, question } => {
            format!("NEEDS INPUT {task_id} ({agent_id}): {} [request {}]", question.question, question.request_id)
        }
        EventKind::InputAnswered { task_id, answered_by, .. } => format!("answered {task_id} by {answered_by}"),
        EventKind::InputDelivered { task_id, .. } => format!("answer delivered {task_id}"),
        EventKind::InputClosed { task_id, request_id, reason } => {
            format!("question closed {task_id} [request {request_id}]: {reason}")
        }
        EventKind::InputUndelivered { task_id, request_id, reason } => {
            format!("ANSWER NOT DELIVERED {task_id} [request {request_id}]: {reason}")
        }
        EventKind::Usage { task_id, agent_id, usage } => {
            format!("usage {task_id} ({agent_id}): {}", usage_cell(usage))
        }
        EventKind::BudgetExhausted { agent_id, spend: s } => {
            format!("BUDGET {}: {}", agent_id.as_deref().unwrap_or("fleet"), spend(s))
        }
        EventKind::Resync { reason } => format!("(missed events: {reason})"),
        EventKind::Dropped { reason } => format!("(dropped: {reason})"),
    };
    // One line per event, whatever the text holds.
    format!("{ts} {}", what.replace(['\n', '\r'], " "))
}

pub fn tokens(v: &TokenList) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = v
        .tokens
        .iter()
        .map(|t| vec![t.agent_id.clone(), age(Some(t.created_at), now), t.fingerprint.clone()])
        .collect();
    if rows.is_empty() {
        return "no tokens\n".into();
    }
    table(&["AGENT", "CREATED", "FINGERPRINT"], &rows, 40)
}

/// The integration queue, per target.
pub fn integrations(v: &proto::api::IntegrationList) -> String {
    if v.targets.is_empty() {
        return "no change waits for integration\n".into();
    }
    let mut out = String::new();
    for t in &v.targets {
        out.push_str(&format!("{}:\n", t.target));
        let rows: Vec<Vec<String>> = t
            .changes
            .iter()
            .map(|c| {
                let approved = if c.approved { " (approved)" } else { "" };
                vec![
                    c.integrates.clone(),
                    c.branch.clone(),
                    format!("{}{approved}", c.status),
                    c.attempt.to_string(),
                    c.task_id.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["TASK", "BRANCH", "STATUS", "ATTEMPT", "INTEGRATION TASK"], &rows, 48));
    }
    out
}

/// A task's children, and theirs indented below each.
fn tree(out: &mut String, children: &[proto::api::ChildTask], depth: usize) {
    for c in children {
        let who = c.assigned_to.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
        let error = c.last_error.as_deref().map(|e| format!(" ({})", human::printable(e))).unwrap_or_default();
        let first = c.description.lines().next().unwrap_or("");
        let indent = "  ".repeat(depth);
        out.push_str(&format!(
            "{indent}{:<22} {:<13}{who}{error}  {}\n",
            c.task_id,
            c.status.to_string(),
            human::printable(first)
        ));
        tree(out, &c.children, depth + 1);
    }
}
