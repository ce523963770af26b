//! Who may do what (the role matrix in the README, tested route by route end to end):
//! the admin may do everything; an agent token may submit tasks and read, may cancel, retry or
//! answer only the tasks it submitted, reads what was said and made only on tasks it submitted
//! or holds, and reads and writes only its own checkpoint.

use crate::auth::Role;
use proto::api::{ApiError, ErrorCode, TaskView};

/// What an agent token sees of a task it neither submitted nor holds: where it stands in the
/// queue, not what was said or made on it (result, report, progress, the question and a
/// person's answer, usage, its change); the caller also leaves out its history, whose lines quote
/// questions. Returns whether anything was withheld.
pub fn withhold_content(role: &Role, task: &mut TaskView) -> bool {
    let Role::Agent(me) = role else { return false };
    if task.submitted_by == *me || task.assigned_to.as_deref() == Some(me.as_str()) {
        return false;
    }
    task.result = None;
    task.report.clear();
    task.progress = None;
    task.needs_input = None;
    task.answer = None;
    task.usage = None;
    task.change = None;
    task.integration = None;
    true
}

/// Routes for the admin token only.
pub fn admin_only(role: &Role, what: &str) -> Result<(), ApiError> {
    match role {
        Role::Admin => Ok(()),
        Role::Agent(me) => Err(ApiError::new(ErrorCode::Forbidden)
            .msg(format!("{what} needs the admin token; this is an agent token (agent {me})"))),
    }
}

/// Cancel and retry: an agent only on tasks it submitted itself.
pub fn may_change(role: &Role, submitted_by: &str, verb: &str) -> Result<(), ApiError> {
    match role {
        Role::Admin => Ok(()),
        Role::Agent(me) if me == submitted_by => Ok(()),
        Role::Agent(me) => Err(ApiError::new(ErrorCode::Forbidden).msg(format!(
            "an agent token (agent {me}) may {verb} only tasks it submitted; this one was submitted by {submitted_by}"
        ))),
    }
}

/// A checkpoint holds the agent's conversation: only it and the admin may read or write it.
pub fn may_checkpoint(role: &Role, agent_id: &str, verb: &str) -> Result<(), ApiError> {
    match role {
        Role::Admin => Ok(()),
        Role::Agent(me) if me == agent_id => Ok(()),
        Role::Agent(me) => Err(ApiError::new(ErrorCode::Forbidden)
            .msg(format!("an agent token (agent {me}) may {verb} only its own checkpoint, not {agent_id}'s"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_change_only_their_own() {
        let admin = Role::Admin;
        let a1 = Role::Agent("a1".into());
        assert!(may_change(&admin, "a2", "cancel").is_ok());
        assert!(may_change(&a1, "a1", "cancel").is_ok());
        let e = may_change(&a1, "admin", "retry").unwrap_err();
        assert_eq!(e.error, ErrorCode::Forbidden);
        assert!(e.message.unwrap().contains("submitted by admin"));
        assert!(admin_only(&a1, "creating tokens").is_err() && admin_only(&admin, "x").is_ok());
        assert!(may_checkpoint(&a1, "a2", "read").is_err() && may_checkpoint(&a1, "a1", "read").is_ok());
    }
}
