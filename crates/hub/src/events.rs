//! The event bus: the core publishes what happened (only once it is durable), readers of
//! `GET /api/events` and the webhook sender follow it. A bounded window of recent events lets a
//! reader resume with `Last-Event-ID`; a reader that falls behind the bounded channel is dropped
//! with a reason, so no reader can slow the core (publishing never waits).

use proto::api::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Who may see an event: the admin always, and these agents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    pub fn of<I: IntoIterator<Item = Option<String>>>(agents: I) -> Audience {
        let mut v: Vec<String> = agents.into_iter().flatten().filter(|a| a != proto::api::ADMIN_NAME).collect();
        v.sort();
        v.dedup();
        Audience(v)
    }
    pub fn includes(&self, agent_id: &str) -> bool {
        self.0.iter().any(|a| a == agent_id)
    }
}

/// One event as sent: serialized once, whatever the number of readers.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub id: String,
    pub name: &'static str,
    pub json: Arc<str>,
    pub audience: Audience,
    pub event: Event,
}

pub struct EventBus {
    /// Distinguishes this hub run: ids from an earlier run cannot be resumed.
    epoch: u64,
    next: AtomicU64,
    window: usize,
    ring: Mutex<VecDeque<Arc<Published>>>,
    tx: broadcast::Sender<Arc<Published>>,
    pub readers: AtomicU64,
    pub dropped: AtomicU64,
    /// A follower that must not lose what it wants to a flood of other events (webhooks).
    tap: std::sync::OnceLock<Tap>,
}

struct Tap {
    wants: fn(&EventKind) -> bool,
    tx: tokio::sync::mpsc::Sender<Arc<Published>>,
    dropped: AtomicU64,
}

/// What a new reader gets: what it missed (from the window), then the live channel.
pub struct Subscription {
    pub resync: Option<String>,
    pub backlog: Vec<Arc<Published>>,
    pub live: broadcast::Receiver<Arc<Published>>,
}

impl EventBus {
    /// `window` recent events kept for resuming; `capacity` events a reader may lag behind.
    pub fn new(epoch: u64, window: usize, capacity: usize) -> Arc<EventBus> {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Arc::new(EventBus {
            epoch,
            next: AtomicU64::new(1),
            window: window.max(1),
            ring: Mutex::new(VecDeque::new()),
            tx,
            readers: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tap: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Published>>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one event; never waits.
    pub fn publish(&self, at: u64, kind: EventKind, audience: Audience) {
        let mut ring = self.lock();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", self.epoch);
        let name = kind.name();
        let event = Event { id: id.clone(), at, kind };
        let json: Arc<str> = serde_json::to_string(&event).expect("events serialize").into();
        let p = Arc::new(Published { seq, id, name, json, audience, event });
        if ring.len() == self.window {
            ring.pop_front();
        }
        ring.push_back(p.clone());
        // Under the lock, so a subscriber sees each event exactly once: in its backlog or live.
        let _ = self.tx.send(p.clone());
        drop(ring);
        if let Some(tap) = self.tap.get().filter(|t| (t.wants)(&p.event.kind)) {
            if tap.tx.try_send(p).is_err() {
                let n = tap.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(dropped = n, "the webhook follower is behind; events dropped for it");
                }
            }
        }
    }

    /// The events `wants` picks, on a channel of their own of `capacity` (one tap per bus):
    /// a flood of other events (progress lines) cannot push them out, as it can a reader's.
    pub fn tap(&self, wants: fn(&EventKind) -> bool, capacity: usize) -> tokio::sync::mpsc::Receiver<Arc<Published>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        if self.tap.set(Tap { wants, tx, dropped: AtomicU64::new(0) }).is_err() {
            tracing::error!("the event bus has a tap already; the new one gets nothing");
        }
        rx
    }

    /// The id of the latest event published (`<run>-0` before the first): a page rendered after
    /// reading it resumes from it and misses nothing that happened since.
    pub fn last_id(&self) -> String {
        format!("{}-{}", self.epoch, self.next.load(Ordering::Relaxed).saturating_sub(1))
    }

    /// Subscribes after `last_id` (or from now when none is given).
    pub fn subscribe(&self, last_id: Option<&str>) -> Subscription {
        let ring = self.lock();
        let live = self.tx.subscribe();
        let Some(last) = last_id else { return Subscription { resync: None, backlog: Vec::new(), live } };
        let parsed = last.split_once('-').and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
        let oldest = ring.front().map(|p| p.seq).unwrap_or(self.next.load(Ordering::Relaxed));
        let (resync, from) = match parsed {
            Some((epoch, seq)) if epoch == self.epoch && seq.saturating_add(1) >= oldest => {
                (None, seq.saturating_add(1))
            }
            Some((epoch, _)) if epoch == self.epoch => {
                (Some(format!("event {last} is older than the {} events this hub keeps", self.window)), oldest)
            }
            Some(_) => (Some(format!("event {last} is from an earlier run of the hub")), oldest),
            None => (Some(format!("{last:?} is not an event id of this hub")), oldest),
        };
        // Sequences in the ring are consecutive: the backlog starts at a computed index, so
        // subscribing costs what it hands over, not the whole window.
        let skip = usize::try_from(from.saturating_sub(oldest)).unwrap_or(usize::MAX).min(ring.len());
        let backlog = ring.range(skip..).cloned().collect();
        Subscription { resync, backlog, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::AgentStatus;

    fn agent(id: &str) -> EventKind {
        EventKind::Agent { agent_id: id.into(), status: AgentStatus::Idle, connected: true }
    }

    #[test]
    fn resume_within_the_window_has_no_gap_and_beyond_it_says_so() {
        let bus = EventBus::new(7, 3, 16);
        for i in 0..5 {
            bus.publish(i, agent(&format!("a{i}")), Audience::default());
        }
        assert_eq!(bus.last_id(), "7-5");
        let s = bus.subscribe(Some("7-3"));
        assert_eq!((s.resync, s.backlog.iter().map(|p| p.id.as_str()).collect::<Vec<_>>()), (None, vec!["7-4", "7-5"]));
        let s = bus.subscribe(Some("7-1"));
        assert!(s.resync.unwrap().contains("older than the 3 events"));
        assert_eq!(s.backlog.len(), 3);
        assert!(bus.subscribe(Some("6-4")).resync.unwrap().contains("earlier run"));
        assert!(bus.subscribe(Some("garbage")).resync.is_some());
        let future = bus.subscribe(Some("7-18446744073709551615"));
        assert_eq!((future.resync, future.backlog.len()), (None, 0), "an id from the future: nothing yet");
        let mut live = bus.subscribe(None).live;
        bus.publish(9, agent("x"), Audience::of([Some("x".to_string()), Some("admin".into())]));
        let p = live.try_recv().unwrap();
        assert_eq!((p.id.as_str(), p.audience.0.as_slice()), ("7-6", ["x".to_string()].as_slice()));
        assert!(p.json.contains("\"type\":\"agent\""));
    }

    #[test]
    fn a_reader_that_falls_behind_sees_that_it_lagged() {
        let bus = EventBus::new(1, 100, 16);
        let mut live = bus.subscribe(None).live;
        for i in 0..40 {
            bus.publish(i, agent("a"), Audience::default());
        }
        assert!(matches!(live.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
    }

    #[test]
    fn the_tap_keeps_what_it_wants_through_a_flood_that_laps_the_readers() {
        let bus = EventBus::new(1, 100, 16);
        let wants: fn(&EventKind) -> bool = |k| matches!(k, EventKind::BudgetExhausted { .. });
        let mut tap = bus.tap(wants, 4);
        let progress = || EventKind::Progress {
            task_id: "t".into(),
            agent_id: "a".into(),
            generation: 1,
            progress: serde_json::json!({}),
            text: "{}".into(),
        };
        let exhausted = || EventKind::BudgetExhausted { agent_id: None, spend: Default::default() };
        for i in 0..1000 {
            bus.publish(i, if i % 100 == 0 { exhausted() } else { progress() }, Audience::default());
        }
        let mut got = 0;
        while let Ok(p) = tap.try_recv() {
            assert_eq!(p.name, "budget_exhausted");
            got += 1;
        }
        assert_eq!(got, 4, "the tap's own bound: the first 4 of 10, and the rest counted");
        assert_eq!(bus.tap.get().unwrap().dropped.load(Ordering::Relaxed), 6);
    }
}
