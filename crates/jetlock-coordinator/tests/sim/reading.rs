//! Partitioned reading as the runtime does it (`runtime/feeds.rs`): a
//! coordinator's request feed carries only the partitions it reads, and a
//! new set of partitions is a new feed from the stream's first message,
//! with what the last one delivered skipped.

use crate::coord::{Coord, FeedItem, FeedKind};
use crate::world::{trace, World};
use jetlock::protocol;

impl Coord {
    /// Whether this coordinator's consumer delivers a request on `subject`.
    pub(crate) fn reads(&self, subject: &str) -> bool {
        match (&self.reading, protocol::subject_partition(subject)) {
            (Some(reading), Some(p)) => reading.contains(&p),
            _ => true,
        }
    }

    /// Whether request `seq` on `subject` was fed already; if not, it is
    /// now.
    pub(crate) fn fed(&mut self, subject: &str, seq: u64) -> bool {
        let unpartitioned = self.fed.len() - 1;
        let i = protocol::subject_partition(subject)
            .map_or(unpartitioned, |p| (p as usize).min(unpartitioned));
        if seq <= self.fed[i] {
            return true;
        }
        self.fed[i] = seq;
        false
    }
}

impl World {
    /// Coordinator `c` reads the request partitions `owned` from now on: a
    /// new consumer, from the stream's first message, in place of the one
    /// it had (what that one had not delivered is gone with it).
    pub(crate) fn read_partitions(&mut self, c: usize, owned: Vec<u32>, generation: u64) {
        trace!(self, "{} reads partitions {owned:?}", self.coords[c].id);
        self.coords[c].reading = Some(owned);
        let f = self.coords[c].feed(FeedKind::Requests);
        f.items.clear();
        f.initial = 0;
        let seqs: Vec<u64> = self
            .stream
            .msgs
            .iter()
            .filter(|(_, m)| self.coords[c].reads(&m.subject))
            .map(|(seq, _)| *seq)
            .collect();
        for &seq in &seqs {
            self.append(c, FeedKind::Requests, FeedItem::Request(seq));
        }
        self.coords[c].feed(FeedKind::Requests).initial = seqs.len();
        if seqs.is_empty() {
            self.coords[c].catching_up = None;
            let (e, t) = self.engine_now(c);
            e.partitions_caught_up(generation, t);
            self.after(c);
        } else {
            self.counts.partition_catch_ups += 1;
            self.coords[c].catching_up = Some(generation);
        }
    }
}
