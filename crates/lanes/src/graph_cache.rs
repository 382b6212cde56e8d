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
    match std::env::var("LANES_GRAPHS") {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        ),
        Err(_) => true,
    }
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
