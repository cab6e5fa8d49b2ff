//! The Raft log and vote, in the `logs` and `store` column families (openraft's
//! `RaftLogStorage`). Appends and votes are fsynced before openraft is told they are durable:
//! a vote or an entry acknowledged to a peer must survive a crash, or two leaders could be
//! elected for one term or a committed entry could vanish.
//!
//! Each append is fsynced before it returns. openraft 0.9's core waits for every append's flush
//! before it goes on (and only then replicates the entries), so fsyncing later, in groups,
//! would gain nothing: concurrent writes share an fsync by sharing a Raft entry instead
//! (`LogNode`'s proposal batches).
//!
//! Only this store purges: it deletes `logs` entries that a snapshot covers. The event history
//! lives elsewhere (`history`) and is never purged.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::db::{self, CF_LOGS, CF_STORE};
use crate::snapshot::Receiving;
use crate::types::{Entry, LogId, StorageError, TypeConfig};

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

/// The Raft log store. Cheap to clone: clones share the database and serve as log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    receiving: Receiving,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, receiving: Receiving) -> Self {
        Self { db, receiving }
    }

    // Helpers answer plain strings; the trait methods wrap them into openraft's (large)
    // `StorageError` with the subject and verb openraft expects.
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        db::get(&self.db, CF_STORE, key)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T, sync: bool) -> Result<(), String> {
        let bytes = db::encode(value).map_err(|e| format!("encode {key}: {e}"))?;
        let opts = if sync { db::synced() } else { rocksdb::WriteOptions::default() };
        self.db.put_cf_opt(db::cf(&self.db, CF_STORE), key, bytes, &opts).map_err(|e| format!("write {key}: {e}"))
    }

    /// The last entry's log id, decoded from the newest key of `logs`.
    fn last_log_id(&self) -> Result<Option<LogId>, String> {
        let mut iter = self.db.iterator_cf(db::cf(&self.db, CF_LOGS), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| format!("read the last log entry: {e}"))?;
                let entry: Entry = db::decode(&value).map_err(|e| format!("decode the last log entry: {e}"))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// Adds to `batch` the purge of every log entry up to `log_id` and the purge mark, together: a
/// crash cannot leave entries deleted without openraft knowing where the log now starts. The
/// mark never goes back.
pub(crate) fn purge_into(db: &DB, batch: &mut WriteBatch, log_id: LogId) -> Result<(), String> {
    let marked: Option<LogId> = db::get(db, CF_STORE, KEY_LAST_PURGED)?;
    let mark = marked.map_or(log_id, |marked| marked.max(log_id));
    batch.put_cf(db::cf(db, CF_STORE), KEY_LAST_PURGED, db::encode(&mark).map_err(|e| e.to_string())?);
    batch.delete_range_cf(db::cf(db, CF_LOGS), db::index_key(0), db::index_key(log_id.index + 1));
    Ok(())
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl FnOnce(String) -> StorageError {
    move |msg| StorageIOError::new(subject, verb, AnyError::error(msg)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let start_key = db::index_key(start);
        let iter = self.db.iterator_cf(db::cf(&self.db, CF_LOGS), IteratorMode::From(&start_key, Direction::Forward));
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = db::key_index(&key)
                .ok_or_else(|| StorageIOError::read_logs(AnyError::error(format!("malformed log key {key:?}"))))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = db::decode(&value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
            if entry.log_id.index != index {
                let msg = format!("entry stored under index {index} says {}", entry.log_id.index);
                return Err(StorageIOError::read_log_at_index(index, AnyError::error(msg)).into());
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta(KEY_LAST_PURGED).map_err(io_error(ErrorSubject::Logs, ErrorVerb::Read))?;
        let last_log_id = self.last_log_id().map_err(io_error(ErrorSubject::Logs, ErrorVerb::Read))?;
        // With every entry purged, the last log id is the last purged one.
        let last_log_id = last_log_id.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, true).map_err(io_error(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.read_meta(KEY_VOTE).map_err(io_error(ErrorSubject::Vote, ErrorVerb::Read))
    }

    // Not fsynced: openraft only uses it to re-apply committed entries sooner after a restart;
    // losing it costs a wait for the leader, never correctness.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(KEY_COMMITTED, &committed, false).map_err(io_error(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed =
            self.read_meta::<Option<LogId>>(KEY_COMMITTED).map_err(io_error(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch, one fsync for everything openraft hands over at once (group commit).
        let cf = db::cf(&self.db, CF_LOGS);
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = db::encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put_cf(cf, db::index_key(entry.log_id.index), bytes);
        }
        let result = self.db.write_opt(batch, &db::synced());
        // Tell openraft the outcome either way, so it does not wait on a write that failed.
        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        result.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the raft log from here on");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(db::cf(&self.db, CF_LOGS), db::index_key(log_id.index), db::index_key(u64::MAX));
        // Synced: a truncated (uncommitted, conflicting) entry must not reappear after a crash
        // behind entries appended in its place.
        self.db.write_opt(batch, &db::synced()).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, asked: LogId) -> Result<(), StorageError> {
        let write_err = |e: &dyn std::fmt::Display| StorageIOError::write_logs(AnyError::error(e));
        // Never past a durable snapshot, even when openraft asks before one is written (I-10).
        let Some(log_id) = self.receiving.purge_limit(&self.db, asked).map_err(|e| write_err(&e))? else {
            tracing::debug!(%asked, "not purging the raft log while a first snapshot comes in");
            return Ok(());
        };
        tracing::debug!(%log_id, %asked, "purging the raft log up to here (history is kept)");
        let mut batch = WriteBatch::default();
        purge_into(&self.db, &mut batch, log_id).map_err(|e| write_err(&e))?;
        // Not fsynced: purged entries are covered by a durable snapshot; if they reappear after
        // a crash, openraft purges them again.
        self.db.write(batch).map_err(|e| write_err(&e))?;
        Ok(())
    }
}
