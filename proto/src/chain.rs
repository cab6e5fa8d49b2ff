//! The hash chain (invariant I-4): every event envelope carries the SHA-256 of its
//! predecessor and its own SHA-256, computed over its protobuf encoding with the `hash`
//! field left empty. Any copy of the history can be verified from index 1 without trusting
//! the peer it came from.

use crate::events::{EventEnvelope, EventProposal};
use prost::Message;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Why an envelope does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The index is not the predecessor's plus one.
    #[error("I-4: event index {found} does not follow index {prev}")]
    Gap {
        /// Index of the predecessor.
        prev: u64,
        /// Index found.
        found: u64,
    },
    /// `prev_hash` is not the predecessor's hash.
    #[error("I-4: event {index} does not link to its predecessor (prev_hash mismatch)")]
    BrokenLink {
        /// Index of the offending event.
        index: u64,
    },
    /// The stored hash is not the hash of the envelope's contents.
    #[error("I-4: event {index} was altered (hash mismatch)")]
    Altered {
        /// Index of the offending event.
        index: u64,
    },
}

/// SHA-256 of `env` encoded with `hash` empty.
pub fn envelope_hash(env: &EventEnvelope) -> [u8; 32] {
    let mut unhashed = env.clone();
    unhashed.hash.clear();
    Sha256::digest(unhashed.encode_to_vec()).into()
}

/// Turns a proposal into the envelope that follows `prev_hash` at `index`.
pub fn seal(proposal: EventProposal, index: u64, log_index: u64, prev_hash: [u8; 32]) -> EventEnvelope {
    let mut env = EventEnvelope {
        index,
        log_index,
        proposed_at_ms: proposal.proposed_at_ms,
        actor: proposal.actor,
        prev_hash: prev_hash.to_vec(),
        hash: Vec::new(),
        event: proposal.event,
    };
    env.hash = envelope_hash(&env).to_vec();
    env
}

/// Checks that `env` directly follows the event `(prev_index, prev_hash)`.
pub fn verify_next(prev_hash: &[u8; 32], prev_index: u64, env: &EventEnvelope) -> Result<(), ChainError> {
    if env.index != prev_index + 1 {
        return Err(ChainError::Gap { prev: prev_index, found: env.index });
    }
    if env.prev_hash.as_slice() != prev_hash.as_slice() {
        return Err(ChainError::BrokenLink { index: env.index });
    }
    if env.hash.as_slice() != envelope_hash(env).as_slice() {
        return Err(ChainError::Altered { index: env.index });
    }
    Ok(())
}

/// Verifies a whole history from index 1 and returns the last `(index, hash)`.
pub fn verify_history<'a>(
    envelopes: impl IntoIterator<Item = &'a EventEnvelope>,
) -> Result<(u64, [u8; 32]), ChainError> {
    let (mut index, mut hash) = (0, GENESIS_HASH);
    for env in envelopes {
        verify_next(&hash, index, env)?;
        index = env.index;
        hash = to_hash(&env.hash);
    }
    Ok((index, hash))
}

/// Copies a 32-byte hash out of a protobuf `bytes` field (zeros if malformed; callers verify first).
pub fn to_hash(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, TokenCreated, event::Kind};

    fn proposal(n: u8) -> EventProposal {
        EventProposal {
            proposed_at_ms: 1_000 + i64::from(n),
            actor: "admin:test".into(),
            event: Some(Event {
                kind: Some(Kind::TokenCreated(TokenCreated {
                    token_sha256: vec![n; 32],
                    uses: 1,
                    expires_at_ms: 0,
                    join: false,
                    federate: false,
                })),
            }),
        }
    }

    fn chain(n: u8) -> Vec<EventEnvelope> {
        let mut out: Vec<EventEnvelope> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map(|e| to_hash(&e.hash)).unwrap_or(GENESIS_HASH);
            out.push(seal(proposal(i), u64::from(i), u64::from(i) + 1, prev));
        }
        out
    }

    #[test]
    fn i4_sealed_history_verifies() {
        let history = chain(5);
        assert_eq!(verify_history(&history).unwrap().0, 5);
    }

    #[test]
    fn i4_altered_event_is_named() {
        let mut history = chain(5);
        history[2].actor = "admin:someone-else".into();
        assert_eq!(verify_history(&history), Err(ChainError::Altered { index: 3 }));
    }

    #[test]
    fn i4_resealed_event_breaks_the_next_link() {
        let mut history = chain(5);
        history[2].actor = "admin:someone-else".into();
        history[2].hash = envelope_hash(&history[2]).to_vec();
        assert_eq!(verify_history(&history), Err(ChainError::BrokenLink { index: 4 }));
    }

    #[test]
    fn i4_gap_is_named() {
        let mut history = chain(5);
        history.remove(1);
        assert_eq!(verify_history(&history), Err(ChainError::Gap { prev: 1, found: 3 }));
    }
}
