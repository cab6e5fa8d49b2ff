//! The envoy's identity on disk: its key, certificate, the cluster CA and what enrollment
//! returned, in `EDIR/identity/`. Written once by `envoy enroll`, read by every run.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use vigo_proto::tls::{client_config, ed25519_pkcs8, ed25519_seed, read_certs, read_key, to_pem};

/// What enrollment established.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Envoy id assigned by the server.
    pub envoy_id: String,
    /// Hostname enrolled with.
    pub hostname: String,
    /// Every peer's address.
    pub servers: Vec<String>,
    /// Event index of that list of peers.
    pub peers_index: u64,
    /// In a federation: the peers of every other bolt, tried when none of `servers` answers.
    pub fallback: Vec<String>,
    /// Key that signs bundles (raw Ed25519).
    pub bundle_pubkey: [u8; 32],
    /// Seconds between check-ins.
    pub check_in_interval_s: u32,
    /// This envoy's key: signs requests and is its TLS key.
    pub key: SigningKey,
    /// TLS configuration for mTLS to the cluster.
    pub tls: Arc<rustls::ClientConfig>,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// Whether `data_dir` holds an enrollment.
pub fn is_enrolled(data_dir: &Path) -> bool {
    dir(data_dir).join("enrollment.json").exists()
}

/// What `envoy enroll` writes.
pub struct Enrollment<'a> {
    /// Assigned id.
    pub envoy_id: &'a str,
    /// Hostname.
    pub hostname: &'a str,
    /// Peer addresses.
    pub servers: &'a [String],
    /// Event index of that list.
    pub peers_index: u64,
    /// Other bolts' peers.
    pub fallback: &'a [String],
    /// Bundle signing key.
    pub bundle_pubkey: &'a [u8],
    /// Check-in interval.
    pub check_in_interval_s: u32,
    /// Key seed.
    pub seed: &'a [u8; 32],
    /// Issued certificate.
    pub cert_der: &'a [u8],
    /// Cluster CA.
    pub ca_der: &'a [u8],
}

/// Writes an enrollment; refuses to overwrite one.
pub fn save(data_dir: &Path, e: &Enrollment<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if is_enrolled(data_dir) {
        bail!("{} already holds an enrollment", data_dir.display());
    }
    let dir = dir(data_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut key =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dir.join("envoy.key"))?;
    key.write_all(to_pem("PRIVATE KEY", &ed25519_pkcs8(e.seed)).as_bytes())?;
    key.sync_all()?;
    fs::write(dir.join("envoy.crt"), to_pem("CERTIFICATE", e.cert_der))?;
    fs::write(dir.join("ca.crt"), to_pem("CERTIFICATE", e.ca_der))?;
    let meta = json!({
        "envoy_id": e.envoy_id,
        "hostname": e.hostname,
        "servers": e.servers,
        "peers_index": e.peers_index,
        "fallback": e.fallback,
        "bundle_pubkey": hex::encode(e.bundle_pubkey),
        "check_in_interval_s": e.check_in_interval_s,
    });
    // Written last: its presence means the enrollment is complete.
    write_meta(&dir, &meta)
}

/// Replaces `enrollment.json` atomically.
fn write_meta(dir: &Path, meta: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = dir.join("enrollment.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(meta)?)?;
    fs::rename(&tmp, dir.join("enrollment.json"))?;
    Ok(())
}

/// Records the cluster's current peers (as of event `peers_index`) and, when given, the other
/// bolts' (`fallback`), keeping everything else.
pub fn update_servers(
    data_dir: &Path,
    servers: &[String],
    peers_index: u64,
    fallback: Option<&[String]>,
) -> anyhow::Result<()> {
    let dir = dir(data_dir);
    let mut meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("enrollment.json"))?)
        .context("identity/enrollment.json is not valid JSON")?;
    meta["servers"] = json!(servers);
    meta["peers_index"] = json!(peers_index);
    if let Some(fallback) = fallback {
        meta["fallback"] = json!(fallback);
    }
    write_meta(&dir, &meta)
}

/// Loads the enrollment of `data_dir`.
pub fn load(data_dir: &Path) -> anyhow::Result<Identity> {
    let dir = dir(data_dir);
    if !is_enrolled(data_dir) {
        bail!("{} holds no enrollment; run `envoy enroll` first", data_dir.display());
    }
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("enrollment.json"))?)
        .context("identity/enrollment.json is not valid JSON")?;
    let text = |k: &str| meta[k].as_str().map(str::to_string).with_context(|| format!("enrollment.json lacks {k}"));
    let bundle_pubkey: [u8; 32] = hex::decode(text("bundle_pubkey")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("enrollment.json: bad bundle_pubkey")?;
    let servers = meta["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .context("enrollment.json lists no servers")?;
    let key_der = read_key(&dir.join("envoy.key"))?;
    let seed = ed25519_seed(key_der.secret_pkcs8_der()).context("identity/envoy.key is not an Ed25519 key")?;
    let certs = read_certs(&dir.join("envoy.crt"))?;
    let ca: CertificateDer<'static> = read_certs(&dir.join("ca.crt"))?.remove(0);
    let tls = client_config(&ca, Some((certs, key_der)))?;
    Ok(Identity {
        envoy_id: text("envoy_id")?,
        hostname: text("hostname")?,
        servers,
        peers_index: meta["peers_index"].as_u64().unwrap_or(0),
        fallback: meta["fallback"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        bundle_pubkey,
        check_in_interval_s: meta["check_in_interval_s"].as_u64().unwrap_or(60) as u32,
        key: SigningKey::from_bytes(&seed),
        tls,
    })
}
