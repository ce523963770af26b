//! Running the wake command: the compiled command ([`command`]) with the task's values in the
//! environment, its own process group, and the group found again after a restart.

pub mod command;

pub use command::{Placeholder, WakeCommand};

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Quotes `s` for POSIX sh: the result is always one literal word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Linux's limit on one string of the environment or argv, its NUL included (MAX_ARG_STRLEN,
/// 32 pages of 4 KiB): a longer `NAME=value` makes exec fail with E2BIG.
pub const MAX_ENV_STRING: usize = 32 * 4096;

/// The task's values a wake gets in its environment.
#[derive(Debug)]
pub struct TaskValues<'a> {
    pub task_id: &'a str,
    pub task_json: &'a str,
    pub description: &'a str,
    /// The session to resume ("" when none).
    pub session_id: &'a str,
}

/// Environment variables for a wake: name and value.
pub type Vars = Vec<(&'static str, String)>;

/// The placeholders' variables for one wake, and notes on the ones left out. A value the environment cannot carry (longer
/// than [`MAX_ENV_STRING`], or holding a NUL byte) fails the wake if the command uses it, with
/// the reason; otherwise it is left out and noted (the task file always has the whole task).
pub fn task_environment(cmd: &WakeCommand, values: &TaskValues<'_>) -> Result<(Vars, Vec<String>), String> {
    let mut vars = Vec::new();
    let mut omitted = Vec::new();
    for p in Placeholder::ALL {
        let value = match p {
            Placeholder::TaskId => values.task_id,
            Placeholder::TaskJson => values.task_json,
            Placeholder::TaskDescription => values.description,
            // No session to resume: the variable is not set at all (`${SESSION_ID}` is then empty).
            Placeholder::SessionId if values.session_id.is_empty() => continue,
            Placeholder::SessionId => values.session_id,
        };
        let var = p.env_var();
        let problem = if value.contains('\0') {
            Some("it holds a NUL byte, which no environment variable can carry".to_string())
        } else if var.len() + 1 + value.len() + 1 > MAX_ENV_STRING {
            Some(format!(
                "{} bytes is over Linux's limit for one environment string ({} bytes)",
                value.len(),
                MAX_ENV_STRING - var.len() - 2
            ))
        } else {
            None
        };
        match problem {
            None => vars.push((var, value.to_string())),
            Some(why) if cmd.uses(p) => {
                return Err(format!("task_too_large_for_wake: {} ({var}): {why}; use $AGENTCOM_TASK_FILE", p.text()))
            }
            Some(why) => omitted.push(format!("{var} left out of the wake's environment: {why}")),
        }
    }
    Ok((vars, omitted))
}

#[derive(Debug)]
pub struct WakeSpec<'a> {
    pub command: &'a WakeCommand,
    pub vars: &'a [(&'static str, String)],
    pub generation: u64,
    pub task_file: &'a Path,
    pub results_dir: &'a Path,
    pub log_file: &'a Path,
    pub cwd: Option<&'a Path>,
    pub agent_id: &'a str,
    /// The sidecar's local socket, for `agentcom mcp` (`AGENTCOM_SIDECAR_SOCKET`).
    pub socket: Option<&'a Path>,
}

/// Starts `sh -c <script>` in a new process group with output appended to `log_file`.
pub fn spawn(spec: &WakeSpec<'_>) -> std::io::Result<tokio::process::Child> {
    // A missing folder is named, not just "No such file or directory".
    if let Some(dir) = spec.cwd.filter(|d| !d.is_dir()) {
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        let kind = if dir.exists() { std::io::ErrorKind::NotADirectory } else { std::io::ErrorKind::NotFound };
        return Err(std::io::Error::new(kind, format!("repo_dir {} {what}", dir.display())));
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(spec.log_file)?;
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(&spec.command.script)
        .process_group(0)
        .envs(spec.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AGENTCOM_TASK_FILE", spec.task_file)
        .env("AGENTCOM_RESULTS_DIR", spec.results_dir)
        .env("AGENTCOM_TASK_GENERATION", spec.generation.to_string())
        .env("AGENTCOM_AGENT_ID", spec.agent_id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    if let Some(dir) = spec.cwd {
        c.current_dir(dir);
    }
    if let Some(socket) = spec.socket {
        c.env(crate::local::wire::SOCKET_ENV, socket);
    }
    c.spawn()
}

/// SIGTERM to the group, then SIGKILL after `grace`; returns when no process of it is alive.
pub async fn stop_group(pgid: i32, grace: Duration) {
    osutil::pgroup::stop_group(pgid, nix::sys::signal::Signal::SIGTERM, grace).await
}

/// Whether process group `pgid` still runs a wake of `task_id`. After our own restart the pid
/// may have been reused, so a process of the group must carry our task id in its environment.
pub fn group_runs_task(pgid: i32, task_id: &str) -> bool {
    osutil::procfs::group_has_env(pgid, "AGENTCOM_TASK_ID", task_id)
}

/// Every process group still running a wake of `task_id` for `agent_id`, found by environment:
/// a crash between spawning a wake and persisting its pid leaves no other trace of it.
pub fn groups_running(task_id: &str, agent_id: &str) -> Vec<i32> {
    osutil::procfs::groups_with_env(&[("AGENTCOM_TASK_ID", task_id), ("AGENTCOM_AGENT_ID", agent_id)])
}

/// The last `max` characters of a wake's log, for error reports. Reads only the file's end
/// (a wake may have written gigabytes), and any bytes at all (invalid UTF-8 is replaced).
pub fn log_tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let window = (max as u64 * 4).max(16);
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(window))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(window as usize);
    let _ = f.take(window).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_end();
    let start = text.char_indices().rev().nth(max.saturating_sub(1)).map(|(i, _)| i).unwrap_or(0);
    text.get(start..).unwrap_or("").replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_is_one_literal_word() {
        for evil in ["$(touch X)", "`touch X`", "'; touch X; '", "a\nb", "\\'"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(evil)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), evil);
        }
    }

    #[test]
    fn values_the_environment_cannot_carry_fail_only_when_used() {
        let uses_json = WakeCommand::compile("run \"${TASK_JSON}\"").unwrap();
        let plain = WakeCommand::compile("run").unwrap();
        let big = "x".repeat(MAX_ENV_STRING);
        let values = TaskValues { task_id: "t", task_json: &big, description: "nul\0inside", session_id: "" };
        let e = task_environment(&uses_json, &values).unwrap_err();
        assert!(
            e.starts_with("task_too_large_for_wake: ${TASK_JSON} (AGENTCOM_TASK_JSON)") && e.contains("131072"),
            "{e}"
        );
        let (vars, omitted) = task_environment(&plain, &values).unwrap();
        assert_eq!(vars, vec![("AGENTCOM_TASK_ID", "t".to_string())]);
        assert_eq!(omitted.len(), 2, "{omitted:?}");
        let fits = "y".repeat(MAX_ENV_STRING - "AGENTCOM_TASK_JSON".len() - 2);
        let values = TaskValues { task_id: "t", task_json: &fits, description: "d", session_id: "" };
        assert_eq!(task_environment(&uses_json, &values).unwrap().0.len(), 3);
    }

    /// A task JSON at the largest size the environment takes really reaches the wake.
    #[tokio::test]
    async fn the_largest_value_really_spawns() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = WakeCommand::compile("printf %s \"${TASK_JSON}\" | wc -c > n").unwrap();
        let json = "j".repeat(MAX_ENV_STRING - "AGENTCOM_TASK_JSON".len() - 2);
        let (vars, _) =
            task_environment(&cmd, &TaskValues { task_id: "t", task_json: &json, description: "", session_id: "" })
                .unwrap();
        let spec = WakeSpec {
            command: &cmd,
            vars: &vars,
            generation: 1,
            task_file: &dir.path().join("task.json"),
            results_dir: dir.path(),
            log_file: &dir.path().join("log"),
            cwd: Some(dir.path()),
            agent_id: "a",
            socket: None,
        };
        let status = spawn(&spec).unwrap().wait().await.unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(dir.path().join("n")).unwrap().trim(), json.len().to_string());
    }

    #[test]
    fn log_tail_reads_only_the_end_of_any_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut bytes = vec![b'x'; 1 << 20];
        bytes.extend_from_slice(b"\xff\xfe tail\nlast line\n");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(log_tail(&p, 17), "\u{fffd}\u{fffd} tail | last line");
        assert_eq!(log_tail(&dir.path().join("missing"), 10), "");
        std::fs::write(&p, "é".repeat(100)).unwrap();
        assert_eq!(log_tail(&p, 3), "ééé");
    }
}
