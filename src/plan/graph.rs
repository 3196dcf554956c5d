//! The registry's dependency graph: direct and transitive dependents, for facts and blast radius, searched with petgraph over the monitor's facts (kept up to date, not rebuilt) or over edges read once.

use petgraph::visit::{Bfs, GraphBase, GraphRef, IntoNeighbors, VisitMap, Visitable};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::monitor::facts::Facts;

/// The packages depending on each package, by index, as petgraph sees a graph (its edges point
/// from a package to its dependents).
#[derive(Clone, Copy)]
struct Dependents<'a>(&'a [Vec<u32>]);

impl GraphBase for Dependents<'_> {
    type NodeId = u32;
    type EdgeId = (u32, u32);
}

impl GraphRef for Dependents<'_> {}

impl<'a> IntoNeighbors for Dependents<'a> {
    type Neighbors = std::iter::Copied<std::slice::Iter<'a, u32>>;
    fn neighbors(self, n: u32) -> Self::Neighbors {
        self.0
            .get(n as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
            .iter()
            .copied()
    }
}

impl Visitable for Dependents<'_> {
    type Map = HashSet<u32>;
    fn visit_map(&self) -> HashSet<u32> {
        HashSet::new()
    }
    fn reset_map(&self, map: &mut HashSet<u32>) {
        map.clear();
    }
}

/// Where the graph's nodes and edges come from.
enum Source {
    /// The monitor's facts: package indices, and `depended_by`.
    Facts(Arc<Facts>),
    /// Edges read from the registry: every name that appears, and the dependents of each.
    Edges {
        ids: HashMap<String, u32>,
        dependents: Vec<Vec<u32>>,
    },
}

/// The number of packages that depend on each package directly, and transitively.
///
/// Made for one planning pass; answers are remembered for its life, and one breadth-first
/// search (with its visit map) is reused, so a question costs the size of the answer rather
/// than the size of the registry. Made from the facts it costs nothing to make.
pub struct DependencyGraph {
    source: Source,
    memo: Mutex<HashMap<u32, (i64, i64)>>,
    search: Mutex<Option<Bfs<u32, HashSet<u32>>>>,
}

impl Default for DependencyGraph {
    fn default() -> Self {
        Self::build(&[])
    }
}

impl std::fmt::Debug for DependencyGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let packages = match &self.source {
            Source::Facts(facts) => facts.packages.len(),
            Source::Edges { ids, .. } => ids.len(),
        };
        f.debug_struct("DependencyGraph")
            .field("packages", &packages)
            .finish()
    }
}

impl DependencyGraph {
    /// The graph of these (dependent, dependency) edges; repeated edges count once.
    pub fn build(edges: &[(String, String)]) -> Self {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut dependents: Vec<Vec<u32>> = Vec::new();
        for (from, to) in edges {
            let mut node = |name: &String| {
                let next = ids.len() as u32;
                let id = *ids.entry(name.clone()).or_insert(next);
                if id as usize == dependents.len() {
                    dependents.push(Vec::new());
                }
                id
            };
            let (a, b) = (node(from), node(to));
            dependents[b as usize].push(a);
        }
        for d in &mut dependents {
            d.sort_unstable();
            d.dedup();
        }
        Self::new(Source::Edges { ids, dependents })
    }

    /// The graph the monitor's facts hold (packages that exist, and their dependency edges).
    pub fn from_facts(facts: Arc<Facts>) -> Self {
        Self::new(Source::Facts(facts))
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            memo: Mutex::new(HashMap::new()),
            search: Mutex::new(None),
        }
    }

    fn node(&self, package: &str) -> Option<(u32, Dependents<'_>)> {
        match &self.source {
            Source::Facts(f) => Some((*f.index.get(package)? as u32, Dependents(&f.depended_by))),
            Source::Edges { ids, dependents } => Some((*ids.get(package)?, Dependents(dependents))),
        }
    }

    /// (direct, transitive) dependents of `package`.
    pub fn dependents(&self, package: &str) -> (i64, i64) {
        let Some((node, graph)) = self.node(package) else {
            return (0, 0);
        };
        if let Some(known) = self.memo.lock().ok().and_then(|m| m.get(&node).copied()) {
            return known;
        }
        let direct = graph.neighbors(node).count() as i64;
        let mut transitive = -1; // the start node itself
        {
            let mut guard = self.search.lock().unwrap_or_else(|p| p.into_inner());
            let bfs = guard.get_or_insert_with(|| Bfs::new(graph, node));
            graph.reset_map(&mut bfs.discovered);
            bfs.stack.clear();
            bfs.discovered.visit(node);
            bfs.stack.push_back(node);
            while bfs.next(graph).is_some() {
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

    #[test]
    fn the_facts_graph_answers_as_the_edges_graph_does() {
        use crate::monitor::facts::testing::package;
        use crate::monitor::facts::Facts;
        use crate::registry::Dependency;
        // c -> b -> a, d -> a, e -> c; f depends on a package that does not exist.
        let mut facts = Facts::default();
        for (name, deps) in [
            ("a", vec![]),
            ("b", vec!["a"]),
            ("c", vec!["b"]),
            ("d", vec!["a"]),
            ("e", vec!["c"]),
            ("f", vec!["ghost"]),
        ] {
            let mut p = package(name, 0);
            p.releases[0].dependencies = deps
                .iter()
                .map(|d| Dependency {
                    name: d.to_string(),
                    requirement: "^1".into(),
                })
                .collect();
            facts.update(name, Some(p.record), Some(p.releases), 1);
        }
        let g = DependencyGraph::from_facts(std::sync::Arc::new(facts));
        assert_eq!(g.dependents("a"), (2, 4));
        assert_eq!(g.dependents("c"), (1, 1));
        assert_eq!(g.dependents("e"), (0, 0));
        assert_eq!(g.dependents("ghost"), (0, 0));
        assert_eq!(g.dependents("a"), (2, 4));
    }
}
