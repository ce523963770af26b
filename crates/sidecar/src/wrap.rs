//! `agentcom run-agent -- CMD ARGS...`: turns any command-line agent (Claude Code, Codex,
//! aider) into one that speaks the sidecar's files. It writes `<task>.started`, runs the
//! command, forwards each output line to `<task>.progress`, and writes `<task>.json` from the
//! exit status, atomically.

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
}

const TAIL_LINES: usize = 40;
const MAX_LINE: usize = 2000;
/// A line's bytes held at most (the characters kept are at most [`MAX_LINE`]).
const MAX_LINE_BYTES: usize = 4 * MAX_LINE;

/// Runs `cmd`, returns its exit code (the sidecar reads the result file, not the code).
pub fn run_agent(cmd: &[String]) -> Result<i32, WrapError> {
    let (program, args) = cmd.split_first().ok_or(WrapError::NoCommand)?;
    let id = std::env::var("AGENTCOM_TASK_ID").map_err(|_| WrapError::MissingEnv("AGENTCOM_TASK_ID"))?;
    let dir = PathBuf::from(
        std::env::var("AGENTCOM_RESULTS_DIR").map_err(|_| WrapError::MissingEnv("AGENTCOM_RESULTS_DIR"))?,
    );
    let io = |context: String| move |source| WrapError::Io { context, source };
    std::fs::write(dir.join(format!("{id}.started")), b"").map_err(io(format!("cannot write {id}.started")))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("cannot start {program}")))?;
    let progress = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{id}.progress")))
            .map_err(io(format!("cannot open {id}.progress")))?,
    ));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let mut readers = Vec::new();
    for (stream, name) in [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stdout"),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), "stderr"),
    ] {
        let Some(stream) = stream else { continue };
        let (progress, tail) = (progress.clone(), tail.clone());
        readers.push(std::thread::spawn(move || {
            let record = |line: &[u8]| {
                let line: String = String::from_utf8_lossy(line).chars().take(MAX_LINE).collect();
                let _ = writeln!(progress.lock().unwrap(), "{}", json!({ "stream": name, "line": line }));
                let mut t = tail.lock().unwrap();
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
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
                        record(&line);
                        line.clear();
                    } else if line.len() < MAX_LINE_BYTES {
                        line.push(b);
                    }
                }
                let n = chunk.len();
                reader.consume(n);
            }
            if !line.is_empty() {
                record(&line);
            }
        }));
    }
    let status = child.wait().map_err(io(format!("waiting for {program}")))?;
    for r in readers {
        let _ = r.join();
    }
    let output: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
    let code = status.code().unwrap_or(-1);
    let result = if status.success() {
        json!({ "status": "success", "exit_code": code, "output_tail": output })
    } else {
        json!({ "status": "failed", "reason": format!("{program} exited with {status}"), "exit_code": code, "output_tail": output })
    };
    osutil::fs::write_atomic(&dir.join(format!("{id}.json")), result.to_string().as_bytes())
        .map_err(io(format!("cannot write {id}.json")))?;
    Ok(code)
}
