//! The JetStream side of the coordinators' calls: writes landing on the
//! bucket (CAS, TTL set by the server's clock), reads, the server's
//! expiries, stored requests, and the proof beats that only the quorum
//! acknowledges.

use crate::coord::{FeedItem, FeedKind};

/// When a proof beat not acknowledged is given up and the next one sent:
/// the runtime's `PROOF_TIMEOUT`, the longest any class of session timeout
/// waits (`hearing::BOUNDS`: 60 ms for 300 ms sessions, 300 ms from 900
/// ms, 1 s from 3 s).
const PROOF_TIMEOUT: u64 = 1000 * crate::world::MS;
use crate::world::{trace, Ev, Proc, World, SEC};
use jetlock::name::LockName;
use jetlock::store;
use jetlock_coordinator::{Write, WriteKind, WriteResult};

impl World {
    /// Publishes a proof beat to the replicated proof stream: acknowledged
    /// only by the quorum, so never from a server cut off by a partition.
    pub fn prove(&mut self, c: usize) {
        // As the runtime: at most 8 in flight, 10 ms apart.
        let co = &self.coords[c];
        if co.proofs_in_flight >= 8
            || co
                .last_proof
                .is_some_and(|t| self.now < t + 10 * crate::world::MS)
        {
            return;
        }
        self.coords[c].proofs_in_flight += 1;
        self.coords[c].last_proof = Some(self.now);
        let sent = self.instant(&self.coords[c].clock);
        let inc = self.coords[c].inc;
        let reachable = self.js_reachable(Proc::Coord(c));
        let acked = reachable && !self.chance(self.cfg.faults.publish_ack_loss);
        let rtt = self.delay() + self.delay();
        // Cut off with the proof stream's leader (half the time), the beat
        // is stored once the routes heal, and acknowledged late.
        let stored_at_heal = !reachable
            && !self.offline(Proc::Coord(c))
            && self.chance(0.5)
            && self.js_back_at() + rtt < self.now + PROOF_TIMEOUT;
        if acked && rtt < PROOF_TIMEOUT {
            self.schedule(self.now + rtt, Ev::ProofDone(c, inc, Some(sent)));
        } else if stored_at_heal {
            let at = self.js_back_at() + rtt;
            self.schedule(at, Ev::ProofDone(c, inc, Some(sent)));
        } else {
            self.schedule(self.now + PROOF_TIMEOUT, Ev::ProofDone(c, inc, None));
        }
    }

    pub fn proof_done(&mut self, c: usize, inc: u32, sent: Option<tokio::time::Instant>) {
        if !self.live(c, inc) {
            return;
        }
        self.coords[c].proofs_in_flight -= 1;
        if let Some(sent) = sent {
            let (e, t) = self.engine_now(c);
            e.proof_acked(sent, t, t);
        }
        self.after(c);
    }

    /// A write reaches the stream leader (even if its coordinator died
    /// since: the publish was on its way).
    pub fn write_land(&mut self, c: usize, inc: u32, write: Write) {
        let Write {
            name,
            expected,
            kind,
            id: wid,
            applied,
        } = write;
        let stored = self.bucket.cas(name.key(), expected, &kind, &wid, applied);
        let mut result = match &stored {
            Some(e) => WriteResult::Written {
                revision: e.revision,
            },
            None => WriteResult::Conflict,
        };
        trace!(self, "write {wid} on {}: {result:?}", name.key());
        if let Some(entry) = stored {
            if let WriteKind::Put { ttl, .. } = &kind {
                // The server expires by its own clock, in whole seconds,
                // a margin past the lease (`store::server_ttl`).
                let secs = store::whole_seconds(store::server_ttl(*ttl));
                let local = self.server_clock.local(self.now) + secs * SEC;
                let at = self.server_clock.at(local);
                let key = name.key().to_owned();
                self.schedule(
                    at,
                    Ev::Expire {
                        key,
                        revision: entry.revision,
                    },
                );
            }
            let current = entry.current();
            self.broadcast(FeedKind::Changes, || {
                FeedItem::Change(name.clone(), current.clone(), false, entry.stamp.clone())
            });
        }
        if self.chance(self.cfg.faults.write_ack_loss) {
            self.counts.write_acks_lost += 1;
            result = WriteResult::Failed;
        }
        let at = self.now + self.delay();
        self.schedule(
            at,
            Ev::WriteDone {
                c,
                inc,
                name,
                result,
            },
        );
    }

    pub fn read_at(&mut self, c: usize, inc: u32, name: LockName) {
        let stamp = self.bucket.keys.get(name.key()).map(|e| e.stamp.clone());
        let current = Some((self.bucket.current(name.key()), stamp.unwrap_or_default()));
        trace!(
            self,
            "{} reads {}: {current:?}",
            self.coords[c].id,
            name.key()
        );
        let at = self.now + self.delay();
        self.schedule(
            at,
            Ev::ReadDone {
                c,
                inc,
                name,
                current,
            },
        );
    }

    /// The server's TTL for a revision ran out.
    pub fn expire(&mut self, key: &str, revision: u64) {
        if let Some(entry) = self.bucket.expire(key, revision) {
            trace!(self, "server expires {key} revision {revision}");
            let name = LockName::from_key(key).expect("keys of valid names");
            let current = entry.current();
            self.broadcast(FeedKind::Changes, || {
                FeedItem::Change(name.clone(), current.clone(), true, entry.stamp.clone())
            });
        }
    }

    /// A request message is stored: every coordinator's feed gets it.
    pub fn stored(&mut self, seq: u64) {
        self.broadcast(FeedKind::Requests, || FeedItem::Request(seq));
    }
}
