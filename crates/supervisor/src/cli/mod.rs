//! What the process commands print: `ps` here, `describe` in [`describe`], `logs` in [`logs`].

mod describe;
mod logs;

pub use describe::{describe_pm2_table, describe_table};
pub use logs::{logs, merge, LogSource, Selected};

use proto::control::ProcStatus;

/// A column value people read: `-` when there is none.
fn or_dash(v: u64, show: impl Fn(u64) -> String) -> String {
    if v == 0 {
        "-".into()
    } else {
        show(v)
    }
}

/// What a figure of a process that does not run shows: it has none, which is not zero.
const NONE: &str = "—";

/// Whether a status is one of a process that runs (its figures and exit code are current).
pub fn running(status: &str) -> bool {
    matches!(status, "online" | "launching" | "stopping")
}

pub fn ps_table(list: &[ProcStatus]) -> String {
    if list.is_empty() {
        return "no processes\n".into();
    }
    let with_reason = list.iter().any(|p| p.reason.is_some());
    let mut headers = vec!["ID", "NAME", "MODE", "PID", "STATUS", "UPTIME", "RESTARTS", "MEMORY", "CPU", "EXIT"];
    if with_reason {
        headers.push("REASON");
    }
    // By id, as pm2 lists them: the order they were first started in.
    let mut list: Vec<&ProcStatus> = list.iter().collect();
    list.sort_by_key(|p| p.id);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let up = running(&p.status);
            let mut row = vec![
                p.id.to_string(),
                p.name.clone(),
                if p.tmux { "tmux".into() } else { "fork".into() },
                if p.pid == 0 { "-".into() } else { p.pid.to_string() },
                p.status.clone(),
                or_dash(p.uptime_ms, human::short_duration),
                p.restart_count.to_string(),
                if up { or_dash(p.memory_bytes, human::bytes) } else { NONE.into() },
                if up { format!("{:.1}%", p.cpu_percent) } else { NONE.into() },
                // The code of an exit before the current run says nothing about this one.
                match p.exit_code {
                    Some(c) if !up => c.to_string(),
                    _ => "-".into(),
                },
            ];
            if with_reason {
                // The last column: a long reason is printed whole, never cut.
                row.push(p.reason.as_deref().unwrap_or("").replace(['\n', '\r'], " "));
            }
            row
        })
        .collect();
    human::table(&headers, &rows, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, status: &str, exit_code: Option<i32>) -> ProcStatus {
        ProcStatus {
            id: 3,
            name: name.into(),
            pid: if running(status) { 42 } else { 0 },
            status: status.into(),
            uptime_ms: if running(status) { 5_000 } else { 0 },
            restart_count: 1,
            memory_bytes: if running(status) { 2048 } else { 0 },
            cpu_percent: if running(status) { 1.5 } else { 0.0 },
            exit_code,
            unstable_restarts: 0,
            spec_hash: None,
            daemon_root: None,
            reason: None,
            tmux: false,
            instance_of: None,
        }
    }

    #[test]
    fn ps_shows_ids_no_stale_exit_code_and_no_figures_for_a_stopped_process() {
        let t = ps_table(&[status("up", "online", Some(1)), status("down", "stopped", Some(2))]);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["ID", "NAME", "MODE", "PID", "STATUS", "UPTIME", "RESTARTS", "MEMORY", "CPU", "EXIT"]);
        assert_eq!(lines[1], ["3", "up", "fork", "42", "online", "5s", "1", "2.0", "KiB", "1.5%", "-"]);
        assert_eq!(lines[2], ["3", "down", "fork", "-", "stopped", "-", "1", NONE, NONE, "2"]);
    }

    #[test]
    fn hostile_names_are_escaped() {
        let t = ps_table(&[status("a\u{1b}[2Jb\nc", "online", None)]);
        assert!(t.contains("a\\u{1b}[2Jb c") && !t.contains('\u{1b}'), "{t}");
    }
}
