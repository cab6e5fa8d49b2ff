//! The history archive: every committed event as a protobuf `EventEnvelope` in the `history`
//! column family, keyed by event index, from index 1, forever. Raft compaction never touches
//! it, so auditors replay from index 1 at any time.
//!
//! Every read verifies the hash chain (I-4) as it goes: a read from index `n` starts from the
//! stored hash of event `n - 1` (itself checked against its contents), a read from 1 from the
//! genesis hash. The first event that does not verify fails the read with its index. Writes
//! happen only in the state machine's apply and snapshot install batches.

use std::sync::Arc;

use prost::Message;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use vigo_proto::events::EventEnvelope;
use vigo_state::chain::to_hash;
use vigo_state::{ChainError, ControlState, GENESIS_HASH, envelope_hash, verify_next};

use crate::db::{self, CF_HISTORY};
use crate::error::LogError;

/// Read access to the history archive. Cheap to clone; safe to use from any thread while the
/// log runs (reads see a consistent RocksDB view; events, once written, never change).
#[derive(Clone)]
pub struct History {
    db: Arc<DB>,
}

/// Verifies `envelopes` as a chain from index 1 and applies each in turn: what an auditor does
/// with a copy of the history. Stops at the first envelope that does not verify.
///
/// Panics, like [`ControlState::apply`], on an event that chains correctly but is not valid
/// against the state (I-1): such a history was never produced by a Vigo log.
pub fn replay(envelopes: impl IntoIterator<Item = EventEnvelope>) -> Result<ControlState, ChainError> {
    let mut state = ControlState::default();
    for env in envelopes {
        verify_next(&state.last_hash(), state.last_index(), &env)?;
        state.apply(&env);
    }
    Ok(state)
}

impl History {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    /// How many handles share the database (so shutdown can wait for openraft's to go).
    /// The database the history lives in.
    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub(crate) fn n_handles(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Up to `limit` events from `from_index` on (0 reads from 1), verified. An index past the
    /// end gives an empty list.
    pub fn read(&self, from_index: u64, limit: usize) -> Result<Vec<EventEnvelope>, LogError> {
        let mut out = Vec::new();
        self.scan(from_index, u64::MAX, limit, |_, env| out.push(env))?;
        Ok(out)
    }

    /// Index of the newest archived event (0 when empty), as stored: not verified.
    pub fn last_index(&self) -> Result<u64, LogError> {
        let mut iter = self.db.iterator_cf(db::cf(&self.db, CF_HISTORY), IteratorMode::End);
        match iter.next() {
            None => Ok(0),
            Some(item) => {
                let (key, _) = item?;
                db::key_index(&key).ok_or_else(|| malformed_key(&key))
            }
        }
    }

    /// Rebuilds the state by replaying the whole archive from index 1, verifying the chain.
    pub fn replay(&self) -> Result<ControlState, LogError> {
        let mut state = ControlState::default();
        self.scan(1, u64::MAX, usize::MAX, |_, env| state.apply(&env))?;
        Ok(state)
    }

    /// Visits the verified events `from_index..=through_index`, at most `limit` of them, with
    /// their stored bytes and decoded form.
    pub(crate) fn scan(
        &self,
        from_index: u64,
        through_index: u64,
        limit: usize,
        mut visit: impl FnMut(&[u8], EventEnvelope),
    ) -> Result<(), LogError> {
        let from = from_index.max(1);
        if limit == 0 || from > through_index {
            return Ok(());
        }
        // Start at the predecessor (key 0 holds nothing, so from 1 this starts at event 1): one
        // iterator, so the predecessor and the events read are from the same consistent view.
        let start_key = db::index_key(from - 1);
        let mut iter =
            self.db.iterator_cf(db::cf(&self.db, CF_HISTORY), IteratorMode::From(&start_key, Direction::Forward));
        let (mut prev_index, mut prev_hash) = (0, GENESIS_HASH);
        if from > 1 {
            let Some(item) = iter.next() else { return Ok(()) };
            let (key, value) = item?;
            let (index, env) = decode_stored(&key, &value)?;
            if index != from - 1 {
                return Err(LogError::Chain { index: from - 1, reason: "missing from the archive".to_string() });
            }
            // The predecessor's link to its own predecessor is not checked (that would need the
            // whole prefix), but its hash must match its contents before we trust it.
            let hash = envelope_hash(&env);
            if env.hash.as_slice() != hash.as_slice() {
                return Err(chain_error(ChainError::Altered { index }));
            }
            (prev_index, prev_hash) = (index, hash);
        }
        for item in iter.take(limit) {
            let (key, value) = item?;
            let (index, env) = decode_stored(&key, &value)?;
            if index > through_index {
                break;
            }
            verify_next(&prev_hash, prev_index, &env).map_err(chain_error)?;
            (prev_index, prev_hash) = (env.index, to_hash(&env.hash));
            visit(&value, env);
        }
        Ok(())
    }
}

/// Adds event `index` with its encoded envelope to `batch`.
pub(crate) fn put(db: &DB, batch: &mut WriteBatch, index: u64, encoded: &[u8]) {
    batch.put_cf(db::cf(db, CF_HISTORY), db::index_key(index), encoded);
}

/// Adds the deletion of the whole archive to `batch` (snapshot install replaces it).
pub(crate) fn delete_all(db: &DB, batch: &mut WriteBatch) {
    batch.delete_range_cf(db::cf(db, CF_HISTORY), db::index_key(0), db::index_key(u64::MAX));
}

/// The index a chain error is about: the missing one for a gap, else the offending event.
pub(crate) fn chain_error(e: ChainError) -> LogError {
    let index = match &e {
        ChainError::Gap { prev, .. } => prev + 1,
        ChainError::BrokenLink { index } | ChainError::Altered { index } => *index,
    };
    LogError::Chain { index, reason: e.to_string() }
}

fn decode_stored(key: &[u8], value: &[u8]) -> Result<(u64, EventEnvelope), LogError> {
    let index = db::key_index(key).ok_or_else(|| malformed_key(key))?;
    let env = EventEnvelope::decode(value)
        .map_err(|e| LogError::Chain { index, reason: format!("stored envelope does not decode: {e}") })?;
    if env.index != index {
        return Err(LogError::Chain {
            index,
            reason: format!("envelope stored under index {index} says {}", env.index),
        });
    }
    Ok((index, env))
}

fn malformed_key(key: &[u8]) -> LogError {
    LogError::Storage(format!("malformed history key {}", hex::encode(key)))
}
