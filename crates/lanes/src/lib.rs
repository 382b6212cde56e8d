//! # lanes
//!
//! Many threads, one GPU, no crashes, real speedup.
//!
//! `lanes` gives every serving thread its own *lane* — a CUDA stream, or an ordered
//! worker on the CPU backend — and recycles device memory safely across lanes with a
//! stream-ordered caching allocator. Thread exit, shutdown, completion callbacks,
//! errors and out-of-memory are safe by construction: shared state is owned through
//! `Arc`s held by every lease, event and buffer, never guarded by alive flags.
//!
//! ```
//! use lanes::{Device, DeviceConfig, Policy, Wait};
//! use std::time::Duration;
//!
//! let dev = Device::cpu(DeviceConfig {
//!     lanes: 2,
//!     policy: Policy::Exclusive { wait: Wait::For(Duration::from_millis(10)) },
//!     ..Default::default()
//! })?;
//! let a = dev.lease()?;
//! let b = dev.lease()?;
//! assert_ne!(a.index(), b.index());
//! // Both lanes are taken: a third lease times out with a clear error.
//! let err = dev.lease().unwrap_err();
//! assert!(err.to_string().contains("all 2 lanes are leased"));
//! drop(a);
//! let c = dev.lease()?; // the freed lane is handed out again
//! # drop((b, c));
//! # Ok::<(), lanes::Error>(())
//! ```

//! ## Module layering
//!
//! Each module uses only modules below it (no two modules use each other); `lib.rs`
//! and each `mod.rs` only declare modules and re-export:
//!
//! 1. `sync` (the synchronization primitives, std or a model checker's), `error`;
//! 2. `backend` (the raw device traits), `backend::host`, `backend::cuda` (inside
//!    it, bottom up: `driver` → `event`, `module_cache`, `blas`, `graph` → `lane` →
//!    `backend`);
//! 3. `alloc` (inside it, bottom up: `size` → `index` → `stats` → `block` →
//!    `allocator` → `buffer`, `graph_pool`), `event`, `callback`;
//! 4. `pool` (the lane pool and its policies), `graph` (a captured graph),
//!    `graph_cache` (graphs by key, per lane);
//! 5. `shared` (the state a device shares with its leases and buffers);
//! 6. `lease` (a lane's lease and the work enqueued through it);
//! 7. `capture` (capturing and launching graphs, the cache seen from a lease);
//! 8. `binding` (each thread's current lane);
//! 9. `device` (the handle users hold).
//!
//! The test-only `loom_scenarios` and `alloc::scenarios` hold the loom and shuttle
//! models of these protocols.

#![warn(missing_docs)]

pub mod alloc;
pub mod backend;
mod binding;
mod callback;
mod capture;
mod device;
mod error;
mod event;
mod graph;
mod graph_cache;
mod lease;
mod pool;
mod shared;
mod sync;

#[cfg(all(test, any(lanes_loom, lanes_shuttle)))]
mod loom_scenarios;

pub use alloc::{AllocConfig, AllocStats, Allocator, Buffer};
pub use backend::{Backend, DeviceKind, DevicePtr, MemInfo, RawEvent, RawGraph, RawLane};
pub use binding::LaneGuard;
pub use device::{cpu_fallback_notice, Device, DeviceConfig, DeviceStats, ShutdownReport};
pub use error::{Error, Result, Wait};
pub use event::Event;
pub use graph::Graph;
pub use graph_cache::{graphs_enabled, GRAPH_CACHE_CAPACITY};
pub use lease::Lease;
pub use pool::{Policy, MAX_LANES};
