//! `vigocli audit log`: reads the whole history from index 1 and verifies its hash chain on
//! this side, so the answer does not rest on trusting the server.

use anyhow::bail;
use serde_json::{Value, json};
use tonic::transport::Channel;
use vigo_proto::admin::ReadHistoryRequest;
use vigo_proto::admin::admin_client::AdminClient;
use vigo_proto::chain::{GENESIS_HASH, to_hash, verify_next};
use vigo_proto::events::EventEnvelope;
use vigo_proto::events::event::Kind;

/// Name and details of an event, for display.
fn describe(env: &EventEnvelope) -> (&'static str, Value) {
    match env.event.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(Kind::TokenCreated(t)) => (
            "TokenCreated",
            json!({ "token_sha256": hex::encode(&t.token_sha256), "uses": t.uses, "expires_at_ms": t.expires_at_ms,
                    "join": t.join }),
        ),
        Some(Kind::EnvoyEnrolled(e)) => (
            "EnvoyEnrolled",
            json!({ "envoy_id": e.envoy_id, "hostname": e.hostname, "pubkey": hex::encode(&e.pubkey),
                    "cert_sha256": hex::encode(&e.cert_sha256) }),
        ),
        Some(Kind::EnvoyRevoked(r)) => ("EnvoyRevoked", json!({ "envoy_id": r.envoy_id, "reason": r.reason })),
        Some(Kind::StackPublished(s)) => (
            "StackPublished",
            json!({ "version": s.version, "sha256": hex::encode(&s.sha256), "archive_bytes": s.archive.len(),
                    "author": s.author, "message": s.message,
                    "synced_from": (!s.synced_from.is_empty()).then_some(&s.synced_from) }),
        ),
        Some(Kind::ClusterKeysSealed(k)) => (
            "ClusterKeysSealed",
            json!({ "ca_cert_sha256": hex::encode(sha256(&k.ca_cert_der)),
                    "seal_key_sha256": hex::encode(&k.seal_key_sha256) }),
        ),
        Some(Kind::PeerAdmitted(p)) => (
            "PeerAdmitted",
            json!({ "node_id": p.node_id, "addr": p.addr, "cert_sha256": hex::encode(&p.cert_sha256),
                    "token_sha256": hex::encode(&p.token_sha256) }),
        ),
        Some(Kind::PeerRemoved(r)) => ("PeerRemoved", json!({ "node_id": r.node_id })),
        Some(Kind::ClusterRecovered(r)) => ("ClusterRecovered", json!({ "node_id": r.node_id, "lost": r.lost })),
        Some(Kind::BoltRegistered(b)) => (
            "BoltRegistered",
            json!({ "bolt": b.bolt, "addrs": b.addrs, "patterns": b.patterns, "stamp": stamp(b.stamp.as_ref()) }),
        ),
        Some(Kind::EnvoysReassigned(r)) => {
            ("EnvoysReassigned", json!({ "hostname": r.hostname, "to": r.to, "stamp": stamp(r.stamp.as_ref()) }))
        }
        Some(Kind::EnvoyHandedOff(h)) => ("EnvoyHandedOff", json!({ "envoy_id": h.envoy_id, "to": h.to })),
        Some(Kind::EnvoyAdopted(a)) => (
            "EnvoyAdopted",
            json!({ "envoy_id": a.envoy_id, "hostname": a.hostname, "pubkey": hex::encode(&a.pubkey),
                    "cert_sha256": hex::encode(&a.cert_sha256), "from": a.from }),
        ),
        Some(Kind::BoltFederated(f)) => {
            ("BoltFederated", json!({ "bolt": f.bolt, "token_sha256": hex::encode(&f.token_sha256) }))
        }
        Some(Kind::RosterMerged(m)) => {
            let r = m.roster.clone().unwrap_or_default();
            let bolts: Vec<&str> = r.bolts.iter().map(|b| b.bolt.as_str()).collect();
            (
                "RosterMerged",
                json!({ "from": m.from, "bolts": bolts, "reassigned": r.reassigned.len(), "drains": r.drains.len() }),
            )
        }
        Some(Kind::BoltDrained(d)) => {
            ("BoltDrained", json!({ "bolt": d.bolt, "to": d.to, "stamp": stamp(d.stamp.as_ref()) }))
        }
        None => ("Unknown", Value::Null),
    }
}

/// A roster stamp as `MS.COUNTER@BOLT`.
fn stamp(stamp: Option<&vigo_proto::events::RosterStamp>) -> Value {
    stamp.map_or(Value::Null, |s| Value::from(format!("{}.{}@{}", s.ms, s.counter, s.actor)))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Prints the verified history.
pub async fn log(client: &mut AdminClient<Channel>, linearizable: bool, json_out: bool) -> anyhow::Result<()> {
    let (mut index, mut hash) = (0u64, GENESIS_HASH);
    let mut rows = Vec::new();
    loop {
        let page = client
            .read_history(ReadHistoryRequest { from_index: index + 1, limit: 0, linearizable })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        if page.events.is_empty() {
            if index < page.last_index {
                bail!("history ends at index {index} but the server reports {}", page.last_index);
            }
            break;
        }
        for env in page.events {
            if let Err(e) = verify_next(&hash, index, &env) {
                bail!("hash chain broken: {e}");
            }
            index = env.index;
            hash = to_hash(&env.hash);
            rows.push(env);
        }
    }
    if json_out {
        let events: Vec<Value> = rows
            .iter()
            .map(|env| {
                let (kind, details) = describe(env);
                json!({
                    "index": env.index,
                    "log_index": env.log_index,
                    "proposed_at_ms": env.proposed_at_ms,
                    "actor": env.actor,
                    "event": kind,
                    "details": details,
                    "prev_hash": hex::encode(&env.prev_hash),
                    "hash": hex::encode(&env.hash),
                })
            })
            .collect();
        println!("{}", json!({ "chain": "verified", "last_index": index, "events": events }));
    } else {
        for env in &rows {
            let (kind, details) = describe(env);
            println!("{:>6}  {}  {:<15} {:<28} {}", env.index, env.proposed_at_ms, kind, env.actor, details);
        }
        println!("{index} events, hash chain verified (head {})", hex::encode(&hash[..8]));
    }
    Ok(())
}
