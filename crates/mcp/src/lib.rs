//! `agentcom mcp`: an MCP server over stdio (the official Rust SDK, `rmcp`) that an agent CLI
//! starts inside a wake. Its tools are the fleet: `ask_person`, `report_progress`,
//! `submit_task`, `wait_for_tasks`, `task_status` (their names and arguments are a contract,
//! see `docs/mcp.md`). It holds no hub token: it reaches the fleet only through its own
//! sidecar's local socket (`AGENTCOM_SIDECAR_SOCKET`), speaking for the task and attempt of its
//! wake (`AGENTCOM_TASK_ID`, `AGENTCOM_TASK_GENERATION`), which the sidecar checks on every call.
//! Every argument is checked here with the sidecar's own checks (`sidecar::local::wire`) before
//! it goes anywhere; a long wait ends before the client's tool timeout (`MCP_TOOL_TIMEOUT`) with
//! words on how to wait again.

mod socket;

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use serde::Deserialize;
use sidecar::local::wire::{Request, Response, Scope, MAX_WAIT_S, SOCKET_ENV};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

pub use socket::SocketError;

/// The longest a call waits unless told otherwise: within Codex's `tool_timeout_sec` as
/// `run-agent --mcp` writes it (1800 s), and far within Claude Code's default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(25 * 60);
/// Longest MCP message line read from the client.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// How long a call that does not wait may take.
const QUICK: Duration = Duration::from_secs(60);

/// Where the server stands: from its wake's environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` when not started inside a wake: every tool then says so.
    pub place: Result<(PathBuf, Scope), String>,
    /// The most a call waits (asking a person, waiting for children).
    pub max_wait: Duration,
}

impl Settings {
    /// Reads `AGENTCOM_SIDECAR_SOCKET`, `AGENTCOM_TASK_ID`, `AGENTCOM_TASK_GENERATION`, and the
    /// client's `MCP_TOOL_TIMEOUT` (ms): a wait ends a little before it.
    pub fn from_env(max_wait: Duration, var: impl Fn(&str) -> Option<String>) -> Settings {
        let place = (|| {
            let socket = var(SOCKET_ENV)
                .ok_or_else(|| format!("{SOCKET_ENV} is not set: agentcom mcp runs inside a sidecar's wake"))?;
            let task_id = var("AGENTCOM_TASK_ID").ok_or("AGENTCOM_TASK_ID is not set")?;
            let generation = var("AGENTCOM_TASK_GENERATION")
                .and_then(|g| g.parse().ok())
                .ok_or("AGENTCOM_TASK_GENERATION is not set to a number")?;
            Ok((PathBuf::from(socket), Scope { task_id, generation }))
        })();
        let tool_timeout = var("MCP_TOOL_TIMEOUT").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_millis);
        let max_wait = match tool_timeout {
            // A tenth of it (at least a second) is left for the answer to travel.
            Some(t) => max_wait.min(t.saturating_sub((t / 10).max(Duration::from_secs(1)))),
            None => max_wait,
        };
        Settings { place, max_wait }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct AskPerson {
    /// The question, as the person will read it (at most 8000 characters).
    pub question: String,
    /// Answers to choose from (at most 20, each at most 256 characters); the person may still write another.
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ReportProgress {
    /// One line on where the work stands (at most 2000 characters).
    pub message: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SubmitChild {
    /// What the child task should do: the whole instruction, as to another engineer.
    pub description: String,
    /// urgent, high, normal (default) or low.
    #[serde(default)]
    pub priority: Option<String>,
    /// Capabilities the agent that runs it must have (at most 64).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Ids of children submitted before (by this task) that must complete first.
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct WaitForTasks {
    /// Ids of children of this task (from submit_task), at most 100.
    pub task_ids: Vec<String>,
    /// How long to wait at most, in seconds (0 to 3600; a shorter tool timeout of the client wins).
    pub timeout_s: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct TaskStatus {
    /// The id of a child of this task.
    pub task_id: String,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    settings: Settings,
    #[allow(dead_code)] // read by the tool_handler macro
    tool_router: ToolRouter<Fleet>,
}

fn failed(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

fn ok(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

fn pending_text(waited: Duration) -> String {
    format!(
        "No answer yet (waited {}s). The question stays open for the person. Call ask_person again with exactly the same question to keep waiting: it is not asked a second time, and the answer comes back as soon as it is there.",
        waited.as_secs()
    )
}

#[tool_router]
impl Fleet {
    pub fn new(settings: Settings) -> Fleet {
        Fleet { settings, tool_router: Self::tool_router() }
    }

    /// Sends one request (after the shared checks) and turns the answer into a tool result.
    async fn send(&self, make: impl FnOnce(Scope) -> Request, limit: Duration) -> CallToolResult {
        let (socket, scope) = match &self.settings.place {
            Ok(p) => p.clone(),
            Err(e) => return failed(e.clone()),
        };
        let mut req = make(scope);
        let errors = req.check();
        if !errors.is_empty() {
            return failed(format!("invalid arguments: {}", errors.join("; ")));
        }
        // A wait asked for (checked against its bound above) ends before the client's timeout.
        if let Request::Wait { wait_ms, .. } = &mut req {
            *wait_ms = (*wait_ms).min(self.settings.max_wait.as_millis() as u64);
        }
        match socket::call(&socket, &req, limit).await {
            Ok(Response::Done { value }) => ok(value.to_string()),
            Ok(Response::Error { error }) => failed(error),
            Ok(Response::Answer { answer }) => ok(answer),
            Ok(Response::Pending { .. }) => ok(pending_text(limit)),
            Err(e) => failed(e.to_string()),
        }
    }

    #[tool(
        description = "Ask a person (the one who gave you this task) a question and wait for the answer, which this tool returns. Use it when you cannot go on without a decision or information only a person has. If it returns 'No answer yet', call it again with exactly the same question to keep waiting."
    )]
    async fn ask_person(&self, Parameters(a): Parameters<AskPerson>) -> CallToolResult {
        let (socket, scope) = match &self.settings.place {
            Ok(p) => p.clone(),
            Err(e) => return failed(e.clone()),
        };
        let started = Instant::now();
        let deadline = started + self.settings.max_wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let req = Request::Ask {
                scope: scope.clone(),
                question: a.question.clone(),
                options: a.options.clone().unwrap_or_default(),
                wait_ms: left.as_millis() as u64,
            };
            let errors = req.check();
            if !errors.is_empty() {
                return failed(format!("invalid arguments: {}", errors.join("; ")));
            }
            match socket::call(&socket, &req, left + QUICK).await {
                Ok(Response::Answer { answer }) => return ok(answer),
                Ok(Response::Pending { .. }) => return ok(pending_text(started.elapsed())),
                Ok(Response::Error { error }) => return failed(error),
                Ok(Response::Done { value }) => return ok(value.to_string()),
                // The sidecar restarts: the question is on its record (or in its file); ask it
                // again (the same question is waited for, not asked twice) until time is up.
                Err(SocketError::Unreachable { why, .. }) if !left.is_zero() => {
                    tracing::warn!(error = %why, "the sidecar is not reachable; trying again");
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(SocketError::Unreachable { .. }) => return ok(pending_text(started.elapsed())),
                Err(e) => return failed(e.to_string()),
            }
        }
    }

    #[tool(description = "Tell the people watching this task where your work stands, in one line.")]
    async fn report_progress(&self, Parameters(p): Parameters<ReportProgress>) -> CallToolResult {
        self.send(|scope| Request::Progress { scope, message: p.message }, QUICK).await
    }

    #[tool(
        description = "Create a child task of your current task, for another agent of the fleet to run; returns its task_id. Use wait_for_tasks to wait for children and read their results."
    )]
    async fn submit_task(&self, Parameters(s): Parameters<SubmitChild>) -> CallToolResult {
        self.send(
            |scope| Request::Submit {
                scope,
                description: s.description,
                priority: s.priority,
                capabilities: s.capabilities.unwrap_or_default(),
                depends_on: s.depends_on.unwrap_or_default(),
            },
            QUICK,
        )
        .await
    }

    #[tool(
        description = "Wait until the given child tasks have all finished (or timeout_s passed) and return their status and results. If it returns done: false, call it again to keep waiting."
    )]
    async fn wait_for_tasks(&self, Parameters(w): Parameters<WaitForTasks>) -> CallToolResult {
        let wait = Duration::from_secs(w.timeout_s.min(MAX_WAIT_S)).min(self.settings.max_wait);
        let wait_ms = w.timeout_s.saturating_mul(1000);
        self.send(|scope| Request::Wait { scope, task_ids: w.task_ids, wait_ms }, wait + QUICK).await
    }

    #[tool(description = "The status, holder, progress and result of one child task of your current task.")]
    async fn task_status(&self, Parameters(t): Parameters<TaskStatus>) -> CallToolResult {
        self.send(|scope| Request::Status { scope, of: t.task_id }, QUICK).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Fleet {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentcom", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "The agentcom fleet this task runs in: ask a person (ask_person), report progress, and delegate work to child tasks that other agents run (submit_task, wait_for_tasks, task_status).",
            )
    }
}

/// Serves MCP on stdin and stdout until the client closes them.
pub async fn serve_stdio(settings: Settings) -> Result<(), String> {
    let (stdin, stdout) = rmcp::transport::stdio();
    let transport = rmcp::transport::async_rw::AsyncRwTransport::<rmcp::RoleServer, _, _>::new(stdin, stdout)
        .with_max_line_length(MAX_MESSAGE_BYTES);
    let running = Fleet::new(settings).serve(transport).await.map_err(|e| e.to_string())?;
    running.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_a_tenth_before_the_clients_tool_timeout() {
        let env = |timeout: Option<&'static str>| {
            move |k: &str| match k {
                "AGENTCOM_SIDECAR_SOCKET" => Some("/s".to_string()),
                "AGENTCOM_TASK_ID" => Some("task-1".to_string()),
                "AGENTCOM_TASK_GENERATION" => Some("3".to_string()),
                "MCP_TOOL_TIMEOUT" => timeout.map(str::to_string),
                _ => None,
            }
        };
        let s = Settings::from_env(DEFAULT_MAX_WAIT, env(None));
        assert_eq!(s.max_wait, DEFAULT_MAX_WAIT);
        assert_eq!(s.place.unwrap().1, Scope { task_id: "task-1".into(), generation: 3 });
        assert_eq!(Settings::from_env(DEFAULT_MAX_WAIT, env(Some("60000"))).max_wait, Duration::from_secs(54));
        assert_eq!(Settings::from_env(DEFAULT_MAX_WAIT, env(Some("2000"))).max_wait, Duration::from_secs(1));
        let outside = Settings::from_env(DEFAULT_MAX_WAIT, |_| None);
        assert!(outside.place.unwrap_err().contains("AGENTCOM_SIDECAR_SOCKET is not set"));
    }
}
