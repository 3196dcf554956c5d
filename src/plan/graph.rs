//! The registry's dependency graph (petgraph): direct and transitive dependents, for facts and blast radius.

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Bfs, Reversed, VisitMap, Visitable};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

type Search = Bfs<NodeIndex, <DiGraph<(), ()> as Visitable>::Map>;

/// The number of packages that depend on each package directly, and transitively.
///
/// Built once per registry change and shared; answers are remembered for the graph's life, and
/// one breadth-first search (with its visit map, a bit set) is reused, so a question costs the
/// size of the answer rather than the size of the registry.
#[derive(Default)]
pub struct DependencyGraph {
    graph: DiGraph<(), ()>,
    ids: HashMap<String, NodeIndex>,
    memo: Mutex<HashMap<NodeIndex, (i64, i64)>>,
    search: Mutex<Option<Search>>,
}

impl std::fmt::Debug for DependencyGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DependencyGraph")
            .field("packages", &self.graph.node_count())
            .field("edges", &self.graph.edge_count())
            .finish()
    }
}

impl DependencyGraph {
    pub fn build(edges: &[(String, String)]) -> Self {
        let mut ids: HashMap<String, NodeIndex> = HashMap::new();
        let mut graph = DiGraph::new();
        let mut seen = HashSet::new();
        for (from, to) in edges {
            let mut node = |name: &String| {
                *ids.entry(name.clone())
                    .or_insert_with(|| graph.add_node(()))
            };
            let (a, b) = (node(from), node(to));
            if seen.insert((a, b)) {
                graph.add_edge(a, b, ());
            }
        }
        Self {
            graph,
            ids,
            memo: Mutex::new(HashMap::new()),
            search: Mutex::new(None),
        }
    }

    /// (direct, transitive) dependents of `package`.
    pub fn dependents(&self, package: &str) -> (i64, i64) {
        let Some(&node) = self.ids.get(package) else {
            return (0, 0);
        };
        if let Some(known) = self.memo.lock().ok().and_then(|m| m.get(&node).copied()) {
            return known;
        }
        let direct = self
            .graph
            .neighbors_directed(node, petgraph::Direction::Incoming)
            .count() as i64;
        let reversed = Reversed(&self.graph);
        let mut transitive = -1; // the start node itself
        {
            let mut guard = self.search.lock().unwrap_or_else(|p| p.into_inner());
            let bfs = guard.get_or_insert_with(|| Bfs::new(reversed, node));
            bfs.discovered.clear();
            bfs.stack.clear();
            bfs.discovered.visit(node);
            bfs.stack.push_back(node);
            while bfs.next(reversed).is_some() {
                transitive += 1;
            }
        }
        let answer = (direct, transitive.max(0));
        if let Ok(mut m) = self.memo.lock() {
            m.insert(node, answer);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::DependencyGraph;

    #[test]
    fn transitive_dependents_count_every_package_upstream_once() {
        // c -> b -> a, d -> a, e -> c
        let edges: Vec<(String, String)> =
            [("b", "a"), ("c", "b"), ("d", "a"), ("e", "c"), ("d", "a")]
                .iter()
                .map(|(x, y)| (x.to_string(), y.to_string()))
                .collect();
        let g = DependencyGraph::build(&edges);
        assert_eq!(g.dependents("a"), (2, 4));
        assert_eq!(g.dependents("c"), (1, 1));
        assert_eq!(g.dependents("e"), (0, 0));
        assert_eq!(g.dependents("missing"), (0, 0));
        // Asked again (from the memo), and after other searches reused the visit map.
        assert_eq!(g.dependents("a"), (2, 4));
        let again = DependencyGraph::build(&edges);
        assert_eq!(again.dependents("c"), (1, 1));
        assert_eq!(again.dependents("a"), (2, 4));
    }
}
