//! What payment teams build on locks, as library APIs (docs/RECIPES.md).
//!
//! - [`process_once`] — [`ProcessOnce`]: each message of a JetStream
//!   consumer processed once, by one worker.

pub mod process_once;

pub use process_once::{Handled, ProcessOnce, ProcessOnceError, ProcessOnceOptions};
