//! The peer service: what the peers of a cluster ask each other (Raft RPCs, forwarded writes,
//! status, membership and leadership changes) and how a new peer joins.
//!
//! Every call but `Join` needs a client certificate issued by the cluster CA to a peer
//! (`vigo-peer:` common name). `Join` is authenticated by its token instead: the joining peer
//! has no certificate yet, and leaves with one. Calls that only the leader can answer are
//! carried to it by whichever peer receives them.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vigo_log::{LogError, LogNode};
use vigo_proto::events::event::Kind;
use vigo_proto::events::{PeerAdmitted, PeerRemoved};
use vigo_proto::peer::change_membership_request::Change;
use vigo_proto::peer::peer_client::PeerClient;
use vigo_proto::peer::peer_server::Peer;
use vigo_proto::peer::{
    AddVoterReply, AddVoterRequest, ChangeMembershipReply, ChangeMembershipRequest, ElectReply, ElectRequest,
    HoldElectionsReply, HoldElectionsRequest, JoinReply, JoinRequest, PeerStatus, PeerStatusRequest, ProposeReply,
    ProposeRequest, RaftReply, RaftRequest, ReadIndexReply, ReadIndexRequest,
};
use vigo_state::ControlError;

use crate::error::log_status;
use crate::node::{Node, WriteError};
use crate::pki::{PEER_CN_PREFIX, common_name};

/// The peer service. Until a joining peer has caught up it serves without a [`Node`]: Raft
/// RPCs and status only.
pub struct PeerService {
    log: Arc<LogNode>,
    node: Option<Arc<Node>>,
}

impl PeerService {
    /// Serves `log`, and with `node` everything else.
    pub fn new(log: Arc<LogNode>, node: Option<Arc<Node>>) -> Self {
        Self { log, node }
    }

    fn node(&self) -> Result<&Arc<Node>, Status> {
        self.node.as_ref().ok_or_else(|| Status::unavailable("this peer is still joining the cluster"))
    }
}

/// The node id of the peer a request comes from, or a refusal.
fn peer<T>(request: &Request<T>) -> Result<u64, Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("peer calls need a client certificate"))?;
    let cn = certs.first().and_then(|leaf| common_name(leaf.as_ref())).unwrap_or_default();
    cn.strip_prefix(PEER_CN_PREFIX)
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Status::permission_denied("client certificate is not a peer certificate"))
}

/// What a peer says of itself.
pub fn peer_status(s: vigo_log::ClusterStatus) -> PeerStatus {
    PeerStatus {
        node_id: s.node_id,
        role: s.role,
        term: s.term,
        leader: s.leader.unwrap_or(0),
        last_log_index: s.last_log_index,
        applied_index: s.applied_index,
        last_event_index: s.last_event_index,
        last_event_hash: s.last_event_hash.to_vec(),
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
    }
}

/// A client for the leader, or `None` when this peer leads.
pub fn leader_client(log: &LogNode) -> Result<Option<PeerClient<Channel>>, Status> {
    match log.leader() {
        Some((id, _)) if id == log.node_id() => Ok(None),
        Some((_, addr)) => log.peers().client(&addr).map(Some).map_err(|e| Status::unavailable(e.to_string())),
        None => Err(log_status(LogError::NoLeader)),
    }
}

/// Removes a peer or moves leadership, on the leader (carried there from any other peer).
/// Answers with the leader afterwards.
pub async fn change_membership(node: &Node, request: ChangeMembershipRequest) -> Result<u64, Status> {
    if let Some(mut leader) = leader_client(&node.log)? {
        return Ok(leader.change_membership(request).await?.into_inner().leader);
    }
    let log = &node.log;
    match request.change {
        Some(Change::Remove(node_id)) => {
            let member = log.status().members.iter().any(|m| m.node_id == node_id);
            let admitted = node.control().is_member(node_id);
            if !member && !admitted {
                return Err(crate::error::refused(ControlError::PeerUnknown(node_id)));
            }
            if node_id == log.node_id() {
                return Err(log_status(LogError::Membership(format!(
                    "peer {node_id} leads; promote another peer before removing it"
                ))));
            }
            // The event first, while the peer still receives the log: it learns of its removal
            // and stops.
            if admitted {
                node.commit_event(&request.actor, Kind::PeerRemoved(PeerRemoved { node_id })).await?;
            }
            log.remove_member(node_id).await.map_err(log_status)?;
            Ok(log.node_id())
        }
        Some(Change::Promote(node_id)) => log.transfer_leadership(node_id).await.map_err(log_status),
        None => Err(Status::invalid_argument("no membership change named")),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        peer(&request)?;
        let req = request.into_inner();
        let payload = self.log.handle_raft(req.rpc, &req.payload).await.map_err(log_status)?;
        Ok(Response::new(RaftReply { payload }))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeReply>, Status> {
        peer(&request)?;
        let proposal = request.into_inner().proposal.ok_or_else(|| Status::invalid_argument("no proposal"))?;
        let envelope = self.log.propose_forwarded(proposal).await.map_err(log_status)?;
        Ok(Response::new(ProposeReply { envelope: Some(envelope) }))
    }

    async fn status(&self, request: Request<PeerStatusRequest>) -> Result<Response<PeerStatus>, Status> {
        peer(&request)?;
        Ok(Response::new(peer_status(self.log.status())))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let node = self.node()?;
        if let Some(mut leader) = leader_client(&self.log)? {
            return leader.join(request.into_inner()).await;
        }
        let req = request.into_inner();
        let secret: [u8; 16] = req
            .token_secret
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("join token secret must be 16 bytes"))?;
        let pubkey: [u8; 32] =
            req.pubkey.as_slice().try_into().map_err(|_| Status::invalid_argument("public key must be 32 bytes"))?;
        check_addr(&req.addr)?;
        let mut issued = None;
        let admitted = node
            .commit("peer:join", |state| {
                let node_id = state.next_peer_id();
                let cert = node
                    .pki
                    .issue_peer_cert(node_id, &pubkey)
                    .map_err(|_| ControlError::Malformed("cannot issue a peer certificate for this key"))?;
                let event = PeerAdmitted {
                    node_id,
                    addr: req.addr.clone(),
                    cert_sha256: Sha256::digest(&cert).to_vec(),
                    token_sha256: Sha256::digest(secret).to_vec(),
                };
                issued = Some((node_id, cert));
                Ok(Kind::PeerAdmitted(event))
            })
            .await;
        match admitted {
            Ok(_) => {}
            Err(WriteError::Refused(c)) => return Err(crate::error::refused(c)),
            Err(e) => return Err(e.into()),
        }
        let (node_id, cert_der) = issued.expect("made when committed");
        tracing::info!(node_id, addr = req.addr, "peer admitted");
        Ok(Response::new(JoinReply {
            node_id,
            cert_der,
            ca_cert_der: node.pki.ca_der.clone(),
            seal_key: node.pki.identity.seal_key.to_vec(),
            leader_addr: node.settings.listen.clone(),
        }))
    }

    async fn add_voter(&self, request: Request<AddVoterRequest>) -> Result<Response<AddVoterReply>, Status> {
        peer(&request)?;
        if let Some(mut leader) = leader_client(&self.log)? {
            return leader.add_voter(request.into_inner()).await;
        }
        let node_id = request.into_inner().node_id;
        let state = self.log.state();
        let entry = state
            .peer(node_id)
            .filter(|_| state.is_member(node_id))
            .ok_or_else(|| crate::error::refused(ControlError::PeerUnknown(node_id)))?;
        self.log.add_voter(node_id, &entry.addr).await.map_err(log_status)?;
        Ok(Response::new(AddVoterReply { node_id }))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipReply>, Status> {
        peer(&request)?;
        let leader = change_membership(self.node()?, request.into_inner()).await?;
        Ok(Response::new(ChangeMembershipReply { leader }))
    }

    async fn hold_elections(
        &self,
        request: Request<HoldElectionsRequest>,
    ) -> Result<Response<HoldElectionsReply>, Status> {
        peer(&request)?;
        let for_ms = request.into_inner().for_ms.min(vigo_log::limits::TRANSFER_HOLD.as_millis() as u64);
        self.log.hold_elections(std::time::Duration::from_millis(for_ms));
        Ok(Response::new(HoldElectionsReply {}))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        peer(&request)?;
        let log_index = self.log.read_index().await.map_err(log_status)?;
        Ok(Response::new(ReadIndexReply { log_index }))
    }

    async fn elect(&self, request: Request<ElectRequest>) -> Result<Response<ElectReply>, Status> {
        peer(&request)?;
        self.log.elect().await.map_err(log_status)?;
        Ok(Response::new(ElectReply {}))
    }
}

/// A peer address must be `host:port`, the way the other peers will dial it.
fn check_addr(addr: &str) -> Result<(), Status> {
    let bad = || Status::invalid_argument(format!("peer address {addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}
