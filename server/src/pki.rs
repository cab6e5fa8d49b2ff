//! The cluster's key material: the CA that signs peer, admin and envoy certificates, the
//! Ed25519 key that signs bundles, and the seal key that guards both on the log.
//!
//! The CA and bundle keys live on the log, sealed (`ClusterKeysSealed`): AES-256-GCM under the
//! cluster's seal key, which every peer keeps in its data dir (`pki/seal.key`) and nowhere
//! else, and hands to a joining peer over mTLS. A copy of the log, or of a backup of it, does
//! not give the keys away; any peer holding the seal key can issue certificates and sign
//! bundles as soon as it has applied the log.
//!
//! What each peer keeps in its data dir: `pki/ca.crt`, its own certificate and key
//! (`pki/server.crt`, `pki/server.key`: `vigo-peer:<id>`, used both to serve and, as a client
//! certificate, to talk to the other peers), `pki/seal.key`, and `node-id`. [`init`] founds a
//! cluster (and writes admin credentials to `DIR/admin/`); [`write_joined`] records what a
//! joining peer was given.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey as BundleSigningKey;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, PublicKeyData,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use vigo_proto::events::ClusterKeysSealed;
use vigo_proto::tls::{SERVER_NAME, ed25519_pkcs8, ed25519_seed, to_pem};
use vigo_state::SealedKeys;

/// Common-name prefix of admin certificates; envoy certificates are issued as `envoy:<id>`
/// and can never carry it.
pub const ADMIN_CN_PREFIX: &str = "vigo-admin:";

/// Common-name prefix of peer certificates: `vigo-peer:<node id>`.
pub const PEER_CN_PREFIX: &str = "vigo-peer:";

/// What the seal binds each sealed key to, so one cannot stand in for the other.
const AAD_CA_KEY: &[u8] = b"vigo cluster CA key v1";
const AAD_BUNDLE_KEY: &[u8] = b"vigo bundle signing key v1";

/// Paths of everything in a data dir.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data dir.
    pub root: PathBuf,
}

impl Paths {
    /// Paths inside `root`.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    fn pki(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(name)
    }
    /// Admin credentials folder handed to `vigocli --creds`.
    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("admin")
    }
    /// The founding peer's sealed keys, proposed at its first start and kept (sealed, so
    /// harmless) in case that start is cut short.
    pub fn founding_keys(&self) -> PathBuf {
        self.pki("keys.sealed")
    }
    fn node_id(&self) -> PathBuf {
        self.root.join("node-id")
    }
    /// Whether this data dir belongs to a peer: founded by `init` or joined.
    pub fn is_initialized(&self) -> bool {
        self.node_id().exists()
    }
}

/// A peer's own identity, from its data dir.
#[derive(Clone)]
pub struct PeerIdentity {
    /// Its Raft node id.
    pub node_id: u64,
    /// The CA certificate, PEM and DER.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// Its certificate chain (own certificate, then the CA), PEM.
    pub cert_pem: String,
    /// Its key, PKCS#8 PEM.
    pub key_pem: String,
    /// The seal key.
    pub seal_key: [u8; 32],
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl PeerIdentity {
    /// Reads the identity written by [`init`] or [`write_joined`].
    pub fn load(paths: &Paths) -> anyhow::Result<Self> {
        let node_id = read_string(&paths.node_id())?;
        let node_id =
            node_id.trim().parse().with_context(|| format!("{} is not a node id", paths.node_id().display()))?;
        let ca_pem = read_string(&paths.pki("ca.crt"))?;
        let ca_der = pem::parse(&ca_pem).context("ca.crt is not PEM")?.into_contents();
        let seal_key = hex::decode(read_string(&paths.pki("seal.key"))?.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .with_context(|| format!("{} is not a 32-byte hex key", paths.pki("seal.key").display()))?;
        Ok(Self {
            node_id,
            ca_pem,
            ca_der,
            cert_pem: read_string(&paths.pki("server.crt"))?,
            key_pem: read_string(&paths.pki("server.key"))?,
            seal_key,
        })
    }

    /// The mTLS client configuration for talking to other peers.
    pub fn peer_client_tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let (chain, key) = self.chain_and_key()?;
        let ca = rustls::pki_types::CertificateDer::from(self.ca_der.clone());
        Ok(vigo_proto::tls::client_config(&ca, Some((chain, key)))?)
    }

    /// The TLS configuration of this peer's listener: its certificate, client certificates
    /// checked against the CA but not required (enrollment comes without one), and both ALPN
    /// protocols it serves, gRPC's `h2` and the held session's.
    pub fn server_tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
        let (chain, key) = self.chain_and_key()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let clients =
            rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key))?;
        config.alpn_protocols = vec![b"h2".to_vec(), vigo_proto::session::ALPN.to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    fn chain_and_key(
        &self,
    ) -> anyhow::Result<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivatePkcs8KeyDer<'static>)>
    {
        let chain = pem::parse_many(&self.cert_pem)?
            .into_iter()
            .map(|p| rustls::pki_types::CertificateDer::from(p.into_contents()))
            .collect();
        let key = pem::parse(&self.key_pem).context("server.key is not PEM")?.into_contents();
        Ok((chain, rustls::pki_types::PrivatePkcs8KeyDer::from(key)))
    }
}

/// Loaded key material of a running server.
pub struct Pki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    /// This peer's identity.
    pub identity: PeerIdentity,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The server's certificate, PEM.
    pub server_cert_pem: String,
    /// The server's key, PEM.
    pub server_key_pem: String,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Signs bundles.
    pub bundle_key: BundleSigningKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca_sha256", &hex::encode(self.ca_sha256())).finish_non_exhaustive()
    }
}

/// The CA's parameters. Rebuilt identically at every start, so the issuer name and key
/// identifier in new certificates match the CA certificate written at `init`.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Vigo cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
    params
}

fn leaf_params(
    common_name: &str,
    sans: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
    Ok(params)
}

/// A peer's certificate: it serves (under [`SERVER_NAME`]) and is a client of the other peers.
fn peer_params(node_id: u64) -> anyhow::Result<CertificateParams> {
    leaf_params(
        &format!("{PEER_CN_PREFIX}{node_id}"),
        vec![SERVER_NAME.to_string(), "localhost".to_string()],
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    )
}

fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Seals `plaintext` under `seal_key`: a random nonce, then the AES-256-GCM ciphertext and tag.
fn seal(seal_key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, seal_key).expect("a 32-byte key"));
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
        .expect("AES-GCM seals any length we hand it");
    [nonce.as_slice(), &sealed].concat()
}

/// Opens what [`seal`] made; `what` names it in the error.
fn unseal(seal_key: &[u8; 32], aad: &[u8], sealed: &[u8], what: &str) -> anyhow::Result<Vec<u8>> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, seal_key).expect("a 32-byte key"));
    if sealed.len() < NONCE_LEN {
        bail!("the sealed {what} on the log is truncated");
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("length checked");
    let mut buf = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| anyhow::anyhow!("the sealed {what} on the log does not open with this peer's seal key"))?;
    Ok(plain.to_vec())
}

/// Founds a cluster in `paths`: the CA, the bundle key and the seal key; this peer's identity
/// as node 1; admin credentials; and the sealed keys (`pki/keys.sealed`) for the first start to
/// put on the log.
pub fn init(paths: &Paths) -> anyhow::Result<()> {
    init_with(paths, None)
}

/// The keys every bolt of a federation shares, as a new bolt is given them.
pub struct FederationKeys {
    /// The CA certificate, DER (kept as it is: every token pins it).
    pub ca_cert_der: Vec<u8>,
    /// The CA key, PKCS#8 DER.
    pub ca_key_der: Vec<u8>,
    /// The bundle-signing key's Ed25519 seed.
    pub bundle_key_seed: [u8; 32],
}

/// Founds a new cluster, as [`init`] does, as a bolt of an existing federation: with the
/// federation's CA and bundle-signing key instead of new ones (its own seal key and peer and
/// admin identities all the same), so envoys, bundles and peers of every bolt trust each other.
pub fn init_federated(paths: &Paths, keys: &FederationKeys) -> anyhow::Result<()> {
    init_with(paths, Some(keys))
}

impl Pki {
    /// The keys this bolt shares with a bolt it federates.
    pub fn federation_keys(&self) -> FederationKeys {
        FederationKeys {
            ca_cert_der: self.ca_der.clone(),
            ca_key_der: self.ca_key.serialize_der(),
            bundle_key_seed: self.bundle_key.to_bytes(),
        }
    }
}

fn init_with(paths: &Paths, federation: Option<&FederationKeys>) -> anyhow::Result<()> {
    if paths.is_initialized() {
        bail!("{} is already initialized", paths.root.display());
    }
    fs::create_dir_all(paths.root.join("pki"))?;
    fs::create_dir_all(paths.admin_dir())?;
    let ca_params = ca_params();
    let (ca_key, ca_der) = match federation {
        Some(keys) => {
            let key = KeyPair::try_from(keys.ca_key_der.as_slice()).context("the federation's CA key is not a key")?;
            (key, keys.ca_cert_der.clone())
        }
        None => {
            let key = KeyPair::generate_for(&PKCS_ED25519)?;
            let der = ca_params.self_signed(&key)?.der().to_vec();
            (key, der)
        }
    };
    let ca_pem = to_pem("CERTIFICATE", &ca_der);
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let server_cert = peer_params(1)?.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let admin_id = hex::encode(&Sha256::digest(admin_key.public_key_raw())[..8]);
    let admin_params =
        leaf_params(&format!("{ADMIN_CN_PREFIX}{admin_id}"), Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])?;
    let admin_cert = admin_params.signed_by(&admin_key, &issuer)?;

    let bundle_seed = match federation {
        Some(keys) => keys.bundle_key_seed,
        None => {
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            seed
        }
    };
    let mut seal_key = [0u8; 32];
    rand::rng().fill_bytes(&mut seal_key);
    let sealed = ClusterKeysSealed {
        ca_cert_der: ca_der.clone(),
        sealed_ca_key: seal(&seal_key, AAD_CA_KEY, &ca_key.serialize_der()),
        sealed_bundle_key: seal(&seal_key, AAD_BUNDLE_KEY, &ed25519_pkcs8(&bundle_seed)),
        seal_key_sha256: Sha256::digest(seal_key).to_vec(),
    };

    write_public(&paths.pki("ca.crt"), ca_pem.as_bytes())?;
    write_public(&paths.pki("server.crt"), format!("{}{ca_pem}", server_cert.pem()).as_bytes())?;
    write_secret(&paths.pki("server.key"), &server_key.serialize_pem())?;
    write_secret(&paths.pki("seal.key"), &hex::encode(seal_key))?;
    write_public(&paths.founding_keys(), &prost::Message::encode_to_vec(&sealed))?;
    write_public(&paths.admin_dir().join("ca.crt"), ca_pem.as_bytes())?;
    write_public(&paths.admin_dir().join("admin.crt"), admin_cert.pem().as_bytes())?;
    write_secret(&paths.admin_dir().join("admin.key"), &admin_key.serialize_pem())?;
    // Last: its presence marks the dir initialized.
    write_public(&paths.node_id(), b"1\n")?;
    Ok(())
}

/// What a joining peer is given, as [`write_joined`] records it.
pub struct Joined<'a> {
    /// Its node id.
    pub node_id: u64,
    /// The CA certificate, DER.
    pub ca_der: &'a [u8],
    /// Its certificate, DER.
    pub cert_der: &'a [u8],
    /// The Ed25519 seed of its key.
    pub key_seed: &'a [u8; 32],
    /// The seal key.
    pub seal_key: &'a [u8; 32],
}

/// Records a joined peer's identity in an empty data dir.
pub fn write_joined(paths: &Paths, joined: &Joined<'_>) -> anyhow::Result<()> {
    if paths.is_initialized() {
        bail!("{} is already initialized", paths.root.display());
    }
    fs::create_dir_all(paths.root.join("pki"))?;
    let ca_pem = to_pem("CERTIFICATE", joined.ca_der);
    write_public(&paths.pki("ca.crt"), ca_pem.as_bytes())?;
    write_public(&paths.pki("server.crt"), format!("{}{ca_pem}", to_pem("CERTIFICATE", joined.cert_der)).as_bytes())?;
    write_secret(&paths.pki("server.key"), &to_pem("PRIVATE KEY", &ed25519_pkcs8(joined.key_seed)))?;
    write_secret(&paths.pki("seal.key"), &hex::encode(joined.seal_key))?;
    write_public(&paths.node_id(), format!("{}\n", joined.node_id).as_bytes())?;
    Ok(())
}

/// The founding peer's sealed keys, if it still has them to propose.
pub fn founding_keys(paths: &Paths) -> anyhow::Result<Option<ClusterKeysSealed>> {
    match fs::read(paths.founding_keys()) {
        Ok(bytes) => Ok(Some(prost::Message::decode(bytes.as_slice()).context("pki/keys.sealed is damaged")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", paths.founding_keys().display())),
    }
}

fn read_string(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Pki {
    /// Unseals the cluster keys on the log with this peer's seal key.
    pub fn unseal(identity: PeerIdentity, keys: &SealedKeys) -> anyhow::Result<Self> {
        if <[u8; 32]>::from(Sha256::digest(identity.seal_key)) != keys.seal_key_sha256 {
            bail!("pki/seal.key is not the key the cluster keys on the log are sealed with");
        }
        if keys.ca_cert_der != identity.ca_der {
            bail!("pki/ca.crt is not the CA certificate on the log");
        }
        let ca_key = unseal(&identity.seal_key, AAD_CA_KEY, &keys.sealed_ca_key, "CA key")?;
        let ca_key = KeyPair::try_from(ca_key.as_slice()).context("the unsealed CA key is not a key")?;
        let bundle_key = unseal(&identity.seal_key, AAD_BUNDLE_KEY, &keys.sealed_bundle_key, "bundle key")?;
        let seed = ed25519_seed(&bundle_key).context("the unsealed bundle key is not an Ed25519 key")?;
        Ok(Self {
            ca_key,
            ca_params: ca_params(),
            ca_der: identity.ca_der.clone(),
            server_cert_pem: identity.cert_pem.clone(),
            server_key_pem: identity.key_pem.clone(),
            ca_pem: identity.ca_pem.clone(),
            bundle_key: BundleSigningKey::from_bytes(&seed),
            identity,
        })
    }

    /// SHA-256 of the CA certificate: the pin carried in enrollment and join tokens.
    pub fn ca_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.ca_der).into()
    }

    /// Issues an envoy's client certificate for its raw Ed25519 public key.
    /// Its hostname is the certificate's one DNS name, so any bolt of the federation can take
    /// the envoy in from its certificate alone when its own bolt is gone ([`envoy_of_cert`]).
    pub fn issue_envoy_cert(&self, envoy_id: &str, hostname: &str, pubkey: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let params = leaf_params(
            &format!("{ENVOY_CN_PREFIX}{envoy_id}"),
            vec![hostname.to_string()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        self.issue(params, pubkey)
    }

    /// Issues a peer's certificate (`vigo-peer:<id>`) for its raw Ed25519 public key.
    pub fn issue_peer_cert(&self, node_id: u64, pubkey: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        self.issue(peer_params(node_id)?, pubkey)
    }

    fn issue(&self, params: CertificateParams, pubkey: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&RawEd25519(*pubkey), &issuer)?;
        Ok(cert.der().to_vec())
    }
}

/// A bare Ed25519 public key, as envoys send it.
struct RawEd25519([u8; 32]);

impl PublicKeyData for RawEd25519 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// Common-name prefix of an envoy's certificate (`envoy:<id>`).
pub const ENVOY_CN_PREFIX: &str = "envoy:";

/// What an envoy's certificate says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedEnvoy {
    /// Its id.
    pub envoy_id: String,
    /// The hostname it enrolled with.
    pub hostname: String,
    /// Its raw Ed25519 key.
    pub pubkey: [u8; 32],
}

/// The envoy a DER certificate was issued to, if it is an envoy's certificate that names its
/// hostname (certificates issued before they did name none).
pub fn envoy_of_cert(cert_der: &[u8]) -> Option<CertifiedEnvoy> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let envoy_id = cn.strip_prefix(ENVOY_CN_PREFIX)?.to_string();
    let hostname = cert.subject_alternative_name().ok()??.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    })?;
    let pubkey = cert.public_key().subject_public_key.data.as_ref().try_into().ok()?;
    Some(CertifiedEnvoy { envoy_id, hostname, pubkey })
}

/// The common name of a DER certificate, if it has one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_keys(paths: &Paths) -> SealedKeys {
        let k = founding_keys(paths).unwrap().expect("init writes the founding keys");
        SealedKeys {
            ca_cert_der: k.ca_cert_der,
            sealed_ca_key: k.sealed_ca_key,
            sealed_bundle_key: k.sealed_bundle_key,
            seal_key_sha256: k.seal_key_sha256.try_into().unwrap(),
            index: 1,
        }
    }

    #[test]
    fn init_then_unseal_issues_verifiable_certs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        init(&paths).unwrap();
        assert!(init(&paths).is_err(), "init refuses an initialized dir");
        let identity = PeerIdentity::load(&paths).unwrap();
        assert_eq!(identity.node_id, 1);
        assert!(identity.peer_client_tls().is_ok());
        let pki = Pki::unseal(identity, &sealed_keys(&paths)).unwrap();
        let cert = pki.issue_envoy_cert("e-1", "web-1.eu", &[3; 32]).unwrap();
        assert_eq!(common_name(&cert).as_deref(), Some("envoy:e-1"));
        let certified = CertifiedEnvoy { envoy_id: "e-1".into(), hostname: "web-1.eu".into(), pubkey: [3; 32] };
        assert_eq!(envoy_of_cert(&cert), Some(certified), "an envoy's certificate names its id, host and key");
        assert_eq!(envoy_of_cert(&pki.issue_peer_cert(3, &[4; 32]).unwrap()), None, "a peer's is no envoy's");
        let peer = pki.issue_peer_cert(2, &[4; 32]).unwrap();
        assert_eq!(common_name(&peer).as_deref(), Some("vigo-peer:2"));
        let admin = fs::read_to_string(paths.admin_dir().join("admin.crt")).unwrap();
        let admin_der = pem::parse(admin).unwrap().into_contents();
        assert!(common_name(&admin_der).unwrap().starts_with(ADMIN_CN_PREFIX));
        let server = pem::parse_many(&pki.server_cert_pem).unwrap();
        assert_eq!(common_name(server[0].contents()).as_deref(), Some("vigo-peer:1"));
    }

    #[test]
    fn nothing_on_the_log_opens_without_the_seal_key() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        init(&paths).unwrap();
        let keys = sealed_keys(&paths);

        let mut other = PeerIdentity::load(&paths).unwrap();
        other.seal_key[0] ^= 1;
        let err = Pki::unseal(other.clone(), &keys).unwrap_err().to_string();
        assert_eq!(err, "pki/seal.key is not the key the cluster keys on the log are sealed with");
        // Even with the fingerprint matched, a wrong key opens nothing.
        let forged = SealedKeys { seal_key_sha256: Sha256::digest(other.seal_key).into(), ..keys.clone() };
        let err = Pki::unseal(other, &forged).unwrap_err().to_string();
        assert_eq!(err, "the sealed CA key on the log does not open with this peer's seal key");
        // The two sealed keys cannot stand in for each other.
        let swapped = SealedKeys { sealed_ca_key: keys.sealed_bundle_key.clone(), ..keys };
        let err = Pki::unseal(PeerIdentity::load(&paths).unwrap(), &swapped).unwrap_err().to_string();
        assert_eq!(err, "the sealed CA key on the log does not open with this peer's seal key");
    }

    #[test]
    fn a_joined_peer_reads_back_what_it_was_given() {
        let founder = tempfile::tempdir().unwrap();
        let paths = Paths::new(founder.path());
        init(&paths).unwrap();
        let identity = PeerIdentity::load(&paths).unwrap();
        let pki = Pki::unseal(identity.clone(), &sealed_keys(&paths)).unwrap();
        let seed = [9u8; 32];
        let pubkey = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let cert = pki.issue_peer_cert(2, &pubkey).unwrap();
        let joiner = tempfile::tempdir().unwrap();
        let joined = Paths::new(joiner.path());
        let given =
            Joined { node_id: 2, ca_der: &pki.ca_der, cert_der: &cert, key_seed: &seed, seal_key: &identity.seal_key };
        write_joined(&joined, &given).unwrap();
        assert!(write_joined(&joined, &given).is_err(), "a joined dir is not overwritten");
        let back = PeerIdentity::load(&joined).unwrap();
        assert_eq!(back.node_id, 2);
        assert!(back.peer_client_tls().is_ok());
        let two = Pki::unseal(back, &sealed_keys(&paths)).unwrap();
        assert_eq!(two.bundle_key.to_bytes(), pki.bundle_key.to_bytes(), "every peer signs with the cluster's key");
    }
}
