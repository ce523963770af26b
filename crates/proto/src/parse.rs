//! Validation of incoming agent frames against a per-type field schema, so every error names
//! its field; hub frames are read leniently.

use crate::*;
use serde_json::{Map, Value};

/// Why an incoming frame was refused. Each variant maps to one `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// Not JSON, or JSON that is not an object.
    Malformed(String),
    /// No `type`, or a `type` that is not a string.
    MissingType,
    UnknownType(String),
    Invalid {
        message_type: String,
        errors: Vec<String>,
    },
}

impl FrameError {
    pub fn to_frame(&self) -> HubFrame {
        let e = match self {
            FrameError::Malformed(m) => ErrorFrame::new(FrameErrorCode::InvalidJson).message(m.clone()),
            FrameError::MissingType => ErrorFrame {
                errors: vec!["type: required string".into()],
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
            FrameError::UnknownType(t) => ErrorFrame {
                message_type: Some(t.clone()),
                errors: vec![format!("type: unknown message type {t:?}")],
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
            FrameError::Invalid { message_type, errors } => ErrorFrame {
                message_type: Some(message_type.clone()),
                errors: errors.clone(),
                ..ErrorFrame::new(FrameErrorCode::ValidationFailed)
            },
        };
        HubFrame::Error(e)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str(usize),
    UInt,
    Num,
    Obj,
    StrArray(usize),
    /// A task id ([`check_task_id`]).
    TaskId,
    /// A task id or null.
    OptTaskId,
    /// A [`Usage`] object: every field optional, each of its type.
    UsageObj,
    /// A [`Change`] ([`Change::from_value`]).
    ChangeObj,
    /// A [`Limit`]: times within [`MAX_LIMIT_WAIT_MS`] of each other, a message.
    LimitObj,
    /// A session id ([`check_session_id`]).
    SessionId,
    Any,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

// Macros rather than const fns: struct literals are promoted to `'static`, calls are not.
macro_rules! req {
    ($name:literal, $kind:expr) => {
        Field { name: $name, kind: $kind, required: true }
    };
}
macro_rules! opt {
    ($name:literal, $kind:expr) => {
        Field { name: $name, kind: $kind, required: false }
    };
}

const ID: Kind = Kind::TaskId;
const REASON: Kind = Kind::Str(MAX_REASON);

fn schema(message_type: &str) -> Option<&'static [Field]> {
    use Kind::*;
    Some(match message_type {
        "identify" => &[
            req!("agent_id", Str(MAX_AGENT_ID)),
            req!("token", Str(MAX_TOKEN)),
            opt!("name", Str(MAX_SHORT)),
            opt!("status", Str(MAX_SHORT)),
            opt!("capabilities", StrArray(MAX_SHORT)),
            opt!("client_type", Str(MAX_SHORT)),
            opt!("protocol_version", UInt),
            opt!("pm2_info", Obj),
            opt!("process_info", Obj),
            opt!("ollama_url", Str(MAX_REASON)),
            opt!("account", Str(MAX_AGENT_ID)),
        ],
        "ping" => &[],
        "status" => &[req!("status", Str(MAX_SHORT))],
        "task_accepted" => &[req!("task_id", ID)],
        "task_rejected" => &[req!("task_id", ID), opt!("reason", REASON)],
        "task_progress" => &[req!("task_id", ID), opt!("progress", Any), opt!("execution_event", Any)],
        "wake_result" => {
            &[req!("task_id", ID), req!("status", Str(MAX_SHORT)), opt!("attempt", UInt), opt!("error", REASON)]
        }
        "task_complete" => &[
            req!("task_id", ID),
            req!("generation", UInt),
            opt!("result", Any),
            opt!("tokens_used", Any),
            opt!("verification_report", Any),
            opt!("verification_history", Any),
            opt!("usage", UsageObj),
            opt!("change", ChangeObj),
            opt!("session_id", SessionId),
        ],
        "task_failed" => &[
            req!("task_id", ID),
            req!("generation", UInt),
            opt!("reason", REASON),
            opt!("error", REASON),
            opt!("usage", UsageObj),
            opt!("change", ChangeObj),
            opt!("session_id", SessionId),
        ],
        "task_limited" => &[
            req!("task_id", ID),
            req!("generation", UInt),
            opt!("limit", LimitObj),
            opt!("usage", UsageObj),
            opt!("change", ChangeObj),
            opt!("session_id", SessionId),
        ],
        "task_usage" => {
            &[req!("task_id", ID), req!("generation", UInt), req!("usage", UsageObj), opt!("session_id", SessionId)]
        }
        "needs_input" => &[
            req!("task_id", ID),
            req!("request_id", Str(MAX_REQUEST_ID)),
            req!("question", Str(MAX_QUESTION)),
            opt!("options", StrArray(MAX_SHORT)),
        ],
        "task_input_ack" => &[req!("task_id", ID), req!("request_id", Str(MAX_REQUEST_ID))],
        "needs_input_closed" => &[req!("task_id", ID), req!("request_id", Str(MAX_REQUEST_ID)), opt!("reason", REASON)],
        "task_recovering" => &[req!("task_id", ID), opt!("last_status", Str(MAX_SHORT))],
        "state_report" => &[
            opt!("task_id", OptTaskId),
            opt!("status", Str(MAX_SHORT)),
            opt!("generation", UInt),
            opt!("assigned_at", UInt),
        ],
        "agent_restarting" => &[opt!("reason", REASON)],
        "restart_outcome" => &[req!("outcome", Str(MAX_SHORT)), opt!("reason", REASON)],
        "resource_report" => &[opt!("cpu_percent", Num), opt!("ram_used_bytes", Num), opt!("ram_total_bytes", Num)],
        _ => return None,
    })
}

/// Most items a string array in a frame may hold (capabilities, options).
const MAX_ARRAY: usize = 64;

fn usage_kind(field: &str) -> &'static str {
    match field {
        "cost_usd" => "a number from 0 to 1000000",
        "model" => "a string of at most 256 characters",
        _ => "an integer from 0 to 10000000000",
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(field: &Field, v: &Value, errors: &mut Vec<String>) {
    let name = field.name;
    let str_len = |s: &str, max: usize, errors: &mut Vec<String>| {
        if s.chars().count() > max {
            errors.push(format!("{name}: longer than {max} characters"));
        }
    };
    match (field.kind, v) {
        (Kind::Any, _) => {}
        (Kind::Str(max), Value::String(s)) => str_len(s, max, errors),
        (Kind::OptTaskId, Value::Null) => {}
        (Kind::TaskId | Kind::OptTaskId, Value::String(s)) => {
            if let Err(e) = check_task_id(s) {
                errors.push(e);
            }
        }
        (Kind::UInt, Value::Number(n)) if n.is_u64() => {}
        (Kind::UInt, other) => {
            errors.push(format!("{name}: expected a non-negative integer, got {}", kind_name(other)))
        }
        (Kind::Num, Value::Number(_)) => {}
        (Kind::UsageObj, Value::Object(m)) => {
            for (k, v) in m {
                let ok = match (k.as_str(), v) {
                    (_, Value::Null) => true,
                    ("input_tokens" | "output_tokens" | "total_tokens", Value::Number(n)) => {
                        n.as_u64().is_some_and(|n| n <= MAX_USAGE_TOKENS)
                    }
                    ("cost_usd", Value::Number(n)) => {
                        n.as_f64().is_some_and(|c| (0.0..=MAX_USAGE_COST_USD).contains(&c))
                    }
                    ("model", Value::String(s)) => s.chars().count() <= MAX_SHORT,
                    ("input_tokens" | "output_tokens" | "total_tokens" | "cost_usd" | "model", _) => false,
                    // Other keys are the agent's own; they are dropped.
                    _ => true,
                };
                if !ok {
                    errors.push(format!("{name}.{k}: expected {}", usage_kind(k)));
                }
            }
        }
        (Kind::Obj, Value::Object(_)) => {}
        (Kind::SessionId, Value::String(s)) => {
            if let Err(e) = check_session_id(s) {
                errors.push(e);
            }
        }
        (Kind::LimitObj, Value::Object(m)) => {
            for (k, v) in m {
                let ok = match (k.as_str(), v) {
                    (_, Value::Null) => true,
                    ("reset_at_ms", Value::Number(n)) => n.as_u64().is_some_and(|n| n < 1 << 53),
                    ("retry_after_ms", Value::Number(n)) => n.as_u64().is_some_and(|n| n <= MAX_LIMIT_WAIT_MS),
                    ("message", Value::String(s)) => s.chars().count() <= MAX_REASON,
                    ("reset_at_ms" | "retry_after_ms" | "message", _) => false,
                    _ => true,
                };
                if !ok {
                    let want = match k.as_str() {
                        "message" => format!("a string of at most {MAX_REASON} characters"),
                        "retry_after_ms" => format!("milliseconds, at most {MAX_LIMIT_WAIT_MS}"),
                        _ => "epoch milliseconds".into(),
                    };
                    errors.push(format!("{name}.{k}: expected {want}"));
                }
            }
        }
        (Kind::ChangeObj, v @ Value::Object(_)) => {
            if let Err(e) = Change::from_value(v) {
                errors.extend(e);
            }
        }
        (Kind::StrArray(max), Value::Array(items)) => {
            if items.len() > MAX_ARRAY {
                errors.push(format!("{name}: more than {MAX_ARRAY} items"));
            }
            for (i, item) in items.iter().enumerate().take(MAX_ARRAY) {
                match item {
                    Value::String(s) if s.chars().count() <= max => {}
                    Value::String(_) => errors.push(format!("{name}[{i}]: longer than {max} characters")),
                    other => errors.push(format!("{name}[{i}]: expected string, got {}", kind_name(other))),
                }
            }
        }
        (kind, other) => {
            let want = match kind {
                Kind::Str(_) | Kind::TaskId | Kind::OptTaskId | Kind::SessionId => "string",
                Kind::Num => "number",
                Kind::Obj | Kind::UsageObj | Kind::ChangeObj | Kind::LimitObj => "object",
                Kind::StrArray(_) => "array of strings",
                Kind::UInt | Kind::Any => unreachable!("handled above"),
            };
            errors.push(format!("{name}: expected {want}, got {}", kind_name(other)));
        }
    }
}

/// Parses and validates one text frame from an agent.
pub fn parse_agent_frame(text: &str) -> Result<AgentFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(FrameError::Malformed("frame must be a JSON object".into()));
    };
    let Some(Value::String(t)) = obj.get("type") else {
        return Err(FrameError::MissingType);
    };
    let t = t.clone();
    let fields = schema(&t).ok_or_else(|| FrameError::UnknownType(truncate(&t, 64)))?;
    let mut errors = Vec::new();
    for f in fields {
        match obj.get(f.name) {
            None => {
                if f.required {
                    errors.push(format!("{}: required", f.name));
                }
            }
            Some(Value::Null) if !f.required && !matches!(f.kind, Kind::OptTaskId) => {}
            Some(v) => check(f, v, &mut errors),
        }
    }
    if !errors.is_empty() {
        return Err(FrameError::Invalid { message_type: t, errors });
    }
    let mut obj = strip_nulls(obj, fields);
    if t == "resource_report" {
        // The report is a free-form map; the transport's own field is not part of it.
        obj.remove("protocol_version");
    }
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| FrameError::Invalid { message_type: t, errors: vec![e.to_string()] })
}

/// Optional fields sent as `null` mean "absent"; the typed structs expect them missing.
fn strip_nulls(mut obj: Map<String, Value>, fields: &[Field]) -> Map<String, Value> {
    for f in fields {
        let nullable = matches!(f.kind, Kind::OptTaskId | Kind::Any);
        if !f.required && !nullable && obj.get(f.name) == Some(&Value::Null) {
            obj.remove(f.name);
        }
    }
    obj
}

/// Parses a hub frame leniently (used by sidecars and test clients).
pub fn parse_hub_frame(text: &str) -> Result<HubFrame, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
