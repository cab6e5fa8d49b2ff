//! Properties of the interned trait store on random fleets of documents: every document reads
//! back as its canonical JSON, equal documents share one root, and once every reference is
//! given back, in any order, the store is empty again.

use proptest::prelude::*;
use serde_json::{Map, Value};
use vigo_state::{StoreStats, TraitStore};

/// Values from small alphabets, so that documents share many of them, as hosts do.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, 1.25, -2.0]).prop_map(Value::from),
        prop::sample::select(vec!["", "a", "debian", "x\"y", "é"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["os", "pkg", "a", "b"]), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(vec!["os", "packages", "ips", "users", "k"]), value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn documents_read_back_share_and_free_completely(
        docs in prop::collection::vec(document(), 1..12),
        order in any::<prop::sample::Index>(),
    ) {
        let store = TraitStore::default();
        let mut roots = Vec::new();
        for doc in &docs {
            let root = store.intern_json(&doc.to_string()).unwrap();
            // serde_json without `preserve_order` writes object keys sorted: the canonical form.
            prop_assert_eq!(store.to_json(root), doc.to_string());
            roots.push(root);
        }
        for (i, a) in docs.iter().enumerate() {
            for (j, b) in docs.iter().enumerate() {
                prop_assert_eq!(a == b, roots[i] == roots[j], "documents {} and {}", i, j);
            }
        }
        // Give the references back in a shuffled order; the rest keep reading back unchanged.
        let mut pending: Vec<usize> = (0..roots.len()).collect();
        let mut k = order.index(pending.len());
        while !pending.is_empty() {
            k %= pending.len();
            let i = pending.remove(k);
            store.release(roots[i]);
            for &j in &pending {
                prop_assert_eq!(store.to_json(roots[j]), docs[j].to_string());
            }
            k += 7;
        }
        prop_assert_eq!(store.stats(), StoreStats { nodes: 0, heap_bytes: 0, cold: 0 });
    }
}
