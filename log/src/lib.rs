//! The replicated event log.
