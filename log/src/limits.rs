//! Limits and timings of the log, each with the reason for its value.

use std::time::Duration;

/// How long `LogNode::open` waits for this node to lead. A single voter elects itself after one
/// election timeout (≤ `ELECTION_TIMEOUT_MAX_MS`); ten seconds leaves room for a slow disk
/// replaying a long log, and still fails a misconfigured start quickly.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long `LogNode::shutdown` waits for openraft's tasks to release the database, so the
/// same directory can be opened again right after (RocksDB holds an exclusive lock).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How long `LogNode::compact` waits for the snapshot and the purge it asked for.
pub const COMPACT_WAIT: Duration = Duration::from_secs(60);

/// Leader heartbeat. Peers on a LAN answer in well under a millisecond; 100 ms keeps idle
/// traffic negligible while a lost leader is noticed within an election timeout.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

/// Election timeout range: several heartbeats, so one late heartbeat does not start an election.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;

/// Upper end of the election timeout range (randomized in between to avoid split votes).
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 600;

/// A snapshot is built after this many applied log entries. A snapshot is the whole history,
/// so building one costs a full read of it: not too often. Control events are rare (publishes,
/// enrollments), so this bounds the Raft log to a few thousand entries in practice.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 5_000;

/// Log entries kept after a snapshot, so a briefly lagging peer catches up from the log instead
/// of receiving the whole history.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
