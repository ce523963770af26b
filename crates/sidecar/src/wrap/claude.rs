//! `run-agent --usage claude-json`: Claude Code's final JSON object on stdout
//! (`claude -p ... --output-format json`) read into the result file.
//!
//! The shape is Claude Code's documented result message (the Agent SDK's `SDKResultMessage`):
//! `type: "result"`, `subtype` (`success`, or `error_max_turns`, `error_during_execution`,
//! `error_max_budget_usd`, ...), `is_error`, `result` (the answer text, on success),
//! `errors` (on the error subtypes), `total_cost_usd`, `usage` (`input_tokens`,
//! `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`), `modelUsage`
//! (per model: `costUSD`, ...), `session_id`. With `--verbose` the output is an array of all
//! messages; its last result object is taken. Everything is read as hostile input: any field
//! may be missing or of the wrong type, and is then left out.

use proto::Usage;
use serde_json::{Map, Value};

/// Most bytes of the answer text kept in the result file: with the output tail it stays under
/// the sidecar's default `max_result_bytes` (768 KiB).
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

/// What Claude Code's result object says.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub is_error: bool,
    pub subtype: Option<String>,
    /// The answer text, at most [`MAX_TEXT_BYTES`].
    pub text: Option<String>,
    /// Whether `text` was cut to fit.
    pub text_clipped: bool,
    pub errors: Vec<String>,
    pub usage: Option<Usage>,
    pub session_id: Option<String>,
    /// The HTTP status of the API error that ended the run (429, 529...), when it says.
    pub api_error_status: Option<u64>,
}

impl Outcome {
    /// The model provider's limit that ended the run, if that is what ended it: the API's 429
    /// (rate limit) or 529 (overloaded), or a usage-limit message (`You've hit your session
    /// limit · resets 9pm (UTC)`, subscriber accounts). `reset_at_ms`: the reset time when the
    /// stream said it (`rate_limit_event`); else it is read from the message, when it has one.
    pub fn limit(&self, reset_at_ms: Option<u64>, now: chrono::DateTime<chrono::Local>) -> Option<proto::Limit> {
        if !self.is_error {
            return None;
        }
        let text = self.text.clone().unwrap_or_else(|| self.errors.join("; "));
        let by_status = matches!(self.api_error_status, Some(429 | 529));
        let by_text = super::limits::is_limit_message(&text);
        if !by_status && !by_text {
            return None;
        }
        let reset_at_ms = reset_at_ms.or_else(|| super::limits::claude_reset(&text, now));
        Some(proto::Limit { reset_at_ms, retry_after_ms: None, message: Some(crate::machine::clip(text.trim(), 500)) })
    }

    /// Why the run failed, when Claude Code says it did.
    pub fn error_reason(&self) -> Option<String> {
        if !self.is_error {
            return None;
        }
        let subtype = self.subtype.as_deref().unwrap_or("error");
        let detail =
            if self.errors.is_empty() { self.text.clone().unwrap_or_default() } else { self.errors.join("; ") };
        let reason = if detail.trim().is_empty() {
            format!("claude reported an error ({subtype})")
        } else {
            format!("claude reported an error ({subtype}): {}", detail.trim())
        };
        Some(crate::machine::clip(&reason, 1000))
    }
}

/// One line of stdout: Claude Code's result object, if it is one.
pub fn parse_line(line: &[u8]) -> Option<Outcome> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let obj = match &v {
        Value::Object(m) => m,
        Value::Array(items) => items.iter().rev().find_map(|i| i.as_object().filter(|m| is_result(m)))?,
        _ => return None,
    };
    if !is_result(obj) {
        return None;
    }
    let subtype = obj.get("subtype").and_then(Value::as_str).map(|s| crate::machine::clip(s, 100));
    let is_error = match obj.get("is_error") {
        Some(Value::Bool(b)) => *b,
        _ => subtype.as_deref() != Some("success"),
    };
    let (text, text_clipped) = match obj.get("result").and_then(Value::as_str) {
        Some(t) => {
            let cut = clip_bytes(t, MAX_TEXT_BYTES);
            (Some(cut.to_string()), cut.len() < t.len())
        }
        None => (None, false),
    };
    let errors = match obj.get("errors") {
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).take(20).map(|e| crate::machine::clip(e, 500)).collect()
        }
        _ => Vec::new(),
    };
    let session_id = obj
        .get("session_id")
        .and_then(Value::as_str)
        .filter(|s| proto::check_session_id(s).is_ok())
        .map(str::to_string);
    let api_error_status = obj.get("api_error_status").and_then(Value::as_u64);
    Some(Outcome { is_error, subtype, text, text_clipped, errors, usage: usage(obj), session_id, api_error_status })
}

fn is_result(m: &Map<String, Value>) -> bool {
    m.get("type").and_then(Value::as_str) == Some("result")
}

/// The usage of a result object. Input tokens include the cache's (written and read): they
/// are input the model processed, billed at their own rates, which `total_cost_usd` has.
fn usage(obj: &Map<String, Value>) -> Option<Usage> {
    let counts = obj.get("usage").and_then(Value::as_object);
    let count = |k: &str| counts.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let input = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
        .iter()
        .filter_map(|k| count(k))
        .fold(None, |sum: Option<u64>, n| Some(sum.unwrap_or(0).saturating_add(n)));
    // Older releases called the cost `cost_usd`.
    let cost = ["total_cost_usd", "cost_usd"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_f64))
        .filter(|c| c.is_finite() && *c >= 0.0);
    let u = Usage {
        input_tokens: input,
        output_tokens: count("output_tokens"),
        total_tokens: None,
        cost_usd: cost,
        model: model(obj),
    }
    .within_limits();
    (!u.is_empty()).then_some(u)
}

/// The model: `model` if the object names one, else the one of `modelUsage` that cost the
/// most (a run may use a small model beside the main one); ties go to the first by name.
fn model(obj: &Map<String, Value>) -> Option<String> {
    let clip = |s: &str| crate::machine::clip(s, proto::MAX_SHORT);
    if let Some(m) = obj.get("model").and_then(Value::as_str).filter(|m| !m.trim().is_empty()) {
        return Some(clip(m));
    }
    let per_model = obj.get("modelUsage").and_then(Value::as_object)?;
    let mut best: Option<(&str, f64)> = None;
    for (name, u) in per_model.iter().filter(|(name, _)| !name.trim().is_empty()) {
        let cost = u.get("costUSD").and_then(Value::as_f64).filter(|c| c.is_finite()).unwrap_or(0.0);
        if best.is_none_or(|(b, c)| cost > c || (cost == c && name.as_str() < b)) {
            best = Some((name, cost));
        }
    }
    best.map(|(name, _)| clip(name))
}

/// `s` cut to at most `max` bytes, never inside a character.
pub(super) fn clip_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// As `claude -p "..." --output-format json` prints it.
    fn success() -> Value {
        json!({
            "type": "result", "subtype": "success", "is_error": false, "duration_ms": 12000,
            "duration_api_ms": 11000, "num_turns": 4, "result": "Fixed the bug.\nAll tests pass.",
            "stop_reason": "end_turn", "session_id": "0e639165-79b1-4bd4-bb0f-4cb4c15115d4",
            "total_cost_usd": 0.0421,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 15000,
                      "output_tokens": 450, "server_tool_use": {"web_search_requests": 0}},
            "modelUsage": {"claude-haiku-4-5": {"inputTokens": 100, "costUSD": 0.0021},
                           "claude-sonnet-4-5": {"inputTokens": 15212, "costUSD": 0.04}},
            "permission_denials": []
        })
    }

    #[test]
    fn the_documented_success_object_gives_text_and_usage() {
        let o = parse_line(success().to_string().as_bytes()).unwrap();
        assert!(!o.is_error);
        assert_eq!(o.text.as_deref(), Some("Fixed the bug.\nAll tests pass."));
        assert_eq!(
            o.usage,
            Some(Usage {
                input_tokens: Some(15_312),
                output_tokens: Some(450),
                total_tokens: None,
                cost_usd: Some(0.0421),
                model: Some("claude-sonnet-4-5".into()),
            })
        );
        assert_eq!(o.session_id.as_deref(), Some("0e639165-79b1-4bd4-bb0f-4cb4c15115d4"));
        assert_eq!(o.error_reason(), None);
    }

    #[test]
    fn error_subtypes_and_verbose_arrays() {
        let err = json!({"type": "result", "subtype": "error_max_turns", "is_error": true,
                         "errors": ["Reached maximum number of turns (3)"], "total_cost_usd": 0.5,
                         "usage": {"input_tokens": 10, "output_tokens": 2}});
        let o = parse_line(err.to_string().as_bytes()).unwrap();
        assert_eq!(
            o.error_reason().as_deref(),
            Some("claude reported an error (error_max_turns): Reached maximum number of turns (3)")
        );
        assert_eq!(o.usage.unwrap().cost_usd, Some(0.5));
        // A failure Claude Code prints as the result (missing authentication...).
        let auth = json!({"type": "result", "subtype": "success", "is_error": true, "result": "Invalid API key"});
        let o = parse_line(auth.to_string().as_bytes()).unwrap();
        assert_eq!(o.error_reason().as_deref(), Some("claude reported an error (success): Invalid API key"));
        // `--verbose`: every message in an array; the last result object counts.
        let all = json!([{"type": "system", "subtype": "init", "model": "x"}, success()]);
        assert_eq!(
            parse_line(all.to_string().as_bytes()).unwrap().text.as_deref(),
            Some("Fixed the bug.\nAll tests pass.")
        );
        // Not a result object.
        for other in [&b"{\"type\":\"assistant\"}"[..], b"progress: 50%", b"[1,2]", b"null", b""] {
            assert_eq!(parse_line(other), None, "{}", String::from_utf8_lossy(other));
        }
        // An explicit model wins; a missing is_error is read from the subtype.
        let o = parse_line(br#"{"type":"result","subtype":"error_during_execution","model":"opus"}"#).unwrap();
        assert!(o.is_error);
        assert_eq!(o.usage.unwrap().model.as_deref(), Some("opus"));
    }

    #[test]
    fn a_huge_answer_is_cut_at_a_character() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let o =
            parse_line(json!({"type": "result", "is_error": false, "result": text}).to_string().as_bytes()).unwrap();
        let kept = o.text.unwrap();
        assert!(o.text_clipped && kept.len() == MAX_TEXT_BYTES && kept.chars().all(|c| c == 'é'));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any line: a result object or none, never a panic, and a usage the hub accepts.
        #[test]
        fn any_line_is_read_or_left_alone(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_line(&bytes);
        }

        /// Result-shaped objects with fields of any type: the usage sent passes the hub.
        #[test]
        fn any_result_object_gives_a_usage_the_hub_accepts(
            fields in prop::collection::vec((
                prop::sample::select(vec!["subtype", "is_error", "result", "errors", "total_cost_usd", "cost_usd",
                    "usage", "modelUsage", "model", "session_id"]),
                prop_oneof![
                    Just(Value::Null), any::<bool>().prop_map(Value::from), any::<i64>().prop_map(Value::from),
                    any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
                    "\\PC{0,20}".prop_map(Value::from),
                    (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(a, b, c)| json!({"input_tokens": a,
                        "cache_read_input_tokens": b, "output_tokens": c})),
                    ("\\PC{0,300}", any::<f64>().prop_filter("finite", |f| f.is_finite()))
                        .prop_map(|(m, c)| json!({ m: {"costUSD": c} })),
                    prop::collection::vec("\\PC{0,10}".prop_map(Value::from), 0..3).prop_map(Value::Array),
                ],
            ), 0..8),
        ) {
            let mut m = Map::new();
            m.insert("type".into(), json!("result"));
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            let o = parse_line(Value::Object(m).to_string().as_bytes()).expect("a result object");
            let reason = o.error_reason();
            if let Some(u) = o.usage {
                let frame = proto::AgentFrame::TaskFailed { task_id: "t".into(), generation: 1,
                    reason, error: None, usage: Some(u), change: None, session_id: o.session_id.clone() };
                prop_assert!(proto::parse_agent_frame(&frame.to_text()).is_ok(), "{:?}", frame);
            }
        }
    }
}
