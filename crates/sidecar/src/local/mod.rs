//! The sidecar's local socket, `<state_dir>/agent.sock` (mode 0600, made in a private folder
//! and renamed into place, so no other user ever sees it open): how `agentcom mcp`, started by
//! the agent CLI inside a wake, reaches the fleet. It never gets the hub token; every request
//! names the task and attempt of its wake's environment, and is refused unless that is the task
//! this sidecar holds now. One JSON line in, one out (`wire.rs`), bounded in size, in time and
//! in connections at once; a bad line is answered with why, never a stop.
//!
//! - `ask.rs`: `ask_person`, through the files the sidecar already watches (`.needs-input`,
//!   `.input`), so the question takes the same durable round trip as any agent's.
//! - `fleet.rs`: children (submit, wait, status) through the hub's HTTP API with the sidecar's
//!   own token.

mod ask;
mod fleet;
pub mod wire;

use crate::config::SidecarConfig;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use wire::{Request, Response, Scope, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

/// The socket's name in the state dir.
pub const SOCKET_NAME: &str = "agent.sock";
/// Connections served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting request looks again even without news (a missed wake-up costs this).
pub(crate) const RECHECK: Duration = Duration::from_secs(1);
/// The longest pause between two looks at the children `wait_for_tasks` waits for.
pub(crate) const MAX_WAIT_POLL: Duration = Duration::from_secs(1);

/// What the executor tells the socket after each step: the task it holds (and its attempt), and
/// a count that moves whenever the agent's question files changed hands (an answer written, a
/// question file removed), so waiting questions look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    pub task: Option<(String, u64)>,
    pub answers: u64,
}

/// What every request handler shares.
pub(crate) struct Ctx {
    pub cfg: Arc<SidecarConfig>,
    pub holding: watch::Receiver<Holding>,
    pub fleet: fleet::Fleet,
}

impl Ctx {
    /// Refuses a request for any task or attempt but the one held now.
    pub fn check_scope(&self, scope: &Scope) -> Result<(), String> {
        match &self.holding.borrow().task {
            Some((t, g)) if *t == scope.task_id && *g == scope.generation => Ok(()),
            Some((t, g)) if *t == scope.task_id => Err(format!(
                "task {t} is at attempt {g}, not {}: this MCP server belongs to an earlier attempt",
                scope.generation
            )),
            Some((t, _)) => Err(format!(
                "this sidecar holds task {t}, not {}: the MCP server's AGENTCOM_TASK_ID is stale",
                scope.task_id
            )),
            None => Err(format!("this sidecar holds no task now (asked for {})", scope.task_id)),
        }
    }
}

/// Makes the socket: any earlier socket of ours at the path is replaced; anything else there is
/// an error (never removed).
pub fn bind(state_dir: &Path) -> io::Result<(UnixListener, PathBuf)> {
    let path = state_dir.join(SOCKET_NAME);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; not replacing it", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Short: a socket's path is at most 107 bytes, and it is bound here before the rename.
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    let private = state_dir.join(format!(".s{:08x}", u32::from_le_bytes(b)));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let made = (|| -> io::Result<UnixListener> {
        let inner = private.join("s");
        let listener = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, &path)?;
        Ok(listener)
    })();
    // Whatever was left when a step failed (after the rename, nothing is).
    let _ = std::fs::remove_file(private.join("s"));
    let _ = std::fs::remove_dir(&private);
    Ok((made?, path))
}

/// Serves connections until `stop`.
pub(crate) async fn serve(listener: UnixListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "local socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let busy =
                    Response::Error { error: format!("the sidecar serves {MAX_CONNECTIONS} calls at once; try again") };
                let _ = reply(stream, &busy).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, ctx) => {}
            }
            drop(permit);
        });
    }
}

async fn connection(stream: UnixStream, ctx: Arc<Ctx>) {
    let (read, write) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => Response::Error { error: format!("no request line within {}s", READ_TIMEOUT.as_secs()) },
        Ok(Err(e)) => Response::Error { error: format!("cannot read the request: {e}") },
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            Response::Error { error: format!("the request is over {MAX_REQUEST_BYTES} bytes") }
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::Error { error: format!("not a request: {e}") },
            Ok(req) => handle(req, &ctx).await,
        },
    };
    let _ =
        reply(write.reunite(limited.into_inner().into_inner()).expect("the two halves of one stream"), &response).await;
}

async fn reply(mut stream: UnixStream, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_vec(response).expect("responses serialize");
    if text.len() > MAX_RESPONSE_BYTES {
        text = serde_json::to_vec(&Response::Error { error: "the answer is too large to send".into() })
            .expect("responses serialize");
    }
    text.push(b'\n');
    stream.write_all(&text).await?;
    stream.shutdown().await
}

async fn handle(req: Request, ctx: &Ctx) -> Response {
    let errors = req.check();
    if !errors.is_empty() {
        return Response::Error { error: errors.join("; ") };
    }
    if let Err(e) = ctx.check_scope(req.scope()) {
        return Response::Error { error: e };
    }
    let result = match req {
        Request::Ask { scope, question, options, wait_ms } => {
            return ask::ask(ctx, &scope, crate::question::Asked { question, options }, wait_ms).await
        }
        Request::Progress { scope, message } => ask::progress(ctx, &scope, &message),
        Request::Submit { scope, description, priority, capabilities, depends_on } => {
            ctx.fleet.submit(&scope, description, priority, capabilities, depends_on).await
        }
        Request::Wait { scope, task_ids, wait_ms } => ctx.fleet.wait(ctx, &scope, &task_ids, wait_ms).await,
        Request::Status { scope, of } => ctx.fleet.status(&scope, &of).await,
    };
    match result {
        Ok(value) => Response::Done { value },
        Err(error) => Response::Error { error },
    }
}

/// Starts the socket beside the executor; the executor publishes what it holds into `holding`.
pub(crate) fn start(
    cfg: Arc<SidecarConfig>,
    holding: watch::Receiver<Holding>,
    stop: CancellationToken,
) -> io::Result<PathBuf> {
    let (listener, path) = bind(&cfg.state_dir)?;
    let fleet = fleet::Fleet::new(&cfg).map_err(io::Error::other)?;
    let ctx = Arc::new(Ctx { cfg, holding, fleet });
    tokio::spawn(serve(listener, ctx, stop));
    Ok(path)
}

#[cfg(test)]
mod tests;
