//! `ControlState`: what the control plane knows, as a pure projection of committed events.
//!
//! **Architecture Invariant (I-1):** this module does no I/O, reads no clock and draws no
//! randomness. `apply` is a deterministic function of the state and the envelope, so every
//! peer, every restart and every auditor replaying the history from index 1 reaches the same
//! state. Time enters only through `proposed_at_ms`, stamped into the event when proposed.
//!
//! Maps are persistent (`imbl`), so cloning the state to publish an immutable snapshot after
//! each apply costs O(1) and check-ins read that snapshot without locks.

use std::sync::{Arc, OnceLock};

use ed25519_dalek::VerifyingKey;

use imbl::{HashMap, OrdMap};
use vigo_proto::events::{Event, EventEnvelope, RosterDelta, RosterStamp, event::Kind};

use crate::roster::{BoltEntry, Roster, Router, Stamp};

use vigo_proto::chain::{self, GENESIS_HASH};

/// An enrollment or join token, known by its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// A join token admits peers; otherwise it enrolls envoys.
    pub join: bool,
    /// A federation token admits a new bolt.
    pub federate: bool,
    /// Enrollments still allowed.
    pub uses_left: u32,
    /// Refused after this time (ms since epoch); 0 = never.
    pub expires_at_ms: i64,
    /// Event index that created it.
    pub created_index: u64,
}

/// An enrolled envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyEntry {
    /// Stable id, assigned at enrollment.
    pub envoy_id: String,
    /// Hostname it enrolled with.
    pub hostname: String,
    /// Ed25519 public key: signs check-ins, and is the key of its TLS certificate.
    pub pubkey: [u8; 32],
    /// SHA-256 of the DER certificate issued to it.
    pub cert_sha256: [u8; 32],
    /// Event index of its enrollment.
    pub enrolled_index: u64,
    /// Event index of its revocation; `None` while it may check in.
    pub revoked_index: Option<u64>,
    /// The bolt it was handed off to; `None` while it belongs here.
    pub moved_to: Option<String>,
    /// `pubkey` as a curve point, decompressed on first use (a derived cache).
    pub key_cache: KeyCache,
}

impl EnvoyEntry {
    /// Whether it checks in here: neither revoked nor handed off to another bolt.
    pub fn is_active(&self) -> bool {
        self.revoked_index.is_none() && self.moved_to.is_none()
    }

    /// The envoy's verifying key; `None` when `pubkey` is not a point on the curve (enrollment
    /// refuses those). Decompressing costs about as much as a quarter of a signature check, so
    /// it is done once per envoy, not once per check-in.
    pub fn verifying_key(&self) -> Option<&VerifyingKey> {
        self.key_cache.0.get_or_init(|| VerifyingKey::from_bytes(&self.pubkey).ok()).as_ref()
    }
}

/// A value computed from an entry's fields on first use. Equal whether filled or not: it adds
/// nothing to the state.
#[derive(Debug, Clone, Default)]
pub struct KeyCache(OnceLock<Option<VerifyingKey>>);

impl PartialEq for KeyCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyCache {}

/// The live version of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStack {
    /// Version number, 1 for the first publish.
    pub version: u64,
    /// gzip-compressed tar of the stack directory.
    pub archive: Arc<Vec<u8>>,
    /// SHA-256 of `archive`.
    pub sha256: [u8; 32],
    /// Who published it.
    pub author: String,
    /// The publish message.
    pub message: String,
    /// Event index of the publish.
    pub index: u64,
}

/// The cluster's keys as sealed on the log (see `ClusterKeysSealed` in `events.proto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKeys {
    /// The CA certificate, DER.
    pub ca_cert_der: Vec<u8>,
    /// The CA private key, sealed.
    pub sealed_ca_key: Vec<u8>,
    /// The bundle-signing key, sealed.
    pub sealed_bundle_key: Vec<u8>,
    /// SHA-256 of the seal key.
    pub seal_key_sha256: [u8; 32],
    /// Event index that put them on the log.
    pub index: u64,
}

/// A peer of the cluster, as admitted on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Its Raft node id.
    pub node_id: u64,
    /// host:port it serves on.
    pub addr: String,
    /// SHA-256 of its certificate.
    pub cert_sha256: [u8; 32],
    /// Event index of its admission.
    pub admitted_index: u64,
    /// Event index of its removal; `None` while it is a member.
    pub removed_index: Option<u64>,
}

/// Why an event cannot be applied to the current state. Checked before proposing; a
/// committed event that fails it means divergence, and `apply` panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The envelope carries no event.
    #[error("event is empty")]
    Empty,
    /// A field is malformed.
    #[error("malformed event: {0}")]
    Malformed(&'static str),
    /// A token with this hash already exists.
    #[error("token already exists")]
    TokenExists,
    /// No token with this hash.
    #[error("enrollment token is not valid")]
    TokenUnknown,
    /// The token has no uses left.
    #[error("enrollment token is used up")]
    TokenUsedUp,
    /// The token expired.
    #[error("enrollment token expired")]
    TokenExpired,
    /// An active envoy already has this hostname.
    #[error("hostname {hostname} is already enrolled as {envoy_id}; revoke it first")]
    HostnameTaken {
        /// The hostname.
        hostname: String,
        /// The envoy holding it.
        envoy_id: String,
    },
    /// The envoy id is already taken.
    #[error("envoy id {0} is already enrolled")]
    EnvoyIdTaken(String),
    /// No envoy with this id.
    #[error("no envoy {0}")]
    EnvoyUnknown(String),
    /// The envoy was handed off to another bolt.
    #[error("envoy {envoy_id} belongs to bolt {bolt} now")]
    Moved {
        /// The envoy.
        envoy_id: String,
        /// Its bolt.
        bolt: String,
    },
    /// The envoy is already revoked.
    #[error("envoy {0} is already revoked")]
    AlreadyRevoked(String),
    /// A token of the other kind: a join token cannot enroll an envoy, nor an enrollment
    /// token admit a peer.
    #[error("this token {0}")]
    TokenKind(&'static str),
    /// The cluster keys are on the log already.
    #[error("the cluster keys are already sealed on the log")]
    KeysExist,
    /// A peer's node id must be the next free one.
    #[error("peer node id {found} is not the next free id {next}")]
    PeerId {
        /// The next free id.
        next: u64,
        /// The id proposed.
        found: u64,
    },
    /// No current member with this node id.
    #[error("no peer {0} in the cluster")]
    PeerUnknown(u64),
    /// No bolt with this id in the roster.
    #[error("no bolt {0} in the roster")]
    BoltUnknown(String),
    /// Not a bolt id.
    #[error("invalid bolt id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BoltId(String),
    /// Not a hostname or a hostname glob.
    #[error("invalid hostname pattern {0:?}")]
    Glob(String),
    /// A stack version must be the live one plus one.
    #[error("stack version {found} does not follow the live version {live}")]
    StackVersion {
        /// Live version.
        live: u64,
        /// Version proposed.
        found: u64,
    },
}

/// The control-plane projection. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ControlState {
    last_index: u64,
    last_hash: [u8; 32],
    tokens: HashMap<[u8; 32], TokenEntry>,
    envoys: OrdMap<String, Arc<EnvoyEntry>>,
    /// Hostname → envoy id, for envoys that are not revoked.
    active_hostnames: HashMap<String, String>,
    stack: Option<Arc<LiveStack>>,
    keys: Option<Arc<SealedKeys>>,
    peers: OrdMap<u64, PeerEntry>,
    /// Event index of the last change to the peers.
    peers_index: u64,
    /// Event index of the last change to the roster.
    roster_index: u64,
    /// The federation's admissions roster as this bolt knows it (changed only by roster
    /// events, so shared, not copied, by every published snapshot).
    roster: Arc<Roster>,
    /// The roster's routing, compiled on first use after each roster change.
    router: Arc<OnceLock<Router>>,
}

impl ControlState {
    /// Index of the last applied event; 0 when none.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Hash of the last applied event; [`GENESIS_HASH`] when none.
    pub fn last_hash(&self) -> [u8; 32] {
        if self.last_index == 0 { GENESIS_HASH } else { self.last_hash }
    }

    /// The envoy with this id.
    pub fn envoy(&self, envoy_id: &str) -> Option<&Arc<EnvoyEntry>> {
        self.envoys.get(envoy_id)
    }

    /// The active (not revoked) envoy with this hostname.
    pub fn envoy_by_hostname(&self, hostname: &str) -> Option<&Arc<EnvoyEntry>> {
        self.active_hostnames.get(hostname).and_then(|id| self.envoys.get(id))
    }

    /// All envoys ever enrolled, ordered by id.
    pub fn envoys(&self) -> impl Iterator<Item = &Arc<EnvoyEntry>> {
        self.envoys.values()
    }

    /// Number of envoys ever enrolled.
    pub fn n_envoys(&self) -> usize {
        self.envoys.len()
    }

    /// How many envoys check in here (neither revoked nor handed off): one per active hostname
    /// (I-5), so it costs nothing to ask.
    pub fn n_active_envoys(&self) -> usize {
        self.active_hostnames.len()
    }

    /// The token with this hash.
    pub fn token(&self, token_sha256: &[u8; 32]) -> Option<&TokenEntry> {
        self.tokens.get(token_sha256)
    }

    /// The live stack, if any was published.
    pub fn stack(&self) -> Option<&Arc<LiveStack>> {
        self.stack.as_ref()
    }

    /// Version of the live stack; 0 when none.
    pub fn stack_version(&self) -> u64 {
        self.stack.as_ref().map_or(0, |s| s.version)
    }

    /// The cluster keys, once sealed on the log.
    pub fn keys(&self) -> Option<&Arc<SealedKeys>> {
        self.keys.as_ref()
    }

    /// Every peer ever admitted, by node id.
    pub fn peers(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    /// The peer with this node id.
    pub fn peer(&self, node_id: u64) -> Option<&PeerEntry> {
        self.peers.get(&node_id)
    }

    /// Event index of the last change to the peers (0: none): envoys holding an older list are
    /// sent the current one.
    pub fn peers_index(&self) -> u64 {
        self.peers_index
    }

    /// Event index of the last change to the roster (0: never changed).
    pub fn roster_index(&self) -> u64 {
        self.roster_index
    }

    /// The addresses of the current peers, by node id.
    pub fn peer_addrs(&self) -> Vec<String> {
        self.peers.values().filter(|p| p.removed_index.is_none()).map(|p| p.addr.clone()).collect()
    }

    /// Whether peer `node_id` was admitted and not removed since.
    pub fn is_member(&self, node_id: u64) -> bool {
        self.peers.get(&node_id).is_some_and(|p| p.removed_index.is_none())
    }

    /// The event index at which peer `node_id` was removed, if it was.
    pub fn peer_removed_at(&self, node_id: u64) -> Option<u64> {
        self.peers.get(&node_id).and_then(|p| p.removed_index)
    }

    /// The node id the next admitted peer gets: ids are never reused.
    pub fn next_peer_id(&self) -> u64 {
        self.peers.keys().next_back().map_or(1, |last| last + 1)
    }

    /// The federation's admissions roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The roster's routing, compiled once per roster change: which bolt owns a hostname.
    pub fn router(&self) -> &Router {
        self.router.get_or_init(|| Router::new(&self.roster))
    }

    /// Whether `event`, stamped at `now_ms`, may be applied to this state.
    pub fn validate(&self, event: &Event, now_ms: i64) -> Result<(), ControlError> {
        match event.kind.as_ref().ok_or(ControlError::Empty)? {
            Kind::TokenCreated(t) => {
                let hash = hash32(&t.token_sha256).ok_or(ControlError::Malformed("token_sha256 must be 32 bytes"))?;
                if t.uses == 0 {
                    return Err(ControlError::Malformed("a token needs at least one use"));
                }
                if self.tokens.contains_key(&hash) {
                    return Err(ControlError::TokenExists);
                }
            }
            Kind::EnvoyEnrolled(e) => {
                let hash = hash32(&e.token_sha256).ok_or(ControlError::Malformed("token_sha256 must be 32 bytes"))?;
                hash32(&e.pubkey).ok_or(ControlError::Malformed("pubkey must be 32 bytes"))?;
                hash32(&e.cert_sha256).ok_or(ControlError::Malformed("cert_sha256 must be 32 bytes"))?;
                if e.envoy_id.is_empty() || e.hostname.is_empty() {
                    return Err(ControlError::Malformed("envoy id and hostname are required"));
                }
                self.check_token(&hash, TokenUse::Envoy, now_ms)?;
                if self.envoys.contains_key(&e.envoy_id) {
                    return Err(ControlError::EnvoyIdTaken(e.envoy_id.clone()));
                }
                if let Some(holder) = self.active_hostnames.get(&e.hostname) {
                    return Err(ControlError::HostnameTaken { hostname: e.hostname.clone(), envoy_id: holder.clone() });
                }
            }
            Kind::EnvoyRevoked(r) => {
                let envoy =
                    self.envoys.get(&r.envoy_id).ok_or_else(|| ControlError::EnvoyUnknown(r.envoy_id.clone()))?;
                if envoy.revoked_index.is_some() {
                    return Err(ControlError::AlreadyRevoked(r.envoy_id.clone()));
                }
                if let Some(bolt) = &envoy.moved_to {
                    return Err(ControlError::Moved { envoy_id: r.envoy_id.clone(), bolt: bolt.clone() });
                }
            }
            Kind::EnvoyHandedOff(h) => {
                let envoy =
                    self.envoys.get(&h.envoy_id).ok_or_else(|| ControlError::EnvoyUnknown(h.envoy_id.clone()))?;
                if !envoy.is_active() {
                    return Err(ControlError::Malformed("only an active envoy is handed off"));
                }
                check_bolt_id(&h.to)?;
            }
            Kind::EnvoyAdopted(a) => {
                hash32(&a.pubkey).ok_or(ControlError::Malformed("pubkey must be 32 bytes"))?;
                hash32(&a.cert_sha256).ok_or(ControlError::Malformed("cert_sha256 must be 32 bytes"))?;
                if a.envoy_id.is_empty() || a.hostname.is_empty() {
                    return Err(ControlError::Malformed("envoy id and hostname are required"));
                }
                // Empty: taken in on its certificate, its own bolt not answering.
                if !a.from.is_empty() {
                    check_bolt_id(&a.from)?;
                }
                if self.roster.is_revoked(&hash32(&a.cert_sha256).expect("checked above")) {
                    return Err(ControlError::Malformed("the envoy was revoked at a bolt of the federation"));
                }
                if self.envoys.get(&a.envoy_id).is_some_and(|e| e.is_active()) {
                    return Err(ControlError::EnvoyIdTaken(a.envoy_id.clone()));
                }
                if let Some(holder) = self.active_hostnames.get(&a.hostname) {
                    return Err(ControlError::HostnameTaken { hostname: a.hostname.clone(), envoy_id: holder.clone() });
                }
            }
            Kind::StackPublished(s) => {
                let sha256 = hash32(&s.sha256).ok_or(ControlError::Malformed("sha256 must be 32 bytes"))?;
                let live = self.stack_version();
                if !s.synced_from.is_empty() {
                    // Another bolt's stack: taken at its version, when it is the greater one.
                    check_bolt_id(&s.synced_from)?;
                    let ours = self.stack.as_ref().map(|l| (l.version, l.sha256));
                    if s.version == 0 || ours.is_some_and(|ours| (s.version, sha256) <= ours) {
                        return Err(ControlError::StackVersion { live, found: s.version });
                    }
                } else if s.version != 0 && s.version != live + 1 {
                    // 0 in a proposal: "the next version", filled in when it applies (`assign`).
                    return Err(ControlError::StackVersion { live, found: s.version });
                }
            }
            Kind::ClusterKeysSealed(k) => {
                hash32(&k.seal_key_sha256).ok_or(ControlError::Malformed("seal_key_sha256 must be 32 bytes"))?;
                if k.ca_cert_der.is_empty() || k.sealed_ca_key.is_empty() || k.sealed_bundle_key.is_empty() {
                    return Err(ControlError::Malformed("the CA certificate and both sealed keys are required"));
                }
                if self.keys.is_some() {
                    return Err(ControlError::KeysExist);
                }
            }
            Kind::PeerAdmitted(p) => {
                hash32(&p.cert_sha256).ok_or(ControlError::Malformed("cert_sha256 must be 32 bytes"))?;
                if p.addr.is_empty() {
                    return Err(ControlError::Malformed("a peer needs an address"));
                }
                let next = self.next_peer_id();
                if p.node_id != next {
                    return Err(ControlError::PeerId { next, found: p.node_id });
                }
                // Only the founding peer comes in without a token.
                if !(p.token_sha256.is_empty() && self.peers.is_empty()) {
                    let hash =
                        hash32(&p.token_sha256).ok_or(ControlError::Malformed("token_sha256 must be 32 bytes"))?;
                    self.check_token(&hash, TokenUse::Peer, now_ms)?;
                }
            }
            Kind::PeerRemoved(r) => {
                if !self.is_member(r.node_id) {
                    return Err(ControlError::PeerUnknown(r.node_id));
                }
            }
            Kind::ClusterRecovered(r) => {
                if !self.is_member(r.node_id) {
                    return Err(ControlError::PeerUnknown(r.node_id));
                }
            }
            Kind::BoltRegistered(b) => {
                roster_stamp(b.stamp.as_ref())?;
                check_bolt_id(&b.bolt)?;
                if b.addrs.is_empty() || b.addrs.iter().any(|a| a.is_empty()) {
                    return Err(ControlError::Malformed("a bolt needs at least one address"));
                }
                for pattern in &b.patterns {
                    check_glob(pattern)?;
                }
            }
            Kind::EnvoysReassigned(r) => {
                roster_stamp(r.stamp.as_ref())?;
                check_glob(&r.hostname)?;
                if !r.to.is_empty() && self.roster.bolt(&r.to).is_none() {
                    return Err(ControlError::BoltUnknown(r.to.clone()));
                }
            }
            Kind::BoltFederated(f) => {
                check_bolt_id(&f.bolt)?;
                let hash = hash32(&f.token_sha256).ok_or(ControlError::Malformed("token_sha256 must be 32 bytes"))?;
                self.check_token(&hash, TokenUse::Bolt, now_ms)?;
            }
            Kind::RosterMerged(m) => {
                roster_of(m.roster.as_ref().ok_or(ControlError::Malformed("a merge needs a roster"))?)?;
            }
            Kind::BoltDrained(d) => {
                roster_stamp(d.stamp.as_ref())?;
                if self.roster.bolt(&d.bolt).is_none() {
                    return Err(ControlError::BoltUnknown(d.bolt.clone()));
                }
                if !d.to.is_empty() && self.roster.bolt(&d.to).is_none() {
                    return Err(ControlError::BoltUnknown(d.to.clone()));
                }
                if d.to == d.bolt {
                    return Err(ControlError::Malformed("a bolt cannot be drained to itself"));
                }
            }
        }
        Ok(())
    }

    /// Fills in what a proposal leaves to the state it lands on: a publish's version 0 becomes
    /// the next version. Called on each committed proposal just before it is sealed, so the
    /// archived event holds the version it made live; concurrent publishes through different
    /// peers so each get a version, in commit order, instead of all but one being refused.
    pub fn assign(&self, event: &mut Event) {
        if let Some(Kind::StackPublished(s)) = event.kind.as_mut()
            && s.version == 0
        {
            s.version = self.stack_version() + 1;
        }
    }

    /// Whether the token with this hash may be used now, for what `used_for` admits.
    fn check_token(&self, hash: &[u8; 32], used_for: TokenUse, now_ms: i64) -> Result<(), ControlError> {
        let token = self.tokens.get(hash).ok_or(ControlError::TokenUnknown)?;
        let kind = match (token.federate, token.join) {
            (true, _) => TokenUse::Bolt,
            (false, true) => TokenUse::Peer,
            (false, false) => TokenUse::Envoy,
        };
        if kind != used_for {
            return Err(ControlError::TokenKind(match (kind, used_for) {
                (TokenUse::Peer, TokenUse::Bolt) => "admits a peer; it cannot federate a bolt",
                (TokenUse::Peer, _) => "admits a peer; it cannot enroll an envoy",
                (TokenUse::Envoy, TokenUse::Bolt) => "enrolls envoys; it cannot federate a bolt",
                (TokenUse::Envoy, _) => "enrolls envoys; it cannot admit a peer",
                (TokenUse::Bolt, _) => "federates a bolt; it cannot enroll an envoy or admit a peer",
            }));
        }
        if token.uses_left == 0 {
            return Err(ControlError::TokenUsedUp);
        }
        if token.expires_at_ms != 0 && now_ms > token.expires_at_ms {
            return Err(ControlError::TokenExpired);
        }
        Ok(())
    }

    fn use_token(&mut self, token_sha256: &[u8]) {
        if let Some(token) = hash32(token_sha256).and_then(|hash| self.tokens.get_mut(&hash)) {
            token.uses_left -= 1;
        }
    }

    /// Folds one committed envelope into the state.
    ///
    /// Panics when the envelope does not continue the hash chain (I-4) or its event was not
    /// valid against this state (I-1): either means this copy diverged, and crashing is
    /// better than serving a state no other peer has.
    pub fn apply(&mut self, env: &EventEnvelope) {
        if let Err(e) = chain::verify_next(&self.last_hash(), self.last_index, env) {
            panic!("I-4: refusing to apply event {}: {e}", env.index);
        }
        let event = env.event.as_ref().unwrap_or_else(|| panic!("I-1: event {} is empty", env.index));
        if let Err(e) = self.validate(event, env.proposed_at_ms) {
            panic!("I-1: committed event {} is not valid against the state: {e}", env.index);
        }
        let index = env.index;
        match event.kind.as_ref().expect("validated") {
            Kind::TokenCreated(t) => {
                let entry = TokenEntry {
                    join: t.join,
                    federate: t.federate,
                    uses_left: t.uses,
                    expires_at_ms: t.expires_at_ms,
                    created_index: index,
                };
                self.tokens.insert(hash32(&t.token_sha256).expect("validated"), entry);
            }
            Kind::EnvoyEnrolled(e) => {
                self.use_token(&e.token_sha256);
                let entry = EnvoyEntry {
                    envoy_id: e.envoy_id.clone(),
                    hostname: e.hostname.clone(),
                    pubkey: hash32(&e.pubkey).expect("validated"),
                    cert_sha256: hash32(&e.cert_sha256).expect("validated"),
                    enrolled_index: index,
                    revoked_index: None,
                    moved_to: None,
                    key_cache: KeyCache::default(),
                };
                self.active_hostnames.insert(e.hostname.clone(), e.envoy_id.clone());
                self.envoys.insert(e.envoy_id.clone(), Arc::new(entry));
            }
            Kind::EnvoyHandedOff(h) => {
                let mut entry = (**self.envoys.get(&h.envoy_id).expect("validated")).clone();
                entry.moved_to = Some(h.to.clone());
                self.active_hostnames.remove(&entry.hostname);
                self.envoys.insert(h.envoy_id.clone(), Arc::new(entry));
            }
            Kind::EnvoyAdopted(a) => {
                let entry = EnvoyEntry {
                    envoy_id: a.envoy_id.clone(),
                    hostname: a.hostname.clone(),
                    pubkey: hash32(&a.pubkey).expect("validated"),
                    cert_sha256: hash32(&a.cert_sha256).expect("validated"),
                    enrolled_index: index,
                    revoked_index: None,
                    moved_to: None,
                    key_cache: KeyCache::default(),
                };
                self.active_hostnames.insert(a.hostname.clone(), a.envoy_id.clone());
                self.envoys.insert(a.envoy_id.clone(), Arc::new(entry));
            }
            Kind::EnvoyRevoked(r) => {
                let mut entry = (**self.envoys.get(&r.envoy_id).expect("validated")).clone();
                entry.revoked_index = Some(index);
                // Known to every bolt through the roster, so none takes the envoy in again.
                Arc::make_mut(&mut self.roster).revoke(entry.cert_sha256);
                self.roster_index = index;
                self.active_hostnames.remove(&entry.hostname);
                self.envoys.insert(r.envoy_id.clone(), Arc::new(entry));
            }
            Kind::StackPublished(s) => {
                self.stack = Some(Arc::new(LiveStack {
                    version: s.version,
                    archive: Arc::new(s.archive.clone()),
                    sha256: hash32(&s.sha256).expect("validated"),
                    author: s.author.clone(),
                    message: s.message.clone(),
                    index,
                }));
            }
            Kind::ClusterKeysSealed(k) => {
                self.keys = Some(Arc::new(SealedKeys {
                    ca_cert_der: k.ca_cert_der.clone(),
                    sealed_ca_key: k.sealed_ca_key.clone(),
                    sealed_bundle_key: k.sealed_bundle_key.clone(),
                    seal_key_sha256: hash32(&k.seal_key_sha256).expect("validated"),
                    index,
                }));
            }
            Kind::PeerAdmitted(p) => {
                self.use_token(&p.token_sha256);
                let entry = PeerEntry {
                    node_id: p.node_id,
                    addr: p.addr.clone(),
                    cert_sha256: hash32(&p.cert_sha256).expect("validated"),
                    admitted_index: index,
                    removed_index: None,
                };
                self.peers.insert(p.node_id, entry);
                self.peers_index = index;
            }
            Kind::PeerRemoved(r) => {
                if let Some(peer) = self.peers.get_mut(&r.node_id) {
                    peer.removed_index = Some(index);
                }
                self.peers_index = index;
            }
            Kind::ClusterRecovered(r) => {
                for lost in &r.lost {
                    if let Some(peer) = self.peers.get_mut(lost).filter(|p| p.removed_index.is_none()) {
                        peer.removed_index = Some(index);
                    }
                }
                self.peers_index = index;
            }
            Kind::BoltRegistered(b) => {
                self.router = Arc::default();
                let entry = BoltEntry { addrs: b.addrs.clone(), patterns: b.patterns.clone() };
                let stamp = roster_stamp(b.stamp.as_ref()).expect("validated");
                Arc::make_mut(&mut self.roster).put_bolt(&b.bolt, entry, stamp);
                self.roster_index = index;
            }
            Kind::EnvoysReassigned(r) => {
                self.router = Arc::default();
                let stamp = roster_stamp(r.stamp.as_ref()).expect("validated");
                let to = (!r.to.is_empty()).then_some(r.to.as_str());
                Arc::make_mut(&mut self.roster).reassign(&r.hostname, to, stamp);
                self.roster_index = index;
            }
            Kind::BoltFederated(f) => self.use_token(&f.token_sha256),
            Kind::RosterMerged(m) => {
                self.router = Arc::default();
                let merged = roster_of(m.roster.as_ref().expect("validated")).expect("validated");
                Arc::make_mut(&mut self.roster).merge_in(merged);
                self.roster_index = index;
            }
            Kind::BoltDrained(d) => {
                self.router = Arc::default();
                let stamp = roster_stamp(d.stamp.as_ref()).expect("validated");
                let to = (!d.to.is_empty()).then_some(d.to.as_str());
                Arc::make_mut(&mut self.roster).drain(&d.bolt, to, d.automatic, stamp);
                self.roster_index = index;
            }
        }
        self.last_index = index;
        self.last_hash = chain::to_hash(&env.hash);
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Cross-checks the indexes of the state against each other; panics on a violation.
    pub fn check_invariants(&self) {
        for (hostname, envoy_id) in self.active_hostnames.iter() {
            let envoy =
                self.envoys.get(envoy_id).unwrap_or_else(|| panic!("I-5: hostname {hostname} names unknown envoy"));
            assert!(envoy.is_active(), "I-5: revoked or moved envoy {envoy_id} still holds {hostname}");
            assert_eq!(&envoy.hostname, hostname, "I-5: hostname index disagrees with envoy {envoy_id}");
        }
        let n_active = self.envoys.values().filter(|e| e.is_active()).count();
        assert_eq!(n_active, self.active_hostnames.len(), "I-5: every active envoy holds its hostname");
    }
}

/// What a token is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenUse {
    Envoy,
    Peer,
    Bolt,
}

/// The roster a `RosterDelta` describes, every entry checked.
pub fn roster_of(delta: &RosterDelta) -> Result<Roster, ControlError> {
    let mut roster = Roster::default();
    for b in &delta.bolts {
        check_bolt_id(&b.bolt)?;
        for pattern in &b.patterns {
            check_glob(pattern)?;
        }
        let entry = BoltEntry { addrs: b.addrs.clone(), patterns: b.patterns.clone() };
        roster.put_bolt(&b.bolt, entry, roster_stamp(b.stamp.as_ref())?);
    }
    for b in &delta.removed {
        check_bolt_id(&b.bolt)?;
        roster.remove_bolt(&b.bolt, roster_stamp(b.stamp.as_ref())?);
    }
    for r in &delta.reassigned {
        check_glob(&r.hostname)?;
        let to = (!r.to.is_empty()).then_some(r.to.as_str());
        if let Some(to) = to {
            check_bolt_id(to)?;
        }
        roster.reassign(&r.hostname, to, roster_stamp(r.stamp.as_ref())?);
    }
    for d in &delta.drains {
        check_bolt_id(&d.bolt)?;
        let to = (!d.to.is_empty()).then_some(d.to.as_str());
        if let Some(to) = to {
            check_bolt_id(to)?;
        }
        roster.drain(&d.bolt, to, d.automatic, roster_stamp(d.stamp.as_ref())?);
    }
    for cert in &delta.revoked {
        roster.revoke(hash32(cert).ok_or(ControlError::Malformed("a revoked certificate hash must be 32 bytes"))?);
    }
    Ok(roster)
}

/// A roster event's stamp, which it must carry.
fn roster_stamp(stamp: Option<&RosterStamp>) -> Result<Stamp, ControlError> {
    let stamp = stamp.ok_or(ControlError::Malformed("a roster event needs its stamp"))?;
    check_bolt_id(&stamp.actor)?;
    Ok(Stamp { ms: stamp.ms, counter: stamp.counter, actor: stamp.actor.clone() })
}

/// A bolt id: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_bolt_id(id: &str) -> Result<(), ControlError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(ControlError::BoltId(id.to_string())) }
}

/// A hostname or a hostname glob.
pub fn check_glob(pattern: &str) -> Result<(), ControlError> {
    if pattern.is_empty() || globset::Glob::new(pattern).is_err() {
        return Err(ControlError::Glob(pattern.to_string()));
    }
    Ok(())
}

fn hash32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_proto::chain::seal;
    use vigo_proto::events::{
        ClusterKeysSealed, ClusterRecovered, EnvoyEnrolled, EnvoyRevoked, EventProposal, PeerAdmitted, PeerRemoved,
        StackPublished, TokenCreated,
    };

    fn propose(state: &ControlState, kind: Kind) -> EventEnvelope {
        let proposal = EventProposal {
            proposed_at_ms: 1_700_000_000_000 + state.last_index() as i64,
            actor: "admin:test".into(),
            event: Some(Event { kind: Some(kind) }),
        };
        seal(proposal, state.last_index() + 1, state.last_index() + 2, state.last_hash())
    }

    fn enrolled(id: &str, hostname: &str, token: u8) -> Kind {
        Kind::EnvoyEnrolled(EnvoyEnrolled {
            envoy_id: id.into(),
            hostname: hostname.into(),
            pubkey: vec![7; 32],
            token_sha256: vec![token; 32],
            cert_sha256: vec![9; 32],
        })
    }

    fn token(n: u8, uses: u32) -> Kind {
        Kind::TokenCreated(TokenCreated {
            token_sha256: vec![n; 32],
            uses,
            expires_at_ms: 0,
            join: false,
            federate: false,
        })
    }

    /// Applies a script of events, refusing (and skipping) invalid ones as the server would.
    fn run(script: Vec<Kind>) -> (ControlState, Vec<String>) {
        let mut state = ControlState::default();
        let mut refusals = Vec::new();
        for kind in script {
            let env = propose(&state, kind);
            match state.validate(env.event.as_ref().unwrap(), env.proposed_at_ms) {
                Ok(()) => state.apply(&env),
                Err(e) => refusals.push(e.to_string()),
            }
        }
        (state, refusals)
    }

    fn dump(state: &ControlState) -> String {
        let mut out = format!("last_index={} stack_version={}\n", state.last_index(), state.stack_version());
        for e in state.envoys() {
            out += &format!(
                "envoy {} host={} enrolled@{} revoked@{:?}\n",
                e.envoy_id, e.hostname, e.enrolled_index, e.revoked_index
            );
        }
        out
    }

    fn admitted(node_id: u64, token: Option<u8>) -> Kind {
        Kind::PeerAdmitted(PeerAdmitted {
            node_id,
            addr: format!("10.0.0.{node_id}:1530"),
            cert_sha256: vec![node_id as u8; 32],
            token_sha256: token.map(|t| vec![t; 32]).unwrap_or_default(),
        })
    }

    #[test]
    fn peers_are_admitted_with_join_tokens_in_id_order_and_removed() {
        let join = |n: u8| {
            Kind::TokenCreated(TokenCreated {
                token_sha256: vec![n; 32],
                uses: 1,
                expires_at_ms: 0,
                join: true,
                federate: false,
            })
        };
        let (state, refusals) = run(vec![
            admitted(1, None),
            admitted(2, None),
            join(5),
            token(6, 1),
            enrolled("e1", "web-1", 5),
            admitted(2, Some(6)),
            admitted(3, Some(5)),
            admitted(2, Some(5)),
            admitted(2, Some(5)),
            Kind::PeerRemoved(PeerRemoved { node_id: 2 }),
            Kind::PeerRemoved(PeerRemoved { node_id: 9 }),
            Kind::ClusterRecovered(ClusterRecovered { node_id: 1, lost: vec![2, 3] }),
        ]);
        assert_eq!(
            refusals,
            [
                "malformed event: token_sha256 must be 32 bytes",
                "this token admits a peer; it cannot enroll an envoy",
                "this token enrolls envoys; it cannot admit a peer",
                "peer node id 3 is not the next free id 2",
                "peer node id 2 is not the next free id 3",
                "no peer 9 in the cluster",
            ]
        );
        let peers: Vec<_> = state.peers().map(|p| (p.node_id, p.removed_index)).collect();
        assert_eq!(peers, [(1, None), (2, Some(5))]);
        assert_eq!(state.next_peer_id(), 3, "ids are never reused");
        let (state, _) = run(vec![admitted(1, None), join(5), admitted(2, Some(5))]);
        let (recovered, _) = run(vec![
            admitted(1, None),
            join(5),
            admitted(2, Some(5)),
            Kind::ClusterRecovered(ClusterRecovered { node_id: 1, lost: vec![2] }),
        ]);
        assert_eq!(state.peer(2).unwrap().removed_index, None);
        assert_eq!(recovered.peer(2).unwrap().removed_index, Some(4));
    }

    #[test]
    fn roster_events_register_reassign_and_drain_and_refuse_unknown_bolts() {
        use vigo_proto::events::{BoltDrained, BoltRegistered, EnvoysReassigned, RosterStamp};
        let stamp = |ms| Some(RosterStamp { ms, counter: 0, actor: "eu-1".into() });
        let bolt = |id: &str, pattern: &str, ms| {
            Kind::BoltRegistered(BoltRegistered {
                bolt: id.into(),
                addrs: vec![format!("{id}.example.com:1530")],
                patterns: vec![pattern.into()],
                stamp: stamp(ms),
            })
        };
        let reassign = |hostname: &str, to: &str, ms| {
            Kind::EnvoysReassigned(EnvoysReassigned { hostname: hostname.into(), to: to.into(), stamp: stamp(ms) })
        };
        let drain = |from: &str, to: &str, ms| {
            Kind::BoltDrained(BoltDrained { bolt: from.into(), to: to.into(), stamp: stamp(ms), automatic: false })
        };
        let (state, refusals) = run(vec![
            reassign("web-*", "us-1", 1),
            bolt("eu-1", "*.eu", 2),
            bolt("us-1", "*.us", 3),
            reassign("web-*", "us-1", 4),
            drain("eu-1", "eu-1", 5),
            drain("ap-1", "us-1", 6),
            drain("eu-1", "us-1", 7),
            bolt("bad id", "*", 8),
            reassign("[", "us-1", 9),
            Kind::BoltRegistered(BoltRegistered { bolt: "x".into(), addrs: vec!["a:1".into()], ..Default::default() }),
        ]);
        assert_eq!(
            refusals,
            [
                "no bolt us-1 in the roster",
                "malformed event: a bolt cannot be drained to itself",
                "no bolt ap-1 in the roster",
                "invalid bolt id \"bad id\": use 1 to 64 letters, digits, '.', '_' or '-'",
                "invalid hostname pattern \"[\"",
                "malformed event: a roster event needs its stamp",
            ]
        );
        let roster = state.roster();
        assert_eq!(roster.bolts().count(), 2);
        assert_eq!(state.router().owner("web-1.eu"), Some("us-1"), "reassigned");
        assert_eq!(state.router().owner("db-1.eu"), Some("us-1"), "eu-1 is drained to us-1");
        assert_eq!(roster.drained_to("eu-1").map(String::as_str), Some("us-1"));
    }

    #[test]
    fn cluster_keys_are_sealed_once() {
        let keys = || {
            Kind::ClusterKeysSealed(ClusterKeysSealed {
                ca_cert_der: vec![1],
                sealed_ca_key: vec![2],
                sealed_bundle_key: vec![3],
                seal_key_sha256: vec![4; 32],
            })
        };
        let (state, refusals) = run(vec![keys(), keys()]);
        assert_eq!(refusals, ["the cluster keys are already sealed on the log"]);
        assert_eq!(state.keys().unwrap().index, 1);
    }

    #[test]
    fn enroll_revoke_publish_script() {
        let (state, refusals) = run(vec![
            token(1, 2),
            enrolled("e1", "web-1", 1),
            enrolled("e2", "web-2", 1),
            enrolled("e3", "web-3", 1),
            Kind::EnvoyRevoked(EnvoyRevoked { envoy_id: "e1".into(), reason: "retired".into() }),
            Kind::EnvoyRevoked(EnvoyRevoked { envoy_id: "e1".into(), reason: "twice".into() }),
            Kind::StackPublished(StackPublished {
                version: 1,
                archive: vec![1],
                sha256: vec![0; 32],
                author: "a".into(),
                message: "m".into(),
                synced_from: String::new(),
            }),
            Kind::StackPublished(StackPublished {
                version: 3,
                archive: vec![1],
                sha256: vec![0; 32],
                author: "a".into(),
                message: "m".into(),
                synced_from: String::new(),
            }),
        ]);
        assert_eq!(
            dump(&state),
            "last_index=5 stack_version=1\nenvoy e1 host=web-1 enrolled@2 revoked@Some(4)\nenvoy e2 host=web-2 enrolled@3 revoked@None\n"
        );
        assert_eq!(
            refusals,
            vec![
                "enrollment token is used up",
                "envoy e1 is already revoked",
                "stack version 3 does not follow the live version 1"
            ]
        );
        assert_eq!(state.token(&[1; 32]).unwrap().uses_left, 0);
    }

    #[test]
    fn a_revoked_envoy_is_in_the_roster_for_every_bolt_and_no_bolt_takes_it_in() {
        use vigo_proto::events::EnvoyAdopted;
        let adopted = |from: &str| {
            Kind::EnvoyAdopted(EnvoyAdopted {
                envoy_id: "e1".into(),
                hostname: "web-1".into(),
                pubkey: vec![7; 32],
                cert_sha256: vec![9; 32],
                from: from.into(),
            })
        };
        let (state, refusals) = run(vec![
            token(1, 1),
            enrolled("e1", "web-1", 1),
            Kind::EnvoyRevoked(EnvoyRevoked { envoy_id: "e1".into(), reason: "stolen".into() }),
        ]);
        assert!(refusals.is_empty(), "{refusals:?}");
        assert!(state.roster().is_revoked(&[9; 32]));
        assert_eq!(state.roster_index(), 3, "the roster changed with the revocation");

        // Another bolt learns it by gossip, and then takes the envoy in neither from a bolt nor
        // on its certificate.
        let (mut other, _) = run(vec![]);
        let delta = state.roster().to_delta();
        let merged = super::roster_of(&delta).unwrap();
        Arc::make_mut(&mut other.roster).merge_in(merged);
        for from in ["us-1", ""] {
            let env = propose(&other, adopted(from));
            let refused = other.validate(env.event.as_ref().unwrap(), env.proposed_at_ms).unwrap_err();
            assert!(refused.to_string().contains("revoked at a bolt of the federation"), "{refused}");
        }
        // Unrevoked, it is taken in, on its certificate too.
        let (fresh, refusals) = run(vec![adopted("")]);
        assert!(refusals.is_empty(), "{refusals:?}");
        assert!(fresh.envoy("e1").is_some_and(|e| e.is_active()));
    }

    fn stack(version: u64, sha: u8, synced_from: &str) -> Kind {
        Kind::StackPublished(StackPublished {
            version,
            archive: vec![sha],
            sha256: vec![sha; 32],
            author: "a".into(),
            message: "m".into(),
            synced_from: synced_from.into(),
        })
    }

    #[test]
    fn a_synced_stack_is_taken_only_when_its_version_and_hash_are_greater() {
        let (state, refusals) = run(vec![
            stack(1, 5, ""),
            // Another bolt's, further on: taken at its version.
            stack(4, 1, "us-1"),
            // Older, or the same: refused.
            stack(3, 9, "us-1"),
            stack(4, 1, "us-1"),
            // The same version with a greater hash wins (two bolts published at once).
            stack(4, 2, "ap-1"),
            stack(4, 0, "ap-1"),
            stack(0, 3, "ap-1"),
            stack(5, 3, "not a bolt id"),
            // A local publish goes on from there.
            stack(5, 7, ""),
        ]);
        assert_eq!(state.stack_version(), 5);
        assert_eq!(state.stack().unwrap().sha256, [7; 32]);
        assert_eq!(refusals.len(), 5, "{refusals:?}");
        assert!(refusals[..4].iter().all(|r| r.starts_with("stack version")), "{refusals:?}");
        assert!(refusals[4].contains("bolt"), "{refusals:?}");
    }

    #[test]
    fn hostname_is_free_again_after_revocation() {
        let (state, refusals) = run(vec![
            token(1, 5),
            enrolled("e1", "db-1", 1),
            enrolled("e2", "db-1", 1),
            Kind::EnvoyRevoked(EnvoyRevoked { envoy_id: "e1".into(), reason: String::new() }),
            enrolled("e2", "db-1", 1),
        ]);
        assert_eq!(refusals, vec!["hostname db-1 is already enrolled as e1; revoke it first"]);
        assert_eq!(state.envoy_by_hostname("db-1").unwrap().envoy_id, "e2");
    }

    #[test]
    fn unknown_and_expired_tokens_are_refused() {
        let state = ControlState::default();
        let err = state.validate(&Event { kind: Some(enrolled("e1", "h", 4)) }, 0).unwrap_err();
        assert_eq!(err, ControlError::TokenUnknown);
        let mut state = ControlState::default();
        let env = propose(
            &state,
            Kind::TokenCreated(TokenCreated {
                token_sha256: vec![4; 32],
                uses: 1,
                expires_at_ms: 10,
                join: false,
                federate: false,
            }),
        );
        state.apply(&env);
        let err = state.validate(&Event { kind: Some(enrolled("e1", "h", 4)) }, 11).unwrap_err();
        assert_eq!(err, ControlError::TokenExpired);
    }

    #[test]
    #[should_panic(expected = "I-4")]
    fn i4_apply_refuses_a_broken_link() {
        let mut state = ControlState::default();
        let mut env = propose(&state, token(1, 1));
        env.prev_hash = vec![1; 32];
        state.apply(&env);
    }

    #[test]
    #[should_panic(expected = "I-1")]
    fn i1_apply_refuses_an_invalid_committed_event() {
        let mut state = ControlState::default();
        let env = propose(&state, enrolled("e1", "h", 1));
        state.apply(&env);
    }

    #[test]
    fn i1_replay_is_deterministic() {
        let script = || vec![token(1, 3), enrolled("a", "h1", 1), enrolled("b", "h2", 1)];
        let (a, _) = run(script());
        let (b, _) = run(script());
        assert_eq!(dump(&a), dump(&b));
        assert_eq!(a.last_hash(), b.last_hash());
    }
}
