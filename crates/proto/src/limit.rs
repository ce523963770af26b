//! A model provider's "stop" (a rate limit, an overloaded API, a usage limit), as an attempt
//! reports it: not a failure of the task, but a reason to wait. Also the id of the agent CLI's
//! conversation (its session), which the next attempt resumes.

use serde::{Deserialize, Serialize};

/// Longest session id carried.
pub const MAX_SESSION_ID: usize = 200;
/// Longest wait a limit may ask for: 31 days.
pub const MAX_LIMIT_WAIT_MS: u64 = 31 * 24 * 3600 * 1000;

/// When the provider will take requests again, as far as the agent knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// The reset time the provider gave (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at_ms: Option<u64>,
    /// How long to wait, when the provider said that instead (`retry-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// What the provider or the CLI said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether `id` is a session id we pass on: 1 to [`MAX_SESSION_ID`] ASCII letters, digits, `-`,
/// `_` and `.` (Claude Code's are UUIDs, Codex's UUIDv7s). It reaches a command line as an
/// argument, so nothing else is allowed in.
pub fn check_session_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "session_id: must be 1 to {MAX_SESSION_ID} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_words_never_options_or_paths() {
        assert!(check_session_id("0b8c8beb-a575-4770-9913-eb145d51722d").is_ok());
        for bad in ["", "-rf", "../x", "a b", "a;b", "$(x)", &"a".repeat(MAX_SESSION_ID + 1)] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
    }
}
