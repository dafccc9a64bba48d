//! What payment teams build on locks, as library APIs (docs/RECIPES.md).
//!
//! - [`process_once`] — [`ProcessOnce`]: each message of a JetStream
//!   consumer processed once, by one worker;
//! - [`partitions`] — [`Partitions`]: a group of workers sharing
//!   partitions, each owned by one live member, moved by rendezvous hashing.

pub mod partitions;
pub mod process_once;

pub use partitions::{Change, PartitionLease, Partitions};
pub use process_once::{Handled, ProcessOnce, ProcessOnceError, ProcessOnceOptions};
