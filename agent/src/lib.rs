//! envoy library.
