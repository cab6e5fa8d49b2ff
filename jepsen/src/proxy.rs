//! A TCP proxy in front of each peer, through which every other peer reaches it: the harness's
//! own network, which it can cut and always restore (nothing outside the process is changed).
//!
//! Each peer listens on a loopback address of its own (127.0.0.11, .12, …) and calls the other
//! peers from that address; it advertises its proxy's address, so the others dial the proxy.
//! The proxy tells peers apart by the source address of a connection: to partition peer A from
//! peer B, A's proxy refuses (and cuts) connections from B's address and B's proxy those from
//! A's. Clients connect from 127.0.0.1 and are never cut off.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One proxy and what it currently refuses.
pub struct Proxy {
    /// The address it listens on (what the peer advertises).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accepting: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    target: Option<SocketAddr>,
    blocked: HashSet<IpAddr>,
    /// Open connections: where each comes from, and its copying task.
    open: Vec<(IpAddr, JoinHandle<()>)>,
}

impl Proxy {
    /// Starts a proxy listening on `ip` (any free port); it forwards once [`Proxy::target`] is set.
    pub async fn start(ip: IpAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let accepting = tokio::spawn(accept(listener, state.clone()));
        Ok(Proxy { addr, state, accepting })
    }

    /// Where connections go: the peer's own listener.
    pub fn target(&self, target: SocketAddr) {
        self.state.lock().expect("proxy state").target = Some(target);
    }

    /// Refuses connections from `sources` from now on, and cuts those open.
    pub fn block(&self, sources: &[IpAddr]) {
        let mut state = self.state.lock().expect("proxy state");
        state.blocked.extend(sources.iter().copied());
        let blocked = state.blocked.clone();
        state.open.retain(|(source, task)| {
            if blocked.contains(source) {
                task.abort();
                false
            } else {
                !task.is_finished()
            }
        });
    }

    /// Lets every source through again.
    pub fn heal(&self) {
        self.state.lock().expect("proxy state").blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        for (_, task) in self.state.lock().expect("proxy state").open.drain(..) {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((inbound, from)) = listener.accept().await else { continue };
        let target = {
            let state = state.lock().expect("proxy state");
            if state.blocked.contains(&from.ip()) {
                continue; // dropped: the connection closes at once
            }
            state.target
        };
        let Some(target) = target else { continue };
        let task = tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
            let mut inbound = inbound;
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        let mut state = state.lock().expect("proxy state");
        state.open.retain(|(_, task)| !task.is_finished());
        state.open.push((from.ip(), task));
    }
}

/// Peer `i`'s own loopback address.
pub fn peer_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + i as u8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(proxy: SocketAddr, from: IpAddr) -> bool {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let Ok(mut s) = socket.connect(proxy).await else { return false };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut buf)).await, Ok(Ok(_)))
            && &buf == b"ping"
    }

    #[tokio::test]
    async fn a_blocked_source_is_refused_and_cut_off_until_healed_while_others_pass() {
        let proxy = Proxy::start(peer_ip(0)).await.unwrap();
        proxy.target(echo_server().await);
        let (a, b) = (peer_ip(1), peer_ip(2));
        assert!(round_trip(proxy.addr, a).await);
        // An open connection from a source is cut when it is blocked.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(a, 0)).unwrap();
        let mut open = socket.connect(proxy.addr).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        proxy.block(&[a]);
        let cut = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let _ = open.write_all(b"ping").await;
            open.read(&mut buf).await
        })
        .await;
        assert!(matches!(cut, Ok(Ok(0)) | Ok(Err(_))), "the open connection is cut: {cut:?}");
        assert!(!round_trip(proxy.addr, a).await, "new connections from a blocked source are refused");
        assert!(round_trip(proxy.addr, b).await, "other sources pass");
        proxy.heal();
        assert!(round_trip(proxy.addr, a).await, "healed");
    }
}
