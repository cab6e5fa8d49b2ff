//! The replicated event log of Vigo: openraft 0.9 (storage-v2) on one RocksDB database.
//!
//! A control request becomes an `EventProposal`, is committed through Raft (`logs` column
//! family), and is applied by the state machine, which seals it into an `EventEnvelope` — event
//! index, Raft log index, predecessor's hash, own hash (I-4) — folds it into
//! [`ControlState`](vigo_state::ControlState) and archives it in the `history` column family.
//! Raft log compaction never touches `history`: auditors replay from index 1 at any time, and a
//! Raft snapshot *is* the history, so a peer that installs one can too.
//!
//! Files follow openraft's examples: [`types`] (type config), [`log_store`] (Raft log and vote),
//! [`state_machine`] (apply, publish), [`history`] (archive reads, chain verification, replay),
//! [`snapshot`] (with its [`crash`] points), [`network`] (peer transport), [`node`] (the [`LogNode`] facade the server
//! uses), [`error`], [`limits`].
//!
//! **Architecture Invariant:** nothing here decides whether an event is allowed; that is
//! `ControlState::validate`, run by the proposer. The log only orders, seals, stores and applies.

#![deny(missing_docs)]
// openraft's storage traits dictate `StorageError` (~224 bytes) as the error of every storage call;
// boxing it in our helpers would only add conversions at each trait boundary.
#![allow(clippy::result_large_err)]

pub mod crash;
mod db;
pub mod error;
pub mod history;
pub mod limits;
pub mod log_store;
pub mod network;
pub mod node;
pub mod recovery;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use db::open_storage;
pub use error::LogError;
pub use history::{History, replay};
pub use log_store::LogStore;
pub use network::{PeerError, Peers};
pub use node::{ClusterStatus, LogNode, Member, PeerSetup};
pub use recovery::{PendingRecovery, Recovered, force_sole_voter};
pub use state_machine::StateMachineStore;
pub use types::{Applied, AppliedEvent, Proposal, TypeConfig};
