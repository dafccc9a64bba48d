//! How long ago the request stream stored a request: the part of its wait
//! already spent.
//!
//! The only record of when a request was stored is the server's timestamp,
//! from the server's wall clock; this coordinator's wall clock minus it
//! compares two machines' clocks. So the difference is only trusted within
//! bounds: never below zero (a server clock ahead of ours), and for a
//! request stored after this coordinator started reading the stream, never
//! above the time since then on its own monotonic clock. (The engine caps
//! it at the request's wait.) A wrong age ends a wait early or late; it
//! never grants a lock twice, which only the bucket's CAS decides.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// What the coordinator knew when it started reading the request stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestAge {
    /// When it asked for the stream's state (before the server answered).
    asked: Instant,
    /// The stream's last sequence in that answer: every later request was
    /// stored after `asked`.
    last_seq: u64,
}

impl RequestAge {
    /// `asked` is taken before the stream info request whose answer said
    /// `last_seq`.
    pub(super) fn new(asked: Instant, last_seq: u64) -> Self {
        RequestAge { asked, last_seq }
    }

    /// The age of request `seq`, which the server stamped `stored_ns`
    /// (Unix ns, its clock), at `now` and `wall` (this machine's clocks).
    pub(super) fn of(&self, seq: u64, stored_ns: i128, now: Instant, wall: SystemTime) -> Duration {
        let wall_ns = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let by_clocks =
            Duration::from_nanos((wall_ns - stored_ns).clamp(0, u64::MAX as i128) as u64);
        if seq > self.last_seq {
            by_clocks.min(now.saturating_duration_since(self.asked))
        } else {
            by_clocks
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn unix_ns(t: SystemTime) -> i128 {
        t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
    }

    #[test]
    fn a_server_clock_ahead_gives_age_zero_not_a_negative_or_huge_one() {
        let asked = Instant::now();
        let ages = RequestAge::new(asked, 10);
        let wall = SystemTime::now();
        let ahead = unix_ns(wall + 60 * S);
        assert_eq!(ages.of(5, ahead, asked + S, wall), Duration::ZERO);
        assert_eq!(ages.of(11, ahead, asked + S, wall), Duration::ZERO);
    }

    #[test]
    fn a_coordinator_clock_ahead_cannot_age_a_new_request_past_our_reading_time() {
        let asked = Instant::now();
        let ages = RequestAge::new(asked, 10);
        let wall = SystemTime::now();
        // Our wall clock is an hour ahead of the server's.
        let stamped = unix_ns(wall - 3600 * S);
        // Stored after we started reading, 2 s ago on our monotonic clock.
        assert_eq!(ages.of(11, stamped, asked + 2 * S, wall), 2 * S);
        // Stored before: only the clocks can tell, and they are trusted.
        assert_eq!(ages.of(10, stamped, asked + 2 * S, wall), 3600 * S);
    }

    #[test]
    fn agreeing_clocks_give_the_plain_difference() {
        let asked = Instant::now();
        let ages = RequestAge::new(asked, 0);
        let wall = SystemTime::now();
        let stamped = unix_ns(wall - S / 2);
        assert_eq!(ages.of(1, stamped, asked + 10 * S, wall), S / 2);
    }
}
