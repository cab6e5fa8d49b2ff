//! Benchmarks of Vigo. `benches/micro.rs` holds the criterion micro-benchmarks of the pieces
//! on the check-in and apply paths that need no server; `fakefleet`, the load generator that
//! drives a real `vigosrv`, arrives with the benchmarks issue.
