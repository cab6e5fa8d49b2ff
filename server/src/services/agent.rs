//! The agent service: CA fetch, enrollment, check-in and results reports.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use vigo_proto::agent::agent_server::Agent;
use vigo_proto::agent::{
    CheckInRequest, CheckInResponse, EnrollRequest, EnrollResponse, GetCaRequest, GetCaResponse, PushRequested,
    ReportRequest, ReportResponse, WatchEvent, WatchRequest, watch_event,
};
use vigo_proto::events::EnvoyEnrolled;
use vigo_proto::events::event::Kind;
use vigo_proto::token::Token;

use crate::limits::{HOSTNAME_BYTES_MAX, PUSH_RATE_PER_S, PUSH_SPREAD_MS_MAX};
use crate::node::{Node, now_ms};
use crate::services::peer_cert_sha256;

/// The agent service.
pub struct AgentService {
    node: Arc<Node>,
}

impl AgentService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// Whether `name` is a usable hostname: DNS characters only, so it can be matched by globs
/// and shown everywhere without escaping.
pub fn check_hostname(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= HOSTNAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.starts_with(['-', '.']);
    if ok { Ok(()) } else { Err(Status::invalid_argument(format!("invalid hostname {name:?}"))) }
}

/// The id an envoy gets: derived from its key, so it is stable and unique per key.
pub fn envoy_id_for(pubkey: &[u8; 32]) -> String {
    format!("e-{}", hex::encode(&Sha256::digest(pubkey)[..8]))
}

/// How long after a publish this envoy's push waits: a fixed point in a window that grows with
/// the fleet (at most [`PUSH_RATE_PER_S`] pushes a second, capped at [`PUSH_SPREAD_MS_MAX`]),
/// taken from a hash of its id, so the fleet spreads evenly over the window.
pub fn push_delay(envoy_id: &str, fleet: usize) -> Duration {
    let window_ms = (fleet as u64 * 1000 / PUSH_RATE_PER_S).min(PUSH_SPREAD_MS_MAX);
    if window_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(crate::check_in::envoy_point(envoy_id, window_ms))
}

/// The stream of an open watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Agent for AgentService {
    type WatchStream = WatchStream;

    async fn get_ca(&self, _request: Request<GetCaRequest>) -> Result<Response<GetCaResponse>, Status> {
        Ok(Response::new(GetCaResponse { ca_cert_der: self.node.pki.ca_der.clone() }))
    }

    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        let token = Token::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if token.ca_pin != self.node.pki.ca_sha256() {
            return Err(Status::permission_denied("enrollment token was issued by another cluster"));
        }
        check_hostname(&req.hostname)?;
        let pubkey: [u8; 32] =
            req.pubkey.as_slice().try_into().map_err(|_| Status::invalid_argument("public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&pubkey).map_err(|_| Status::invalid_argument("invalid public key"))?;
        let proof = Signature::from_slice(&req.proof).map_err(|_| Status::invalid_argument("invalid proof"))?;
        key.verify_strict(&vigo_proto::signing::enroll_bytes(&req.token, &req.hostname, &pubkey), &proof)
            .map_err(|_| Status::unauthenticated("proof of key possession does not verify"))?;

        let envoy_id = envoy_id_for(&pubkey);
        let cert_der = self
            .node
            .pki
            .issue_envoy_cert(&envoy_id, &req.hostname, &pubkey)
            .map_err(|e| Status::internal(format!("cannot issue certificate: {e}")))?;
        let event = EnvoyEnrolled {
            envoy_id: envoy_id.clone(),
            hostname: req.hostname.clone(),
            pubkey: pubkey.to_vec(),
            token_sha256: token.secret_sha256().to_vec(),
            cert_sha256: Sha256::digest(&cert_der).to_vec(),
        };
        self.node.commit_event(&format!("envoy:{envoy_id}"), Kind::EnvoyEnrolled(event)).await?;
        tracing::info!(envoy_id, hostname = req.hostname, "envoy enrolled");
        // In a federation the envoy lands on the bolt that owns its hostname: handed off there
        // now, it is given that bolt's servers. If the hand-off cannot happen yet, it stays here
        // and its first check-ins retry it.
        let me = self.node.settings.bolt.as_ref().map(|b| b.id.as_str());
        let control = self.node.control();
        let (mut servers, mut peers_index) = (self.node.servers(), crate::check_in::servers_index(&control, me));
        let mut fallback = crate::check_in::fallback(&control, me);
        drop(control);
        if let Some(owner) = crate::bolt::owner_elsewhere(&self.node, &req.hostname) {
            match crate::bolt::hand_off(&self.node, &envoy_id, &owner).await {
                Ok(()) => {
                    let roster = self.node.control();
                    servers = roster.roster().bolt(&owner).map(|b| b.addrs.clone()).unwrap_or(servers);
                    fallback = crate::check_in::fallback(&roster, Some(&owner));
                    peers_index = 0;
                }
                Err(e) => tracing::warn!(envoy_id, owner, "enrolled here; cannot hand off yet: {e:#}"),
            }
        }
        Ok(Response::new(EnrollResponse {
            envoy_id,
            cert_der,
            ca_cert_der: self.node.pki.ca_der.clone(),
            bundle_pubkey: self.node.pki.bundle_key.verifying_key().to_bytes().to_vec(),
            servers,
            peers_index,
            check_in_interval_s: self.node.settings.check_in_interval_s,
            fallback,
        }))
    }

    async fn check_in(&self, request: Request<CheckInRequest>) -> Result<Response<CheckInResponse>, Status> {
        let peer = peer_cert_sha256(&request);
        let leaf = request.peer_certs().and_then(|certs| certs.first().cloned());
        let req = request.into_inner();
        let answered = self.node.answer_check_in(|ctx| crate::check_in::check_in(ctx, peer, &req, now_ms()));
        Ok(Response::new(crate::bolt::follow_up(&self.node, answered, leaf.as_deref()).await?))
    }

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let peer = peer_cert_sha256(&request);
        let req = request.into_inner();
        self.node.with_check_in(|ctx| crate::check_in::watch(ctx, peer, &req, now_ms()))?;
        let (held, fits) = self.node.held.enter();
        if !fits {
            return Err(Status::resource_exhausted(crate::session::HELD_FULL));
        }
        // Subscribing marks the current version as seen: only later publishes push.
        let versions = self.node.stack_version.subscribe();
        let stopping = self.node.stopping.subscribe();
        let delay = push_delay(&req.envoy_id, self.node.control().n_envoys());
        let stream =
            futures::stream::unfold((versions, stopping, held), move |(mut versions, mut stopping, held)| async move {
                tokio::select! {
                    changed = versions.changed() => changed.ok()?,
                    _ = stopping.wait_for(|s| *s) => return None,
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopping.wait_for(|s| *s) => return None,
                }
                let stack_version = *versions.borrow_and_update();
                let event =
                    WatchEvent { kind: Some(watch_event::Kind::PushRequested(PushRequested { stack_version })) };
                Some((Ok(event), (versions, stopping, held)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_results(&self, request: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        let peer = peer_cert_sha256(&request);
        Ok(Response::new(crate::session::answer_report(&self.node, peer, &request.into_inner())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_spread_evenly_over_a_window_that_grows_with_the_fleet() {
        assert_eq!(push_delay("e-1", 1), Duration::ZERO, "a tiny fleet is pushed at once");
        let fleet = 10_000;
        let window = Duration::from_millis(PUSH_SPREAD_MS_MAX);
        let mut per_second = [0usize; 5];
        for i in 0..fleet {
            let d = push_delay(&format!("e-{i:016x}"), fleet);
            assert!(d < window);
            per_second[d.as_secs() as usize] += 1;
        }
        // 10,000 envoys at 2,000 a second: about 2,000 in each second of the window.
        for n in per_second {
            assert!((1_800..2_200).contains(&n), "{per_second:?}");
        }
        assert_eq!(push_delay("e-7", fleet), push_delay("e-7", fleet), "the same point every time");
    }
}
