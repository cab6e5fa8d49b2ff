//! Projections of Vigo. `control` folds committed events into [`ControlState`] — pure, no I/O,
//! no clock, so every peer and every auditor replaying the log gets the same state. `fleet`
//! holds observations from check-ins ([`FleetIndex`]) in memory, with the envoys' traits
//! interned once across the fleet ([`TraitStore`]); `fleet_store` snapshots both to SQLite
//! ([`FleetStore`]). `chain` is the hash chain that
//! links every event to its predecessor.

#![deny(missing_docs)]

/// The hash chain, defined with the event schema so auditors' tools can verify it too.
pub use vigo_proto::chain;
pub mod control;
pub mod fleet;
pub mod fleet_store;
pub mod roster;
pub mod trait_index;
pub mod traits;

pub use chain::{ChainError, GENESIS_HASH, envelope_hash, seal, verify_next};
pub use control::{ControlError, ControlState, EnvoyEntry, KeyCache, LiveStack, PeerEntry, SealedKeys, TokenEntry};
pub use fleet::{DirtyEnvoy, EnvoyObservation, FleetIndex, Replay};
pub use fleet_store::{FleetStore, FlushReport, LoadReport, Scope, StoreError};
pub use roster::{BoltEntry, BoltId, Clock, Health, Roster, Stamp};
pub use trait_index::{IndexKey, TraitIndex};
pub use traits::{HeldTraits, Node as TraitNode, NodeId, NodeKind, Restored, StoreStats, TraitStore, TraitsError};
