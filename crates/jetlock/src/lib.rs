//! jetlock: a distributed lock coordinator for payment systems, on NATS
//! JetStream.
//!
//! A lock is one key in a JetStream KV bucket. Ownership changes only by
//! compare-and-swap writes (create-if-absent, update-with-expected-revision);
//! the server expires a lease by a per-key TTL even when no jetlock process
//! is alive; every grant carries a fencing token (the KV revision of the
//! granting write) that strictly increases per key, so a resource can refuse
//! a stale holder.
//!
//! # Layout
//!
//! - [`name`] — lock names ↔ KV keys (validation, reversible escaping);
//! - [`record`] — the ownership record stored under a key, and its codec;
//! - [`fence`] — [`FencingToken`] and the [`Fence`] a protected resource uses;
//! - [`bucket`] — the locks bucket's required config: create, verify;
//! - [`store`] — CAS writes, reads and watches on the bucket;
//! - [`client`] — [`Client`], [`LockRequest`], [`LockGuard`] (lease
//!   renewal, loss signal, reentrancy), multi-key locking, read/write locks
//!   ([`RwLockGuard`]) and semaphores ([`Permit`]);
//! - [`recipes`] — leader election ([`Election`]), cache single-flight
//!   ([`SingleFlight`]), process-once consumption and partition ownership,
//!   built on locks;
//! - [`connect`] — server lists, credentials (in URLs or given), URLs with
//!   passwords hidden;
//! - [`protocol`] — the coordinators' wire protocol: subjects, JSON bodies,
//!   error codes (the client speaks it; so can any NATS client);
//! - [`events`] — the events coordinators publish (grants, expiries, ...);
//! - [`clock`] — wall-clock milliseconds, as records and the wire carry them;
//! - [`error`] — the error enums callers match on.
//!
//! This crate is what a service that takes locks compiles. The coordinator
//! (`jetlock-coordinator`), the `jetlock` command (`jetlock-cli`) and the
//! nats-server test harness (`jetlock-testkit`) are crates of their own.
//! [`async_nats`] is part of this API (a [`Client`] can be built on your
//! own connection), so it is re-exported: use `jetlock::async_nats` to get
//! the version this crate was built with.
//!
//! # Example
//!
//! ```no_run
//! use jetlock::{Client, Fence};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("nats://127.0.0.1:4222").await?;
//! let ledger = Fence::new();
//! let guard = client.lock("account:42").ttl(Duration::from_secs(10))
//!     .wait(Duration::from_secs(5)).acquire().await?;
//! // Every protected write carries the token; a stale holder's is refused.
//! ledger.admit("account:42", guard.token())?;
//! guard.release().await?;
//! # Ok(()) }
//! ```

pub mod bucket;
pub mod client;
pub mod clock;
pub mod connect;
pub mod error;
pub mod events;
pub mod fence;
pub mod name;
pub mod protocol;
pub mod recipes;
pub mod record;
pub mod shards;
pub mod store;

pub use async_nats;
pub use client::{
    Client, ClientOptions, LockGuard, LockRequest, MultiLockGuard, MultiLockRequest, Permit,
    RwLockGuard, RwLockRequest, RwMode, SemaphoreRequest,
};
pub use error::{ConnectError, Holder, LockError, LostReason};
pub use fence::{Fence, FencingToken, StaleToken};
pub use name::{LockName, NameError};
pub use recipes::{Election, Filled, Leader, Leadership, SingleFlight, SingleFlightError};
