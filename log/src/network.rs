//! The Raft peer transport. A single-voter cluster never sends a Raft RPC, so for now every
//! call answers `Unreachable`; the HA work replaces this file with a gRPC client (and adds the
//! matching server) without touching the rest of the crate.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::types::TypeConfig;

/// Why a peer cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("peer transport not available on a single-node cluster (peer {target} at {addr})")]
pub struct NoPeerTransport {
    target: u64,
    addr: String,
}

/// Makes a client per peer.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// The client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
    addr: String,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoPeerTransport { target: self.target, addr: self.addr.clone() }))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { target, addr: node.addr.clone() }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_rpc_is_unreachable_with_a_clear_message() {
        let mut client = Network.new_client(2, &BasicNode::new("10.0.0.2:1530")).await;
        let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = client.vote(rpc, RPCOption::new(std::time::Duration::from_secs(1))).await.unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)));
        assert!(err.to_string().contains("peer transport not available on a single-node cluster"), "{err}");
    }
}
