//! Reading what the agent writes into the results dir (`<id>.started`, `<id>.progress`,
//! `<id>.json`, `<id>.needs-input`, `<id>.usage`) as hostile input: never through a symlink (`O_NOFOLLOW`), never blocking on a
//! FIFO (`O_NONBLOCK`), only regular files (checked with `fstat` on the open file), and never
//! more than a cap (a result is read up to its cap + 1 byte; progress in bounded windows).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

/// What a file in the results dir turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<T> {
    Missing,
    Regular(T),
    /// Something other than a regular file: "a symbolic link", "a FIFO", "a directory"...
    NotRegular(&'static str),
    /// Bigger than the cap (its size as far as we know: at least cap + 1).
    TooLarge(u64),
    Unreadable(String),
}

/// A result file's bytes and how long ago it was last written.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultBytes {
    pub bytes: Vec<u8>,
    pub age: Option<Duration>,
}

/// Which file a small agent file was: inode, modification time and size. A file rewritten
/// (renamed in, or written again in place) is another file, even with the same content.
pub type FileId = String;

/// A small agent file (`.needs-input`, `.usage`): its bytes, which file it was, and how long
/// ago it was last written (a file still being written may not parse yet).
#[derive(Debug, Clone, PartialEq)]
pub struct SmallFile {
    pub bytes: Vec<u8>,
    pub id: FileId,
    pub age: Option<Duration>,
}

/// Where progress reading stands: the offset up to which lines were forwarded, and whether we
/// are inside an over-long line being skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressCursor {
    pub offset: u64,
    pub skipping: bool,
}

/// New complete progress lines (each at most the cap, without its newline).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressLines {
    pub lines: Vec<Vec<u8>>,
    pub cursor: ProgressCursor,
    /// How many over-long lines were skipped in this read.
    pub skipped: usize,
}

/// Everything the machine needs to know about a task's files at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub task_id: String,
    pub started: Found<()>,
    pub progress: Found<ProgressLines>,
    pub result: Found<ResultBytes>,
    /// The look was prompted by the result file being closed after writing (or renamed in).
    pub result_closed: bool,
    /// `<id>.needs-input`: a question for a person.
    pub needs_input: Found<SmallFile>,
    /// `<id>.usage`: what the attempt cost.
    pub usage: Found<SmallFile>,
    /// Whether a process of the task's wake still runs, when that was asked.
    pub agent_alive: Option<bool>,
}

fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` only if it is a regular file, without following a symlink or blocking.
fn open_regular<T>(path: &Path) -> Result<(File, Metadata), Found<T>> {
    // lstat first: a FIFO or device is never even opened.
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Found::Missing),
        Err(e) => return Err(Found::Unreadable(e.to_string())),
        Ok(m) if !m.file_type().is_file() => return Err(Found::NotRegular(kind(&m))),
        Ok(_) => {}
    }
    let file =
        OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path).map_err(
            |e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) => Found::NotRegular("a symbolic link"),
                _ if e.kind() == io::ErrorKind::NotFound => Found::Missing,
                _ => Found::Unreadable(e.to_string()),
            },
        )?;
    // fstat the open file: whatever was swapped in after the lstat is what we hold now.
    let m = file.metadata().map_err(|e| Found::Unreadable(e.to_string()))?;
    if !m.file_type().is_file() {
        return Err(Found::NotRegular(kind(&m)));
    }
    Ok((file, m))
}

/// Whether `<id>.started` exists as a regular file (never opened: its content is not used).
pub fn marker(path: &Path) -> Found<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Found::Regular(()),
        Ok(m) => Found::NotRegular(kind(&m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Found::Missing,
        Err(e) => Found::Unreadable(e.to_string()),
    }
}

/// The whole of a regular file of at most `cap` bytes, and its metadata.
fn read_capped<T>(path: &Path, cap: usize) -> Result<(Vec<u8>, Metadata), Found<T>> {
    let (file, m) = open_regular(path)?;
    if m.len() > cap as u64 {
        return Err(Found::TooLarge(m.len()));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    // One byte past the cap tells a file that grew since the fstat from one that fits.
    if let Err(e) = file.take(cap as u64 + 1).read_to_end(&mut bytes) {
        return Err(Found::Unreadable(e.to_string()));
    }
    if bytes.len() > cap {
        return Err(Found::TooLarge(bytes.len() as u64));
    }
    Ok((bytes, m))
}

/// Reads a whole result file of at most `cap` bytes.
pub fn read_result(path: &Path, cap: usize) -> Found<ResultBytes> {
    let (bytes, m) = match read_capped(path, cap) {
        Ok(x) => x,
        Err(found) => return found,
    };
    let age = m.modified().ok().and_then(|t| t.elapsed().ok());
    Found::Regular(ResultBytes { bytes, age })
}

/// Reads a whole small file of at most `cap` bytes, with its identity.
pub fn read_small(path: &Path, cap: usize) -> Found<SmallFile> {
    use std::os::unix::fs::MetadataExt;
    let (bytes, m) = match read_capped(path, cap) {
        Ok(x) => x,
        Err(found) => return found,
    };
    let id = format!("i{}-m{}.{:09}-s{}", m.ino(), m.mtime(), m.mtime_nsec(), m.len());
    let age = m.modified().ok().and_then(|t| t.elapsed().ok());
    Found::Regular(SmallFile { bytes, id, age })
}

/// At most this many bytes of progress are read per look; the rest waits for the next one.
const PROGRESS_BUDGET: usize = 8 << 20;

/// Reads the complete lines after `cursor`, each at most `cap` bytes; longer lines are skipped
/// without ever being held whole. A trailing line without its newline is left for later.
pub fn read_progress(path: &Path, cursor: ProgressCursor, cap: usize) -> Found<ProgressLines> {
    let (mut file, m) = match open_regular(path) {
        Ok(x) => x,
        Err(found) => return found,
    };
    let mut out = ProgressLines { lines: Vec::new(), cursor, skipped: 0 };
    if m.len() <= cursor.offset {
        return Found::Regular(out);
    }
    if let Err(e) = file.seek(SeekFrom::Start(cursor.offset)) {
        return Found::Unreadable(e.to_string());
    }
    let window = cap + 1;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; window.min(PROGRESS_BUDGET)];
    // Absolute position of the next byte read.
    let mut pos = cursor.offset;
    while pos - cursor.offset < PROGRESS_BUDGET as u64 {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Found::Unreadable(e.to_string()),
        };
        let mut data = &chunk[..n];
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    if out.cursor.skipping {
                        out.cursor.skipping = false;
                    } else if pending.len() + i > cap {
                        pending.clear();
                        out.skipped += 1;
                    } else {
                        pending.extend_from_slice(&data[..i]);
                        out.lines.push(std::mem::take(&mut pending));
                    }
                    pos += i as u64 + 1;
                    out.cursor.offset = pos;
                    data = &data[i + 1..];
                }
                None => {
                    pos += data.len() as u64;
                    if out.cursor.skipping {
                        out.cursor.offset = pos;
                    } else if pending.len() + data.len() > cap {
                        // Over-long: forget what we hold and skip to the next newline.
                        pending.clear();
                        out.cursor.offset = pos;
                        out.cursor.skipping = true;
                        out.skipped += 1;
                    } else {
                        pending.extend_from_slice(data);
                    }
                    data = &[];
                }
            }
        }
    }
    Found::Regular(out)
}

/// Writes `data` to `dir/name` for the agent to read, durably and atomically. The temp file has
/// a random name created exclusively (never through a symlink or a file planted at a name we
/// would use), and the rename replaces a symlink at `name`, never its target.
pub fn write_for_agent(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    osutil::fs::write_atomic(&dir.join(name), data)
}

#[cfg(test)]
mod tests;
