//! Network faults on loopback: a proxy whose link can be cut, a port that refuses.

use anyhow::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A TCP proxy on loopback whose link can be cut (connections dropped, new ones refused)
/// and restored: a network outage between a sidecar and its hub.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                // The generation first: a cut between the two reads still reaches this link.
                let mut cut = gen_rx.clone();
                let born = *cut.borrow_and_update();
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound); // refused while the link is down
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    // Biased: once cut, not one more byte is forwarded, even if data is waiting.
                    tokio::select! {
                        biased;
                        _ = cut.wait_for(|g| *g != born) => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, up, generation, task })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port where nothing listens, held so no one else takes it: every connection to it
/// is refused, as to a hub machine that died.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl RefusingPort {
    pub fn new() -> Result<RefusingPort> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // Bound, never listening: the kernel answers connections with a reset.
        socket.bind("127.0.0.1:0".parse()?)?;
        let addr = socket.local_addr()?;
        Ok(RefusingPort { _socket: socket, addr })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}
