//! Micro-benchmarks named after what they measure. Run as `benches/README.md` says.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use vigo_proto::agent::CheckInRequest;
use vigo_proto::chain::{seal, to_hash};
use vigo_proto::events::{
    EnvoyEnrolled, Event, EventEnvelope, EventProposal, StackPublished, TokenCreated, event::Kind,
};
use vigo_state::{ControlState, FleetIndex, FleetStore, Scope, TraitStore};

fn proposal(kind: Kind, at: i64) -> EventProposal {
    EventProposal { proposed_at_ms: at, actor: "admin:bench".into(), event: Some(Event { kind: Some(kind) }) }
}

/// A history of `n` events: one token with enough uses, then enrollments, a publish every 100.
fn history(n: u64) -> Vec<EventEnvelope> {
    let mut out: Vec<EventEnvelope> = Vec::with_capacity(n as usize);
    let mut version = 0;
    for i in 1..=n {
        let kind = if i == 1 {
            Kind::TokenCreated(TokenCreated {
                token_sha256: vec![1; 32],
                uses: u32::MAX,
                expires_at_ms: 0,
                join: false,
                federate: false,
            })
        } else if i % 100 == 0 {
            version += 1;
            Kind::StackPublished(StackPublished {
                version,
                archive: vec![0; 4096],
                sha256: vec![2; 32],
                author: "admin:bench".into(),
                message: String::new(),
                synced_from: String::new(),
            })
        } else {
            Kind::EnvoyEnrolled(EnvoyEnrolled {
                envoy_id: format!("e-{i:016x}"),
                hostname: format!("host-{i}.example.com"),
                pubkey: vec![3; 32],
                token_sha256: vec![1; 32],
                cert_sha256: vec![4; 32],
            })
        };
        let prev = out.last().map_or([0; 32], |e| to_hash(&e.hash));
        out.push(seal(proposal(kind, i as i64), i, i + 1, prev));
    }
    out
}

fn signature(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut req = CheckInRequest { envoy_id: "e-0123456789abcdef".into(), counter: 42, ..Default::default() };
    req.traits_hash = vec![5; 32];
    req.bundle_fingerprint = vec![6; 32];
    let signed = vigo_proto::signing::check_in_bytes(&req);
    let signature = key.sign(&signed);
    let verifying = key.verifying_key();
    c.bench_function("signature/verify", |b| {
        b.iter(|| verifying.verify_strict(black_box(&vigo_proto::signing::check_in_bytes(&req)), &signature).unwrap())
    });
    // What caching the decompressed key per envoy saves on every check-in.
    let compressed = verifying.to_bytes();
    c.bench_function("signature/decompress_key", |b| {
        b.iter(|| ed25519_dalek::VerifyingKey::from_bytes(black_box(&compressed)).unwrap())
    });
}

fn fleet_index(c: &mut Criterion) {
    let fleet = FleetIndex::default();
    let ids: Vec<String> = (0..10_000).map(|i| format!("e-{i:016x}")).collect();
    let mut counter = 0u64;
    c.bench_function("fleet_index/mark_seen", |b| {
        b.iter(|| {
            counter += 1;
            let id = &ids[(counter % ids.len() as u64) as usize];
            fleet.accept(black_box(id), counter, 1).unwrap();
        })
    });
}

fn apply(c: &mut Criterion) {
    let events = history(10_000);
    let base = {
        let mut state = ControlState::default();
        for env in &events[..9_999] {
            state.apply(env);
        }
        state
    };
    let publish = seal(
        proposal(
            Kind::StackPublished(StackPublished {
                version: base.stack_version() + 1,
                archive: vec![0; 4096],
                sha256: vec![2; 32],
                author: "admin:bench".into(),
                message: String::new(),
                synced_from: String::new(),
            }),
            20_000,
        ),
        base.last_index() + 1,
        base.last_index() + 2,
        base.last_hash(),
    );
    c.bench_function("apply/stack_published", |b| {
        b.iter_batched(|| base.clone(), |mut state| state.apply(black_box(&publish)), criterion::BatchSize::SmallInput)
    });
    c.bench_function("replay/10k_events", |b| {
        b.iter(|| {
            let mut state = ControlState::default();
            for env in &events {
                state.apply(env);
            }
            black_box(state.last_index())
        })
    });
}

/// What a traits upload costs the server: parsing and interning one host's 150 KB inventory into
/// a store that already holds 1,000 other hosts (so most values are shared), then releasing it.
fn traits(c: &mut Criterion) {
    let store = TraitStore::default();
    for i in 0..1_000 {
        let (json, _) = vigo_benches::inventory::for_host(i, &format!("fleet-{i}"));
        store.intern_json(&json).unwrap();
    }
    let (json, _) = vigo_benches::inventory::for_host(5_000, "fleet-5000");
    c.bench_function("traits/intern_150k", |b| {
        b.iter(|| {
            let root = store.intern_json(black_box(&json)).unwrap();
            store.release(root);
        })
    });
    // What a traits upload adds to the query index: one host's 150 KB inventory replaced by
    // the next one's (one package upgraded), both already interned; done under its fleet shard's
    // lock on the check-in that carries the traits.
    let index = vigo_state::TraitIndex::default();
    let before = store.intern_json(&json).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    doc["packages"]["adduser"]["version"] = serde_json::json!("3.134+deb12u9");
    let after = store.intern_json(&doc.to_string()).unwrap();
    index.update(&store, "e-1", None, Some(before));
    c.bench_function("trait_index/update_150k", |b| {
        b.iter(|| {
            index.update(&store, "e-1", Some(before), Some(after));
            index.update(&store, "e-1", Some(after), Some(before));
        })
    });
}

/// What the fleet snapshot costs: writing 1,000 envoys that checked in (traits unchanged, so
/// records only) out of 1,000 hosts with 150 KB inventories, and reading those hosts back.
fn fleet_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let fleet = FleetIndex::default();
    let ids: Vec<String> = (0..1_000).map(|i| format!("e-{i:016x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (json, hash) = vigo_benches::inventory::for_host(i as u32, &format!("fleet-{i}"));
        fleet.accept(id, 1, 1).unwrap();
        fleet.record_check_in(id, &[6; 32], &hash, Some(fleet.trait_store().intern_json(&json).unwrap()));
    }
    let mut store = FleetStore::open(&path).unwrap();
    store.flush(&fleet, Scope::All).unwrap();
    let mut counter = 1;
    c.bench_function("fleet_store/flush_1k_check_ins", |b| {
        b.iter_batched(
            || {
                counter += 1;
                for id in &ids {
                    fleet.accept(id, counter, counter as i64).unwrap();
                }
            },
            |()| assert_eq!(store.flush(&fleet, Scope::All).unwrap().envoys, 1_000),
            criterion::BatchSize::PerIteration,
        )
    });
    let mut group = c.benchmark_group("fleet_store");
    group.sample_size(10);
    group.bench_function("load_1k_hosts", |b| {
        b.iter(|| {
            let fleet = FleetIndex::default();
            assert_eq!(FleetStore::open(&path).unwrap().load(&fleet).unwrap().with_traits, 1_000);
            fleet
        })
    });
    group.finish();
}

/// What reading a cold trait value costs: `traits.packages.adduser.version` of one of 1,000
/// hosts with 150 KB inventories, while the package list is in memory and once it is in the
/// fleet snapshot only (a compile whose template reaches into the package list; `envoys show`).
fn cold_traits(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(&dir.path().join("fleet.sqlite")).unwrap();
    store.load(&fleet).unwrap();
    let ids: Vec<String> = (0..1_000).map(|i| format!("e-{i:016x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (json, hash) = vigo_benches::inventory::for_host(i as u32, &format!("fleet-{i}"));
        fleet.accept(id, 1, 1).unwrap();
        fleet.record_check_in(id, &[6; 32], &hash, Some(fleet.trait_store().intern_json(&json).unwrap()));
    }
    let traits = fleet.trait_store();
    let roots: Vec<u32> = ids.iter().map(|id| fleet.get(id).unwrap().traits.unwrap()).collect();
    let version = |root: u32| {
        let package = traits.member(traits.member(root, "packages")?, "adduser")?;
        traits.member(package, "version")
    };
    let mut n = 0;
    let mut next_root = || {
        n = (n + 1) % roots.len();
        roots[n]
    };
    let hot = traits.stats();
    c.bench_function("traits/hot_member", |b| b.iter(|| version(black_box(next_root()))));
    c.bench_function("traits/hot_to_json", |b| b.iter(|| traits.to_json(black_box(next_root())).len()));
    store.flush(&fleet, Scope::All).unwrap();
    let cold = traits.stats();
    eprintln!(
        "1,000 hosts: {} KiB of trait values in memory with the package lists, {} KiB with {} of them cold",
        hot.heap_bytes / 1024,
        cold.heap_bytes / 1024,
        cold.cold
    );
    c.bench_function("traits/cold_member", |b| b.iter(|| version(black_box(next_root()))));
    c.bench_function("traits/cold_to_json", |b| b.iter(|| traits.to_json(black_box(next_root())).len()));
}

criterion_group!(benches, signature, fleet_index, apply, traits, fleet_store, cold_traits);
criterion_main!(benches);
