//! gRPC services: `agent` (what envoys call), `admin` (what vigocli calls) and `peer` (what the
//! peers of a cluster call each other).

pub mod admin;
pub mod agent;
pub mod peer;
pub mod spanner;

use sha2::{Digest, Sha256};
use tonic::Request;

/// SHA-256 of the client certificate the request arrived with.
pub fn peer_cert_sha256<T>(request: &Request<T>) -> Option<[u8; 32]> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(Sha256::digest(leaf.as_ref()).into())
}
