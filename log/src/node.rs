//! `LogNode`, the facade the server uses: open the log (initializing a single-voter cluster in
//! an empty directory), propose events and get them back sealed once committed and applied
//! (I-2), read the latest state without locks (I-3), and read verified history (I-4).
//!
//! The server reaches the log only through this type, so replacing the transport or growing
//! the cluster changes nothing above it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::sync::watch;
use vigo_proto::events::{EventEnvelope, EventProposal};
use vigo_state::{ControlError, ControlState, envelope_hash};

use crate::db::open_storage;
use crate::error::LogError;
use crate::history::History;
use crate::limits;
use crate::network::Network;
use crate::state_machine::Projection;
use crate::types::{Proposal, TypeConfig};

/// A running log node. `Send + Sync`; share it behind an `Arc`.
pub struct LogNode {
    raft: Raft<TypeConfig>,
    projection: Arc<Projection>,
    history: History,
    node_id: u64,
}

impl LogNode {
    /// Opens (or creates) the log under `dir` (the database lives in `dir/log`).
    ///
    /// A fresh directory initializes a single-voter cluster of this node, known by `addr`. The
    /// state is rebuilt by replaying the verified history from index 1. Returns once this node
    /// leads and has applied every entry in its log, so [`state`](Self::state) covers every
    /// event committed before a restart; gives up after [`limits::LEADER_WAIT`].
    pub async fn open(dir: &Path, node_id: u64, addr: String) -> Result<LogNode, LogError> {
        let (log_store, state_machine) = open_storage(&dir.join("log"))?;
        let projection = state_machine.projection();
        let history = state_machine.history();
        let raft = Raft::new(node_id, Arc::new(raft_config()?), Network, log_store, state_machine).await?;
        let node = LogNode { raft, projection, history, node_id };
        if let Err(e) = node.start(addr).await {
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

    /// Appends `proposal` and returns its sealed envelope once it is committed and applied
    /// (I-2): by then [`state`](Self::state) includes it.
    ///
    /// The event is checked against the current state first, so a caller's mistake is refused
    /// here instead of stopping every peer at apply (I-1). That check is only final when
    /// proposals are serialized, as the server does under its write lock.
    pub async fn propose(&self, proposal: EventProposal) -> Result<EventEnvelope, LogError> {
        let event = proposal.event.as_ref().ok_or(ControlError::Empty)?;
        self.state().validate(event, proposal.proposed_at_ms)?;
        let response = self.raft.client_write(Proposal::new(&proposal)).await?;
        let env = response.data.envelope.ok_or_else(|| {
            LogError::Fatal(format!("log entry {} was applied without producing an event", response.log_id.index))
        })?;
        // I-4 on a second path: what we acknowledge is what its hash says.
        if env.hash.as_slice() != envelope_hash(&env).as_slice() {
            return Err(LogError::Chain { index: env.index, reason: "sealed envelope does not match its hash".into() });
        }
        Ok(env)
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
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
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
        ClusterStatus {
            node_id: self.node_id,
            role: format!("{:?}", metrics.state).to_ascii_lowercase(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            members,
        }
    }

    /// The openraft handle, for metrics and (later) the peer transport's server side.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops the Raft node. Afterwards proposals fail with [`LogError::Shutdown`]; state and
    /// history stay readable. The database closes when this `LogNode` is dropped.
    pub async fn shutdown(&self) -> Result<(), LogError> {
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
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Initializes a fresh cluster, then waits until this node leads and has caught up.
    async fn start(&self, addr: String) -> Result<(), LogError> {
        if !self.raft.is_initialized().await? {
            let members = BTreeMap::from([(self.node_id, BasicNode::new(&addr))]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| LogError::Fatal(format!("cannot initialize the cluster: {e}")))?;
            tracing::info!(node_id = self.node_id, %addr, "initialized a single-voter raft cluster");
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

fn raft_config() -> Result<Config, LogError> {
    Config {
        cluster_name: "vigo".to_string(),
        heartbeat_interval: limits::HEARTBEAT_INTERVAL_MS,
        election_timeout_min: limits::ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: limits::ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(limits::SNAPSHOT_LOGS_SINCE_LAST),
        max_in_snapshot_log_to_keep: limits::LOGS_KEPT_AFTER_SNAPSHOT,
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
