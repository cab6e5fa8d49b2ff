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

/// How long a peer waits for a TCP and TLS connection to another peer. Peers sit on one LAN;
/// a second is plenty, and a dead peer is given up on quickly (openraft backs off after).
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest message between peers: a batch of [`MAX_PAYLOAD_ENTRIES`] log entries, each of
/// which may carry a stack archive of up to 16 MiB, or one snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Log entries per AppendEntries: few, because one entry can hold a whole stack archive.
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// How long a proposal may take to commit before the proposer is told the cluster may have
/// lost its quorum. Commits take milliseconds; this only ends a wait that would not end.
pub const PROPOSE_WAIT: Duration = Duration::from_secs(5);

/// A leader that has heard from no quorum of voters for this long refuses writes at once
/// instead of letting them wait for [`PROPOSE_WAIT`]: three election timeouts.
pub const QUORUM_ACK_MAX_MS: u64 = 3 * ELECTION_TIMEOUT_MAX_MS;

/// How long a peer asked to sit out elections does so, at most, during a leadership transfer;
/// it takes part again by itself afterwards even if the transfer stopped half way.
pub const TRANSFER_HOLD: Duration = Duration::from_secs(4);

/// How long a leadership transfer waits for the target to catch up, and then to win.
pub const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// How long adding a peer waits for it to catch up as a learner before it becomes a voter
/// (a snapshot of a long history can take a while to ship).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(600);

/// How long a question to another peer (status, forwarding) may take.
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Proposals in one Raft entry, at most. openraft handles each entry on its own (its core loop,
/// the log append, the apply), so batching is what lets writes per second grow with the number
/// of writers.
pub const BATCH_PROPOSALS_MAX: usize = 256;

/// Bytes of proposals in one Raft entry, at most (a stack publish of up to 16 MiB goes alone).
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Batches committing at once on one peer. More than one, so a batch does not wait for the
/// round trip of the one before; few, so proposals gather into batches while they commit.
pub const BATCHES_IN_FLIGHT: usize = 2;
