//! Wall-clock time as the wire and the records carry it.
//!
//! Only for what people read (when a lock was taken, how long it is held)
//! and for ages a single machine measures: safety never compares two
//! machines' clocks (it comes from compare-and-swap and fencing tokens).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this machine's clock (0 if the
/// clock is set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
