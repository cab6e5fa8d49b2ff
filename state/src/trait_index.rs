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

/// The members of `node` when it is an object, as (name node, value node); none otherwise.
fn members(store: &TraitStore, node: Option<NodeId>) -> Vec<(NodeId, NodeId)> {
    match node.map(|id| store.node(id)) {
        Some(Node::Object(ids)) => ids.chunks_exact(2).map(|pair| (pair[0], pair[1])).collect(),
        _ => Vec::new(),
    }
}

/// The text of a name node.
fn name(store: &TraitStore, id: NodeId) -> String {
    scalar_text(&store.node(id)).unwrap_or_default()
}

/// The keys of the value `node` at `path`: its presence, and its text when it is a scalar.
fn push_keys(store: &TraitStore, path: Vec<String>, node: NodeId, keys: &mut Vec<IndexKey>) {
    if let Some(text) = scalar_text(&store.node(node)) {
        keys.push(IndexKey { path: path.clone(), value: Some(text) });
    }
    keys.push(IndexKey { path, value: None });
}

/// For each name in `old` or `new` whose value differs between them: the name and both values.
/// Equal nodes are equal documents (names included), so an unchanged member, however large,
/// costs one comparison. Equal documents are one node unless one of them went cold (see
/// `traits`): then the member counts as changed, its keys are lost and gained back, and only
/// the work is wasted.
fn changed(
    store: &TraitStore,
    old: &[(NodeId, NodeId)],
    new: &[(NodeId, NodeId)],
) -> Vec<(String, Option<NodeId>, Option<NodeId>)> {
    let was: HashMap<NodeId, NodeId> = old.iter().copied().collect();
    let is: HashMap<NodeId, NodeId> = new.iter().copied().collect();
    let gone = old.iter().filter(|(key, _)| !is.contains_key(key)).map(|&(key, value)| (key, Some(value), None));
    let differ = new
        .iter()
        .filter(|(key, value)| was.get(key) != Some(value))
        .map(|&(key, value)| (key, was.get(&key).copied(), Some(value)));
    gone.chain(differ).map(|(key, was, is)| (name(store, key), was, is)).collect()
}

/// The keys a document loses and gains when it goes from `old` to `new` (see the module docs).
pub fn key_changes(store: &TraitStore, old: Option<NodeId>, new: Option<NodeId>) -> (Vec<IndexKey>, Vec<IndexKey>) {
    let (mut lost, mut gained) = (Vec::new(), Vec::new());
    for (name, was, is) in changed(store, &members(store, old), &members(store, new)) {
        for (inner, was_inner, is_inner) in changed(store, &members(store, was), &members(store, is)) {
            let path = vec![name.clone(), inner];
            if let Some(node) = was_inner {
                push_keys(store, path.clone(), node, &mut lost);
            }
            if let Some(node) = is_inner {
                push_keys(store, path, node, &mut gained);
            }
        }
        if let Some(node) = was {
            push_keys(store, vec![name.clone()], node, &mut lost);
        }
        if let Some(node) = is {
            push_keys(store, vec![name], node, &mut gained);
        }
    }
    (lost, gained)
}

impl TraitIndex {
    /// Envoy `envoy_id`'s traits change from `old` to `new` (either may be absent).
    pub fn update(&self, store: &TraitStore, envoy_id: &str, old: Option<NodeId>, new: Option<NodeId>) {
        // Only what changed; the lost keys go before the gained ones, which may hold some again.
        let (old_keys, new_keys) = key_changes(store, old, new);
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
