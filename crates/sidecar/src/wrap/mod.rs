//! `agentcom run-agent -- CMD ARGS...`: turns any command-line agent (Claude Code, Codex,
//! aider) into one that speaks the sidecar's files. It writes `<task>.started`, runs the
//! command, forwards each output line to `<task>.progress`, and writes `<task>.json` from the
//! exit status, atomically. With `--usage claude-json` the result (its text, its usage, or the
//! error) comes from Claude Code's final JSON object ([`claude`]).

pub mod claude;
pub mod mcp;

use serde_json::json;
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
}

/// The longest stdout line held whole to look for Claude Code's result object; a longer one
/// is streamed to `.progress` as any line, and not read as the result.
const MAX_JSON_LINE: usize = 4 << 20;

/// Runs `cmd` (with `agentcom mcp` configured in it when `mcp`), returns its exit code (the
/// sidecar reads the result file, not the code).
pub fn run_agent(cmd: &[String], format: Option<UsageFormat>, mcp: bool) -> Result<i32, WrapError> {
    let id = std::env::var("AGENTCOM_TASK_ID").map_err(|_| WrapError::MissingEnv("AGENTCOM_TASK_ID"))?;
    let dir = PathBuf::from(
        std::env::var("AGENTCOM_RESULTS_DIR").map_err(|_| WrapError::MissingEnv("AGENTCOM_RESULTS_DIR"))?,
    );
    let configured;
    let mut mcp_config = None;
    let cmd = if mcp {
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
    let mut child = match Command::new(program)
        .args(args)
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
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let outcome: Arc<Mutex<Option<claude::Outcome>>> = Arc::new(Mutex::new(None));
    let mut readers = Vec::new();
    for (stream, name) in [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stdout"),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stderr"),
    ] {
        let Some(stream) = stream else { continue };
        let (progress, tail, outcome) = (progress.clone(), tail.clone(), outcome.clone());
        // Claude Code's result object is one stdout line, held whole up to MAX_JSON_LINE.
        let claude_json = format == Some(UsageFormat::ClaudeJson) && name == "stdout";
        readers.push(std::thread::spawn(move || {
            let mut whole: Vec<u8> = Vec::new();
            let mut whole_fits = true;
            let record = |line: &[u8], whole: &[u8], whole_fits: bool| {
                let text: String = String::from_utf8_lossy(line).chars().take(MAX_LINE).collect();
                let _ = writeln!(progress.lock().unwrap(), "{}", json!({ "stream": name, "line": text }));
                let starts_json =
                    whole.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'['));
                if claude_json && whole_fits && starts_json {
                    if let Some(o) = claude::parse_line(whole) {
                        // The answer goes into the result on its own, not into the tail.
                        *outcome.lock().unwrap() = Some(o);
                        return;
                    }
                }
                let mut t = tail.lock().unwrap();
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            };
            // Bytes, not `lines()`: any output (invalid UTF-8, a line of gigabytes) is drained and
            // passed through, and only the first MAX_LINE_BYTES of a line are held.
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                let chunk = match reader.fill_buf() {
                    Ok([]) | Err(_) => break,
                    Ok(chunk) => chunk,
                };
                // Our own output is the agent's too: pass it through for the wake log.
                let _ = if name == "stdout" {
                    std::io::stdout().write_all(chunk)
                } else {
                    std::io::stderr().write_all(chunk)
                };
                for &b in chunk {
                    if b == b'\n' {
                        record(&line, &whole, whole_fits);
                        line.clear();
                        whole.clear();
                        whole_fits = true;
                    } else {
                        if line.len() < MAX_LINE_BYTES {
                            line.push(b);
                        }
                        if claude_json && whole_fits {
                            whole.push(b);
                            if whole.len() > MAX_JSON_LINE {
                                whole = Vec::new();
                                whole_fits = false;
                            }
                        }
                    }
                }
                let n = chunk.len();
                reader.consume(n);
            }
            if !line.is_empty() {
                record(&line, &whole, whole_fits);
            }
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
    let output: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
    let code = status.code().unwrap_or(-1);
    let exited = (!status.success()).then(|| format!("{program} exited with {status}"));
    let result = match format {
        None => match exited {
            None => json!({ "status": "success", "exit_code": code, "output_tail": output }),
            Some(reason) => json!({ "status": "failed", "reason": reason, "exit_code": code, "output_tail": output }),
        },
        Some(UsageFormat::ClaudeJson) => {
            let outcome = outcome.lock().unwrap().take();
            claude_result(outcome, exited, code, output)
        }
    };
    osutil::fs::write_atomic(&file("json"), result.to_string().as_bytes())
        .map_err(io(format!("cannot write {}", file("json").display())))?;
    Ok(code)
}

/// The result file from Claude Code's result object: `is_error` or a non-zero exit fails the
/// task with the reason; the answer text is `result`, what it cost `usage`.
fn claude_result(
    outcome: Option<claude::Outcome>,
    exited: Option<String>,
    code: i32,
    output: Vec<String>,
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
    m.insert("status".into(), json!(if reason.is_some() { "failed" } else { "success" }));
    if let Some(r) = reason {
        m.insert("reason".into(), json!(r));
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
