//! `TraitStore`: every distinct JSON value the fleet reported as traits, stored once.
//!
//! Envoys send ~150 KB of traits each (the package inventory), and most of it is the same on
//! most hosts: the same package at the same version is the same object everywhere. The store
//! interns values bottom-up (hash-consing): a string, number, array or object that is already
//! held is shared, so a host costs only what is its own (its set of packages, the values no
//! other host has). Objects keep their members sorted by key, so equal objects are equal
//! nodes whatever order the envoy wrote them in.
//!
//! Nodes are reference-counted: each envoy holds its root, each array or object holds its
//! members, and a node whose count falls to zero is freed with whatever only it held.
//!
//! What is its own is mostly one value: the host's package list, an object of hundreds of
//! members found on no other host. Once the fleet snapshot holds such a large array or object
//! ([`COLD_MIN_IDS`] child ids or more), it goes **cold**: memory keeps its kind, its size and
//! its row, and a read fetches its children's rows from the snapshot ([`ColdRows`]) and maps
//! them back to nodes. A cold node is out of the hash-consing table, so an equal value interned
//! later gets a node of its own (memory, never correctness), and the index update compares it
//! member by member. Freeing a cold node needs its children, so its last release queues it, and
//! [`TraitStore::settle`] (the snapshot writer) reads it back and frees it.
//!
//! **Architecture Invariant (I-3):** one `RwLock` guards the arena, held for one intern or one
//! lookup at a time and never across an `.await`. Parsing happens under the write lock (it is
//! interning), which costs about a millisecond per 150 KB document, once per traits change.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use vigo_proto::fleet::TraitNode as NodeRow;
use vigo_proto::fleet::trait_node::Kind as RowKind;

/// Index of a node in the arena.
pub type NodeId = u32;

/// One interned JSON value. Members of arrays and objects are nodes themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as JSON text in serde_json's form (`1.50` becomes `1.5`, `1e3` becomes `1000.0`).
    Number(Box<str>),
    /// A string.
    String(Box<str>),
    /// An array's items.
    Array(Box<[NodeId]>),
    /// An object's members as `[key, value, key, value, ...]`, sorted by key; keys are
    /// `String` nodes.
    Object(Box<[NodeId]>),
}

impl Node {
    fn children(&self) -> &[NodeId] {
        match self {
            Node::Array(ids) | Node::Object(ids) => ids,
            _ => &[],
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Node::Number(s) | Node::String(s) => s.len(),
            Node::Array(ids) | Node::Object(ids) => ids.len() * size_of::<NodeId>(),
            _ => 0,
        }
    }
}

/// The kind of a [`Node`], without its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// Why a traits document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraitsError {
    /// Not JSON.
    #[error("traits are not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object at the top.
    #[error("traits must be a JSON object")]
    NotAnObject,
    /// The store is full (more distinct values than a `NodeId` can name).
    #[error("the trait store is full")]
    Full,
}

/// Arrays and objects with at least this many child ids (32 members of an object) leave memory
/// once the fleet snapshot holds them: a host's package list, not the package entries it
/// shares with the fleet.
pub const COLD_MIN_IDS: usize = 64;

/// Where the items of nodes that left memory are read back from: the fleet snapshot
/// (`vigo_state::fleet_store`).
pub trait ColdRows: Send + Sync {
    /// The rows of the children of the node written as `row`, in order.
    fn children(&self, row: u32) -> Result<Vec<u32>, String>;
}

/// A node as the arena keeps it: whole, or (a large array or object the snapshot already
/// holds) only its kind, its number of child ids and its row.
#[derive(Debug, Clone)]
enum Slot {
    Hot(Node),
    Cold(Cold),
}

/// What memory keeps of a cold node.
#[derive(Debug, Clone, Copy)]
struct Cold {
    /// An object (else an array).
    object: bool,
    /// Its number of child ids.
    ids: u32,
    /// Its row in the snapshot.
    row: u32,
}

impl Slot {
    fn hot(&self) -> Option<&Node> {
        match self {
            Slot::Hot(node) => Some(node),
            Slot::Cold(_) => None,
        }
    }
}

/// No node: an entry of `Rows::by_row` whose row holds nothing in memory.
const NO_NODE: NodeId = NodeId::MAX;

#[derive(Default)]
struct Arena {
    nodes: Vec<Slot>,
    refs: Vec<u32>,
    free: Vec<NodeId>,
    table: HashTable<NodeId>,
    hasher: RandomState,
    heap_bytes: usize,
    rows: Rows,
    /// Nodes that left memory.
    n_cold: usize,
    /// Cold nodes whose last reference went: their children are given back by
    /// [`TraitStore::settle`], which reads them from the snapshot off the check-in path.
    cold_dropped: Vec<NodeId>,
}

/// Where the nodes stand in the fleet snapshot (`vigo_state::fleet_store`): each node's row,
/// 0 while it has none. A node gets its row only after its children got theirs, so every row
/// names rows that exist.
#[derive(Default)]
struct Rows {
    of: Vec<u32>,
    /// Rows of nodes freed since the writer last asked: to delete.
    freed: Vec<u32>,
    /// Rows deleted from the snapshot, free to give out again.
    spare: Vec<u32>,
    /// Highest row given out so far.
    last: u32,
    /// The node under each row (`NO_NODE` for none): how a cold node's children are found.
    by_row: Vec<NodeId>,
}

impl Rows {
    fn bind(&mut self, row: u32, id: NodeId) {
        let at = row as usize;
        if self.by_row.len() <= at {
            self.by_row.resize(at + 1, NO_NODE);
        }
        self.by_row[at] = id;
    }

    fn unbind(&mut self, row: u32) {
        if let Some(slot) = self.by_row.get_mut(row as usize) {
            *slot = NO_NODE;
        }
    }
}

impl Arena {
    fn hash(&self, node: &Node) -> u64 {
        self.hasher.hash_one(node)
    }

    /// The id of `node`, adding it when new; the caller gets one reference. When the node
    /// already existed, the references its children were given for building it go back.
    fn intern(&mut self, node: Node) -> Result<NodeId, TraitsError> {
        let hash = self.hash(&node);
        let nodes = &self.nodes;
        if let Some(&id) = self.table.find(hash, |&id| nodes[id as usize].hot() == Some(&node)) {
            self.refs[id as usize] += 1;
            for &child in node.children() {
                self.release(child);
            }
            return Ok(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = NodeId::try_from(self.nodes.len()).map_err(|_| TraitsError::Full)?;
                self.nodes.push(Slot::Hot(Node::Null));
                self.refs.push(0);
                self.rows.of.push(0);
                id
            }
        };
        self.heap_bytes += node.heap_bytes();
        self.nodes[id as usize] = Slot::Hot(node);
        self.refs[id as usize] = 1;
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        // Only hot nodes are in the table (a node leaves it when it goes cold).
        self.table.insert_unique(hash, id, |&id| nodes[id as usize].hot().map_or(0, |n| hasher.hash_one(n)));
        Ok(id)
    }

    /// Drops one reference to `id`, freeing it and what only it held when none are left.
    fn release(&mut self, id: NodeId) {
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            let refs = &mut self.refs[id as usize];
            *refs -= 1;
            if *refs > 0 {
                continue;
            }
            if let Slot::Cold(_) = self.nodes[id as usize] {
                // Its children are on disk: they are given back by `settle`.
                self.cold_dropped.push(id);
                continue;
            }
            self.unlist(id);
            let node = self.free_slot(id);
            self.heap_bytes -= node.heap_bytes();
            pending.extend_from_slice(node.children());
        }
    }

    /// Empties slot `id` for reuse, handing its row to the deletions; returns what it held.
    fn free_slot(&mut self, id: NodeId) -> Node {
        let slot = std::mem::replace(&mut self.nodes[id as usize], Slot::Hot(Node::Null));
        let row = std::mem::take(&mut self.rows.of[id as usize]);
        if row != 0 {
            self.rows.freed.push(row);
            self.rows.unbind(row);
        }
        self.free.push(id);
        match slot {
            Slot::Hot(node) => node,
            Slot::Cold(_) => Node::Null,
        }
    }

    /// Takes hot node `id` out of the hash-consing table.
    fn unlist(&mut self, id: NodeId) {
        let Some(node) = self.nodes[id as usize].hot() else { return };
        let hash = self.hash(node);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
    }

    /// Cold node `id` as it was when hot, from the rows of its children `rows` (read from the
    /// snapshot by the caller, with the arena unlocked). A node warmed meanwhile is as it is now.
    fn resolve(&self, id: NodeId, cold: Cold, rows: Vec<u32>) -> Result<Node, String> {
        if let Slot::Hot(node) = &self.nodes[id as usize] {
            return Ok(node.clone());
        }
        let Cold { object, ids, row } = cold;
        if rows.len() != ids as usize {
            return Err(format!("trait row {row} has {} children, not {ids}", rows.len()));
        }
        let children = rows
            .iter()
            .map(|&child| match self.rows.by_row.get(child as usize) {
                Some(&id) if id != NO_NODE => Ok(id),
                _ => Err(format!("trait row {row} names row {child}, which holds no value")),
            })
            .collect::<Result<Box<[NodeId]>, String>>()?;
        Ok(if object { Node::Object(children) } else { Node::Array(children) })
    }

    /// Sends node `id` out of memory when it is a large array or object the snapshot holds.
    fn evict(&mut self, id: NodeId) -> bool {
        let row = self.rows.of[id as usize];
        if row == 0 || self.refs[id as usize] == 0 {
            return false;
        }
        let Slot::Hot(node @ (Node::Array(_) | Node::Object(_))) = &self.nodes[id as usize] else { return false };
        if node.children().len() < COLD_MIN_IDS {
            return false;
        }
        let (object, ids, heap_bytes) =
            (matches!(node, Node::Object(_)), node.children().len() as u32, node.heap_bytes());
        self.unlist(id);
        self.heap_bytes -= heap_bytes;
        self.nodes[id as usize] = Slot::Cold(Cold { object, ids, row });
        self.n_cold += 1;
        true
    }

    /// Puts cold node `id` back into memory as `node` (read back by the caller). It stays out
    /// of the table: a later equal value gets a node of its own, which costs memory, never
    /// correctness.
    fn warm(&mut self, id: NodeId, node: Node) {
        if let Slot::Cold(_) = self.nodes[id as usize] {
            self.heap_bytes += node.heap_bytes();
            self.nodes[id as usize] = Slot::Hot(node);
            self.n_cold -= 1;
        }
    }

    fn assign_rows(&mut self, id: NodeId, out: &mut Vec<(u32, NodeRow)>) -> u32 {
        let row = self.rows.of[id as usize];
        if row != 0 {
            return row;
        }
        // A cold node always has its row (it went cold after being written, and
        // `TraitStore::forget_rows` warms every node first), so this one is hot.
        let children: Vec<u32> = self.nodes[id as usize]
            .hot()
            .map(|node| node.children().to_vec())
            .unwrap_or_default()
            .into_iter()
            .map(|child| self.assign_rows(child, out))
            .collect();
        let row = self.rows.spare.pop().unwrap_or_else(|| {
            self.rows.last += 1;
            self.rows.last
        });
        self.rows.of[id as usize] = row;
        self.rows.bind(row, id);
        let (kind, boolean, text) = match self.nodes[id as usize].hot().unwrap_or(&Node::Null) {
            Node::Null => (RowKind::Null, false, ""),
            Node::Bool(b) => (RowKind::Bool, *b, ""),
            Node::Number(n) => (RowKind::Number, false, &**n),
            Node::String(s) => (RowKind::String, false, &**s),
            Node::Array(_) => (RowKind::Array, false, ""),
            Node::Object(_) => (RowKind::Object, false, ""),
        };
        out.push((
            row,
            NodeRow { kind: kind as i32, boolean, text: text.to_string(), children, packed_children: Vec::new() },
        ));
        row
    }

    /// Rebuilds the node written as `row`, with one reference for the caller; `None` when the
    /// row or one under it is missing or malformed. `memo` holds one reference to every node
    /// rebuilt so far, by row.
    fn restore_row(
        &mut self,
        row: u32,
        rows: &HashMap<u32, NodeRow>,
        memo: &mut HashMap<u32, NodeId>,
    ) -> Option<NodeId> {
        if let Some(&id) = memo.get(&row) {
            self.refs[id as usize] += 1;
            return Some(id);
        }
        let encoded = rows.get(&row)?;
        let node = match RowKind::try_from(encoded.kind).ok()? {
            RowKind::Null => Node::Null,
            RowKind::Bool => Node::Bool(encoded.boolean),
            RowKind::Number => Node::Number(encoded.text.as_str().into()),
            RowKind::String => Node::String(encoded.text.as_str().into()),
            kind @ (RowKind::Array | RowKind::Object) => {
                let mut ids = Vec::with_capacity(encoded.children.len());
                let complete = (kind == RowKind::Array || encoded.children.len() % 2 == 0)
                    && encoded.children.iter().all(|&child| match self.restore_row(child, rows, memo) {
                        Some(id) => {
                            ids.push(id);
                            true
                        }
                        None => false,
                    });
                if !complete {
                    for id in ids {
                        self.release(id);
                    }
                    return None;
                }
                match kind {
                    RowKind::Array => Node::Array(ids.into()),
                    _ => Node::Object(ids.into()),
                }
            }
        };
        let children = node.children().to_vec();
        let Ok(id) = self.intern(node) else {
            for child in children {
                self.release(child);
            }
            return None;
        };
        // The same value may stand under two rows (a freed node's row not yet deleted, and the
        // row of the same value interned again): the node keeps the first; `restore` sees the
        // second in `memo` and has the caller rewrite.
        if self.rows.of[id as usize] == 0 {
            self.rows.of[id as usize] = row;
        }
        self.rows.bind(row, id);
        self.refs[id as usize] += 1;
        memo.insert(row, id);
        Some(id)
    }

    fn string_of(&self, id: NodeId) -> &str {
        match &self.nodes[id as usize] {
            Slot::Hot(Node::String(s)) => s,
            _ => "",
        }
    }
}

/// The fleet's interned traits. See the module docs.
#[derive(Default)]
pub struct TraitStore {
    arena: RwLock<Arena>,
    /// Where cold nodes are read back from; without it nothing leaves memory.
    source: OnceLock<Arc<dyn ColdRows>>,
}

impl fmt::Debug for TraitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("TraitStore").field("nodes", &stats.nodes).field("heap_bytes", &stats.heap_bytes).finish()
    }
}

/// Size of the store, for `/metrics` and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct values held.
    pub nodes: usize,
    /// Bytes of their strings, numbers and member lists (the slots themselves not counted).
    pub heap_bytes: usize,
    /// Of the nodes, the large arrays and objects whose items are only in the snapshot.
    pub cold: usize,
}

impl TraitStore {
    fn write(&self) -> RwLockWriteGuard<'_, Arena> {
        self.arena.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Arena> {
        self.arena.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Interns a traits document, which must be a JSON object; returns its root with one
    /// reference for the caller. A refused document leaves the store as it was.
    pub fn intern_json(&self, text: &str) -> Result<NodeId, TraitsError> {
        let mut arena = self.write();
        let mut de = serde_json::Deserializer::from_str(text);
        let mut building = Building { arena: &mut arena, held: Vec::new() };
        let root = match (&mut building).deserialize(&mut de).and_then(|root| de.end().map(|()| root)) {
            Ok(root) => root,
            Err(e) => {
                // Give back what the partial document took.
                for id in std::mem::take(&mut building.held) {
                    arena.release(id);
                }
                return Err(TraitsError::Json(e.to_string()));
            }
        };
        if !matches!(arena.nodes[root as usize], Slot::Hot(Node::Object(_))) {
            arena.release(root);
            return Err(TraitsError::NotAnObject);
        }
        Ok(root)
    }

    /// Takes one more reference to `id` (a node the caller holds a reference to).
    pub fn retain(&self, id: NodeId) {
        self.write().refs[id as usize] += 1;
    }

    /// Gives back one reference to `id`.
    pub fn release(&self, id: NodeId) {
        self.write().release(id);
    }

    /// Reads cold node `id` back from the snapshot. The arena is unlocked while the snapshot
    /// is read, so no intern (a traits upload, on the check-in path) waits on the disk.
    fn read_back(&self, id: NodeId, cold: Cold) -> Result<Node, String> {
        let source = self.source.get().ok_or("no fleet snapshot to read cold traits from")?;
        let rows = source.children(cold.row)?;
        self.read().resolve(id, cold, rows)
    }

    /// Node `id` handed to `f` with the arena read-locked: in place when hot, read back from
    /// the snapshot when cold (`null`, and an error in the log, when it cannot be read).
    fn with_node<R>(&self, id: NodeId, f: impl FnOnce(&Arena, &Node) -> R) -> R {
        let cold = {
            let arena = self.read();
            match &arena.nodes[id as usize] {
                Slot::Hot(node) => return f(&arena, node),
                Slot::Cold(cold) => *cold,
            }
        };
        let node = self.read_back(id, cold).unwrap_or_else(|e| {
            tracing::error!("cold traits unreadable, read as null: {e}");
            Node::Null
        });
        f(&self.read(), &node)
    }

    /// The cold nodes among `ids`.
    fn cold_of(&self, ids: impl IntoIterator<Item = NodeId>) -> Vec<(NodeId, Cold)> {
        let arena = self.read();
        ids.into_iter()
            .filter_map(|id| match arena.nodes[id as usize] {
                Slot::Cold(cold) => Some((id, cold)),
                Slot::Hot(_) => None,
            })
            .collect()
    }

    /// A copy of node `id` (read back from the snapshot when it is cold).
    pub fn node(&self, id: NodeId) -> Node {
        self.with_node(id, |_, node| node.clone())
    }

    /// What kind of value node `id` is.
    pub fn kind(&self, id: NodeId) -> NodeKind {
        match &self.read().nodes[id as usize] {
            Slot::Hot(Node::Null) => NodeKind::Null,
            Slot::Hot(Node::Bool(_)) => NodeKind::Bool,
            Slot::Hot(Node::Number(_)) => NodeKind::Number,
            Slot::Hot(Node::String(_)) => NodeKind::String,
            Slot::Hot(Node::Array(_)) | Slot::Cold(Cold { object: false, .. }) => NodeKind::Array,
            Slot::Hot(Node::Object(_)) | Slot::Cold(Cold { object: true, .. }) => NodeKind::Object,
        }
    }

    /// Item `i` of array `id`.
    pub fn item(&self, id: NodeId, i: usize) -> Option<NodeId> {
        self.with_node(id, |_, node| match node {
            Node::Array(items) => items.get(i).copied(),
            _ => None,
        })
    }

    /// Number of items of an array, or members of an object; 0 for anything else.
    pub fn len(&self, id: NodeId) -> usize {
        match &self.read().nodes[id as usize] {
            Slot::Hot(Node::Array(items)) => items.len(),
            Slot::Hot(Node::Object(members)) => members.len() / 2,
            Slot::Cold(Cold { object, ids, .. }) => *ids as usize / if *object { 2 } else { 1 },
            Slot::Hot(_) => 0,
        }
    }

    /// The member `key` of object `id`.
    pub fn member(&self, id: NodeId, key: &str) -> Option<NodeId> {
        self.with_node(id, |arena, node| {
            let Node::Object(members) = node else { return None };
            let (mut lo, mut hi) = (0, members.len() / 2);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match arena.string_of(members[2 * mid]).cmp(key) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Some(members[2 * mid + 1]),
                }
            }
            None
        })
    }

    /// The keys of object `id`, in order, with their values.
    pub fn members(&self, id: NodeId) -> Vec<(String, NodeId)> {
        self.with_node(id, |arena, node| match node {
            Node::Object(members) => {
                members.chunks_exact(2).map(|kv| (arena.string_of(kv[0]).to_string(), kv[1])).collect()
            }
            _ => Vec::new(),
        })
    }

    /// The document under `id` as JSON text (keys sorted).
    pub fn to_json(&self, id: NodeId) -> String {
        // One node at a time, so no lock is held while a cold node is read back.
        fn write(store: &TraitStore, id: NodeId, out: &mut String) {
            let children = store.with_node(id, |_, node| match node {
                Node::Null => {
                    out.push_str("null");
                    None
                }
                Node::Bool(b) => {
                    out.push_str(if *b { "true" } else { "false" });
                    None
                }
                Node::Number(n) => {
                    out.push_str(n);
                    None
                }
                Node::String(s) => {
                    out.push_str(&serde_json::Value::from(&**s).to_string());
                    None
                }
                Node::Array(items) => Some((false, items.to_vec())),
                Node::Object(members) => Some((true, members.to_vec())),
            });
            let Some((object, ids)) = children else { return };
            let (open, close, step) = if object { ('{', '}', 2) } else { ('[', ']', 1) };
            out.push(open);
            for (i, item) in ids.chunks(step).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(store, item[0], out);
                if let Some(&value) = item.get(1) {
                    out.push(':');
                    write(store, value, out);
                }
            }
            out.push(close);
        }
        let mut out = String::new();
        write(self, id, &mut out);
        out
    }

    /// How much the store holds.
    pub fn stats(&self) -> StoreStats {
        let arena = self.read();
        StoreStats { nodes: arena.nodes.len() - arena.free.len(), heap_bytes: arena.heap_bytes, cold: arena.n_cold }
    }

    /// Reads cold nodes back from `source` from now on, and lets written nodes go cold. A
    /// store is attached to one snapshot for its life: a second source is ignored.
    pub fn attach(&self, source: Arc<dyn ColdRows>) {
        let _ = self.source.set(source);
    }

    /// Sends out of memory the large arrays and objects among `written`, rows the snapshot
    /// has just committed; returns how many went.
    pub fn evict_written(&self, written: &[(u32, NodeRow)]) -> usize {
        if self.source.get().is_none() {
            return 0;
        }
        let mut arena = self.write();
        let mut evicted = 0;
        for (row, _) in written.iter().filter(|(_, node)| node.children.len() >= COLD_MIN_IDS) {
            match arena.rows.by_row.get(*row as usize) {
                Some(&id) if id != NO_NODE => evicted += usize::from(arena.evict(id)),
                _ => {}
            }
        }
        evicted
    }

    /// Sends out of memory every large array and object the snapshot holds (after a load);
    /// returns how many went.
    pub fn evict_all_written(&self) -> usize {
        if self.source.get().is_none() {
            return 0;
        }
        let mut arena = self.write();
        (0..arena.nodes.len() as NodeId).map(|id| usize::from(arena.evict(id))).sum()
    }

    /// Gives back the children of cold nodes whose last reference went, reading them from the
    /// snapshot; returns how many were freed. For the snapshot writer, never the check-in
    /// path. A node that cannot be read yet is tried again on the next call.
    pub fn settle(&self) -> usize {
        let dropped = std::mem::take(&mut self.write().cold_dropped);
        let mut freed = 0;
        for (id, cold) in self.cold_of(dropped) {
            let loaded = self.read_back(id, cold);
            let mut arena = self.write();
            match loaded {
                Ok(node) => {
                    arena.free_slot(id);
                    arena.n_cold -= 1;
                    for &child in node.children() {
                        arena.release(child);
                    }
                    freed += 1;
                }
                Err(e) => {
                    tracing::warn!("cold traits not freed yet: {e}");
                    arena.cold_dropped.push(id);
                }
            }
        }
        freed
    }

    /// Brings every cold node back into memory (before the snapshot is written anew).
    pub fn warm_all(&self) -> Result<(), String> {
        let live: Vec<NodeId> = {
            let arena = self.read();
            (0..arena.nodes.len() as NodeId).filter(|id| !arena.cold_dropped.contains(id)).collect()
        };
        for (id, cold) in self.cold_of(live) {
            let node = self.read_back(id, cold)?;
            self.write().warm(id, node);
        }
        Ok(())
    }

    /// Gives a snapshot row to every node under `root` that has none yet, children before
    /// parents, and appends each one's encoding to `out`; returns `root`'s row. A document
    /// already written costs one lookup: its root has a row, so nothing under it is visited.
    pub fn assign_rows(&self, root: NodeId, out: &mut Vec<(u32, NodeRow)>) -> u32 {
        self.write().assign_rows(root, out)
    }

    /// Rows of the nodes freed since the last call: the snapshot should delete them.
    pub fn take_freed_rows(&self) -> Vec<u32> {
        std::mem::take(&mut self.write().rows.freed)
    }

    /// Rows now deleted from the snapshot: they may be given to new nodes.
    pub fn rows_deleted(&self, rows: Vec<u32>) {
        self.write().rows.spare.extend(rows);
    }

    /// Forgets every row, after a snapshot write failed: the next write starts from empty
    /// tables and gives every node a row again. Cold nodes are read back into memory first
    /// (their rows are about to go); when that fails nothing is forgotten.
    pub fn forget_rows(&self) -> Result<(), String> {
        self.settle();
        if !self.read().cold_dropped.is_empty() {
            return Err("cold traits of freed documents cannot be read back".into());
        }
        self.warm_all()?;
        let rows = &mut self.write().rows;
        let mut of = std::mem::take(&mut rows.of);
        of.fill(0);
        *rows = Rows { of, ..Rows::default() };
        Ok(())
    }

    /// Rebuilds documents from snapshot rows into an empty store: for each row in `roots`,
    /// its document with one reference for the caller, or `None` when a row under it is
    /// missing or malformed. Rows no document uses are handed to [`Self::take_freed_rows`],
    /// so the snapshot sheds them.
    ///
    /// A snapshot written between a node's free and its row's deletion may hold the same
    /// value under two rows; both rebuild to one node, and `duplicates` tells the caller to
    /// rewrite the snapshot (its rows no longer match the store's).
    pub fn restore(&self, rows: &HashMap<u32, NodeRow>, roots: &[u32]) -> Restored {
        let mut arena = self.write();
        let mut memo = HashMap::new();
        let restored = roots.iter().map(|&root| arena.restore_row(root, rows, &mut memo)).collect();
        let distinct: std::collections::HashSet<NodeId> = memo.values().copied().collect();
        let duplicates = distinct.len() < memo.len();
        // Rows never rebuilt go now; rebuilt ones no document kept go with their nodes' release.
        arena.rows.freed.extend(rows.keys().copied().filter(|row| !memo.contains_key(row)));
        for (_, id) in memo {
            arena.release(id);
        }
        arena.rows.last = arena.rows.last.max(rows.keys().copied().max().unwrap_or(0));
        Restored { roots: restored, duplicates }
    }
}

/// What [`TraitStore::restore`] rebuilt.
#[derive(Debug)]
pub struct Restored {
    /// For each root row asked for, its document (one reference each), if it could be rebuilt.
    pub roots: Vec<Option<NodeId>>,
    /// Whether some value was found under two rows: the snapshot needs a rewrite.
    pub duplicates: bool,
}

/// One reference to a document in a store, given back when dropped: what a bundle compile
/// reads from, so the document cannot be freed under it.
#[derive(Debug)]
pub struct HeldTraits {
    store: Arc<TraitStore>,
    root: NodeId,
}

impl HeldTraits {
    /// Takes ownership of one reference the caller holds to `root`.
    pub fn adopt(store: Arc<TraitStore>, root: NodeId) -> Self {
        Self { store, root }
    }

    /// The store it lives in.
    pub fn store(&self) -> &TraitStore {
        &self.store
    }

    /// Its root node.
    pub fn root(&self) -> NodeId {
        self.root
    }
}

impl Drop for HeldTraits {
    fn drop(&mut self) {
        self.store.release(self.root);
    }
}

/// A document being interned: every node built so far that no parent holds yet, so a
/// failure halfway can give them back.
struct Building<'a> {
    arena: &'a mut Arena,
    held: Vec<NodeId>,
}

impl Building<'_> {
    fn add(&mut self, node: Node) -> Result<NodeId, TraitsError> {
        let children = node.children().len();
        let id = self.arena.intern(node)?;
        // The children now belong to the new node.
        self.held.truncate(self.held.len() - children);
        self.held.push(id);
        Ok(id)
    }
}

impl<'de> DeserializeSeed<'de> for &mut Building<'_> {
    type Value = NodeId;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<NodeId, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn full<E: serde::de::Error>(e: TraitsError) -> E {
    E::custom(e)
}

impl<'de> Visitor<'de> for &mut Building<'_> {
    type Value = NodeId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<NodeId, E> {
        self.add(Node::Null).map_err(full)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<NodeId, E> {
        self.add(Node::Bool(v)).map_err(full)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NodeId, E> {
        self.add(Node::Number(v.to_string().into())).map_err(full)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NodeId, E> {
        self.add(Node::Number(v.to_string().into())).map_err(full)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<NodeId, E> {
        let number = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("number is not finite"))?;
        self.add(Node::Number(number.to_string().into())).map_err(full)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeId, E> {
        self.add(Node::String(v.into())).map_err(full)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeId, A::Error> {
        let first = self.held.len();
        while seq.next_element_seed(&mut *self)?.is_some() {}
        let items: Box<[NodeId]> = self.held[first..].into();
        self.add(Node::Array(items)).map_err(full)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeId, A::Error> {
        let first = self.held.len();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.add(Node::String(key.as_ref().into())).map_err(full)?;
            map.next_value_seed(&mut *self)?;
        }
        // Sort members by key; a repeated key keeps its last value (as serde_json does).
        let arena = &*self.arena;
        let mut pairs: Vec<(NodeId, NodeId)> = self.held[first..].chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
        pairs.reverse();
        pairs.sort_by(|a, b| arena.string_of(a.0).cmp(arena.string_of(b.0)));
        let mut members = Vec::with_capacity(pairs.len() * 2);
        let mut dropped = Vec::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 && arena.string_of(pairs[i - 1].0) == arena.string_of(*k) {
                dropped.extend([*k, *v]);
                continue;
            }
            members.extend([*k, *v]);
        }
        self.held.truncate(first);
        self.held.extend_from_slice(&members);
        for id in dropped {
            self.arena.release(id);
        }
        self.add(Node::Object(members.into())).map_err(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_stored_once_whatever_the_key_order() {
        let store = TraitStore::default();
        let a = store.intern_json(r#"{"os":{"family":"debian","release":"12"},"n":1}"#).unwrap();
        let nodes = store.stats().nodes;
        let b = store.intern_json(r#"{ "n": 1, "os": {"release":"12", "family":"debian"} }"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(store.stats().nodes, nodes, "nothing new");
        let c = store.intern_json(r#"{"os":{"family":"debian","release":"12"},"n":2}"#).unwrap();
        assert_ne!(a, c);
        // Only the new number and the new top object were added; `os` is shared.
        assert_eq!(store.stats().nodes, nodes + 2);
        assert_eq!(store.to_json(c), r#"{"n":2,"os":{"family":"debian","release":"12"}}"#);
    }

    #[test]
    fn releasing_the_last_reference_frees_what_only_it_held() {
        let store = TraitStore::default();
        let a = store.intern_json(r#"{"shared":[1,2,3],"own":"a"}"#).unwrap();
        let b = store.intern_json(r#"{"shared":[1,2,3],"own":"b"}"#).unwrap();
        let both = store.stats();
        store.release(a);
        assert_eq!(store.to_json(b), r#"{"own":"b","shared":[1,2,3]}"#, "b is untouched");
        assert_eq!(store.stats().nodes, both.nodes - 2, "a's top object and its string \"a\" are gone");
        store.release(b);
        assert_eq!(store.stats(), StoreStats { nodes: 0, heap_bytes: 0, cold: 0 });
        // Freed slots are reused.
        let c = store.intern_json(r#"{"x":true}"#).unwrap();
        assert!(c < 10);
    }

    #[test]
    fn members_are_found_by_key_and_numbers_keep_their_text() {
        let store = TraitStore::default();
        let root = store.intern_json(r#"{"b":{"x":1.50},"a":"t","c":[true,null,-3],"a\"q":"esc","b2":1e3}"#).unwrap();
        let b = store.member(root, "b").unwrap();
        assert_eq!(store.node(store.member(b, "x").unwrap()), Node::Number("1.5".into()));
        assert_eq!(store.node(store.member(root, "a\"q").unwrap()), Node::String("esc".into()));
        assert_eq!(store.member(root, "zz"), None);
        let keys: Vec<String> = store.members(root).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "a\"q", "b", "b2", "c"]);
        assert_eq!(store.to_json(store.member(root, "c").unwrap()), "[true,null,-3]");
    }

    /// The snapshot's rows as a map, readable or not at will (a stand-in for SQLite, which
    /// `tests/cold_traits.rs` uses for real).
    #[derive(Default)]
    struct Rows {
        children: std::sync::Mutex<HashMap<u32, Vec<u32>>>,
        unreadable: std::sync::atomic::AtomicBool,
        /// A store to check, at each read, that its arena is not locked meanwhile.
        probe: std::sync::OnceLock<Arc<TraitStore>>,
        /// Reads made while the probed arena was locked.
        locked_reads: std::sync::atomic::AtomicUsize,
    }

    impl ColdRows for Rows {
        fn children(&self, row: u32) -> Result<Vec<u32>, String> {
            if let Some(store) = self.probe.get()
                && store.arena.try_write().is_err()
            {
                self.locked_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if self.unreadable.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(format!("trait row {row}: disk I/O error"));
            }
            self.children.lock().unwrap().get(&row).cloned().ok_or_else(|| format!("no row {row}"))
        }
    }

    /// A store whose documents under `roots` are written to `rows` and whose large values went cold.
    fn written(store: &TraitStore, rows: &Arc<Rows>, roots: &[NodeId]) {
        store.attach(rows.clone());
        let mut out = Vec::new();
        for &root in roots {
            store.assign_rows(root, &mut out);
        }
        rows.children.lock().unwrap().extend(out.iter().map(|(row, node)| (*row, node.children.clone())));
        store.evict_written(&out);
    }

    fn big(host: &str) -> String {
        let members: Vec<String> = (0..40).map(|i| format!(r#""p{i:02}":{{"v":{i}}}"#)).collect();
        format!(r#"{{"host":"{host}","packages":{{{}}}}}"#, members.join(","))
    }

    #[test]
    fn a_cold_value_reads_back_as_it_was_and_is_freed_by_settle() {
        let store = TraitStore::default();
        let rows = Arc::new(Rows::default());
        let (a, b) = (store.intern_json(&big("a")).unwrap(), store.intern_json(&big("b")).unwrap());
        let (json_a, hot) = (store.to_json(a), store.stats());
        written(&store, &rows, &[a, b]);
        let cold = store.stats();
        assert_eq!((cold.cold, cold.nodes), (1, hot.nodes), "the shared package list, once");
        assert_eq!(cold.heap_bytes + 80 * 4, hot.heap_bytes);
        assert_eq!(store.to_json(a), json_a);
        let packages = store.member(a, "packages").unwrap();
        assert_eq!((store.kind(packages), store.len(packages)), (NodeKind::Object, 40));
        assert_eq!(store.to_json(store.member(packages, "p07").unwrap()), r#"{"v":7}"#);

        // An equal list interned after it went cold gets a node of its own.
        let c = store.intern_json(&big("c")).unwrap();
        assert_ne!(store.member(c, "packages"), Some(packages));
        assert_eq!(store.to_json(c), big("c"));

        // The last reference to the cold list goes with b: its children wait for `settle`.
        store.release(a);
        store.release(b);
        assert_eq!(store.stats().cold, 1);
        assert_eq!(store.settle(), 1);
        store.release(c);
        assert_eq!(store.stats(), StoreStats { nodes: 0, heap_bytes: 0, cold: 0 });
    }

    #[test]
    fn the_snapshot_is_read_with_the_arena_unlocked() {
        // A compile reading a cold value must not keep a traits upload (the write lock, taken
        // under a fleet shard's lock on the check-in path) waiting for the disk.
        let store = Arc::new(TraitStore::default());
        let rows = Arc::new(Rows::default());
        let a = store.intern_json(&big("a")).unwrap();
        written(&store, &rows, &[a]);
        let _ = rows.probe.set(store.clone());
        let packages = store.member(a, "packages").unwrap();
        assert_eq!(store.to_json(store.member(packages, "p03").unwrap()), r#"{"v":3}"#);
        assert_eq!(store.members(packages).len(), 40);
        assert_eq!(store.item(packages, 0), None, "an object has no items");
        assert_eq!(store.to_json(a), big("a"));
        store.release(a);
        assert_eq!(store.settle(), 1);
        assert_eq!(rows.locked_reads.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unreadable_cold_value_reads_as_null_and_is_freed_once_readable() {
        let store = TraitStore::default();
        let rows = Arc::new(Rows::default());
        let a = store.intern_json(&big("a")).unwrap();
        written(&store, &rows, &[a]);
        rows.unreadable.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(store.to_json(a), r#"{"host":"a","packages":null}"#);
        assert_eq!(store.member(store.member(a, "packages").unwrap(), "p01"), None);
        assert!(store.warm_all().unwrap_err().contains("disk I/O error"));
        assert!(store.forget_rows().is_err(), "no rows are forgotten while a cold value cannot be read back");

        store.release(a);
        assert_eq!(store.settle(), 0, "kept for the next try");
        rows.unreadable.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(store.settle(), 1);
        assert_eq!(store.stats(), StoreStats { nodes: 0, heap_bytes: 0, cold: 0 });
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let store = TraitStore::default();
        let root = store.intern_json(r#"{"k":1,"k":2}"#).unwrap();
        assert_eq!(store.to_json(root), r#"{"k":2}"#);
        store.release(root);
        assert_eq!(store.stats().nodes, 0, "the dropped value was released too");
    }

    #[test]
    fn a_refused_document_leaves_the_store_as_it_was() {
        let store = TraitStore::default();
        let kept = store.intern_json(r#"{"os":{"family":"debian"},"list":[1,2]}"#).unwrap();
        let before = store.stats();
        for (bad, why) in [
            (r#"{"os":{"family":"debian"},"list":[1,2,"#, "traits are not valid JSON"),
            (r#"{"os":{"family":"debian"}} trailing"#, "traits are not valid JSON"),
            (r#"[1,2]"#, "traits must be a JSON object"),
            (r#""debian""#, "traits must be a JSON object"),
        ] {
            let err = store.intern_json(bad).unwrap_err();
            assert!(err.to_string().starts_with(why), "{bad}: {err}");
            assert_eq!(store.stats(), before, "{bad}");
        }
        assert_eq!(store.to_json(kept), r#"{"list":[1,2],"os":{"family":"debian"}}"#);
    }
}
