//! The spanner service, bolt to bolt: `Federate` gives a new bolt the federation's keys for a
//! `vgf1_` token, and `Gossip` exchanges admissions rosters (anti-entropy). Every bolt of a
//! federation shares one CA, so a caller with a peer certificate is a peer of some bolt.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vigo_proto::admin::{
    ListEnvoysRequest, ListEnvoysResponse, ReportComplianceRequest, ReportComplianceResponse, ShowEnvoyRequest,
    ShowEnvoyResponse,
};
use vigo_proto::events::StackPublished;
use vigo_proto::events::event::Kind;
use vigo_proto::events::{BoltFederated, RosterMerged};
use vigo_proto::spanner::spanner_server::Spanner;
use vigo_proto::spanner::{
    AdoptRequest, AdoptResponse, FederateRequest, FederateResponse, FetchStackRequest, GossipRequest, GossipResponse,
};
use vigo_proto::token::{Token, TokenKind};
use vigo_state::control::{check_bolt_id, roster_of};

use crate::node::Node;
use crate::pki::{PEER_CN_PREFIX, common_name};

/// Serves the spanner RPCs of one bolt.
pub struct SpannerService {
    node: Arc<Node>,
}

impl SpannerService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn bolt(&self) -> Result<&str, Status> {
        match &self.node.settings.bolt {
            Some(bolt) => Ok(&bolt.id),
            None => Err(Status::failed_precondition("this server is not a bolt")),
        }
    }
}

/// Refuses a caller without a peer certificate of the federation.
fn peer_of_a_bolt<T>(request: &Request<T>) -> Result<(), Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("gossip needs a peer certificate"))?;
    let cn = certs.first().and_then(|leaf| common_name(leaf.as_ref())).unwrap_or_default();
    if cn.starts_with(PEER_CN_PREFIX) { Ok(()) } else { Err(Status::permission_denied("not a peer of a bolt")) }
}

#[tonic::async_trait]
impl Spanner for SpannerService {
    async fn federate(&self, request: Request<FederateRequest>) -> Result<Response<FederateResponse>, Status> {
        self.bolt()?;
        let req = request.into_inner();
        let token =
            Token::parse_as(TokenKind::Federate, &req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if token.ca_pin != self.node.pki.ca_sha256() {
            return Err(Status::permission_denied("this federation token was made by another federation"));
        }
        check_bolt_id(&req.bolt).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.node.log.state().roster().bolt(&req.bolt).is_some() {
            return Err(Status::already_exists(format!("bolt {} is already in the roster", req.bolt)));
        }
        let event = BoltFederated { bolt: req.bolt.clone(), token_sha256: token.secret_sha256().to_vec() };
        self.node.commit_event(&format!("bolt:{}", req.bolt), Kind::BoltFederated(event)).await?;
        tracing::info!(bolt = req.bolt, "federated a new bolt");
        let keys = self.node.pki.federation_keys();
        Ok(Response::new(FederateResponse {
            ca_cert_der: keys.ca_cert_der,
            ca_key_der: keys.ca_key_der,
            bundle_key_seed: keys.bundle_key_seed.to_vec(),
            roster: Some(self.node.log.state().roster().to_delta()),
        }))
    }

    async fn gossip(&self, request: Request<GossipRequest>) -> Result<Response<GossipResponse>, Status> {
        peer_of_a_bolt(&request)?;
        let bolt = self.bolt()?.to_string();
        let req = request.into_inner();
        if let Some(delta) = req.roster {
            let remote =
                roster_of(&delta).map_err(|e| Status::invalid_argument(format!("roster from {}: {e}", req.from)))?;
            if crate::bolt::adds_to(&self.node.log.state(), remote) {
                let event = RosterMerged { from: req.from.clone(), roster: Some(delta) };
                self.node.commit_event(&format!("bolt:{}", req.from), Kind::RosterMerged(event)).await?;
            }
        }
        let state = self.node.log.state();
        let envoys = state.n_active_envoys() as u64;
        let stack = Some(crate::bolt::live_stack(&state));
        // A walk of this bolt's envoys per probe: a few milliseconds at 50,000.
        let compliant = u64::from(crate::fanout::local_compliance(&self.node).compliant);
        Ok(Response::new(GossipResponse { bolt, roster: Some(state.roster().to_delta()), envoys, stack, compliant }))
    }

    async fn adopt(&self, request: Request<AdoptRequest>) -> Result<Response<AdoptResponse>, Status> {
        peer_of_a_bolt(&request)?;
        let me = self.bolt()?.to_string();
        let adopted = request.into_inner().envoy.ok_or_else(|| Status::invalid_argument("no envoy to adopt"))?;
        let state = self.node.log.state();
        if state.router().owner(&adopted.hostname) != Some(me.as_str()) {
            return Err(Status::failed_precondition(format!(
                "bolt {me} does not own {} (yet: its roster may lag behind)",
                adopted.hostname
            )));
        }
        if let Some(held) = state.envoy(&adopted.envoy_id).filter(|e| e.is_active()) {
            // Adopted before (the giving bolt did not get to record the hand-off): the same
            // identity is no change; another one is a conflict.
            if held.cert_sha256.as_slice() == adopted.cert_sha256.as_slice() {
                return Ok(Response::new(AdoptResponse {}));
            }
            return Err(Status::already_exists(format!(
                "envoy {} is held here with another identity",
                adopted.envoy_id
            )));
        }
        let from = adopted.from.clone();
        self.node.commit_event(&format!("bolt:{from}"), Kind::EnvoyAdopted(adopted)).await?;
        Ok(Response::new(AdoptResponse {}))
    }

    async fn list_envoys(&self, request: Request<ListEnvoysRequest>) -> Result<Response<ListEnvoysResponse>, Status> {
        peer_of_a_bolt(&request)?;
        self.bolt()?;
        Ok(Response::new(crate::fanout::local_list(&self.node, request.get_ref()).await?))
    }

    async fn show_envoy(&self, request: Request<ShowEnvoyRequest>) -> Result<Response<ShowEnvoyResponse>, Status> {
        peer_of_a_bolt(&request)?;
        self.bolt()?;
        Ok(Response::new(crate::fanout::local_show(&self.node, request.get_ref())?))
    }

    async fn report_compliance(
        &self,
        request: Request<ReportComplianceRequest>,
    ) -> Result<Response<ReportComplianceResponse>, Status> {
        peer_of_a_bolt(&request)?;
        self.bolt()?;
        Ok(Response::new(crate::fanout::local_compliance(&self.node)))
    }

    async fn fetch_stack(&self, request: Request<FetchStackRequest>) -> Result<Response<StackPublished>, Status> {
        peer_of_a_bolt(&request)?;
        self.bolt()?;
        let state = self.node.log.state();
        let live = state.stack().ok_or_else(|| Status::not_found("this bolt has no stack published"))?;
        Ok(Response::new(StackPublished {
            version: live.version,
            archive: live.archive.to_vec(),
            sha256: live.sha256.to_vec(),
            author: live.author.clone(),
            message: live.message.clone(),
            synced_from: String::new(),
        }))
    }
}
