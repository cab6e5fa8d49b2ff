//! Tokens: `vgt1_<secret>_<ca pin>` enrolls an envoy, `vgp1_<secret>_<ca pin>` joins a peer
//! to the cluster, `vgf1_<secret>_<ca pin>` federates a new bolt; secret and pin in hex.
//!
//! The secret proves the operator allowed the enrollment or the join (the server stores only
//! its SHA-256); the pin is the SHA-256 of the cluster CA certificate, so `envoy enroll` and a
//! joining `vigosrv` can authenticate the server from the token alone, before they trust
//! anything else.

use sha2::{Digest, Sha256};

/// What a token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An envoy, through `envoy enroll` (`vgt1_`).
    Enroll,
    /// A peer, through `vigosrv run --join` (`vgp1_`).
    Join,
    /// A new bolt of the federation, through `vigosrv run --bolt ID --federate` (`vgf1_`).
    Federate,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Enroll => "vgt1",
            TokenKind::Join => "vgp1",
            TokenKind::Federate => "vgf1",
        }
    }
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it admits.
    pub kind: TokenKind,
    /// Random secret.
    pub secret: [u8; 16],
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_pin: [u8; 32],
}

/// A string that is not a token of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {} token (expected {}_<32 hex>_<64 hex>)", .0.noun(), .0.prefix())]
pub struct MalformedToken(pub TokenKind);

impl TokenKind {
    fn noun(self) -> &'static str {
        match self {
            TokenKind::Enroll => "enrollment",
            TokenKind::Join => "join",
            TokenKind::Federate => "federation",
        }
    }
}

impl Token {
    /// Parses the printed form of a token of `kind`; a token of the other kind is refused.
    pub fn parse_as(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        let malformed = MalformedToken(kind);
        let mut parts = text.trim().split('_');
        let (Some(prefix), Some(secret), Some(pin), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed);
        };
        if prefix != kind.prefix() {
            return Err(malformed);
        }
        let secret = hex::decode(secret).ok().and_then(|s| s.try_into().ok()).ok_or(malformed.clone())?;
        let ca_pin = hex::decode(pin).ok().and_then(|s| s.try_into().ok()).ok_or(malformed)?;
        Ok(Self { kind, secret, ca_pin })
    }

    /// Parses an enrollment token.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        Self::parse_as(TokenKind::Enroll, text)
    }

    /// SHA-256 of the secret: all the server stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}_{}", self.kind.prefix(), hex::encode(self.secret), hex::encode(self.ca_pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Token { kind: TokenKind::Enroll, secret: [1; 16], ca_pin: [2; 32] };
        let bad = Err(MalformedToken(TokenKind::Enroll));
        assert_eq!(Token::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(Token::parse("vgt1_00_11"), bad);
        assert_eq!(Token::parse("nonsense"), bad);
        assert_eq!(Token::parse(&format!("{t}_extra")), bad);
        let join = Token { kind: TokenKind::Join, ..t.clone() };
        assert!(join.to_string().starts_with("vgp1_"));
        assert_eq!(Token::parse_as(TokenKind::Join, &join.to_string()), Ok(join.clone()));
        assert_eq!(Token::parse(&join.to_string()), bad, "a join token does not enroll");
        let err = Token::parse_as(TokenKind::Join, &t.to_string()).unwrap_err();
        assert_eq!(err.to_string(), "malformed join token (expected vgp1_<32 hex>_<64 hex>)");
    }
}
