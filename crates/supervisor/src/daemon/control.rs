//! The control socket: one JSON request per line, one JSON answer per line. Everything that
//! arrives here is hostile until parsed: a line is capped at [`MAX_REQUEST_LINE`] (a longer one
//! is skipped up to its newline without being buffered, and answered with an error), bytes
//! that are not UTF-8 or not a request are answered with an error, a connection idle for
//! `idle_timeout` is closed, and at most `max_connections` are served at once (one more is
//! told so and closed). None of it keeps the supervisor from serving everyone else.

use super::shell::Ev;
use proto::control::{parse_request, Request, Response, MAX_REQUEST_LINE};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The limits of the control socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// One line read from a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line(Vec<u8>),
    /// A line longer than the limit: its bytes were dropped as they came.
    TooLong,
}

/// Reads newline-terminated lines, holding at most `max` bytes of one line in memory.
pub struct LineReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    line: Vec<u8>,
    discarding: bool,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader { inner, buf: vec![0; 16 * 1024].into(), start: 0, end: 0, line: Vec::new(), discarding: false, max }
    }

    /// The next line, or `None` at the end of the stream (an unterminated last line is dropped:
    /// a request is only complete with its newline).
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if self.start == self.end {
                self.start = 0;
                self.end = self.inner.read(&mut self.buf).await?;
                if self.end == 0 {
                    return Ok(None);
                }
            }
            let chunk = &self.buf[self.start..self.end];
            let newline = chunk.iter().position(|b| *b == b'\n');
            let take = newline.map_or(chunk.len(), |i| i + 1);
            let body = &chunk[..newline.unwrap_or(chunk.len())];
            self.start += take;
            if self.discarding {
                if newline.is_some() {
                    self.discarding = false;
                }
                continue;
            }
            if self.line.len() + body.len() > self.max {
                self.line = Vec::new();
                self.discarding = newline.is_none();
                return Ok(Some(Frame::TooLong));
            }
            self.line.extend_from_slice(body);
            if newline.is_some() {
                return Ok(Some(Frame::Line(std::mem::take(&mut self.line))));
            }
        }
    }
}

/// Accepts connections until `shutdown`; each is served in its own task, tracked so the daemon
/// can wait for the last answers (the one to `kill` above all) before it exits.
pub async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<Ev>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, for example: wait a little instead of spinning.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (tx, shutdown) = (tx.clone(), shutdown.clone());
                tracker.spawn(async move {
                    serve_conn(stream, tx, limits.idle_timeout, shutdown).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracker.spawn(async move {
                    let msg = format!("too many control connections (limit {}); try again", limits.max_connections);
                    let mut stream = stream;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), write_response(&mut stream, &error(msg))).await;
                });
            }
        }
    }
}

fn error(error: String) -> Response {
    Response::Error { error }
}

async fn write_response(w: &mut (impl tokio::io::AsyncWrite + Unpin), resp: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(resp).expect("responses serialize");
    out.push(b'\n');
    w.write_all(&out).await
}

async fn serve_conn(stream: UnixStream, tx: mpsc::Sender<Ev>, idle: Duration, shutdown: CancellationToken) {
    let (r, mut w) = stream.into_split();
    let mut lines = LineReader::new(r, MAX_REQUEST_LINE);
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = tokio::time::timeout(idle, lines.next()) => match read {
                Err(_) => {
                    let msg = format!("closing a connection idle for {} ms", idle.as_millis());
                    let _ = tokio::time::timeout(Duration::from_secs(1), write_response(&mut w, &error(msg))).await;
                    return;
                }
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) | Ok(Err(_)) => return,
            },
        };
        let resp = match frame {
            Frame::TooLong => error(format!("bad request: line longer than {MAX_REQUEST_LINE} bytes")),
            Frame::Line(line) => match parse_request(&line) {
                Err(e) => error(e),
                Ok(req) => ask(&tx, req).await,
            },
        };
        // An answer is written even while shutting down: `kill` is answered just before the exit.
        if write_response(&mut w, &resp).await.is_err() {
            return;
        }
    }
}

async fn ask(tx: &mpsc::Sender<Ev>, req: Request) -> Response {
    let (rtx, rrx) = oneshot::channel();
    if tx.send(Ev::Req(req, rtx)).await.is_err() {
        return error("supervisor shutting down".into());
    }
    rrx.await.unwrap_or_else(|_| error("supervisor shutting down".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(f) = r.next().await.unwrap() {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn lines_too_long_are_skipped_to_their_newline() {
        let got = frames(b"ab\nabcdefgh\ncd\nxyzxyzxyzxyz", 4).await;
        assert_eq!(got, [Frame::Line(b"ab".to_vec()), Frame::TooLong, Frame::Line(b"cd".to_vec()), Frame::TooLong]);
        let got = frames(b"abcd\n\n", 4).await;
        assert_eq!(got, [Frame::Line(b"abcd".to_vec()), Frame::Line(vec![])]);
    }

    #[tokio::test]
    async fn a_long_line_across_many_reads_never_grows_the_buffer() {
        let mut input = vec![b'x'; 200_000];
        input.extend_from_slice(b"\nok\n");
        let mut r = LineReader::new(&input[..], 1000);
        assert_eq!(r.next().await.unwrap(), Some(Frame::TooLong));
        assert!(r.line.capacity() <= 1000 + 16 * 1024);
        assert_eq!(r.next().await.unwrap(), Some(Frame::Line(b"ok".to_vec())));
        assert_eq!(r.next().await.unwrap(), None);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Any bytes: an answer, never a panic.
            #[test]
            fn any_bytes_parse_or_fail_cleanly(line in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Err(e) = parse_request(&line) {
                    prop_assert!(e.starts_with("bad request: "));
                }
            }

            /// JSON shaped like the real requests, whole, cut or with junk after it: still an
            /// answer, and a start is validated without panicking either.
            #[test]
            fn request_shaped_input_never_panics(
                cmd in prop_oneof![Just("ps".to_string()), Just("start".to_string()), Just("stop".to_string()),
                                   Just("describe".to_string()), Just("kill".to_string()), "[a-z-]{0,8}"],
                name in any::<String>(),
                command in any::<String>(),
                timeout in any::<i64>(),
                extra in "[ -~]{0,40}",
                cut in 0usize..200,
            ) {
                let line = serde_json::json!({
                    "cmd": cmd,
                    "name": name,
                    "spec": {"name": name, "command": command, "kill_timeout_ms": timeout, "env": {name.clone(): command.clone()}},
                })
                .to_string();
                let bytes = line.as_bytes();
                for candidate in [bytes.to_vec(), [bytes, extra.as_bytes()].concat(), bytes[..cut.min(bytes.len())].to_vec()] {
                    match parse_request(&candidate) {
                        Ok(Request::Start { spec }) => { let _ = spec.validate(); }
                        Ok(_) => {}
                        Err(e) => prop_assert!(e.starts_with("bad request: ")),
                    }
                }
            }
        }
    }
}
