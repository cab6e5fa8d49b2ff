//! Which envoys have which traits, for queries: a roaring bitmap of envoys per index key, kept
//! as traits change (rarely: a traits upload), so `envoys list --where` reads the traits of the
//! envoys that can match instead of every envoy's.
//!
//! Keys come from the top two levels of a traits document, objects only:
//! - presence: a member of the root (`packages`), or a member of an object that is a member of
//!   the root (`packages.nginx`, `os.family`);
//! - value: the same paths holding a scalar, with its text (`os.family` = `debian`).
//!
//! Deeper paths and arrays are not keyed: a query on `packages.nginx.version` narrows by the
//! presence of `packages.nginx`, and every candidate is still checked in full, so an index can
//! only leave envoys out that could not match.

use std::collections::HashMap;
use std::sync::Mutex;

use roaring::RoaringBitmap;

use crate::traits::{Node, NodeId, TraitStore};

/// One index key: a path of one or two object members, and for a value key its scalar's text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKey {
    /// Member names from the root.
    pub path: Vec<String>,
    /// `Some(text)`: the path holds this scalar; `None`: the path is there.
    pub value: Option<String>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct TraitIndex(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, u32>,
    ids: Vec<String>,
    keys: HashMap<IndexKey, RoaringBitmap>,
}

/// The text of a scalar node as queries compare it; `None` for arrays and objects.
pub fn scalar_text(node: &Node) -> Option<String> {
    match node {
        Node::Null => Some("null".into()),
        Node::Bool(b) => Some(b.to_string()),
        Node::Number(text) | Node::String(text) => Some(text.to_string()),
        Node::Array(_) | Node::Object(_) => None,
    }
}

/// The keys of the document rooted at `root`.
pub fn keys_of(store: &TraitStore, root: NodeId) -> Vec<IndexKey> {
    let mut keys = Vec::new();
    let add = |path: Vec<String>, node: NodeId, keys: &mut Vec<IndexKey>| {
        if let Some(text) = scalar_text(&store.node(node)) {
            keys.push(IndexKey { path: path.clone(), value: Some(text) });
        }
        keys.push(IndexKey { path, value: None });
    };
    if !matches!(store.node(root), Node::Object(_)) {
        return keys;
    }
    for (name, child) in store.members(root) {
        if matches!(store.node(child), Node::Object(_)) {
            for (inner, grandchild) in store.members(child) {
                add(vec![name.clone(), inner], grandchild, &mut keys);
            }
        }
        add(vec![name], child, &mut keys);
    }
    keys
}

impl TraitIndex {
    /// Envoy `envoy_id`'s traits change from `old` to `new` (either may be absent).
    pub fn update(&self, store: &TraitStore, envoy_id: &str, old: Option<NodeId>, new: Option<NodeId>) {
        let old_keys = old.map(|root| keys_of(store, root)).unwrap_or_default();
        let new_keys = new.map(|root| keys_of(store, root)).unwrap_or_default();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match inner.slots.get(envoy_id) {
            Some(slot) => *slot,
            None => {
                let slot = inner.ids.len() as u32;
                inner.ids.push(envoy_id.to_string());
                inner.slots.insert(envoy_id.to_string(), slot);
                slot
            }
        };
        for key in old_keys {
            if let Some(bitmap) = inner.keys.get_mut(&key) {
                bitmap.remove(slot);
                if bitmap.is_empty() {
                    inner.keys.remove(&key);
                }
            }
        }
        for key in new_keys {
            inner.keys.entry(key).or_default().insert(slot);
        }
    }

    /// The envoys that have every key of `all` (each given as alternatives: any one of its keys
    /// will do), by id; `None` when `all` is empty (no key narrows anything).
    pub fn having(&self, all: &[Vec<IndexKey>]) -> Option<Vec<String>> {
        if all.is_empty() {
            return None;
        }
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut result: Option<RoaringBitmap> = None;
        for alternatives in all {
            let mut any = RoaringBitmap::new();
            for key in alternatives {
                if let Some(bitmap) = inner.keys.get(key) {
                    any |= bitmap;
                }
            }
            result = Some(match result {
                Some(so_far) => so_far & any,
                None => any,
            });
        }
        Some(result.unwrap_or_default().iter().map(|slot| inner.ids[slot as usize].clone()).collect())
    }

    /// Keys held, and the bytes their bitmaps take (for the benchmarks).
    pub fn stats(&self) -> (usize, usize) {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (inner.keys.len(), inner.keys.values().map(RoaringBitmap::serialized_size).sum())
    }
}
