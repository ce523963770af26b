//! One task per WebSocket connection: frame limits, parsing and validation, violation counting,
//! heartbeat eviction. Everything else is the core's business.

use crate::config::Timings;
use crate::core::{ConnId, CoreHandle, Event, Out, OUT_CAPACITY};
use crate::server::ConnTicket;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use proto::{AgentFrame, ErrorFrame, FrameErrorCode, HubFrame};
use std::collections::VecDeque;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// What one socket task is given.
pub struct WsConn {
    pub conn: ConnId,
    pub core: CoreHandle,
    /// The hub's role: when it stops leading (this `term`), the socket is sent to the new leader.
    pub role: crate::ha::RoleRx,
    pub term: u64,
    pub timings: Timings,
    /// How long the socket may stay without a successful identify.
    pub identify_timeout: std::time::Duration,
    pub shutdown: CancellationToken,
    /// The connection's slot in the hub's limits, when served by [`crate::server`].
    pub ticket: Option<ConnTicket>,
}

pub async fn serve(mut socket: WebSocket, w: WsConn) {
    let WsConn { conn, core, mut role, term, timings: t, identify_timeout, shutdown, ticket } = w;
    let (tx, mut rx) = tokio::sync::mpsc::channel(OUT_CAPACITY);
    core.send(Event::Connected { conn, tx }).await;
    let mut state = ConnState { identify_sent: false, identified: false, violations: VecDeque::new() };
    let idle = tokio::time::sleep(t.heartbeat_timeout);
    tokio::pin!(idle);
    let identify_deadline = tokio::time::sleep(identify_timeout);
    tokio::pin!(identify_deadline);
    let evicted = ticket.as_ref().map(|t| t.0.evicted().clone()).unwrap_or_default();
    let close: Option<(u16, String)> = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "hub shutting down".into())),
            changed = role.changed() => {
                if matches!(&*role.borrow_and_update(), crate::ha::Role::Leader(s) if s.term == term && changed.is_ok()) {
                    continue;
                }
                break Some((proto::CLOSE_NOT_LEADER, leader_ws(&role)));
            }
            _ = evicted.cancelled() => break Some((CLOSE_TRY_AGAIN, "hub busy; reconnect and identify promptly".into())),
            _ = &mut identify_deadline, if !state.identified => {
                break Some((CLOSE_POLICY, format!("no identify within {} ms", identify_timeout.as_millis())));
            }
            _ = &mut idle => {
                tracing::info!(conn, "no frame within the heartbeat timeout; evicting");
                break Some((CLOSE_GOING_AWAY, "heartbeat timeout".into()));
            }
            out = rx.recv() => match out {
                Some(Out::Frame(f)) => {
                    if socket.send(Message::text(f.to_text())).await.is_err() {
                        break None;
                    }
                }
                Some(Out::Identified(_)) => {
                    state.identified = true;
                    if let Some(t) = &ticket {
                        t.0.identified();
                    }
                }
                Some(Out::IdentifyFailed) => {
                    state.identify_sent = state.identified;
                    if state.violation(&t) {
                        core.send(Event::Banned { conn }).await;
                        break Some((CLOSE_POLICY, "too many protocol violations".into()));
                    }
                }
                Some(Out::Close(code, reason)) => break Some((code, reason)),
                // The core stops only when another hub fenced it off, and that can come before
                // the role changes here: the agent is sent to the leader, not dropped.
                None if shutdown.is_cancelled() => break Some((CLOSE_GOING_AWAY, "hub shutting down".into())),
                None => break Some((proto::CLOSE_NOT_LEADER, leader_ws(&role))),
            },
            msg = socket.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + t.heartbeat_timeout);
                let reply = match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => break too_big(e).then(|| (CLOSE_TOO_BIG, format!("frame larger than {} bytes", proto::MAX_FRAME_BYTES))),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => Some(HubFrame::Error(ErrorFrame::new(FrameErrorCode::InvalidJson).message("binary frames are not supported; send JSON text frames"))),
                    Some(Ok(Message::Text(text))) => match proto::parse_agent_frame(text.as_str()) {
                        Ok(frame) => {
                            if matches!(frame, AgentFrame::Identify(_)) {
                                state.identify_sent = true;
                                core.send(Event::Frame { conn, frame }).await;
                                None
                            } else if !state.identify_sent {
                                Some(HubFrame::Error(ErrorFrame::new(FrameErrorCode::NotIdentified)))
                            } else {
                                core.send(Event::Frame { conn, frame }).await;
                                None
                            }
                        }
                        Err(e) => Some(e.to_frame()),
                    },
                };
                if let Some(err) = reply {
                    tracing::debug!(conn, frame = %err.to_text(), "refused frame");
                    if socket.send(Message::text(err.to_text())).await.is_err() {
                        break None;
                    }
                    if state.violation(&t) {
                        core.send(Event::Banned { conn }).await;
                        break Some((CLOSE_POLICY, "too many protocol violations".into()));
                    }
                }
            }
        }
    };
    core.send(Event::Disconnected { conn }).await;
    if let Some((code, reason)) = close {
        let frame = CloseFrame { code, reason: reason.into() };
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            if code == CLOSE_TOO_BIG {
                // Reading on would make tungstenite buffer the oversized payload: only give the
                // peer a moment to read our close frame before the socket is dropped.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            } else {
                linger(&mut socket).await;
            }
        }
    }
}

/// The leader's WebSocket URL as this hub knows it (empty when it does not).
fn leader_ws(role: &crate::ha::RoleRx) -> String {
    match &*role.borrow() {
        crate::ha::Role::Standby { leader: Some(l) } => l.ws_url.clone(),
        _ => String::new(),
    }
}

/// A standby's answer to an agent: close with [`proto::CLOSE_NOT_LEADER`] naming the leader's
/// WebSocket URL (empty when none is known yet).
pub async fn redirect(mut socket: WebSocket, leader_ws: String) {
    let frame = CloseFrame { code: proto::CLOSE_NOT_LEADER, reason: leader_ws.into() };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        linger(&mut socket).await;
    }
}

/// After our close frame, reads (and discards) what the peer still sends, until its close
/// reply or a short limit. Dropping a socket with unread input makes the kernel send a reset,
/// which can destroy our close frame before the peer reads it. Frames stay size-limited here.
async fn linger(socket: &mut WebSocket) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    let mut errors = 0;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, socket.recv()).await {
        match msg {
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(_) => {
                errors += 1;
                if errors > 8 {
                    break;
                }
            }
        }
    }
}

struct ConnState {
    identify_sent: bool,
    identified: bool,
    violations: VecDeque<Instant>,
}

impl ConnState {
    /// Records a violation; true when the limit within the window is reached.
    fn violation(&mut self, t: &Timings) -> bool {
        let now = Instant::now();
        while self.violations.front().is_some_and(|v| now.duration_since(*v) > t.violation_window) {
            self.violations.pop_front();
        }
        self.violations.push_back(now);
        self.violations.len() >= t.violation_limit as usize
    }
}

fn too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(_)))
}
