//! The admin service: tokens, publishes, envoys, history. Every call needs a client
//! certificate issued by the cluster CA to an admin (`vigo-admin:` common name).

use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use vigo_proto::admin::admin_server::Admin;
use vigo_proto::admin::{
    CompactLogRequest, CompactLogResponse, CreateTokenRequest, CreateTokenResponse, ListEnvoysRequest,
    ListEnvoysResponse, PromotePeerRequest, PromotePeerResponse, PublishStackRequest, PublishStackResponse,
    ReadHistoryRequest, ReadHistoryResponse, RemovePeerRequest, RemovePeerResponse, ReportComplianceRequest,
    ReportComplianceResponse, RevokeEnvoyRequest, RevokeEnvoyResponse, ServerStatusRequest, ServerStatusResponse,
    ShowEnvoyRequest, ShowEnvoyResponse, SpannerBolt, SpannerDrainRequest, SpannerReassignRequest, SpannerRoute,
    SpannerStatusRequest, SpannerStatusResponse, SpannerWriteResponse,
};
use vigo_proto::events::event::Kind;
use vigo_proto::events::{EnvoyRevoked, StackPublished, TokenCreated};
use vigo_proto::peer::change_membership_request::Change;
use vigo_proto::peer::{ChangeMembershipRequest, PeerStatus, PeerStatusRequest};
use vigo_proto::token::{Token, TokenKind};
use vigo_state::ControlError;

use crate::limits::{HISTORY_PAGE_MAX, STACK_ARCHIVE_BYTES_MAX};
use crate::node::{Node, now_ms};
use crate::pki::{ADMIN_CN_PREFIX, common_name};
use crate::stack::Stack;

/// The admin service.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// The admin identity of a request, or a refusal.
fn admin<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("admin calls need a client certificate"))?;
    let cn = certs.first().and_then(|leaf| common_name(leaf.as_ref())).unwrap_or_default();
    if cn.starts_with(ADMIN_CN_PREFIX) {
        Ok(cn)
    } else {
        Err(Status::permission_denied("client certificate is not an admin certificate"))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let actor = admin(&request)?;
        let req = request.into_inner();
        let uses = if req.uses == 0 { 1 } else { req.uses };
        let mut secret = [0u8; 16];
        rand::rng().fill_bytes(&mut secret);
        if req.join && req.federate {
            return Err(Status::invalid_argument("a token is either a join token or a federation token"));
        }
        if req.federate && self.node.settings.bolt.is_none() {
            return Err(Status::failed_precondition(
                "this server is not a bolt: start it with --bolt ID to federate others",
            ));
        }
        let kind = match (req.join, req.federate) {
            (true, _) => TokenKind::Join,
            (_, true) => TokenKind::Federate,
            _ => TokenKind::Enroll,
        };
        let token = Token { kind, secret, ca_pin: self.node.pki.ca_sha256() };
        let expires_at_ms = if req.ttl_s == 0 { 0 } else { now_ms() + i64::from(req.ttl_s) * 1000 };
        let event = TokenCreated {
            token_sha256: token.secret_sha256().to_vec(),
            uses,
            expires_at_ms,
            join: req.join,
            federate: req.federate,
        };
        self.node.commit_event(&actor, Kind::TokenCreated(event)).await?;
        Ok(Response::new(CreateTokenResponse { token: token.to_string() }))
    }

    async fn publish_stack(
        &self,
        request: Request<PublishStackRequest>,
    ) -> Result<Response<PublishStackResponse>, Status> {
        let actor = admin(&request)?;
        let req = request.into_inner();
        if req.archive.len() > STACK_ARCHIVE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "stack archive is {} bytes, over the limit of {STACK_ARCHIVE_BYTES_MAX}",
                req.archive.len()
            )));
        }
        // Validate fully before proposing: a bad stack never reaches the log, and the live
        // version does not move.
        if let Err(errors) = Stack::from_archive(&req.archive) {
            let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            return Err(Status::invalid_argument(format!(
                "stack refused ({} problem{}): {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("; ")
            )));
        }
        let sha256 = Sha256::digest(&req.archive).to_vec();
        // Publishing the live stack again changes nothing: answer with the live version and
        // append no event, so re-running a deploy is harmless.
        if let Some(live) = self.node.control().stack()
            && live.sha256.as_slice() == sha256.as_slice()
        {
            return Ok(Response::new(PublishStackResponse { version: live.version, sha256, index: live.index }));
        }
        // Version 0: the next one, assigned when the publish commits, so publishes through
        // different peers at once each go live in commit order.
        let event = StackPublished {
            version: 0,
            archive: req.archive,
            sha256: sha256.clone(),
            author: actor.clone(),
            message: req.message,
            synced_from: String::new(),
        };
        let env = self.node.commit_event(&actor, Kind::StackPublished(event)).await?;
        let version = match env.event.as_ref().and_then(|e| e.kind.as_ref()) {
            Some(Kind::StackPublished(s)) => s.version,
            _ => return Err(Status::internal("the committed event is not the publish")),
        };
        tracing::info!(version, index = env.index, "stack published");
        Ok(Response::new(PublishStackResponse { version, sha256, index: env.index }))
    }

    async fn list_envoys(&self, request: Request<ListEnvoysRequest>) -> Result<Response<ListEnvoysResponse>, Status> {
        admin(&request)?;
        Ok(Response::new(crate::fanout::list(&self.node, request.into_inner()).await?))
    }

    async fn show_envoy(&self, request: Request<ShowEnvoyRequest>) -> Result<Response<ShowEnvoyResponse>, Status> {
        admin(&request)?;
        Ok(Response::new(crate::fanout::show(&self.node, request.into_inner()).await?))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        admin(&request)?;
        let status = self.node.log.status();
        // Each member is asked for its own view, all at once, each for a short while.
        let asked = status.members.iter().map(|m| self.member_view(m.node_id, m.addr.clone()));
        let views = futures::future::join_all(asked).await;
        let members = status
            .members
            .into_iter()
            .zip(views)
            .map(|(m, view)| {
                let mut member = vigo_proto::admin::ClusterMember {
                    node_id: m.node_id,
                    addr: m.addr,
                    voter: m.voter,
                    has_matched_index: m.matched_index.is_some(),
                    matched_index: m.matched_index.unwrap_or(0),
                    ..Default::default()
                };
                match view {
                    Ok(v) => {
                        member.reachable = true;
                        member.role = v.role;
                        member.last_log_index = v.last_log_index;
                        member.applied_index = v.applied_index;
                        member.last_event_index = v.last_event_index;
                        member.last_event_hash = v.last_event_hash;
                        member.snapshot_index = v.snapshot_index;
                        member.purged_index = v.purged_index;
                    }
                    Err(e) => member.error = e,
                }
                member
            })
            .collect();
        Ok(Response::new(ServerStatusResponse {
            node_id: status.node_id,
            role: status.role,
            term: status.term,
            leader: status.leader.unwrap_or(0),
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            members,
        }))
    }

    async fn remove_peer(&self, request: Request<RemovePeerRequest>) -> Result<Response<RemovePeerResponse>, Status> {
        let actor = admin(&request)?;
        let change = Change::Remove(request.into_inner().node_id);
        crate::services::peer::change_membership(&self.node, ChangeMembershipRequest { change: Some(change), actor })
            .await?;
        Ok(Response::new(RemovePeerResponse {}))
    }

    async fn spanner_status(
        &self,
        request: Request<SpannerStatusRequest>,
    ) -> Result<Response<SpannerStatusResponse>, Status> {
        admin(&request)?;
        let state = self.node.log.state();
        let roster = state.roster();
        let own = self.node.settings.bolt.as_ref().map(|b| b.id.as_str());
        let envoys_here = state.n_active_envoys() as u64;
        let bolts = roster
            .bolts()
            .map(|(id, entry)| {
                let health = if own == Some(id.as_str()) {
                    let compliant = u64::from(crate::fanout::local_compliance(&self.node).compliant);
                    Some(vigo_state::Health { online: true, envoys: envoys_here, compliant, ..Default::default() })
                } else {
                    self.node.bolt_health.get(id)
                };
                let h = health.clone().unwrap_or_default();
                SpannerBolt {
                    id: id.clone(),
                    addrs: entry.addrs.clone(),
                    patterns: entry.patterns.clone(),
                    drained_to: roster.drained_to(id).cloned().unwrap_or_default(),
                    drained_automatically: roster.drain_of(id).is_some_and(|d| d.automatic),
                    probed: health.is_some(),
                    online: h.online,
                    failed_probes: h.failed_probes,
                    probe_ms: h.probe_ms,
                    envoys: h.envoys,
                    compliant: h.compliant,
                }
            })
            .collect();
        let reassigned = roster
            .overrides()
            .map(|(hostname, to)| SpannerRoute { hostname: hostname.clone(), to: to.clone() })
            .collect();
        let bolt = self.node.settings.bolt.as_ref().map(|b| b.id.clone()).unwrap_or_default();
        let revoked_envoys = roster.n_revoked() as u64;
        Ok(Response::new(SpannerStatusResponse { bolt, bolts, reassigned, revoked_envoys }))
    }

    async fn spanner_reassign(
        &self,
        request: Request<SpannerReassignRequest>,
    ) -> Result<Response<SpannerWriteResponse>, Status> {
        let actor = admin(&request)?;
        let req = request.into_inner();
        let to = (!req.to.is_empty()).then_some(req.to.as_str());
        let index = crate::bolt::reassign(&self.node, &actor, &req.hostname, to).await?;
        tracing::info!(hostname = req.hostname, to = req.to, index, "envoys reassigned");
        Ok(Response::new(SpannerWriteResponse { index }))
    }

    async fn spanner_drain(
        &self,
        request: Request<SpannerDrainRequest>,
    ) -> Result<Response<SpannerWriteResponse>, Status> {
        let actor = admin(&request)?;
        let req = request.into_inner();
        let to = (!req.to.is_empty()).then_some(req.to.as_str());
        let index = crate::bolt::drain(&self.node, &actor, &req.bolt, to).await?;
        tracing::info!(bolt = req.bolt, to = req.to, index, "bolt drained");
        Ok(Response::new(SpannerWriteResponse { index }))
    }

    async fn compact_log(&self, request: Request<CompactLogRequest>) -> Result<Response<CompactLogResponse>, Status> {
        admin(&request)?;
        let purged = self.node.log.compact().await.map_err(crate::error::log_status)?;
        Ok(Response::new(CompactLogResponse { purged_index: purged.unwrap_or(0) }))
    }

    async fn promote_peer(
        &self,
        request: Request<PromotePeerRequest>,
    ) -> Result<Response<PromotePeerResponse>, Status> {
        let actor = admin(&request)?;
        let change = Change::Promote(request.into_inner().node_id);
        let leader = crate::services::peer::change_membership(
            &self.node,
            ChangeMembershipRequest { change: Some(change), actor },
        )
        .await?;
        Ok(Response::new(PromotePeerResponse { leader }))
    }

    async fn report_compliance(
        &self,
        request: Request<ReportComplianceRequest>,
    ) -> Result<Response<ReportComplianceResponse>, Status> {
        admin(&request)?;
        Ok(Response::new(crate::fanout::compliance(&self.node).await))
    }

    async fn revoke_envoy(
        &self,
        request: Request<RevokeEnvoyRequest>,
    ) -> Result<Response<RevokeEnvoyResponse>, Status> {
        let actor = admin(&request)?;
        let req = request.into_inner();
        let mut envoy_id = String::new();
        let env = self
            .node
            .commit(&actor, |state| {
                let envoy = state
                    .envoy_by_hostname(&req.envoy)
                    .or_else(|| state.envoy(&req.envoy))
                    .ok_or_else(|| ControlError::EnvoyUnknown(req.envoy.clone()))?;
                envoy_id = envoy.envoy_id.clone();
                Ok(Kind::EnvoyRevoked(EnvoyRevoked { envoy_id: envoy_id.clone(), reason: req.reason }))
            })
            .await?;
        tracing::info!(envoy_id, "envoy revoked");
        Ok(Response::new(RevokeEnvoyResponse { envoy_id, index: env.index }))
    }

    async fn read_history(
        &self,
        request: Request<ReadHistoryRequest>,
    ) -> Result<Response<ReadHistoryResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        if req.linearizable {
            self.node.log.read_barrier().await.map_err(crate::error::log_status)?;
        }
        let limit = if req.limit == 0 { HISTORY_PAGE_MAX } else { req.limit.min(HISTORY_PAGE_MAX) };
        let from = req.from_index.max(1);
        let events = self
            .node
            .log
            .read_history(from, limit as usize)
            .map_err(|e| Status::data_loss(format!("history cannot be read: {e}")))?;
        Ok(Response::new(ReadHistoryResponse { events, last_index: self.node.log.last_history_index() }))
    }
}

impl AdminService {
    /// What member `node_id` at `addr` says of itself; this peer answers for itself directly.
    async fn member_view(&self, node_id: u64, addr: String) -> Result<PeerStatus, String> {
        if node_id == self.node.log.node_id() {
            return Ok(crate::services::peer::peer_status(self.node.log.status()));
        }
        let mut client = self.node.log.peers().client(&addr).map_err(|e| e.to_string())?;
        let mut request = Request::new(PeerStatusRequest {});
        request.set_timeout(vigo_log::limits::PEER_CALL_TIMEOUT);
        match client.status(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(status.message().to_string()),
        }
    }
}
