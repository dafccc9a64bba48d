//! Recipes: coordination patterns built on the exclusive lock, with no
//! new server-side state beyond what they name.
//!
//! - `election.rs` — [`Election`]: campaign for leadership of a name (the
//!   term is the lock's fencing token), observe who leads;
//! - `single_flight.rs` — [`SingleFlight`]: one filler of a cache key
//!   across the cluster, the others read its result.
//!
//! Both take their lock under a name of their own (`election:<name>`,
//! `sf:<key>`), so they never collide with a plain lock of the same name,
//! and a client speaking only JSON gets the same with the existing ops
//! (`docs/RECIPES.md`).

mod election;
mod single_flight;

pub use election::{election_lock, Election, Leader, LeaderChanges, Leadership, ELECTION_PREFIX};
pub use single_flight::{
    Filled, SingleFlight, SingleFlightError, SINGLE_FLIGHT_BUCKET, SINGLE_FLIGHT_PREFIX,
};
