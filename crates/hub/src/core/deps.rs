//! Tasks that depend on tasks, and tasks that create tasks.
//!
//! A submission may name `depends_on` (tasks that must complete first) and `parent_task_id`
//! (the task that creates it: an agent may name only the task it holds, while it holds it).
//! A task with unfinished dependencies waits in `blocked`, outside the queue; when the last of
//! them completes it is queued, and when one of them is dead-lettered or cancelled it is
//! dead-lettered with `dependency_failed: <id>`, in the same batch (so one commit). Unknown ids
//! and dependencies that can never complete are refused at submit; a new task's id is made at
//! submit, so the only cycle one could make is a task waiting for one of its own ancestors
//! (which may be waiting for it): refused too. Cancelling a task cancels its open children.
//!
//! What waits on what is kept in memory only (`Deps`), rebuilt from the blocked heads at every
//! load: the heads (`depends_on`, `parent_task_id`, `children`, `depth`) are the durable truth.

use super::{Core, SendKind};
use crate::auth::Role;
use crate::clock::Clock;
use crate::model::{TaskHead, TaskStatus};
use crate::store::{Mutation, Store};
use proto::api::{ApiError, ErrorCode};
use proto::HubFrame;
use std::collections::{HashMap, HashSet, VecDeque};

/// Who waits on whom.
#[derive(Debug, Default)]
pub(super) struct Deps {
    /// A blocked task's dependencies that have not completed yet.
    waiting: HashMap<String, HashSet<String>>,
    /// A task's dependents that were blocked on it when they registered (some may have left).
    dependents: HashMap<String, Vec<String>>,
    /// Tasks that reached a terminal status, handled one after the other (no recursion: a
    /// failure or a cancel can cascade down long chains).
    settled: VecDeque<TaskHead>,
    settling: bool,
    /// How recently finished tasks ended, newest last, so a submission that depends on one does
    /// not read the store on the core thread (a chain's next step usually names the step just
    /// completed). Cleared at every load: only what this core committed is in it.
    finished: HashMap<String, TaskStatus>,
    finished_order: VecDeque<String>,
}

/// Finished tasks remembered in [`Deps::finished`].
const FINISHED_KEPT: usize = 65_536;

impl Deps {
    fn block(&mut self, task_id: &str, pending: HashSet<String>) {
        for d in &pending {
            self.dependents.entry(d.clone()).or_default().push(task_id.to_string());
        }
        self.waiting.insert(task_id.to_string(), pending);
    }

    fn finished(&mut self, id: &str, status: TaskStatus) {
        if self.finished.insert(id.to_string(), status).is_none() {
            self.finished_order.push_back(id.to_string());
        }
        while self.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Tasks blocked now.
    #[cfg(test)]
    pub fn blocked(&self) -> usize {
        self.waiting.len()
    }
}

/// Where a submission goes: `blocked` on `pending`, or straight to the queue; and its depth.
pub(super) struct Placement {
    pub status: TaskStatus,
    pub depth: u32,
    pub pending: HashSet<String>,
}

fn refused(code: ErrorCode, msg: String) -> ApiError {
    ApiError::new(code).msg(msg)
}

impl<S: Store, C: Clock> Core<S, C> {
    /// Checks a submission's parent and dependencies and says where it goes.
    pub(super) fn place(
        &mut self,
        parent: Option<&str>,
        depends_on: &[String],
        role: &Role,
    ) -> Result<Placement, ApiError> {
        let mut depth = 0;
        let mut ancestors = HashSet::new();
        if let Some(p) = parent {
            let Some(open) = self.tasks.get(p) else {
                let why = match self.store.head(p).map_err(super::tasks::store_err)? {
                    Some(h) => {
                        format!("parent_task_id: task {p} is {}; children are created only while it is open", h.status)
                    }
                    None => format!("parent_task_id: no task {p}"),
                };
                return Err(refused(ErrorCode::InvalidState, why));
            };
            let h = &open.head;
            if let Role::Agent(me) = role {
                if !(h.status.is_held() && h.assigned_to.as_deref() == Some(me.as_str())) {
                    return Err(refused(ErrorCode::Forbidden, format!(
                        "an agent token (agent {me}) may create children only of the task it holds, while it holds it; task {p} is {} ({})",
                        h.status,
                        h.assigned_to.as_deref().map(|a| format!("held by {a}")).unwrap_or_else(|| "held by nobody".into())
                    )));
                }
                if self.spend_of(me).exhausted {
                    return Err(refused(ErrorCode::Forbidden, format!(
                        "agent {me} is over its daily budget; the children it creates count against it: try again after midnight UTC"
                    )));
                }
            }
            let max = self.limits.max_children_per_task;
            if h.children.len() >= max {
                return Err(refused(
                    ErrorCode::InvalidState,
                    format!(
                        "task {p} already has {} children, the limit (max_children_per_task = {max})",
                        h.children.len()
                    ),
                ));
            }
            depth = h.depth + 1;
            if depth > self.limits.max_task_depth {
                return Err(refused(
                    ErrorCode::InvalidState,
                    format!(
                        "a child of task {p} would be at depth {depth}, deeper than max_task_depth = {}",
                        self.limits.max_task_depth
                    ),
                ));
            }
            // Open ancestors: the new task must not wait for one (each may wait for it).
            let mut at = Some(p.to_string());
            while let Some(id) = at.take() {
                if let Some(o) = self.tasks.get(&id) {
                    at = o.head.parent_task_id.clone();
                }
                if !ancestors.insert(id) || ancestors.len() > 128 {
                    break;
                }
            }
        }
        let mut pending = HashSet::new();
        for (i, d) in depends_on.iter().enumerate() {
            if ancestors.contains(d) {
                return Err(refused(ErrorCode::ValidationFailed, format!(
                    "depends_on[{i}]: {d} is an ancestor of the new task (its parent, or a parent's parent): waiting for it would be a cycle"
                )));
            }
            if let Some(o) = self.tasks.get(d) {
                if !o.head.status.is_terminal() {
                    pending.insert(d.clone());
                }
                continue;
            }
            let known = match self.deps.finished.get(d) {
                Some(status) => Some(*status),
                None => self.store.head(d).map_err(super::tasks::store_err)?.map(|h| h.status),
            };
            match known {
                None => return Err(refused(ErrorCode::ValidationFailed, format!("depends_on[{i}]: no task {d}"))),
                Some(TaskStatus::Completed) => {}
                Some(status) => {
                    return Err(refused(
                        ErrorCode::InvalidState,
                        format!("depends_on[{i}]: task {d} is {status}; it will not complete unless it is retried"),
                    ))
                }
            }
        }
        let status = if pending.is_empty() { TaskStatus::Queued } else { TaskStatus::Blocked };
        Ok(Placement { status, depth, pending })
    }

    /// A submission was placed: its dependencies are watched and its parent lists it.
    pub(super) fn placed(&mut self, head: &TaskHead, pending: HashSet<String>) {
        if !pending.is_empty() {
            self.deps.block(&head.task_id, pending);
        }
        let Some(p) = head.parent_task_id.as_deref() else { return };
        if let Some(parent) = self.tasks.get_mut(p) {
            parent.head.children.push(head.task_id.clone());
            self.pending.push(Mutation::PutHead(Box::new(parent.head.clone())));
        }
    }

    /// Where a retried task goes: back to `blocked` if some dependency is open again, refused if
    /// one failed (retry that one first).
    pub(super) fn retry_placement(&mut self, head: &TaskHead) -> Result<Placement, ApiError> {
        let mut p = self.place(None, &head.depends_on, &Role::Admin)?;
        p.depth = head.depth;
        Ok(p)
    }

    /// Called by `transition` when a task reached a terminal status (it has left `tasks`).
    pub(super) fn settled(&mut self, head: TaskHead) {
        self.deps.settled.push_back(head);
        if self.deps.settling {
            return;
        }
        self.deps.settling = true;
        while let Some(h) = self.deps.settled.pop_front() {
            self.settle(h);
        }
        self.deps.settling = false;
    }

    fn settle(&mut self, head: TaskHead) {
        let id = head.task_id.as_str();
        self.deps.finished(id, head.status);
        self.deps.waiting.remove(id);
        for d in self.deps.dependents.remove(id).unwrap_or_default() {
            let blocked = self.tasks.get(&d).is_some_and(|o| o.head.status == TaskStatus::Blocked);
            if !blocked {
                self.deps.waiting.remove(&d);
                continue;
            }
            if head.status == TaskStatus::Completed {
                let Some(left) = self.deps.waiting.get_mut(&d) else { continue };
                left.remove(id);
                if left.is_empty() {
                    self.deps.waiting.remove(&d);
                    self.transition(&d, TaskStatus::Queued, format!("dependencies completed (the last: {id})"), |_| {});
                }
            } else {
                self.deps.waiting.remove(&d);
                let why = format!("dependency_failed: {id}");
                let reason = format!("{why} (it is {})", head.status);
                self.transition(&d, TaskStatus::DeadLetter, reason, |t| t.last_error = Some(why));
            }
        }
        if head.status == TaskStatus::Cancelled {
            for child in &head.children {
                if self.tasks.contains_key(child) {
                    self.cancel_open(child, format!("cancelled with its parent {id}"));
                }
            }
        }
    }

    /// Cancels an open task and tells its holder, if any.
    pub(super) fn cancel_open(&mut self, id: &str, reason: String) {
        let Some(head) = self.tasks.get(id).map(|o| &o.head) else { return };
        let holder = if head.status.is_held() { head.assigned_to.clone() } else { None };
        self.transition(id, TaskStatus::Cancelled, reason, |_| {});
        if let Some(conn) = holder.and_then(|h| self.agents.get(&h)).and_then(|a| a.conn) {
            let frame = HubFrame::TaskCancelled { task_id: id.to_string(), timestamp: self.now.wall_ms, reason: None };
            self.send(conn, frame, SendKind::Push { dispatch_started: None });
        }
    }

    /// After a load: who waits on whom again, from the blocked heads. A blocked task whose
    /// dependencies all finished meanwhile (only possible if a batch was cut between the two) is
    /// moved on now.
    pub(super) fn rebuild_deps(&mut self) {
        self.deps = Deps::default();
        let blocked: Vec<TaskHead> =
            self.tasks.values().filter(|o| o.head.status == TaskStatus::Blocked).map(|o| o.head.clone()).collect();
        for head in blocked {
            let mut pending = HashSet::new();
            let mut failed = None;
            for d in &head.depends_on {
                if self.tasks.contains_key(d) {
                    pending.insert(d.clone());
                    continue;
                }
                match self.store.head(d) {
                    Ok(Some(h)) if h.status == TaskStatus::Completed => {}
                    Ok(Some(h)) => failed = failed.or(Some((d.clone(), h.status.to_string()))),
                    Ok(None) => failed = failed.or(Some((d.clone(), "gone".to_string()))),
                    // Read again at the next load; meanwhile it waits for what it knows.
                    Err(e) => tracing::error!(task_id = %head.task_id, error = %e, "cannot read a dependency"),
                }
            }
            if let Some((d, status)) = failed {
                let why = format!("dependency_failed: {d}");
                let reason = format!("{why} (it is {status})");
                self.transition(&head.task_id, TaskStatus::DeadLetter, reason, |t| t.last_error = Some(why));
            } else if pending.is_empty() {
                self.transition(&head.task_id, TaskStatus::Queued, "dependencies completed".into(), |_| {});
            } else {
                self.deps.block(&head.task_id, pending);
            }
        }
    }
}
