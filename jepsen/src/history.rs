//! What a run records: every client operation with its invoke and complete times and outcome,
//! every fault, and at the end each peer's whole history as it serves it. The checkers
//! (`check.rs`) read only this, so a history can be saved, reloaded and checked again, and
//! doctored by hand to prove a checker fails.

use serde::{Deserialize, Serialize};

/// A control write, named by what identifies its event in the history afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "write", rename_all = "snake_case")]
pub enum Write {
    /// A stack publish; `key` is the hex SHA-256 of its archive (each publish has unique content).
    Publish {
        /// Hex SHA-256 of the archive.
        key: String,
    },
    /// A token; `key` is the hex SHA-256 of its secret, as the `TokenCreated` event holds it.
    Token {
        /// Hex SHA-256 of the secret.
        key: String,
    },
    /// An envoy enrollment; `key` is the hostname it enrolled with (unique in a run).
    Enroll {
        /// The hostname.
        key: String,
    },
    /// A revocation; `key` is `revoked:<envoy id>`.
    Revoke {
        /// `revoked:` and the envoy id.
        key: String,
    },
}

impl Write {
    /// The key its event carries.
    pub fn key(&self) -> &str {
        match self {
            Write::Publish { key } | Write::Token { key } | Write::Enroll { key } | Write::Revoke { key } => key,
        }
    }
}

/// A read of one peer's history (the audit log), as a client saw it: not the events themselves
/// (a run makes thousands of reads of a history thousands long), but how many there were, the
/// hash of the last, and whether they formed one hash chain from index 1. Reads are prefixes of
/// one history or they are not: the length and last hash say which, against the final ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// The peer read from.
    pub peer: usize,
    /// How many events it returned.
    pub len: u64,
    /// Hash of the last of them (empty when none).
    pub last_hash: String,
    /// Why the events returned were not one hash chain from index 1, when they were not.
    pub chain_error: Option<String>,
    /// For an envoy list (read at event `len`): how many envoys it listed, and revoked.
    #[serde(default)]
    pub envoys: Option<EnvoyCounts>,
}

/// What an envoy list held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyCounts {
    /// Envoys listed (every one ever enrolled).
    pub listed: u64,
    /// Of those, revoked.
    pub revoked: u64,
}

impl ReadResult {
    /// What a read of `events` from `peer` is recorded as.
    pub fn of(peer: usize, events: &[Event]) -> Self {
        let mut chain_error = None;
        let mut prev = "0".repeat(64);
        for (position, event) in events.iter().enumerate() {
            if event.index != position as u64 + 1 {
                chain_error = Some(format!("event {} has index {}", position + 1, event.index));
                break;
            }
            if event.prev_hash != prev {
                chain_error = Some(format!("event at index {} does not link to the one before", event.index));
                break;
            }
            prev.clone_from(&event.hash);
        }
        ReadResult {
            peer,
            len: events.len() as u64,
            last_hash: events.last().map(|e| e.hash.clone()).unwrap_or_default(),
            chain_error,
            envoys: None,
        }
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// A control write.
    Write(Write),
    /// A linearizable read of the history from one peer.
    Read {
        /// The peer asked.
        peer: usize,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged. For a write, `index` is the event index the server answered with, when it
    /// says (publishes do; tokens do not).
    Ok {
        /// The event index of an acknowledged write, when the answer carries it.
        index: Option<u64>,
        /// What a read returned.
        read: Option<ReadResult>,
    },
    /// Refused: the write certainly did not and will not take effect (validation refused it).
    Failed {
        /// Why.
        reason: String,
    },
    /// No answer, or one that leaves it open (timeout, connection lost, "may still commit"):
    /// the write may or may not have taken effect.
    Unknown {
        /// What happened.
        reason: String,
    },
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the run.
    pub id: u64,
    /// The client (a logical process) that issued it; a client issues one operation at a time.
    pub client: u32,
    /// What it did.
    pub kind: OpKind,
    /// Microseconds since the run started, when it was sent.
    pub invoke_us: u64,
    /// Microseconds since the run started, when its outcome was known.
    pub complete_us: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// One event of a peer's history, reduced to what the checkers need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event index (dense from 1).
    pub index: u64,
    /// Hex SHA-256 of the previous envelope.
    pub prev_hash: String,
    /// Hex SHA-256 of this envelope.
    pub hash: String,
    /// `TokenCreated`, `StackPublished`, `PeerAdmitted`, ….
    pub kind: String,
    /// The key a client write is recognised by (see [`Write`]); empty for events no client
    /// of the workload writes (cluster keys, admissions, …).
    pub key: String,
}

/// A fault the nemesis injected or healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Microseconds since the run started.
    pub at_us: u64,
    /// What: `kill`, `restart`, `pause`, `resume`, `partition`, `heal`, ….
    pub what: String,
    /// The peers it touched.
    pub peers: Vec<usize>,
    /// For a crash at a crash point: which one the peer died at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The seed the run was made from.
    pub seed: u64,
    /// Number of peers.
    pub peers: usize,
    /// Every operation, in the order they completed.
    pub ops: Vec<Op>,
    /// Every fault, in order.
    pub faults: Vec<Fault>,
    /// Microseconds since the start when the cluster was healed for good.
    pub healed_us: Option<u64>,
    /// Whether, after the heal, the cluster elected a leader and acknowledged a write within
    /// the liveness window.
    pub live_after_heal: Option<bool>,
    /// Each peer's whole history, read from it after the heal; `None` for a peer that could not
    /// be read.
    pub finals: Vec<Option<Vec<Event>>>,
    /// Each peer's projection, read from it after its final history; `None` for a peer that
    /// could not be read. Empty in a history recorded without them.
    #[serde(default)]
    pub projections: Vec<Option<Projection>>,
    /// What peers said of the cluster when clients asked them (`server status`), in the order
    /// the answers came.
    #[serde(default)]
    pub views: Vec<LeaderView>,
}

/// One peer's view of the cluster, as a status read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// Microseconds since the run started, when the answer came.
    pub at_us: u64,
    /// The peer asked.
    pub peer: usize,
    /// Its node id.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner`.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows of in that term.
    pub leader: Option<u64>,
}

/// What a peer's projection says: the live stack version and every envoy it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// The live stack version (0: none).
    pub stack_version: u64,
    /// Every envoy ever enrolled.
    pub envoys: Vec<EnvoyState>,
}

/// One envoy as a projection lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyState {
    /// Its id.
    pub envoy_id: String,
    /// The hostname it enrolled with.
    pub hostname: String,
    /// Whether it was revoked.
    pub revoked: bool,
}
