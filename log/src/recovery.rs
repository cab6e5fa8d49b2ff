//! Forced recovery: when a cluster has lost its quorum for good, rebuild it from one survivor.
//!
//! Run on the survivor's data dir while its `vigosrv` is stopped. It appends to the survivor's
//! Raft log a membership entry naming this peer as the sole voter, and records that a recovery
//! is owed to the history. openraft takes the last membership in the log as the one in force,
//! so on its next start the peer elects itself, commits everything in its log, and
//! [`LogNode::open_peer`](crate::LogNode::open_peer) reports the pending recovery so that the
//! server records it as a `ClusterRecovered` event: the audit log shows when membership was
//! forced, by which peer, and which peers it dropped.
//!
//! Writes the survivor had not committed may be committed now, and writes the lost peers
//! committed without it are gone with them. The lost peers must never start again with their
//! old data: they would still form a quorum among themselves under the old membership.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::db::{self, CF_LOGS, CF_SM, CF_STORE};
use crate::error::LogError;
use crate::log_store::{KEY_LAST_PURGED, KEY_VOTE};
use crate::state_machine::KEY_LAST_MEMBERSHIP;
use crate::types::{Entry, LogId, StoredMembership};

/// Key of the [`PendingRecovery`] in the `store` column family.
pub(crate) const KEY_RECOVERY: &str = "recovery";

/// A forced recovery not yet recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecovery {
    /// The survivor, now the sole voter.
    pub node_id: u64,
    /// The members it dropped.
    pub lost: Vec<u64>,
}

/// What [`force_sole_voter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The survivor.
    pub node_id: u64,
    /// The members it dropped.
    pub lost: Vec<u64>,
    /// Log index of the membership entry it appended.
    pub log_index: u64,
    /// The term it wrote it in.
    pub term: u64,
}

/// Makes peer `node_id` the sole voter of the cluster whose log is under `dir` (see the module
/// docs). Refuses when the log is open elsewhere (a running server), was never part of a
/// cluster, or does not count `node_id` as a member.
pub fn force_sole_voter(dir: &Path, node_id: u64) -> Result<Recovered, LogError> {
    let log_dir = dir.join("log");
    if !log_dir.exists() {
        return Err(LogError::Storage(format!("{} holds no log", dir.display())));
    }
    let db = db::open_db(&log_dir).map_err(|e| match e {
        LogError::Storage(msg) if msg.contains("lock") => {
            LogError::Storage(format!("the log under {} is in use: stop vigosrv first", dir.display()))
        }
        other => other,
    })?;
    let vote: Option<Vote<u64>> = db::get(&db, CF_STORE, KEY_VOTE).map_err(LogError::Storage)?;
    let purged: Option<LogId> = db::get(&db, CF_STORE, KEY_LAST_PURGED).map_err(LogError::Storage)?;
    // The membership in force: the last one in the log, else the one the state machine holds.
    let mut last: Option<LogId> = None;
    let mut membership: Option<Membership<u64, BasicNode>> = None;
    for item in db.iterator_cf(db::cf(&db, CF_LOGS), IteratorMode::End) {
        let (_, value) = item?;
        let entry: Entry = db::decode(&value).map_err(|e| LogError::storage("decode a log entry", e))?;
        last = last.or(Some(entry.log_id));
        if let EntryPayload::Membership(m) = entry.payload {
            membership = Some(m);
            break;
        }
    }
    let last = last.or(purged);
    let membership = match membership {
        Some(m) => m,
        None => {
            let stored: Option<StoredMembership> =
                db::get(&db, CF_SM, KEY_LAST_MEMBERSHIP).map_err(LogError::Storage)?;
            stored.map(|s| s.membership().clone()).ok_or_else(|| {
                LogError::Storage(format!("{} was never part of a cluster: nothing to recover", dir.display()))
            })?
        }
    };
    let node = membership
        .get_node(&node_id)
        .cloned()
        .ok_or_else(|| LogError::Membership(format!("peer {node_id} is not a member of the cluster in this log")))?;
    let lost: Vec<u64> = membership.nodes().map(|(id, _)| *id).filter(|id| *id != node_id).collect();

    let term = vote.map_or(0, |v| v.leader_id().term).max(last.map_or(0, |l| l.leader_id.term)) + 1;
    let log_index = last.map_or(0, |l| l.index) + 1;
    let sole = Membership::new(vec![BTreeSet::from([node_id])], BTreeMap::from([(node_id, node)]));
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node_id), log_index),
        payload: EntryPayload::Membership(sole),
    };
    let encode = |e: postcard::Error| LogError::storage("encode", e);
    let mut batch = WriteBatch::default();
    batch.put_cf(db::cf(&db, CF_LOGS), db::index_key(log_index), db::encode(&entry).map_err(encode)?);
    batch.put_cf(db::cf(&db, CF_STORE), KEY_VOTE, db::encode(&Vote::new(term, node_id)).map_err(encode)?);
    let pending = PendingRecovery { node_id, lost: lost.clone() };
    batch.put_cf(db::cf(&db, CF_STORE), KEY_RECOVERY, db::encode(&pending).map_err(encode)?);
    db.write_opt(batch, &db::synced())?;
    // Nothing after the new entry may survive from before (there is nothing, but be exact).
    let mut later =
        db.iterator_cf(db::cf(&db, CF_LOGS), IteratorMode::From(&db::index_key(log_index + 1), Direction::Forward));
    if later.next().is_some() {
        return Err(LogError::Fatal("entries after the recovery entry appeared while it was written".into()));
    }
    tracing::warn!(node_id, ?lost, term, log_index, "forced this peer to be the sole voter");
    Ok(Recovered { node_id, lost, log_index, term })
}
