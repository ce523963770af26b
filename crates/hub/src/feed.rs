//! `GET /api/events` (Server-Sent Events over the [`EventBus`](crate::events::EventBus)) and the
//! usage report's shaping. A reader gets what it missed (within the window), then live events;
//! the admin sees everything, an agent token what concerns its own tasks and itself. A reader
//! that falls behind is told why and disconnected; hub shutdown ends every stream.

use crate::auth::Role;
use crate::events::Published;
use crate::http::AppState;
use crate::server::ConnTicket;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use proto::api::{ApiError, ErrorCode, Event, EventKind, FollowEvents, UsageBy, UsageReport, UsageRow};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Slots for readers of the stream: `max_event_readers` in all, and a share per agent so one
/// agent token cannot take them all (the admin's dashboard included).
pub struct ReaderSlots {
    all: Arc<tokio::sync::Semaphore>,
    per_agent: usize,
    agents: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// A reader's slot, given back when the stream ends.
pub struct ReaderSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    agent: Option<(Arc<ReaderSlots>, String)>,
}

impl ReaderSlots {
    pub fn new(max: usize) -> Arc<ReaderSlots> {
        Arc::new(ReaderSlots {
            all: Arc::new(tokio::sync::Semaphore::new(max)),
            per_agent: (max / 4).clamp(1, 16),
            agents: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn take(self: &Arc<Self>, role: &Role) -> Result<ReaderSlot, ApiError> {
        let Ok(permit) = self.all.clone().try_acquire_owned() else {
            return Err(
                ApiError::new(ErrorCode::Overloaded).msg("too many event readers (max_event_readers); try again later")
            );
        };
        let Role::Agent(me) = role else { return Ok(ReaderSlot { _permit: permit, agent: None }) };
        let mut agents = self.lock();
        let held = agents.entry(me.clone()).or_default();
        if *held >= self.per_agent {
            return Err(ApiError::new(ErrorCode::Overloaded).msg(format!(
                "agent {me} reads the event stream {} times already, the most one agent may",
                self.per_agent
            )));
        }
        *held += 1;
        Ok(ReaderSlot { _permit: permit, agent: Some((self.clone(), me.clone())) })
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let Some((slots, agent)) = self.agent.take() else { return };
        let mut agents = slots.lock();
        if let Some(held) = agents.get_mut(&agent) {
            *held -= 1;
            if *held == 0 {
                agents.remove(&agent);
            }
        }
    }
}

/// One reader's state between two events.
struct Reader {
    resync: Option<String>,
    backlog: VecDeque<Arc<Published>>,
    live: tokio::sync::broadcast::Receiver<Arc<Published>>,
    /// `None` for the admin; an agent sees only what names it.
    agent: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
    done: bool,
    bus: Arc<crate::events::EventBus>,
    /// Held for the stream's life: the reader's slot, and its connection kept from eviction.
    _slot: ReaderSlot,
    _busy: Option<crate::server::BusyGuard>,
}

impl Reader {
    fn visible(&self, p: &Published) -> bool {
        self.agent.as_ref().is_none_or(|a| p.audience.includes(a))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.bus.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Appends one event in the `text/event-stream` format. Its JSON is one line (serde_json's
/// compact form escapes every newline), so it is one `data:` field.
fn sse(out: &mut Vec<u8>, p: &Published) {
    for part in ["id: ", &p.id, "\nevent: ", p.name, "\ndata: ", &p.json, "\n\n"] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// An event that is not part of the stream's history (no id: resuming skips it).
fn notice(kind: EventKind) -> Bytes {
    let name = kind.name();
    let event = Event { id: String::new(), at: crate::clock::wall_ms(), kind };
    let json = serde_json::to_string(&event).expect("events serialize");
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// Events sent in one write when they are ready together: under load a reader's events go out
/// in a few large writes instead of one each.
const BATCH_BYTES: usize = 64 * 1024;
/// A comment sent on a quiet stream, so proxies and clients see that it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ticket: Option<Extension<ConnTicket>>,
    q: Result<Query<FollowEvents>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return crate::http::error(ApiError::new(ErrorCode::InvalidQuery).msg(e.body_text())),
    };
    let role = match crate::http::role(&s, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let slot = match s.event_readers.take(&role) {
        Ok(slot) => slot,
        Err(e) => return crate::http::error(e),
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).or(q.last_event_id);
    if last.as_ref().is_some_and(|l| l.len() > 64) {
        return crate::http::error(
            ApiError::new(ErrorCode::InvalidQuery).msg("last_event_id: longer than 64 characters"),
        );
    }
    let sub = s.bus.subscribe(last.as_deref());
    s.bus.readers.fetch_add(1, Ordering::Relaxed);
    let reader = Reader {
        resync: sub.resync,
        backlog: sub.backlog.into(),
        live: sub.live,
        agent: match role {
            Role::Admin => None,
            Role::Agent(a) => Some(a),
        },
        shutdown: s.shutdown.clone(),
        done: false,
        bus: s.bus.clone(),
        _slot: slot,
        _busy: ticket.map(|Extension(t)| t.0.busy()),
    };
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        if r.done {
            return None;
        }
        if let Some(reason) = r.resync.take() {
            return Some((Ok::<_, Infallible>(notice(EventKind::Resync { reason })), r));
        }
        let mut out = Vec::new();
        while out.len() < BATCH_BYTES {
            let Some(p) = r.backlog.pop_front() else { break };
            if r.visible(&p) {
                sse(&mut out, &p);
            }
        }
        if !out.is_empty() {
            return Some((Ok(Bytes::from(out)), r));
        }
        // Wait for the next event, then take every one ready behind it; until one is for this reader.
        let quiet_until = tokio::time::Instant::now() + KEEP_ALIVE;
        while out.is_empty() && !r.done {
            let mut next = tokio::select! {
                _ = r.shutdown.cancelled() => return None,
                next = r.live.recv() => next,
                _ = tokio::time::sleep_until(quiet_until) => return Some((Ok(Bytes::from_static(b":\n\n")), r)),
            };
            loop {
                match next {
                    Ok(p) => {
                        if r.visible(&p) {
                            sse(&mut out, &p);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        r.done = true;
                        r.bus.dropped.fetch_add(1, Ordering::Relaxed);
                        let reason = format!(
                        "this reader fell {missed} events behind (event_reader_buffer); reconnect with Last-Event-ID"
                    );
                        out.extend_from_slice(&notice(EventKind::Dropped { reason }));
                        break;
                    }
                    Err(RecvError::Closed) => {
                        r.done = true;
                        break;
                    }
                }
                if out.len() >= BATCH_BYTES {
                    break;
                }
                next = match r.live.try_recv() {
                    Ok(p) => Ok(p),
                    Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Err(TryRecvError::Empty) => break,
                };
            }
        }
        if out.is_empty() {
            return None;
        }
        Some((Ok(Bytes::from(out)), r))
    });
    let headers =
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")];
    (headers, axum::body::Body::from_stream(stream)).into_response()
}

/// The event stream's gauges for `/metrics`.
pub fn render_metrics(s: &AppState, out: &mut String) {
    use crate::metrics::{sample, Kind};
    let readers = s.bus.readers.load(Ordering::Relaxed);
    let dropped = s.bus.dropped.load(Ordering::Relaxed);
    sample(out, "agentcom_event_readers", Kind::Gauge, "Readers of the event stream.", readers);
    let help = "Readers dropped for falling behind.";
    sample(out, "agentcom_event_readers_dropped_total", Kind::Counter, help, dropped);
}

pub use human::{format_day, parse_day};

pub fn usage_report(by: UsageBy, since: u64, until: u64, rows: Vec<UsageRow>) -> UsageReport {
    let mut total = UsageRow::default();
    for r in &rows {
        total.reports += r.reports;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.total_tokens += r.total_tokens;
        total.cost_usd += r.cost_usd;
    }
    UsageReport { by, since: format_day(since), until: format_day(until), rows, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_cannot_take_every_reader_slot() {
        let slots = ReaderSlots::new(8); // 2 per agent
        let a = Role::Agent("a".into());
        let held: Vec<ReaderSlot> = (0..2).map(|_| slots.take(&a).unwrap()).collect();
        let e = slots.take(&a).err().unwrap();
        assert_eq!(e.error, ErrorCode::Overloaded);
        assert!(e.message.unwrap().contains("agent a reads the event stream 2 times"));
        let others: Vec<ReaderSlot> =
            [Role::Admin, Role::Agent("b".into())].iter().map(|r| slots.take(r).unwrap()).collect();
        drop(held);
        assert!(!slots.lock().contains_key("a"), "a's count is gone with its streams");
        let _again = slots.take(&a).unwrap();
        drop(others);
        // The total still holds: 8 in all.
        let admins: Vec<ReaderSlot> = (0..7).map(|_| slots.take(&Role::Admin).unwrap()).collect();
        assert!(slots.take(&Role::Admin).is_err());
        drop(admins);
    }

    #[test]
    fn days_parse_and_format_both_ways() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-11-22"), Some(20_779));
        for d in [0, 59, 10_000, 20_779, 100_000] {
            assert_eq!(parse_day(&format_day(d)), Some(d));
        }
        for bad in ["2026-02-30", "2026-13-01", "26-11-22", "2026-1-22", "1969-12-31", "2026/11/22", "２０２６-11-22"]
        {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
    }
}
