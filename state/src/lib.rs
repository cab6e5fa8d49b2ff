//! Projections of Vigo: control state from events, fleet index from check-ins.
