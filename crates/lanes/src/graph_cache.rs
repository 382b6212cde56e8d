//! Each lane's graph cache: captured graphs by a caller's key, least recently used
//! evicted first, freed with the device.
//!
//! A forward pass is captured once per key (e.g. batch size, length bucket, dtype)
//! per lane and replayed after. A lane's cache sits behind that lane's own mutex
//! (a lane has one exclusive holder at a time, so the lock is uncontended: no lock
//! is shared by lanes). Entries are `Arc<Graph>`: a graph evicted while its holder
//! is launching it lives until that holder lets go. `LANES_GRAPHS=off` turns graphs
//! off (lookups answer "none": callers run eagerly).

use crate::graph::Graph;
use crate::sync::Arc;

/// Graphs a lane keeps by default (`LANES_GRAPH_CACHE=N` overrides).
pub const GRAPH_CACHE_CAPACITY: usize = 16;

/// `false` when `LANES_GRAPHS` is `off` (or `0`, `false`, `no`).
pub fn graphs_enabled() -> bool {
    switch_on(std::env::var("LANES_GRAPHS").ok().as_deref())
}

/// An environment variable's value read as a switch: on unless `off`, `0`,
/// `false` or `no` (any case); unset is on.
pub(crate) fn switch_on(value: Option<&str>) -> bool {
    !value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// The per-lane capacity: `LANES_GRAPH_CACHE` if it is a positive number, else
/// [`GRAPH_CACHE_CAPACITY`].
pub(crate) fn capacity_from_env() -> usize {
    std::env::var("LANES_GRAPH_CACHE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(GRAPH_CACHE_CAPACITY)
}

struct Entry {
    key: u64,
    graph: Arc<Graph>,
    /// The cache's tick at the last lookup or insert.
    used: u64,
}

/// One lane's graphs. Plain data: the caller holds the lane's mutex, and drops
/// the graphs it gets back (evicted or cleared) after releasing it.
pub(crate) struct LaneGraphs {
    entries: Vec<Entry>,
    tick: u64,
    capacity: usize,
    /// The backend refused a capture on this lane: lookups answer "none" at once.
    unsupported: bool,
}

impl LaneGraphs {
    /// An empty cache of at most `capacity` graphs (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        LaneGraphs {
            entries: Vec::new(),
            tick: 0,
            capacity: capacity.max(1),
            unsupported: false,
        }
    }

    /// The graph for `key`, marked most recently used.
    pub(crate) fn get(&mut self, key: u64) -> Option<Arc<Graph>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.iter_mut().find(|e| e.key == key).map(|e| {
            e.used = tick;
            e.graph.clone()
        })
    }

    /// Inserts `graph` for `key`; returns the graphs it displaced (one with the same
    /// key, or the least recently used when full) for the caller to drop unlocked.
    pub(crate) fn insert(&mut self, key: u64, graph: Arc<Graph>) -> Vec<Arc<Graph>> {
        self.tick += 1;
        let mut out = Vec::new();
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            out.push(self.entries.swap_remove(i).graph);
        }
        while self.entries.len() >= self.capacity {
            let lru = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i);
            match lru {
                Some(i) => out.push(self.entries.swap_remove(i).graph),
                None => break,
            }
        }
        self.entries.push(Entry {
            key,
            graph,
            used: self.tick,
        });
        out
    }

    /// Changes the capacity (at least 1); returns the graphs evicted to fit it, least
    /// recently used first, for the caller to drop unlocked.
    pub(crate) fn set_capacity(&mut self, capacity: usize) -> Vec<Arc<Graph>> {
        self.capacity = capacity.max(1);
        let mut out = Vec::new();
        while self.entries.len() > self.capacity {
            let lru = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i);
            match lru {
                Some(i) => out.push(self.entries.swap_remove(i).graph),
                None => break,
            }
        }
        out
    }

    /// Removes every graph; returns them for the caller to drop unlocked.
    pub(crate) fn clear(&mut self) -> Vec<Arc<Graph>> {
        self.entries.drain(..).map(|e| e.graph).collect()
    }

    /// Graphs cached now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn unsupported(&self) -> bool {
        self.unsupported
    }

    pub(crate) fn set_unsupported(&mut self) {
        self.unsupported = true;
    }
}

#[cfg(all(test, not(any(lanes_loom, lanes_shuttle))))]
mod tests {
    use super::*;
    use crate::alloc::{AllocConfig, Allocator, GraphPool};
    use crate::backend::host::HostBackend;
    use crate::backend::RawGraph;

    struct NoGraph;
    impl RawGraph for NoGraph {
        fn nodes(&self) -> usize {
            0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn graph(alloc: &Arc<Allocator>) -> Arc<Graph> {
        let pool = Arc::new(GraphPool::new(alloc.clone()));
        let block = pool.alloc(0, 4096).expect("alloc");
        pool.keep(block, Vec::new()).expect("keep");
        Arc::new(Graph::new(Box::new(NoGraph), Vec::new(), pool, 0))
    }

    #[test]
    fn lanes_graphs_off_switches_graphs_off() {
        assert!(switch_on(None));
        assert!(switch_on(Some("on")));
        for off in ["off", "OFF", " 0", "false", "no"] {
            assert!(!switch_on(Some(off)), "{off}");
        }
    }

    #[test]
    fn the_least_recently_used_graph_is_evicted_and_its_blocks_come_back() {
        let alloc = Arc::new(Allocator::new(
            Arc::new(HostBackend::new()),
            1,
            AllocConfig::default(),
        ));
        let mut c = LaneGraphs::new(2);
        let (g1, g2, g3) = (graph(&alloc), graph(&alloc), graph(&alloc));
        assert!(c.insert(1, g1.clone()).is_empty());
        assert!(c.insert(2, g2.clone()).is_empty());
        assert!(Arc::ptr_eq(&c.get(1).expect("1"), &g1)); // 1 is now the most recent
        let evicted = c.insert(3, g3.clone());
        assert_eq!(evicted.len(), 1);
        assert!(Arc::ptr_eq(&evicted[0], &g2), "2 was least recently used");
        assert!(c.get(2).is_none());
        // The same key replaces its graph.
        let g1b = graph(&alloc);
        let replaced = c.insert(1, g1b.clone());
        assert!(Arc::ptr_eq(&replaced[0], &g1));
        assert_eq!(c.len(), 2);
        // Shrinking evicts the least recently used.
        assert!(Arc::ptr_eq(&c.set_capacity(1)[0], &g3));
        assert_eq!(alloc.stats().allocated_bytes, 4 * 4096);
        drop((g1, g2, g3, evicted, replaced));
        assert_eq!(
            alloc.stats().allocated_bytes,
            4096,
            "only the cached graph's block"
        );
        drop(g1b);
        drop(c.clear());
        assert_eq!(alloc.stats().allocated_bytes, 0, "every block came back");
    }
}
