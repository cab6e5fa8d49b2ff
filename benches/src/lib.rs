//! Benchmarks of Vigo. `benches/micro.rs` holds the criterion micro-benchmarks of the pieces
//! on the check-in and apply paths; `fakefleet` (`src/bin/fakefleet.rs`) is the load
//! generator that drives a real `vigosrv` with synthetic envoys.

pub mod fleet;
pub mod inventory;
pub mod report;
pub mod scrape;
