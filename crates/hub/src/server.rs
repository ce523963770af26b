//! The connection layer: accepts TCP (and TLS) connections and serves HTTP/1.1 on each with hyper,
//! bounding what any client can hold.
//!
//! - Every connection holds a slot of `max_connections` (derived from the open-files limit), so
//!   the hub never runs out of file descriptors; beyond it, a connection is answered 503 and closed.
//! - Connections that are not identified agents (HTTP clients, WebSockets before `identify`) may
//!   use only the part not reserved for agents. When that part is full, the oldest of them with
//!   no request in flight (a half-open head, an idle keep-alive, a socket that never identified)
//!   is closed to make room: a flood of silent sockets cannot lock out `/health` or an agent.
//! - A request head must arrive within `header_read_timeout`; an idle keep-alive connection is
//!   closed after `keep_alive_timeout`; a TLS handshake gets the same bound as a head.

use crate::config::NetLimits;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Descriptors kept free for the database, logs and certificates.
const FD_MARGIN: usize = 128;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct NetStats {
    pub refused: AtomicU64,
    pub evicted: AtomicU64,
    pub open: AtomicUsize,
}

/// The bounds every connection counts against, shared by the accept loop and the slots.
pub struct ConnLimits {
    total: Arc<Semaphore>,
    unidentified: Arc<Semaphore>,
    /// Unidentified connections by age (ids grow), weakly: a slot leaves when its last holder drops it.
    registry: Mutex<BTreeMap<u64, Weak<ConnSlot>>>,
    next_id: AtomicU64,
    pub stats: NetStats,
    pub max: usize,
}

impl ConnLimits {
    pub fn new(net: &NetLimits, fd_limit: u64) -> Arc<ConnLimits> {
        let derived = (fd_limit as usize).saturating_sub(FD_MARGIN).max(16);
        let max = net.max_connections.unwrap_or(derived).min(derived.max(16));
        let reserved = max * net.agent_reserve_percent as usize / 100;
        Arc::new(ConnLimits {
            total: Arc::new(Semaphore::new(max)),
            unidentified: Arc::new(Semaphore::new(max - reserved)),
            registry: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            stats: NetStats::default(),
            max,
        })
    }

    /// Appends the connection counters in Prometheus text.
    pub fn render(&self, out: &mut String) {
        use crate::metrics::{sample, Kind};
        let s = &self.stats;
        for (name, help, kind, v) in [
            (
                "agentcom_connections_open",
                "Open connections (HTTP and WebSocket).",
                Kind::Gauge,
                s.open.load(Ordering::Relaxed) as u64,
            ),
            ("agentcom_connections_max", "The connection limit.", Kind::Gauge, self.max as u64),
            (
                "agentcom_connections_refused_total",
                "Connections refused at the limit.",
                Kind::Counter,
                s.refused.load(Ordering::Relaxed),
            ),
            (
                "agentcom_connections_evicted_total",
                "Idle unidentified connections closed to make room.",
                Kind::Counter,
                s.evicted.load(Ordering::Relaxed),
            ),
        ] {
            sample(out, name, kind, help, v);
        }
    }

    /// A slot for a new connection, or `None` when the hub is full.
    fn admit(self: &Arc<Self>) -> Option<Arc<ConnSlot>> {
        let (total, unidentified) = match self.unidentified.clone().try_acquire_owned() {
            Ok(u) => match self.total.clone().try_acquire_owned() {
                Ok(t) => (t, u),
                // Agents hold the rest: only an unidentified connection can make room.
                Err(_) => (self.evict_oldest_idle()?.0, u),
            },
            // Full: the oldest idle unidentified connection hands over both of its permits now,
            // so admission does not wait for its task to notice and let go of its socket.
            Err(_) => self.evict_oldest_idle()?,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(ConnSlot {
            id,
            limits: Arc::downgrade(self),
            busy: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            evict: CancellationToken::new(),
            unidentified: Mutex::new(Some(unidentified)),
            total: Mutex::new(Some(total)),
        });
        self.lock_registry().insert(id, Arc::downgrade(&slot));
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Weak<ConnSlot>>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the oldest unidentified connection with nothing in flight and hands over its permits.
    /// One that never sent a whole request (a half-open head, a silent socket) goes first: closing
    /// an idle keep-alive connection can race its client's next request, which then fails.
    fn evict_oldest_idle(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let mut registry = self.lock_registry();
        let idle = |s: &ConnSlot| s.busy.load(Ordering::Acquire) == 0;
        let live = || registry.iter().filter_map(|(id, w)| w.upgrade().map(|s| (*id, s)));
        let victim = live()
            .find(|(_, s)| idle(s) && !s.served.load(Ordering::Acquire))
            .or_else(|| live().find(|(_, s)| idle(s)))?;
        registry.remove(&victim.0);
        drop(registry);
        let unidentified = victim.1.unidentified.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let total = victim.1.total.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        victim.1.evict.cancel();
        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        Some((total, unidentified))
    }
}

/// One connection's share of the limits. The HTTP task holds it, and so does a WebSocket task
/// after an upgrade; its permits go back when the last holder drops it (the socket is closed).
pub struct ConnSlot {
    id: u64,
    limits: Weak<ConnLimits>,
    /// Requests in flight (or streams pinned open); only a connection at zero may be evicted.
    busy: AtomicUsize,
    /// Whether a request ever got through on it: a client's connection, not a stalled head.
    served: AtomicBool,
    last_active: Mutex<Instant>,
    evict: CancellationToken,
    unidentified: Mutex<Option<OwnedSemaphorePermit>>,
    /// Taken by an eviction (the socket closes moments later); otherwise released with the slot.
    total: Mutex<Option<OwnedSemaphorePermit>>,
}

impl ConnSlot {
    /// The connection is an identified agent now: it leaves the evictable pool and uses the
    /// capacity reserved for agents.
    pub fn identified(&self) {
        if let Some(l) = self.limits.upgrade() {
            l.lock_registry().remove(&self.id);
        }
        self.unidentified.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Cancelled when this connection is closed to make room for others.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// Keeps the connection busy (not evictable) while the guard lives: a request, a stream.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        BusyGuard(self.clone())
    }

    fn idle_for(&self) -> Duration {
        self.last_active.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(l) = self.limits.upgrade() {
            l.lock_registry().remove(&self.id);
            l.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub struct BusyGuard(Arc<ConnSlot>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request extension through which handlers reach their connection's slot.
#[derive(Clone)]
pub struct ConnTicket(pub Arc<ConnSlot>);

/// Connections the kernel may hold completed before the hub accepts them. A whole fleet
/// reconnects at once after a failover or a restart (10,000 agents within the one-second jitter
/// of their backoff); with tokio's default of 1,024, the kernel drops the rest of the burst and
/// each of those agents retries only after its SYN's retransmission timeout (1 s, then 3 s, …).
/// The kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` (`host:port`, every address it resolves to tried in turn, as
/// `TcpListener::bind` does) with a listen queue of [`LISTEN_BACKLOG`].
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As `TcpListener::bind`: a restarted hub takes its port back while old connections linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")))
}

/// Raises the soft open-files limit to the hard one; returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-files limit (RLIMIT_NOFILE) to its hard limit");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

pub struct Server {
    pub listener: TcpListener,
    pub app: Router,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub net: NetLimits,
    pub limits: Arc<ConnLimits>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Server {
    /// Accepts until shutdown; every connection task is tracked so the caller can wait for them.
    pub async fn run(self) {
        let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = self.limits.admit() else {
                self.limits.stats.refused.fetch_add(1, Ordering::Relaxed);
                if acceptor.is_none() {
                    if let Ok(permit) = refusals.clone().try_acquire_owned() {
                        self.tracker.spawn(refuse(stream, permit));
                    }
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn =
                Connection { app: self.app.clone(), net: self.net.clone(), slot, shutdown: self.shutdown.clone() };
            match acceptor.clone() {
                Some(acceptor) => self.tracker.spawn(conn.serve_tls(acceptor, stream, peer)),
                None => self.tracker.spawn(conn.serve(stream)),
            };
        }
    }
}

/// Refused connections answered at once; beyond these, a refused socket is just closed.
const MAX_REFUSALS: usize = 64;

/// Answers 503 on a connection the hub has no room for, then lets the client read it: closing
/// with unread input would reset the socket and destroy the answer.
async fn refuse(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"error":"overloaded","message":"too many connections; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

struct Connection {
    app: Router,
    net: NetLimits,
    slot: Arc<ConnSlot>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve_tls(self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream, peer: std::net::SocketAddr) {
        let handshake = tokio::time::timeout(self.net.header_read_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            _ = self.slot.evict.cancelled() => return,
            _ = self.shutdown.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::info!(peer = %peer, "TLS handshake timed out"),
            },
        };
        self.serve(tls).await
    }

    async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: I) {
        let (app, slot) = (self.app, self.slot.clone());
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = slot.busy();
            req.extensions_mut().insert(ConnTicket(slot.clone()));
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                drop(guard);
                resp
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.net.header_read_timeout).keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
        tokio::pin!(conn);
        let keep_alive = self.net.keep_alive_timeout;
        let mut shutting_down = false;
        loop {
            let check =
                tokio::time::sleep(keep_alive.saturating_sub(self.slot.idle_for()).max(Duration::from_millis(10)));
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = self.slot.evict.cancelled() => break,
                _ = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = check => {
                    if self.slot.busy.load(Ordering::Acquire) == 0 && self.slot.idle_for() >= keep_alive {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length of the accept queue of the socket listening on `port`, from `/proc/net/tcp`
    /// (for a listening socket its `rx_queue` column is the number of connections waiting).
    fn accept_queue(port: u16) -> Result<usize, String> {
        let table = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
        let local = format!(":{port:04X}");
        table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 4 && f[1].ends_with(&local) && f[3] == "0A")
            .and_then(|f| usize::from_str_radix(f[4].split(':').nth(1)?, 16).ok())
            .ok_or_else(|| format!("no listening socket on port {port}"))
    }

    #[test]
    fn a_full_hub_closes_a_connection_that_never_sent_a_request_before_a_clients_idle_one() {
        let net = NetLimits { max_connections: Some(3), agent_reserve_percent: 0, ..NetLimits::default() };
        let limits = ConnLimits::new(&net, 1 << 20);
        let client = limits.admit().unwrap();
        drop(client.busy()); // one request served: a keep-alive client, idle now
        let silent = limits.admit().unwrap();
        let working = limits.admit().unwrap();
        let _request = working.busy();
        let newcomer = limits.admit().expect("room is made");
        assert!(silent.evicted().is_cancelled(), "the socket that never sent a request goes");
        assert!(!client.evicted().is_cancelled() && !working.evicted().is_cancelled());
        // Only idle clients are left to choose from: the oldest of them goes.
        drop(newcomer.busy());
        limits.admit().expect("room is made");
        assert!(client.evicted().is_cancelled(), "{}", limits.stats.evicted.load(Ordering::Relaxed));
        assert!(!working.evicted().is_cancelled(), "a request in flight is never cut");
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue_instead_of_being_dropped() {
        raise_nofile_limit();
        let listener = listen("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // More than tokio's default queue of 1,024; no more than the kernel allows.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = 2000.min(somaxconn);
        // Nobody accepts: every connection the kernel completes waits in the queue; one it
        // dropped would be retried only after a SYN timeout and never show up here in time.
        let clients: Vec<_> =
            (0..burst).map(|_| tokio::spawn(tokio::net::TcpStream::connect(("127.0.0.1", port)))).collect();
        let waiting = testkit::eventually("the whole burst to wait in the listen queue", || async {
            match accept_queue(port)? {
                n if n >= burst => Ok(n),
                n => Err(format!("{n} of {burst} waiting")),
            }
        })
        .await
        .unwrap();
        assert_eq!(waiting, burst);
        for c in clients {
            c.abort();
        }
        drop(listener);
    }
}
