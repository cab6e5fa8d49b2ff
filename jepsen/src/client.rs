//! A workload client: control writes and linearizable history reads over the admin API, each
//! turned into an [`Outcome`] the checkers can reason about.
//!
//! An answer that proves nothing happened (the request was refused for what it is) is
//! `Failed`; anything else that is not a success — no answer in time, a lost connection, no
//! leader, no quorum, a leader that could not be reached — is `Unknown`, because the write may
//! have committed (or still commit) anyway.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use vigo_proto::admin::admin_client::AdminClient;
use vigo_proto::admin::{CreateTokenRequest, PublishStackRequest, ReadHistoryRequest, RevokeEnvoyRequest};
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::events::EventEnvelope;
use vigo_proto::events::event::Kind;

use crate::history::{Event, Outcome, ReadResult, Write};

/// How long one operation may take before its outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to one peer.
pub struct Client {
    admin: AdminClient<Channel>,
    agent: AgentClient<Channel>,
}

/// The admin TLS configuration from a credentials folder.
pub fn tls(creds: &Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let ca = vigo_proto::tls::read_certs(&creds.join("ca.crt"))?.remove(0);
    let identity =
        (vigo_proto::tls::read_certs(&creds.join("admin.crt"))?, vigo_proto::tls::read_key(&creds.join("admin.key"))?);
    Ok(vigo_proto::tls::client_config(&ca, Some(identity))?)
}

impl Client {
    /// Connects to the peer at `addr`.
    pub async fn connect(addr: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let channel = vigo_proto::tls::connect(addr, tls, OP_TIMEOUT).await?;
        let admin = AdminClient::new(channel.clone()).max_decoding_message_size(256 << 20);
        Ok(Client { admin, agent: AgentClient::new(channel) })
    }

    /// Publishes a stack whose content names `tag`; the write is known by the archive's hash.
    pub async fn publish(&mut self, tag: &str) -> (Write, Outcome) {
        let archive = match stack_archive(tag) {
            Ok(archive) => archive,
            Err(e) => return (Write::Publish { key: String::new() }, Outcome::Failed { reason: e.to_string() }),
        };
        let write = Write::Publish { key: publish_key(tag) };
        let request = PublishStackRequest { archive, message: tag.to_string() };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, self.admin.publish_stack(request)).await {
            Ok(Ok(reply)) => Outcome::Ok { index: Some(reply.into_inner().index), read: None },
            Ok(Err(status)) => outcome_of(&status),
            Err(_) => Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") },
        };
        (write, outcome)
    }

    /// Creates a token and returns it too (an enrollment uses it). The server makes its secret, so a token whose answer was lost is known
    /// by no key (empty): the checkers allow as many unclaimed tokens as such writes.
    pub async fn create_token(&mut self) -> (Write, Outcome, Option<String>) {
        let request = CreateTokenRequest { uses: 1, ttl_s: 0, join: false, federate: false };
        let unknown = Write::Token { key: String::new() };
        match tokio::time::timeout(OP_TIMEOUT, self.admin.create_token(request)).await {
            Ok(Ok(reply)) => {
                let token = reply.into_inner().token;
                match token_key(&token) {
                    Some(key) => (Write::Token { key }, Outcome::Ok { index: None, read: None }, Some(token)),
                    None => (
                        unknown,
                        Outcome::Unknown { reason: "the answer holds no token this client can read".into() },
                        None,
                    ),
                }
            }
            Ok(Err(status)) => (unknown, outcome_of(&status), None),
            Err(_) => (unknown, Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") }, None),
        }
    }

    /// Enrolls an envoy named `hostname` with a fresh key, using `token` (one this client
    /// created). Answers with the envoy id when it enrolled.
    pub async fn enroll(&mut self, token: &str, hostname: &str, seed: [u8; 32]) -> (Write, Outcome, Option<String>) {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pubkey = key.verifying_key().to_bytes();
        let proof = key.sign(&vigo_proto::signing::enroll_bytes(token, hostname, &pubkey)).to_bytes().to_vec();
        let request = vigo_proto::agent::EnrollRequest {
            token: token.to_string(),
            hostname: hostname.to_string(),
            pubkey: pubkey.to_vec(),
            proof,
        };
        let write = Write::Enroll { key: hostname.to_string() };
        match tokio::time::timeout(OP_TIMEOUT, self.agent.enroll(request)).await {
            Ok(Ok(reply)) => (write, Outcome::Ok { index: None, read: None }, Some(reply.into_inner().envoy_id)),
            Ok(Err(status)) => (write, outcome_of(&status), None),
            Err(_) => (write, Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") }, None),
        }
    }

    /// Revokes the envoy `envoy_id`.
    pub async fn revoke(&mut self, envoy_id: &str) -> (Write, Outcome) {
        let write = Write::Revoke { key: format!("revoked:{envoy_id}") };
        let request = RevokeEnvoyRequest { envoy: envoy_id.to_string(), reason: "jepsen".into() };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, self.admin.revoke_envoy(request)).await {
            Ok(Ok(reply)) => Outcome::Ok { index: Some(reply.into_inner().index), read: None },
            Ok(Err(status)) => outcome_of(&status),
            Err(_) => Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") },
        };
        (write, outcome)
    }

    /// Lists this peer's envoys linearizably: recorded as a read of the history up to the event
    /// the list was taken at, with how many envoys it listed and how many of them revoked.
    pub async fn read_envoys(&mut self, peer: usize) -> Outcome {
        let request = vigo_proto::admin::ListEnvoysRequest { r#where: Vec::new(), linearizable: true, local: false };
        match tokio::time::timeout(OP_TIMEOUT, self.admin.list_envoys(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                let envoys = crate::history::EnvoyCounts {
                    listed: reply.envoys.len() as u64,
                    revoked: reply.envoys.iter().filter(|e| e.revoked).count() as u64,
                };
                let read = ReadResult {
                    peer,
                    len: reply.as_of_index,
                    last_hash: if reply.as_of_index == 0 { String::new() } else { hex::encode(&reply.as_of_hash) },
                    chain_error: None,
                    envoys: Some(envoys),
                };
                Outcome::Ok { index: None, read: Some(read) }
            }
            Ok(Err(status)) => outcome_of(&status),
            Err(_) => Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") },
        }
    }

    /// This peer's own view of the cluster: node id, role, term and the leader it knows of.
    pub async fn status(&mut self) -> Option<(u64, String, u64, Option<u64>)> {
        let request = vigo_proto::admin::ServerStatusRequest {};
        let status = tokio::time::timeout(OP_TIMEOUT, self.admin.server_status(request)).await.ok()?.ok()?.into_inner();
        Some((status.node_id, status.role, status.term, (status.leader != 0).then_some(status.leader)))
    }

    /// This peer's projection: the live stack version and every envoy, as it serves them.
    pub async fn projection(&mut self) -> Option<crate::history::Projection> {
        let read = async {
            let compliance = self.admin.report_compliance(vigo_proto::admin::ReportComplianceRequest {}).await?;
            let request =
                vigo_proto::admin::ListEnvoysRequest { r#where: Vec::new(), linearizable: false, local: false };
            let envoys = self.admin.list_envoys(request).await?;
            Ok::<_, tonic::Status>((compliance.into_inner().stack_version, envoys.into_inner().envoys))
        };
        let (stack_version, envoys) = tokio::time::timeout(OP_TIMEOUT, read).await.ok()?.ok()?;
        let envoys = envoys
            .into_iter()
            .map(|e| crate::history::EnvoyState { envoy_id: e.envoy_id, hostname: e.hostname, revoked: e.revoked })
            .collect();
        Some(crate::history::Projection { stack_version, envoys })
    }

    /// This peer's whole history, linearizable (through the leader): what the final reads keep.
    pub async fn read_events(&mut self) -> Option<Vec<Event>> {
        tokio::time::timeout(OP_TIMEOUT, self.read_all(true)).await.ok()?.ok()
    }

    /// Reads this peer's whole history; linearizable when asked (through the leader).
    pub async fn read(&mut self, peer: usize, linearizable: bool) -> Outcome {
        match tokio::time::timeout(OP_TIMEOUT, self.read_all(linearizable)).await {
            Ok(Ok(events)) => Outcome::Ok { index: None, read: Some(ReadResult::of(peer, &events)) },
            Ok(Err(status)) => outcome_of(&status),
            Err(_) => Outcome::Unknown { reason: format!("no answer within {OP_TIMEOUT:?}") },
        }
    }

    /// Every event from index 1, page by page; only the first page waits for the barrier (the
    /// history only grows, so later pages hold a longer prefix, read before this call ends).
    async fn read_all(&mut self, linearizable: bool) -> Result<Vec<Event>, tonic::Status> {
        let mut events = Vec::new();
        loop {
            let request = ReadHistoryRequest {
                from_index: events.len() as u64 + 1,
                limit: 0,
                linearizable: linearizable && events.is_empty(),
            };
            let page = self.admin.read_history(request).await?.into_inner();
            if page.events.is_empty() {
                return Ok(events);
            }
            events.extend(page.events.iter().map(event_of));
        }
    }
}

/// What an error answer says about whether the write happened.
fn outcome_of(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let reason = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // Refused for what it is: it was never committed and never will be.
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::NotFound => Outcome::Failed { reason },
        _ => Outcome::Unknown { reason },
    }
}

/// The key of the token printed as `vgt1_<secret>_<pin>`: the hex SHA-256 of its secret.
fn token_key(token: &str) -> Option<String> {
    let secret = hex::decode(token.split('_').nth(1)?).ok()?;
    Some(hex::encode(Sha256::digest(secret)))
}

/// An event as the checkers see it.
pub fn event_of(env: &EventEnvelope) -> Event {
    let (kind, key) = match env.event.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(Kind::StackPublished(s)) => ("StackPublished", hex::encode(&s.sha256)),
        Some(Kind::TokenCreated(t)) => ("TokenCreated", hex::encode(&t.token_sha256)),
        Some(Kind::EnvoyEnrolled(e)) => ("EnvoyEnrolled", e.hostname.clone()),
        Some(Kind::EnvoyRevoked(r)) => ("EnvoyRevoked", format!("revoked:{}", r.envoy_id)),
        Some(Kind::ClusterKeysSealed(_)) => ("ClusterKeysSealed", String::new()),
        Some(Kind::PeerAdmitted(_)) => ("PeerAdmitted", String::new()),
        Some(Kind::PeerRemoved(_)) => ("PeerRemoved", String::new()),
        Some(Kind::ClusterRecovered(_)) => ("ClusterRecovered", String::new()),
        Some(Kind::BoltRegistered(b)) => ("BoltRegistered", b.bolt.clone()),
        Some(Kind::EnvoysReassigned(r)) => ("EnvoysReassigned", r.hostname.clone()),
        Some(Kind::BoltDrained(d)) => ("BoltDrained", d.bolt.clone()),
        Some(Kind::BoltFederated(f)) => ("BoltFederated", f.bolt.clone()),
        Some(Kind::RosterMerged(m)) => ("RosterMerged", m.from.clone()),
        Some(Kind::EnvoyHandedOff(h)) => ("EnvoyHandedOff", h.envoy_id.clone()),
        Some(Kind::EnvoyAdopted(a)) => ("EnvoyAdopted", a.hostname.clone()),
        None => ("Unknown", String::new()),
    };
    Event {
        index: env.index,
        prev_hash: hex::encode(&env.prev_hash),
        hash: hex::encode(&env.hash),
        kind: kind.to_string(),
        key,
    }
}

/// The key a publish of `tag`'s stack is known by: the hex SHA-256 of its archive.
pub fn publish_key(tag: &str) -> String {
    stack_archive(tag).map(|archive| hex::encode(Sha256::digest(&archive))).unwrap_or_default()
}

/// A one-module stack whose file content is `tag`: a new stack for every tag. The archive is
/// deterministic (fixed modes and times), so its hash names the write.
pub fn stack_archive(tag: &str) -> anyhow::Result<Vec<u8>> {
    let module = format!("resources:\n  - {{ type: file, path: /etc/motd, content: \"{tag}\\n\" }}\n");
    let files =
        [("assign.yaml", "- match: \"*\"\n  modules: [motd]\n".to_string()), ("modules/motd/module.yaml", module)];
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, contents.as_bytes()).context("cannot build the stack archive")?;
    }
    Ok(tar.into_inner()?.finish()?)
}
