//! Everything a command prints for people or scripts goes through here: a closed pipe
//! (`agentcom ps | head -1`) ends the command quietly instead of panicking, as ripgrep does.

use std::io::{self, Write};

/// Writes `text` to stdout as it is.
pub fn print(text: impl AsRef<str>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_ref().as_bytes())?;
    out.flush()
}

/// Writes `text` and a newline to stdout.
pub fn println(text: impl AsRef<str>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_ref().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether the error, or any of its causes, is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}
