//! The agent CLI's command line as `run-agent` runs it: the session of an earlier attempt to
//! resume (`--resume <id>` for Claude Code, `codex exec resume <id>` for Codex), and the output
//! format a `--usage` format reads (`--output-format stream-json --verbose`). Also where Codex
//! kept the thread being resumed, to count only this run's tokens.

use super::UsageFormat;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `args` (without the program) as they run: the resume and output flags added or set.
pub fn adapt(format: Option<UsageFormat>, args: &[String], resume: Option<&str>) -> Vec<String> {
    let mut out = args.to_vec();
    match format {
        Some(UsageFormat::ClaudeJson | UsageFormat::ClaudeStream) => {
            let resuming = out.iter().any(|a| matches!(a.as_str(), "--resume" | "-r" | "--continue" | "-c"))
                || out.iter().any(|a| a.starts_with("--resume="));
            if let (Some(id), false) = (resume, resuming) {
                out.splice(0..0, ["--resume".to_string(), id.to_string()]);
            }
            if format == Some(UsageFormat::ClaudeStream) {
                set_flag(&mut out, "--output-format", "stream-json");
                if !out.iter().any(|a| a == "--verbose") {
                    out.push("--verbose".into());
                }
            }
        }
        Some(UsageFormat::CodexJson) => {
            let exec = out.iter().position(|a| a == "exec" || a == "e");
            let resuming = exec.is_some_and(|i| out.get(i + 1).is_some_and(|a| a == "resume"));
            if let (Some(id), Some(i), false) = (resume, exec, resuming) {
                out.splice(i + 1..i + 1, ["resume".to_string(), id.to_string()]);
            }
            if !out.iter().any(|a| a == "--json") {
                if let Some(i) = out.iter().position(|a| a == "exec" || a == "e") {
                    // After `exec` (and `resume <id>`): an option of the exec command.
                    let at = if out.get(i + 1).is_some_and(|a| a == "resume") { i + 3 } else { i + 1 };
                    out.insert(at.min(out.len()), "--json".into());
                }
            }
        }
        None => {}
    }
    out
}

/// `--name value` or `--name=value` set to `value` (added when absent).
fn set_flag(args: &mut Vec<String>, name: &str, value: &str) {
    let eq = format!("{name}=");
    if let Some(i) = args.iter().position(|a| a == name) {
        match args.get_mut(i + 1) {
            Some(v) => *v = value.to_string(),
            None => args.push(value.to_string()),
        }
    } else if let Some(a) = args.iter_mut().find(|a| a.starts_with(&eq)) {
        *a = format!("{eq}{value}");
    } else {
        args.push(name.to_string());
        args.push(value.to_string());
    }
}

/// Codex's thread totals (input, cached input, output) when it was last saved: the rollout
/// file `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl`, its last `token_count`.
/// Looked for within bounds (folders listed, bytes read); none found counts from zero.
pub fn codex_thread_totals(id: &str) -> (u64, u64, u64) {
    let home = std::env::var_os("CODEX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".codex")));
    home.and_then(|h| find_rollout(&h.join("sessions"), id)).and_then(|f| last_totals(&f)).unwrap_or((0, 0, 0))
}

fn find_rollout(sessions: &Path, id: &str) -> Option<PathBuf> {
    let suffix = format!("-{id}.jsonl");
    let mut dirs = vec![(sessions.to_path_buf(), 0)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = dirs.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            seen += 1;
            if seen > 100_000 {
                return None;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && depth < 3 {
                dirs.push((e.path(), depth + 1));
            } else if kind.is_file() && e.file_name().to_string_lossy().ends_with(&suffix) {
                return Some(e.path());
            }
        }
    }
    None
}

fn last_totals(path: &Path) -> Option<(u64, u64, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.take(256 * 1024).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines().rev().filter(|l| l.contains("\"token_count\"")).find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let t = v.pointer("/payload/info/total_token_usage").or_else(|| v.pointer("/info/total_token_usage"))?;
        let n = |k: &str| t.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some((n("input_tokens"), n("cached_input_tokens"), n("output_tokens")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_resumes_and_streams_as_the_format_needs() {
        let claude = v(&["-p", "do it", "--output-format", "json"]);
        assert_eq!(
            adapt(Some(UsageFormat::ClaudeJson), &claude, Some("s-1")),
            v(&["--resume", "s-1", "-p", "do it", "--output-format", "json"])
        );
        assert_eq!(adapt(Some(UsageFormat::ClaudeJson), &claude, None), claude);
        assert_eq!(
            adapt(Some(UsageFormat::ClaudeStream), &claude, None),
            v(&["-p", "do it", "--output-format", "stream-json", "--verbose"])
        );
        assert_eq!(
            adapt(Some(UsageFormat::ClaudeStream), &v(&["-p", "x", "--output-format=json", "--verbose"]), None),
            v(&["-p", "x", "--output-format=stream-json", "--verbose"])
        );
        // The user's own resume wins.
        let own = v(&["--resume", "mine", "-p", "x"]);
        assert_eq!(adapt(Some(UsageFormat::ClaudeJson), &own, Some("s-1")), own);
        let codex = v(&["exec", "--json", "--dangerously-bypass-approvals-and-sandbox", "do it"]);
        assert_eq!(
            adapt(Some(UsageFormat::CodexJson), &codex, Some("t-1")),
            v(&["exec", "resume", "t-1", "--json", "--dangerously-bypass-approvals-and-sandbox", "do it"])
        );
        assert_eq!(adapt(Some(UsageFormat::CodexJson), &v(&["exec", "do it"]), None), v(&["exec", "--json", "do it"]));
        assert_eq!(adapt(None, &claude, Some("s-1")), claude, "no format, no change");
    }

    #[test]
    fn a_codex_threads_totals_come_from_its_rollout_file() {
        let home = tempfile::tempdir().unwrap();
        let day = home.path().join("sessions/2026/12/07");
        std::fs::create_dir_all(&day).unwrap();
        let lines = [
            r#"{"type":"session_meta","payload":{"id":"t-9"}}"#,
            r#"{"type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":100,"cached_input_tokens":20,"output_tokens":7}}}}"#,
            r#"{"type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":200,"cached_input_tokens":40,"output_tokens":14}}}}"#,
        ];
        std::fs::write(day.join("rollout-2026-12-07T20-16-53-t-9.jsonl"), lines.join("\n")).unwrap();
        assert_eq!(
            find_rollout(&home.path().join("sessions"), "t-9").and_then(|f| last_totals(&f)),
            Some((200, 40, 14))
        );
        assert_eq!(find_rollout(&home.path().join("sessions"), "other"), None);
    }
}
