//! TLS material and the mTLS client connector shared by `envoy` and `vigosrv`'s clients.
//!
//! Every server certificate carries the DNS name [`SERVER_NAME`], whatever address it listens
//! on, so clients verify the cluster CA's signature and that one name — addresses can change
//! (failover, NAT, loopback in tests) without reissuing certificates.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint, Uri};

/// The DNS name in every server certificate of a cluster.
pub const SERVER_NAME: &str = "vigosrv";

/// Prefix of a PKCS#8 v1 document holding a raw Ed25519 seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Errors of TLS set-up and connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        what: &'static str,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The address is not usable.
    #[error("bad server address {0:?}")]
    Address(String),
    /// Connecting failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server would not say which CA it belongs to.
    #[error("cannot fetch the cluster CA from {addr}: {reason}")]
    CaFetch {
        /// The server address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server's CA is not the one a token pins.
    #[error("server {0} presented a CA that does not match the token")]
    CaMismatch(String),
}

/// Fetches the cluster CA certificate (DER) from the server at `addr` and checks it against the
/// SHA-256 `pin` a token carries. The one call made before the server is trusted: its
/// certificate is not checked, the CA it hands over is, by the pin.
pub async fn fetch_pinned_ca(addr: &str, pin: &[u8; 32], timeout: Duration) -> Result<Vec<u8>, TlsError> {
    use sha2::Digest;
    let channel = connect(addr, ca_fetch_config()?, timeout).await?;
    let ca_der = crate::agent::agent_client::AgentClient::new(channel)
        .get_ca(crate::agent::GetCaRequest {})
        .await
        .map_err(|s| TlsError::CaFetch { addr: addr.to_string(), reason: s.message().to_string() })?
        .into_inner()
        .ca_cert_der;
    if sha2::Sha256::digest(&ca_der).as_slice() != pin {
        return Err(TlsError::CaMismatch(addr.to_string()));
    }
    Ok(ca_der)
}

/// PKCS#8 DER for an Ed25519 key given its 32-byte seed.
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// The 32-byte seed inside an Ed25519 PKCS#8 v1 document, if it is one.
pub fn ed25519_seed(pkcs8: &[u8]) -> Option<[u8; 32]> {
    let seed = pkcs8.strip_prefix(&ED25519_PKCS8_PREFIX[..])?;
    seed.try_into().ok()
}

/// Writes DER as PEM with the given label.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// All certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = pem::parse_many(&bytes)
        .map_err(|_| TlsError::Pem { path: path.display().to_string(), what: "not valid PEM" })?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.display().to_string(), what: "no certificate in file" });
    }
    Ok(certs)
}

/// The PKCS#8 private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    let key = pem::parse_many(&bytes)
        .map_err(|_| TlsError::Pem { path: path.display().to_string(), what: "not valid PEM" })?
        .into_iter()
        .find(|p| p.tag() == "PRIVATE KEY")
        .ok_or(TlsError::Pem { path: path.display().to_string(), what: "no PKCS#8 private key in file" })?;
    Ok(PrivatePkcs8KeyDer::from(key.into_contents()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `ca` and, for mTLS, presenting `identity`.
pub fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate. Used for exactly one call:
/// fetching the cluster CA before enrollment, whose fingerprint the caller then checks
/// against the one pinned in the enrollment token before trusting anything.
pub fn ca_fetch_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a gRPC channel to `addr` ("host:port") over TLS with `config`.
///
/// The connection is made eagerly so an unreachable server fails here, within `timeout`.
pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>, timeout: Duration) -> Result<Channel, TlsError> {
    connect_from(addr, None, config, timeout).await
}

/// [`connect`], with the local end bound to `source` when given: a load generator spreads its
/// connections over several loopback addresses so the ephemeral ports of one never run out.
pub async fn connect_from(
    addr: &str,
    source: Option<IpAddr>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let endpoint = endpoint(addr, timeout)?;
    let connecting = endpoint.connect_with_connector(connector(source, config));
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(TlsError::Connect { addr: addr.to_string(), reason: error_chain(&e) }),
        Err(_) => Err(TlsError::Connect { addr: addr.to_string(), reason: format!("timed out after {timeout:?}") }),
    }
}

/// A gRPC channel to `addr` over TLS with `config` that connects on first use and reconnects
/// after a failure by itself: what a peer keeps for each other peer, which may be down now and
/// back later.
pub fn connect_lazy(
    addr: &str,
    source: Option<IpAddr>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    Ok(endpoint(addr, timeout)?.connect_with_connector_lazy(connector(source, config)))
}

fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, TlsError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| TlsError::Address(addr.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout.max(Duration::from_secs(30)))
        .tcp_nodelay(true))
}

/// Opens TCP (from `source` when given) and TLS with `config`, naming the server [`SERVER_NAME`].
fn connector(
    source: Option<IpAddr>,
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, std::io::Error>>
             + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let tcp = tcp_connect(&authority, source).await?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}

/// [`SERVER_NAME`] as rustls takes it.
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("static name is valid")
}

/// A TCP connection to `authority` ("host:port"), from `source` when given, Nagle off.
pub(crate) async fn tcp_connect(authority: &str, source: Option<IpAddr>) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = match source {
        None => tokio::net::TcpStream::connect(authority).await?,
        Some(ip) => {
            let remote = tokio::net::lookup_host(authority)
                .await?
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| std::io::Error::other(format!("{authority} has no address like {ip}")))?;
            let socket = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(remote).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_round_trip() {
        let seed = [7u8; 32];
        assert_eq!(ed25519_seed(&ed25519_pkcs8(&seed)), Some(seed));
        assert_eq!(ed25519_seed(b"not a key"), None);
    }
}
