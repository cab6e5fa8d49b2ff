//! openraft's storage conformance suite against the RocksDB log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;
use vigo_log::{LogStore, StateMachineStore, TypeConfig, open_storage};

/// Each suite case gets a fresh database in its own temporary directory, removed afterwards.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log_store, state_machine) =
            open_storage(dir.path()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log_store, state_machine))
    }
}

// A plain test: the suite runs each case in a runtime of its own.
#[test]
fn rocksdb_store_passes_the_openraft_storage_suite() {
    Suite::test_all(RocksBuilder).unwrap();
}
