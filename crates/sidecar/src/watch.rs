//! What the results dir's watcher hands the executor: the names of files whose content
//! changed, coalesced and bounded. Reads are not changes: the sidecar's own looks open and read
//! the agent's files, and inotify reports those opens and closes too; taking them for changes
//! made every look cause the next one (a loop that burned a core and queued events without end).
//! Many changes to one file before the executor looks are one change; more distinct names than
//! [`MAX_PENDING_NAMES`] between two looks become one "look at everything" (an agent writing
//! thousands of files cannot grow the sidecar's memory).

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Distinct file names kept between two drains; beyond it the executor rescans instead.
pub const MAX_PENDING_NAMES: usize = 64;

/// What changed since the last drain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// File name → whether it was closed after writing or renamed in (complete).
    pub names: BTreeMap<String, bool>,
    /// Too many names, or names that could not be read: look at everything.
    pub overflow: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.overflow
    }
}

/// The shared end between the watcher's thread and the executor.
#[derive(Debug, Default)]
pub struct FileChanges {
    pending: Mutex<Changes>,
    ready: Notify,
}

/// How an inotify event counts: not at all (a read), a change, or a completed write.
pub fn classify(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(true),
        // Opens, reads, closes after reading and metadata (atime, chmod) change no content.
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => {
            Some(false)
        }
    }
}

impl FileChanges {
    pub fn new() -> Arc<FileChanges> {
        Arc::new(FileChanges::default())
    }

    /// From the watcher's callback: notes one event and wakes the executor.
    pub fn note(&self, ev: &notify::Event) {
        if ev.need_rescan() {
            return self.note_overflow();
        }
        let Some(complete) = classify(&ev.kind) else { return };
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for path in &ev.paths {
                note_path(&mut p, path, complete);
            }
        }
        self.ready.notify_one();
    }

    /// The watcher lost events (its queue overflowed) or failed: look at everything.
    pub fn note_overflow(&self) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).overflow = true;
        self.ready.notify_one();
    }

    /// Waits until something changed.
    pub async fn changed(&self) {
        self.ready.notified().await
    }

    /// Takes what changed since the last call.
    pub fn drain(&self) -> Changes {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn note_path(p: &mut Changes, path: &Path, complete: bool) {
    if p.overflow {
        return;
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        // Not UTF-8: never one of our task files, whose names are checked task ids.
        return;
    };
    if let Some(c) = p.names.get_mut(name) {
        *c |= complete;
        return;
    }
    if p.names.len() >= MAX_PENDING_NAMES {
        p.names.clear();
        p.overflow = true;
        return;
    }
    p.names.insert(name.to_string(), complete);
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    fn ev(kind: EventKind, name: &str) -> notify::Event {
        notify::Event::new(kind).add_path(format!("/r/{name}").into())
    }

    #[test]
    fn reads_are_not_changes() {
        let c = FileChanges::default();
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            c.note(&ev(kind, "t.progress"));
        }
        assert!(c.drain().is_empty());
    }

    #[test]
    fn changes_to_one_file_coalesce_and_completion_sticks() {
        let c = FileChanges::default();
        c.note(&ev(EventKind::Create(CreateKind::File), "t.json"));
        c.note(&ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), "t.json"));
        for _ in 0..1000 {
            c.note(&ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "t.json"));
        }
        c.note(&ev(EventKind::Remove(RemoveKind::File), "t.needs-input"));
        let got = c.drain();
        assert_eq!(
            got.names.into_iter().collect::<Vec<_>>(),
            [("t.json".into(), true), ("t.needs-input".into(), false)]
        );
        assert!(c.drain().is_empty(), "drained");
    }

    #[test]
    fn a_lost_event_queue_is_a_rescan() {
        let c = FileChanges::default();
        c.note(&notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert!(c.drain().overflow);
    }

    #[test]
    fn many_names_become_one_rescan() {
        let c = FileChanges::default();
        for i in 0..10_000 {
            c.note(&ev(EventKind::Create(CreateKind::File), &format!("f{i}")));
        }
        let got = c.drain();
        assert!(got.overflow);
        assert!(got.names.is_empty());
    }
}
