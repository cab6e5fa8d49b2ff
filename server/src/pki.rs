//! The cluster's key material: the CA that signs server, admin and envoy certificates, the
//! server's own certificate, and the Ed25519 key that signs bundles.
//!
//! `init` runs once, on an empty data dir, and writes admin credentials to `DIR/admin/`.
//! Keys never leave the data dir except the admin key, which is the operator's to keep.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey as BundleSigningKey;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, PublicKeyData,
};
use sha2::{Digest, Sha256};
use vigo_proto::tls::{SERVER_NAME, ed25519_pkcs8, ed25519_seed, to_pem};

/// Common-name prefix of admin certificates; envoy certificates are issued as `envoy:<id>`
/// and can never carry it.
pub const ADMIN_CN_PREFIX: &str = "vigo-admin:";

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
    /// Whether `init` ran here.
    pub fn is_initialized(&self) -> bool {
        self.pki("ca.crt").exists()
    }
}

/// Loaded key material of a running server.
pub struct Pki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
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
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
    Ok(params)
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

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the CA, the server certificate, the bundle key and admin credentials.
pub fn init(paths: &Paths) -> anyhow::Result<()> {
    if paths.is_initialized() {
        bail!("{} is already initialized", paths.root.display());
    }
    fs::create_dir_all(paths.root.join("pki"))?;
    fs::create_dir_all(paths.admin_dir())?;
    let ca_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let ca_params = ca_params();
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let server_params = leaf_params(
        "vigosrv",
        vec![SERVER_NAME.to_string(), "localhost".to_string()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate_for(&PKCS_ED25519)?;
    let admin_id = hex::encode(&Sha256::digest(admin_key.public_key_raw())[..8]);
    let admin_params =
        leaf_params(&format!("{ADMIN_CN_PREFIX}{admin_id}"), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    let admin_cert = admin_params.signed_by(&admin_key, &issuer)?;

    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);

    write_public(&paths.pki("ca.crt"), &ca_cert.pem())?;
    write_secret(&paths.pki("ca.key"), &ca_key.serialize_pem())?;
    write_public(&paths.pki("server.crt"), &format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    write_secret(&paths.pki("server.key"), &server_key.serialize_pem())?;
    write_secret(&paths.pki("bundle.key"), &to_pem("PRIVATE KEY", &ed25519_pkcs8(&seed)))?;
    write_public(&paths.admin_dir().join("ca.crt"), &ca_cert.pem())?;
    write_public(&paths.admin_dir().join("admin.crt"), &admin_cert.pem())?;
    write_secret(&paths.admin_dir().join("admin.key"), &admin_key.serialize_pem())?;
    Ok(())
}

fn read_string(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Pki {
    /// Loads the key material written by [`init`].
    pub fn load(paths: &Paths) -> anyhow::Result<Self> {
        let ca_pem = read_string(&paths.pki("ca.crt"))?;
        let ca_key = KeyPair::from_pem(&read_string(&paths.pki("ca.key"))?).context("ca.key")?;
        let ca_der = pem::parse(&ca_pem).context("ca.crt is not PEM")?.into_contents();
        let bundle_pem = read_string(&paths.pki("bundle.key"))?;
        let bundle_der = pem::parse(&bundle_pem).context("bundle.key is not PEM")?.into_contents();
        let seed = ed25519_seed(&bundle_der).context("bundle.key is not an Ed25519 key")?;
        Ok(Self {
            ca_key,
            ca_params: ca_params(),
            ca_der,
            server_cert_pem: read_string(&paths.pki("server.crt"))?,
            server_key_pem: read_string(&paths.pki("server.key"))?,
            ca_pem,
            bundle_key: BundleSigningKey::from_bytes(&seed),
        })
    }

    /// SHA-256 of the CA certificate: the pin carried in enrollment tokens.
    pub fn ca_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.ca_der).into()
    }

    /// Issues an envoy's client certificate for its raw Ed25519 public key.
    pub fn issue_envoy_cert(&self, envoy_id: &str, pubkey: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let params = leaf_params(&format!("envoy:{envoy_id}"), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
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

/// The common name of a DER certificate, if it has one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_issues_verifiable_envoy_certs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        init(&paths).unwrap();
        assert!(init(&paths).is_err(), "init refuses an initialized dir");
        let pki = Pki::load(&paths).unwrap();
        let cert = pki.issue_envoy_cert("e-1", &[3; 32]).unwrap();
        assert_eq!(common_name(&cert).as_deref(), Some("envoy:e-1"));
        let admin = fs::read_to_string(paths.admin_dir().join("admin.crt")).unwrap();
        let admin_der = pem::parse(admin).unwrap().into_contents();
        assert!(common_name(&admin_der).unwrap().starts_with(ADMIN_CN_PREFIX));
    }
}
