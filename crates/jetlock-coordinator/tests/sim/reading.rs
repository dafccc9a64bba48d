//! Partitioned reading as the runtime does it (`runtime/partitions.rs`): a
//! coordinator's request feed carries only the partitions it reads. A set
//! with a partition gained (or a change while one is read) is a new feed
//! from the stream's first message with no filter, the partitions not
//! owned skipped and what the last feed delivered skipped; once it has
//! delivered what it started with, a feed filtered on the partitions owned
//! replaces it, from where it had read to. Partitions only lost narrow the
//! feed from where it had read to. Each feed is made by a JetStream API
//! call beside the loop: until it answers, the old feed goes on
//! delivering; while JetStream is out of reach it fails and is tried again
//! 250 ms later; and one made for an older change is dropped.

use crate::coord::{Coord, FeedItem, FeedKind};
use crate::world::{trace, Ev, Proc, World, MS};
use jetlock::protocol;

impl Coord {
    /// Whether a request on `subject` is in a partition this coordinator
    /// does not read (its feed with no filter delivers it).
    pub(crate) fn skips(&self, subject: &str) -> bool {
        match (&self.told, protocol::subject_partition(subject)) {
            (Some(owned), Some(p)) => !owned.contains(&p),
            _ => false,
        }
    }

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
    /// Coordinator `c`'s runtime is told to read partitions `owned`: it
    /// works out the feed to make and asks the JetStream API for it.
    pub(crate) fn open_partitions(&mut self, c: usize, owned: Vec<u32>, generation: u64) {
        let all = self.cfg.partitions as usize;
        let co = &mut self.coords[c];
        let read = co.reading.clone().or_else(|| co.told.clone());
        co.told = Some(owned.clone());
        let gained = read
            .as_ref()
            .is_some_and(|read| owned.iter().any(|p| !read.contains(p)));
        let reading = co.reading.as_ref().map_or(all, Vec::len);
        let from = if gained || co.catching_up.is_some() {
            None
        } else if reading == owned.len() {
            co.opening = generation;
            let (e, t) = self.engine_now(c);
            e.partitions_caught_up(generation, t);
            return;
        } else {
            Some(co.read_to + 1)
        };
        self.call(c, owned, generation, from);
    }

    /// The API call making the feed of `owned` from `from`.
    fn call(&mut self, c: usize, owned: Vec<u32>, generation: u64, from: Option<u64>) {
        self.coords[c].opening = generation;
        // While faults run, now and then seconds: a stream leader moving
        // (the fault suite's lame-duck restarts showed such waits).
        let took = if self.faulty && self.rng.f64() < SLOW_API {
            self.rng.u64(500 * MS..3_000 * MS)
        } else {
            self.delay() + self.delay()
        };
        self.opened_at(self.now + took, c, owned, generation, from);
    }

    /// The call for partitions `owned` answers at `at`.
    fn opened_at(
        &mut self,
        at: u64,
        c: usize,
        owned: Vec<u32>,
        generation: u64,
        from: Option<u64>,
    ) {
        let inc = self.coords[c].inc;
        let ev = Ev::PartitionsOpened {
            c,
            inc,
            owned,
            generation,
            from,
        };
        self.schedule(at, ev);
    }

    /// The call for partitions `owned` answered: the feed is replaced,
    /// unless a newer change asked for another or the call failed (then
    /// the same feed is asked for again).
    pub(crate) fn partitions_opened(
        &mut self,
        c: usize,
        inc: u32,
        owned: Vec<u32>,
        generation: u64,
        from: Option<u64>,
    ) {
        let co = &self.coords[c];
        if !co.up || co.inc != inc || co.opening != generation {
            return;
        }
        if !self.js_reachable(Proc::Coord(c)) {
            self.opened_at(self.now + RETRY_AFTER, c, owned, generation, from);
            return;
        }
        self.read_partitions(c, owned, generation, from);
    }

    /// Coordinator `c` reads the request partitions `owned` from now on: a
    /// new consumer in place of the one it had (what that one had not
    /// delivered is gone with it), from the stream's first message with no
    /// filter, or filtered on them from `from` on.
    pub(crate) fn read_partitions(
        &mut self,
        c: usize,
        owned: Vec<u32>,
        generation: u64,
        from: Option<u64>,
    ) {
        trace!(
            self,
            "{} reads partitions {owned:?} from {from:?}",
            self.coords[c].id
        );
        let all = owned.len() == self.cfg.partitions as usize;
        let co = &mut self.coords[c];
        co.reading = match from {
            Some(_) if !all => Some(owned),
            _ => None,
        };
        co.read_to = from.map_or(0, |from| from - 1);
        let f = co.feed(FeedKind::Requests);
        f.items.clear();
        f.initial = 0;
        let seqs: Vec<u64> = self
            .stream
            .msgs
            .range(from.unwrap_or(0)..)
            .filter(|(_, m)| self.coords[c].reads(&m.subject))
            .map(|(seq, _)| *seq)
            .collect();
        for &seq in &seqs {
            self.append(c, FeedKind::Requests, FeedItem::Request(seq));
        }
        self.coords[c].feed(FeedKind::Requests).initial = seqs.len();
        if seqs.is_empty() {
            self.coords[c].catching_up = None;
            self.caught_up(c, generation);
            self.after(c);
        } else {
            if from.is_none() {
                self.counts.partition_catch_ups += 1;
            }
            self.coords[c].catching_up = Some(generation);
        }
    }

    /// The engine hears partitions `generation` are read; a feed with no
    /// filter is then replaced by one filtered on the partitions owned,
    /// from where it had read to.
    pub(crate) fn caught_up(&mut self, c: usize, generation: u64) {
        let (e, t) = self.engine_now(c);
        e.partitions_caught_up(generation, t);
        let co = &self.coords[c];
        let Some(owned) = co.told.clone() else {
            return;
        };
        let all = owned.len() == self.cfg.partitions as usize;
        if co.reading.is_some() || all || co.opening != generation {
            return;
        }
        let from = Some(co.read_to + 1);
        self.call(c, owned, generation, from);
    }
}
