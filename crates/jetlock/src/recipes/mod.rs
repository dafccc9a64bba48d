//! Recipes: coordination patterns built on the exclusive lock, with no
//! new server-side state beyond what they name.
//!
//! - `election.rs` — [`Election`]: campaign for leadership of a name (the
//!   term is the lock's fencing token), observe who leads;
//! - `single_flight.rs` — [`SingleFlight`]: one filler of a cache key
//!   across the cluster, the others read its result;
//! - `process_once.rs` — [`ProcessOnce`]: each message of a JetStream
//!   consumer processed once, by one worker;
//! - `partitions.rs` — [`Partitions`]: a group of workers sharing
//!   partitions, each owned by one live member, moved by rendezvous hashing.
//!
//! Each takes its locks under names of their own (`election:<name>`,
//! `sf:<key>`, `once:<key>`, `<group>:~part:<p>`), so they never collide
//! with a plain lock of the same name, and a client speaking only JSON gets
//! the same with the existing ops (`docs/RECIPES.md`).

mod election;
pub mod partitions;
pub mod process_once;
mod single_flight;

pub use election::{election_lock, Election, Leader, LeaderChanges, Leadership, ELECTION_PREFIX};
pub use partitions::{Change, PartitionLease, Partitions};
pub use process_once::{Handled, ProcessOnce, ProcessOnceError, ProcessOnceOptions};
pub use single_flight::{
    Filled, SingleFlight, SingleFlightError, SINGLE_FLIGHT_BUCKET, SINGLE_FLIGHT_PREFIX,
};
