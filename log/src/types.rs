//! The openraft type configuration: what a log entry carries (`D`), what applying one answers
//! (`R`), and how nodes are named. The durable payload is protobuf (`EventProposal` bytes), so
//! old log entries stay readable after the event schema grows; openraft's own wrapper around it
//! (entry, vote, membership) is encoded with postcard.

use std::fmt;
use std::io::Cursor;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vigo_proto::events::{EventEnvelope, EventProposal, ProposalBatch};

openraft::declare_raft_types!(
    /// Vigo's Raft types: node ids are `u64`, nodes are known by their address.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::Runtime,
);

/// A Raft log entry as stored.
pub type Entry = openraft::Entry<TypeConfig>;
/// A Raft log id (term, leader, index).
pub type LogId = openraft::LogId<u64>;
/// Membership with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
/// openraft's storage error for this config.
pub type StorageError = openraft::StorageError<u64>;

/// The application payload of a Raft entry: a prost-encoded `ProposalBatch`, the proposals a
/// peer received at about the same time. One entry for many keeps openraft's per-entry work
/// (its core loop, replication, apply, the answer) from bounding how many writes commit per
/// second.
///
/// The empty payload (`Proposal::default()`) is a no-op that records no event. openraft can only
/// build a `D` through `Default` (its storage conformance suite does), and a batch always
/// encodes to at least one proposal, so no real payload is ever empty.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    #[serde(with = "raw_bytes")]
    bytes: Vec<u8>,
}

impl Proposal {
    /// Encodes `proposal` alone for the log.
    pub fn new(proposal: &EventProposal) -> Self {
        Self::batch(std::slice::from_ref(proposal))
    }

    /// Encodes `proposals` as one entry.
    pub fn batch(proposals: &[EventProposal]) -> Self {
        Self { bytes: ProposalBatch { proposals: proposals.to_vec() }.encode_to_vec() }
    }

    /// The encoded bytes, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this is the no-op payload.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Decodes the proposals, in order.
    pub fn decode(&self) -> Result<Vec<EventProposal>, prost::DecodeError> {
        Ok(ProposalBatch::decode(self.bytes.as_slice())?.proposals)
    }
}

// Proposals may carry a stack archive of megabytes: print the size, not the bytes.
impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.bytes.len())
    }
}

/// What applying one entry produced: what became of each of its proposals, in order; nothing
/// for blank, membership and no-op entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// One per proposal of the entry.
    pub events: Vec<AppliedEvent>,
}

/// What became of one proposal: its sealed envelope, or, for a proposal no longer valid when
/// it came to apply, why it was dropped (`refused`). `LogNode::propose` hands either back to
/// the proposer.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedEvent {
    /// The envelope as archived.
    #[serde(with = "envelope_bytes")]
    pub envelope: Option<EventEnvelope>,
    /// Why a committed proposal was dropped instead of sealed.
    pub refused: Option<String>,
}

impl fmt::Debug for AppliedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.envelope {
            Some(env) => write!(f, "AppliedEvent(index {}, hash {})", env.index, hex::encode(&env.hash)),
            None => match &self.refused {
                Some(why) => write!(f, "AppliedEvent(refused: {why})"),
                None => write!(f, "AppliedEvent(none)"),
            },
        }
    }
}

/// Serializes a byte vector as serde bytes: postcard writes a length and the raw bytes in one
/// copy, instead of visiting a sequence byte by byte (the default for `Vec<u8>`). Same wire
/// format as a `u8` sequence in postcard.
mod raw_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// `Option<EventEnvelope>` through serde as optional protobuf bytes: the envelope is a prost
/// type and has no serde impl of its own.
mod envelope_bytes {
    use serde::de::Error as _;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Raw(#[serde(with = "raw_bytes")] Vec<u8>);

    pub fn serialize<S: Serializer>(env: &Option<EventEnvelope>, s: S) -> Result<S::Ok, S::Error> {
        env.as_ref().map(|e| Raw(e.encode_to_vec())).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EventEnvelope>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|raw| EventEnvelope::decode(raw.0.as_slice()).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_proto::events::{Event, TokenCreated, event::Kind};

    fn proposal() -> EventProposal {
        EventProposal {
            proposed_at_ms: 5,
            actor: "admin:t".into(),
            event: Some(Event {
                kind: Some(Kind::TokenCreated(TokenCreated {
                    token_sha256: vec![1; 32],
                    uses: 1,
                    expires_at_ms: 0,
                    join: false,
                    federate: false,
                })),
            }),
        }
    }

    #[test]
    fn proposal_round_trips_through_postcard() {
        let p = Proposal::new(&proposal());
        let bytes = postcard::to_stdvec(&p).unwrap();
        // Length prefix plus the protobuf bytes, nothing per byte.
        assert_eq!(bytes.len(), p.as_bytes().len() + 1);
        let back: Proposal = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.decode().unwrap(), [proposal()]);
        let two = Proposal::batch(&[proposal(), EventProposal { actor: "admin:u".into(), ..proposal() }]);
        assert_eq!(two.decode().unwrap().iter().map(|p| p.actor.as_str()).collect::<Vec<_>>(), ["admin:t", "admin:u"]);
    }

    #[test]
    fn applied_event_round_trips_through_postcard() {
        let env = vigo_state::seal(proposal(), 1, 3, vigo_state::GENESIS_HASH);
        for applied in [
            AppliedEvent { envelope: Some(env), refused: None },
            AppliedEvent { envelope: None, refused: Some("stale".into()) },
            AppliedEvent::default(),
        ] {
            let bytes = postcard::to_stdvec(&applied).unwrap();
            let back: AppliedEvent = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, applied);
        }
    }
}
