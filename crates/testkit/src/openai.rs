//! A scripted OpenAI Responses API on loopback, so the real Codex CLI runs offline in tests (a
//! custom model provider's `base_url`). As for Claude Code ([`crate::anthropic`]), each request
//! is answered from the conversation's state, never from a request counter, as server-sent
//! events the CLI accepts: a message, a shell call (`exec_command`), or an error status.

use crate::scripted::{self, rand_u64, Server};
use anyhow::Result;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One request as Codex sent it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The working directory, from the `<environment_context>` message.
    pub cwd: Option<PathBuf>,
    /// The conversation (`input`): messages, function calls and their outputs.
    pub input: Vec<Value>,
    /// The thread (`session-id` header): the id `codex exec resume` continues.
    pub thread: Option<String>,
}

impl Seen {
    /// The outputs of the tool calls so far (this run's and, resumed, the earlier ones').
    pub fn tool_outputs(&self) -> usize {
        self.input
            .iter()
            .filter(|i| i["type"] == "function_call_output" || i["type"] == "custom_tool_call_output")
            .count()
    }

    /// The user's prompts (not the CLI's own context messages).
    pub fn prompts(&self) -> Vec<String> {
        self.input
            .iter()
            .filter(|i| i["type"] == "message" && i["role"] == "user")
            .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["text"].as_str().map(str::to_string))
            .filter(|t| !t.starts_with('<'))
            .collect()
    }
}

/// One answer of the scripted model.
#[derive(Debug, Clone)]
pub enum Turn {
    /// A message, and the turn ends.
    Text(String),
    /// A shell command through Codex's `exec_command` tool.
    Shell(String),
    /// An HTTP error with this JSON body (`{"error": {...}}`) and headers.
    Error { status: u16, body: Value, headers: Vec<(String, String)> },
}

impl Turn {
    /// ChatGPT's usage limit, as Codex reads it (`usage_limit_reached`, with its reset).
    pub fn usage_limit(resets_at_s: Option<u64>) -> Turn {
        let mut error = json!({"type": "usage_limit_reached", "message": "The usage limit has been reached"});
        if let Some(at) = resets_at_s {
            error["resets_at"] = json!(at);
        }
        Turn::Error { status: 429, body: json!({ "error": error }), headers: vec![] }
    }
}

/// The server; stops when dropped.
pub struct ScriptedCodex {
    pub url: String,
    server: Server<Seen>,
}

impl ScriptedCodex {
    pub async fn start(script: impl Fn(&Seen) -> Turn + Send + Sync + 'static) -> Result<ScriptedCodex> {
        let (url, server) = Server::start("/v1/responses", read, script, answer).await?;
        Ok(ScriptedCodex { url, server })
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.server.requests()
    }

    /// A private `CODEX_HOME` under `home` whose config points Codex at this server, without
    /// its own retries; and the environment that goes with it.
    pub fn env(&self, home: &Path) -> Result<Vec<(String, String)>> {
        let codex_home = home.join(".codex");
        std::fs::create_dir_all(&codex_home)?;
        let config = format!(
            "model = \"gpt-5.5\"\nmodel_provider = \"mock\"\n\n[analytics]\nenabled = false\n\n[model_providers.mock]\n\
             name = \"mock\"\nbase_url = \"{}/v1\"\nwire_api = \"responses\"\nenv_key = \"MOCK_API_KEY\"\n\
             request_max_retries = 0\nstream_max_retries = 0\n",
            self.url
        );
        std::fs::write(codex_home.join("config.toml"), config)?;
        Ok([
            ("HOME", home.display().to_string()),
            ("CODEX_HOME", codex_home.display().to_string()),
            ("MOCK_API_KEY", "sk-test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }
}

fn read(headers: &HeaderMap, req: &Value) -> Result<Seen, Turn> {
    let input = req["input"].as_array().cloned().unwrap_or_default();
    let cwd = input.iter().flat_map(|i| i["content"].as_array().cloned().unwrap_or_default()).find_map(|c| {
        let t = c["text"].as_str()?;
        let start = t.find("<cwd>")? + "<cwd>".len();
        let end = t[start..].find("</cwd>")? + start;
        Some(PathBuf::from(&t[start..end]))
    });
    let thread = headers.get("session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Seen { cwd, input, thread })
}

fn answer(turn: Turn) -> Response {
    match turn {
        Turn::Error { status, body, headers } => scripted::error(status, body, headers),
        t => sse(&t),
    }
}

fn sse(turn: &Turn) -> Response {
    let id = format!("{:016x}", rand_u64());
    let item = match turn {
        Turn::Text(text) => {
            json!({"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
        Turn::Shell(cmd) => json!({"type": "function_call", "id": format!("fc_{id}"), "call_id": format!("call_{id}"),
            "name": "exec_command", "arguments": json!({"cmd": cmd}).to_string(), "status": "completed"}),
        Turn::Error { .. } => unreachable!("errors are not streamed"),
    };
    let events = [
        json!({"type": "response.created", "sequence_number": 0,
            "response": {"id": format!("resp_{id}"), "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.done", "sequence_number": 1, "output_index": 0, "item": item}),
        json!({"type": "response.completed", "sequence_number": 2, "response": {"id": format!("resp_{id}"),
            "object": "response", "status": "completed", "output": [item],
            "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 7,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 107}}}),
    ];
    scripted::events(events)
}

/// Where `codex` is: on `PATH` (the test command installs it with npm when missing).
pub fn codex_bin() -> Result<PathBuf> {
    use anyhow::Context;
    crate::anthropic::which("codex")
        .context("the Codex CLI is not installed: npm install -g @openai/codex (scripts/test does)")
}
