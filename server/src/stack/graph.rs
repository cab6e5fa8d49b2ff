//! The resource graph of a set of modules bundled together: duplicate ids and dependency
//! cycles. Edges: `requires: [r]` and `subscribe: [r]` order r first; `before: [r]` and
//! `notify: [r]` order r after — a notified resource is refreshed after its notifier changed.
//! References that do not resolve in the set are skipped here; load and compile report them.

use std::collections::{BTreeSet, HashMap, VecDeque};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::resource::ResourceDef;
use super::{Module, StackError};

/// A resource and the module it is written in.
#[derive(Clone, Copy)]
pub(crate) struct Placed<'a> {
    pub module: &'a Module,
    pub res: &'a ResourceDef,
}

impl Placed<'_> {
    /// `modules/nginx/module.yaml:12`.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.module.file, self.res.line)
    }

    /// Stable order for reports, independent of the order modules were merged in.
    fn key(&self) -> (&str, usize) {
        (&self.module.file, self.res.line)
    }
}

/// The resources of `modules`, in stack order (modules in the given order, resources as written).
pub(crate) fn place<'a>(modules: &[&'a Module]) -> Vec<Placed<'a>> {
    modules.iter().flat_map(|&module| module.resources.iter().map(move |res| Placed { module, res })).collect()
}

/// Index of the first resource with each id.
pub(crate) fn index_by_id<'a>(placed: &[Placed<'a>]) -> HashMap<&'a str, usize> {
    let mut ids = HashMap::new();
    for (i, p) in placed.iter().enumerate() {
        ids.entry(p.res.id.as_str()).or_insert(i);
    }
    ids
}

/// A resource whose id an earlier resource already has, reported where the later one is.
pub(crate) fn duplicates(placed: &[Placed]) -> Vec<StackError> {
    let ids = index_by_id(placed);
    let mut out = Vec::new();
    for (i, p) in placed.iter().enumerate() {
        let first = ids[p.res.id.as_str()];
        if first != i {
            // Report against the place that comes later in the stack, whatever the merge order.
            let (a, b) = if placed[first].key() <= p.key() { (&placed[first], p) } else { (p, &placed[first]) };
            out.push(StackError {
                file: b.module.file.clone(),
                line: Some(b.res.line),
                reason: format!("duplicate resource id \"{}\" (also at {})", p.res.id, a.origin()),
            });
        }
    }
    out
}

/// One error per dependency cycle (strongly connected component), reported at its first
/// resource with the path of one cycle through it, in dependency direction ("a -> b": a
/// depends on b): `dependency cycle: package:a -> package:b -> package:a`.
pub(crate) fn cycles(placed: &[Placed]) -> Vec<StackError> {
    let ids = index_by_id(placed);
    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(placed.len(), 0);
    for _ in placed {
        graph.add_node(());
    }
    for (i, p) in placed.iter().enumerate() {
        let mut edge = |from: usize, to: usize| {
            graph.update_edge(NodeIndex::new(from), NodeIndex::new(to), ());
        };
        let resolve = |id: &str| ids.get(id).copied();
        for j in p.res.requires.iter().chain(&p.res.subscribe).filter_map(|r| resolve(&r.id)) {
            edge(j, i);
        }
        for j in p.res.before.iter().chain(&p.res.notify).filter_map(|r| resolve(&r.id)) {
            edge(i, j);
        }
    }
    let mut out = Vec::new();
    for component in tarjan_scc(&graph) {
        let members: BTreeSet<usize> = component.iter().map(|n| n.index()).collect();
        let single = members.len() == 1;
        let start = *members.iter().min_by_key(|&&i| placed[i].key()).expect("components are not empty");
        if single && graph.find_edge(NodeIndex::new(start), NodeIndex::new(start)).is_none() {
            continue;
        }
        let path = cycle_through(&graph, placed, &members, start);
        let names: Vec<&str> = path.iter().map(|&i| placed[i].res.id.as_str()).collect();
        out.push(StackError {
            file: placed[start].module.file.clone(),
            line: Some(placed[start].res.line),
            reason: format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
        });
    }
    out
}

/// A shortest cycle from `start` back to itself within `members`, following edges backwards so
/// it reads as "a depends on b depends on …" (breadth-first, neighbours in stack order so the
/// report is deterministic). Returns the nodes, `start` first.
fn cycle_through(graph: &DiGraph<(), ()>, placed: &[Placed], members: &BTreeSet<usize>, start: usize) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<usize> = graph
            .neighbors_directed(NodeIndex::new(node), Direction::Incoming)
            .map(|n| n.index())
            .filter(|n| members.contains(n))
            .collect();
        next.sort_by_key(|&n| placed[n].key());
        for n in next {
            if n == start {
                let mut path = vec![node];
                while let Some(&p) = parent.get(path.last().expect("path is not empty")) {
                    path.push(p);
                }
                path.reverse();
                return path;
            }
            if n != start && !parent.contains_key(&n) {
                parent.insert(n, node);
                queue.push_back(n);
            }
        }
    }
    vec![start]
}
