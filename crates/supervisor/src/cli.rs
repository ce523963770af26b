//! What the `agentcom ps / describe / logs` commands print.

use crate::logs::{tail, Follower};
use proto::control::ProcStatus;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn human_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.1} KB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MB", b as f64 / (1 << 20) as f64),
        b => format!("{:.2} GB", b as f64 / (1 << 30) as f64),
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms == 0 => "-".into(),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn ps_table(list: &[ProcStatus]) -> String {
    if list.is_empty() {
        return "no processes\n".into();
    }
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                if p.pid == 0 { "-".into() } else { p.pid.to_string() },
                p.status.clone(),
                human_ms(p.uptime_ms),
                p.restart_count.to_string(),
                human_bytes(p.memory_bytes),
                format!("{:.1}%", p.cpu_percent),
                p.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let headers = ["NAME", "PID", "STATUS", "UPTIME", "RESTARTS", "MEMORY", "CPU", "EXIT"];
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        let line: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<width$}", c, width = w[i])).collect();
        line.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = fmt(headers.to_vec());
    for r in &rows {
        out.push_str(&fmt(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints the last `lines` of both logs, merged in time order (lines start with a timestamp),
/// then, with `follow`, everything appended to either, across rotations, until killed.
pub fn logs(out_log: &Path, err_log: &Path, lines: usize, follow: bool) {
    let mut all: Vec<(String, &str)> = tail(out_log, lines).into_iter().map(|l| (l, "out")).collect();
    all.extend(tail(err_log, lines).into_iter().map(|l| (l, "err")));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let start = all.len().saturating_sub(lines);
    for (l, s) in &all[start..] {
        println!("[{s}] {l}");
    }
    if !follow {
        return;
    }
    let mut followers: Vec<(Follower, &str)> =
        vec![(Follower::at_end(&PathBuf::from(out_log)), "out"), (Follower::at_end(&PathBuf::from(err_log)), "err")];
    loop {
        for (f, s) in followers.iter_mut() {
            for l in f.poll() {
                println!("[{s}] {l}");
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(50));
    }
}
