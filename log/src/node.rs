//! `LogNode`, the facade the server uses: open the log (a single-voter cluster in an empty
//! directory, or a peer that joins one), propose events and get them back sealed once committed
//! and applied (I-2) — from any peer: a follower carries its proposal to the leader — read the
//! latest state without locks (I-3), read verified history (I-4), answer other peers' Raft
//! RPCs, and change membership and leadership.
//!
//! The server reaches the log only through this type.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::network::RaftNetworkFactory;
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use vigo_proto::events::{EventEnvelope, EventProposal};
use vigo_proto::peer::{ProposeRequest, RaftRpc};
use vigo_state::{ControlError, ControlState, envelope_hash};

use crate::db::open_storage;
use crate::error::LogError;
use crate::history::History;
use crate::limits;
use crate::network::{Network, Peers};
use crate::recovery::PendingRecovery;
use crate::state_machine::Projection;
use crate::types::{AppliedEvent, Proposal, TypeConfig};

/// How a peer opens its log.
#[derive(Clone)]
pub struct PeerSetup {
    /// Its Raft node id.
    pub node_id: u64,
    /// host:port the other peers reach it on.
    pub addr: String,
    /// mTLS client configuration for talking to other peers; `None` for a log that never
    /// talks to one (tests, tools).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// On an empty log: found a new single-voter cluster (`true`), or wait to be added to an
    /// existing one by its leader (`false`).
    pub bootstrap: bool,
    /// The local address calls to other peers leave from; `None`: the system's choice.
    pub source: Option<std::net::IpAddr>,
}

/// A running log node. `Send + Sync`; share it behind an `Arc`.
pub struct LogNode {
    raft: Raft<TypeConfig>,
    projection: Arc<Projection>,
    history: History,
    node_id: u64,
    peers: Peers,
    /// Proposals hold it shared, so they are appended and replicated together (openraft batches
    /// them: one fsync and one round trip for many); a leadership transfer holds it alone, so
    /// no write is in flight while leadership moves. Proposals need no order among themselves:
    /// each is validated again against the state it follows when applied.
    propose_lock: tokio::sync::RwLock<()>,
    /// Proposals on their way into a batch (see [`batch_proposals`]).
    batches: mpsc::UnboundedSender<Waiting>,
    /// Ends the current hold on elections (see [`LogNode::hold_elections`]).
    hold: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LogNode {
    /// Opens (or creates) a single-voter log under `dir` with no peer transport.
    pub async fn open(dir: &Path, node_id: u64, addr: String) -> Result<LogNode, LogError> {
        Self::open_peer(dir, PeerSetup { node_id, addr, tls: None, bootstrap: true, source: None }).await
    }

    /// Opens (or creates) the log under `dir` (the database lives in `dir/log`).
    ///
    /// The state is rebuilt by replaying the verified history from index 1. An empty directory
    /// founds a single-voter cluster when `setup.bootstrap`, else waits for a leader to add it.
    /// When this node is the only voter, returns once it leads and has applied every entry in
    /// its log, so [`state`](Self::state) covers every event committed before a restart (gives
    /// up after [`limits::LEADER_WAIT`]); a member of a larger cluster returns at once, since
    /// the others may still be down.
    pub async fn open_peer(dir: &Path, setup: PeerSetup) -> Result<LogNode, LogError> {
        let peers = Peers::new(setup.tls.clone(), setup.source);
        Self::open_with_network(dir, setup, Network::new(peers.clone()), peers).await
    }

    /// [`open_peer`](Self::open_peer) with another transport between peers (the deterministic
    /// simulation's). `peers` is what forwarding and peer questions use.
    pub async fn open_with_network<N: RaftNetworkFactory<TypeConfig>>(
        dir: &Path,
        setup: PeerSetup,
        network: N,
        peers: Peers,
    ) -> Result<LogNode, LogError> {
        let (log_store, state_machine) = open_storage(&dir.join("log"))?;
        let projection = state_machine.projection();
        let history = state_machine.history();
        let raft = Raft::new(setup.node_id, Arc::new(raft_config()?), network, log_store, state_machine).await?;
        let batches = batch_proposals(raft.clone());
        let node = LogNode {
            batches,
            raft,
            projection,
            history,
            node_id: setup.node_id,
            peers,
            propose_lock: Default::default(),
            hold: Default::default(),
        };
        if let Err(e) = node.start(&setup).await {
            // Stop openraft's tasks so they release the database before we report.
            let _ = node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// The latest applied state. Lock-free: an `Arc` swapped after each applied batch.
    pub fn state(&self) -> Arc<ControlState> {
        self.projection.state()
    }

    /// A receiver of the index of the last applied event.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.projection.subscribe()
    }

    /// This peer's node id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Channels to the other peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The leader this peer knows of, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    /// Whether this peer leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Appends `proposal` and returns its sealed envelope once it is committed and applied
    /// here (I-2): by then [`state`](Self::state) includes it.
    ///
    /// The event is checked against the current state first, so a caller's mistake is refused
    /// here instead of at apply. On a follower the proposal is carried to the leader, which
    /// checks it against its own state and commits it; this peer answers once it has applied
    /// the event too, so a client reads its own write wherever it asks next.
    pub async fn propose(&self, proposal: EventProposal) -> Result<EventEnvelope, LogError> {
        match self.propose_here(proposal.clone()).await {
            Err(LogError::NotLeader { leader_hint: Some(addr) }) => self.forward(&addr, proposal).await,
            Err(LogError::NotLeader { leader_hint: None }) => Err(LogError::NoLeader),
            other => other,
        }
    }

    /// Commits a proposal another peer forwarded: validated against this peer's state and
    /// committed here, never forwarded again ([`LogError::NotLeader`] when this peer no longer
    /// leads).
    pub async fn propose_forwarded(&self, proposal: EventProposal) -> Result<EventEnvelope, LogError> {
        self.propose_here(proposal).await
    }

    /// Validates `proposal` against this peer's state and commits it here ([`LogError::NotLeader`]
    /// on a follower, only once it passed).
    async fn propose_here(&self, proposal: EventProposal) -> Result<EventEnvelope, LogError> {
        let _shared = self.propose_lock.read().await;
        let event = proposal.event.as_ref().ok_or(ControlError::Empty)?;
        self.state().validate(event, proposal.proposed_at_ms)?;
        self.check_quorum()?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.batches.send((proposal, answer)).map_err(|_| LogError::Shutdown)?;
        let env = tokio::time::timeout(limits::PROPOSE_WAIT, answered)
            .await
            .map_err(|_| {
                LogError::NoQuorum(format!(
                    "not committed within {:?}; a quorum of voters may be unreachable (the write may still commit)",
                    limits::PROPOSE_WAIT
                ))
            })?
            .map_err(|_| LogError::Shutdown)??;
        // I-4 on a second path: what we acknowledge is what its hash says.
        if env.hash.as_slice() != envelope_hash(&env).as_slice() {
            return Err(LogError::Chain { index: env.index, reason: "sealed envelope does not match its hash".into() });
        }
        Ok(env)
    }

    /// On the leader: refuses at once when no quorum of voters has answered for a while,
    /// instead of letting the write wait for a commit that cannot come.
    fn check_quorum(&self) -> Result<(), LogError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Ok(());
        }
        match metrics.millis_since_quorum_ack {
            Some(ms) if ms > limits::QUORUM_ACK_MAX_MS => {
                let voters = metrics.membership_config.membership().voter_ids().count();
                Err(LogError::NoQuorum(format!(
                    "this leader has heard from no majority of its {voters} voters for {ms} ms; writes are \
                     refused until one is reachable"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Carries `proposal` to the leader at `addr`; answers once this peer has applied it.
    async fn forward(&self, addr: &str, proposal: EventProposal) -> Result<EventEnvelope, LogError> {
        let peer_error = |reason: String| LogError::Peer { addr: addr.to_string(), reason };
        let mut client = self.peers.client(addr).map_err(|e| peer_error(e.to_string()))?;
        let mut request = tonic::Request::new(ProposeRequest { proposal: Some(proposal) });
        request.set_timeout(limits::PROPOSE_WAIT + limits::PEER_CALL_TIMEOUT);
        let env = match client.propose(request).await {
            Ok(reply) => reply.into_inner().envelope.ok_or_else(|| peer_error("answered without an event".into()))?,
            Err(status) if status.code() == tonic::Code::Unavailable && status.source().is_some() => {
                return Err(LogError::LeaderUnreachable {
                    addr: addr.to_string(),
                    reason: vigo_proto::tls::error_chain(&status),
                });
            }
            Err(status) => return Err(forwarded_error(addr, status)),
        };
        self.wait_applied(env.index, limits::PROPOSE_WAIT).await?;
        Ok(env)
    }

    /// A read barrier: returns once this peer has applied every entry committed before the call,
    /// so what it reads next is linearizable. The leader confirms with a quorum that it still
    /// leads (openraft's read index); a follower asks the leader for that index and waits until
    /// it has applied as far.
    pub async fn read_barrier(&self) -> Result<(), LogError> {
        let log_index = match self.read_index().await {
            Ok(index) => index,
            Err(LogError::NotLeader { leader_hint: Some(addr) }) => {
                let peer_error = |reason: String| LogError::LeaderUnreachable { addr: addr.clone(), reason };
                let mut client = self.peers.client(&addr).map_err(|e| peer_error(e.to_string()))?;
                let mut request = tonic::Request::new(vigo_proto::peer::ReadIndexRequest {});
                request.set_timeout(limits::PROPOSE_WAIT);
                match client.read_index(request).await {
                    Ok(reply) => reply.into_inner().log_index,
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        return Err(LogError::NoQuorum(format!(
                            "the leader at {addr} cannot confirm it leads: {}",
                            status.message()
                        )));
                    }
                    Err(status) => return Err(forwarded_error(&addr, status)),
                }
            }
            Err(LogError::NotLeader { leader_hint: None }) => return Err(LogError::NoLeader),
            Err(e) => return Err(e),
        };
        self.raft
            .wait(Some(limits::PROPOSE_WAIT))
            .applied_index_at_least(Some(log_index), "read barrier")
            .await
            .map_err(wait_error)?;
        Ok(())
    }

    /// On the leader: confirms with a quorum that it still leads and returns the log index a
    /// linearizable read must wait for ([`LogError::NotLeader`] elsewhere).
    pub async fn read_index(&self) -> Result<u64, LogError> {
        let confirmed =
            tokio::time::timeout(limits::PROPOSE_WAIT, self.raft.get_read_log_id()).await.map_err(|_| {
                LogError::NoQuorum(format!("no quorum confirmed this leader within {:?}", limits::PROPOSE_WAIT))
            })?;
        match confirmed {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(LogError::NotLeader { leader_hint: f.leader_node.map(|n| n.addr) })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(LogError::NoQuorum(format!("this leader cannot reach a quorum: {e}")))
            }
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// Waits until this peer has applied event `index`, for at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), LogError> {
        let mut applied = self.watch_applied();
        let waiting = applied.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(timeout, waiting).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(LogError::Shutdown),
            Err(_) => {
                Err(LogError::NoQuorum(format!("event {index} committed but not applied here within {timeout:?}")))
            }
        }
    }

    /// Answers another peer's Raft RPC: `payload` is openraft's request, postcard-encoded; the
    /// answer is `Result<response, RaftError>`, postcard-encoded.
    pub async fn handle_raft(&self, rpc: i32, payload: &[u8]) -> Result<Vec<u8>, LogError> {
        let malformed = |e: postcard::Error| LogError::BadRequest(format!("raft rpc {rpc} does not decode: {e}"));
        let encoded = match RaftRpc::try_from(rpc) {
            Ok(RaftRpc::AppendEntries) => {
                let request = postcard::from_bytes(payload).map_err(malformed)?;
                postcard::to_stdvec(&self.raft.append_entries(request).await)
            }
            Ok(RaftRpc::Vote) => {
                let request = postcard::from_bytes(payload).map_err(malformed)?;
                postcard::to_stdvec(&self.raft.vote(request).await)
            }
            Ok(RaftRpc::InstallSnapshot) => {
                let request = postcard::from_bytes(payload).map_err(malformed)?;
                postcard::to_stdvec(&self.raft.install_snapshot(request).await)
            }
            Ok(RaftRpc::Unspecified) | Err(_) => {
                return Err(LogError::BadRequest(format!("unknown raft rpc {rpc}")));
            }
        };
        encoded.map_err(|e| LogError::Fatal(format!("cannot encode a raft answer: {e}")))
    }

    /// On the leader: replicates to peer `node_id` at `addr` as a learner until it has caught
    /// up (a snapshot first when the log it needs was compacted), then makes it a voter.
    /// Adding a peer that is a voter already changes nothing.
    pub async fn add_voter(&self, node_id: u64, addr: &str) -> Result<(), LogError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().voter_ids().any(|id| id == node_id) {
            return Ok(());
        }
        let adding = self.raft.add_learner(node_id, BasicNode::new(addr), true);
        match tokio::time::timeout(limits::CATCH_UP_WAIT, adding).await {
            Ok(result) => result.map_err(membership_error)?,
            Err(_) => {
                return Err(LogError::Peer {
                    addr: addr.to_string(),
                    reason: format!("did not catch up within {:?}", limits::CATCH_UP_WAIT),
                });
            }
        };
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map_err(membership_error)?;
        tracing::info!(node_id, %addr, "peer added as a voter");
        Ok(())
    }

    /// On the leader: takes peer `node_id` out of the cluster (voter or learner). The leader
    /// itself is refused: move leadership away first.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), LogError> {
        if node_id == self.node_id {
            return Err(LogError::Membership(format!("peer {node_id} leads; promote another peer before removing it")));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if membership.get_node(&node_id).is_none() {
            return Ok(());
        }
        if membership.voter_ids().any(|id| id == node_id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])), false)
                .await
                .map_err(membership_error)?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
            .await
            .map_err(membership_error)?;
        tracing::info!(node_id, "peer removed");
        Ok(())
    }

    /// On the leader: hands leadership to voter `target` and returns once it leads.
    ///
    /// openraft 0.9 has no transfer of its own, and a voter refuses votes while it still hears
    /// from its leader (the leader lease). So: no writes meanwhile (the proposal lock is held);
    /// wait until `target` holds every entry; ask the other voters to sit out elections for
    /// [`limits::TRANSFER_HOLD`]; stop heartbeats and let the lease run out; ask `target` to
    /// stand. The holds end by themselves, so a transfer that fails half way leaves a cluster
    /// that elects as usual.
    pub async fn transfer_leadership(&self, target: u64) -> Result<u64, LogError> {
        if target == self.node_id {
            return Ok(target);
        }
        let _alone = self.propose_lock.write().await;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(LogError::Membership(format!("peer {target} is not a voter of this cluster")));
        }
        let addr_of = |id: u64| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        let last = metrics.last_log_index.unwrap_or(0);
        self.raft
            .wait(Some(limits::TRANSFER_WAIT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target))
                        .is_some_and(|matched| matched.is_some_and(|log_id| log_id.index >= last))
                },
                "target caught up",
            )
            .await
            .map_err(|e| LogError::Peer { addr: addr_of(target), reason: format!("not caught up: {e}") })?;
        let hold_ms = limits::TRANSFER_HOLD.as_millis() as u64;
        for voter in membership.voter_ids().filter(|id| *id != target && *id != self.node_id) {
            // A voter that is down cannot stand either; only a live one must be asked.
            if let Ok(mut client) = self.peers.client(&addr_of(voter)) {
                let mut request = tonic::Request::new(vigo_proto::peer::HoldElectionsRequest { for_ms: hold_ms });
                request.set_timeout(limits::PEER_CALL_TIMEOUT);
                if let Err(status) = client.hold_elections(request).await {
                    tracing::warn!(voter, "cannot ask to sit out elections: {}", status.message());
                }
            }
        }
        self.hold_elections(limits::TRANSFER_HOLD);
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(Duration::from_millis(limits::ELECTION_TIMEOUT_MAX_MS + 100)).await;
        let elected = async {
            let mut client = self
                .peers
                .client(&addr_of(target))
                .map_err(|e| LogError::Peer { addr: addr_of(target), reason: e.to_string() })?;
            let mut request = tonic::Request::new(vigo_proto::peer::ElectRequest {});
            request.set_timeout(limits::PEER_CALL_TIMEOUT);
            client.elect(request).await.map_err(|s| forwarded_error(&addr_of(target), s))?;
            self.raft
                .wait(Some(limits::TRANSFER_WAIT))
                .metrics(|m| m.current_leader == Some(target), "target leads")
                .await
                .map_err(wait_error)
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        self.hold_elections(Duration::ZERO);
        elected?;
        tracing::info!(target, "leadership transferred");
        Ok(target)
    }

    /// Sits out elections for `period` (zero: takes part again now).
    pub fn hold_elections(&self, period: Duration) {
        let mut hold = self.hold.lock().expect("hold lock poisoned");
        if let Some(previous) = hold.take() {
            previous.abort();
        }
        if period.is_zero() {
            self.raft.runtime_config().elect(true);
            return;
        }
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        *hold = Some(tokio::spawn(async move {
            tokio::time::sleep(period).await;
            raft.runtime_config().elect(true);
        }));
    }

    /// Stands for election now.
    pub async fn elect(&self) -> Result<(), LogError> {
        self.hold_elections(Duration::ZERO);
        Ok(self.raft.trigger().elect().await?)
    }

    /// A forced recovery made on this peer's log and not yet recorded as an event.
    pub fn pending_recovery(&self) -> Result<Option<PendingRecovery>, LogError> {
        crate::db::get(self.history.db(), crate::db::CF_STORE, crate::recovery::KEY_RECOVERY).map_err(LogError::Storage)
    }

    /// Forgets the pending recovery once its event is committed.
    pub fn clear_recovery(&self) -> Result<(), LogError> {
        let db = self.history.db();
        db.delete_cf_opt(crate::db::cf(db, crate::db::CF_STORE), crate::recovery::KEY_RECOVERY, &crate::db::synced())?;
        Ok(())
    }

    /// Up to `limit` events from `from_index` (0 reads from 1), with the hash chain verified;
    /// a mismatch is a [`LogError::Chain`] naming the first bad index.
    pub fn read_history(&self, from_index: u64, limit: usize) -> Result<Vec<EventEnvelope>, LogError> {
        self.history.read(from_index, limit)
    }

    /// Index of the last applied (and archived) event; 0 when none.
    pub fn last_history_index(&self) -> u64 {
        self.state().last_index()
    }

    /// Builds a snapshot now and purges the Raft log entries it covers. The history archive is
    /// kept whole. Returns the log index purged through, `None` when nothing was applied yet.
    pub async fn compact(&self) -> Result<Option<u64>, LogError> {
        let applied = self.raft.metrics().borrow().last_applied;
        let Some(applied) = applied else { return Ok(None) };
        self.raft.trigger().snapshot().await?;
        self.raft
            .wait(Some(limits::COMPACT_WAIT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied.index), "snapshot built")
            .await
            .map_err(wait_error)?;
        self.raft.trigger().purge_log(applied.index).await?;
        self.raft
            .wait(Some(limits::COMPACT_WAIT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= applied.index), "log purged")
            .await
            .map_err(wait_error)?;
        Ok(Some(applied.index))
    }

    /// Where the cluster stands as this peer sees it: its role and term, the leader, its log
    /// and applied index, and every member with (on the leader) how far it has replicated.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|matched| matched.map_or(0, |log_id| log_id.index)),
            })
            .collect();
        let state = self.state();
        ClusterStatus {
            node_id: self.node_id,
            role: format!("{:?}", metrics.state).to_ascii_lowercase(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            last_event_index: state.last_index(),
            last_event_hash: state.last_hash(),
            snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
            purged_index: metrics.purged.map_or(0, |log_id| log_id.index),
            members,
        }
    }

    /// The openraft handle, for metrics.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops the Raft node. Afterwards proposals fail with [`LogError::Shutdown`]; state and
    /// history stay readable. The database closes when this `LogNode` is dropped.
    pub async fn shutdown(&self) -> Result<(), LogError> {
        if let Some(hold) = self.hold.lock().expect("hold lock poisoned").take() {
            hold.abort();
        }
        self.raft.shutdown().await.map_err(|e| LogError::Fatal(format!("raft task failed: {e}")))?;
        // openraft joins its core task but not the state-machine worker or a snapshot build;
        // wait (bounded) until they drop their database handles, so that dropping this node
        // closes the database and the directory can be opened again at once.
        let deadline = Instant::now() + limits::SHUTDOWN_WAIT;
        while self.history.n_handles() > 1 {
            if Instant::now() > deadline {
                tracing::warn!("raft tasks still hold the log database after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Founds a cluster in an empty log when asked to; a sole voter then waits until it leads
    /// and has caught up.
    async fn start(&self, setup: &PeerSetup) -> Result<(), LogError> {
        if !self.raft.is_initialized().await? {
            if !setup.bootstrap {
                tracing::info!(node_id = self.node_id, "empty log; waiting for the leader to add this peer");
                return Ok(());
            }
            let members = BTreeMap::from([(self.node_id, BasicNode::new(&setup.addr))]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| LogError::Fatal(format!("cannot initialize the cluster: {e}")))?;
            tracing::info!(node_id = self.node_id, addr = %setup.addr, "initialized a single-voter raft cluster");
        }
        // The membership openraft read from the log reaches its metrics a moment after start.
        let metrics = self
            .raft
            .wait(Some(limits::LEADER_WAIT))
            .metrics(|m| m.membership_config.membership().voter_ids().next().is_some(), "membership loaded")
            .await
            .map_err(wait_error)?;
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        if voters != [self.node_id] {
            return Ok(());
        }
        let metrics =
            self.raft.wait(Some(limits::LEADER_WAIT)).current_leader(self.node_id, "open").await.map_err(wait_error)?;
        // Entries committed before a restart are applied again only now that a leader
        // committed in its own term; wait for them so the state is complete when we return.
        self.raft
            .wait(Some(limits::LEADER_WAIT))
            .applied_index_at_least(metrics.last_log_index, "catch up")
            .await
            .map_err(wait_error)?;
        Ok(())
    }
}

/// A proposal waiting to be committed, and where its outcome goes.
type Waiting = (EventProposal, oneshot::Sender<Result<EventEnvelope, LogError>>);

/// Starts the task that gathers proposals into batches, one Raft entry each, and hands each
/// proposer its outcome. Up to [`limits::BATCHES_IN_FLIGHT`] batches commit at once; while they
/// do, the next proposals gather, so a busy peer commits many per entry and an idle one
/// commits each alone at once.
fn batch_proposals(raft: Raft<TypeConfig>) -> mpsc::UnboundedSender<Waiting> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
    tokio::spawn(async move {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(limits::BATCHES_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            let mut bytes = first.0.encoded_len();
            let mut batch = vec![first];
            while batch.len() < limits::BATCH_PROPOSALS_MAX && bytes < limits::BATCH_BYTES_MAX {
                let Ok(next) = rx.try_recv() else { break };
                bytes += next.0.encoded_len();
                batch.push(next);
            }
            let raft = raft.clone();
            tokio::spawn(async move {
                let (proposals, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let written = raft.client_write(Proposal::batch(&proposals)).await;
                drop(permit);
                match written {
                    Ok(response) => {
                        let log_index = response.log_id.index;
                        let mut outcomes = response.data.events.into_iter();
                        for answer in answers {
                            let outcome = match outcomes.next() {
                                Some(AppliedEvent { envelope: Some(env), .. }) => Ok(env),
                                Some(AppliedEvent { refused: Some(why), .. }) => Err(LogError::Stale(why)),
                                _ => Err(LogError::Fatal(format!(
                                    "log entry {log_index} was applied without an outcome for each of its proposals"
                                ))),
                            };
                            let _ = answer.send(outcome);
                        }
                    }
                    Err(e) => {
                        let e = LogError::from(e);
                        for answer in answers {
                            let _ = answer.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    });
    tx
}

/// A forwarded call's failure, as this peer reports it.
fn forwarded_error(addr: &str, status: tonic::Status) -> LogError {
    match status.code() {
        tonic::Code::FailedPrecondition
        | tonic::Code::InvalidArgument
        | tonic::Code::AlreadyExists
        | tonic::Code::NotFound
        | tonic::Code::PermissionDenied => LogError::RefusedByLeader(status.message().to_string()),
        _ => LogError::Peer { addr: addr.to_string(), reason: status.message().to_string() },
    }
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> LogError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => LogError::Membership(e.to_string()),
        other => other.into(),
    }
}

fn raft_config() -> Result<Config, LogError> {
    Config {
        cluster_name: "vigo".to_string(),
        heartbeat_interval: limits::HEARTBEAT_INTERVAL_MS,
        election_timeout_min: limits::ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: limits::ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(limits::SNAPSHOT_LOGS_SINCE_LAST),
        max_in_snapshot_log_to_keep: limits::LOGS_KEPT_AFTER_SNAPSHOT,
        max_payload_entries: limits::MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| LogError::Fatal(format!("invalid raft config: {e}")))
}

fn wait_error(e: WaitError) -> LogError {
    match e {
        WaitError::ShuttingDown => LogError::Shutdown,
        WaitError::Timeout(..) => LogError::Fatal(e.to_string()),
    }
}

/// What [`LogNode::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This peer.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Index of the last entry in its log.
    pub last_log_index: u64,
    /// Index of the last entry it applied.
    pub applied_index: u64,
    /// Index of the last event in its history.
    pub last_event_index: u64,
    /// Hash of that event.
    pub last_event_hash: [u8; 32],
    /// Log index its current snapshot covers (0: none).
    pub snapshot_index: u64,
    /// Log index through which its Raft log was purged (0: none).
    pub purged_index: u64,
    /// The members, voters and learners.
    pub members: Vec<Member>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub node_id: u64,
    /// The address it serves on.
    pub addr: String,
    /// Whether it votes (else a learner).
    pub voter: bool,
    /// On the leader: the last index it has replicated to this member.
    pub matched_index: Option<u64>,
}
