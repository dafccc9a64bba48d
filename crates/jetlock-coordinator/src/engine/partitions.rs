//! Partitioned reading (docs/SCALING.md, "Partitioned coordinators"). In a
//! deployment whose requests are partitioned (`jetlock::shards`), the ring
//! gives each coordinator whole partitions, and the runtime reads only
//! their requests: a coordinator no longer mirrors the others' queues.
//!
//! So a partition a coordinator gains after it became ready is one whose
//! requests it has not read. It acts there only once the runtime has read
//! them from the stream ([`Engine::partitions_caught_up`]): acting before
//! could grant a key to a newer request past an older waiter not read yet,
//! or answer a try-lock `busy` for a queue it cannot see. Until then nobody
//! acts there (the previous owner left or lost the partition to the ring);
//! the pause is the time to read the partition's unfinished requests.
//!
//! Before it is ready a coordinator reads every partition, so what it
//! owns when it becomes ready needs no catching up.

use super::*;

impl Engine {
    /// Splits the keys by the deployment's request partitions (1: not
    /// partitioned). Called once, before anything is fed.
    pub fn set_partitions(&mut self, partitions: u32) {
        self.ring.set_partitions(partitions);
        let n = if partitions > 1 {
            partitions as usize
        } else {
            0
        };
        self.parts.catching_up = vec![false; n];
    }

    /// The partitions the runtime must now read, when they changed since it
    /// was last told, with the number that [`Engine::partitions_caught_up`]
    /// takes once it has read them. `None` while the deployment is not
    /// partitioned or this coordinator is not ready (it reads everything).
    pub fn take_partition_change(&mut self) -> Option<(Vec<u32>, u64)> {
        if !self.ring.partitioned()
            || !self.ready
            || self.parts.ring_seen == Some(self.ring.version())
        {
            return None;
        }
        self.parts.ring_seen = Some(self.ring.version());
        let owned = self.ring.owned_partitions();
        if self.parts.reading.as_ref() == Some(&owned) {
            return None;
        }
        self.parts.reading = Some(owned.clone());
        self.parts.generation += 1;
        Some((owned, self.parts.generation))
    }

    /// The runtime read every request of the partitions it was told to
    /// read with `generation`: act on the ones gained.
    pub fn partitions_caught_up(&mut self, generation: u64, now: Instant) {
        if generation != self.parts.generation {
            return;
        }
        let gained: Vec<u32> = (0..self.parts.catching_up.len() as u32)
            .filter(|&p| self.parts.catching_up[p as usize])
            .collect();
        if gained.is_empty() {
            return;
        }
        tracing::debug!(?gained, "partitions read: acting on them");
        for p in &gained {
            self.parts.catching_up[*p as usize] = false;
        }
        // The refusals held back while they were read: the coordinator that
        // had the partitions may never have read these requests. Those of a
        // partition the ring has moved on since are its new owner's to send.
        let (read, later): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.parts.deferred)
                .into_iter()
                .partition(|d| d.partition.is_some_and(|p| gained.contains(&p)));
        self.parts.deferred = later;
        for d in read {
            if d.partition.is_some_and(|p| self.ring.owns_partition(p)) {
                self.send_refusal(d);
            }
        }
        let keys: Vec<String> = self
            .keys
            .keys()
            .filter(|k| gained.contains(&self.ring.partition_of(k)))
            .map(str::to_owned)
            .collect();
        self.take_over(keys, now);
    }

    /// Partitions being caught up on.
    pub fn partitions_catching_up(&self) -> usize {
        self.parts.catching_up.iter().filter(|&&c| c).count()
    }

    /// The ring changed: partitions gained that the runtime does not read
    /// yet wait for it. Called before the keys now ours are stepped.
    pub(super) fn mark_gained_partitions(&mut self) {
        if !self.ring.partitioned() || !self.ready {
            return;
        }
        // What the runtime reads: everything until it was first told.
        let Some(reading) = &self.parts.reading else {
            return;
        };
        for p in self.ring.owned_partitions() {
            if !reading.contains(&p) {
                self.parts.catching_up[p as usize] = true;
            }
        }
    }

    /// Whether this coordinator acts on lock `key` now.
    pub(super) fn owns(&self, key: &str) -> bool {
        if !self.ready {
            return false;
        }
        if !self.ring.partitioned() {
            return self.ring.owns_key(key);
        }
        self.acts_in(self.ring.partition_of(key))
    }

    /// Whether this coordinator acts in request partition `p` now.
    fn acts_in(&self, p: u32) -> bool {
        self.ready
            && self.ring.owns_partition(p)
            && !self
                .parts
                .catching_up
                .get(p as usize)
                .copied()
                .unwrap_or(false)
    }

    /// Whether this coordinator answers for what came on `subject` from
    /// `session` without a lock to go by (an unreadable request): the
    /// owner of the subject's partition, which alone reads it, or of the
    /// session.
    pub(super) fn answers_for(&self, subject: &str, session: &str) -> bool {
        match protocol::subject_partition(subject) {
            Some(p) if self.ring.partitioned() => self.acts_in(p),
            _ => self.ready && self.ring.owns(session),
        }
    }

    /// Why a refusal of the request on `subject` about `key` (if known)
    /// waits ([`Engine::hold_refusal`]): `Some(None)` while this
    /// coordinator is starting, `Some(Some(p))` while it reads partition
    /// `p`, which it owns and the request belongs to.
    fn held_for(&self, subject: &str, key: Option<&str>) -> Option<Option<u32>> {
        if !self.ready {
            return Some(None);
        }
        if !self.ring.partitioned() {
            return None;
        }
        let p = match key {
            Some(key) => self.ring.partition_of(key),
            None => protocol::subject_partition(subject)?,
        };
        let catching_up = self.parts.catching_up.get(p as usize).copied();
        (catching_up == Some(true) && self.ring.owns_partition(p)).then_some(Some(p))
    }

    /// A refusal (`answer`, then deleting message `seq`) that this
    /// coordinator does not send because it does not act where the request
    /// belongs. In a partition it owns and is still reading it sends it
    /// once the partition is read: nobody else reads the partition now,
    /// and the coordinator that had it may never have read this request.
    /// While it is starting it sends the ones it then answers for once it
    /// is ready ([`Engine::send_held_refusals`]): a coordinator restarting
    /// alone is the only one to read them. Elsewhere the owner sends it.
    pub(super) fn hold_refusal(
        &mut self,
        subject: &str,
        key: Option<&str>,
        session: &str,
        answer: Answer,
        seq: u64,
    ) {
        let Some(partition) = self.held_for(subject, key) else {
            return;
        };
        if self.parts.deferred.len() >= MAX_DEFERRED {
            return;
        }
        self.parts.deferred.push(Deferred {
            partition,
            subject: subject.to_owned(),
            key: key.map(str::to_owned),
            session: session.to_owned(),
            answer,
            seq,
        });
    }

    /// Ready now: sends the refusals held while starting that this
    /// coordinator answers for, unless another coordinator's done note
    /// said it answered them. A refusal read from the message alone (an
    /// unreadable request) is the same whoever sends it. One that the
    /// lock's state decided (a duplicate id, a full queue, a dead session)
    /// goes only if no other coordinator is live: one that is may have
    /// decided otherwise, and its grant must not be contradicted.
    pub(super) fn send_held_refusals(&mut self) {
        let alone = self.ring.members().len() == 1;
        let (starting, reading): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.parts.deferred)
                .into_iter()
                .partition(|d| d.partition.is_none());
        self.parts.deferred = reading;
        for d in starting {
            let ours = match &d.key {
                Some(key) => alone && self.owns(key),
                None => self.answers_for(&d.subject, &d.session),
            };
            let answered = d.answer.re().is_some_and(|re| {
                self.answered_early
                    .contains_key(&(d.session.clone(), re.to_owned()))
            });
            if ours && !answered {
                self.send_refusal(d);
            }
        }
    }

    fn send_refusal(&mut self, d: Deferred) {
        self.answer(&d.session, d.answer);
        if d.seq != 0 {
            self.out.push(Action::Delete { seq: d.seq });
        }
    }

    /// Why a request that came on `subject` about `key` is in the wrong
    /// partition, if it is: only its partition's owner reads it, and that
    /// may not be the lock's owner.
    pub(super) fn misplaced(&self, subject: &str, key: &str) -> Option<WireError> {
        let p = protocol::subject_partition(subject)?;
        let want = self.ring.partition_of(key);
        (!self.ring.partitioned() || want != p).then(|| {
            WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "lock key {key:?} is in request partition {want} of {}, and this request came on partition {p} (docs/PROTOCOL.md, \"Partitioned requests\")",
                    self.ring.partitions()
                ),
            )
        })
    }
}

/// Most refusals held back while partitions are read; past it, the
/// clients of the rest time out (a flood of bad requests into a partition
/// being read, bounded by the request stream's caps).
const MAX_DEFERRED: usize = 10_000;

/// A refusal held back until its partition is read (`partition`), or
/// until this coordinator is ready (`None`).
#[derive(Debug)]
pub(super) struct Deferred {
    partition: Option<u32>,
    /// What the request came on and the lock it is about, if known: whose
    /// refusal it is, worked out again once ready.
    subject: String,
    key: Option<String>,
    session: String,
    answer: Answer,
    seq: u64,
}

/// What the engine knows of the partitions it reads.
#[derive(Debug, Default)]
pub(super) struct Parts {
    /// Refusals held back until their partition is read or this
    /// coordinator is ready.
    deferred: Vec<Deferred>,
    /// The partitions the runtime was last told to read (`None`: all, as
    /// before it was first told).
    reading: Option<Vec<u32>>,
    /// By partition: gained and not yet read, so not acted on.
    catching_up: Vec<bool>,
    /// Which telling the runtime's reading answers.
    generation: u64,
    /// The ring's version when the partitions read were last worked out.
    ring_seen: Option<u64>,
}
