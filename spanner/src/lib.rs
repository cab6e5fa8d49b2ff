//! Federation of bolts (spanner): the CRDT admissions roster every bolt shares ([`roster`]).

#![deny(missing_docs)]

pub mod roster;

pub use roster::{BoltEntry, BoltId, Clock, Health, Roster, Stamp};
