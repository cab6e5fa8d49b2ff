//! Fleet queries (`envoys list`, `envoys show`, `compliance`) as one fleet across a federation.
//!
//! The bolt asked answers from its own projection and, when it is a bolt with others in the
//! roster, asks every other bolt for its part at once (`Spanner.ListEnvoys` and the rest, each
//! bounded by [`crate::limits::GOSSIP_CALL_TIMEOUT`] per address) and merges. A bolt that does not answer
//! in time is named in the answer (`unanswered`), never silently left out. An envoy handed off
//! shows once, from the bolt that holds it, when that bolt answered.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use tonic::Status;
use vigo_proto::admin::{
    BoltUnanswered, Compliance, EnvoyCompliance, EnvoyInfo, ListEnvoysRequest, ListEnvoysResponse,
    ReportComplianceRequest, ReportComplianceResponse, ShowEnvoyRequest, ShowEnvoyResponse,
};
use vigo_proto::spanner::spanner_client::SpannerClient;
use vigo_state::{EnvoyEntry, EnvoyObservation};

use crate::node::{Node, now_ms};
use crate::query::{Query, StoreView, Subject};

/// This bolt's envoys that meet `req.where`.
pub async fn local_list(node: &Node, req: &ListEnvoysRequest) -> Result<ListEnvoysResponse, Status> {
    let query = Query::parse(&req.r#where, now_ms()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if req.linearizable {
        node.log.read_barrier().await.map_err(crate::error::log_status)?;
    }
    let control = node.control();
    let live = control.stack_version();
    let store = node.fleet.trait_store();
    // The trait index narrows the envoys to look at; each is still checked against what the
    // index does not answer exactly.
    let candidates = node.fleet.having(&query.index_terms()).map(|mut ids| {
        ids.sort_unstable();
        ids
    });
    let (envoys, query): (Box<dyn Iterator<Item = &Arc<EnvoyEntry>>>, Query) = match &candidates {
        Some(ids) => (Box::new(ids.iter().filter_map(|id| control.envoy(id))), query.residual()),
        None => (Box::new(control.envoys()), query),
    };
    let envoys = envoys
        .filter_map(|e| {
            let obs = node.fleet.get(&e.envoy_id).unwrap_or_default();
            if !query.is_empty() {
                // Traits are read in place, held only while this envoy is looked at.
                let held = node.fleet.traits_if_current(&e.envoy_id, &obs.traits_hash);
                let subject = Subject {
                    hostname: &e.hostname,
                    last_seen_ms: obs.last_seen_ms,
                    compliance: crate::compliance::of(obs.last_run.as_ref(), live),
                    traits: held.as_ref().map(|held| StoreView { store, id: held.root() }),
                };
                if !query.matches(&subject) {
                    return None;
                }
            }
            Some(envoy_info(node, e, &obs))
        })
        .collect();
    let (as_of_index, as_of_hash) = (control.last_index(), control.last_hash().to_vec());
    Ok(ListEnvoysResponse { envoys, as_of_index, as_of_hash, unanswered: Vec::new() })
}

/// One of this bolt's envoys, by hostname or id.
pub fn local_show(node: &Node, req: &ShowEnvoyRequest) -> Result<ShowEnvoyResponse, Status> {
    let control = node.control();
    let envoy = control
        .envoy_by_hostname(&req.envoy)
        .or_else(|| control.envoy(&req.envoy))
        .ok_or_else(|| Status::not_found(format!("unknown envoy {:?}", req.envoy)))?;
    let obs = node.fleet.get(&envoy.envoy_id).unwrap_or_default();
    let held = node.fleet.traits_if_current(&envoy.envoy_id, &obs.traits_hash);
    let traits_json = held.map(|held| held.store().to_json(held.root())).unwrap_or_default();
    Ok(ShowEnvoyResponse {
        envoy: Some(envoy_info(node, envoy, &obs)),
        compliance: crate::compliance::of(obs.last_run.as_ref(), control.stack_version()) as i32,
        traits_json,
        traits_hash: obs.traits_hash,
        last_counter: obs.last_counter,
        unanswered: Vec::new(),
    })
}

/// Where this bolt's active envoys stand against its live stack.
pub fn local_compliance(node: &Node) -> ReportComplianceResponse {
    let control = node.control();
    let live = control.stack_version();
    let online_since = node.online_since_ms(now_ms());
    let mut report = ReportComplianceResponse { stack_version: live, ..Default::default() };
    for envoy in control.envoys().filter(|e| e.is_active()) {
        let obs = node.fleet.get(&envoy.envoy_id).unwrap_or_default();
        let compliance = crate::compliance::of(obs.last_run.as_ref(), live);
        report.envoys += 1;
        report.offline += u32::from(obs.last_seen_ms < online_since);
        *count_of(&mut report, compliance) += 1;
        if compliance != Compliance::Compliant {
            report.noncompliant.push(EnvoyCompliance {
                envoy_id: envoy.envoy_id.clone(),
                hostname: envoy.hostname.clone(),
                compliance: compliance as i32,
                last_run: obs.last_run,
                last_seen_ms: obs.last_seen_ms,
            });
        }
    }
    report.noncompliant.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    report
}

fn count_of(report: &mut ReportComplianceResponse, compliance: Compliance) -> &mut u32 {
    match compliance {
        Compliance::Compliant => &mut report.compliant,
        Compliance::Failing => &mut report.failing,
        Compliance::Drifted => &mut report.drifted,
        Compliance::Behind => &mut report.behind,
        Compliance::NeverReported | Compliance::Unspecified => &mut report.never_reported,
    }
}

fn envoy_info(node: &Node, envoy: &EnvoyEntry, obs: &EnvoyObservation) -> EnvoyInfo {
    EnvoyInfo {
        envoy_id: envoy.envoy_id.clone(),
        hostname: envoy.hostname.clone(),
        revoked: envoy.revoked_index.is_some(),
        enrolled_index: envoy.enrolled_index,
        last_seen_ms: obs.last_seen_ms,
        bundle_fingerprint: obs.bundle_fingerprint.clone(),
        last_run: obs.last_run,
        reports_received: obs.reports_received,
        moved_to: envoy.moved_to.clone().unwrap_or_default(),
        bolt: node.settings.bolt.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
    }
}

/// Makes `call` on every other bolt of the roster at once: who answered what, and who did not.
async fn ask_others<T, F, Fut>(node: &Node, call: F) -> (Vec<(String, T)>, Vec<BoltUnanswered>)
where
    F: Fn(SpannerClient<tonic::transport::Channel>) -> Fut + Clone,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let Some(me) = node.settings.bolt.as_ref().map(|b| b.id.clone()) else { return (Vec::new(), Vec::new()) };
    let others: Vec<(String, Vec<String>)> = node
        .control()
        .roster()
        .bolts()
        .filter(|(id, _)| **id != me)
        .map(|(id, entry)| (id.clone(), entry.addrs.clone()))
        .collect();
    if others.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let tls = match node.pki.identity.peer_client_tls() {
        Ok(tls) => tls,
        Err(e) => {
            let reason = format!("no client TLS to ask it with: {e:#}");
            return (
                Vec::new(),
                others.into_iter().map(|(bolt, _)| BoltUnanswered { bolt, reason: reason.clone() }).collect(),
            );
        }
    };
    let asked = others.into_iter().map(|(bolt, addrs)| {
        let (tls, call) = (tls.clone(), call.clone());
        async move { (crate::bolt::ask_bolt(&addrs, tls, call).await, bolt) }
    });
    let (mut answered, mut unanswered) = (Vec::new(), Vec::new());
    for (result, bolt) in futures::future::join_all(asked).await {
        match result {
            Ok(answer) => answered.push((bolt, answer)),
            Err(e) => unanswered.push(BoltUnanswered { bolt, reason: format!("{e:#}") }),
        }
    }
    (answered, unanswered)
}

/// `envoys list` across the federation.
pub async fn list(node: &Node, req: ListEnvoysRequest) -> Result<ListEnvoysResponse, Status> {
    // The query is checked here first: a bad one is refused before any bolt is asked.
    let mut answer = local_list(node, &req).await?;
    if req.local {
        return Ok(answer);
    }
    let remote = ListEnvoysRequest { linearizable: false, ..req };
    let (answered, unanswered) = ask_others(node, move |mut client: SpannerClient<_>| {
        let remote = remote.clone();
        async move { client.list_envoys(remote).await }
    })
    .await;
    for (bolt, part) in answered {
        answer.envoys.extend(part.envoys.into_iter().map(|e| EnvoyInfo { bolt: bolt.clone(), ..e }));
    }
    let held: HashSet<String> =
        answer.envoys.iter().filter(|e| e.moved_to.is_empty()).map(|e| e.envoy_id.clone()).collect();
    answer.envoys.retain(|e| e.moved_to.is_empty() || !held.contains(&e.envoy_id));
    answer.envoys.sort_by(|a, b| (&a.hostname, &a.bolt).cmp(&(&b.hostname, &b.bolt)));
    answer.unanswered = unanswered;
    Ok(answer)
}

/// `envoys show` across the federation: from the bolt that holds the envoy.
pub async fn show(node: &Node, req: ShowEnvoyRequest) -> Result<ShowEnvoyResponse, Status> {
    let name = req.envoy.clone();
    let here = match local_show(node, &req) {
        Ok(here) if here.envoy.as_ref().is_some_and(|e| e.moved_to.is_empty()) => return Ok(here),
        Ok(moved) => Some(moved),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return Err(status),
    };
    let (answered, unanswered) = ask_others(node, move |mut client: SpannerClient<_>| {
        let req = req.clone();
        async move {
            match client.show_envoy(req).await {
                // Not there is an answer too.
                Err(status) if status.code() == tonic::Code::NotFound => {
                    Ok(tonic::Response::new(ShowEnvoyResponse::default()))
                }
                other => other,
            }
        }
    })
    .await;
    let holder = answered.into_iter().find(|(_, a)| a.envoy.as_ref().is_some_and(|e| e.moved_to.is_empty()));
    if let Some((bolt, mut found)) = holder {
        if let Some(envoy) = found.envoy.as_mut() {
            envoy.bolt = bolt;
        }
        return Ok(found);
    }
    match here {
        Some(moved) => Ok(ShowEnvoyResponse { unanswered, ..moved }),
        None if unanswered.is_empty() => Err(Status::not_found(format!("unknown envoy {name:?}"))),
        None => Err(Status::not_found(format!(
            "unknown envoy {name:?} at the bolts that answered; not answering: {}",
            unanswered.iter().map(|u| format!("{} ({})", u.bolt, u.reason)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `compliance` across the federation: the counts of every bolt added up.
pub async fn compliance(node: &Node) -> ReportComplianceResponse {
    let mut report = local_compliance(node);
    let (answered, unanswered) = ask_others(node, |mut client: SpannerClient<_>| async move {
        client.report_compliance(ReportComplianceRequest {}).await
    })
    .await;
    for (_, part) in answered {
        report.stack_version = report.stack_version.max(part.stack_version);
        report.envoys += part.envoys;
        report.compliant += part.compliant;
        report.failing += part.failing;
        report.drifted += part.drifted;
        report.behind += part.behind;
        report.never_reported += part.never_reported;
        report.offline += part.offline;
        report.noncompliant.extend(part.noncompliant);
    }
    report.noncompliant.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    report.unanswered = unanswered;
    report
}
