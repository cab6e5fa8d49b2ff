//! The state machine (openraft's `RaftStateMachine`): the one place committed entries become
//! events. For each committed proposal it seals the next `EventEnvelope` (event index, log
//! index, predecessor's hash, own hash — I-4), folds it into `ControlState` (I-1: pure, panics
//! rather than diverge), and archives it in `history`. The archive and the last-applied log id
//! go into *one* write batch, so a crash never leaves them out of step.
//!
//! After each batch the new state is published as an immutable `Arc<ControlState>` through an
//! `ArcSwap` — check-ins load it without locks (I-3) — and the last applied event index is
//! sent on a `watch` channel.

use std::io::Cursor;
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, Snapshot, StorageIOError};
use prost::Message;
use rocksdb::{DB, WriteBatch};
use tokio::sync::watch;
use vigo_state::{ControlState, seal};

use crate::crash;
use crate::db::{self, CF_SM};
use crate::error::LogError;
use crate::history::{self, History};
use crate::log_store;
use crate::snapshot::{self, Receiving, SnapshotBuilder, SnapshotRecord};
use crate::types::{
    Applied, AppliedEvent, Entry, LogId, Proposal, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use vigo_proto::events::EventProposal;

const KEY_LAST_APPLIED: &str = "last_applied";
pub(crate) const KEY_LAST_MEMBERSHIP: &str = "last_membership";

/// The latest applied state, shared between the state machine (writer) and readers.
pub(crate) struct Projection {
    state: ArcSwap<ControlState>,
    applied_index: watch::Sender<u64>,
}

impl Projection {
    fn new(state: ControlState) -> Self {
        let (applied_index, _) = watch::channel(state.last_index());
        Self { state: ArcSwap::from_pointee(state), applied_index }
    }

    /// The latest applied state; lock-free.
    pub(crate) fn state(&self) -> Arc<ControlState> {
        self.state.load_full()
    }

    /// A receiver of the last applied event index.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    fn publish(&self, state: &ControlState) {
        // O(1): the state's maps are persistent.
        self.state.store(Arc::new(state.clone()));
        self.applied_index.send_replace(state.last_index());
    }
}

/// The RocksDB-backed state machine. See the module docs.
pub struct StateMachineStore {
    db: Arc<DB>,
    history: History,
    state: ControlState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    projection: Arc<Projection>,
    receiving: Receiving,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, rebuilding the state by replaying the archive from
    /// index 1 (verifying the chain).
    pub(crate) fn open(db: Arc<DB>, receiving: Receiving) -> Result<Self, LogError> {
        let history = History::new(db.clone());
        let state = history.replay()?;
        let last_applied: Option<LogId> = db::get(&db, CF_SM, KEY_LAST_APPLIED).map_err(LogError::Storage)?;
        let last_membership: StoredMembership =
            db::get(&db, CF_SM, KEY_LAST_MEMBERSHIP).map_err(LogError::Storage)?.unwrap_or_default();
        // Both are written in the same batch as every event, so events without an applied log
        // id mean the database was assembled by hand.
        if state.last_index() > 0 && last_applied.is_none() {
            return Err(LogError::Storage("history holds events but no applied log id is recorded".to_string()));
        }
        tracing::info!(events = state.last_index(), ?last_applied, "state rebuilt from the history");
        let projection = Arc::new(Projection::new(state.clone()));
        Ok(Self { db, history, state, last_applied, last_membership, projection, receiving })
    }

    /// The latest published state (as readers see it).
    pub fn state(&self) -> Arc<ControlState> {
        self.projection.state()
    }

    /// The history archive this state machine writes.
    pub fn history(&self) -> History {
        self.history.clone()
    }

    pub(crate) fn projection(&self) -> Arc<Projection> {
        self.projection.clone()
    }

    /// Adds the applied log id and membership to `batch`.
    fn put_applied(
        &self,
        batch: &mut WriteBatch,
        applied: &LogId,
        membership: &StoredMembership,
    ) -> Result<(), postcard::Error> {
        let cf = db::cf(&self.db, CF_SM);
        batch.put_cf(cf, KEY_LAST_APPLIED, db::encode(applied)?);
        batch.put_cf(cf, KEY_LAST_MEMBERSHIP, db::encode(membership)?);
        Ok(())
    }
}

/// Seals each proposal of a committed entry as the next event after `state` and applies it.
///
/// The empty payload is openraft's default and records nothing (see [`Proposal`]).
fn seal_and_apply_all(state: &mut ControlState, proposals: &Proposal, log_index: u64) -> Applied {
    if proposals.is_empty() {
        return Applied::default();
    }
    // `LogNode::propose` encodes every entry itself, so bytes that do not decode were damaged
    // after commit; every peer holds the same bytes, so stopping is the only safe move.
    let proposals = proposals
        .decode()
        .unwrap_or_else(|e| panic!("I-1: committed log entry {log_index} is not a ProposalBatch: {e}"));
    Applied { events: proposals.into_iter().map(|p| seal_and_apply(state, p, log_index)).collect() }
}

/// Seals one committed proposal as the event after `state` and applies it.
///
/// A proposal is validated when proposed, against the proposer's state; after a leader change
/// a new leader may append behind an entry of its predecessor that this validation never saw.
/// So it is validated again here, against the state it actually follows: one that no longer
/// holds is dropped — on every peer alike, since they all apply the same entries to the same
/// state — and its proposer is told why (I-1).
fn seal_and_apply(state: &mut ControlState, mut proposal: EventProposal, log_index: u64) -> AppliedEvent {
    if let Some(event) = proposal.event.as_mut() {
        state.assign(event);
    }
    let valid = match &proposal.event {
        Some(event) => state.validate(event, proposal.proposed_at_ms),
        None => Err(vigo_state::ControlError::Empty),
    };
    if let Err(e) = valid {
        tracing::warn!(log_index, "committed proposal dropped: {e}");
        return AppliedEvent { envelope: None, refused: Some(e.to_string()) };
    }
    let env = seal(proposal, state.last_index() + 1, log_index, state.last_hash());
    state.apply(&env);
    AppliedEvent { envelope: Some(env), refused: None }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Work on copies (O(1)) and adopt them only once the batch is written, so a failed
        // write leaves memory and disk agreeing.
        let mut state = self.state.clone();
        let mut last_applied = self.last_applied;
        let mut membership = self.last_membership.clone();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::new();
        for entry in entries {
            last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(proposals) => seal_and_apply_all(&mut state, &proposals, entry.log_id.index),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    Applied::default()
                }
            };
            for env in applied.events.iter().filter_map(|e| e.envelope.as_ref()) {
                history::put(&self.db, &mut batch, env.index, &env.encode_to_vec());
            }
            replies.push(applied);
        }
        let Some(applied) = last_applied.filter(|_| !replies.is_empty()) else { return Ok(replies) };
        self.put_applied(&mut batch, &applied, &membership).map_err(|e| StorageIOError::apply(applied, &e))?;
        // Not fsynced: every entry applied here is already fsynced in `logs`, and sealing is
        // deterministic, so an apply lost to a crash is redone from the log with identical
        // envelopes. The log is purged only behind a snapshot, which fsyncs first.
        self.db.write(batch).map_err(|e| StorageIOError::apply(applied, &e))?;
        let events_before = self.state.last_index();
        (self.state, self.last_applied, self.last_membership) = (state, last_applied, membership);
        if self.state.last_index() != events_before {
            self.projection.publish(&self.state);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            history: self.history.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            last_event_index: self.state.last_index(),
            last_event_hash: self.state.last_hash(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.receiving.begin();
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let err = |verb, e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::new(ErrorSubject::Snapshot(Some(meta.signature())), verb, AnyError::error(e)).into()
        };
        let data = snapshot.into_inner();
        // Verify the whole chain before touching the archive (I-4 at snapshot load).
        let decoded = snapshot::decode_history(&data).map_err(|e| err(ErrorVerb::Read, &e))?;
        crash::point(crash::SNAPSHOT_INSTALL_BEFORE_WRITE);
        let mut batch = WriteBatch::default();
        history::delete_all(&self.db, &mut batch);
        for (index, raw) in &decoded.events {
            history::put(&self.db, &mut batch, *index, raw);
        }
        let cf = db::cf(&self.db, CF_SM);
        match &meta.last_log_id {
            Some(applied) => {
                batch.put_cf(cf, KEY_LAST_APPLIED, db::encode(applied).map_err(|e| err(ErrorVerb::Write, &e))?)
            }
            None => batch.delete_cf(cf, KEY_LAST_APPLIED),
        }
        batch.put_cf(
            cf,
            KEY_LAST_MEMBERSHIP,
            db::encode(&meta.last_membership).map_err(|e| err(ErrorVerb::Write, &e))?,
        );
        let record = SnapshotRecord {
            meta: meta.clone(),
            last_event_index: decoded.state.last_index(),
            last_event_hash: decoded.state.last_hash(),
        };
        snapshot::put_record(&self.db, &mut batch, &record).map_err(|e| err(ErrorVerb::Write, &e))?;
        // The log up to the snapshot goes with it, in the same batch (I-10).
        if let Some(last) = meta.last_log_id {
            log_store::purge_into(&self.db, &mut batch, last).map_err(|e| err(ErrorVerb::Write, &e))?;
        }
        // Fsynced: openraft purges its log behind an installed snapshot.
        self.db.write_opt(batch, &db::synced()).map_err(|e| err(ErrorVerb::Write, &e))?;
        self.receiving.end();
        crash::point(crash::SNAPSHOT_INSTALL_AFTER_WRITE);
        tracing::info!(snapshot_id = %meta.snapshot_id, events = record.last_event_index, "installed snapshot");
        self.state = decoded.state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.projection.publish(&self.state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        snapshot::current(&self.db, &self.history)
            .map_err(|e| StorageIOError::new(ErrorSubject::Snapshot(None), ErrorVerb::Read, AnyError::new(&e)).into())
    }
}
