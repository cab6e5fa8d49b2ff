//! Fault injection against real `vigosrv` clusters, and the checkers of what a run recorded.
//!
//! A run (`src/bin/jepsen.rs`) starts peers as real processes, drives concurrent clients
//! against them while the nemesis injects faults, heals, checks liveness, and reads every
//! peer's history. Everything is recorded in a [`history::History`]; [`check`] holds one
//! checker per invariant, each fed doctored histories in its tests to show it can fail.

#![deny(missing_docs)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod report;
pub mod run;
