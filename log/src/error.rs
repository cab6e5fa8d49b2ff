//! `LogError`, the one error type of this crate. It keeps "this request failed" (not the
//! leader, refused) apart from "this node's log is broken or gone" (storage, chain, shutdown,
//! fatal), so callers can retry the first kind elsewhere and must stop on the second.

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, StorageError};
use vigo_state::ControlError;

/// Why a log operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// This node is not the leader; writes go to `leader_hint` (its address) when known.
    #[error("not the leader{}", leader_suffix(.leader_hint))]
    NotLeader {
        /// Address of the current leader, if this node knows one.
        leader_hint: Option<String>,
    },
    /// The proposal is not valid against the current state; nothing was appended.
    #[error("proposal refused: {0}")]
    Refused(#[from] ControlError),
    /// The leader refused a proposal this peer forwarded to it; nothing was stored.
    #[error("proposal refused by the leader: {0}")]
    RefusedByLeader(String),
    /// The proposal was committed behind another that made it invalid, so no event was
    /// sealed for it (see `state_machine::seal_and_apply`); nothing was stored.
    #[error("proposal refused when committed: {0}")]
    Stale(String),
    /// No leader is known: too few voters are reachable to elect one.
    #[error("no leader: writes are refused until a quorum of voters is reachable and elects one")]
    NoLeader,
    /// This peer leads but cannot reach a quorum of voters, or the write did not commit in time.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The leader this peer knows of does not answer.
    #[error(
        "the leader at {addr} cannot be reached ({reason}); writes are refused until a quorum of voters elects a leader"
    )]
    LeaderUnreachable {
        /// Its address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// Another peer sent a request this one cannot read.
    #[error("malformed peer request: {0}")]
    BadRequest(String),
    /// A membership or leadership change cannot be made.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Another peer could not be asked, or failed to answer.
    #[error("peer {addr}: {reason}")]
    Peer {
        /// The peer asked.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// RocksDB or openraft storage failed.
    #[error("log storage failed: {0}")]
    Storage(String),
    /// The stored history does not verify (I-4); `index` is the first event that fails.
    #[error("history is corrupt at event {index}: {reason}")]
    Chain {
        /// Event index of the first envelope that does not verify.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The log was shut down.
    #[error("the log is shut down")]
    Shutdown,
    /// The Raft node stopped working and must be restarted.
    #[error("the log failed: {0}")]
    Fatal(String),
}

fn leader_suffix(leader_hint: &Option<String>) -> String {
    leader_hint.as_ref().map(|leader| format!("; the leader is {leader}")).unwrap_or_default()
}

impl LogError {
    /// Wraps any storage-layer failure with what was being done.
    pub(crate) fn storage(context: &str, e: impl std::fmt::Display) -> Self {
        LogError::Storage(format!("{context}: {e}"))
    }
}

impl From<rocksdb::Error> for LogError {
    fn from(e: rocksdb::Error) -> Self {
        LogError::storage("rocksdb", e)
    }
}

impl From<StorageError<u64>> for LogError {
    fn from(e: StorageError<u64>) -> Self {
        LogError::storage("raft storage", e)
    }
}

impl From<Fatal<u64>> for LogError {
    fn from(e: Fatal<u64>) -> Self {
        match e {
            Fatal::Stopped => LogError::Shutdown,
            Fatal::StorageError(e) => e.into(),
            Fatal::Panicked => LogError::Fatal("the raft core panicked".to_string()),
        }
    }
}

impl From<RaftError<u64, ClientWriteError<u64, BasicNode>>> for LogError {
    fn from(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                LogError::NotLeader { leader_hint: f.leader_node.map(|n| n.addr) }
            }
            // client_write never changes membership; if openraft says so anyway, the node is confused.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => LogError::Fatal(e.to_string()),
            RaftError::Fatal(f) => f.into(),
        }
    }
}
