//! jepsen.
