//! `ask_person` and `report_progress` through the files the sidecar already watches, so an MCP
//! question takes the agent's own durable round trip (`machine/input.rs`): the question is
//! written to `<task>.needs-input` (after a mark of it in the state dir, `mcp-question.json`),
//! the machine forwards it with a request id kept in `queue.json`, and the answer lands in
//! `<task>.input` before the question file goes. A call that ends before the answer (its wait
//! ran out, the sidecar restarted, the MCP server lost its connection) is repeated with the
//! same question: it then waits for the same request, never asks a second time, and gets the
//! answer once it is there (the mark tells that `.input` answers this question).

use super::wire::{Response, Scope};
use super::{Ctx, RECHECK};
use crate::files::{self, Found};
use crate::question::{self, Asked};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use tokio::time::{Duration, Instant};

/// The mark of the last question an MCP server asked, in the state dir.
const MARK: &str = "mcp-question.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marked {
    #[serde(flatten)]
    scope: Scope,
    asked: Asked,
}

fn path(ctx: &Ctx, scope: &Scope, ext: &str) -> PathBuf {
    ctx.cfg.results_dir.join(format!("{}.{ext}", scope.task_id))
}

fn error(e: impl Into<String>) -> Response {
    Response::Error { error: e.into() }
}

/// Asks `asked` for the held task, or waits for the same question asked before; at most
/// `wait_ms`.
pub(super) async fn ask(ctx: &Ctx, scope: &Scope, asked: Asked, wait_ms: u64) -> Response {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut holding = ctx.holding.clone();
    let (q_path, a_path) = (path(ctx, scope, "needs-input"), path(ctx, scope, "input"));
    let mark_path = ctx.cfg.state_dir.join(MARK);
    let this = Marked { scope: scope.clone(), asked: asked.clone() };
    let mut wrote = false;
    loop {
        if let Err(e) = ctx.check_scope(scope) {
            return error(format!("{e}; the question was not answered for this attempt"));
        }
        match files::read_small(&q_path, question::MAX_NEEDS_INPUT_BYTES) {
            Found::Regular(f) => match question::parse(&f.bytes) {
                Ok(open) if open == asked => {}
                _ => {
                    return error(
                        "another question is open for this task (its .needs-input file); wait for its answer first",
                    )
                }
            },
            Found::Missing => {
                let marked = files::read_small(&mark_path, question::MAX_NEEDS_INPUT_BYTES);
                let ours = matches!(&marked, Found::Regular(m) if serde_json::from_slice::<Marked>(&m.bytes).ok().as_ref() == Some(&this));
                if ours {
                    if let Found::Regular(a) = files::read_small(&a_path, proto::MAX_ANSWER * 4 + 2) {
                        let text = String::from_utf8_lossy(&a.bytes);
                        let answer = text.strip_suffix('\n').unwrap_or(&text).to_string();
                        return Response::Answer { answer };
                    }
                }
                if wrote {
                    return error("the question was closed without an answer (the agent was started again); ask again");
                }
                // The mark first: a crash between the two leaves a mark and no question, which a
                // repeated call writes again.
                let mark = serde_json::to_vec(&this).expect("marks serialize");
                if let Err(e) = osutil::fs::write_atomic(&mark_path, &mark) {
                    return error(format!("cannot record the question: {e}"));
                }
                let body = serde_json::to_vec(&asked).expect("questions serialize");
                let name = format!("{}.needs-input", scope.task_id);
                if let Err(e) = files::write_for_agent(&ctx.cfg.results_dir, &name, &body) {
                    return error(format!("cannot write {name}: {e}"));
                }
                tracing::info!(task_id = %scope.task_id, "an MCP tool asks a person");
                wrote = true;
                continue;
            }
            Found::NotRegular(kind) => return error(format!("{} is {kind}, not a regular file", q_path.display())),
            Found::TooLarge(_) | Found::Unreadable(_) => {
                return error("the open question's file cannot be read; wait for its answer first")
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Response::Pending { request_id: None };
        }
        tokio::select! {
            _ = holding.changed() => {}
            _ = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
        }
    }
}

/// Appends one line to `<task>.progress`, which the sidecar forwards as `task_progress`.
pub(super) fn progress(ctx: &Ctx, scope: &Scope, message: &str) -> Result<Value, String> {
    let line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let p = path(ctx, scope, "progress");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&p)
        .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err(format!("{} is not a regular file", p.display()));
    }
    f.write_all(format!("{}\n", line.trim()).as_bytes()).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(json!({"reported": true}))
}
