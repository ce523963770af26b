//! The queue of tasks waiting for an agent, grouped by what an agent needs to take them (their
//! capabilities and pin). Dispatch looks at each group once per batch, so a backlog no idle
//! agent can take (a capability nobody has, a pin to an offline agent) costs nothing, however long.

use crate::model::{Priority, TaskHead};
use std::collections::{BTreeSet, HashMap};

/// Tasks of one class are interchangeable for matching: any agent that can take one can take all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Class {
    /// Sorted, without repeats.
    pub caps: Vec<String>,
    pub pin: Option<String>,
}

impl Class {
    pub fn of(head: &TaskHead) -> Class {
        let mut caps = head.needed_capabilities.clone();
        caps.sort();
        caps.dedup();
        Class { caps, pin: head.assign_to.clone() }
    }
}

/// Dispatch order within and across classes: lane, then submission order.
pub(super) type Entry = (Priority, i64, String);

#[derive(Debug, Default)]
pub(super) struct Queue {
    classes: HashMap<Class, BTreeSet<Entry>>,
    len: usize,
    /// Per serial key, the submission order of its queued tasks: only the first may go.
    serial: HashMap<String, BTreeSet<i64>>,
}

impl Queue {
    fn entry(head: &TaskHead) -> Entry {
        (head.priority, head.seq, head.task_id.clone())
    }

    pub fn insert(&mut self, head: &TaskHead) {
        if self.classes.entry(Class::of(head)).or_default().insert(Self::entry(head)) {
            self.len += 1;
        }
        if let Some(k) = &head.serial_key {
            self.serial.entry(k.clone()).or_default().insert(head.seq);
        }
    }

    /// The queued task of `key` submitted first (the only one of the key that may go).
    pub fn serial_head(&self, key: &str) -> Option<i64> {
        self.serial.get(key).and_then(|s| s.first().copied())
    }

    pub fn remove(&mut self, head: &TaskHead) {
        let class = Class::of(head);
        if let Some(set) = self.classes.get_mut(&class) {
            if set.remove(&Self::entry(head)) {
                self.len -= 1;
            }
            if set.is_empty() {
                self.classes.remove(&class);
            }
        }
        if let Some(k) = &head.serial_key {
            if let Some(s) = self.serial.get_mut(k) {
                s.remove(&head.seq);
                if s.is_empty() {
                    self.serial.remove(k);
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.classes.clear();
        self.serial.clear();
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn classes(&self) -> impl Iterator<Item = (&Class, &BTreeSet<Entry>)> {
        self.classes.iter()
    }
}
