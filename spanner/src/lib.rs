//! Federation of bolts (spanner).
