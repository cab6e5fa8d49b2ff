//! Synthetic envoys: enrolled through the real path (real keys, certificates issued by the
//! cluster CA, mTLS), checking in with signed requests like `envoy` does, without converging.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use vigo_agent::session::Session;
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::agent::check_in_response::Reply;
use vigo_proto::agent::{CheckInRequest, CheckInResponse, WatchEvent, WatchRequest, watch_event};
use vigo_proto::bundle::SignedBundle;
use vigo_proto::tls::{client_config, connect, connect_from, ed25519_pkcs8};
use vigo_proto::token::Token;

use crate::inventory;

/// How long one call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster as seen by enrollment: its CA, checked against the token's pin.
#[derive(Clone)]
pub struct Cluster {
    /// Server address.
    pub server: String,
    /// The cluster CA.
    pub ca: CertificateDer<'static>,
    /// Envoy `i` enrolls as this followed by `i` (a bolt of a federation owns its prefix).
    pub hostname_prefix: String,
}

impl Cluster {
    /// Fetches the CA and trusts it only if `token` pins it, as `envoy enroll` does.
    pub async fn discover(server: &str, token: &str) -> anyhow::Result<Self> {
        let ca_der = vigo_agent::enroll::fetch_pinned_ca(server, &Token::parse(token)?).await?;
        Ok(Self { server: server.to_string(), ca: CertificateDer::from(ca_der), hostname_prefix: "fleet-".into() })
    }

    /// A channel for enrollments (server-authenticated TLS, no client certificate).
    pub async fn enroll_channel(&self) -> anyhow::Result<Channel> {
        Ok(connect(&self.server, client_config(&self.ca, None)?, CALL_TIMEOUT).await?)
    }
}

/// What a check-in came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed.
    NoChange,
    /// A new bundle of this stack version, signature verified.
    Bundle(u64),
    /// Told to back off for this many seconds.
    Backoff(u32),
}

/// One synthetic envoy.
pub struct FakeEnvoy {
    /// Position in the fleet; seeds the inventory.
    pub index: u32,
    /// Id the server assigned.
    pub envoy_id: String,
    /// Hostname it enrolled with.
    pub hostname: String,
    key: SigningKey,
    tls: Arc<rustls::ClientConfig>,
    /// `tls`, negotiating a session instead of gRPC.
    session_tls: Arc<rustls::ClientConfig>,
    counter: u64,
    fingerprint: Vec<u8>,
    /// Event index of the list of peers it holds, so the server sends the list only when it changed.
    peers_index: u64,
    /// Hash of its inventory, computed on the first check-in (generating ~150 KB costs client CPU).
    traits_hash: Option<[u8; 32]>,
    /// Stack version of the bundle it holds (0: none yet).
    pub stack_version: u64,
    /// Local address its connections leave from.
    pub source: Option<IpAddr>,
    channel: Option<AgentClient<Channel>>,
    session: Option<Session>,
}

/// How a fake envoy's check-ins travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A new connection for every check-in.
    Poll,
    /// One held connection: a `CheckIn` call per check-in, pushes on a `Watch`.
    Held,
    /// One held session (a TLS connection of its own, no HTTP/2) carrying check-ins and pushes.
    Session,
}

impl FakeEnvoy {
    /// Enrolls envoy `index` over `channel` with `token`.
    pub async fn enroll(
        cluster: &Cluster,
        channel: Channel,
        token: &str,
        index: u32,
        source: Option<IpAddr>,
    ) -> anyhow::Result<(Self, VerifyingKey)> {
        let hostname = format!("{}{index}", cluster.hostname_prefix);
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let response = vigo_agent::enroll::request_enrollment(channel, token, &hostname, &seed).await?;
        let bundle_key = VerifyingKey::from_bytes(
            response.bundle_pubkey.as_slice().try_into().context("bundle key is not 32 bytes")?,
        )?;
        let identity = (vec![CertificateDer::from(response.cert_der)], PrivatePkcs8KeyDer::from(ed25519_pkcs8(&seed)));
        let tls = client_config(&cluster.ca, Some(identity))?;
        let envoy = Self {
            index,
            envoy_id: response.envoy_id,
            hostname,
            key: SigningKey::from_bytes(&seed),
            session_tls: vigo_proto::session::client_config(&tls),
            tls,
            counter: 0,
            fingerprint: Vec::new(),
            peers_index: response.peers_index,
            traits_hash: None,
            stack_version: 0,
            source,
            channel: None,
            session: None,
        };
        Ok((envoy, bundle_key))
    }

    /// Drops the held connection, if any.
    pub fn disconnect(&mut self) {
        self.session = None;
        self.channel = None;
    }

    /// Whether it holds a session now.
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Hash of its inventory, once a check-in computed it.
    pub fn traits_hash(&self) -> Option<[u8; 32]> {
        self.traits_hash
    }

    /// A check-in request with the next counter, carrying `traits_json` (may be empty), signed.
    pub fn signed_request(&mut self, traits_hash: &[u8], traits_json: String) -> CheckInRequest {
        self.counter += 1;
        let mut req = CheckInRequest {
            envoy_id: self.envoy_id.clone(),
            counter: self.counter,
            traits_hash: traits_hash.to_vec(),
            bundle_fingerprint: self.fingerprint.clone(),
            signature: Vec::new(),
            traits_json,
            peers_index: self.peers_index,
        };
        req.signature = self.key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
        req
    }

    /// One check-in request and its answer: a call of its own, or a message on the session.
    pub async fn exchange(
        &mut self,
        server: &str,
        req: CheckInRequest,
        transport: Transport,
    ) -> anyhow::Result<CheckInResponse> {
        if transport != Transport::Session {
            let mut client = self.client(server).await?;
            return match tokio::time::timeout(CALL_TIMEOUT, client.check_in(req)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => {
                    self.disconnect();
                    bail!("{:?}: {}", status.code(), status.message())
                }
                Err(_) => {
                    self.disconnect();
                    bail!("check-in timed out after {CALL_TIMEOUT:?}")
                }
            };
        }
        let answered = tokio::time::timeout(CALL_TIMEOUT, self.session_exchange(server, req)).await;
        match answered {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.disconnect();
                Err(e)
            }
            Err(_) => {
                self.disconnect();
                bail!("check-in timed out after {CALL_TIMEOUT:?}")
            }
        }
    }

    async fn session_exchange(&mut self, server: &str, req: CheckInRequest) -> anyhow::Result<CheckInResponse> {
        let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
        if let Some(session) = &mut self.session {
            return session.check_in(req).await.map_err(status);
        }
        let session = Session::connect(server, self.source, self.session_tls.clone(), CALL_TIMEOUT).await;
        let answer = self.session.insert(session.map_err(status)?).check_in(req).await.map_err(status)?;
        Ok(answer)
    }

    /// Waits for the next push on the open session; `None` (and the session closed) when it
    /// ends, and never returns without a session.
    pub async fn next_session_push(&mut self) -> Option<()> {
        let Some(session) = self.session.as_mut() else { return std::future::pending().await };
        if session.next_push().await.is_none() {
            self.session = None;
            return None;
        }
        Some(())
    }

    async fn client(&mut self, server: &str) -> anyhow::Result<AgentClient<Channel>> {
        if let Some(client) = &self.channel {
            return Ok(client.clone());
        }
        let channel = connect_from(server, self.source, self.tls.clone(), CALL_TIMEOUT).await?;
        let client = AgentClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        self.channel = Some(client.clone());
        Ok(client)
    }

    /// One check-in, sending the inventory when the server asks for it. Unless polling, the
    /// connection stays open for the next one.
    pub async fn check_in(
        &mut self,
        server: &str,
        bundle_key: &VerifyingKey,
        transport: Transport,
    ) -> anyhow::Result<Outcome> {
        // The inventory is generated on the first check-in and kept only until it is sent.
        let mut inventory = None;
        let traits_hash = match self.traits_hash {
            Some(hash) => hash,
            None => {
                let (text, hash) = inventory::for_host(self.index, &self.hostname);
                inventory = Some(text);
                *self.traits_hash.insert(hash)
            }
        };
        let mut traits_json = String::new();
        let outcome = loop {
            let req = self.signed_request(&traits_hash, std::mem::take(&mut traits_json));
            let sent_traits = !req.traits_json.is_empty();
            let response = self.exchange(server, req, transport).await?;
            if !response.servers.is_empty() {
                self.peers_index = response.peers_index;
            }
            if response.send_traits {
                if sent_traits {
                    bail!("server asked again for traits it was just sent");
                }
                traits_json = match inventory.take() {
                    Some(text) => text,
                    None => inventory::for_host(self.index, &self.hostname).0,
                };
                continue;
            }
            break match response.reply {
                Some(Reply::Bundle(signed)) => Outcome::Bundle(self.accept(&signed, bundle_key)?),
                Some(Reply::Backoff(b)) => Outcome::Backoff(b.retry_after_s),
                Some(Reply::Redirect(_)) => bail!("redirected, which a single cluster never does"),
                Some(Reply::NoChange(_)) | None => Outcome::NoChange,
            };
        };
        if transport == Transport::Poll {
            self.disconnect();
        }
        Ok(outcome)
    }

    /// Opens a watch on the held connection, as `envoy run` does after a check-in.
    pub async fn watch(&mut self, server: &str) -> anyhow::Result<tonic::Streaming<WatchEvent>> {
        let mut client = self.client(server).await?;
        self.counter += 1;
        let mut req = WatchRequest { envoy_id: self.envoy_id.clone(), counter: self.counter, signature: Vec::new() };
        req.signature = self.key.sign(&vigo_proto::signing::watch_bytes(&req)).to_bytes().to_vec();
        let stream = client.watch(req).await.map_err(|s| anyhow::anyhow!("watch refused: {}", s.message()))?;
        Ok(stream.into_inner())
    }

    /// Verifies a bundle as `envoy` does and takes it; returns its stack version.
    fn accept(&mut self, signed: &SignedBundle, bundle_key: &VerifyingKey) -> anyhow::Result<u64> {
        let bundle = vigo_agent::run::verify_bundle(bundle_key, signed)?;
        self.fingerprint = signed.fingerprint.clone();
        self.stack_version = bundle.stack_version;
        Ok(bundle.stack_version)
    }
}

/// The next push on a held `Watch` (the `held` transport); `None` when it ends. Never resolves
/// without a watch.
pub async fn next_push(watch: Option<&mut tonic::Streaming<WatchEvent>>) -> Option<u64> {
    let Some(watch) = watch else { return std::future::pending().await };
    loop {
        match watch.message().await {
            Ok(Some(WatchEvent { kind: Some(watch_event::Kind::PushRequested(push)) })) => {
                return Some(push.stack_version);
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}
