//! Projections of Vigo. `control` folds committed events into [`ControlState`] — pure, no I/O,
//! no clock, so every peer and every auditor replaying the log gets the same state. `fleet`
//! holds observations from check-ins ([`FleetIndex`]) in memory, with the envoys' traits
//! interned once across the fleet ([`TraitStore`]). `chain` is the hash chain that
//! links every event to its predecessor.

#![deny(missing_docs)]

/// The hash chain, defined with the event schema so auditors' tools can verify it too.
pub use vigo_proto::chain;
pub mod control;
pub mod fleet;
pub mod traits;

pub use chain::{ChainError, GENESIS_HASH, envelope_hash, seal, verify_next};
pub use control::{ControlError, ControlState, EnvoyEntry, KeyCache, LiveStack, TokenEntry};
pub use fleet::{EnvoyObservation, FleetIndex, Replay};
pub use traits::{HeldTraits, Node as TraitNode, NodeId, NodeKind, StoreStats, TraitStore, TraitsError};
