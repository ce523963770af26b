//! The WebSocket to the hub: connect, identify, ping/pong, reconnect with exponential backoff
//! and full jitter. The backoff starts again from the base only after a connection stayed
//! identified for `reconnect_healthy_ms`: a hub that accepts identify and then closes (for
//! example on a frame it refuses) is retried ever more slowly, never in a tight loop.
//! With several hubs configured, [`hubs::HubList`] picks the next one (a standby's
//! [`proto::CLOSE_NOT_LEADER`] names the leader); the backoff applies after a full round, and
//! does not grow while a standby answers (a leader is being elected).
//! Frames go to the executor; its frames come back through a per-session channel it receives
//! in [`ConnEvent::Identified`].

pub mod hubs;

use crate::config::SidecarConfig;
use futures_util::{SinkExt, StreamExt};
use proto::{AgentFrame, HubFrame, Identify};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub enum ConnEvent {
    /// Identified; frames sent on this channel go to the hub until [`ConnEvent::Lost`]. Dropping
    /// it ends the connection (a new one follows).
    Identified(mpsc::Sender<AgentFrame>),
    Frame(HubFrame),
    Lost,
}

/// Reconnect pacing: every connection that ends counts as a failure unless it stayed
/// identified for `healthy` — only then does the delay start again from the base.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    healthy: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, healthy: Duration) -> Backoff {
        Backoff { base, max, healthy, failures: 0 }
    }

    /// The delay before the next attempt, after a connection that stayed identified for
    /// `healthy_for` (`None`: it never got that far).
    pub fn next(&mut self, healthy_for: Option<Duration>) -> Duration {
        self.record(healthy_for);
        self.delay()
    }

    /// Notes how long a connection stayed identified: long enough, and the pacing starts over.
    pub fn record(&mut self, healthy_for: Option<Duration>) {
        if healthy_for.is_some_and(|d| d >= self.healthy) {
            self.failures = 0;
        }
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn delay(&mut self) -> Duration {
        let delay = backoff(self.base, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The delay while a leader is being elected (a standby answered): full jitter up to the
    /// base, not counted as a failure, so a new leader is found soon after it serves.
    pub fn election_delay(&self) -> Duration {
        backoff(self.base, self.base, 0)
    }

    /// The most the next delay can be.
    pub fn cap(&self) -> Duration {
        cap(self.base, self.max, self.failures)
    }
}

fn cap(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(max)
}

/// Full jitter: a uniform delay in `[0, min(max, base * 2^attempt)]`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = cap(base, max, attempt);
    let mut b = [0u8; 8];
    let r = getrandom::fill(&mut b).map(|_| u64::from_le_bytes(b)).unwrap_or(0);
    let ms = cap.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { r % (ms + 1) })
}

pub async fn run(
    cfg: Arc<SidecarConfig>,
    identify: watch::Receiver<Identify>,
    events: mpsc::Sender<ConnEvent>,
    shutdown: CancellationToken,
) {
    let mut pacing = Backoff::new(cfg.reconnect_base, cfg.reconnect_max, cfg.reconnect_healthy);
    let mut hubs = hubs::HubList::new(&cfg.hub_urls);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let hub_url = cfg.hub_urls[hubs.current()].as_str();
        tracing::info!(hub_url = %hub_url, "connecting to the hub");
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_HUB_FRAME_BYTES))
            .max_frame_size(Some(MAX_HUB_FRAME_BYTES));
        let connector = cfg.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(hub_url, Some(ws_config), true, connector);
        let ended = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => session(ws, &cfg, hub_url, &identify, &events, &shutdown).await,
            Ok(Err(e)) => {
                let error = e.to_string();
                let hint = if error.contains("invalid peer certificate") {
                    "set tls_ca_file to the PEM of the CA that signed the hub's certificate"
                } else {
                    ""
                };
                tracing::warn!(hub_url = %hub_url, error = %error, hint, "cannot connect to the hub");
                Ended::default()
            }
            Err(_) => {
                tracing::warn!(hub_url = %hub_url, "connecting to the hub timed out");
                Ended::default()
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        pacing.record(ended.identified_for);
        let next = hubs.after(ended.identified_for.is_some(), ended.not_leader.as_deref());
        if let Some(leader) = &next.unlisted {
            tracing::warn!(hub_url = %hub_url, leader = ?leader, "a standby hub named a leader that is not in hub_url; not following it (the token goes only to configured hubs): add it to hub_url if it is yours");
        }
        if !next.wait {
            continue;
        }
        let delay = if next.standby_answered { pacing.election_delay() } else { pacing.delay() };
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting to the hub");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The largest frame taken from the hub (a `task_assign` is far smaller).
pub const MAX_HUB_FRAME_BYTES: usize = 16 << 20;

/// How a connection ended.
#[derive(Debug, Default)]
struct Ended {
    /// How long it stayed identified, if it got that far.
    identified_for: Option<Duration>,
    /// A standby closed it with [`proto::CLOSE_NOT_LEADER`]: the leader's URL, or empty.
    not_leader: Option<String>,
}

/// One connection.
async fn session(
    mut ws: Ws,
    cfg: &SidecarConfig,
    hub_url: &str,
    identify: &watch::Receiver<Identify>,
    events: &mpsc::Sender<ConnEvent>,
    shutdown: &CancellationToken,
) -> Ended {
    // A write the socket does not take within this is a dead connection (a peer that stopped
    // reading); the pings cannot tell while a write is pending.
    let write_timeout = cfg.pong_timeout + cfg.ping_interval;
    let hello = AgentFrame::Identify(Box::new(identify.borrow().clone()));
    if !send_text(&mut ws, hello.to_text(), write_timeout).await {
        return Ended::default();
    }
    let mut not_leader = None;
    let mut identified_at = None;
    let (out_tx, mut out_rx) = mpsc::channel::<AgentFrame>(crate::executor::OUTGOING_FRAMES);
    // Handed to the executor once identified; without a copy here, the executor dropping it
    // ends the connection.
    let mut out_tx = Some(out_tx);
    let mut identified = false;
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let pong_deadline = tokio::time::sleep_until(far);
    tokio::pin!(pong_deadline);
    let mut waiting_pong = false;
    let close_with = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Frames queued before the shutdown (agent_restarting) still go out first.
                while let Ok(frame) = out_rx.try_recv() {
                    if !send_text(&mut ws, frame.to_text(), write_timeout).await {
                        break;
                    }
                }
                break Some((CloseCode::Away, "sidecar shutting down"));
            }
            frame = out_rx.recv(), if out_tx.is_none() => {
                let Some(frame) = frame else {
                    tracing::info!(hub_url = %hub_url, "the sidecar dropped the connection; connecting again");
                    break Some((CloseCode::Away, "reconnecting"));
                };
                let text = frame.to_text();
                if text.len() > proto::MAX_FRAME_BYTES {
                    // The machine never builds one; if it did, the hub would close on it.
                    tracing::error!(frame = frame.type_name(), bytes = text.len(), "not sending a frame over the hub's limit");
                    continue;
                }
                if !send_text(&mut ws, text, write_timeout).await {
                    break None;
                }
            }
            _ = ping.tick(), if identified => {
                if !send_text(&mut ws, AgentFrame::Ping.to_text(), write_timeout).await {
                    break None;
                }
                if !waiting_pong {
                    waiting_pong = true;
                    pong_deadline.as_mut().reset(tokio::time::Instant::now() + cfg.pong_timeout);
                }
            }
            _ = &mut pong_deadline, if waiting_pong => {
                tracing::warn!(timeout_ms = cfg.pong_timeout.as_millis() as u64, "no pong from the hub; reconnecting");
                break None;
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == proto::CLOSE_NOT_LEADER => {
                        let leader = f.reason.to_string();
                        tracing::info!(hub_url = %hub_url, leader = ?leader, "a standby hub: it is not the leader");
                        not_leader = Some(leader);
                        break None;
                    }
                    Some(Ok(Message::Close(f))) => {
                        tracing::info!(close = ?f, "the hub closed the connection");
                        break None;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "hub connection failed");
                        break None;
                    }
                    None => break None,
                };
                let frame = match proto::parse_hub_frame(text.as_str()) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %truncate(&e, 300), frame = %truncate(text.as_str(), 300), "ignoring a malformed frame from the hub");
                        continue;
                    }
                };
                match frame {
                    HubFrame::Identified { .. } if identified => {}
                    HubFrame::Identified { .. } => {
                        identified = true;
                        identified_at.get_or_insert_with(tokio::time::Instant::now);
                        tracing::info!(agent_id = %cfg.agent_id, hub_url = %hub_url, "identified to the hub");
                        if let Some(tx) = out_tx.take() {
                            if events.send(ConnEvent::Identified(tx)).await.is_err() {
                                break Some((CloseCode::Away, "sidecar shutting down"));
                            }
                        }
                    }
                    HubFrame::Pong { .. } => {
                        waiting_pong = false;
                        pong_deadline.as_mut().reset(far);
                    }
                    HubFrame::Error(e) if !identified => {
                        let message = truncate(e.message.as_deref().unwrap_or(""), 300);
                        tracing::error!(error = %e.error, message = %message, "the hub refused identify");
                        break None;
                    }
                    other => {
                        // Waits while the executor is behind: the socket's own buffers hold the rest.
                        if events.send(ConnEvent::Frame(other)).await.is_err() {
                            break Some((CloseCode::Away, "sidecar shutting down"));
                        }
                    }
                }
            }
        }
    };
    if let Some((code, reason)) = close_with {
        let close = ws.close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
        // Wait briefly for the hub's close reply so the close handshake completes.
        let _ = tokio::time::timeout(Duration::from_millis(500), async { while ws.next().await.is_some() {} }).await;
    }
    if identified {
        let _ = events.send(ConnEvent::Lost).await;
    }
    Ended { identified_for: identified_at.map(|at| at.elapsed()), not_leader }
}

/// One text frame, written within `timeout`.
async fn send_text(ws: &mut Ws, text: String, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, ws.send(Message::text(text))).await, Ok(Ok(())))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 0..30 {
            let cap = base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap()).min(max);
            for _ in 0..20 {
                assert!(backoff(base, max, attempt) <= cap);
            }
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, max, 5)).collect();
        assert!(samples.len() > 10, "delays are spread, not fixed");
    }

    /// A hub that identifies and then closes at once (as on a frame it refuses) is retried ever
    /// more slowly: only a connection that stayed up resets the pacing.
    #[test]
    fn backoff_resets_only_after_a_healthy_connection() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(60_000), ms(30_000));
        for _ in 0..12 {
            b.next(Some(ms(5)));
        }
        assert_eq!(b.cap(), ms(60_000));
        b.next(None);
        assert_eq!(b.cap(), ms(60_000));
        b.next(Some(ms(30_000)));
        assert_eq!(b.cap(), ms(200), "reset, then one failure");
    }
}
