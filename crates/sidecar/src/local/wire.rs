//! What `agentcom mcp` asks its sidecar over the local socket (one JSON line each way, one
//! request per connection), and the checks of every argument: the MCP tool's arguments come
//! from a model, the socket's lines from any process of the user, so both edges run the same
//! [`Request::check`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line read; a longer one is refused without being held whole.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Longest answer line (children's results are cut to fit, see [`MAX_RESULT_CHARS`]).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// A progress message, in characters.
pub const MAX_MESSAGE: usize = 2_000;
/// Tasks one `wait_for_tasks` may name.
pub const MAX_WAIT_TASKS: usize = 100;
/// The longest one call may wait, in seconds (the client's own tool timeout may be shorter).
pub const MAX_WAIT_S: u64 = 3_600;
/// A child's result as a tool returns it, in characters of its JSON.
pub const MAX_RESULT_CHARS: usize = 16_000;

/// The environment variable naming the sidecar's socket in a wake.
pub const SOCKET_ENV: &str = "AGENTCOM_SIDECAR_SOCKET";

/// The task the caller speaks for (from its wake's environment): the sidecar refuses any other
/// than the one it holds, and an earlier attempt of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub task_id: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A question to a person; waits for the answer at most `wait_ms`.
    Ask {
        #[serde(flatten)]
        scope: Scope,
        question: String,
        #[serde(default)]
        options: Vec<String>,
        wait_ms: u64,
    },
    Progress {
        #[serde(flatten)]
        scope: Scope,
        message: String,
    },
    /// A child of the held task.
    Submit {
        #[serde(flatten)]
        scope: Scope,
        description: String,
        #[serde(default)]
        priority: Option<String>,
        #[serde(default)]
        capabilities: Vec<String>,
        #[serde(default)]
        depends_on: Vec<String>,
    },
    /// Children of the held task, until all finished or `wait_ms` passed.
    Wait {
        #[serde(flatten)]
        scope: Scope,
        task_ids: Vec<String>,
        wait_ms: u64,
    },
    Status {
        #[serde(flatten)]
        scope: Scope,
        of: String,
    },
}

/// The sidecar's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The person's answer.
    Answer { answer: String },
    /// No answer within the wait; the question stays open (not asked again when repeated).
    Pending { request_id: Option<String> },
    /// Done, with what the tool shows.
    Done { value: Value },
    /// Refused or failed, and why (the tool's error text).
    Error { error: String },
}

fn chars(name: &str, s: &str, max: usize, errors: &mut Vec<String>) {
    if s.trim().is_empty() {
        errors.push(format!("{name}: must not be empty"));
    } else if s.chars().count() > max {
        errors.push(format!("{name}: longer than {max} characters"));
    }
}

fn ids(name: &str, list: &[String], max: usize, errors: &mut Vec<String>) {
    if list.len() > max {
        errors.push(format!("{name}: at most {max} task ids"));
        return;
    }
    for (i, id) in list.iter().enumerate() {
        if let Err(e) = proto::check_task_id(id) {
            errors.push(e.replacen("task_id", &format!("{name}[{i}]"), 1));
        } else if list[..i].contains(id) {
            errors.push(format!("{name}[{i}]: {id} is listed twice"));
        }
    }
}

impl Request {
    pub fn scope(&self) -> &Scope {
        match self {
            Request::Ask { scope, .. }
            | Request::Progress { scope, .. }
            | Request::Submit { scope, .. }
            | Request::Wait { scope, .. }
            | Request::Status { scope, .. } => scope,
        }
    }

    /// Every problem with the request, named by its field; empty when it may go on.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = proto::check_task_id(&self.scope().task_id) {
            errors.push(e.replacen("task_id", "AGENTCOM_TASK_ID", 1));
        }
        match self {
            Request::Ask { question, options, .. } => {
                chars("question", question, proto::MAX_QUESTION, &mut errors);
                if options.len() > proto::MAX_OPTIONS {
                    errors.push(format!("options: at most {} options", proto::MAX_OPTIONS));
                }
                for (i, o) in options.iter().enumerate().take(proto::MAX_OPTIONS + 1) {
                    chars(&format!("options[{i}]"), o, proto::MAX_SHORT, &mut errors);
                }
            }
            Request::Progress { message, .. } => chars("message", message, MAX_MESSAGE, &mut errors),
            Request::Submit { description, priority, capabilities, depends_on, .. } => {
                chars("description", description, proto::MAX_DESCRIPTION, &mut errors);
                if let Some(p) = priority {
                    if let Err(e) = p.parse::<proto::api::Priority>() {
                        errors.push(format!("priority: {e}"));
                    }
                }
                if capabilities.len() > proto::api::MAX_CAPABILITIES {
                    errors.push(format!("capabilities: at most {} capabilities", proto::api::MAX_CAPABILITIES));
                }
                for (i, c) in capabilities.iter().enumerate().take(proto::api::MAX_CAPABILITIES + 1) {
                    chars(&format!("capabilities[{i}]"), c, proto::MAX_SHORT, &mut errors);
                }
                ids("depends_on", depends_on, proto::api::MAX_DEPENDS_ON, &mut errors);
            }
            Request::Wait { task_ids, wait_ms, .. } => {
                if task_ids.is_empty() {
                    errors.push("task_ids: name at least one task".into());
                }
                ids("task_ids", task_ids, MAX_WAIT_TASKS, &mut errors);
                if *wait_ms > MAX_WAIT_S * 1000 {
                    errors.push(format!("timeout_s: at most {MAX_WAIT_S}"));
                }
            }
            Request::Status { of, .. } => {
                if let Err(e) = proto::check_task_id(of) {
                    errors.push(e);
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope { task_id: "task-1".into(), generation: 2 }
    }

    #[test]
    fn requests_are_one_json_object_each_and_checked_field_by_field() {
        let r = Request::Ask { scope: scope(), question: "Deploy?".into(), options: vec!["yes".into()], wait_ms: 5 };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"op": "ask", "task_id": "task-1", "generation": 2, "question": "Deploy?", "options": ["yes"], "wait_ms": 5})
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        assert!(r.check().is_empty());
        let bad = Request::Submit {
            scope: Scope { task_id: "../x".into(), generation: 0 },
            description: " ".into(),
            priority: Some("soon".into()),
            capabilities: vec![String::new(); 65],
            depends_on: vec!["a".into(), "a".into()],
        };
        let e = bad.check();
        assert!(e[0].starts_with("AGENTCOM_TASK_ID: must be"), "{e:?}");
        assert_eq!(e[1], "description: must not be empty");
        assert!(e[2].starts_with("priority: unknown priority"), "{e:?}");
        assert_eq!(e[3], "capabilities: at most 64 capabilities");
        assert!(e.contains(&"depends_on[1]: a is listed twice".to_string()), "{e:?}");
        let w = Request::Wait { scope: scope(), task_ids: vec![], wait_ms: 3_600_001 };
        assert_eq!(w.check(), ["task_ids: name at least one task", "timeout_s: at most 3600"]);
        let unknown = json!({"op": "rm", "task_id": "t", "generation": 1});
        assert!(serde_json::from_value::<Request>(unknown).is_err());
    }
}
