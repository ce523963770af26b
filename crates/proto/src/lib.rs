//! AgentCom v1 wire types: the frames agents and the hub exchange, and their validation. No IO.
//!
//! Only types from this crate cross the wire. Parsing is two-step: a frame is first checked
//! against a per-type field schema (so errors name the field, as the v1 hub did with
//! `validation_failed`), then deserialized into a typed [`AgentFrame`]. Unknown fields are
//! allowed, because v1 sidecars send extras such as `protocol_version` on every frame.

pub mod api;
mod change;
pub mod control;
mod frames;
mod limit;
mod parse;
#[cfg(test)]
mod tests;
mod usage;

pub use change::*;
pub use frames::*;
pub use limit::*;
pub use parse::{parse_agent_frame, parse_hub_frame, FrameError};
pub use usage::Usage;

pub const PROTOCOL_VERSION: u32 = 1;
/// A standby hub (several hubs on one PostgreSQL, one leader) closes an agent's socket with this
/// code; the close reason is the leader's WebSocket URL, or empty when no leader is known yet.
/// A sidecar moves to the named URL only if it is one of its configured `hub_url`s.
pub const CLOSE_NOT_LEADER: u16 = 4001;
/// Largest frame the hub accepts; bigger frames close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
pub const MAX_AGENT_ID: usize = 128;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_TOKEN: usize = 256;
pub const MAX_REASON: usize = 2_000;
/// Upper bound for short free-text fields the sheet does not name (status, name...).
pub const MAX_SHORT: usize = 256;
/// Longest task id either side accepts.
pub const MAX_TASK_ID: usize = 128;
/// A question an agent asks a person (`needs_input`), and the answer it gets (`task_input`).
pub const MAX_QUESTION: usize = 8_000;
pub const MAX_ANSWER: usize = 8_000;
/// Choices offered with a question, and the length of each.
pub const MAX_OPTIONS: usize = 20;
/// Longest `request_id` of a question (the sidecar makes them: `g<generation>-<n>`).
pub const MAX_REQUEST_ID: usize = 64;
/// Most tokens one attempt may report in one count: far above any real session, and low enough
/// that sums over millions of attempts stay within the stores' 64-bit signed integers.
pub const MAX_USAGE_TOKENS: u64 = 10_000_000_000;
/// Most dollars one attempt may report.
pub const MAX_USAGE_COST_USD: f64 = 1_000_000.0;

/// Whether `id` is a request id a sidecar could have made: 1 to [`MAX_REQUEST_ID`] ASCII letters,
/// digits, `.`, `_` or `-`.
pub fn check_request_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("request_id: must be 1 to {MAX_REQUEST_ID} ASCII letters, digits, '.', '_' or '-'"))
    }
}

/// Whether `token` could be one: 1 to [`MAX_TOKEN`] characters.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.chars().count() > MAX_TOKEN {
        return Err(format!("token: must be 1 to {MAX_TOKEN} characters"));
    }
    Ok(())
}

/// Whether `id` is a task id both sides accept: 1 to [`MAX_TASK_ID`] ASCII letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit. A sidecar builds file names from task ids, so
/// an id can never be a path (`/`, `..`), a hidden file or carry control characters.
pub fn check_task_id(id: &str) -> Result<(), String> {
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.len() > MAX_TASK_ID || !first_ok || !chars_ok {
        return Err(format!(
            "task_id: must be 1 to {MAX_TASK_ID} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}
