//! Building the frames the machine sends, so that none is one the hub would refuse: texts
//! clipped to the hub's field limits, and nothing over its frame limit.

use proto::AgentFrame;
use serde_json::Value;

/// `s` cut to at most `max` characters (the hub counts characters), never inside one.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_string(),
        None => s.to_string(),
    }
}

/// Whether the hub accepts `frame` by size ([`proto::MAX_FRAME_BYTES`]).
pub fn fits(frame: &AgentFrame) -> bool {
    frame.to_text().len() <= proto::MAX_FRAME_BYTES
}

pub fn wake_result(task_id: &str, status: &str, attempt: u32, error: Option<String>) -> AgentFrame {
    AgentFrame::WakeResult {
        task_id: task_id.to_string(),
        status: status.to_string(),
        attempt: Some(attempt as u64),
        error: error.map(|e| clip(&e, proto::MAX_REASON)),
    }
}

/// One `.progress` line as a frame: JSON if it parses, else the text. `None` for a blank line,
/// or if the frame would be over the hub's limit (control characters grow six-fold as JSON).
pub fn progress(task_id: &str, line: &[u8]) -> Option<AgentFrame> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let progress = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
    let frame =
        AgentFrame::TaskProgress { task_id: task_id.to_string(), progress: Some(progress), execution_event: None };
    fits(&frame).then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_characters_and_never_splits_one() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("ab", 5), "ab");
        assert_eq!(clip("🚀🚀🚀", 1), "🚀");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn progress_frames_stay_under_the_hub_limit() {
        assert!(progress("t", b"   ").is_none());
        let Some(AgentFrame::TaskProgress { progress: Some(v), .. }) = progress("t", b"{\"step\":1}") else { panic!() };
        assert_eq!(v["step"], 1);
        let Some(AgentFrame::TaskProgress { progress: Some(v), .. }) = progress("t", b"plain \xff text") else {
            panic!()
        };
        assert_eq!(v, "plain \u{fffd} text");
        // 200 KiB of control characters is 1.2 MB as JSON.
        assert!(progress("t", &vec![1u8; 200 * 1024]).is_none());
    }
}
