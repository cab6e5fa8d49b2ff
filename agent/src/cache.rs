//! The envoy's durable local state, in LMDB (heed) under `<data_dir>/cache`: the last verified
//! bundle (so the host converges while the server is away), the check-in counter (anti-replay:
//! it must only grow, across restarts and concurrent processes), the queue of run reports not
//! yet accepted by the server, and small metadata values (envoy id and the like).
//!
//! Values are protobuf (only `proto` types cross the disk boundary); counters and queue keys are
//! big-endian `u64`, so LMDB's byte order is their numeric order. Every method is one short
//! transaction; LMDB serialises writers across processes, which is what makes the counter safe
//! against a second `envoy` started by mistake.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use prost::Message;
use vigo_proto::agent::RunReport;
use vigo_proto::bundle::SignedBundle;

use crate::limits::{CACHE_MAP_BYTES, META_VALUE_BYTES_MAX, RUN_QUEUE_LEN_MAX};
use crate::{Error, Result};

/// Keys of the envoy's own entries in the `state` database.
const KEY_BUNDLE: &str = "bundle";
const KEY_COUNTER: &str = "counter";
const KEY_RUN_SEQ: &str = "run_seq";

/// The LMDB environment and its three databases.
pub struct Cache {
    env: Env<WithoutTls>,
    /// Entries the cache itself manages (bundle, counter, run sequence).
    state: Database<'static, Str, Bytes>,
    /// Caller-owned small values; a separate database so a caller key can never clobber ours.
    meta: Database<'static, Str, Bytes>,
    /// Queued run reports by increasing key.
    runs: Database<'static, U64<BigEndian>, Bytes>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.env.path()).finish()
    }
}

impl Cache {
    /// Opens (creating if needed) the cache in `<data_dir>/cache`. One process may hold it open
    /// once at a time; a second `open` of the same directory in one process fails.
    pub fn open(data_dir: &Path) -> Result<Cache> {
        let dir = data_dir.join("cache");
        std::fs::create_dir_all(&dir).map_err(|source| Error::CacheDir { path: dir.clone(), source })?;
        let env = open_env(&dir)?;
        let wtxn = env.write_txn()?;
        let (state, meta, runs) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let state = opener.create_database::<Str, Bytes>(wtxn, Some("state"))?;
                let meta = opener.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                let runs = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("runs"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((state, meta, runs)))
            })?
            .unwrap_commit();
        Ok(Cache { env, state, meta, runs })
    }

    /// Directory of the LMDB files.
    pub fn path(&self) -> PathBuf {
        self.env.path().to_path_buf()
    }

    /// Stores `bundle` as the last verified one, replacing the previous. Verifying it is the
    /// caller's job: whatever is stored here is applied when the server is unreachable.
    pub fn store_bundle(&self, bundle: &SignedBundle) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        self.state.put(&mut wtxn, KEY_BUNDLE, &bundle.encode_to_vec())?;
        wtxn.commit()?;
        Ok(())
    }

    /// The last stored bundle, if any.
    pub fn load_bundle(&self) -> Result<Option<SignedBundle>> {
        let rtxn = self.env.read_txn()?;
        self.state
            .get(&rtxn, KEY_BUNDLE)?
            .map(|bytes| SignedBundle::decode(bytes).map_err(|source| Error::CacheDecode { what: "bundle", source }))
            .transpose()
    }

    /// The next check-in counter: `max(last + 1, now in µs since the epoch)`, persisted before
    /// it is returned. Strictly increasing across calls, restarts and processes; starting from
    /// the clock means a lost cache (a reinstalled host keeping its identity) still moves past
    /// every counter the server has seen, as long as the clock does not go back.
    pub fn next_counter(&self) -> Result<u64> {
        let mut wtxn = self.env.write_txn()?;
        let last = read_u64(self.state.get(&wtxn, KEY_COUNTER)?);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        let next = last.saturating_add(1).max(now_us);
        assert!(next > last, "counter must only grow (last {last})");
        self.state.put(&mut wtxn, KEY_COUNTER, &next.to_be_bytes())?;
        wtxn.commit()?;
        Ok(next)
    }

    /// Queues a run report and returns its key. Keys only grow, also after the queue drained.
    /// Beyond [`RUN_QUEUE_LEN_MAX`] queued reports the oldest are dropped.
    pub fn enqueue_run(&self, report: &RunReport) -> Result<u64> {
        let mut wtxn = self.env.write_txn()?;
        let key = read_u64(self.state.get(&wtxn, KEY_RUN_SEQ)?) + 1;
        self.state.put(&mut wtxn, KEY_RUN_SEQ, &key.to_be_bytes())?;
        self.runs.put(&mut wtxn, &key, &report.encode_to_vec())?;
        let excess = self.runs.len(&wtxn)?.saturating_sub(RUN_QUEUE_LEN_MAX);
        for _ in 0..excess {
            if let Some((oldest, _)) = self.runs.first(&wtxn)? {
                self.runs.delete(&mut wtxn, &oldest)?;
            }
        }
        wtxn.commit()?;
        Ok(key)
    }

    /// Up to `limit` queued reports, oldest first, with their keys. A report that no longer
    /// decodes is left out (and logged) rather than blocking the queue; it ages out through
    /// the bound.
    pub fn pending_runs(&self, limit: usize) -> Result<Vec<(u64, RunReport)>> {
        let rtxn = self.env.read_txn()?;
        let mut pending = Vec::new();
        for entry in self.runs.iter(&rtxn)? {
            if pending.len() >= limit {
                break;
            }
            let (key, bytes) = entry?;
            match RunReport::decode(bytes) {
                Ok(report) => pending.push((key, report)),
                Err(err) => tracing::warn!(key, error = %err, "queued run report does not decode"),
            }
        }
        Ok(pending)
    }

    /// Number of queued reports.
    pub fn n_pending_runs(&self) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        Ok(self.runs.len(&rtxn)?)
    }

    /// Removes reports the server accepted. Unknown keys (already dropped) are ignored.
    pub fn ack_runs(&self, keys: &[u64]) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        for key in keys {
            self.runs.delete(&mut wtxn, key)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// A small value stored under `key` by [`Cache::set_meta`].
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.meta.get(&rtxn, key)?.map(<[u8]>::to_vec))
    }

    /// Stores a small value (at most [`META_VALUE_BYTES_MAX`] bytes) under `key`.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        if value.len() > META_VALUE_BYTES_MAX {
            return Err(Error::MetaTooLarge { key: key.to_owned(), n_bytes: value.len(), limit: META_VALUE_BYTES_MAX });
        }
        let mut wtxn = self.env.write_txn()?;
        self.meta.put(&mut wtxn, key, value)?;
        wtxn.commit()?;
        Ok(())
    }
}

/// Opens the LMDB environment in `dir`.
#[allow(unsafe_code)]
fn open_env(dir: &Path) -> Result<Env<WithoutTls>> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(CACHE_MAP_BYTES).max_dbs(3);
    // SAFETY: heed marks opening unsafe because the memory map is undefined behaviour if the file
    // is changed behind LMDB's back. The directory is private to this envoy, only ever written
    // through LMDB with its lock file (no NO_LOCK flag), and on a local file system.
    let env = unsafe { options.open(dir)? };
    Ok(env)
}

/// A stored big-endian `u64`, 0 when absent or malformed.
fn read_u64(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(run_id: u64) -> RunReport {
        RunReport { run_id, noop: run_id.is_multiple_of(2), ..RunReport::default() }
    }

    #[test]
    fn bundle_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let bundle =
            SignedBundle { bundle: b"encoded bundle".to_vec(), signature: vec![7; 64], fingerprint: vec![1; 32] };
        {
            let cache = Cache::open(dir.path()).unwrap();
            assert_eq!(cache.load_bundle().unwrap(), None);
            cache.store_bundle(&bundle).unwrap();
            assert_eq!(cache.load_bundle().unwrap().as_ref(), Some(&bundle));
        }
        let cache = Cache::open(dir.path()).unwrap();
        assert_eq!(cache.load_bundle().unwrap(), Some(bundle));
        assert!(cache.path().starts_with(dir.path().join("cache")));
    }

    #[test]
    fn counter_strictly_increases_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let cache = Cache::open(dir.path()).unwrap();
            for _ in 0..50 {
                seen.push(cache.next_counter().unwrap());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        let now_us = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap();
        assert!(seen[0] > now_us - 60_000_000, "starts from the clock");

        // A counter far in the future (a clock that once jumped ahead) still only grows.
        let cache = Cache::open(dir.path()).unwrap();
        let mut wtxn = cache.env.write_txn().unwrap();
        let future = now_us + 3_600_000_000;
        cache.state.put(&mut wtxn, KEY_COUNTER, &future.to_be_bytes()).unwrap();
        wtxn.commit().unwrap();
        assert_eq!(cache.next_counter().unwrap(), future + 1);
    }

    #[test]
    fn queue_enqueue_pending_ack_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u64> = {
            let cache = Cache::open(dir.path()).unwrap();
            (1..=5).map(|i| cache.enqueue_run(&report(i)).unwrap()).collect()
        };
        assert!(keys.windows(2).all(|w| w[0] < w[1]));

        let cache = Cache::open(dir.path()).unwrap();
        let pending = cache.pending_runs(3).unwrap();
        assert_eq!(pending, (0..3).map(|i| (keys[i], report(i as u64 + 1))).collect::<Vec<_>>());
        cache.ack_runs(&[keys[0], keys[1], 999_999]).unwrap();
        let pending = cache.pending_runs(10).unwrap();
        assert_eq!(pending.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys[2..].to_vec());
        cache.ack_runs(&keys[2..]).unwrap();
        assert_eq!(cache.n_pending_runs().unwrap(), 0);
        drop(cache);

        // Keys keep growing after the queue drained and the cache reopened.
        let cache = Cache::open(dir.path()).unwrap();
        assert!(cache.enqueue_run(&report(6)).unwrap() > keys[4]);
    }

    #[test]
    fn queue_is_bounded_and_drops_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let n = RUN_QUEUE_LEN_MAX + 5;
        {
            let cache = Cache::open(dir.path()).unwrap();
            for i in 1..=n {
                cache.enqueue_run(&report(i)).unwrap();
            }
            assert_eq!(cache.n_pending_runs().unwrap(), RUN_QUEUE_LEN_MAX);
        }
        let cache = Cache::open(dir.path()).unwrap();
        let pending = cache.pending_runs(usize::MAX).unwrap();
        assert_eq!(pending.len() as u64, RUN_QUEUE_LEN_MAX);
        assert_eq!(pending[0].1.run_id, 6, "the five oldest were dropped");
        assert_eq!(pending.last().unwrap().1.run_id, n);
    }

    #[test]
    fn meta_round_trips_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = Cache::open(dir.path()).unwrap();
            assert_eq!(cache.get_meta("envoy_id").unwrap(), None);
            cache.set_meta("envoy_id", b"env-123").unwrap();
            // Meta keys cannot clobber the cache's own entries.
            cache.set_meta(KEY_COUNTER, b"x").unwrap();
        }
        let cache = Cache::open(dir.path()).unwrap();
        assert_eq!(cache.get_meta("envoy_id").unwrap(), Some(b"env-123".to_vec()));
        assert!(cache.next_counter().is_ok());
        let err = cache.set_meta("big", &vec![0; META_VALUE_BYTES_MAX + 1]).unwrap_err();
        assert!(matches!(err, Error::MetaTooLarge { .. }), "{err}");
    }
}
