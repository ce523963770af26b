//! Reading the fields of a JSON body, naming every wrong one at once (serde would stop at the
//! first): what each request's `from_json` is built from, so a rule is written once.

use serde_json::{Map, Value};

/// A body being read, and what was wrong with it so far.
pub(crate) struct Fields {
    m: Map<String, Value>,
    pub(crate) errors: Vec<String>,
}

impl Fields {
    pub(crate) fn new(m: Map<String, Value>) -> Fields {
        Fields { m, errors: Vec::new() }
    }

    /// A string of at most `max` characters; `required` fields must be there and hold more than
    /// whitespace.
    pub(crate) fn string(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        match self.m.remove(name) {
            None | Some(Value::Null) if required => self.errors.push(format!("{name}: required")),
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if required && s.trim().is_empty() => {
                self.errors.push(format!("{name}: must not be empty"))
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.errors.push(format!("{name}: longer than {max} characters"))
            }
            Some(Value::String(s)) => return Some(s),
            Some(_) => self.errors.push(format!("{name}: expected string")),
        }
        None
    }

    pub(crate) fn bool(&mut self, name: &str) -> Option<bool> {
        match self.m.remove(name) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => {
                self.errors.push(format!("{name}: expected boolean"));
                None
            }
        }
    }

    /// Adds the problem `check` finds with a value read, if any.
    pub(crate) fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.errors.push(e);
        }
    }

    /// `v` if nothing was wrong.
    pub(crate) fn done<T>(self, v: T) -> Result<T, Vec<String>> {
        if self.errors.is_empty() {
            Ok(v)
        } else {
            Err(self.errors)
        }
    }
}

/// The optional id at `name` in `m`, if `check` takes it: its refusal, which names the field
/// `checked` (`task_id`, `agent_id`), is added to `errors` naming `name` instead.
pub(crate) fn optional_id(
    m: &mut Map<String, Value>,
    errors: &mut Vec<String>,
    name: &str,
    check: fn(&str) -> Result<(), String>,
    checked: &str,
) -> Option<String> {
    match m.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => match check(&id) {
            Ok(()) => Some(id),
            Err(e) => {
                errors.push(e.replacen(checked, name, 1));
                None
            }
        },
        Some(_) => {
            errors.push(format!("{name}: expected string"));
            None
        }
    }
}
