//! Tasks that depend on tasks: a submission's `parent_task_id` (the task that created it, set
//! by an agent's `submit_task`) and `depends_on` (tasks that must complete first), read once
//! here, and how a parent's page lists its children.

use super::*;

/// Most tasks one submission may depend on.
pub const MAX_DEPENDS_ON: usize = 100;

/// A submission's place among other tasks, as read from its JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Family {
    pub parent_task_id: Option<String>,
    pub depends_on: Vec<String>,
}

/// Reads `parent_task_id` and `depends_on` out of a submission, adding every problem to
/// `errors`: task ids as the hub makes them, at most [`MAX_DEPENDS_ON`] of them, none twice.
pub fn read_family(m: &mut Map<String, Value>, errors: &mut Vec<String>) -> Family {
    let parent_task_id = fields::optional_id(m, errors, "parent_task_id", crate::check_task_id, "task_id");
    let depends_on = match m.remove("depends_on") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_DEPENDS_ON => {
            let mut ids: Vec<String> = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(id) => match crate::check_task_id(&id) {
                        Ok(()) if ids.contains(&id) => errors.push(format!("depends_on[{i}]: {id} is listed twice")),
                        Ok(()) => ids.push(id),
                        Err(e) => errors.push(e.replacen("task_id", &format!("depends_on[{i}]"), 1)),
                    },
                    _ => errors.push(format!("depends_on[{i}]: expected a task id (string)")),
                }
            }
            ids
        }
        Some(_) => {
            errors.push(format!("depends_on: expected an array of at most {MAX_DEPENDS_ON} task ids"));
            Vec::new()
        }
    };
    Family { parent_task_id, depends_on }
}

/// A child of a task, as its parent's page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildTask {
    pub task_id: String,
    pub status: TaskStatus,
    /// The start of its description (at most [`CHILD_DESCRIPTION`] characters).
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its own children, and theirs: the tree, down to [`CHILDREN_SHOWN`] tasks in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildTask>,
}

/// Characters of a child's description its parent's page shows.
pub const CHILD_DESCRIPTION: usize = 200;
/// Tasks of the tree below a task that its page shows at most (its children first).
pub const CHILDREN_SHOWN: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> (Family, Vec<String>) {
        let Value::Object(mut m) = v else { unreachable!() };
        let mut errors = Vec::new();
        let f = read_family(&mut m, &mut errors);
        (f, errors)
    }

    #[test]
    fn parents_and_dependencies_are_task_ids_bounded_and_unique() {
        let (f, e) = read(json!({"parent_task_id": "task-1", "depends_on": ["task-2", "task-3"]}));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(f.parent_task_id.as_deref(), Some("task-1"));
        assert_eq!(f.depends_on, ["task-2", "task-3"]);
        assert_eq!(read(json!({})).0, Family::default());
        let (_, e) = read(json!({"parent_task_id": "../x", "depends_on": ["a", "a", 5, "/etc"]}));
        assert!(e[0].starts_with("parent_task_id: must be"), "{e:?}");
        assert_eq!(e[1], "depends_on[1]: a is listed twice");
        assert_eq!(e[2], "depends_on[2]: expected a task id (string)");
        assert!(e[3].starts_with("depends_on[3]: must be"), "{e:?}");
        let many: Vec<String> = (0..=MAX_DEPENDS_ON).map(|i| format!("t{i}")).collect();
        let (_, e) = read(json!({"depends_on": many, "parent_task_id": 3}));
        assert_eq!(e, ["parent_task_id: expected string", "depends_on: expected an array of at most 100 task ids"]);
    }
}
