//! The fleet snapshot: what [`FleetIndex`] observed and the traits in its [`TraitStore`],
//! written to SQLite (WAL) so a restart picks up where the server left off.
//!
//! Two tables, each row a protobuf message (`proto/vigo/fleet.proto`): `envoys` (an
//! [`EnvoyRecord`] per envoy) and `trait_nodes` (a [`NodeRow`] per interned value). Traits are
//! stored as the store holds them, one row per distinct value, so most of a host's inventory
//! is rows other hosts already wrote, and a document that did not change writes nothing.
//! What a host has of its own is mostly one row, its package list: a large array or object
//! keeps its children packed (delta-coded, deflated; `TraitNode.packed_children`). Once
//! written, such a value leaves the server's memory, and this file is where it is read back
//! from (through a read-only connection of its own; see `traits`, cold nodes).
//!
//! Writes come in groups of shards, one group per tick, so a flush interval is spread over
//! the whole interval instead of one burst. Each group is one transaction: after a crash the
//! file holds every group as of its last committed write, at most one interval old. A node's
//! row is deleted only a full round of groups after the node was freed, when every envoy
//! that pointed at it has had its new record written; so every committed record names rows
//! that exist, and a record whose rows are missing anyway (a file damaged by other means)
//! only costs that envoy its traits, which it sends again when asked.
//!
//! **Architecture Invariant (I-3):** the writer takes the fleet's shard locks only to copy out
//! dirty entries, and the trait store's lock once per document it writes; SQLite runs with no
//! lock held that a check-in takes.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use vigo_proto::fleet::trait_node::Kind as RowKind;
use vigo_proto::fleet::{EnvoyRecord, TraitNode as NodeRow};

use crate::fleet::{DirtyEnvoy, EnvoyObservation, FleetIndex};
use crate::traits::{COLD_MIN_IDS, ColdRows};

/// Version of the tables below, in SQLite's `user_version`. 2: large arrays and objects keep
/// their children packed (`TraitNode.packed_children`), which version 1 would misread.
const SCHEMA_VERSION: i64 = 2;

/// Most bytes a row's packed children may inflate to: far above any document the server
/// accepts (`TRAITS_BYTES_MAX`), so only a damaged row reaches it.
const PACKED_BYTES_MAX: u64 = 64 << 20;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS envoys (envoy_id TEXT PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS trait_nodes (row INTEGER PRIMARY KEY, node BLOB NOT NULL);
";

/// Why the snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("fleet snapshot {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Traits that left memory could not be read back.
    #[error("fleet snapshot {}: {reason}", path.display())]
    Cold {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file was written by a newer schema.
    #[error("fleet snapshot {}: schema version {found} is newer than this server's {SCHEMA_VERSION}", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
}

/// What [`FleetStore::load`] put back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Envoys restored.
    pub envoys: usize,
    /// Of those, envoys whose traits were restored.
    pub with_traits: usize,
    /// Envoys whose traits could not be rebuilt (missing or malformed rows); they are asked
    /// for their traits again.
    pub traits_lost: usize,
    /// Records that did not decode, skipped.
    pub unreadable: usize,
    /// Trait rows read.
    pub nodes: usize,
    /// Whether the rows did not match the rebuilt store one to one (a crash between a
    /// node's free and its row's deletion): the first flush rewrites the snapshot.
    pub rewrite: bool,
    /// Large trait values left in the file only, not in memory.
    pub cold: usize,
}

/// What one [`FleetStore::flush`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Envoy records written.
    pub envoys: usize,
    /// Trait rows written.
    pub nodes: usize,
    /// Trait rows deleted.
    pub deleted: usize,
    /// Time spent, copying out included.
    pub elapsed: Duration,
}

/// Which shards a flush writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Group `0` of `1` (of [`FleetIndex::n_shards`] shards split evenly).
    Group(usize, usize),
    /// Every shard, and every pending deletion: at shutdown.
    All,
}

/// The snapshot file and what the writer remembers between flushes.
pub struct FleetStore {
    conn: Connection,
    path: PathBuf,
    /// Freed rows by the flush that took them, oldest first; deleted a full round later.
    pending_deletes: VecDeque<Vec<u32>>,
    /// Set after a failed write: the next flush rewrites everything from empty tables.
    rewrite: bool,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore").field("path", &self.path).field("rewrite", &self.rewrite).finish()
    }
}

impl FleetStore {
    /// Opens (or creates) the snapshot at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sqlite = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(sqlite)?;
        // WAL with NORMAL sync: a process crash loses nothing committed; a power loss may lose
        // the last transactions, never consistency.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        // Only this server writes; an operator's `sqlite3` reading the file may hold it briefly.
        conn.busy_timeout(Duration::from_secs(1)).map_err(sqlite)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path: path.to_path_buf(), found });
        }
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite)?;
        Ok(Self { conn, path: path.to_path_buf(), pending_deletes: VecDeque::new(), rewrite: false })
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// Puts the snapshot back into `fleet` (meant for a fleet index not yet serving).
    pub fn load(&mut self, fleet: &FleetIndex) -> Result<LoadReport, StoreError> {
        let mut report = LoadReport::default();
        let mut rows = HashMap::new();
        self.each_row("SELECT row, node FROM trait_nodes", |id: u32, bytes| {
            // A row that does not decode gets a kind no node has: nothing rebuilds from it, and
            // the first flush deletes it with the other unused rows.
            let node = decode_row(bytes).unwrap_or(NodeRow { kind: -1, ..NodeRow::default() });
            rows.insert(id, node);
        })?;
        report.nodes = rows.len();
        let mut records = Vec::new();
        self.each_row("SELECT envoy_id, record FROM envoys", |envoy_id: String, bytes| {
            match EnvoyRecord::decode(bytes) {
                Ok(record) => records.push((envoy_id, record)),
                Err(_) => report.unreadable += 1,
            }
        })?;
        let roots: Vec<u32> = records.iter().map(|(_, r)| r.traits_root).filter(|&root| root != 0).collect();
        let restored = fleet.trait_store().restore(&rows, &roots);
        let mut roots = restored.roots.into_iter();
        drop(rows);
        for (envoy_id, record) in records {
            let traits = if record.traits_root == 0 { None } else { roots.next().flatten() };
            let mut observation = EnvoyObservation {
                last_seen_ms: record.last_seen_ms,
                last_counter: record.last_counter,
                traits_hash: record.traits_hash,
                traits,
                bundle_fingerprint: record.bundle_fingerprint,
                last_run: record.last_run,
                reports_received: record.reports_received,
            };
            match (record.traits_root, traits) {
                (0, _) => {}
                (_, Some(_)) => report.with_traits += 1,
                (_, None) => {
                    observation.traits_hash.clear();
                    report.traits_lost += 1;
                }
            }
            fleet.restore(&envoy_id, observation);
            report.envoys += 1;
        }
        // From here on large trait values leave memory once written, and are read back
        // from this file.
        fleet.trait_store().attach(Arc::new(SnapshotRows::open(&self.path)?));
        if restored.duplicates {
            // Rows written before a crash that no longer match the store one to one: the first
            // flush writes the whole fleet anew (and nothing goes cold before).
            self.start_over(fleet);
            report.rewrite = true;
        } else {
            report.cold = fleet.trait_store().evict_all_written();
        }
        Ok(report)
    }

    /// Runs `sql` (selecting a key and a blob) and hands each row to `f`.
    fn each_row<K: rusqlite::types::FromSql>(&self, sql: &str, mut f: impl FnMut(K, &[u8])) -> Result<(), StoreError> {
        let mut select = self.conn.prepare(sql).map_err(self.sqlite())?;
        let mut rows = select.query([]).map_err(self.sqlite())?;
        while let Some(row) = rows.next().map_err(self.sqlite())? {
            let key: K = row.get(0).map_err(self.sqlite())?;
            let bytes: Vec<u8> = row.get(1).map_err(self.sqlite())?;
            f(key, &bytes);
        }
        Ok(())
    }

    /// Writes the dirty envoys of `scope`, the trait rows they need and the deletions now
    /// due, in one transaction. After a failure the next flush rewrites the whole fleet.
    pub fn flush(&mut self, fleet: &FleetIndex, scope: Scope) -> Result<FlushReport, StoreError> {
        let started = Instant::now();
        let store = fleet.trait_store();
        // Work deferred off the check-in path: index updates, and freeing replaced documents'
        // cold values (both may read this file).
        fleet.settle_index();
        store.settle();
        if self.rewrite {
            // Rows given out since the last commit never made it to the file: start from none.
            // The store reads its cold nodes back first; when it cannot, this flush fails and
            // the next one tries again.
            store.forget_rows().map_err(|reason| StoreError::Cold { path: self.path.clone(), reason })?;
            self.pending_deletes.clear();
        }
        let scope = if self.rewrite { Scope::All } else { scope };
        // Freed rows are taken before the dirty envoys: an envoy that let go of a node did so
        // before the node was freed, so it is dirty by now, and its new record is written
        // within a round, before the row goes.
        self.pending_deletes.push_back(store.take_freed_rows());
        let (shards, deletes): (Range<usize>, Vec<u32>) = match scope {
            Scope::Group(group, groups) => {
                let groups = groups.clamp(1, FleetIndex::n_shards());
                let per_group = FleetIndex::n_shards().div_ceil(groups);
                let start = (group % groups * per_group).min(FleetIndex::n_shards());
                let due = if self.pending_deletes.len() > groups { self.pending_deletes.pop_front() } else { None };
                (start..(start + per_group).min(FleetIndex::n_shards()), due.unwrap_or_default())
            }
            Scope::All => (0..FleetIndex::n_shards(), self.pending_deletes.drain(..).flatten().collect()),
        };
        let dirty = fleet.take_dirty(shards);
        let mut nodes = Vec::new();
        let records: Vec<(&DirtyEnvoy, Vec<u8>)> = dirty
            .iter()
            .map(|envoy| {
                let traits_root = envoy.traits.as_ref().map_or(0, |held| store.assign_rows(held.root(), &mut nodes));
                (envoy, record_of(&envoy.observation, traits_root).encode_to_vec())
            })
            .collect();
        if !records.is_empty() || !deletes.is_empty() {
            tracing::debug!(
                envoys = records.len(),
                trait_rows = nodes.len(),
                deletes = deletes.len(),
                "writing the fleet snapshot"
            );
        }
        match self.write(&records, &nodes, &deletes) {
            Ok(()) => {
                let report = FlushReport {
                    envoys: records.len(),
                    nodes: nodes.len(),
                    deleted: deletes.len(),
                    elapsed: started.elapsed(),
                };
                store.rows_deleted(deletes);
                self.rewrite = false;
                store.evict_written(&nodes);
                Ok(report)
            }
            Err(e) => {
                self.start_over(fleet);
                Err(e)
            }
        }
    }

    /// Makes the next flush write the whole fleet into emptied tables.
    fn start_over(&mut self, fleet: &FleetIndex) {
        fleet.mark_all_dirty();
        self.rewrite = true;
    }

    fn write(
        &mut self,
        records: &[(&DirtyEnvoy, Vec<u8>)],
        nodes: &[(u32, NodeRow)],
        deletes: &[u32],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sqlite = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(sqlite)?;
        if self.rewrite {
            tx.execute_batch("DELETE FROM envoys; DELETE FROM trait_nodes;").map_err(sqlite)?;
        }
        {
            let mut delete = tx.prepare_cached("DELETE FROM trait_nodes WHERE row = ?1").map_err(sqlite)?;
            for row in deletes {
                delete.execute([row]).map_err(sqlite)?;
            }
            let mut insert =
                tx.prepare_cached("INSERT OR REPLACE INTO trait_nodes (row, node) VALUES (?1, ?2)").map_err(sqlite)?;
            for (row, node) in nodes {
                insert.execute(params![row, encode_row(node)]).map_err(sqlite)?;
            }
            let mut upsert = tx
                .prepare_cached("INSERT OR REPLACE INTO envoys (envoy_id, record) VALUES (?1, ?2)")
                .map_err(sqlite)?;
            for (envoy, record) in records {
                upsert.execute(params![&*envoy.envoy_id, record]).map_err(sqlite)?;
            }
        }
        tx.commit().map_err(sqlite)
    }

    /// The record of one envoy as stored, for tests and tools.
    pub fn record(&self, envoy_id: &str) -> Result<Option<EnvoyRecord>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT record FROM envoys WHERE envoy_id = ?1", [envoy_id], |row| row.get(0))
            .optional()
            .map_err(self.sqlite())?;
        Ok(bytes.and_then(|b| EnvoyRecord::decode(b.as_slice()).ok()))
    }

    /// Number of envoy records and trait rows stored.
    pub fn counts(&self) -> Result<(usize, usize), StoreError> {
        let count = |table: &str| -> Result<usize, StoreError> {
            let n: i64 = self
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
                .map_err(self.sqlite())?;
            Ok(n as usize)
        };
        Ok((count("envoys")?, count("trait_nodes")?))
    }
}

/// The snapshot as the trait store reads its cold nodes back: a read-only connection of its
/// own, which in WAL mode sees every committed flush and never waits for the writer.
struct SnapshotRows {
    conn: Mutex<Connection>,
}

impl SnapshotRows {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|source| StoreError::Sqlite { path: path.to_path_buf(), source })?;
        Ok(Self { conn: Mutex::new(conn) })
    }
}

impl ColdRows for SnapshotRows {
    fn children(&self, row: u32) -> Result<Vec<u32>, String> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = conn
            .prepare_cached("SELECT node FROM trait_nodes WHERE row = ?1")
            .and_then(|mut select| select.query_row([row], |r| r.get(0)))
            .map_err(|e| format!("trait row {row}: {e}"))?;
        let node = decode_row(&bytes).map_err(|e| format!("trait row {row} {e}"))?;
        Ok(node.children)
    }
}

/// Which earlier child a child's row is coded against: in an object names follow names and
/// values follow values.
fn stride(node: &NodeRow) -> usize {
    if node.kind == RowKind::Object as i32 { 2 } else { 1 }
}

/// A trait row as stored: a large array or object with its children packed (see
/// `TraitNode.packed_children`), anything else as it is.
fn encode_row(node: &NodeRow) -> Vec<u8> {
    if node.children.len() < COLD_MIN_IDS {
        return node.encode_to_vec();
    }
    let stride = stride(node);
    let mut varints = Vec::with_capacity(node.children.len() * 2);
    for (i, &row) in node.children.iter().enumerate() {
        let before = if i >= stride { node.children[i - stride] } else { 0 };
        let delta = i64::from(row) - i64::from(before);
        prost::encoding::encode_varint(((delta << 1) ^ (delta >> 63)) as u64, &mut varints);
    }
    let mut deflate = DeflateEncoder::new(Vec::new(), Compression::default());
    deflate.write_all(&varints).expect("deflating into memory");
    let packed = deflate.finish().expect("deflating into memory");
    NodeRow { children: Vec::new(), packed_children: packed, ..node.clone() }.encode_to_vec()
}

/// A trait row as read back, its children unpacked; why not, for a damaged row.
fn decode_row(bytes: &[u8]) -> Result<NodeRow, String> {
    let mut node = NodeRow::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
    if node.packed_children.is_empty() {
        return Ok(node);
    }
    let mut varints = Vec::new();
    DeflateDecoder::new(node.packed_children.as_slice())
        .take(PACKED_BYTES_MAX)
        .read_to_end(&mut varints)
        .map_err(|e| format!("has packed children that do not inflate: {e}"))?;
    let stride = stride(&node);
    let mut rest = varints.as_slice();
    let mut children: Vec<u32> = Vec::with_capacity(varints.len());
    while !rest.is_empty() {
        let zigzag = prost::encoding::decode_varint(&mut rest).map_err(|e| format!("has a bad packed child: {e}"))?;
        let delta = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        let before = if children.len() >= stride { children[children.len() - stride] } else { 0 };
        let row =
            u32::try_from(i64::from(before) + delta).map_err(|_| "has a packed child out of range".to_string())?;
        children.push(row);
    }
    node.children = children;
    node.packed_children = Vec::new();
    Ok(node)
}

fn record_of(observation: &EnvoyObservation, traits_root: u32) -> EnvoyRecord {
    EnvoyRecord {
        last_seen_ms: observation.last_seen_ms,
        last_counter: observation.last_counter,
        traits_hash: observation.traits_hash.clone(),
        traits_root,
        bundle_fingerprint: observation.bundle_fingerprint.clone(),
        last_run: observation.last_run,
        reports_received: observation.reports_received,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: RowKind, children: Vec<u32>) -> NodeRow {
        NodeRow { kind: kind as i32, children, ..NodeRow::default() }
    }

    #[test]
    fn large_rows_pack_their_children_and_read_back_the_same() {
        // A package list: names and values each mostly in the order their rows were given.
        let mut children = Vec::new();
        for i in 0..400u32 {
            children.extend([10 + i, 5_000 + 3 * i]);
        }
        children[101] = u32::MAX; // a value far from its neighbours
        children[300] = 0;
        let object = row(RowKind::Object, children);
        let stored = encode_row(&object);
        assert!(stored.len() * 4 < object.encode_to_vec().len(), "{} bytes packed", stored.len());
        assert_eq!(decode_row(&stored).unwrap(), object);

        let array = row(RowKind::Array, (0..100).rev().collect());
        assert_eq!(decode_row(&encode_row(&array)).unwrap(), array);
        let small = row(RowKind::Object, vec![1, 2]);
        assert_eq!(encode_row(&small), small.encode_to_vec(), "small rows are stored as they are");
        assert_eq!(decode_row(&encode_row(&small)).unwrap(), small);
    }

    #[test]
    fn a_damaged_packed_row_is_refused_by_name() {
        let bad = NodeRow { kind: RowKind::Array as i32, packed_children: vec![1, 2, 3], ..NodeRow::default() };
        let err = decode_row(&bad.encode_to_vec()).unwrap_err();
        assert!(err.starts_with("has packed children that do not inflate"), "{err}");
        // Inflates, but to a row number below zero.
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::default());
        deflate.write_all(&[3]).unwrap();
        let below = NodeRow { packed_children: deflate.finish().unwrap(), ..bad };
        assert_eq!(decode_row(&below.encode_to_vec()).unwrap_err(), "has a packed child out of range");
    }
}
