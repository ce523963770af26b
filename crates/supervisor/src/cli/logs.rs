//! What `logs` prints: each process's two logs merged back into the order the lines were
//! written (both are stamped from one strictly increasing clock per process), several
//! processes merged by those stamps and prefixed with their names, then followed across
//! rotations.

use crate::logs::{tail, Follower, Stream};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Which output `logs` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    Both,
    Out,
    Err,
}

/// The logs of one process.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// Printed before each line (`name | `) when several processes are shown.
    pub prefix: Option<String>,
    pub out: PathBuf,
    pub err: PathBuf,
}

/// The time a log line was stamped with (our RFC 3339 prefix), if it has one.
fn stamp_of(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split(' ').next()?).ok()
}

/// A line with the stamp it is ordered by, its stream and whose it is.
type Keyed = (Option<SystemTime>, String, Stream, usize);

/// Each line keyed by its stamp; a line without one (a log written with `time = false` or a
/// custom date format) keeps its place after the line before it in its own file.
fn keyed(lines: Vec<String>, s: Stream, source: usize) -> Vec<Keyed> {
    let mut last = None;
    lines
        .into_iter()
        .map(|l| {
            last = stamp_of(&l).or(last);
            (last, l, s, source)
        })
        .collect()
}

/// Merges lists each in written order into one: the earliest stamp first, the earlier list on
/// a tie, and each list's own order kept whatever its stamps say.
fn merge_all(lists: Vec<Vec<Keyed>>) -> Vec<Keyed> {
    let total = lists.iter().map(Vec::len).sum();
    let mut iters: Vec<std::vec::IntoIter<Keyed>> = lists.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<Keyed>> = iters.iter_mut().map(Iterator::next).collect();
    let mut heap: BinaryHeap<Reverse<(Option<SystemTime>, usize)>> =
        heads.iter().enumerate().filter_map(|(i, h)| h.as_ref().map(|h| Reverse((h.0, i)))).collect();
    let mut merged = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(item) = heads[i].take() {
            merged.push(item);
        }
        heads[i] = iters[i].next();
        if let Some(h) = &heads[i] {
            heap.push(Reverse((h.0, i)));
        }
    }
    merged
}

/// Merges the tails of the two logs of one process into the order the lines were written.
pub fn merge(out: Vec<String>, err: Vec<String>) -> Vec<(String, Stream)> {
    merge_all(vec![keyed(out, Stream::Out, 0), keyed(err, Stream::Err, 0)]).into_iter().map(|k| (k.1, k.2)).collect()
}

fn label(s: Stream) -> &'static str {
    match s {
        Stream::Out => "out",
        Stream::Err => "err",
    }
}

fn streams(selected: Selected) -> &'static [Stream] {
    match selected {
        Selected::Both => &[Stream::Out, Stream::Err],
        Selected::Out => &[Stream::Out],
        Selected::Err => &[Stream::Err],
    }
}

fn path(source: &LogSource, s: Stream) -> &PathBuf {
    match s {
        Stream::Out => &source.out,
        Stream::Err => &source.err,
    }
}

fn line(sources: &[LogSource], (_, l, s, i): &Keyed) -> String {
    match &sources[*i].prefix {
        // A name comes from outside: escaped, so it cannot forge lines or drive the terminal.
        Some(p) => format!("{} | [{}] {l}", human::printable(p), label(*s)),
        None => format!("[{}] {l}", label(*s)),
    }
}

/// Prints the last `lines` of each process's selected logs in the order they were written,
/// then, with `follow`, everything appended to any of them, across rotations, until killed or
/// `print` fails (a closed pipe).
pub fn logs(
    sources: &[LogSource],
    selected: Selected,
    lines: usize,
    follow: bool,
    print: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    let mut lists = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let own = streams(selected).iter().map(|s| keyed(tail(path(src, *s), lines), *s, i)).collect();
        let mut own = merge_all(own);
        own.drain(..own.len().saturating_sub(lines));
        lists.push(own);
    }
    for k in merge_all(lists) {
        print(&line(sources, &k))?;
    }
    if !follow {
        return Ok(());
    }
    let mut followers: Vec<(Follower, Stream, usize)> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, src)| streams(selected).iter().map(move |s| (Follower::at_end(path(src, *s)), *s, i)))
        .collect();
    loop {
        let new = followers.iter_mut().map(|(f, s, i)| keyed(f.poll(), *s, *i)).collect();
        for k in merge_all(new) {
            print(&line(sources, &k))?;
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

    #[test]
    fn several_processes_merge_by_stamp_with_their_names_and_one_stream_can_be_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let a = LogSource {
            prefix: Some("a".into()),
            out: write("a-out", "2026-01-01T00:00:01Z a1\n2026-01-01T00:00:03Z a3\n"),
            err: write("a-err", "2026-01-01T00:00:04Z a4!\n"),
        };
        let b = LogSource {
            prefix: Some("b\u{1b}]0;x".into()),
            out: write("b-out", "2026-01-01T00:00:02Z b2\n"),
            err: write("b-err", ""),
        };
        let run = |selected, lines| {
            let mut got = Vec::new();
            logs(&[a.clone(), b.clone()], selected, lines, false, &mut |l| {
                got.push(l.rsplit(' ').next().unwrap().to_string() + " " + l.split(" | ").next().unwrap());
                Ok(())
            })
            .unwrap();
            got
        };
        assert_eq!(run(Selected::Both, 10), ["a1 a", "b2 b\\u{1b}]0;x", "a3 a", "a4! a"]);
        assert_eq!(run(Selected::Err, 10), ["a4! a"]);
        assert_eq!(run(Selected::Out, 1), ["b2 b\\u{1b}]0;x", "a3 a"], "the last lines of each");
    }
}
