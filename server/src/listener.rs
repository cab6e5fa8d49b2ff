//! The server's one port. TLS is accepted here rather than by tonic, so each connection can go
//! where its ALPN protocol says: `h2` to tonic (every gRPC service), `vigo-session/1` to a held
//! session ([`crate::session`]).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::limits::TLS_HANDSHAKE_TIMEOUT;
use crate::node::Node;

/// How long to wait before accepting again after the listener failed (out of descriptors).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Connections tonic serves.
pub type Incoming = ReceiverStream<std::io::Result<TlsStream<TcpStream>>>;

/// Accepts on `listener` until the returned stream is dropped. gRPC connections come out of the
/// stream; session connections are served by `sessions` (and closed while there is none: a
/// joining peer serves the peer service alone).
pub fn accept(listener: TcpListener, tls: Arc<rustls::ServerConfig>, sessions: Option<Arc<Node>>) -> Incoming {
    let (grpc, incoming) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = grpc.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            nagle_off(&tcp);
            let (acceptor, grpc, sessions) = (acceptor.clone(), grpc.clone(), sessions.clone());
            // The handshake runs apart, so a slow client holds up nobody else.
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                    // Rare unless the server is swamped (a whole fleet connecting at once): then
                    // the client may already count itself connected, and sees its first request
                    // go unanswered.
                    Err(_) => return tracing::warn!("TLS handshake not done within {TLS_HANDSHAKE_TIMEOUT:?}; closed"),
                };
                if tls.get_ref().1.alpn_protocol() == Some(vigo_proto::session::ALPN) {
                    if let Some(node) = sessions {
                        crate::session::serve(node, tls).await;
                    }
                } else {
                    let _ = grpc.send(Ok(tls)).await;
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Turns Nagle's algorithm off on an accepted connection. Answers are small and latency-bound:
/// with it on, an answer written in two parts waits for the client's delayed ACK (~40 ms)
/// before its second part leaves.
fn nagle_off(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot turn Nagle off on an accepted connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        super::nagle_off(&accepted);
        assert!(accepted.nodelay().unwrap(), "answers must not wait for the client's delayed ACK");
    }
}
