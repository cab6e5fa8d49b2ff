//! Federation of bolts (spanner). The admissions roster every bolt shares is control state, so
//! it lives in `vigo_state::roster` (its reassigns and drains are events on each bolt's log);
//! this crate re-exports it and will hold gossip, routing and fan-out.

#![deny(missing_docs)]

pub use vigo_state::roster::{BoltEntry, BoltId, Clock, Health, Roster, Stamp};
