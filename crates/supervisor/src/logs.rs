//! Per-process log files: one line per output line with a timestamp, rotated by size with
//! rename-then-reopen (never copy-truncate), and a reader that follows across rotation.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    keep: u32,
}

impl LogFile {
    pub fn open(path: &Path, max: u64, keep: u32) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path: path.to_path_buf(), file, size, max, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `prefix line\n` (just `line\n` without a prefix) in one write, then rotates
    /// when the file reached its size limit.
    pub fn write_line(&mut self, prefix: Option<&str>, line: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(prefix.map_or(0, str::len) + line.len() + 2);
        if let Some(p) = prefix {
            buf.extend_from_slice(p.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        if self.size >= self.max {
            self.rotate()?;
        }
        Ok(())
    }

    /// Empties the file and removes its rotated ones (pm2's `flush`): a writer goes on at the
    /// start of the emptied file (it appends).
    pub fn clear(&mut self) -> io::Result<()> {
        remove_rotated(&self.path, self.keep)?;
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }

    /// `name.log` → `name.log.1` → … → `name.log.<keep>`; then a fresh `name.log`.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                if numbered(i).exists() {
                    std::fs::rename(numbered(i), numbered(i + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Which output of a process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// How a process's log lines are stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampFormat {
    /// RFC 3339 in UTC with microseconds, strictly increasing across both files of the process,
    /// so merging them by stamp gives back the order in which the lines arrived.
    Rfc3339,
    /// A chrono format in local time, from pm2's `log_date_format` (day.js tokens).
    Local(String),
    /// No stamp (`time = false`): the lines as written.
    Off,
}

impl StampFormat {
    pub fn of(spec: &proto::control::ProcSpec) -> StampFormat {
        match (&spec.log_date_format, spec.time) {
            (_, false) => StampFormat::Off,
            (Some(f), true) => StampFormat::Local(dayjs_to_chrono(f)),
            (None, true) => StampFormat::Rfc3339,
        }
    }
}

/// Translates a day.js format (what pm2's `log_date_format` takes: `YYYY-MM-DD HH:mm:ss.SSS Z`,
/// text in `[brackets]` kept as it is) into a chrono format string.
pub fn dayjs_to_chrono(fmt: &str) -> String {
    const TOKENS: [(&str, &str); 26] = [
        ("YYYY", "%Y"),
        ("YY", "%y"),
        ("MMMM", "%B"),
        ("MMM", "%b"),
        ("MM", "%m"),
        ("M", "%-m"),
        ("DD", "%d"),
        ("D", "%-d"),
        ("dddd", "%A"),
        ("ddd", "%a"),
        ("HH", "%H"),
        ("H", "%-H"),
        ("hh", "%I"),
        ("h", "%-I"),
        ("mm", "%M"),
        ("m", "%-M"),
        ("ss", "%S"),
        ("s", "%-S"),
        ("SSS", "%3f"),
        ("SS", "%2f"),
        ("S", "%1f"),
        ("A", "%p"),
        ("a", "%P"),
        ("ZZ", "%z"),
        ("Z", "%:z"),
        ("X", "%s"),
    ];
    let mut out = String::new();
    let mut rest = fmt;
    'outer: while let Some(c) = rest.chars().next() {
        if c == '[' {
            if let Some(end) = rest.find(']') {
                out.push_str(&rest[1..end].replace('%', "%%"));
                rest = &rest[end + 1..];
                continue;
            }
        }
        for (token, chrono) in TOKENS {
            if let Some(r) = rest.strip_prefix(token) {
                out.push_str(chrono);
                rest = r;
                continue 'outer;
            }
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The stamps of one process's log lines.
#[derive(Debug)]
pub struct Stamp {
    format: StampFormat,
    last: Option<SystemTime>,
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp { format: StampFormat::Rfc3339, last: None }
    }
}

impl Stamp {
    pub fn new(format: StampFormat) -> Stamp {
        Stamp { format, last: None }
    }

    pub fn next(&mut self, now: SystemTime) -> Option<String> {
        match &self.format {
            StampFormat::Off => None,
            StampFormat::Local(f) => {
                let local: chrono::DateTime<chrono::Local> = now.into();
                let mut text = String::new();
                // A format chrono cannot render is written as it is rather than panicking.
                if std::fmt::write(&mut text, format_args!("{}", local.format(f))).is_err() {
                    text = f.clone();
                }
                Some(text)
            }
            StampFormat::Rfc3339 => {
                let t = match self.last {
                    Some(last) if now <= last => last + Duration::from_micros(1),
                    _ => now,
                };
                self.last = Some(t);
                Some(humantime::format_rfc3339_micros(t).to_string())
            }
        }
    }
}

/// Every log file of one process behind one lock: its stdout and stderr pumps write through
/// it, so a line is stamped and written in the order it arrived, whichever stream it came on.
/// `combined` (pm2's `log_file`) gets both.
pub struct LogSink {
    out: LogFile,
    err: LogFile,
    combined: Option<LogFile>,
    stamp: Stamp,
}

pub type SharedSink = Arc<Mutex<LogSink>>;

impl LogSink {
    pub fn new(out: LogFile, err: LogFile, combined: Option<LogFile>, stamp: Stamp) -> LogSink {
        LogSink { out, err, combined, stamp }
    }

    pub fn shared(self) -> SharedSink {
        Arc::new(Mutex::new(self))
    }

    /// Empties every log file of the process (and removes the rotated ones).
    pub fn clear(&mut self) -> io::Result<()> {
        self.out.clear()?;
        self.err.clear()?;
        self.combined.as_mut().map_or(Ok(()), LogFile::clear)
    }

    pub fn write(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let prefix = self.stamp.next(SystemTime::now());
        if let Some(c) = self.combined.as_mut() {
            c.write_line(prefix.as_deref(), line)?;
        }
        match stream {
            Stream::Out => self.out.write_line(prefix.as_deref(), line),
            Stream::Err => self.err.write_line(prefix.as_deref(), line),
        }
    }
}

/// Removes `path.1` … `path.<keep>`.
fn remove_rotated(path: &Path, keep: u32) -> io::Result<()> {
    for i in 1..=keep {
        match std::fs::remove_file(format!("{}.{i}", path.display())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Empties a log file no sink holds open (a process not started since the supervisor started),
/// and removes its rotated ones; a file that does not exist is empty already.
pub fn clear_file(path: &Path, keep: u32) -> io::Result<()> {
    remove_rotated(path, keep)?;
    match OpenOptions::new().write(true).truncate(true).open(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Copies a child's output stream into its log sink, a line at a time. Lines longer than
/// 64 KiB are split so a runaway process cannot grow our memory.
pub async fn pump(mut stream: impl tokio::io::AsyncRead + Unpin, sink: SharedSink, which: Stream) {
    const MAX_LINE: usize = 64 * 1024;
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let write = |line: &[u8]| {
        let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = s.write(which, line) {
            tracing::warn!(error = %e, "cannot write a log line");
        }
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || line.len() >= MAX_LINE {
                write(line.strip_suffix(b"\r").unwrap_or(&line));
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        write(&line);
    }
}

/// The last `n` lines of a log, continuing into the rotated `.1` file when the current one,
/// just rotated, holds fewer (reads at most the last 1 MiB of each).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let mut lines = tail_one(path, n);
    if lines.len() < n {
        let older = tail_one(&PathBuf::from(format!("{}.1", path.display())), n - lines.len());
        lines.splice(0..0, older);
    }
    lines
}

fn tail_one(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(1 << 20);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Follows a log file across rotation: what was appended since the last call, including the
/// rest of a file that was renamed away.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of the file.
    pub fn at_end(path: &Path) -> Follower {
        use std::os::unix::fs::MetadataExt;
        let file = File::open(path).ok();
        let (ino, pos) = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| (m.ino(), m.len())).unwrap_or((0, 0));
        Follower { path: path.to_path_buf(), file, ino, pos, partial: Vec::new() }
    }

    pub fn poll(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        self.drain(&mut out);
        // Rotated (new inode) or truncated: finish the old file above, then start the new one.
        let current = std::fs::metadata(&self.path).ok();
        let rotated = current.as_ref().is_some_and(|m| m.ino() != self.ino || m.len() < self.pos);
        if rotated || (self.file.is_none() && current.is_some()) {
            self.file = File::open(&self.path).ok();
            self.ino = current.map(|m| m.ino()).unwrap_or(0);
            self.pos = 0;
            self.drain(&mut out);
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<String>) {
        let Some(f) = self.file.as_mut() else { return };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
        }
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_rename_and_the_follower_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let mut log = LogFile::open(&p, 200, 2).unwrap();
        let mut f = Follower::at_end(&p);
        let mut seen = Vec::new();
        for i in 0..100 {
            log.write_line(Some("t"), format!("line {i}").as_bytes()).unwrap();
            if i % 7 == 0 {
                seen.extend(f.poll());
            }
        }
        seen.extend(f.poll());
        let nums: Vec<usize> = seen.iter().map(|l| l.rsplit(' ').next().unwrap().parse().unwrap()).collect();
        // Rotation happens several times per poll here: lines in files rotated past `keep`
        // between polls are gone, but order is kept and the newest lines are all there.
        assert!(nums.windows(2).all(|w| w[1] > w[0]), "{nums:?}");
        assert_eq!(*nums.last().unwrap(), 99);
        assert!(dir.path().join("x.log.1").exists() && dir.path().join("x.log.2").exists());
        assert!(!dir.path().join("x.log.3").exists());
        assert!(tail(&p, 2).last().unwrap().ends_with("line 99"));
        let t = tail(&p, 8);
        assert_eq!(t.len(), 8, "continues into the rotated file: {t:?}");
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn stamps_strictly_increase_even_within_one_microsecond() {
        let mut s = Stamp::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = s.next(now).unwrap();
        let b = s.next(now).unwrap();
        let c = s.next(now - Duration::from_secs(1)).unwrap();
        assert_eq!(a, "2023-11-14T22:13:20.000000Z");
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn dayjs_formats_as_pm2_users_write_them() {
        assert_eq!(dayjs_to_chrono("YYYY-MM-DD HH:mm:ss.SSS Z"), "%Y-%m-%d %H:%M:%S.%3f %:z");
        assert_eq!(dayjs_to_chrono("[at] HH:mm [100%]"), "at %H:%M 100%%");
        let mut s = Stamp::new(StampFormat::Local(dayjs_to_chrono("YYYY/MM")));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(s.next(t).unwrap().starts_with("2023/11"));
        assert_eq!(Stamp::new(StampFormat::Off).next(t), None);
        // Odd input never panics.
        let mut odd = Stamp::new(StampFormat::Local(dayjs_to_chrono("%Q %% [ ] ]")));
        let _ = odd.next(t);
    }

    #[test]
    fn follower_reads_the_rest_of_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.log");
        let mut log = LogFile::open(&p, 1 << 20, 2).unwrap();
        log.write_line(Some("t"), b"before").unwrap();
        let mut f = Follower::at_end(&p);
        log.write_line(Some("t"), b"one").unwrap();
        log.rotate().unwrap();
        log.write_line(Some("t"), b"two").unwrap();
        let got: Vec<String> = f.poll().iter().map(|l| l.split(' ').nth(1).unwrap().to_string()).collect();
        assert_eq!(got, ["one", "two"]);
    }
}
