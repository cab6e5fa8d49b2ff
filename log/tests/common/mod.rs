//! Helpers shared by the log's integration tests: proposals for a few kinds of event.

#![allow(dead_code)]

use vigo_proto::events::{Event, EventProposal, StackPublished, TokenCreated, event::Kind};

/// A proposal creating a single-use token whose hash is `[n; 32]`.
pub fn token(n: u8) -> EventProposal {
    proposal(Kind::TokenCreated(TokenCreated {
        token_sha256: vec![n; 32],
        uses: 1,
        expires_at_ms: 0,
        join: false,
        federate: false,
    }))
}

/// A proposal publishing stack `version`.
pub fn stack(version: u64) -> EventProposal {
    proposal(Kind::StackPublished(StackPublished {
        version,
        archive: vec![0x1f, 0x8b, version as u8],
        sha256: vec![version as u8; 32],
        author: "admin:test".into(),
        message: format!("publish {version}"),
        synced_from: String::new(),
    }))
}

fn proposal(kind: Kind) -> EventProposal {
    EventProposal {
        proposed_at_ms: 1_700_000_000_000,
        actor: "admin:test".into(),
        event: Some(Event { kind: Some(kind) }),
    }
}
