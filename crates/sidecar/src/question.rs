//! Questions an agent asks a person: `<task_id>.needs-input` (JSON `{"question", "options"?}`)
//! parsed as hostile input and clipped to the hub's limits, and what the sidecar remembers of
//! them in `queue.json` so that a restart neither loses a question nor asks it twice.
//!
//! The contract with the agent: it writes `<task_id>.needs-input` and waits until that file is
//! gone; the sidecar removes it only after `<task_id>.input` holds the answer (plain UTF-8 text,
//! ending with a newline), so the agent then reads `.input`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most bytes of a `.needs-input` file read: a full question and options, escaped, fit.
pub const MAX_NEEDS_INPUT_BYTES: usize = 128 * 1024;
/// Request ids answered that are remembered per task, to ack a re-delivery without writing.
pub const MAX_ANSWERED: usize = 16;

/// A question as forwarded: clipped to [`proto::MAX_QUESTION`] characters, at most
/// [`proto::MAX_OPTIONS`] options of at most [`proto::MAX_SHORT`] characters each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub question: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Why a `.needs-input` file is not a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadQuestion {
    /// Not JSON: perhaps still being written.
    NotJson(String),
    /// JSON, but not a question.
    Invalid(String),
}

impl std::fmt::Display for BadQuestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadQuestion::NotJson(e) => write!(f, "not JSON: {e}"),
            BadQuestion::Invalid(e) => f.write_str(e),
        }
    }
}

/// Parses a `.needs-input` file.
pub fn parse(bytes: &[u8]) -> Result<Asked, BadQuestion> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BadQuestion::NotJson(e.to_string()))?;
    shape(v).map_err(BadQuestion::Invalid)
}

fn shape(v: Value) -> Result<Asked, String> {
    let Value::Object(m) = v else {
        return Err("must be a JSON object {\"question\": \"...\", \"options\": [\"...\"]}".into());
    };
    let question = match m.get("question") {
        Some(Value::String(q)) if !q.trim().is_empty() => crate::machine::clip(q, proto::MAX_QUESTION),
        Some(Value::String(_)) => return Err("question: must not be empty".into()),
        None | Some(Value::Null) => return Err("question: required".into()),
        Some(_) => return Err("question: expected a string".into()),
    };
    let options = match m.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut options = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => options.push(crate::machine::clip(s, proto::MAX_SHORT)),
                    _ => return Err(format!("options[{i}]: expected a string")),
                }
            }
            options.truncate(proto::MAX_OPTIONS);
            options
        }
        Some(_) => return Err("options: expected an array of strings".into()),
    };
    Ok(Asked { question, options })
}

/// The answer as `<task_id>.input` holds it: the text as the person wrote it, ending with a
/// newline (one is added if missing), so `read -r` and line-reading agents get all of it.
pub fn answer_file(answer: &str) -> Vec<u8> {
    let mut text = crate::machine::clip(answer, proto::MAX_ANSWER).into_bytes();
    if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    text
}

/// A question forwarded to the hub and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenQuestion {
    pub request_id: String,
    #[serde(flatten)]
    pub asked: Asked,
    /// The `.needs-input` file it came from ([`crate::files::FileId`]).
    pub file: String,
}

/// What `queue.json` keeps of a task's questions (key `needs_input`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asking {
    /// Questions forwarded so far: the next request is number `asked + 1`.
    #[serde(default)]
    pub asked: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenQuestion>,
    /// The file of the last question answered: if it is still there (its removal failed), it is
    /// not a new question. A file the agent writes after that is, even with the same text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_file: Option<String>,
    /// Request ids whose answer `<task_id>.input` received (newest last): a re-delivery of one
    /// is acknowledged without writing the file again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered: Vec<String>,
    /// Questions that stopped being asked unanswered (the attempt was restarted), newest last:
    /// the hub is told after every connect while the task is held, so it closes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
}

impl Asking {
    pub fn is_empty(&self) -> bool {
        *self == Asking::default()
    }

    /// The id of the next request of a task at `generation`: `g<generation>-<n>`, unique per
    /// task and question, at most 33 characters of `[a-z0-9-]`.
    pub fn next_request_id(&self, generation: u64) -> String {
        format!("g{generation}-{}", self.asked.saturating_add(1))
    }

    /// Records that the open question was answered.
    pub fn answer(&mut self) {
        if let Some(q) = self.open.take() {
            self.answered_file = Some(q.file);
            self.answered.retain(|id| *id != q.request_id);
            self.answered.push(q.request_id);
            let excess = self.answered.len().saturating_sub(MAX_ANSWERED);
            self.answered.drain(..excess);
        }
    }

    /// The open question will not be answered for the agent (a new agent process runs): it
    /// becomes withdrawn. Returns its request id.
    pub fn withdraw(&mut self) -> Option<String> {
        let q = self.open.take()?;
        self.withdrawn.retain(|id| *id != q.request_id);
        self.withdrawn.push(q.request_id.clone());
        let excess = self.withdrawn.len().saturating_sub(MAX_ANSWERED);
        self.withdrawn.drain(..excess);
        Some(q.request_id)
    }

    /// Checks a record read back from `queue.json`; `Err` names what is wrong.
    pub fn checked(mut self) -> Result<Asking, String> {
        if let Some(q) = &mut self.open {
            check_request_id(&q.request_id)?;
            q.asked.question = crate::machine::clip(&q.asked.question, proto::MAX_QUESTION);
            q.asked.options.truncate(proto::MAX_OPTIONS);
            for o in &mut q.asked.options {
                *o = crate::machine::clip(o, proto::MAX_SHORT);
            }
        }
        for id in self.answered.iter().chain(&self.withdrawn) {
            check_request_id(id)?;
        }
        let excess = self.answered.len().saturating_sub(MAX_ANSWERED);
        self.answered.drain(..excess);
        let excess = self.withdrawn.len().saturating_sub(MAX_ANSWERED);
        self.withdrawn.drain(..excess);
        Ok(self)
    }
}

pub use proto::check_request_id;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn questions_are_parsed_and_clipped_to_the_hub_limits() {
        let a = parse(br#"{"question":"Deploy?","options":["yes","no"],"extra":1}"#).unwrap();
        assert_eq!(a, Asked { question: "Deploy?".into(), options: vec!["yes".into(), "no".into()] });
        assert_eq!(parse(br#"{"question":"Why?","options":null}"#).unwrap().options, Vec::<String>::new());
        let long = json!({"question": "q".repeat(9000), "options": vec!["o".repeat(300); 30]});
        let a = parse(long.to_string().as_bytes()).unwrap();
        assert_eq!(a.question.chars().count(), proto::MAX_QUESTION);
        assert_eq!(a.options.len(), proto::MAX_OPTIONS);
        assert!(a.options.iter().all(|o| o.chars().count() == proto::MAX_SHORT));
        for (bad, why) in [
            (&b"{nope"[..], "not JSON"),
            (b"[]", "must be a JSON object"),
            (b"{}", "question: required"),
            (br#"{"question":"  "}"#, "question: must not be empty"),
            (br#"{"question":5}"#, "question: expected a string"),
            (br#"{"question":"q","options":"yes"}"#, "options: expected an array"),
            (br#"{"question":"q","options":["a",1]}"#, "options[1]: expected a string"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(why), "{e} for {}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_answer_file_ends_with_one_newline() {
        assert_eq!(answer_file("yes"), b"yes\n");
        assert_eq!(answer_file("two\nlines\n"), b"two\nlines\n");
        assert_eq!(answer_file(""), b"\n");
        assert_eq!(answer_file(&"é".repeat(9000)).len(), proto::MAX_ANSWER * 2 + 1);
    }

    #[test]
    fn request_ids_are_unique_per_question_and_answers_remembered_in_a_bounded_list() {
        let mut a = Asking::default();
        assert_eq!(a.next_request_id(7), "g7-1");
        for n in 1..=20u32 {
            let id = a.next_request_id(u64::MAX);
            assert!(id.len() <= proto::MAX_REQUEST_ID && check_request_id(&id).is_ok(), "{id}");
            a.asked = n;
            a.open = Some(OpenQuestion {
                request_id: id,
                asked: Asked { question: "q".into(), options: vec![] },
                file: format!("f{n}"),
            });
            a.answer();
        }
        assert_eq!(a.answered.len(), MAX_ANSWERED);
        assert_eq!(a.answered.last().map(String::as_str), Some(format!("g{}-20", u64::MAX).as_str()));
        assert_eq!(a.answered_file.as_deref(), Some("f20"));
        assert!(a.open.is_none());
        let stored: Asking = serde_json::from_value(json!({"asked": 1, "answered": ["../x"]})).unwrap();
        assert!(stored.checked().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes: parsed into a question the hub accepts, or refused with a reason.
        #[test]
        fn any_file_is_a_question_the_hub_accepts_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        /// Any answer from the wire: the file is its start, within the hub's limit, and ends
        /// with exactly the one newline it needs.
        #[test]
        fn any_answer_is_written_as_its_text_and_a_newline(answer in "\\PC{0,40}(\\n)?", long in 0usize..9000) {
            for text in [answer.clone(), "ü".repeat(long)] {
                let file = String::from_utf8(answer_file(&text)).unwrap();
                prop_assert!(file.ends_with('\n'));
                let body = if text.ends_with('\n') && text.chars().count() <= proto::MAX_ANSWER { file.as_str() } else { &file[..file.len() - 1] };
                prop_assert!(text.starts_with(body), "{:?} from {:?}", file, text);
                prop_assert!(body.chars().count() <= proto::MAX_ANSWER);
            }
        }

        /// Any object with question-like fields: what is forwarded passes the hub's validation.
        #[test]
        fn any_question_object_gives_a_valid_frame(
            question in prop_oneof![Just(Value::Null), "\\PC{0,40}".prop_map(Value::from), any::<i32>().prop_map(Value::from),
                (7990usize..8010).prop_map(|n| Value::from("é".repeat(n)))],
            options in prop::option::of(prop::collection::vec(prop_oneof!["\\PC{0,300}".prop_map(Value::from), any::<bool>().prop_map(Value::from)], 0..30)),
        ) {
            let mut m = serde_json::Map::new();
            m.insert("question".into(), question);
            if let Some(o) = options {
                m.insert("options".into(), Value::Array(o));
            }
            if let Ok(a) = parse(Value::Object(m).to_string().as_bytes()) {
                let frame = proto::AgentFrame::NeedsInput { task_id: "t".into(), request_id: "g1-1".into(), question: a.question, options: a.options };
                prop_assert_eq!(proto::parse_agent_frame(&frame.to_text()), Ok(frame));
            }
        }
    }
}
