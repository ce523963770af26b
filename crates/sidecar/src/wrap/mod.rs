//! `agentcom run-agent -- CMD ARGS...`: turns any command-line agent (Claude Code, Codex,
//! aider) into one that speaks the sidecar's files. It writes `<task>.started`, runs the
//! command, forwards each output line to `<task>.progress`, and writes `<task>.json` from the
//! exit status, atomically. With `--usage claude-json` the result (its text, its usage, or the
//! error) comes from Claude Code's final JSON object ([`claude`]); with `claude-stream` and
//! `codex-json` from the CLI's JSON lines as they come ([`stream`]), the cost written to
//! `.usage` as it grows. A model provider's limit is a `rate_limited` result, not a failure, and
//! the session of an earlier attempt is resumed ([`args`]).

mod args;
pub mod claude;
mod limits;
pub mod mcp;
mod stream;

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("{0} is not set: run-agent is meant to be a sidecar's wake command")]
    MissingEnv(&'static str),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("no command given: use `agentcom run-agent -- CMD ARGS...`")]
    NoCommand,
    #[error("--mcp: {0}")]
    Mcp(String),
}

const TAIL_LINES: usize = 40;
const MAX_LINE: usize = 2000;
/// A line's bytes held at most (the characters kept are at most [`MAX_LINE`]).
const MAX_LINE_BYTES: usize = 4 * MAX_LINE;

/// Where the result and its usage come from, besides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    /// Claude Code's `--output-format json` object on stdout.
    ClaudeJson,
    /// Claude Code's `--output-format stream-json --verbose` lines (set by `run-agent`):
    /// progress and usage as they come.
    ClaudeStream,
    /// Codex's `codex exec --json` lines.
    CodexJson,
}

/// How `run-agent` runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub format: Option<UsageFormat>,
    /// Resume the session of an earlier attempt (`AGENTCOM_RESUME_SESSION`) when the format
    /// knows how (`--no-resume` turns it off).
    pub resume: bool,
    /// Configure `agentcom mcp` as the agent's MCP server `agentcom` (`--mcp`).
    pub mcp: bool,
}

/// The longest stdout line held whole to look for Claude Code's result object; a longer one
/// is streamed to `.progress` as any line, and not read as the result.
const MAX_JSON_LINE: usize = 4 << 20;

/// What the readers gathered: the tail of the output, and the format's own reading.
#[derive(Default)]
struct Gathered {
    tail: VecDeque<String>,
    /// `claude-json`: the result object.
    outcome: Option<claude::Outcome>,
    claude: stream::ClaudeStream,
    codex: stream::CodexStream,
}

/// Runs `cmd` (with `agentcom mcp` configured in it when `opts.mcp`), returns its exit code
/// (the sidecar reads the result file, not the code).
pub fn run_agent(cmd: &[String], opts: Options) -> Result<i32, WrapError> {
    let id = std::env::var("AGENTCOM_TASK_ID").map_err(|_| WrapError::MissingEnv("AGENTCOM_TASK_ID"))?;
    let dir = PathBuf::from(
        std::env::var("AGENTCOM_RESULTS_DIR").map_err(|_| WrapError::MissingEnv("AGENTCOM_RESULTS_DIR"))?,
    );
    let configured;
    let mut mcp_config = None;
    let cmd = if opts.mcp {
        let mut env = Vec::new();
        for k in mcp::PASSED {
            env.push((k.to_string(), std::env::var(k).map_err(|_| WrapError::MissingEnv(k))?));
        }
        let exe = std::env::current_exe()
            .map_err(|e| WrapError::Io { context: "cannot find this binary".into(), source: e })?;
        let task_file = std::env::var("AGENTCOM_TASK_FILE").map_err(|_| WrapError::MissingEnv("AGENTCOM_TASK_FILE"))?;
        let config = PathBuf::from(task_file).with_extension("mcp.json");
        configured = mcp::configure(cmd, &exe, &env, &config).map_err(WrapError::Mcp)?;
        mcp_config = Some(config);
        &configured[..]
    } else {
        cmd
    };
    let (program, args) = cmd.split_first().ok_or(WrapError::NoCommand)?;
    let io = |context: String| move |source| WrapError::Io { context, source };
    let file = |ext: &str| dir.join(format!("{id}.{ext}"));
    std::fs::write(file("started"), b"").map_err(io(format!("cannot write {}", file("started").display())))?;
    let resume =
        std::env::var("AGENTCOM_RESUME_SESSION").ok().filter(|s| opts.resume && proto::check_session_id(s).is_ok());
    let args = args::adapt(opts.format, args, resume.as_deref());
    let mut gathered = Gathered::default();
    if let (Some(UsageFormat::CodexJson), Some(thread)) = (opts.format, resume.as_deref()) {
        // A resumed thread reports its whole total: this run's is what it adds.
        gathered.codex.baseline = args::codex_thread_totals(thread);
    }
    let mut child = match Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            // The task fails at once with the reason, rather than as an agent that left no result.
            let hint = if e.kind() == std::io::ErrorKind::NotFound { " (not installed, or not on PATH)" } else { "" };
            let reason = format!("cannot start {program}: {e}{hint}");
            let result = json!({ "status": "failed", "reason": reason });
            osutil::fs::write_atomic(&file("json"), result.to_string().as_bytes())
                .map_err(io(format!("cannot write {}", file("json").display())))?;
            return Err(io(format!("cannot start {program}{hint}"))(e));
        }
    };
    let progress = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file("progress"))
            .map_err(io(format!("cannot open {}", file("progress").display())))?,
    ));
    let gathered = Arc::new(Mutex::new(gathered));
    let usage_file = file("usage");
    let mut readers = Vec::new();
    for (stream, name) in [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stdout"),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stderr"),
    ] {
        let Some(stream) = stream else { continue };
        let (progress, gathered, usage_file) = (progress.clone(), gathered.clone(), usage_file.clone());
        let format = if name == "stdout" { opts.format } else { None };
        readers.push(std::thread::spawn(move || {
            let mut g = Lines { name, format, progress, gathered, usage_file };
            g.read(stream);
        }));
    }
    let status = child.wait().map_err(io(format!("waiting for {program}")))?;
    if let Some(c) = &mcp_config {
        // Claude Code's config for this run only (Codex's is on its command line).
        let _ = std::fs::remove_file(c);
    }
    for r in readers {
        let _ = r.join();
    }
    let mut g = std::mem::take(&mut *gathered.lock().unwrap());
    let output: Vec<String> = g.tail.iter().cloned().collect();
    let code = status.code().unwrap_or(-1);
    let exited = (!status.success()).then(|| format!("{program} exited with {status}"));
    let now = chrono::Local::now();
    let result = match opts.format {
        None => match exited {
            None => json!({ "status": "success", "exit_code": code, "output_tail": output }),
            Some(reason) => json!({ "status": "failed", "reason": reason, "exit_code": code, "output_tail": output }),
        },
        Some(UsageFormat::ClaudeJson) => claude_result(g.outcome.take(), None, exited, code, output, now),
        Some(UsageFormat::ClaudeStream) => {
            let reset = g.claude.reset_at_ms;
            let usage = g.claude.usage();
            let mut r = claude_result(g.claude.outcome.take(), reset, exited, code, output, now);
            // The stream's own counts when the result line never came.
            if let (Some(u), Value::Object(m)) = (usage, &mut r) {
                m.entry("usage").or_insert_with(|| serde_json::to_value(u).expect("usage serializes"));
            }
            if let (Some(s), Value::Object(m)) = (g.claude.session_id.clone(), &mut r) {
                m.entry("session_id").or_insert(json!(s));
            }
            r
        }
        Some(UsageFormat::CodexJson) => codex_result(&g.codex, exited, code, output, now),
    };
    osutil::fs::write_atomic(&file("json"), result.to_string().as_bytes())
        .map_err(io(format!("cannot write {}", file("json").display())))?;
    Ok(code)
}

/// One output stream of the agent, read line by line into `.progress`, the tail, and the
/// format's reading (which may write `.usage` as the cost grows).
struct Lines {
    name: &'static str,
    format: Option<UsageFormat>,
    progress: Arc<Mutex<std::fs::File>>,
    gathered: Arc<Mutex<Gathered>>,
    usage_file: PathBuf,
}

impl Lines {
    fn read(&mut self, stream: Box<dyn std::io::Read + Send>) {
        // Bytes, not `lines()`: any output (invalid UTF-8, a line of gigabytes) is drained and
        // passed through, and only the first MAX_LINE_BYTES of a line are held (the whole line,
        // up to MAX_JSON_LINE, for a format that reads JSON).
        let whole_max = if self.format.is_some() { MAX_JSON_LINE } else { MAX_LINE_BYTES };
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let mut fits = true;
        loop {
            let chunk = match reader.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            // Our own output is the agent's too: pass it through for the wake log.
            let _ = if self.name == "stdout" {
                std::io::stdout().write_all(chunk)
            } else {
                std::io::stderr().write_all(chunk)
            };
            for &b in chunk {
                if b == b'\n' {
                    self.record(&line, fits);
                    line.clear();
                    fits = true;
                } else if line.len() < whole_max {
                    line.push(b);
                } else {
                    fits = false;
                }
            }
            let n = chunk.len();
            reader.consume(n);
        }
        if !line.is_empty() {
            self.record(&line, fits);
        }
    }

    fn progress_line(&self, stream: &str, text: &str) {
        let text: String = text.chars().take(MAX_LINE).collect();
        let _ = writeln!(self.progress.lock().unwrap(), "{}", json!({ "stream": stream, "line": text }));
    }

    fn to_tail(&self, text: String) {
        let mut g = self.gathered.lock().unwrap();
        if g.tail.len() == TAIL_LINES {
            g.tail.pop_front();
        }
        g.tail.push_back(text);
    }

    fn record(&mut self, line: &[u8], fits: bool) {
        let short = &line[..line.len().min(MAX_LINE_BYTES)];
        let text: String = String::from_utf8_lossy(short).chars().take(MAX_LINE).collect();
        let starts_json = line.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'['));
        let seen = match (self.format, fits && starts_json) {
            (Some(UsageFormat::ClaudeJson), true) => {
                self.progress_line(self.name, &text);
                if let Some(o) = claude::parse_line(line) {
                    // The answer goes into the result on its own, not into the tail.
                    self.gathered.lock().unwrap().outcome = Some(o);
                    return;
                }
                return self.to_tail(text);
            }
            (Some(UsageFormat::ClaudeStream), true) => self.gathered.lock().unwrap().claude.on_line(line),
            (Some(UsageFormat::CodexJson), true) => self.gathered.lock().unwrap().codex.on_line(line),
            _ => stream::Seen { raw: true, ..stream::Seen::default() },
        };
        if seen.raw {
            self.progress_line(self.name, &text);
            return self.to_tail(text);
        }
        for p in &seen.progress {
            self.progress_line("assistant", p);
        }
        if seen.usage_changed {
            self.write_usage();
        }
    }

    /// `.usage` with what the attempt has cost so far and its session, atomically.
    fn write_usage(&self) {
        let (usage, session) = {
            let g = self.gathered.lock().unwrap();
            match self.format {
                Some(UsageFormat::ClaudeStream) => (g.claude.usage(), g.claude.session_id.clone()),
                Some(UsageFormat::CodexJson) => (g.codex.usage(), g.codex.session_id.clone()),
                _ => return,
            }
        };
        let mut v = usage.map(|u| serde_json::to_value(u).expect("usage serializes")).unwrap_or_else(|| json!({}));
        if let (Some(s), Value::Object(m)) = (session, &mut v) {
            m.insert("session_id".into(), json!(s));
        }
        let _ = osutil::fs::write_atomic(&self.usage_file, v.to_string().as_bytes());
    }
}

/// The result file from Codex's stream: the last agent message is the answer; a failed turn or
/// a non-zero exit fails the task, unless a model provider's limit ended it (`rate_limited`).
fn codex_result(
    c: &stream::CodexStream,
    exited: Option<String>,
    code: i32,
    output: Vec<String>,
    now: chrono::DateTime<chrono::Local>,
) -> Value {
    let mut m = serde_json::Map::new();
    let failed = c.turn_failed || !c.completed || exited.is_some();
    let error = c.error.clone().or_else(|| (!c.completed).then(|| "codex-json: the turn never completed".into()));
    match (failed, error) {
        (true, Some(e)) if limits::is_limit_message(&e) => {
            m.insert("status".into(), json!("rate_limited"));
            if let Some(at) = limits::codex_reset(&e, now) {
                m.insert("reset_at_ms".into(), json!(at));
            }
            m.insert("reason".into(), json!(crate::machine::clip(&e, 1000)));
        }
        (true, e) => {
            let mut reason = e.unwrap_or_else(|| "codex failed".into());
            if let Some(exit) = exited {
                reason = format!("{reason} ({exit})");
            }
            m.insert("status".into(), json!("failed"));
            m.insert("reason".into(), json!(crate::machine::clip(&reason, 1000)));
        }
        (false, _) => {
            m.insert("status".into(), json!("success"));
        }
    }
    if let Some(t) = &c.text {
        m.insert("result".into(), json!(t));
    }
    if let Some(u) = c.usage() {
        m.insert("usage".into(), serde_json::to_value(u).expect("usage serializes"));
    }
    if let Some(s) = &c.session_id {
        m.insert("session_id".into(), json!(s));
    }
    m.insert("exit_code".into(), json!(code));
    m.insert("output_tail".into(), json!(output));
    Value::Object(m)
}

/// The result file from Claude Code's result object: `is_error` or a non-zero exit fails the
/// task with the reason; the answer text is `result`, what it cost `usage`.
fn claude_result(
    outcome: Option<claude::Outcome>,
    reset_at_ms: Option<u64>,
    exited: Option<String>,
    code: i32,
    output: Vec<String>,
    now: chrono::DateTime<chrono::Local>,
) -> serde_json::Value {
    let Some(o) = outcome else {
        let reason = match exited {
            Some(e) => format!("{e}; no result object on stdout"),
            None => {
                "claude-json: no result object on stdout (expected the output of `claude -p ... --output-format json`)"
                    .into()
            }
        };
        return json!({ "status": "failed", "reason": reason, "exit_code": code, "output_tail": output });
    };
    let reason = match (o.error_reason(), exited) {
        (Some(e), Some(exit)) => Some(format!("{e} ({exit})")),
        (e, exit) => e.or(exit),
    };
    let mut m = serde_json::Map::new();
    if let Some(limit) = o.limit(reset_at_ms, now) {
        // Not a failure: the hub waits for the limit and does not count it against max_retries.
        m.insert("status".into(), json!("rate_limited"));
        if let Some(at) = limit.reset_at_ms {
            m.insert("reset_at_ms".into(), json!(at));
        }
        m.insert("reason".into(), json!(limit.message.unwrap_or_default()));
    } else {
        m.insert("status".into(), json!(if reason.is_some() { "failed" } else { "success" }));
        if let Some(r) = reason {
            m.insert("reason".into(), json!(r));
        }
    }
    if let Some(text) = o.text {
        m.insert("result".into(), json!(text));
    }
    if o.text_clipped {
        m.insert("result_clipped_to_bytes".into(), json!(claude::MAX_TEXT_BYTES));
    }
    if let Some(u) = o.usage {
        m.insert("usage".into(), serde_json::to_value(u).expect("usage serializes"));
    }
    if let Some(s) = o.session_id {
        m.insert("session_id".into(), json!(s));
    }
    m.insert("exit_code".into(), json!(code));
    m.insert("output_tail".into(), json!(output));
    serde_json::Value::Object(m)
}
