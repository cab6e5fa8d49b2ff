//! This server as a bolt of a federation (`vigosrv run --bolt ID --bolt-pattern GLOB…`): its
//! entry in the admissions roster, and the roster writes an operator makes through it
//! (`spanner reassign`, `spanner drain`). Each write is an event on this bolt's log, stamped by
//! the bolt's roster clock, so the audit log covers it and every peer of the bolt applies it
//! alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use sha2::Digest;
use vigo_proto::agent::check_in_response::Reply;
use vigo_proto::agent::{CheckInResponse, Redirect};
use vigo_proto::events::event::Kind;
use vigo_proto::events::{
    BoltDrained, BoltRegistered, EnvoyAdopted, EnvoyHandedOff, EnvoysReassigned, RosterDelta, RosterMerged,
    RosterStamp, StackPublished,
};
use vigo_proto::spanner::spanner_client::SpannerClient;
use vigo_proto::spanner::{AdoptRequest, FederateRequest, FetchStackRequest, GossipRequest, LiveStack};
use vigo_proto::tls::{client_config, connect, fetch_pinned_ca};
use vigo_proto::token::{Token, TokenKind};
use vigo_state::control::roster_of;
use vigo_state::roster::{BoltEntry, Clock, Health, Roster};
use vigo_state::{ControlError, ControlState};

use crate::check_in::Refusal;
use crate::limits;
use crate::node::{Node, WriteError, now_ms};
use crate::pki::{self, FederationKeys, Paths};

/// What makes this server a bolt.
#[derive(Debug, Clone)]
pub struct BoltConfig {
    /// Its id in the roster.
    pub id: String,
    /// The hostname globs it owns.
    pub patterns: Vec<String>,
    /// Federate with the bolt at this address, with this `vgf1_` token (on an empty data dir).
    pub federate: Option<(String, String)>,
    /// Auto-drain a bolt after this many failed probes in a row.
    pub auto_drain_after: Option<u32>,
}

/// How the other bolts answered this peer's probes (soft state: not on the log; every peer of
/// a bolt probes for itself).
#[derive(Debug, Default)]
pub struct BoltHealth(Mutex<BTreeMap<String, Health>>);

impl BoltHealth {
    /// What is known of bolt `id`.
    pub fn get(&self, id: &str) -> Option<Health> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn answered(&self, id: &str, probe: Duration, envoys: u64, compliant: u64) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let health = all.entry(id.to_string()).or_default();
        health.online = true;
        health.failed_probes = 0;
        health.probe_ms = probe.as_millis().min(u128::from(u32::MAX)) as u32;
        health.envoys = envoys;
        health.compliant = compliant;
    }

    fn failed(&self, id: &str) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let health = all.entry(id.to_string()).or_default();
        health.online = false;
        health.failed_probes = health.failed_probes.saturating_add(1);
    }
}

/// Whether merging `remote` into `state`'s roster would change it.
pub fn adds_to(state: &ControlState, remote: Roster) -> bool {
    let mut merged = state.roster().clone();
    merged.merge_in(remote);
    merged != *state.roster()
}

/// Where a federated bolt keeps the roster it was given until it is on its own log.
fn seed_path(paths: &Paths) -> std::path::PathBuf {
    paths.root.join("federation-roster.pb")
}

/// On an empty data dir: asks the bolt at `addr` to federate this one with `token`, and founds
/// this bolt's cluster with the federation's keys.
pub async fn federate(paths: &Paths, bolt: &str, addr: &str, token: &str) -> anyhow::Result<()> {
    let token = Token::parse_as(TokenKind::Federate, token)?;
    let ca_der = fetch_pinned_ca(addr, &token.ca_pin, limits::JOIN_CALL_TIMEOUT).await?;
    let tls = client_config(&CertificateDer::from(ca_der.clone()), None)?;
    let channel = connect(addr, tls, limits::JOIN_CALL_TIMEOUT).await?;
    let request = FederateRequest { token: token.to_string(), bolt: bolt.to_string() };
    let reply = SpannerClient::new(channel)
        .federate(request)
        .await
        .map_err(|s| anyhow::anyhow!("the bolt at {addr} refused to federate this one: {}", s.message()))?
        .into_inner();
    if reply.ca_cert_der != ca_der {
        anyhow::bail!("the bolt at {addr} answered with a different CA than it presented");
    }
    let bundle_key_seed =
        reply.bundle_key_seed.as_slice().try_into().context("the federation answer holds no bundle key")?;
    let keys = FederationKeys { ca_cert_der: reply.ca_cert_der, ca_key_der: reply.ca_key_der, bundle_key_seed };
    pki::init_federated(paths, &keys)?;
    let roster = prost::Message::encode_to_vec(&reply.roster.unwrap_or_default());
    std::fs::write(seed_path(paths), roster).context("cannot keep the federation's roster")?;
    tracing::info!(bolt, via = addr, "federated: founded this bolt with the federation's keys");
    Ok(())
}

/// Puts the roster a federated bolt was given on its log, once.
async fn plant_seed(node: &Node, paths: &Paths) {
    let Ok(bytes) = std::fs::read(seed_path(paths)) else { return };
    let Ok(delta) = <RosterDelta as prost::Message>::decode(bytes.as_slice()) else {
        tracing::warn!("the federation's roster kept at start is damaged; gossip will bring it");
        let _ = std::fs::remove_file(seed_path(paths));
        return;
    };
    let event = RosterMerged { from: "federation".into(), roster: Some(delta) };
    match node.commit_event("bolt:federation", Kind::RosterMerged(event)).await {
        Ok(_) => {
            let _ = std::fs::remove_file(seed_path(paths));
        }
        Err(e) => tracing::warn!("cannot put the federation's roster on the log yet: {e}"),
    }
}

/// Anti-entropy, forever: every [`limits::GOSSIP_INTERVAL`] this peer probes every other bolt
/// of the roster with a `Gossip` call. The leader sends its roster and merges the answer (a
/// `RosterMerged` event when it adds anything); followers only probe, for their own view of
/// the other bolts' health.
pub async fn gossip(node: Arc<Node>, config: BoltConfig, paths: Paths) {
    let mut ticker = tokio::time::interval(limits::GOSSIP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tls = match node.pki.identity.peer_client_tls() {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!("no gossip: cannot build this peer's client TLS: {e:#}");
            return;
        }
    };
    loop {
        ticker.tick().await;
        if node.log.is_leader() {
            plant_seed(&node, &paths).await;
        }
        let state = node.log.state();
        let leader = node.log.is_leader();
        let ours = leader.then(|| state.roster().to_delta());
        let others: Vec<(String, Vec<String>)> = state
            .roster()
            .bolts()
            .filter(|(id, _)| **id != config.id)
            .map(|(id, entry)| (id.clone(), entry.addrs.clone()))
            .collect();
        for (id, addrs) in others {
            let request = GossipRequest { from: config.id.clone(), roster: ours.clone() };
            let started = Instant::now();
            let call = |mut client: SpannerClient<_>| {
                let request = request.clone();
                async move { client.gossip(request).await }
            };
            match ask_bolt(&addrs, tls.clone(), call).await {
                Ok(reply) => {
                    node.bolt_health.answered(&id, started.elapsed(), reply.envoys, reply.compliant);
                    if let (true, Some(delta)) = (leader, reply.roster) {
                        merge_from(&node, &id, delta).await;
                    }
                    if leader && reply.stack.is_some_and(|theirs| newer_than_ours(&node.log.state(), &theirs)) {
                        sync_stack(&node, &id, &addrs, tls.clone()).await;
                    }
                }
                Err(e) => {
                    node.bolt_health.failed(&id);
                    tracing::debug!(bolt = id, "gossip failed: {e:#}");
                }
            }
        }
        if let (true, Some(after)) = (leader, config.auto_drain_after) {
            auto_drain(&node, &config.id, after).await;
        }
    }
}

/// Auto-drain, on the leader after each round of probes: a bolt that failed `after` probes in a
/// row and is not drained is drained (automatically) to the healthy, undrained bolt holding the
/// fewest envoys, this one included; a bolt drained automatically that answers again has its
/// drain lifted, so it takes its envoys back. Every bolt's leader does this; the roster's
/// last-writer-wins registers settle bolts that chose differently.
async fn auto_drain(node: &Node, me: &str, after: u32) {
    let state = node.log.state();
    let roster = state.roster();
    let envoys_of = |id: &str| {
        if id == me { state.n_active_envoys() as u64 } else { node.bolt_health.get(id).map_or(0, |h| h.envoys) }
    };
    let healthy =
        |id: &str| roster.drain_of(id).is_none() && (id == me || node.bolt_health.get(id).is_some_and(|h| h.online));
    for (id, _) in roster.bolts().filter(|(id, _)| id.as_str() != me) {
        let Some(health) = node.bolt_health.get(id) else { continue };
        let to = match roster.drain_of(id) {
            None if health.failed_probes >= after => {
                let target = roster
                    .bolts()
                    .map(|(other, _)| other.as_str())
                    .filter(|other| other != id && healthy(other))
                    .min_by_key(|other| (envoys_of(other), other.to_string()));
                match target {
                    Some(target) => target.to_string(),
                    None => continue,
                }
            }
            Some(drain) if drain.automatic && health.online => String::new(),
            _ => continue,
        };
        let actor = format!("bolt:{me}:auto-drain");
        let written = roster_write(node, &actor, |stamp| {
            Kind::BoltDrained(BoltDrained { bolt: id.clone(), to: to.clone(), stamp: Some(stamp), automatic: true })
        })
        .await;
        match (written, to.as_str()) {
            (Ok(_), "") => tracing::warn!(bolt = id, "auto-drain: the bolt answers again; its drain is lifted"),
            (Ok(_), to) => tracing::warn!(bolt = id, to, failed_probes = health.failed_probes, "auto-drain: drained"),
            (Err(e), _) => tracing::warn!(bolt = id, "auto-drain: cannot write the drain: {e}"),
        }
    }
}

/// Makes `call` on the first of a bolt's `addrs` that answers it, each try (connection
/// included) bounded by [`limits::GOSSIP_CALL_TIMEOUT`]; the last failure when none does.
pub(crate) async fn ask_bolt<T, F, Fut>(addrs: &[String], tls: Arc<rustls::ClientConfig>, call: F) -> anyhow::Result<T>
where
    F: Fn(SpannerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = anyhow::anyhow!("the bolt has no address");
    for addr in addrs {
        let attempt = async {
            let channel = connect(addr, tls.clone(), limits::GOSSIP_CALL_TIMEOUT).await?;
            anyhow::Ok(call(SpannerClient::new(channel)).await?.into_inner())
        };
        match tokio::time::timeout(limits::GOSSIP_CALL_TIMEOUT, attempt).await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => last = e.context(format!("at {addr}")),
            Err(_) => last = anyhow::anyhow!("at {addr}: no answer in time"),
        }
    }
    Err(last)
}

/// This bolt's live stack as gossip carries it (version 0: none).
pub fn live_stack(state: &ControlState) -> LiveStack {
    match state.stack() {
        Some(live) => LiveStack { version: live.version, sha256: live.sha256.to_vec() },
        None => LiveStack::default(),
    }
}

/// Whether another bolt's live stack wins over this one's: the greater (version, sha256).
fn newer_than_ours(state: &ControlState, theirs: &LiveStack) -> bool {
    let ours = live_stack(state);
    theirs.version > 0 && (theirs.version, &theirs.sha256) > (ours.version, &ours.sha256)
}

/// Config sync: takes bolt `from`'s live stack, which is newer than this one's, and publishes it
/// here at the same version. The stack is validated as a publish is; one that does not validate
/// here (another build) is not taken, and said so.
async fn sync_stack(node: &Node, from: &str, addrs: &[String], tls: Arc<rustls::ClientConfig>) {
    let call = |mut client: SpannerClient<_>| async move { client.fetch_stack(FetchStackRequest {}).await };
    let fetched = match ask_bolt(addrs, tls, call).await {
        Ok(fetched) => fetched,
        Err(e) => return tracing::warn!(bolt = from, "cannot fetch its newer stack: {e:#}"),
    };
    if !newer_than_ours(&node.log.state(), &LiveStack { version: fetched.version, sha256: fetched.sha256.clone() }) {
        return;
    }
    if sha2::Sha256::digest(&fetched.archive).as_slice() != fetched.sha256.as_slice() {
        return tracing::warn!(bolt = from, "its stack does not match its own hash; not taken");
    }
    if let Err(errors) = crate::stack::Stack::from_archive(&fetched.archive) {
        let first = errors.0.first().map(ToString::to_string).unwrap_or_default();
        return tracing::warn!(bolt = from, version = fetched.version, "its stack does not validate here: {first}");
    }
    let version = fetched.version;
    let event = StackPublished { synced_from: from.to_string(), ..fetched };
    match node.commit_event(&format!("bolt:{from}"), Kind::StackPublished(event)).await {
        Ok(_) => tracing::info!(bolt = from, version, "took the federation's newer stack"),
        Err(e) => tracing::warn!(bolt = from, version, "cannot take its newer stack: {e}"),
    }
}

/// Commits what bolt `from`'s roster adds to this one, if anything.
async fn merge_from(node: &Node, from: &str, delta: RosterDelta) {
    let Ok(remote) = roster_of(&delta) else {
        tracing::warn!(bolt = from, "a roster from this bolt does not validate; ignored");
        return;
    };
    if !adds_to(&node.log.state(), remote) {
        return;
    }
    let event = RosterMerged { from: from.to_string(), roster: Some(delta) };
    if let Err(e) = node.commit_event(&format!("bolt:{from}"), Kind::RosterMerged(event)).await {
        tracing::warn!(bolt = from, "cannot merge its roster: {e}");
    }
}

/// The bolt's clock for roster writes.
pub struct RosterClock(Mutex<Clock>);

impl RosterClock {
    /// A clock for bolt `id`.
    pub fn new(id: &str) -> RosterClock {
        RosterClock(Mutex::new(Clock::new(id)))
    }

    /// A stamp greater than every stamp in `state`'s roster and every stamp handed out before.
    pub fn stamp(&self, state: &ControlState) -> RosterStamp {
        let mut clock = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for seen in state.roster().stamps() {
            clock.observe(seen);
        }
        let stamp = clock.tick(now_ms().max(0) as u64);
        RosterStamp { ms: stamp.ms, counter: stamp.counter, actor: stamp.actor }
    }
}

/// Why a roster write was refused before it was proposed.
fn not_a_bolt() -> WriteError {
    WriteError::Refused(ControlError::Malformed("this server is not a bolt: start it with --bolt ID"))
}

/// The entry this bolt should have in the roster: every peer's address, its patterns.
fn own_entry(state: &ControlState, config: &BoltConfig) -> BoltEntry {
    BoltEntry { addrs: state.peer_addrs(), patterns: config.patterns.clone() }
}

/// Puts this bolt's entry on the roster when it is missing or out of date (a new peer, other
/// patterns), retrying while the cluster has no leader; returns once the roster holds it.
pub async fn register(node: std::sync::Arc<Node>, config: BoltConfig) {
    for _ in 0..crate::limits::BOLT_REGISTER_ATTEMPTS {
        let state = node.log.state();
        let wanted = own_entry(&state, &config);
        if state.roster().bolt(&config.id) == Some(&wanted) {
            return;
        }
        let result = node
            .commit(&format!("bolt:{}", config.id), |state| {
                let entry = own_entry(state, &config);
                Ok(Kind::BoltRegistered(BoltRegistered {
                    bolt: config.id.clone(),
                    addrs: entry.addrs,
                    patterns: entry.patterns,
                    stamp: Some(node.roster_clock.stamp(state)),
                }))
            })
            .await;
        match result {
            Ok(env) => tracing::info!(bolt = config.id, index = env.index, "bolt registered in the roster"),
            Err(e) => tracing::warn!(bolt = config.id, "cannot register the bolt yet: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::error!(bolt = config.id, "gave up registering the bolt in the roster");
}

/// `spanner reassign`: `hostname` (a hostname or a glob) to bolt `to`, or lifted (`None`).
pub async fn reassign(node: &Node, actor: &str, hostname: &str, to: Option<&str>) -> Result<u64, WriteError> {
    roster_write(node, actor, |stamp| {
        Kind::EnvoysReassigned(EnvoysReassigned {
            hostname: hostname.to_string(),
            to: to.unwrap_or_default().to_string(),
            stamp: Some(stamp),
        })
    })
    .await
}

/// `spanner drain`: bolt `bolt`'s envoys to bolt `to`, or the drain ended (`None`).
pub async fn drain(node: &Node, actor: &str, bolt: &str, to: Option<&str>) -> Result<u64, WriteError> {
    roster_write(node, actor, |stamp| {
        Kind::BoltDrained(BoltDrained {
            bolt: bolt.to_string(),
            to: to.unwrap_or_default().to_string(),
            stamp: Some(stamp),
            automatic: false,
        })
    })
    .await
}

/// Commits the roster event `make` builds around a fresh stamp; only a bolt writes the roster.
async fn roster_write(node: &Node, actor: &str, make: impl FnOnce(RosterStamp) -> Kind) -> Result<u64, WriteError> {
    node.settings.bolt.as_ref().ok_or_else(not_a_bolt)?;
    let env = node.commit(actor, |state| Ok(make(node.roster_clock.stamp(state)))).await?;
    Ok(env.index)
}

/// Turns a check-in refused because the envoy belongs to another bolt into the `Redirect` that
/// sends it there, handing the envoy off first when this bolt still holds it. A hand-off that
/// fails (the other bolt down, or not yet aware it owns the hostname) is answered `Backoff`:
/// the envoy keeps its bundle and asks again.
///
/// An envoy this bolt does not know, whose certificate (`peer_cert`, DER) names a hostname the
/// roster routes here, is taken in on that certificate: its own bolt is away and drained or
/// reassigned here. It is told to come back in a second, when it is served.
pub async fn follow_up(
    node: &Node,
    answered: Result<CheckInResponse, Refusal>,
    peer_cert: Option<&[u8]>,
) -> Result<CheckInResponse, Refusal> {
    match answered {
        // Handed off from here, and routed here again (its bolt drained here, or reassigned):
        // taken in again on its certificate rather than sent to a bolt that may be away.
        Err(Refusal::Moved { envoy_id, bolt }) => match adopt_on_certificate(node, &envoy_id, peer_cert).await {
            Ok(true) => Ok(crate::check_in::backoff(1)),
            _ => Ok(redirect(node, &bolt)),
        },
        Err(Refusal::UnknownEnvoy(envoy_id)) => match adopt_on_certificate(node, &envoy_id, peer_cert).await {
            Ok(true) => Ok(crate::check_in::backoff(1)),
            Ok(false) => Err(Refusal::UnknownEnvoy(envoy_id)),
            Err(e) => {
                tracing::warn!(envoy_id, "cannot take the envoy in on its certificate: {e:#}");
                Err(Refusal::UnknownEnvoy(envoy_id))
            }
        },
        Err(Refusal::Elsewhere { envoy_id, bolt }) => match hand_off(node, &envoy_id, &bolt).await {
            Ok(()) => Ok(redirect(node, &bolt)),
            Err(e) => {
                tracing::warn!(envoy_id, bolt, "cannot hand the envoy off yet: {e:#}");
                Ok(crate::check_in::backoff(limits::HAND_OFF_RETRY_S))
            }
        },
        other => other,
    }
}

/// Takes envoy `envoy_id` in on its certificate when this bolt does not know it, the certificate
/// is its own and unrevoked, and the roster routes its hostname here. Whether it was taken in.
async fn adopt_on_certificate(node: &Node, envoy_id: &str, peer_cert: Option<&[u8]>) -> anyhow::Result<bool> {
    let (Some(me), Some(cert)) = (node.settings.bolt.as_ref(), peer_cert) else { return Ok(false) };
    let Some(certified) = pki::envoy_of_cert(cert).filter(|c| c.envoy_id == envoy_id) else { return Ok(false) };
    let cert_sha256: [u8; 32] = sha2::Sha256::digest(cert).into();
    let state = node.log.state();
    if state.roster().is_revoked(&cert_sha256) || state.router().owner(&certified.hostname) != Some(me.id.as_str()) {
        return Ok(false);
    }
    let adopted = EnvoyAdopted {
        envoy_id: certified.envoy_id,
        hostname: certified.hostname,
        pubkey: certified.pubkey.to_vec(),
        cert_sha256: cert_sha256.to_vec(),
        from: String::new(),
    };
    node.commit_event(&format!("bolt:{}", me.id), Kind::EnvoyAdopted(adopted)).await?;
    tracing::warn!(envoy_id, "took in an envoy of a bolt that is away, on its certificate");
    Ok(true)
}

fn redirect(node: &Node, bolt: &str) -> CheckInResponse {
    let servers = node.log.state().roster().bolt(bolt).map(|b| b.addrs.clone()).unwrap_or_default();
    CheckInResponse { reply: Some(Reply::Redirect(Redirect { servers })), ..Default::default() }
}

/// The bolt that owns `hostname` when it is not this one (and this server is a bolt).
pub fn owner_elsewhere(node: &Node, hostname: &str) -> Option<String> {
    let me = node.settings.bolt.as_ref()?;
    let state = node.log.state();
    state.router().owner(hostname).filter(|owner| *owner != me.id).map(str::to_string)
}

/// Gives envoy `envoy_id` to bolt `to`: `to` adopts it (`Spanner.Adopt`), then this bolt
/// records the hand-off, after which its check-ins here are redirected without asking again.
pub async fn hand_off(node: &Node, envoy_id: &str, to: &str) -> anyhow::Result<()> {
    let me = node.settings.bolt.as_ref().map(|b| b.id.clone()).context("this server is not a bolt")?;
    let state = node.log.state();
    let envoy = state.envoy(envoy_id).context("no such envoy")?;
    let addrs = state.roster().bolt(to).map(|b| b.addrs.clone()).context("the bolt left the roster")?;
    let adopted = EnvoyAdopted {
        envoy_id: envoy.envoy_id.clone(),
        hostname: envoy.hostname.clone(),
        pubkey: envoy.pubkey.to_vec(),
        cert_sha256: envoy.cert_sha256.to_vec(),
        from: me.clone(),
    };
    let call = |mut client: SpannerClient<_>| {
        let request = AdoptRequest { envoy: Some(adopted.clone()) };
        async move { client.adopt(request).await }
    };
    ask_bolt(&addrs, node.pki.identity.peer_client_tls()?, call).await.with_context(|| format!("bolt {to}"))?;
    let event = EnvoyHandedOff { envoy_id: envoy_id.to_string(), to: to.to_string() };
    node.commit_event(&format!("bolt:{me}"), Kind::EnvoyHandedOff(event)).await?;
    tracing::info!(envoy_id, to, "envoy handed off");
    Ok(())
}
