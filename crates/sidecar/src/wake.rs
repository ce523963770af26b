//! Running the wake command: placeholders substituted shell-quoted, its own process group,
//! a timeout that ends the group, and the group found again after a restart.

use crate::queue::QueuedTask;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Quotes `s` for POSIX sh: the result is always one literal word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Replaces `${TASK_ID}`, `${TASK_JSON}` and `${TASK_DESCRIPTION}` with shell-quoted values,
/// so no task text can run as a command.
pub fn substitute(command: &str, task_id: &str, task_json: &str, description: &str) -> String {
    command
        .replace("${TASK_ID}", &shell_quote(task_id))
        .replace("${TASK_JSON}", &shell_quote(task_json))
        .replace("${TASK_DESCRIPTION}", &shell_quote(description))
}

pub struct WakeSpec<'a> {
    pub command: &'a str,
    pub task: &'a QueuedTask,
    pub task_json: &'a str,
    pub task_file: &'a Path,
    pub results_dir: &'a Path,
    pub log_file: &'a Path,
    pub cwd: Option<&'a Path>,
    pub agent_id: &'a str,
}

/// Starts `sh -c <command>` in a new process group with output appended to `log_file`.
pub fn spawn(spec: &WakeSpec<'_>) -> std::io::Result<tokio::process::Child> {
    let cmd = substitute(spec.command, &spec.task.task_id, spec.task_json, &spec.task.description);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(spec.log_file)?;
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .process_group(0)
        .env("AGENTCOM_TASK_ID", &spec.task.task_id)
        .env("AGENTCOM_TASK_DESCRIPTION", &spec.task.description)
        .env("AGENTCOM_TASK_FILE", spec.task_file)
        .env("AGENTCOM_RESULTS_DIR", spec.results_dir)
        .env("AGENTCOM_TASK_GENERATION", spec.task.generation.to_string())
        .env("AGENTCOM_AGENT_ID", spec.agent_id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    if let Some(dir) = spec.cwd {
        c.current_dir(dir);
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

/// The last `max` characters of a wake's log, for error reports.
pub fn log_tail(path: &PathBuf, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim_end();
    let start = text.char_indices().rev().nth(max.saturating_sub(1)).map(|(i, _)| i).unwrap_or(0);
    text[start..].replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_defeats_injection() {
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
    fn placeholders_are_substituted_quoted() {
        let c = substitute("run ${TASK_ID} ${TASK_DESCRIPTION}", "t-1", "{}", "it's");
        assert_eq!(c, "run 't-1' 'it'\\''s'");
    }
}
