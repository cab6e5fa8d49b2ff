//! The wire of the held session (see `SessionRequest` in `agent.proto`): TLS negotiated with
//! [`ALPN`] on the agent listener, then length-prefixed protobuf frames both ways.
//!
//! A frame is read into a buffer of exactly its size, decoded and dropped, so an idle session
//! holds no buffer of its own: what a held connection costs the server is its TLS state and
//! its task (benches/README.md).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tls::TlsError;

/// The ALPN protocol of a held session; gRPC connections negotiate `h2`.
pub const ALPN: &[u8] = b"vigo-session/1";

/// Bytes of a frame's length prefix.
const PREFIX_BYTES: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended inside a frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the reader takes.
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The bytes are not the message expected.
    #[error("a frame of {len} bytes does not decode as {what}: {reason}")]
    Decode {
        /// Its length.
        len: usize,
        /// The message expected.
        what: &'static str,
        /// What prost said.
        reason: String,
    },
}

/// Reads one frame holding an `M`; `None` when the other side closed between frames.
pub async fn read_frame<M: Message + Default>(
    reader: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<M>, FrameError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    match reader.read_exact(&mut prefix[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    reader.read_exact(&mut prefix[1..]).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    let what = std::any::type_name::<M>().rsplit("::").next().unwrap_or("a message");
    M::decode(body.as_slice()).map(Some).map_err(|e| FrameError::Decode { len, what, reason: e.to_string() })
}

/// `message` as one frame: its length, then its bytes.
pub fn encode_frame(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(PREFIX_BYTES + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).expect("a Vec grows as needed");
    frame
}

/// Writes `message` as one frame and flushes it.
pub async fn write_frame(writer: &mut (impl AsyncWrite + Unpin), message: &impl Message) -> std::io::Result<()> {
    writer.write_all(&encode_frame(message)).await?;
    writer.flush().await
}

/// A copy of `config` that negotiates [`ALPN`] instead of `h2`.
pub fn client_config(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

/// A session connection to `addr` ("host:port") from `source` when given, with `config` from
/// [`client_config`]. Fails when the server does not hold sessions.
pub async fn connect(
    addr: &str,
    source: Option<IpAddr>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TlsError> {
    let failed = |reason: String| TlsError::Connect { addr: addr.to_string(), reason };
    let connecting = async {
        let tcp = crate::tls::tcp_connect(addr, source).await?;
        tokio_rustls::TlsConnector::from(config).connect(crate::tls::server_name(), tcp).await
    };
    let tls = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(failed(crate::tls::error_chain(&e))),
        Err(_) => return Err(failed(format!("timed out after {timeout:?}"))),
    };
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(failed("the server does not hold sessions (no vigo-session/1 in ALPN)".to_string()));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CheckInRequest, SessionRequest, session_request};

    fn check_in(envoy_id: &str) -> SessionRequest {
        let req = CheckInRequest { envoy_id: envoy_id.to_string(), counter: 7, ..Default::default() };
        SessionRequest { kind: Some(session_request::Kind::CheckIn(req)) }
    }

    #[tokio::test]
    async fn frames_round_trip_and_a_close_between_frames_is_the_end() {
        let mut wire = Vec::new();
        wire.extend(encode_frame(&check_in("e-1")));
        wire.extend(encode_frame(&check_in("e-2")));
        let mut reader = wire.as_slice();
        let first: SessionRequest = read_frame(&mut reader, 1024).await.unwrap().unwrap();
        let second: SessionRequest = read_frame(&mut reader, 1024).await.unwrap().unwrap();
        assert_eq!((first, second), (check_in("e-1"), check_in("e-2")));
        assert!(read_frame::<SessionRequest>(&mut reader, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let mut wire = (u32::MAX).to_be_bytes().to_vec();
        wire.extend([0u8; 16]);
        let e = read_frame::<SessionRequest>(&mut wire.as_slice(), 1024).await.unwrap_err();
        assert_eq!(e.to_string(), "a frame of 4294967295 bytes is over the limit of 1024 bytes");
    }

    #[tokio::test]
    async fn a_frame_cut_short_or_not_decoding_says_so() {
        let frame = encode_frame(&check_in("e-1"));
        let cut = &frame[..frame.len() - 1];
        assert!(matches!(read_frame::<SessionRequest>(&mut &cut[..], 1024).await, Err(FrameError::Io(_))));
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff]);
        let e = read_frame::<SessionRequest>(&mut garbage.as_slice(), 1024).await.unwrap_err();
        assert!(e.to_string().starts_with("a frame of 3 bytes does not decode as SessionRequest: "), "{e}");
    }
}
