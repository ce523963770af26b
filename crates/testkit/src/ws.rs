//! WebSockets that speak exactly AgentCom v1 frames: an agent ([`WsAgent`]) and a scripted hub.

use crate::*;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks exactly AgentCom v1 frames (with `protocol_version: 1`).
pub struct WsAgent {
    ws: Ws,
    pub agent_id: String,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    /// The TCP stream ended without a close frame.
    Dropped,
}

impl WsAgent {
    pub async fn connect(url: &str) -> Result<WsAgent> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("connect {url}"))?;
        Ok(WsAgent { ws, agent_id: String::new() })
    }

    /// Connects and identifies the way an AgentCom v1 sidecar does; expects `identified`.
    pub async fn identify(url: &str, agent_id: &str, token: &str, caps: &[&str]) -> Result<WsAgent> {
        let mut a = WsAgent::connect(url).await?;
        a.agent_id = agent_id.to_string();
        a.send(json!({
            "type": "identify", "agent_id": agent_id, "token": token, "name": agent_id,
            "status": "idle", "capabilities": caps, "client_type": "sidecar",
        }))
        .await?;
        let v = a.recv().await?;
        if v["type"] != "identified" {
            bail!("expected identified, got {v}");
        }
        Ok(a)
    }

    /// Sends a frame, adding `protocol_version: 1` as the v1 sidecar does.
    pub async fn send(&mut self, mut v: Value) -> Result<()> {
        v["protocol_version"] = json!(1);
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await.context("send frame")
    }

    /// The next text frame, within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {limit:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// The next frame, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Result<Value> {
        let v = self.recv().await?;
        if v["type"] != ty {
            bail!("expected {ty}, got {v}");
        }
        Ok(v)
    }

    /// Reads until the connection closes; returns how.
    pub async fn closed(&mut self) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("not closed within {WAIT:?}"))?;
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return Ok(Closed::Code(u16::from(f.code), f.reason.to_string())),
                Some(Ok(Message::Close(None))) => return Ok(Closed::Code(u16::from(CloseCode::Status), String::new())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Closed::Dropped),
            }
        }
    }

    /// Accepts the next `task_assign`; returns (task_id, generation).
    pub async fn take_task(&mut self) -> Result<(String, u64)> {
        let a = self.expect("task_assign").await?;
        let id = a["task_id"].as_str().context("task_id")?.to_string();
        let generation = a["generation"].as_u64().context("generation")?;
        self.send(json!({ "type": "task_accepted", "task_id": id })).await?;
        let ack = self.expect("task_ack").await?;
        if ack["status"] != "accepted" {
            bail!("accept not acked: {ack}");
        }
        Ok((id, generation))
    }

    pub async fn complete(&mut self, task_id: &str, generation: u64) -> Result<Value> {
        self.send(json!({ "type": "task_complete", "task_id": task_id, "generation": generation, "result": { "status": "success" } }))
            .await?;
        self.recv().await
    }

    /// Sends one text frame of `bytes` bytes from a separate writer while reading, so the hub's
    /// close frame is seen even though the hub stops reading mid-frame. Returns how it closed.
    pub async fn send_oversized(self, bytes: usize) -> Result<Closed> {
        let (mut tx, mut rx) = self.ws.split();
        let payload =
            format!("{{\"type\":\"task_progress\",\"task_id\":\"t\",\"progress\":\"{}\"}}", "x".repeat(bytes));
        let writer = tokio::spawn(async move {
            let _ = tx.send(Message::text(payload)).await;
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        let closed = loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => bail!("not closed within {WAIT:?}"),
                Ok(Some(Ok(Message::Close(Some(f))))) => break Closed::Code(u16::from(f.code), f.reason.to_string()),
                Ok(Some(Err(_)) | None) | Ok(Some(Ok(Message::Close(None)))) => break Closed::Dropped,
                Ok(Some(Ok(_))) => continue,
            }
        };
        writer.abort();
        Ok(closed)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close frame (a network cut or crash).
    pub fn cut(self) {
        drop(self.ws);
    }
}

/// The hub's side of a socket, scripted by a test: for what our hub never sends (hostile or
/// malformed frames), and to time the sidecar alone. It speaks real WebSocket on loopback.
pub struct ScriptedHub {
    listener: tokio::net::TcpListener,
}

/// One sidecar connection to a [`ScriptedHub`].
pub struct ScriptedConn {
    ws: WebSocketStream<TcpStream>,
}

impl ScriptedHub {
    pub async fn bind() -> Result<ScriptedHub> {
        Ok(ScriptedHub { listener: tokio::net::TcpListener::bind("127.0.0.1:0").await? })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().expect("bound"))
    }

    /// Accepts the next WebSocket connection and returns it as is (its `identify` unread).
    pub async fn accept_ws(&self) -> Result<ScriptedConn> {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept()).await.context("no connection")??;
        tcp.set_nodelay(true)?;
        Ok(ScriptedConn { ws: tokio_tungstenite::accept_async(tcp).await? })
    }

    /// Whether a connection is waiting to be accepted (taking it if so): to check that a
    /// sidecar never connected here.
    pub fn has_pending_connection(&self) -> bool {
        use futures_util::FutureExt;
        self.listener.accept().now_or_never().is_some()
    }

    /// Accepts the next connection, reads its `identify` and answers `identified`.
    pub async fn accept_identified(&self) -> Result<ScriptedConn> {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept()).await.context("no connection")??;
        tcp.set_nodelay(true)?;
        let ws = tokio_tungstenite::accept_async(tcp).await?;
        let mut conn = ScriptedConn { ws };
        let hello = conn.recv().await?;
        if hello["type"] != "identify" {
            bail!("expected identify, got {hello}");
        }
        conn.send(json!({"type": "identified", "agent_id": hello["agent_id"]})).await?;
        Ok(conn)
    }
}

impl ScriptedConn {
    pub async fn send(&mut self, v: Value) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await.context("send frame")
    }

    /// The next text frame, within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.context("no frame from the sidecar")? {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// Closes the socket with `code` and `reason` (as a standby hub does with 4001).
    pub async fn close_with(mut self, code: u16, reason: &str) -> Result<()> {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: code.into(), reason: reason.into() };
        self.ws.close(Some(frame)).await.context("close")?;
        // Drain until the peer's close reply, so the close handshake completes.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
        Ok(())
    }

    /// Reads frames until one of type `ty`; returns it and the frames before it.
    pub async fn wait_for(&mut self, ty: &str) -> Result<(Value, Vec<Value>)> {
        let mut before = Vec::new();
        loop {
            let v = self.recv().await?;
            if v["type"] == ty {
                return Ok((v, before));
            }
            before.push(v);
        }
    }
}
