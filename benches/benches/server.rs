//! Benchmarks of vigosrv's check-in handler and stack compiler, in process: what one check-in
//! costs the server past TLS and HTTP/2 (those are in fakefleet's end-to-end figures).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use vigo_proto::admin::Compliance;
use vigo_proto::agent::CheckInRequest;
use vigo_proto::agent::check_in_response::Reply;
use vigo_proto::chain::seal;
use vigo_proto::events::{EnvoyEnrolled, Event, EventProposal, StackPublished, TokenCreated, event::Kind};
use vigo_server::admission::{QueueDelay, UploadBudget};
use vigo_server::bundles::BundleCache;
use vigo_server::check_in::{CheckInContext, check_in};
use vigo_server::query::{Query, StoreView, Subject};
use vigo_server::stack::Stack;
use vigo_server::stack::traits::Traits;
use vigo_state::{ControlState, FleetIndex, HeldTraits};

const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stack");
const CERT_SHA256: [u8; 32] = [4; 32];

/// The example stack's files, as `vigocli config publish` would pack them.
fn stack_files() -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new(STACK), Path::new(STACK), &mut out);
    out
}

fn archive(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A control state with one token, one enrolled envoy and the example stack published.
fn control(envoy_key: &SigningKey) -> ControlState {
    control_of(envoy_key, 0)
}

/// The same with `others` more envoys enrolled (keys never used).
fn control_of(envoy_key: &SigningKey, others: u32) -> ControlState {
    let archive = archive(&stack_files());
    let enrolled = |envoy_id: String, hostname: String, pubkey: Vec<u8>| {
        Kind::EnvoyEnrolled(EnvoyEnrolled {
            envoy_id,
            hostname,
            pubkey,
            token_sha256: vec![1; 32],
            cert_sha256: CERT_SHA256.to_vec(),
        })
    };
    let mut kinds = vec![
        Kind::TokenCreated(TokenCreated {
            token_sha256: vec![1; 32],
            uses: others + 1,
            expires_at_ms: 0,
            join: false,
            federate: false,
        }),
        enrolled(
            "e-0000000000000001".into(),
            "web-1.example.com".into(),
            envoy_key.verifying_key().to_bytes().to_vec(),
        ),
    ];
    kinds.extend((0..others).map(|i| enrolled(format!("e-1{i:015x}"), format!("other-{i}.example.com"), vec![3; 32])));
    kinds.push(Kind::StackPublished(StackPublished {
        version: 1,
        sha256: Sha256::digest(&archive).to_vec(),
        archive,
        author: "admin:bench".into(),
        message: String::new(),
        synced_from: String::new(),
    }));
    let mut state = ControlState::default();
    for kind in kinds {
        let proposal =
            EventProposal { proposed_at_ms: 1, actor: "admin:bench".into(), event: Some(Event { kind: Some(kind) }) };
        let envelope = seal(proposal, state.last_index() + 1, state.last_index() + 2, state.last_hash());
        state.apply(&envelope);
    }
    state
}

fn signed(key: &SigningKey, counter: u64, traits: &str, fingerprint: &[u8]) -> CheckInRequest {
    let mut req = CheckInRequest {
        envoy_id: "e-0000000000000001".into(),
        counter,
        traits_hash: Sha256::digest(traits.as_bytes()).to_vec(),
        bundle_fingerprint: fingerprint.to_vec(),
        ..Default::default()
    };
    req.signature = key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
    req
}

/// What a check-in touches, owned.
struct Parts {
    control: ControlState,
    fleet: FleetIndex,
    bundles: BundleCache,
    uploads: UploadBudget,
    queue_delay: std::sync::Arc<QueueDelay>,
}

const TRAITS: &str = r#"{"hostname":"web-1.example.com","os":{"family":"debian"}}"#;

impl Parts {
    fn new(control: ControlState) -> Self {
        Self {
            control,
            fleet: FleetIndex::default(),
            bundles: BundleCache::new(SigningKey::from_bytes(&[7; 32])),
            uploads: UploadBudget::new(200),
            queue_delay: QueueDelay::new(std::time::Duration::from_millis(100)),
        }
    }

    fn ctx(&self) -> CheckInContext<'_> {
        CheckInContext {
            control: &self.control,
            fleet: &self.fleet,
            bundles: &self.bundles,
            check_in_interval_s: 60,
            uploads: &self.uploads,
            queue_delay: &self.queue_delay,
            bolt: None,
        }
    }

    /// The envoy's first check-in: it sends its traits and gets its bundle, whose fingerprint
    /// the later check-ins carry.
    fn first_bundle(&self, envoy_key: &SigningKey) -> Vec<u8> {
        let mut first = signed(envoy_key, 1, TRAITS, &[]);
        first.traits_json = TRAITS.to_string();
        first.signature = envoy_key.sign(&vigo_proto::signing::check_in_bytes(&first)).to_bytes().to_vec();
        match check_in(&self.ctx(), Some(CERT_SHA256), &first, 1).unwrap().reply {
            Some(Reply::Bundle(bundle)) => bundle.fingerprint,
            other => panic!("no bundle: {other:?}"),
        }
    }
}

fn check_ins(c: &mut Criterion) {
    let envoy_key = SigningKey::from_bytes(&[9; 32]);
    let parts = Parts::new(control(&envoy_key));
    let ctx = parts.ctx();
    let peer = Some(CERT_SHA256);
    let fingerprint = parts.first_bundle(&envoy_key);
    let mut counter = 1;

    c.bench_function("check_in/no_change", |b| {
        b.iter_batched(
            || {
                counter += 1;
                signed(&envoy_key, counter, TRAITS, &fingerprint)
            },
            |req| {
                let reply = check_in(&ctx, peer, black_box(&req), 2).unwrap();
                assert!(matches!(reply.reply, Some(Reply::NoChange(_))));
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("check_in/new_bundle", |b| {
        b.iter_batched(
            || {
                counter += 1;
                signed(&envoy_key, counter, TRAITS, &[])
            },
            |req| {
                let reply = check_in(&ctx, peer, black_box(&req), 2).unwrap();
                assert!(matches!(reply.reply, Some(Reply::Bundle(_))));
            },
            BatchSize::SmallInput,
        )
    });
}

fn compile(c: &mut Criterion) {
    let archive = archive(&stack_files());
    let traits = Traits::from_value(&serde_json::json!({ "hostname": "web-1.example.com" }));
    c.bench_function("compile/stack", |b| {
        b.iter(|| {
            let stack = Stack::from_archive(black_box(&archive)).unwrap();
            black_box(stack.compile(1, "web-1.example.com", &traits).unwrap())
        })
    });

    // What a publish costs per envoy: a cache miss with a realistic 150 KB inventory, compiled
    // from the already parsed stack, encoded, fingerprinted and signed.
    let live = control(&SigningKey::from_bytes(&[9; 32])).stack().cloned().unwrap();
    let bundles = BundleCache::new(SigningKey::from_bytes(&[7; 32]));
    let fleet = FleetIndex::default();
    let mut host = 0u32;
    c.bench_function("compile/envoy_150k_traits", |b| {
        b.iter_batched(
            || {
                host += 1;
                let hostname = format!("web-{host}.example.com");
                let (json, hash) = vigo_benches::inventory::for_host(host, &hostname);
                let root = fleet.trait_store().intern_json(&json).unwrap();
                (hostname, hash, Traits::new(HeldTraits::adopt(fleet.trait_store().clone(), root)))
            },
            |(hostname, hash, traits)| {
                black_box(bundles.bundle_for(&live, &hostname, &hash, || Some(traits)).unwrap().unwrap())
            },
            BatchSize::SmallInput,
        )
    });
}

/// The same no-change check-in in fleets of 1,000 and 50,000 envoys (all enrolled and seen):
/// its cost must not grow with the fleet.
fn check_ins_by_fleet_size(c: &mut Criterion) {
    let envoy_key = SigningKey::from_bytes(&[9; 32]);
    let mut group = c.benchmark_group("check_in/no_change_fleet");
    for size in [1_000u32, 50_000] {
        let parts = Parts::new(control_of(&envoy_key, size - 1));
        for i in 0..size - 1 {
            parts.fleet.accept(&format!("e-1{i:015x}"), 1, 1).unwrap();
        }
        let ctx = parts.ctx();
        let fingerprint = parts.first_bundle(&envoy_key);
        let mut counter = 1;
        group.bench_function(size.to_string(), |b| {
            b.iter_batched(
                || {
                    counter += 1;
                    signed(&envoy_key, counter, TRAITS, &fingerprint)
                },
                |req| {
                    let reply = check_in(&ctx, Some(CERT_SHA256), black_box(&req), 2).unwrap();
                    assert!(matches!(reply.reply, Some(Reply::NoChange(_))));
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// What `vigocli envoys list --where` costs: two conditions on the traits of 2,000 hosts with
/// 150 KB inventories, read in place from the interned store: every host (a scan), or only
/// those the trait index leaves.
fn queries(c: &mut Criterion) {
    let fleet = FleetIndex::default();
    let hosts: Vec<(String, [u8; 32])> = (0..2_000u32)
        .map(|i| {
            let id = format!("e-{i:016x}");
            let (json, hash) = vigo_benches::inventory::for_host(i, &format!("fleet-{i}"));
            fleet.accept(&id, 1, 1).unwrap();
            fleet.record_check_in(&id, &[6; 32], &hash, Some(fleet.trait_store().intern_json(&json).unwrap()));
            (id, hash)
        })
        .collect();
    // An in-house package about 4 % of the hosts have.
    let query = Query::parse(&["os.family=debian".to_string(), "packages.site-app-7 exists".to_string()], 1).unwrap();
    let store = fleet.trait_store();
    // Whether the host with this id and traits hash matches `query`, its traits read in place.
    let matching = |query: &Query, id: &str, hash: &[u8; 32]| {
        let held = fleet.traits_if_current(id, hash);
        query.matches(&Subject {
            hostname: "h",
            last_seen_ms: 1,
            compliance: Compliance::Compliant,
            traits: held.as_ref().map(|held| StoreView { store, id: held.root() }),
        })
    };
    c.bench_function("query/scan_2k_hosts", |b| {
        b.iter(|| hosts.iter().filter(|(id, hash)| matching(&query, id, hash)).count())
    });
    let (keys, bitmap_bytes) = fleet.index_stats();
    let selected = fleet.having(&query.index_terms()).map_or(0, |ids| ids.len());
    eprintln!("query index over 2,000 hosts: {keys} keys, {bitmap_bytes} bytes of bitmaps; {selected} candidates");
    let hash_of: std::collections::HashMap<&str, &[u8; 32]> = hosts.iter().map(|(id, h)| (id.as_str(), h)).collect();
    // As the server does: candidates are checked only against what the index does not answer
    // exactly (here nothing: both conditions are keyed in full).
    let residual = query.residual();
    c.bench_function("query/indexed_2k_hosts", |b| {
        b.iter(|| {
            let candidates = fleet.having(&query.index_terms()).expect("both conditions are keyed");
            candidates.iter().filter(|id| residual.is_empty() || matching(&residual, id, hash_of[id.as_str()])).count()
        })
    });
}

criterion_group!(benches, check_ins, check_ins_by_fleet_size, compile, queries);
criterion_main!(benches);
