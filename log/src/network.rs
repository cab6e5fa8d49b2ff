//! The Raft peer transport: openraft's RPCs over gRPC (`vigo.peer.Peer/Raft`) with mTLS.
//!
//! Each request and answer is openraft's own type, postcard-encoded, inside a protobuf
//! envelope; the server side is [`LogNode::handle_raft`](crate::LogNode::handle_raft). One lazy
//! channel per peer address ([`Peers`]), shared with everything else a peer asks another
//! (forwarded writes, status, membership changes): it connects on first use and reconnects by
//! itself after the peer comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use vigo_proto::peer::peer_client::PeerClient;
use vigo_proto::peer::{RaftRequest, RaftRpc};

use crate::limits;
use crate::types::TypeConfig;

/// Why a peer cannot be asked anything.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// This node was opened without peer credentials (a single-node log in tests and tools).
    #[error("no peer transport: this node was opened without peer credentials (peer {addr})")]
    NoTransport {
        /// The peer that was to be reached.
        addr: String,
    },
    /// The address is not usable.
    #[error("cannot reach peer {addr}: {reason}")]
    Address {
        /// The peer.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// One lazily connected gRPC channel per peer address, over mTLS with this peer's certificate.
#[derive(Clone, Default)]
pub struct Peers {
    tls: Option<Arc<rustls::ClientConfig>>,
    source: Option<std::net::IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers reached with `tls` (trusting the cluster CA, presenting this peer's certificate);
    /// `None` makes every call fail with [`PeerError::NoTransport`].
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, source: Option<std::net::IpAddr>) -> Self {
        Self { tls, source, channels: Arc::default() }
    }

    /// A client for the peer at `addr`, on its shared channel.
    pub fn client(&self, addr: &str) -> Result<PeerClient<Channel>, PeerError> {
        let tls = self.tls.clone().ok_or_else(|| PeerError::NoTransport { addr: addr.to_string() })?;
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = vigo_proto::tls::connect_lazy(addr, self.source, tls, limits::PEER_CONNECT_TIMEOUT)
                    .map_err(|e| PeerError::Address { addr: addr.to_string(), reason: e.to_string() })?;
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::PEER_MESSAGE_BYTES_MAX))
    }
}

/// Makes a client per peer for openraft.
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// The Raft network over `peers`.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// openraft's client for one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: u64,
    addr: String,
    peers: Peers,
}

/// A transport failure as openraft's error, naming the peer.
#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {addr}: {reason}")]
struct TransportError {
    target: u64,
    addr: String,
    reason: String,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let failed = |reason: String| TransportError { target: self.target, addr: self.addr.clone(), reason };
        let payload = postcard::to_stdvec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&failed(format!("cannot encode: {e}")))))?;
        let mut client = self
            .peers
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&failed(e.to_string()))))?;
        let mut request = tonic::Request::new(RaftRequest { rpc: rpc as i32, payload });
        request.set_timeout(option.hard_ttl());
        let reply = match client.raft(request).await {
            Ok(reply) => reply.into_inner(),
            // The peer is down or not reachable: openraft backs off before it tries again.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&failed(status.message().to_string()))));
            }
            Err(status) => {
                let reason = format!("{:?}: {}", status.code(), status.message());
                return Err(RPCError::Network(NetworkError::new(&failed(reason))));
            }
        };
        let answer: Result<Resp, RaftError<u64, E>> = postcard::from_bytes(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&failed(format!("cannot decode the answer: {e}")))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        PeerConnection { target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.call(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RaftRpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn without_credentials_every_rpc_is_unreachable_and_says_why() {
        let mut client = Network::new(Peers::new(None, None)).new_client(2, &BasicNode::new("10.0.0.2:1530")).await;
        let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = client.vote(rpc, RPCOption::new(Duration::from_secs(1))).await.unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)));
        assert!(err.to_string().contains("peer 2 at 10.0.0.2:1530: no peer transport"), "{err}");
    }
}
