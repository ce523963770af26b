//! What an attempt cost, as an agent reports it: `usage` in its result file, or a
//! `<task_id>.usage` file, both `{"input_tokens", "output_tokens", "total_tokens", "cost_usd",
//! "model"}`. Read as hostile input: each field is kept only if the hub accepts it
//! ([`proto::Usage`]'s rules: counts are integers up to [`proto::MAX_USAGE_TOKENS`], the cost a
//! number up to [`proto::MAX_USAGE_COST_USD`], the model at most [`proto::MAX_SHORT`]
//! characters); a field that is not is dropped
//! and named, so a bad field never costs the report.

use proto::Usage;
use serde_json::Value;

/// Most bytes of a `<task_id>.usage` file read; a larger one is reported and ignored.
pub const MAX_USAGE_FILE_BYTES: usize = 64 * 1024;

/// The usage in `v`, and a note for each field that was dropped. `Err` when `v` is not an
/// object. `Ok((None, _))` when no field is usable.
pub fn parse(v: &Value) -> Result<(Option<Usage>, Vec<String>), String> {
    let Value::Object(m) = v else {
        return Err(format!("usage must be a JSON object, not {}", kind(v)));
    };
    let mut usage = Usage::default();
    let mut dropped = Vec::new();
    for (key, value) in m {
        if value.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "input_tokens" => count(value).map(|n| usage.input_tokens = Some(n)),
            "output_tokens" => count(value).map(|n| usage.output_tokens = Some(n)),
            "total_tokens" => count(value).map(|n| usage.total_tokens = Some(n)),
            "cost_usd" => value
                .as_f64()
                .filter(|c| (0.0..=proto::MAX_USAGE_COST_USD).contains(c) && value.is_number())
                .map(|c| usage.cost_usd = Some(c)),
            "model" => value
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .map(|s| usage.model = Some(crate::machine::clip(s, proto::MAX_SHORT))),
            // Other keys are the agent's own (cache counts, session ids...): not ours to send.
            _ => Some(()),
        };
        if ok.is_none() {
            let want = match key.as_str() {
                "cost_usd" => "a number from 0 to 1000000",
                "model" => "a non-empty string",
                _ => "an integer from 0 to 10000000000",
            };
            dropped.push(format!("usage.{key}: expected {want}, got {}", kind(value)));
        }
    }
    Ok(((!usage.is_empty()).then_some(usage), dropped))
}

/// The agent CLI's session id in a usage object or a result (`session_id`), if it is one we
/// pass on ([`proto::check_session_id`]).
pub fn session_of(v: &Value) -> Option<String> {
    v.get("session_id").and_then(Value::as_str).filter(|s| proto::check_session_id(s).is_ok()).map(str::to_string)
}

/// A `<task_id>.usage` file's bytes: JSON of the same shape.
pub fn parse_file(bytes: &[u8]) -> Result<(Option<Usage>, Vec<String>), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    parse(&v)
}

/// A usage file's session id, if it names one.
pub fn session_in_file(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(bytes).ok().as_ref().and_then(session_of)
}

fn count(v: &Value) -> Option<u64> {
    v.as_u64().filter(|n| *n <= proto::MAX_USAGE_TOKENS)
}

fn kind(v: &Value) -> String {
    let k = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => return format!("the number {}", crate::machine::clip(&v.to_string(), 40)),
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    k.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keeps_valid_fields_and_names_the_dropped_ones() {
        let (u, dropped) = parse(&json!({
            "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.0123, "model": "claude-sonnet",
            "cache_read_input_tokens": 5, "session": "x"
        }))
        .unwrap();
        let u = u.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cost_usd, u.model.as_deref()),
            (Some(1200), Some(300), Some(0.0123), Some("claude-sonnet"))
        );
        assert!(dropped.is_empty());
        let (u, dropped) =
            parse(&json!({"input_tokens": -3, "output_tokens": 1.5, "cost_usd": "1", "model": 7, "total_tokens": 9}))
                .unwrap();
        assert_eq!(u, Some(Usage { total_tokens: Some(9), ..Usage::default() }));
        assert_eq!(dropped.len(), 4, "{dropped:?}");
        assert!(dropped
            .iter()
            .any(|d| d == "usage.input_tokens: expected an integer from 0 to 10000000000, got the number -3"));
        assert_eq!(parse(&json!({})).unwrap().0, None);
        assert_eq!(parse(&json!({"cost_usd": null})).unwrap().0, None);
        assert!(parse(&json!([1])).unwrap_err().contains("JSON object"));
        assert!(parse_file(b"{nope").unwrap_err().starts_with("not JSON"));
        let long = "m".repeat(1000);
        let (u, _) = parse(&json!({ "model": long })).unwrap();
        assert_eq!(u.unwrap().model.unwrap().chars().count(), proto::MAX_SHORT);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("JSON has no NaN", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,300}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("input_tokens".to_string()),
                        Just("output_tokens".to_string()),
                        Just("total_tokens".to_string()),
                        Just("cost_usd".to_string()),
                        Just("model".to_string()),
                        "[a-z_]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever an agent writes: never a panic, and what is kept is a usage the hub accepts
        /// in `task_complete` and in `task_failed`.
        #[test]
        fn any_usage_is_parsed_into_one_the_hub_accepts(v in value()) {
            if let Ok((Some(u), _)) = parse(&v) {
                for frame in [
                    proto::AgentFrame::TaskComplete { task_id: "t".into(), generation: 1, result: None, tokens_used: None,
                        verification_report: None, verification_history: None, usage: Some(u.clone()), change: None, session_id: None },
                    proto::AgentFrame::TaskFailed { task_id: "t".into(), generation: 1, reason: None, error: None, usage: Some(u.clone()), change: None, session_id: None },
                ] {
                    // Ok is the point; costs are not compared (serde_json may round a decimal's last digit).
                    let parsed = proto::parse_agent_frame(&frame.to_text());
                    prop_assert!(parsed.is_ok(), "{:?} refused: {:?}", frame, parsed);
                }
            }
        }

        /// Any bytes as a usage file: parsed or refused, never a panic.
        #[test]
        fn any_usage_file_is_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_file(&bytes);
        }
    }
}
