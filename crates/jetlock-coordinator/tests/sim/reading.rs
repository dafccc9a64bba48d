//! Partitioned reading as the runtime does it (`runtime/partitions.rs`): a
//! coordinator's request feed carries only the partitions it reads, and a
//! new set of partitions is a new feed from the stream's first message,
//! with what the last one delivered skipped. The new feed is made by a
//! JetStream API call beside the loop: until it answers, the old feed goes
//! on delivering; while JetStream is out of reach it fails and is tried
//! again 250 ms later; and one made for an older change is dropped.

use crate::coord::{Coord, FeedItem, FeedKind};
use crate::world::{trace, Ev, Proc, World, MS};
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

/// How long after a failed call the runtime tries again.
const RETRY_AFTER: u64 = 250 * MS;
/// How often, while faults run, the call takes seconds.
const SLOW_API: f64 = 0.1;

impl World {
    /// Coordinator `c`'s runtime asks for the consumer of partitions
    /// `owned`: made after a round trip to the JetStream API.
    pub(crate) fn open_partitions(&mut self, c: usize, owned: Vec<u32>, generation: u64) {
        self.coords[c].opening = generation;
        // While faults run, now and then seconds: a stream leader moving
        // (the fault suite's lame-duck restarts showed such waits).
        let took = if self.faulty && self.rng.f64() < SLOW_API {
            self.rng.u64(500 * MS..3_000 * MS)
        } else {
            self.delay() + self.delay()
        };
        self.opened_at(self.now + took, c, owned, generation);
    }

    /// The call for partitions `owned` answers at `at`.
    fn opened_at(&mut self, at: u64, c: usize, owned: Vec<u32>, generation: u64) {
        let inc = self.coords[c].inc;
        let ev = Ev::PartitionsOpened {
            c,
            inc,
            owned,
            generation,
        };
        self.schedule(at, ev);
    }

    /// The call for partitions `owned` answered: the feed is replaced,
    /// unless a newer change asked for another or the call failed.
    pub(crate) fn partitions_opened(
        &mut self,
        c: usize,
        inc: u32,
        owned: Vec<u32>,
        generation: u64,
    ) {
        let co = &self.coords[c];
        if !co.up || co.inc != inc || co.opening != generation {
            return;
        }
        if !self.js_reachable(Proc::Coord(c)) {
            self.opened_at(self.now + RETRY_AFTER, c, owned, generation);
            return;
        }
        self.read_partitions(c, owned, generation);
    }

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
