//! The agent CLIs' line-by-line JSON output, read as it comes: Claude Code's
//! `--output-format stream-json --verbose` (`run-agent --usage claude-stream`) and Codex's
//! `codex exec --json` (`--usage codex-json`). From it: the session id as soon as the CLI names
//! it, the assistant's text as progress lines, what the attempt has cost so far (written to
//! `.usage` as it grows, so the hub can stop an attempt over its cap), the reset time of a
//! limit, and the final answer. Every line is hostile input: what is not understood is passed
//! through as an output line.

use super::claude;
use proto::Usage;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Per million tokens, input and output (USD), by model family: an estimate of the cost while
/// Claude Code runs (its final result line has the real figure, which replaces it).
const CLAUDE_PRICES: &[(&str, f64, f64)] = &[("opus", 5.0, 25.0), ("sonnet", 3.0, 15.0), ("haiku", 1.0, 5.0)];

/// What one line told.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    /// Text for `.progress`.
    pub progress: Vec<String>,
    /// The cost so far or the session changed: `.usage` is to be written again.
    pub usage_changed: bool,
    /// Not a line of the format: pass it through as output.
    pub raw: bool,
}

/// Claude Code's stream.
#[derive(Debug, Default)]
pub struct ClaudeStream {
    pub session_id: Option<String>,
    /// Usage per assistant message id (each message is reported once per content block).
    messages: BTreeMap<String, (u64, u64, u64, u64)>,
    model: Option<String>,
    /// The result line.
    pub outcome: Option<claude::Outcome>,
    /// `rate_limit_event`'s `resetsAt` (epoch ms).
    pub reset_at_ms: Option<u64>,
}

/// Messages remembered at most (a run of thousands of turns does not grow without end: the
/// older ones are folded into one sum).
const MAX_MESSAGES: usize = 4096;

impl ClaudeStream {
    pub fn on_line(&mut self, line: &[u8]) -> Seen {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line) else {
            return Seen { raw: true, ..Seen::default() };
        };
        let mut seen = Seen::default();
        if let Some(s) = session(&m).filter(|s| self.session_id.as_ref() != Some(s)) {
            self.session_id = Some(s);
            seen.usage_changed = true;
        }
        match m.get("type").and_then(Value::as_str) {
            Some("assistant") => {
                let msg = m.get("message").and_then(Value::as_object);
                for block in msg.and_then(|m| m.get("content")).and_then(Value::as_array).into_iter().flatten() {
                    if block.get("type").and_then(Value::as_str) == Some("text") {
                        if let Some(t) = block.get("text").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
                            seen.progress.push(t.to_string());
                        }
                    }
                }
                if let Some(model) = msg.and_then(|m| m.get("model")).and_then(Value::as_str) {
                    if model != "<synthetic>" {
                        self.model = Some(crate::machine::clip(model, proto::MAX_SHORT));
                    }
                }
                let id = msg.and_then(|m| m.get("id")).and_then(Value::as_str).map(|s| crate::machine::clip(s, 200));
                let usage = msg.and_then(|m| m.get("usage")).and_then(Value::as_object);
                if let (Some(id), Some(u)) = (id, usage) {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let counts = (
                        n("input_tokens"),
                        n("cache_creation_input_tokens"),
                        n("cache_read_input_tokens"),
                        n("output_tokens"),
                    );
                    if self.messages.get(&id) != Some(&counts) {
                        self.remember(id, counts);
                        seen.usage_changed = true;
                    }
                }
            }
            Some("rate_limit_event") => {
                let info = m.get("rate_limit_info");
                let rejected = info.and_then(|i| i.get("status")).and_then(Value::as_str) == Some("rejected");
                if let Some(at) = info.and_then(|i| i.get("resetsAt")).and_then(Value::as_u64).filter(|_| rejected) {
                    self.reset_at_ms = at.checked_mul(1000);
                }
            }
            Some("result") => {
                if let Some(o) = claude::parse_line(line) {
                    self.outcome = Some(o);
                    seen.usage_changed = true;
                }
            }
            Some(_) => {}
            None => seen.raw = true,
        }
        seen
    }

    fn remember(&mut self, id: String, counts: (u64, u64, u64, u64)) {
        if self.messages.len() >= MAX_MESSAGES && !self.messages.contains_key(&id) {
            // Fold everything so far into one entry under a key no message has.
            let sum = self.messages.values().fold((0, 0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2, a.3 + c.3));
            self.messages.clear();
            self.messages.insert(String::new(), sum);
        }
        self.messages.insert(id, counts);
    }

    /// The cost so far: the result line's once it came, else the messages' counts (the cost
    /// estimated from the model family's list prices).
    pub fn usage(&self) -> Option<Usage> {
        if let Some(u) = self.outcome.as_ref().and_then(|o| o.usage.clone()) {
            return Some(u);
        }
        if self.messages.is_empty() {
            return None;
        }
        let (input, created, read, output) = self.messages.values().fold((0u64, 0u64, 0u64, 0u64), |a, c| {
            (a.0.saturating_add(c.0), a.1.saturating_add(c.1), a.2.saturating_add(c.2), a.3.saturating_add(c.3))
        });
        let price = self.model.as_deref().and_then(|m| CLAUDE_PRICES.iter().find(|(family, ..)| m.contains(family)));
        let cost = price.map(|(_, i, o)| {
            ((input as f64 + created as f64 * 1.25 + read as f64 * 0.1) * i + output as f64 * o) / 1_000_000.0
        });
        let u = Usage {
            input_tokens: Some(input.saturating_add(created).saturating_add(read)),
            output_tokens: Some(output),
            total_tokens: None,
            cost_usd: cost,
            model: self.model.clone(),
        };
        Some(u.within_limits())
    }
}

/// Codex's `exec --json` stream.
#[derive(Debug, Default)]
pub struct CodexStream {
    pub session_id: Option<String>,
    /// The last agent message: the answer.
    pub text: Option<String>,
    /// The error that ended the turn (`turn.failed`, else the last `error` line).
    pub error: Option<String>,
    pub turn_failed: bool,
    /// The thread's usage at the end of the turn, and at its start (a resumed thread counts
    /// from its beginning).
    total: Option<(u64, u64, u64)>,
    pub baseline: (u64, u64, u64),
    pub completed: bool,
}

impl CodexStream {
    pub fn on_line(&mut self, line: &[u8]) -> Seen {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line) else {
            return Seen { raw: true, ..Seen::default() };
        };
        let mut seen = Seen::default();
        match m.get("type").and_then(Value::as_str) {
            Some("thread.started") => {
                let id = m.get("thread_id").and_then(Value::as_str).filter(|s| proto::check_session_id(s).is_ok());
                if let Some(id) = id {
                    self.session_id = Some(id.to_string());
                    seen.usage_changed = true;
                }
            }
            Some("item.completed") => {
                let item = m.get("item").and_then(Value::as_object);
                let kind = item.and_then(|i| i.get("type")).and_then(Value::as_str);
                if let (Some("agent_message"), Some(text)) =
                    (kind, item.and_then(|i| i.get("text")).and_then(Value::as_str))
                {
                    let text = claude::clip_bytes(text, claude::MAX_TEXT_BYTES);
                    seen.progress.push(text.to_string());
                    self.text = Some(text.to_string());
                }
                if let (Some("command_execution"), Some(cmd)) =
                    (kind, item.and_then(|i| i.get("command")).and_then(Value::as_str))
                {
                    let code = item.and_then(|i| i.get("exit_code")).and_then(Value::as_i64);
                    seen.progress.push(format!(
                        "$ {} (exit {})",
                        crate::machine::clip(cmd, 500),
                        code.map_or("?".into(), |c| c.to_string())
                    ));
                }
            }
            Some("turn.completed") => {
                let u = m.get("usage").and_then(Value::as_object);
                let n = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
                self.total = Some((n("input_tokens"), n("cached_input_tokens"), n("output_tokens")));
                self.completed = true;
                seen.usage_changed = true;
            }
            Some("turn.failed") => {
                let msg = m.get("error").and_then(|e| e.get("message")).and_then(Value::as_str);
                self.error = msg.map(|s| crate::machine::clip(s, 2000)).or(self.error.take());
                self.turn_failed = true;
            }
            Some("error") => {
                // "Reconnecting... 1/5 (...)" lines are the CLI retrying, not the end.
                if let Some(msg) = m.get("message").and_then(Value::as_str).filter(|s| !s.starts_with("Reconnecting")) {
                    self.error = Some(crate::machine::clip(msg, 2000));
                }
            }
            Some(_) => {}
            None => seen.raw = true,
        }
        seen
    }

    /// This run's usage: the thread's total less what it had when the run began.
    pub fn usage(&self) -> Option<Usage> {
        let (input, _cached, output) = self.total?;
        let (b_in, _, b_out) = self.baseline;
        let u = Usage {
            input_tokens: Some(input.saturating_sub(b_in)),
            output_tokens: Some(output.saturating_sub(b_out)),
            total_tokens: None,
            cost_usd: None,
            model: None,
        };
        Some(u.within_limits())
    }
}

fn session(m: &Map<String, Value>) -> Option<String> {
    m.get("session_id").and_then(Value::as_str).filter(|s| proto::check_session_id(s).is_ok()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn claude_code_stream_gives_session_progress_and_growing_usage() {
        let mut s = ClaudeStream::default();
        let init = line(
            json!({"type": "system", "subtype": "init", "session_id": "44f90f0c-aaaa", "model": "claude-opus-4-8[1m]"}),
        );
        assert!(s.on_line(&init).usage_changed);
        assert_eq!(s.session_id.as_deref(), Some("44f90f0c-aaaa"));
        let msg = |id: &str, block: Value| {
            line(
                json!({"type": "assistant", "session_id": "44f90f0c-aaaa", "message": {"id": id, "model": "claude-opus-4-8",
                "content": [block], "usage": {"input_tokens": 1000, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
            )
        };
        let seen = s.on_line(&msg("m1", json!({"type": "text", "text": "Working on it."})));
        assert_eq!(seen.progress, ["Working on it."]);
        assert!(seen.usage_changed);
        // The same message's next block: same usage, nothing new to write.
        let seen = s.on_line(&msg("m1", json!({"type": "tool_use", "name": "Write", "input": {}})));
        assert!(!seen.usage_changed && seen.progress.is_empty());
        s.on_line(&msg("m2", json!({"type": "text", "text": "All done."})));
        let u = s.usage().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(2000), Some(2)));
        assert!((u.cost_usd.unwrap() - (2000.0 * 5.0 + 2.0 * 25.0) / 1e6).abs() < 1e-12, "{u:?}");
        // The limit's reset, then the result line, whose usage is the real one.
        s.on_line(&line(
            json!({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1796677731u64}}),
        ));
        assert_eq!(s.reset_at_ms, Some(1_796_677_731_000));
        let result = json!({"type": "result", "subtype": "success", "is_error": true, "api_error_status": 429,
            "result": "You've hit your session limit · resets 9pm (UTC)", "session_id": "44f90f0c-aaaa", "total_cost_usd": 0.02,
            "usage": {"input_tokens": 10, "output_tokens": 5}});
        s.on_line(&line(result));
        assert_eq!(s.usage().unwrap().cost_usd, Some(0.02));
        let limit = s.outcome.as_ref().unwrap().limit(s.reset_at_ms, chrono::Local::now()).unwrap();
        assert_eq!(limit.reset_at_ms, Some(1_796_677_731_000));
        // Lines that are not the format's pass through.
        assert!(s.on_line(b"plain text").raw && s.on_line(b"[1]").raw);
    }

    #[test]
    fn codex_stream_gives_thread_answer_usage_less_the_resumed_part_and_errors() {
        let mut s = CodexStream { baseline: (200, 40, 14), ..CodexStream::default() };
        s.on_line(&line(json!({"type": "thread.started", "thread_id": "01a25226-f239-7602-928b-d7126936c018"})));
        assert_eq!(s.session_id.as_deref(), Some("01a25226-f239-7602-928b-d7126936c018"));
        let seen = s.on_line(&line(
            json!({"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": "All done."}}),
        ));
        assert_eq!(seen.progress, ["All done."]);
        s.on_line(&line(json!({"type": "turn.completed", "usage": {"input_tokens": 300, "cached_input_tokens": 60, "output_tokens": 21}})));
        let u = s.usage().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(100), Some(7)));
        assert_eq!(s.text.as_deref(), Some("All done."));
        let mut f = CodexStream::default();
        f.on_line(&line(json!({"type": "error", "message": "Reconnecting... 1/2 (x)"})));
        assert_eq!(f.error, None);
        f.on_line(&line(json!({"type": "error", "message": "You’ve hit your usage limit. Try again at 9:14 PM."})));
        f.on_line(&line(
            json!({"type": "turn.failed", "error": {"message": "You’ve hit your usage limit. Try again at 9:14 PM."}}),
        ));
        assert!(f.turn_failed && f.error.as_deref().unwrap().contains("usage limit"));
    }
}
