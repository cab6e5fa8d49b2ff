//! The one RocksDB database under `DATA_DIR/log` and its column families:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `logs` | Raft log index, u64 big-endian | postcard `Entry` |
//! | `store` | `vote`, `last_purged`, `committed` | postcard |
//! | `history` | event index, u64 big-endian | protobuf `EventEnvelope`, never purged |
//! | `sm` | `last_applied`, `last_membership`, `snapshot` | postcard |
//!
//! Big-endian keys sort numerically, so range scans and "last entry" are plain iterator moves.
//! One database (not one per concern) so a state-machine write batch can cover `history` and
//! `sm` atomically, and one WAL fsync covers everything written before it.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::LogError;
use crate::history::History;
use crate::log_store::LogStore;
use crate::snapshot::Receiving;
use crate::state_machine::StateMachineStore;

/// Raft log entries.
pub(crate) const CF_LOGS: &str = "logs";
/// Raft's own records: vote, last purged log id, committed log id.
pub(crate) const CF_STORE: &str = "store";
/// The event history archive.
pub(crate) const CF_HISTORY: &str = "history";
/// State-machine bookkeeping: last applied log id, membership, current snapshot.
pub(crate) const CF_SM: &str = "sm";

const COLUMN_FAMILIES: [&str; 4] = [CF_LOGS, CF_STORE, CF_HISTORY, CF_SM];

/// Opens (or creates) the log database in `log_dir` and the Raft storage on top of it.
///
/// The state machine replays and verifies the whole history (I-4) to rebuild the state, so a
/// corrupt archive fails here with the index of the first bad event.
pub fn open_storage(log_dir: &Path) -> Result<(LogStore, StateMachineStore), LogError> {
    let db = open_db(log_dir)?;
    let receiving = Receiving::default();
    let sm = StateMachineStore::open(db.clone(), receiving.clone())?;
    Ok((LogStore::new(db, receiving), sm))
}

impl History {
    /// Opens the history of the log database in `log_dir` on its own, without Raft: what an
    /// offline audit or repair tool needs. Fails if a node holds the database open.
    pub fn open(log_dir: &Path) -> Result<History, LogError> {
        Ok(History::new(open_db(log_dir)?))
    }
}

pub(crate) fn open_db(log_dir: &Path) -> Result<Arc<DB>, LogError> {
    std::fs::create_dir_all(log_dir).map_err(|e| LogError::storage(&format!("create {}", log_dir.display()), e))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = COLUMN_FAMILIES.map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, log_dir, cfs)
        .map_err(|e| LogError::storage(&format!("open {}", log_dir.display()), e))?;
    Ok(Arc::new(db))
}

/// The handle of a column family; every one is created by `open_db`, so absence is a bug.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is opened with the database"))
}

/// Key of a log or event index.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a key written by [`index_key`].
pub(crate) fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Write options that fsync the WAL before returning: for what Raft must not forget (log
/// entries, votes) and what openraft may purge the log against (installed snapshots).
pub(crate) fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Reads and decodes one postcard value.
pub(crate) fn get<T: DeserializeOwned>(db: &DB, cf_name: &str, key: &str) -> Result<Option<T>, String> {
    match db.get_pinned_cf(cf(db, cf_name), key).map_err(|e| format!("read {cf_name}/{key}: {e}"))? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some).map_err(|e| format!("decode {cf_name}/{key}: {e}")),
    }
}
