//! The registry's dependency graph (petgraph): direct and transitive dependents, for facts and blast radius.

use petgraph::graphmap::DiGraphMap;
use petgraph::visit::{Bfs, Reversed};
use std::collections::HashMap;

/// The number of packages that depend on each package directly, and transitively.
#[derive(Debug, Default)]
pub struct DependencyGraph {
    graph: DiGraphMap<u32, ()>,
    ids: HashMap<String, u32>,
}

impl DependencyGraph {
    pub fn build(edges: &[(String, String)]) -> Self {
        let mut ids = HashMap::new();
        let mut graph = DiGraphMap::new();
        for (from, to) in edges {
            let n = ids.len() as u32;
            let a = *ids.entry(from.clone()).or_insert(n);
            let n = ids.len() as u32;
            let b = *ids.entry(to.clone()).or_insert(n);
            graph.add_edge(a, b, ());
        }
        Self { graph, ids }
    }

    /// (direct, transitive) dependents of `package`.
    pub fn dependents(&self, package: &str) -> (i64, i64) {
        let Some(&node) = self.ids.get(package) else {
            return (0, 0);
        };
        let direct = self
            .graph
            .neighbors_directed(node, petgraph::Direction::Incoming)
            .count() as i64;
        let reversed = Reversed(&self.graph);
        let mut bfs = Bfs::new(reversed, node);
        let mut transitive = -1; // the start node itself
        while bfs.next(reversed).is_some() {
            transitive += 1;
        }
        (direct, transitive.max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::DependencyGraph;

    #[test]
    fn transitive_dependents_count_every_package_upstream_once() {
        // c -> b -> a, d -> a, e -> c
        let edges: Vec<(String, String)> = [("b", "a"), ("c", "b"), ("d", "a"), ("e", "c")]
            .iter()
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect();
        let g = DependencyGraph::build(&edges);
        assert_eq!(g.dependents("a"), (2, 4));
        assert_eq!(g.dependents("c"), (1, 1));
        assert_eq!(g.dependents("e"), (0, 0));
        assert_eq!(g.dependents("missing"), (0, 0));
    }
}
