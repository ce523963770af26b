//! The MCP server's one way out: a request line to its sidecar's local socket, and the answer
//! line back, bounded in size and time.

use sidecar::local::wire::{Request, Response, MAX_RESPONSE_BYTES};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The sidecar is not there (stopped, restarting) or the connection broke before its answer.
    #[error("cannot reach the sidecar at {path}: {why}")]
    Unreachable { path: String, why: String },
    #[error("the sidecar's answer is not one: {0}")]
    Garbled(String),
    #[error("no answer from the sidecar within {0:?}")]
    TimedOut(Duration),
}

/// Sends `req` and waits at most `limit` for the answer.
pub async fn call(socket: &Path, req: &Request, limit: Duration) -> Result<Response, SocketError> {
    let unreachable =
        |e: std::io::Error| SocketError::Unreachable { path: socket.display().to_string(), why: e.to_string() };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(unreachable)?;
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        stream.write_all(&line).await.map_err(unreachable)?;
        let mut answer = Vec::new();
        let mut limited = BufReader::new(stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        limited.read_until(b'\n', &mut answer).await.map_err(unreachable)?;
        if answer.last() != Some(&b'\n') {
            return Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before the answer was whole",
            )));
        }
        serde_json::from_slice::<Response>(&answer).map_err(|e| SocketError::Garbled(e.to_string()))
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| SocketError::TimedOut(limit))?
}
