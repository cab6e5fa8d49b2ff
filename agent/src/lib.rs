//! The envoy library: everything `envoy` does to a host once it holds a verified bundle. It orders
//! the bundle's resources ([`graph`]), converges them one by one with executors that check before
//! they change ([`converge`], [`executors`]), keeps the last verified bundle, the check-in counter
//! and the queue of unsent run reports in LMDB ([`cache`]), and confines every managed path under
//! `--root` ([`root`]). The network side (enrollment, check-in loop) lives beside these modules.

pub mod cache;
pub mod converge;
pub mod error;
pub mod executors;
pub mod graph;
pub mod limits;
pub mod root;

pub use error::{Error, Result};

// The network side: enrollment, identity on disk, traits, and the check-in loop.
pub mod enroll;
pub mod identity;
pub mod run;
pub mod session;
pub mod traits;
