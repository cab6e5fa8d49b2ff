//! The check-in hot path: 95%+ of all traffic.
//!
//! **Architecture Invariant (I-3):** a check-in reads the immutable control snapshot, writes
//! only the in-memory fleet index, and reads the bundle cache. No log, no SQL write, no lock
//! held across an `.await` (this module has no `.await` at all), no work proportional to the
//! fleet size. The handler takes exactly those three things, so nothing else is even in scope.
//! The one read below memory: a bundle compile (once per envoy per publish or traits change)
//! whose templates reach into a large trait value, which the trait store reads back from the
//! fleet snapshot (`vigo_state::traits`, cold nodes).
//!
//! Per check-in (no change): one Ed25519 verification (~30 µs on the reference machine), one
//! shard lock of the fleet index, one hash-map lookup in the bundle cache.

use std::sync::Arc;

use ed25519_dalek::Signature;
use sha2::{Digest, Sha256};
use vigo_proto::admin::RunSummary;
use vigo_proto::agent::resource_result::Status as ResultStatus;
use vigo_proto::agent::{
    Backoff, CheckInRequest, CheckInResponse, NoChange, ReportRequest, RunReport, WatchRequest,
    check_in_response::Reply,
};
use vigo_state::{ControlState, EnvoyEntry, FleetIndex, Replay, TraitsError};

use crate::admission::{QueueDelay, UploadBudget, retry_after_s};
use crate::bundles::{BundleCache, BundleError};
use crate::limits::{REPORT_RUNS_MAX, SHED_RETRY_WINDOW_S, TRAITS_BYTES_MAX};
use crate::stack::traits::Traits;

/// What a check-in may touch (I-3).
pub struct CheckInContext<'a> {
    /// Control state as of the last applied event.
    pub control: &'a ControlState,
    /// Observations.
    pub fleet: &'a FleetIndex,
    /// Compiled bundles.
    pub bundles: &'a BundleCache,
    /// Seconds between check-ins the server asks for.
    pub check_in_interval_s: u32,
    /// Traits uploads the server may ask for now.
    pub uploads: &'a UploadBudget,
    /// How far behind the server is: past its cap, every check-in is told to back off.
    pub queue_delay: &'a QueueDelay,
    /// This server's bolt id, when it is a bolt of a federation.
    pub bolt: Option<&'a str>,
}

/// Why a check-in or report is refused. Small and cheap: no boxing on the hot path.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No such envoy enrolled.
    #[error("unknown envoy {0}")]
    UnknownEnvoy(String),
    /// The envoy was revoked.
    #[error("envoy {0} is revoked")]
    Revoked(String),
    /// The envoy was handed off to another bolt: it is redirected there.
    #[error("envoy {envoy_id} belongs to bolt {bolt}")]
    Moved {
        /// The envoy.
        envoy_id: String,
        /// Its bolt.
        bolt: String,
    },
    /// Another bolt owns the envoy's hostname now: it is handed off there, then redirected.
    #[error("bolt {bolt} owns envoy {envoy_id} now")]
    Elsewhere {
        /// The envoy.
        envoy_id: String,
        /// The owning bolt.
        bolt: String,
    },
    /// The TLS client certificate is not the one issued to this envoy.
    #[error("client certificate does not belong to envoy {0}")]
    IdentityMismatch(String),
    /// The request signature does not verify with the envoy's key.
    #[error("request signature does not verify for envoy {0}")]
    BadSignature(String),
    /// The counter did not grow.
    #[error(transparent)]
    Replay(#[from] Replay),
    /// Malformed request.
    #[error("bad request: {0}")]
    Malformed(&'static str),
    /// Traits that cannot be stored.
    #[error("bad request: {0}")]
    Traits(#[from] TraitsError),
    /// No bundle could be made.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// The event index an envoy's list of servers is current as of: the last change to the peers,
/// and on a bolt also to the roster (the fallback addresses come from it).
pub fn servers_index(control: &ControlState, bolt: Option<&str>) -> u64 {
    match bolt {
        Some(_) => control.peers_index().max(control.roster_index()),
        None => control.peers_index(),
    }
}

/// On bolt `bolt`: the peers of every other bolt, where its envoys turn when none of its own
/// peers answers.
pub fn fallback(control: &ControlState, bolt: Option<&str>) -> Vec<String> {
    let Some(me) = bolt else { return Vec::new() };
    control.roster().bolts().filter(|(id, _)| id.as_str() != me).flat_map(|(_, b)| b.addrs.iter().cloned()).collect()
}

/// Checks identity, signature and counter of a signed request; returns the envoy.
fn authenticate<'a>(
    ctx: &'a CheckInContext<'_>,
    peer_cert_sha256: Option<[u8; 32]>,
    envoy_id: &str,
    counter: u64,
    signed: &[u8],
    signature: &[u8],
    now_ms: i64,
) -> Result<&'a Arc<EnvoyEntry>, Refusal> {
    let envoy = ctx.control.envoy(envoy_id).ok_or_else(|| Refusal::UnknownEnvoy(envoy_id.to_string()))?;
    // Revoked here, or at another bolt of the federation since it was adopted.
    if envoy.revoked_index.is_some() || ctx.control.roster().is_revoked(&envoy.cert_sha256) {
        return Err(Refusal::Revoked(envoy_id.to_string()));
    }
    if let Some(bolt) = &envoy.moved_to {
        return Err(Refusal::Moved { envoy_id: envoy_id.to_string(), bolt: bolt.clone() });
    }
    if peer_cert_sha256 != Some(envoy.cert_sha256) {
        return Err(Refusal::IdentityMismatch(envoy_id.to_string()));
    }
    let key = envoy.verifying_key().ok_or_else(|| Refusal::BadSignature(envoy_id.to_string()))?;
    let signature = Signature::from_slice(signature).map_err(|_| Refusal::BadSignature(envoy_id.to_string()))?;
    key.verify_strict(signed, &signature).map_err(|_| Refusal::BadSignature(envoy_id.to_string()))?;
    ctx.fleet.accept(envoy_id, counter, now_ms)?;
    Ok(envoy)
}

/// Handles one check-in. See the module docs.
pub fn check_in(
    ctx: &CheckInContext<'_>,
    peer_cert_sha256: Option<[u8; 32]>,
    req: &CheckInRequest,
    now_ms: i64,
) -> Result<CheckInResponse, Refusal> {
    if ctx.queue_delay.over_cap() {
        // Check-ins wait longer than they may: shed this one before any work, the envoy comes
        // back at its own point of a short window (admission.rs).
        let window_s = ctx.check_in_interval_s.clamp(1, SHED_RETRY_WINDOW_S);
        return Ok(backoff(retry_after_s(&req.envoy_id, u64::from(window_s))));
    }
    if req.traits_json.len() > TRAITS_BYTES_MAX {
        return Err(Refusal::Malformed("traits exceed the size limit"));
    }
    let signed = vigo_proto::signing::check_in_bytes(req);
    let envoy = authenticate(ctx, peer_cert_sha256, &req.envoy_id, req.counter, &signed, &req.signature, now_ms)?;
    if let Some(me) = ctx.bolt
        && let Some(owner) = ctx.control.router().owner(&envoy.hostname)
        && owner != me
    {
        return Err(Refusal::Elsewhere { envoy_id: req.envoy_id.clone(), bolt: owner.to_string() });
    }

    let sent_traits = if req.traits_json.is_empty() {
        None
    } else {
        if Sha256::digest(req.traits_json.as_bytes()).as_slice() != req.traits_hash.as_slice() {
            return Err(Refusal::Malformed("traits do not match their hash"));
        }
        // Parsed and interned once, when sent (rarely); a refused document changes nothing.
        Some(ctx.fleet.trait_store().intern_json(&req.traits_json)?)
    };
    let known = sent_traits.is_some() || ctx.fleet.has_traits(&req.envoy_id, &req.traits_hash);
    ctx.fleet.record_check_in(&req.envoy_id, &req.bundle_fingerprint, &req.traits_hash, sent_traits);

    let ask_for_traits = || {
        let waiting = ctx.control.n_envoys().saturating_sub(ctx.fleet.n_with_traits());
        Ok(match ctx.uploads.try_take(now_ms, &req.envoy_id, waiting, ctx.check_in_interval_s) {
            // Unknown traits: ask for them, and check in again at once.
            Ok(()) => CheckInResponse {
                reply: Some(Reply::NoChange(NoChange {})),
                send_traits: true,
                next_check_in_s: 0,
                ..Default::default()
            },
            // More uploads than the server takes in a second: come back later (admission.rs).
            Err(retry_after_s) => backoff(retry_after_s),
        })
    };
    if !known {
        return ask_for_traits();
    }
    let next_check_in_s = next_check_in_s(&req.envoy_id, ctx.check_in_interval_s, now_ms);
    let mut response = CheckInResponse { next_check_in_s, ..Default::default() };
    // An envoy holding an older list of peers is sent the current one (rarely: peers change
    // seldom), so it can move to another peer by itself.
    let peers_index = servers_index(ctx.control, ctx.bolt);
    if req.peers_index != peers_index {
        response.servers = ctx.control.peer_addrs();
        response.fallback = fallback(ctx.control, ctx.bolt);
        response.peers_index = peers_index;
    }
    let Some(live) = ctx.control.stack() else {
        response.reply = Some(Reply::NoChange(NoChange {}));
        return Ok(response);
    };
    let traits = || ctx.fleet.traits_if_current(&req.envoy_id, &req.traits_hash).map(Traits::new);
    let Some(bundle) = ctx.bundles.bundle_for(live, &envoy.hostname, &req.traits_hash, traits)? else {
        return ask_for_traits();
    };
    response.reply = Some(if bundle.fingerprint == req.bundle_fingerprint {
        Reply::NoChange(NoChange {})
    } else {
        Reply::Bundle((*bundle).clone())
    });
    Ok(response)
}

/// `Backoff`: come back in `retry_after_s` seconds, and not before.
pub fn backoff(retry_after_s: u32) -> CheckInResponse {
    CheckInResponse {
        reply: Some(Reply::Backoff(Backoff { retry_after_s })),
        send_traits: false,
        next_check_in_s: retry_after_s,
        ..Default::default()
    }
}

/// A fixed point in `[0, modulus)` for an envoy, from a hash of its id: where its check-ins
/// and pushes fall in their windows, so the fleet spreads evenly over them.
pub fn envoy_point(envoy_id: &str, modulus: u64) -> u64 {
    let digest = Sha256::digest(envoy_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % modulus.max(1)
}

/// Seconds until an envoy's next check-in: until its point of the interval next comes round, at
/// least half an interval from now. However the fleet bunched up (a server restart, a publish
/// wave, a power cut), its next check-ins are spread evenly over one interval, and each envoy
/// keeps checking in about once an interval.
pub fn next_check_in_s(envoy_id: &str, interval_s: u32, now_ms: i64) -> u32 {
    let interval_ms = u64::from(interval_s.max(1)) * 1000;
    let point = envoy_point(envoy_id, interval_ms);
    let now = now_ms.rem_euclid(interval_ms as i64) as u64;
    let mut wait_ms = (point + interval_ms - now) % interval_ms;
    if wait_ms < interval_ms / 2 {
        wait_ms += interval_ms;
    }
    wait_ms.div_ceil(1000) as u32
}

/// Handles a report of queued runs; returns how many were recorded.
pub fn report(
    ctx: &CheckInContext<'_>,
    peer_cert_sha256: Option<[u8; 32]>,
    req: &ReportRequest,
    now_ms: i64,
) -> Result<u32, Refusal> {
    if req.runs.len() > REPORT_RUNS_MAX {
        return Err(Refusal::Malformed("too many runs in one report"));
    }
    let signed = vigo_proto::signing::report_bytes(req);
    authenticate(ctx, peer_cert_sha256, &req.envoy_id, req.counter, &signed, &req.signature, now_ms)?;
    for run in &req.runs {
        ctx.fleet.record_run(&req.envoy_id, summarize(run));
    }
    Ok(req.runs.len() as u32)
}

/// Authenticates the opening of a watch (a held connection).
pub fn watch(
    ctx: &CheckInContext<'_>,
    peer_cert_sha256: Option<[u8; 32]>,
    req: &WatchRequest,
    now_ms: i64,
) -> Result<(), Refusal> {
    let signed = vigo_proto::signing::watch_bytes(req);
    authenticate(ctx, peer_cert_sha256, &req.envoy_id, req.counter, &signed, &req.signature, now_ms)?;
    Ok(())
}

/// Counts a run's results by status.
pub fn summarize(run: &RunReport) -> RunSummary {
    let mut s = RunSummary {
        run_id: run.run_id,
        started_at_ms: run.started_at_ms,
        stack_version: run.stack_version,
        offline: run.offline,
        noop: run.noop,
        ..Default::default()
    };
    for r in &run.results {
        match ResultStatus::try_from(r.status).unwrap_or(ResultStatus::Failed) {
            ResultStatus::Unchanged => s.unchanged += 1,
            ResultStatus::Changed | ResultStatus::WouldChange => s.changed += 1,
            ResultStatus::Failed => s.failed += 1,
            ResultStatus::Skipped => s.skipped += 1,
            ResultStatus::Unsupported => s.unsupported += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use prost::Message;
    use vigo_proto::events::{EnvoyEnrolled, Event, EventProposal, TokenCreated, event::Kind};

    use super::*;

    const ENVOY: &str = "e-0000000000000001";
    const CERT: [u8; 32] = [4; 32];

    /// What a check-in touches, owned: a control state, an empty fleet index and bundle cache,
    /// and an upload budget of `uploads` a second.
    struct Server {
        control: ControlState,
        fleet: FleetIndex,
        bundles: BundleCache,
        uploads: UploadBudget,
        queue_delay: Arc<QueueDelay>,
    }

    impl Server {
        fn new(control: ControlState, uploads: u32) -> Self {
            let bundles = BundleCache::new(SigningKey::from_bytes(&[7; 32]));
            let (fleet, uploads) = (FleetIndex::default(), UploadBudget::new(uploads));
            let queue_delay = QueueDelay::new(std::time::Duration::from_millis(100));
            Self { control, fleet, bundles, uploads, queue_delay }
        }

        fn ctx(&self) -> CheckInContext<'_> {
            let (control, fleet, bundles, uploads) = (&self.control, &self.fleet, &self.bundles, &self.uploads);
            CheckInContext {
                control,
                fleet,
                bundles,
                check_in_interval_s: 60,
                uploads,
                queue_delay: &self.queue_delay,
                bolt: None,
            }
        }
    }

    fn enrolled(key: &SigningKey) -> ControlState {
        fleet_of(&[(ENVOY.to_string(), key.clone())])
    }

    /// A control state with one token and `envoys` enrolled (id, key), all with certificate `CERT`.
    fn fleet_of(envoys: &[(String, SigningKey)]) -> ControlState {
        let mut kinds = vec![Kind::TokenCreated(TokenCreated {
            token_sha256: vec![1; 32],
            uses: envoys.len() as u32,
            expires_at_ms: 0,
            join: false,
            federate: false,
        })];
        for (i, (id, key)) in envoys.iter().enumerate() {
            kinds.push(Kind::EnvoyEnrolled(EnvoyEnrolled {
                envoy_id: id.clone(),
                hostname: format!("web-{i}"),
                pubkey: key.verifying_key().to_bytes().to_vec(),
                token_sha256: vec![1; 32],
                cert_sha256: CERT.to_vec(),
            }));
        }
        let mut state = ControlState::default();
        for kind in kinds {
            let proposal =
                EventProposal { proposed_at_ms: 1, actor: "test".into(), event: Some(Event { kind: Some(kind) }) };
            let envelope =
                vigo_proto::chain::seal(proposal, state.last_index() + 1, state.last_index() + 2, state.last_hash());
            state.apply(&envelope);
        }
        state
    }

    fn signed_by(id: &str, key: &SigningKey, counter: u64, traits_hash: &[u8]) -> CheckInRequest {
        let mut req =
            CheckInRequest { envoy_id: id.into(), counter, traits_hash: traits_hash.to_vec(), ..Default::default() };
        req.signature = key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
        req
    }

    #[test]
    fn a_burst_of_unknown_traits_beyond_the_upload_budget_is_answered_with_backoff() {
        let envoys: Vec<(String, SigningKey)> =
            (0..30u8).map(|i| (format!("e-{i:016x}"), SigningKey::from_bytes(&[i + 1; 32]))).collect();
        let server = Server::new(fleet_of(&envoys), 10);
        let ctx = server.ctx();
        let now_ms = 5_000_000;
        let (mut asked, mut backed_off) = (0, 0);
        for (id, key) in &envoys {
            let reply = check_in(&ctx, Some(CERT), &signed_by(id, key, 1, &[3; 32]), now_ms).expect("never an error");
            match reply.reply {
                Some(Reply::NoChange(_)) if reply.send_traits => {
                    assert_eq!(reply.next_check_in_s, 0);
                    asked += 1;
                }
                Some(Reply::Backoff(b)) => {
                    assert!((1..=60).contains(&b.retry_after_s), "{b:?}");
                    assert_eq!(reply.next_check_in_s, b.retry_after_s);
                    assert!(!reply.send_traits);
                    backed_off += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((asked, backed_off), (10, 20));
        // A second later the budget has room again.
        let (id, key) = &envoys[29];
        let reply = check_in(&ctx, Some(CERT), &signed_by(id, key, 2, &[3; 32]), now_ms + 1_000).unwrap();
        assert!(reply.send_traits);
    }

    #[test]
    fn past_the_queue_delay_cap_every_check_in_backs_off_before_any_work() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let server = Server::new(enrolled(&key), 10);
        let ctx = server.ctx();
        server.queue_delay.record(std::time::Duration::from_millis(150));
        let reply = check_in(&ctx, Some(CERT), &signed_by(ENVOY, &key, 7, &[3; 32]), 1_000).unwrap();
        let Some(Reply::Backoff(b)) = reply.reply else { panic!("{reply:?}") };
        assert!((1..=SHED_RETRY_WINDOW_S).contains(&b.retry_after_s), "{b:?}");
        assert_eq!(reply.next_check_in_s, b.retry_after_s);
        assert!(server.fleet.get(ENVOY).is_none(), "shed before the fleet index is touched");
        // Once the server has caught up, the same request is served (its counter unused).
        server.queue_delay.record(std::time::Duration::from_millis(2));
        let reply = check_in(&ctx, Some(CERT), &signed_by(ENVOY, &key, 7, &[3; 32]), 1_000).unwrap();
        assert!(reply.send_traits, "{reply:?}");
        assert_eq!(server.fleet.get(ENVOY).unwrap().last_counter, 7);
    }

    fn with_traits(key: &SigningKey, counter: u64, traits: &str) -> CheckInRequest {
        let mut req = CheckInRequest {
            envoy_id: ENVOY.into(),
            counter,
            traits_hash: Sha256::digest(traits.as_bytes()).to_vec(),
            traits_json: traits.into(),
            ..Default::default()
        };
        req.signature = key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
        req
    }

    #[test]
    fn assigned_check_in_times_spread_a_herd_evenly_over_the_interval() {
        let interval_s = 60;
        let now_ms = 1_700_000_000_123;
        let mut per_second = [0u32; 60];
        for i in 0..60_000 {
            let id = format!("e-{i:016x}");
            // Every envoy of the herd checks in at the same moment.
            let wait = next_check_in_s(&id, interval_s, now_ms);
            assert!((30..=91).contains(&wait), "{wait} s is about one interval");
            per_second[((now_ms / 1000 + i64::from(wait)) % 60) as usize] += 1;
            // And keeps its point: checking in when told, it is told about one interval next.
            let next = next_check_in_s(&id, interval_s, now_ms + i64::from(wait) * 1000);
            assert!((59..=61).contains(&next), "{next}");
        }
        // 60,000 envoys over 60 seconds: about 1,000 in each second.
        for n in per_second {
            assert!((900..1_100).contains(&n), "{per_second:?}");
        }
    }

    #[test]
    fn traits_that_are_not_a_json_object_are_refused_and_the_stored_ones_kept() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let server = Server::new(enrolled(&key), 10);
        let (ctx, fleet) = (server.ctx(), &server.fleet);
        let good = r#"{"os":{"family":"debian"}}"#;
        check_in(&ctx, Some(CERT), &with_traits(&key, 1, good), 1).unwrap();

        let deep = format!(r#"{{"os":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let wrong_key = r#"{"os":{"family":"debian"},"list":[1,2],"bad":{1:2}}"#;
        for (counter, bad, why) in [
            (2, r#"{"os":"#, "traits are not valid JSON"),
            (3, r#"["debian"]"#, "traits must be a JSON object"),
            (4, r#""debian""#, "traits must be a JSON object"),
            (5, deep.as_str(), "traits are not valid JSON: recursion limit exceeded"),
            (6, wrong_key, "traits are not valid JSON: key must be a string"),
            (7, r#"{"os":{"family":"debian"}} {}"#, "traits are not valid JSON: trailing characters"),
        ] {
            let refused = check_in(&ctx, Some(CERT), &with_traits(&key, counter, bad), 2).unwrap_err().to_string();
            assert!(refused.starts_with(&format!("bad request: {why}")), "{bad}: {refused}");
            assert_eq!(refused.lines().count(), 1);
        }
        let mut wrong_hash = with_traits(&key, 8, r#"{"os":{}}"#);
        wrong_hash.traits_hash = Sha256::digest(good.as_bytes()).to_vec();
        wrong_hash.signature = key.sign(&vigo_proto::signing::check_in_bytes(&wrong_hash)).to_bytes().to_vec();
        let refused = check_in(&ctx, Some(CERT), &wrong_hash, 2).unwrap_err();
        assert_eq!(refused.to_string(), "bad request: traits do not match their hash");

        let hash = Sha256::digest(good.as_bytes());
        let kept = fleet.traits_if_current(ENVOY, &hash).expect("the stored traits are kept");
        assert_eq!(fleet.trait_store().to_json(kept.root()), good);
        drop(kept);
        assert_eq!(fleet.trait_store().stats().nodes, 5, "nothing of the refused documents is left");
    }

    #[test]
    fn a_no_change_reply_is_four_bytes_of_protobuf() {
        let reply =
            CheckInResponse { reply: Some(Reply::NoChange(NoChange {})), next_check_in_s: 60, ..Default::default() };
        // gRPC adds a 5-byte frame prefix: 9 bytes of message body per no-change check-in.
        assert_eq!(reply.encoded_len(), 4);
    }
}
