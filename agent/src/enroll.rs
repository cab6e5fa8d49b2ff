//! `envoy enroll`: generate a key, authenticate the server by the CA pin in the token, send
//! the public key, hostname and token, and keep the certificate the cluster CA issues.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use rustls::pki_types::CertificateDer;
use tonic::transport::Channel;
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::agent::{EnrollRequest, EnrollResponse};
use vigo_proto::tls::{client_config, connect};
use vigo_proto::token::Token;

use crate::identity::{self, Enrollment};

/// How long to wait for the server during enrollment.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Enrolls this host with the server at `server`; returns the envoy id.
pub async fn enroll(server: &str, token_text: &str, data_dir: &Path, hostname: &str) -> anyhow::Result<String> {
    let token = Token::parse(token_text)?;
    if identity::is_enrolled(data_dir) {
        bail!("{} already holds an enrollment", data_dir.display());
    }
    let ca_der = fetch_pinned_ca(server, &token).await?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let ca = CertificateDer::from(ca_der.clone());
    let channel = connect(server, client_config(&ca, None)?, ENROLL_TIMEOUT).await?;
    let response = request_enrollment(channel, token_text.trim(), hostname, &seed).await?;
    if response.ca_cert_der != ca_der {
        bail!("server answered with a different CA than it presented");
    }
    identity::save(
        data_dir,
        &Enrollment {
            envoy_id: &response.envoy_id,
            hostname,
            servers: &response.servers,
            peers_index: response.peers_index,
            fallback: &response.fallback,
            bundle_pubkey: &response.bundle_pubkey,
            check_in_interval_s: response.check_in_interval_s,
            seed: &seed,
            cert_der: &response.cert_der,
            ca_der: &ca_der,
        },
    )
    .context("cannot save the enrollment")?;
    Ok(response.envoy_id)
}

/// Fetches the cluster CA from `server` over an unauthenticated channel and trusts it only if
/// `token` pins it.
pub async fn fetch_pinned_ca(server: &str, token: &Token) -> anyhow::Result<Vec<u8>> {
    vigo_proto::tls::fetch_pinned_ca(server, &token.ca_pin, ENROLL_TIMEOUT).await.map_err(|e| match e {
        vigo_proto::tls::TlsError::CaMismatch(_) => anyhow::anyhow!("{e}: refusing to enroll"),
        other => other.into(),
    })
}

/// Asks the server behind `channel` (TLS verified against the pinned CA) to enroll the key of
/// `seed` as `hostname`, proving possession of the key.
pub async fn request_enrollment(
    channel: Channel,
    token_text: &str,
    hostname: &str,
    seed: &[u8; 32],
) -> anyhow::Result<EnrollResponse> {
    let key = SigningKey::from_bytes(seed);
    let pubkey = key.verifying_key().to_bytes();
    let proof = key.sign(&vigo_proto::signing::enroll_bytes(token_text, hostname, &pubkey));
    let response = AgentClient::new(channel)
        .enroll(EnrollRequest {
            token: token_text.to_string(),
            hostname: hostname.to_string(),
            pubkey: pubkey.to_vec(),
            proof: proof.to_bytes().to_vec(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("enrollment of {hostname} refused: {}", s.message()))?
        .into_inner();
    Ok(response)
}

/// This machine's hostname.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
