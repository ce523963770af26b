//! What the `agentcom ps / describe / logs` commands print.

use crate::logs::{tail, Follower, Stream};
use proto::control::ProcStatus;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A column value people read: `-` when there is none.
fn or_dash(v: u64, show: impl Fn(u64) -> String) -> String {
    if v == 0 {
        "-".into()
    } else {
        show(v)
    }
}

pub fn ps_table(list: &[ProcStatus]) -> String {
    if list.is_empty() {
        return "no processes\n".into();
    }
    let with_reason = list.iter().any(|p| p.reason.is_some());
    let mut headers = vec!["NAME", "MODE", "PID", "STATUS", "UPTIME", "RESTARTS", "MEMORY", "CPU", "EXIT"];
    if with_reason {
        headers.push("REASON");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                if p.tmux { "tmux".into() } else { "fork".into() },
                if p.pid == 0 { "-".into() } else { p.pid.to_string() },
                p.status.clone(),
                or_dash(p.uptime_ms, human::short_duration),
                p.restart_count.to_string(),
                or_dash(p.memory_bytes, human::bytes),
                format!("{:.1}%", p.cpu_percent),
                p.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
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

/// The time a log line was stamped with (our RFC 3339 prefix), if it has one.
fn stamp_of(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split(' ').next()?).ok()
}

/// Merges the tails of the two logs into the order the lines were written: both files'
/// stamps come from one strictly increasing clock per process, so this is a merge of two
/// sorted lists. A line without a stamp (a log written with `time = false` or a custom date
/// format) keeps its place after the line before it in its own file.
pub fn merge(out: Vec<String>, err: Vec<String>) -> Vec<(String, Stream)> {
    let keyed = |lines: Vec<String>, s: Stream| {
        let mut last = None;
        lines
            .into_iter()
            .map(|l| {
                last = stamp_of(&l).or(last);
                (last, l, s)
            })
            .collect::<Vec<_>>()
    };
    let (out, err) = (keyed(out, Stream::Out), keyed(err, Stream::Err));
    let mut merged = Vec::with_capacity(out.len() + err.len());
    let (mut o, mut e) = (out.into_iter().peekable(), err.into_iter().peekable());
    loop {
        let take_out = match (o.peek(), e.peek()) {
            (Some(a), Some(b)) => a.0 <= b.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let (_, line, s) = if take_out { o.next() } else { e.next() }.expect("peeked");
        merged.push((line, s));
    }
    merged
}

fn label(s: Stream) -> &'static str {
    match s {
        Stream::Out => "out",
        Stream::Err => "err",
    }
}

/// Prints the last `lines` of both logs in the order they were written, then, with `follow`,
/// everything appended to either, across rotations, until killed or `print` fails (a closed
/// pipe).
pub fn logs(
    out_log: &Path,
    err_log: &Path,
    lines: usize,
    follow: bool,
    print: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    let all = merge(tail(out_log, lines), tail(err_log, lines));
    let start = all.len().saturating_sub(lines);
    for (l, s) in &all[start..] {
        print(&format!("[{}] {l}", label(*s)))?;
    }
    if !follow {
        return Ok(());
    }
    let mut followers = [(Follower::at_end(out_log), Stream::Out), (Follower::at_end(err_log), Stream::Err)];
    loop {
        let [(o, _), (e, _)] = &mut followers;
        for (l, s) in merge(o.poll(), e.poll()) {
            print(&format!("[{}] {l}", label(s)))?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_written_order_within_the_same_millisecond() {
        let out = vec![
            "2026-01-01T00:00:00.000001Z line 9".to_string(),
            "2026-01-01T00:00:00.000002Z line 10".to_string(),
            "2026-01-01T00:00:00.000004Z line 11".to_string(),
        ];
        let err = vec!["2026-01-01T00:00:00.000003Z warn".to_string()];
        let got: Vec<String> =
            merge(out, err).into_iter().map(|(l, _)| l.split_once(' ').unwrap().1.to_string()).collect();
        assert_eq!(got, ["line 9", "line 10", "warn", "line 11"]);
    }

    #[test]
    fn lines_without_stamps_keep_their_place() {
        let got = merge(vec!["b".into(), "a".into()], vec!["z".into()]);
        let got: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(got, ["b", "a", "z"]);
    }
}
