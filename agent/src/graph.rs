//! The resource graph of one bundle: which resource must be applied before which, and which
//! resources a change refreshes. The server validates the same edges when a stack is published;
//! the envoy checks again because nothing that arrives over the wire is trusted.
//!
//! Edges run dependency → dependent. `requires` (which the server has already merged with the
//! reverse of `before`) gives `required → requiring`; `notify` (merged with the reverse of
//! `subscribe`) gives `source → target` and also marks the target for a refresh when the source
//! changed. Ties in the order keep bundle order, so a run is reproducible and reads like the stack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use vigo_proto::bundle::Resource;

use crate::{Error, Result};

/// The ordered resources of a bundle, addressed by their index in `Bundle::resources`.
#[derive(Debug, Clone)]
pub struct ResourceGraph {
    ids: Vec<String>,
    order: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    notify_targets: Vec<Vec<usize>>,
}

impl ResourceGraph {
    /// Builds the graph and its order. Fails on a duplicate id, a reference to an unknown id, or a
    /// cycle (naming every resource that sits on one).
    pub fn build(resources: &[Resource]) -> Result<ResourceGraph> {
        let ids: Vec<String> = resources.iter().map(|r| r.id.clone()).collect();
        let mut index_of = HashMap::with_capacity(ids.len());
        for (index, id) in ids.iter().enumerate() {
            if index_of.insert(id.as_str(), index).is_some() {
                return Err(Error::DuplicateResource(id.clone()));
            }
        }
        let lookup = |from: &str, kind: &'static str, to: &str| {
            index_of.get(to).copied().ok_or_else(|| Error::UnknownResource {
                from: from.to_owned(),
                kind,
                to: to.to_owned(),
            })
        };

        let mut graph = DiGraph::<(), ()>::with_capacity(ids.len(), 0);
        for _ in &ids {
            graph.add_node(());
        }
        let mut edges = HashSet::new();
        let mut notify_targets = vec![Vec::new(); ids.len()];
        for (index, resource) in resources.iter().enumerate() {
            for required in &resource.requires {
                let from = lookup(&resource.id, "requires", required)?;
                edges.insert((from, index));
            }
            for target in &resource.notify {
                let to = lookup(&resource.id, "notifies", target)?;
                edges.insert((index, to));
                if !notify_targets[index].contains(&to) {
                    notify_targets[index].push(to);
                }
            }
        }
        // Sorted so the edge list (and thus everything derived from it) is deterministic.
        let mut edges: Vec<(usize, usize)> = edges.into_iter().collect();
        edges.sort_unstable();
        let mut dependents = vec![Vec::new(); ids.len()];
        for &(from, to) in &edges {
            graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
            dependents[from].push(to);
        }

        let order = stable_topological_order(&dependents);
        if order.len() < ids.len() {
            return Err(Error::Cycle(cycle_members(&graph, &ids)));
        }
        Ok(ResourceGraph { ids, order, dependents, notify_targets })
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the bundle has no resources.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of the resource at `index`.
    pub fn id(&self, index: usize) -> &str {
        &self.ids[index]
    }

    /// Resource indexes in the order they must be applied.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Direct dependents of `index` (via `requires` or `notify`), ascending.
    pub fn dependents(&self, index: usize) -> &[usize] {
        &self.dependents[index]
    }

    /// Resources to refresh when `index` changed, in the order they were listed.
    pub fn notify_targets(&self, index: usize) -> &[usize] {
        &self.notify_targets[index]
    }
}

/// Kahn's algorithm taking the lowest ready index first, so independent resources keep bundle
/// order. Returns fewer indexes than nodes when there is a cycle.
fn stable_topological_order(dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut n_prerequisites = vec![0usize; dependents.len()];
    for targets in dependents {
        for &to in targets {
            n_prerequisites[to] += 1;
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        n_prerequisites.iter().enumerate().filter(|(_, n)| **n == 0).map(|(index, _)| Reverse(index)).collect();
    let mut order = Vec::with_capacity(dependents.len());
    while let Some(Reverse(index)) = ready.pop() {
        order.push(index);
        for &to in &dependents[index] {
            n_prerequisites[to] -= 1;
            if n_prerequisites[to] == 0 {
                ready.push(Reverse(to));
            }
        }
    }
    order
}

/// Ids of every resource on a cycle, in bundle order: strongly connected components larger than
/// one, and resources that refer to themselves.
fn cycle_members(graph: &DiGraph<(), ()>, ids: &[String]) -> Vec<String> {
    let mut members: Vec<usize> = tarjan_scc(graph)
        .into_iter()
        .filter(|component| component.len() > 1 || graph.contains_edge(component[0], component[0]))
        .flatten()
        .map(NodeIndex::index)
        .collect();
    members.sort_unstable();
    members.into_iter().map(|index| ids[index].clone()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A resource with only the fields the graph reads.
    pub(crate) fn node(id: &str, requires: &[&str], notify: &[&str]) -> Resource {
        Resource {
            id: id.to_owned(),
            r#type: id.split(':').next().unwrap_or_default().to_owned(),
            requires: requires.iter().map(|s| (*s).to_owned()).collect(),
            notify: notify.iter().map(|s| (*s).to_owned()).collect(),
            ..Resource::default()
        }
    }

    fn ordered_ids(resources: &[Resource]) -> Vec<String> {
        let graph = ResourceGraph::build(resources).unwrap();
        graph.order().iter().map(|&i| graph.id(i).to_owned()).collect()
    }

    #[test]
    fn independent_resources_keep_bundle_order() {
        let resources = [node("a:1", &[], &[]), node("a:2", &[], &[]), node("a:3", &[], &[])];
        assert_eq!(ordered_ids(&resources), ["a:1", "a:2", "a:3"]);
    }

    #[test]
    fn requires_and_notify_order_dependencies_first() {
        let resources = [
            node("service:nginx", &["package:nginx"], &[]),
            node("file:/etc/nginx.conf", &["package:nginx"], &["service:nginx"]),
            node("package:nginx", &[], &[]),
            node("file:/etc/motd", &[], &[]),
        ];
        assert_eq!(
            ordered_ids(&resources),
            ["package:nginx", "file:/etc/nginx.conf", "service:nginx", "file:/etc/motd"]
        );
        let graph = ResourceGraph::build(&resources).unwrap();
        assert_eq!(graph.notify_targets(1), [0]);
        assert_eq!(graph.dependents(2), [0, 1]);
    }

    #[test]
    fn cycle_names_its_members_only() {
        // a:1 -> a:3 (notify) -> a:4 (requires) -> a:1 (requires); a:2 hangs off the cycle.
        let resources = [
            node("a:1", &["a:4"], &["a:3"]),
            node("a:2", &["a:1"], &[]),
            node("a:3", &[], &[]),
            node("a:4", &["a:3"], &[]),
        ];
        let err = ResourceGraph::build(&resources).unwrap_err();
        assert!(matches!(&err, Error::Cycle(ids) if ids == &["a:1", "a:3", "a:4"]), "{err}");
        assert_eq!(err.to_string(), "dependency cycle among a:1, a:3, a:4");
    }

    #[test]
    fn self_reference_is_a_cycle() {
        let err = ResourceGraph::build(&[node("a:1", &["a:1"], &[])]).unwrap_err();
        assert!(matches!(&err, Error::Cycle(ids) if ids == &["a:1"]), "{err}");
    }

    #[test]
    fn unknown_and_duplicate_ids_are_refused() {
        let err = ResourceGraph::build(&[node("a:1", &["a:9"], &[])]).unwrap_err();
        assert_eq!(err.to_string(), "resource a:1 requires unknown resource a:9");
        let err = ResourceGraph::build(&[node("a:1", &[], &["a:9"])]).unwrap_err();
        assert_eq!(err.to_string(), "resource a:1 notifies unknown resource a:9");
        let err = ResourceGraph::build(&[node("a:1", &[], &[]), node("a:1", &[], &[])]).unwrap_err();
        assert_eq!(err.to_string(), "duplicate resource id a:1");
    }
}
