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

#![warn(missing_docs)]

pub mod alloc;
pub mod backend;
mod binding;
mod callback;
mod device;
mod error;
mod event;
mod lane;
mod sync;

#[cfg(all(test, any(lanes_loom, lanes_shuttle)))]
mod models;

pub use alloc::{AllocConfig, AllocStats, Allocator, Buffer};
pub use backend::{Backend, DeviceKind, DevicePtr, MemInfo, RawEvent, RawLane};
pub use binding::LaneGuard;
pub use device::{Device, DeviceConfig, DeviceStats, ShutdownReport};
pub use error::{Error, Result, Wait};
pub use event::Event;
pub use lane::{Lease, Policy, MAX_LANES};
