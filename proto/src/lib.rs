//! Wire and durable schemas of Vigo: the agent API, the admin API, the policy bundle and the
//! event schema, generated from `proto/vigo/*.proto`. Only these types cross a process or disk
//! boundary. Also home of the signing-byte layouts both sides must agree on, and of the mTLS
//! client connector shared by `envoy` and `vigocli`.

#![allow(missing_docs)]

/// Durable event schema (history archive, Raft log payloads).
pub mod events {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.events");
}

/// The policy bundle an envoy converges to.
pub mod bundle {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.bundle");
}

/// Agent API (envoy → vigosrv).
pub mod agent {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.agent");
}

/// Admin API (vigocli → vigosrv).
pub mod admin {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.admin");
}

/// The fleet snapshot vigosrv keeps in SQLite: observations and interned traits.
pub mod fleet {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.fleet");
}

/// Peer API (vigosrv ↔ vigosrv): Raft RPCs, forwarded writes, joining.
pub mod peer {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.peer");
}

/// Spanner API (bolt ↔ bolt): federating a new bolt, roster gossip.
pub mod spanner {
    #![allow(clippy::all)]
    tonic::include_proto!("vigo.spanner");
}

pub mod chain;
pub mod codec;
pub mod fds;
pub mod session;
pub mod signing;
pub mod tls;
pub mod token;
