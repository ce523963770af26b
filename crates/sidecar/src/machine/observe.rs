//! The machine's reading of what the agent's files hold ([`Observation`]): what the attempt
//! cost, confirmation, progress, the result, a question for a person, and files that are not
//! what they should be.

use super::{clip, frames, Action, Look, Machine, Now};
use crate::files::{Found, Observation, SmallFile};
use crate::task::{Phase, Report};
use proto::Usage;
use serde_json::Value;

impl Machine {
    pub(super) fn on_observed(&mut self, look: Look, obs: Observation, now: Now, out: &mut Vec<Action>) {
        let results_dir = self.cfg.results_dir.clone();
        let shown = |ext: &str| results_dir.join(format!("{}.{ext}", obs.task_id)).display().to_string();
        let Some(h) = self.active().filter(|h| h.task.id == obs.task_id && h.phase.watches_files()) else {
            return;
        };
        let (task_id, phase, attempt) = (h.task.id.clone(), h.phase.clone(), h.wakes);
        // First: a report made by this look carries what the attempt cost.
        self.on_usage_file(obs.usage, &shown("usage"), out);
        // `.started`
        match &obs.started {
            Found::Regular(()) => match phase {
                Phase::Waking { .. } => {
                    // The command still runs and the agent confirmed: the command is the agent.
                    tracing::info!(task_id = %task_id, "agent confirmed (.started) while its wake command runs");
                    self.send(out, frames::wake_result(&task_id, "success", attempt, None));
                    self.set_phase(Phase::Working { foreground: true, exited: None }, out);
                }
                Phase::WakingConfirmation { .. } | Phase::WakingRecovered => {
                    tracing::info!(task_id = %task_id, "agent confirmed (.started)");
                    self.set_phase(Phase::Working { foreground: false, exited: None }, out);
                }
                _ => {}
            },
            Found::Missing => {}
            Found::NotRegular(kind) => {
                return self.report_failure(format!("started_file_invalid: {} is {kind}", shown("started")), out)
            }
            Found::TooLarge(_) | Found::Unreadable(_) => {
                if self.warn_once("started") {
                    tracing::warn!(path = %shown("started"), found = ?obs.started, "cannot check the .started file");
                }
            }
        }
        if obs.agent_alive == Some(false) {
            let rescan = self.cfg.rescan_interval;
            if let Some(h) = self.active() {
                if let Phase::Working { exited: None, .. } = h.phase {
                    let why =
                        "agent_exited_without_result: its process was gone when the sidecar restarted".to_string();
                    h.phase = Phase::Working { foreground: false, exited: Some((now + rescan, why)) };
                }
            }
        }
        if let Some(h) = self.active().filter(|h| h.phase == Phase::WakingRecovered) {
            // The wake from before the restart never confirmed: stop what is left of it, run it again.
            let attempt = h.wakes.max(1);
            out.push(Action::StopOrphans { task_id: task_id.clone(), recorded: h.group });
            return self.start_wake(attempt, now, out);
        }
        // Progress before the result: an agent writes its progress first, so reading in this
        // order never reports a result without the progress that preceded it.
        match obs.progress {
            Found::Regular(p) => {
                self.progress = p.cursor;
                if p.skipped > 0 && self.warn_once("progress_long") {
                    tracing::warn!(path = %shown("progress"), max_progress_bytes = self.cfg.max_progress_bytes, "skipping progress lines longer than max_progress_bytes");
                }
                for line in p.lines.iter().filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
                    if let Some(frame) = frames::progress(&task_id, line) {
                        self.send(out, frame);
                    } else if self.warn_once("progress_frame") {
                        tracing::warn!(path = %shown("progress"), "a progress line would make a frame over the hub's limit; skipped");
                    }
                }
            }
            Found::Missing => {}
            Found::NotRegular(kind) => {
                return self.report_failure(format!("progress_file_invalid: {} is {kind}", shown("progress")), out)
            }
            Found::TooLarge(_) | Found::Unreadable(_) => {
                if self.warn_once("progress") {
                    tracing::warn!(path = %shown("progress"), found = ?obs.progress, "cannot read the progress file");
                }
            }
        }
        match obs.result {
            Found::Missing => {}
            Found::Regular(r) => match serde_json::from_slice::<Value>(&r.bytes) {
                Err(e) => {
                    let settled = obs.result_closed || r.age.is_some_and(|age| age > self.cfg.rescan_interval * 2);
                    // Until then it may still be being written: the close event or a rescan decides.
                    if settled || look == Look::ExitCheckDue {
                        return self.report_failure(format!("result_parse_error: {e}"), out);
                    }
                }
                Ok(v) => return self.on_result(v, &shown("json"), now, out),
            },
            Found::NotRegular(kind) => {
                return self.report_failure(
                    format!("result_file_invalid: {} is {kind}, not a regular file", shown("json")),
                    out,
                )
            }
            Found::TooLarge(size) => return self.result_too_large(size, out),
            Found::Unreadable(e) => {
                if self.warn_once("result") {
                    tracing::warn!(path = %shown("json"), error = %e, "cannot read the result file");
                }
            }
        }
        // Nothing conclusive: the deadline that prompted this look decides.
        let Some(h) = self.active() else { return };
        match (look, &h.phase) {
            (Look::ConfirmationDue, Phase::WakingConfirmation { .. }) => {
                return self.report_failure("confirmation_timeout".into(), out)
            }
            (Look::ExitCheckDue, Phase::Working { exited: Some((_, why)), .. }) => {
                let why = why.clone();
                return self.report_failure(why, out);
            }
            _ => {}
        }
        // Last, and only while the task goes on: a question for a person.
        self.on_question_file(obs.needs_input, out);
    }

    /// `<id>.usage`: the last one read is sent with the report (unless the result has its own).
    fn on_usage_file(&mut self, found: Found<SmallFile>, shown: &str, out: &mut Vec<Action>) {
        let problem = match found {
            Found::Missing => return,
            Found::Regular(f) => match crate::usage::parse_file(&f.bytes) {
                Ok((usage, dropped)) => {
                    self.keep_usage_notes(&dropped, shown);
                    if let Some(s) = crate::usage::session_in_file(&f.bytes) {
                        self.session = Some(s);
                    }
                    if usage.is_some() {
                        self.usage = usage;
                    }
                    self.send_live_usage(out);
                    return;
                }
                Err(e) => e,
            },
            Found::NotRegular(kind) => format!("it is {kind}, not a regular file"),
            Found::TooLarge(n) => format!("it is over {} bytes ({n})", crate::usage::MAX_USAGE_FILE_BYTES),
            Found::Unreadable(e) => e,
        };
        if self.warn_once("usage") {
            tracing::warn!(path = %shown, problem = %problem, "ignoring the usage file");
        }
    }

    /// What the attempt has cost so far goes to the hub when it changed (the hub stops an
    /// attempt that crosses its task's cap or its agent's budget).
    fn send_live_usage(&mut self, out: &mut Vec<Action>) {
        let Some(usage) = self.usage.clone().filter(|u| Some(u) != self.usage_sent.as_ref()) else { return };
        let Some(h) = self.active() else { return };
        let frame = proto::AgentFrame::TaskUsage {
            task_id: h.task.id.clone(),
            generation: h.task.generation,
            usage: usage.clone(),
            session_id: self.session.clone(),
        };
        self.usage_sent = Some(usage);
        self.send(out, frame);
    }

    fn keep_usage_notes(&mut self, dropped: &[String], shown: &str) {
        if !dropped.is_empty() && self.warn_once("usage_fields") {
            tracing::warn!(path = %shown, dropped = ?dropped, "usage fields the hub would refuse were left out");
        }
    }

    /// The `usage` of a result file, if it has one the hub accepts; else the usage file's.
    fn result_usage(&mut self, v: &Value, shown: &str) -> Option<Usage> {
        match v.get("usage").filter(|u| !u.is_null()).map(crate::usage::parse) {
            None => {}
            Some(Ok((usage, dropped))) => {
                self.keep_usage_notes(&dropped, shown);
                if usage.is_some() {
                    return usage;
                }
            }
            Some(Err(e)) if self.warn_once("result_usage") => {
                tracing::warn!(path = %shown, problem = %e, "ignoring the result's usage");
            }
            Some(Err(_)) => {}
        }
        self.usage.clone()
    }

    fn on_result(&mut self, v: Value, shown: &str, now: Now, out: &mut Vec<Action>) {
        let usage = self.result_usage(&v, shown);
        if let Some(s) = crate::usage::session_of(&v) {
            self.session = Some(s);
        }
        let session_id = self.session.clone();
        let Some(h) = self.active() else { return };
        if v.get("status").and_then(Value::as_str) == Some("rate_limited") {
            let limit = limit_of(&v, now);
            tracing::warn!(task_id = %h.task.id, limit = ?limit, "the model provider limits this agent");
            return self.report(Report::Limited { limit, usage, change: None, session_id }, out);
        }
        if v.get("status").and_then(Value::as_str) == Some("success") {
            let tokens_used = v.get("tokens_used").cloned();
            let report = Report::Complete { result: v, tokens_used, usage, change: None, session_id };
            if frames::fits(&report.frame(&h.task)) {
                return self.report(report, out);
            }
            let size = serde_json::to_string(&report.frame(&h.task)).map(|s| s.len() as u64).unwrap_or(u64::MAX);
            return self.result_too_large(size, out);
        }
        let reason = ["reason", "error", "message"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(|| {
                let status = v.get("status").map(Value::to_string).unwrap_or("missing".into());
                format!("status: {}", clip(&status, 200))
            });
        tracing::warn!(task_id = %h.task.id, reason = %clip(&reason, 500), "task failed");
        let reason = clip(&reason, proto::MAX_REASON);
        self.report(Report::Failed { reason, keep_result: false, usage, change: None, session_id }, out);
    }

    fn result_too_large(&mut self, size: u64, out: &mut Vec<Action>) {
        let Some(h) = self.active() else { return };
        let task = h.task.clone();
        let path = self.cfg.results_dir.join(format!("{}.json", task.id));
        let kept = self.kept_result_path(&task);
        let reason = format!(
            "result_too_large: {} is {size} bytes or more, over max_result_bytes ({}) or the hub's frame limit; kept as {}",
            path.display(),
            self.cfg.max_result_bytes,
            kept.display()
        );
        tracing::warn!(task_id = %task.id, reason = %reason, "task failed");
        let (usage, session_id) = (self.usage.clone(), self.session.clone());
        let reason = clip(&reason, proto::MAX_REASON);
        self.report(Report::Failed { reason, keep_result: true, usage, change: None, session_id }, out);
    }
}

/// A `rate_limited` result's limit: `reset_at` (epoch seconds) or `reset_at_ms`, else
/// `retry_after_s` or `retry_after_ms`, each bounded; its `reason` or `message` as the message.
fn limit_of(v: &Value, _now: Now) -> proto::Limit {
    let number = |k: &str| v.get(k).and_then(Value::as_f64).filter(|n| n.is_finite() && *n >= 0.0);
    let reset_at_ms = number("reset_at_ms")
        .or_else(|| number("reset_at").map(|s| s * 1000.0))
        .filter(|ms| *ms < (1u64 << 53) as f64)
        .map(|ms| ms as u64);
    let retry_after_ms = number("retry_after_ms")
        .or_else(|| number("retry_after_s").map(|s| s * 1000.0))
        .map(|ms| (ms.min(proto::MAX_LIMIT_WAIT_MS as f64)) as u64);
    let message = ["reason", "message", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(|m| clip(m, proto::MAX_REASON));
    proto::Limit { reset_at_ms, retry_after_ms, message }
}
