//! The jetlock coordinator (`jetlock serve`), as a library: FIFO queues,
//! sessions, revocation, failover and the JSON protocol, on top of the
//! locks bucket of the `jetlock` crate. Safety never depends on it: every
//! grant is still one compare-and-swap on the bucket.
//!
//! # Layout
//!
//! - [`runtime`](Coordinator) — a running coordinator: reads the request
//!   stream and the bucket, feeds the engine, carries out its actions,
//!   heartbeats (`runtime.rs`);
//! - `engine.rs` — the state machine: queues, holder operations, session
//!   deaths, revocations; decides writes and answers, does no I/O;
//! - `membership.rs` — live coordinators (the rendezvous-hash ring that
//!   splits keys) and live sessions;
//! - `hearing.rs` — whether this coordinator has been hearing heartbeats
//!   continuously (it judges no session after a gap);
//! - `request_age.rs` — how long ago a request was stored, without trusting
//!   clocks to agree;
//! - [`config`] — `jetlock serve` settings: TOML file, defaults,
//!   validation, the live settings of the config bucket;
//! - [`duration`] — durations with units (`10s`) or integers of ms;
//! - [`limits`] — limits for the locks under one name prefix;
//! - [`admin`] — the operator endpoints' views (`jetlock locks`,
//!   `jetlock members`, `jetlock config`);
//! - [`metrics`] — the Prometheus series (`process_*` included);
//! - [`health`] — whether the coordinator serves (`/readyz`);
//! - [`http`] — the HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! # Example
//!
//! ```no_run
//! use jetlock_coordinator::{Coordinator, CoordinatorConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = jetlock::async_nats::connect("nats://127.0.0.1:4222").await?;
//! let coordinator = Coordinator::start(nats, CoordinatorConfig::default()).await?;
//! // ... serves until shut down; the others take its keys over at once.
//! coordinator.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
pub mod duration;
mod engine;
pub mod health;
mod hearing;
pub mod http;
pub mod limits;
mod membership;
pub mod metrics;
mod request_age;
mod runtime;

pub use config::CoordinatorConfig;
pub use engine::{
    Action, Applied, Engine, EngineConfig, Stamp, Stats, Write, WriteKind, WriteResult,
};
pub use limits::PrefixLimits;
pub use membership::Ring;
pub use runtime::{Coordinator, CoordinatorError};

/// The engine's and membership's maps. Their iteration order decides, for
/// one, which of several sessions dying in the same tick is stepped first,
/// so the deterministic simulation (`tests/sim`, feature `sim`) needs a
/// hasher without random keys to replay a seed. Other builds keep std's
/// random keys: the keys come from the network (HashDoS).
#[cfg(not(feature = "sim"))]
type Hasher = std::collections::hash_map::RandomState;
#[cfg(feature = "sim")]
type Hasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
type HashMap<K, V> = std::collections::HashMap<K, V, Hasher>;
