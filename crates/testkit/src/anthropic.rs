//! A scripted Anthropic Messages API on loopback, so the real Claude Code CLI runs offline in
//! tests (`ANTHROPIC_BASE_URL`). The script answers each main request from the conversation's
//! state (never from a request counter: a resumed conversation must get a sensible answer), as
//! server-sent events the CLI accepts: text, a tool call, or an error status with headers.
//! Every main request is recorded, so a test can count them and read what the CLI sent.

use crate::scripted::{self, rand_u64, Server};
use anyhow::{Context, Result};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What the CLI sent in one main request (side requests, with no tools, are answered and not kept).
#[derive(Debug, Clone)]
pub struct Seen {
    /// The working directory the CLI runs in, from its system prompt.
    pub cwd: Option<PathBuf>,
    pub messages: Vec<Value>,
    /// The tools it offers the model, by name (`Write`, `Bash`, `mcp__<server>__<tool>`, ...).
    pub tools: Vec<String>,
    /// `X-Claude-Code-Session-Id`: the session a `--resume` continues.
    pub session: Option<String>,
}

impl Seen {
    /// The tool results of the conversation, in order (the text of each).
    pub fn tool_results(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.messages {
            for block in m["content"].as_array().into_iter().flatten() {
                if block["type"] == "tool_result" {
                    out.push(match &block["content"] {
                        Value::String(s) => s.clone(),
                        Value::Array(parts) => {
                            parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("")
                        }
                        other => other.to_string(),
                    });
                }
            }
        }
        out
    }

    /// The texts the user wrote (the prompt, and a resumed run's new prompt), without the CLI's
    /// own reminders.
    pub fn prompts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.messages.iter().filter(|m| m["role"] == "user") {
            match &m["content"] {
                Value::String(s) => out.push(s.clone()),
                Value::Array(blocks) => out.extend(
                    blocks
                        .iter()
                        .filter(|b| b["type"] == "text")
                        .filter_map(|b| b["text"].as_str())
                        .filter(|t| !t.starts_with("<system-reminder>"))
                        .map(str::to_string),
                ),
                _ => {}
            }
        }
        out
    }
}

/// One answer of the scripted model.
#[derive(Debug, Clone)]
pub enum Turn {
    /// Text, and the turn ends (`end_turn`).
    Text(String),
    /// A call of one of the CLI's tools (`Write`, `Bash`, `mcp__agentcom__ask_person`, ...).
    Tool { name: String, input: Value },
    /// An HTTP error as the API sends it (`{"type":"error","error":{...}}`), with headers.
    Error { status: u16, kind: String, message: String, headers: Vec<(String, String)> },
}

impl Turn {
    /// A subscriber's usage limit (the 5-hour session window), as the API tells Claude Code in
    /// OAuth mode ([`ScriptedClaude::env_oauth`]): it prints `You've hit your session limit ·
    /// resets <time>`, and its stream gives the reset (`rate_limit_event`).
    pub fn usage_limit(reset_at_s: u64) -> Turn {
        Turn::Error {
            status: 429,
            kind: "rate_limit_error".into(),
            message: "Scripted usage limit".into(),
            headers: vec![
                ("anthropic-ratelimit-unified-status".into(), "rejected".into()),
                ("anthropic-ratelimit-unified-representative-claim".into(), "five_hour".into()),
                ("anthropic-ratelimit-unified-reset".into(), reset_at_s.to_string()),
            ],
        }
    }

    /// The API's rate limit: 429 `rate_limit_error`, with `retry-after` and the reset time.
    pub fn rate_limited(retry_after_s: u64, reset_at_s: u64) -> Turn {
        Turn::Error {
            status: 429,
            kind: "rate_limit_error".into(),
            message: "Scripted rate limit".into(),
            headers: vec![
                ("retry-after".into(), retry_after_s.to_string()),
                ("anthropic-ratelimit-unified-reset".into(), reset_at_s.to_string()),
            ],
        }
    }
}

/// The server; stops when dropped.
pub struct ScriptedClaude {
    pub url: String,
    server: Server<Seen>,
}

impl ScriptedClaude {
    pub async fn start(script: impl Fn(&Seen) -> Turn + Send + Sync + 'static) -> Result<ScriptedClaude> {
        let (url, server) = Server::start("/v1/messages", read, script, answer).await?;
        Ok(ScriptedClaude { url, server })
    }

    /// Every main request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.server.requests()
    }

    /// The environment that points a `claude` at this server with a private `home`, quietly
    /// (no traffic beyond loopback) and without the CLI's own retries.
    pub fn env(&self, home: &Path) -> Vec<(String, String)> {
        [
            ("HOME", home.display().to_string()),
            ("ANTHROPIC_BASE_URL", self.url.clone()),
            ("ANTHROPIC_API_KEY", "test-key".into()),
            ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// As [`ScriptedClaude::env`], signed in as a subscriber (an OAuth token, no API key): the
    /// CLI then words usage limits as subscribers see them.
    pub fn env_oauth(&self, home: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            self.env(home).into_iter().filter(|(k, _)| k != "ANTHROPIC_API_KEY").collect();
        env.push(("CLAUDE_CODE_OAUTH_TOKEN".into(), "test-oauth-token".into()));
        env
    }
}

/// A main request as the script sees it; a side request (a title, a classifier: no tools) is
/// answered with any text.
fn read(headers: &HeaderMap, req: &Value) -> Result<Seen, Turn> {
    let tools: Vec<String> =
        req["tools"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).map(str::to_string).collect();
    if tools.is_empty() {
        return Err(Turn::Text("{}".into()));
    }
    let cwd = req["system"].as_array().into_iter().flatten().filter_map(|b| b["text"].as_str()).find_map(|t| {
        t.lines().find_map(|l| l.trim().strip_prefix("- Primary working directory: ").map(PathBuf::from))
    });
    Ok(Seen {
        cwd,
        messages: req["messages"].as_array().cloned().unwrap_or_default(),
        tools,
        session: headers.get("x-claude-code-session-id").and_then(|v| v.to_str().ok()).map(str::to_string),
    })
}

fn answer(turn: Turn) -> Response {
    match turn {
        Turn::Error { status, kind, message, headers } => {
            scripted::error(status, json!({"type": "error", "error": {"type": kind, "message": message}}), headers)
        }
        t => sse(&t),
    }
}

/// The answer as the Messages API streams it.
fn sse(turn: &Turn) -> Response {
    // Each message its own id, as the API gives (Claude Code's stream reports usage per message).
    let mut events: Vec<Value> = vec![json!({"type": "message_start", "message": {
        "id": format!("msg_{:016x}", rand_u64()), "type": "message", "role": "assistant", "model": "claude-opus-4-8", "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})];
    let stop = match turn {
        Turn::Text(text) => {
            events.push(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            events.push(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            );
            events.push(json!({"type": "content_block_stop", "index": 0}));
            "end_turn"
        }
        Turn::Tool { name, input } => {
            let id = format!("toolu_{:016x}", rand_u64());
            events.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
            events.push(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}));
            events.push(json!({"type": "content_block_stop", "index": 0}));
            "tool_use"
        }
        Turn::Error { .. } => unreachable!("errors are not streamed"),
    };
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}));
    events.push(json!({"type": "message_stop"}));
    scripted::events(events)
}

/// A model that calls one tool, and once its result is in the conversation (this run's or, when
/// resumed, an earlier one's), says `done`.
pub fn one_tool_then(
    name: &str,
    input: impl Fn(&Seen) -> Value + Send + Sync + 'static,
    done: &str,
) -> impl Fn(&Seen) -> Turn + Send + Sync + 'static {
    let (name, done) = (name.to_string(), done.to_string());
    move |s: &Seen| {
        if s.tool_results().is_empty() {
            Turn::Tool { name: name.clone(), input: input(s) }
        } else {
            Turn::Text(done.clone())
        }
    }
}

/// A model that writes `content` to `file` in the CLI's working directory with its own `Write`
/// tool, then says `done`.
pub fn writes_file(file: &str, content: &str, done: &str) -> impl Fn(&Seen) -> Turn + Send + Sync + 'static {
    let (file, content) = (file.to_string(), content.to_string());
    one_tool_then(
        "Write",
        move |s| {
            let path = s.cwd.clone().unwrap_or_default().join(&file);
            json!({"file_path": path, "content": content})
        },
        done,
    )
}

/// Where `claude` is: on `PATH` (the test command installs it with npm when missing).
pub fn claude_bin() -> Result<PathBuf> {
    which("claude")
        .context("the Claude Code CLI is not installed: npm install -g @anthropic-ai/claude-code (scripts/test does)")
}

/// A program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}
