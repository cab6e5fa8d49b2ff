//! Enrollment tokens: `vgt1_<secret>_<ca pin>`, both hex.
//!
//! The secret proves the operator allowed the enrollment (the server stores only its
//! SHA-256); the pin is the SHA-256 of the cluster CA certificate, so `envoy enroll` can
//! authenticate the server from the token alone, before it trusts anything else.

use sha2::{Digest, Sha256};

const PREFIX: &str = "vgt1";

/// A parsed enrollment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Random secret.
    pub secret: [u8; 16],
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_pin: [u8; 32],
}

/// A string that is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed enrollment token (expected vgt1_<32 hex>_<64 hex>)")]
pub struct MalformedToken;

impl Token {
    /// Parses the printed form.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let mut parts = text.trim().split('_');
        let (Some(PREFIX), Some(secret), Some(pin), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let secret = hex::decode(secret).ok().and_then(|s| s.try_into().ok()).ok_or(MalformedToken)?;
        let ca_pin = hex::decode(pin).ok().and_then(|s| s.try_into().ok()).ok_or(MalformedToken)?;
        Ok(Self { secret, ca_pin })
    }

    /// SHA-256 of the secret: all the server stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}_{}_{}", hex::encode(self.secret), hex::encode(self.ca_pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Token { secret: [1; 16], ca_pin: [2; 32] };
        assert_eq!(Token::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(Token::parse("vgt1_00_11"), Err(MalformedToken));
        assert_eq!(Token::parse("nonsense"), Err(MalformedToken));
        assert_eq!(Token::parse(&format!("{t}_extra")), Err(MalformedToken));
    }
}
