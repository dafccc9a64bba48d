//! Writes that landed without their ack, and requests replayed after they
//! were applied: both must not run a holder operation twice.
//!
//! A coordinator write whose result is unknown (`Failed`: a lost ack, a
//! timeout) may have landed. Re-running its operation against what a read
//! then shows would apply it twice: a partial release of a lock held twice
//! would free it, a reentrant acquire would be counted twice. The same
//! happens when a full restart replays a request that was answered but not
//! yet deleted from the request stream. Two marks on each coordinator write
//! prevent both:
//!
//! - `Jetlock-Write-Id` (`<coordinator>.<n>`, unique per write of this
//!   process): after `Failed`, the key is read, and when its last message
//!   carries the write id of the write in flight (at a revision above the
//!   one it expected), the write landed: it is finished as `Written`;
//! - `Jetlock-Applied` ([`Applied`]): the request stream sequence of the
//!   newest request applied to the hold the message shows, and of the
//!   release that ended the previous hold. A holder operation (release,
//!   renew, reentrant acquire) on the current hold whose sequence is at or
//!   below it was applied already: it is answered again from the current
//!   state (clients ignore a repeated answer) and deleted, never re-run.
//!   A release whose sequence is the one that ended the previous hold is
//!   answered `released`.
//!
//! Why the sequence order is sound for the current hold: one hold's
//! operations are run in stream order, one write at a time, and a hold's
//! grant is applied before any operation on it exists. An acquire of the
//! holder's (session, owner) newer than the grant is one of those
//! operations however it was first filed: one read while the key was not
//! yet known, or while its own grant was still queued, waits in the queue
//! until the hold shows, and then joins the operations in stream order
//! ([`adopt_reentries`]). So every operation on the hold with a lower
//! sequence than an applied one was run before it, applied or refused; a
//! refused one fails its check again. Other queued waiters are not ordered
//! against holder operations, so the rule is never applied to them.

use super::*;

/// What a coordinator write applied, carried in its `Jetlock-Applied`
/// header (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The newest request applied to the hold the message shows: the
    /// granted waiter's acquire, or the holder operation it ran.
    pub hold: u64,
    /// The release that ended the previous hold (a handoff or a release
    /// marker).
    pub ended: u64,
    /// The acquire whose grant started the hold the message shows: a
    /// queued copy of it (a start race, a takeover, a replay) is that
    /// grant, and any other acquire of the same session still waits.
    pub grant: u64,
}

impl Applied {
    pub fn is_none(&self) -> bool {
        self.hold == 0 && self.ended == 0 && self.grant == 0
    }
}

/// What a message on a key says about the write that stored it: empty for
/// writers other than a coordinator (a Rust client's own CAS, a server
/// expiry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The `Jetlock-Write-Id` header.
    pub write_id: Option<String>,
    pub applied: Applied,
}

/// The write a key has in flight: its number (its write id) and the
/// revision it expected.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub write: u64,
    pub expected: u64,
}

/// What is known applied after the key went from `previous` to `new`, a
/// change stamped `stamp`. A change of the same grant (same token: a
/// renewal, a reentrant hold, a partial release, whoever wrote it) keeps
/// what the hold had; a new grant or a release starts from its stamp.
pub(super) fn next_applied(
    previous: &Holding,
    new: &Holding,
    kept: Applied,
    stamp: Applied,
) -> Applied {
    let same_grant = match (previous, new) {
        (
            Holding::Held {
                revision: a,
                record: r,
            },
            Holding::Held {
                revision: b,
                record: s,
            },
        ) => r.token_at(*a) == s.token_at(*b),
        _ => false,
    };
    if same_grant {
        Applied {
            hold: kept.hold.max(stamp.hold),
            ended: kept.ended.max(stamp.ended),
            grant: kept.grant.max(stamp.grant),
        }
    } else {
        stamp
    }
}

/// Moves the queued acquires of the current holder's (session, owner) that
/// are newer than the hold's grant into the holder operations, in stream
/// order: they are reentries of this hold, on every coordinator alike,
/// whether this one read them before or after it learned of the grant. Left
/// in the queue, one would wait for the hold to end while a later operation
/// of the hold ran, and a coordinator replaying it would then take it for
/// applied (seed 605 of the simulation). So are the holder's acquires this
/// coordinator let go at their deadline while another acted for the key
/// (`KeyState::lapsed`): from a view that lagged, a try-lock that the acting
/// coordinator ran as a reentry looked busy here, and a takeover would
/// have written past it (`partition` seed 490). A hold whose grant is not known (a
/// client's own CAS) adopts nothing: clients that take the fast path count
/// reentries themselves.
pub(super) fn adopt_reentries(ks: &mut KeyState) {
    let Holding::Held { record, .. } = &ks.current else {
        return;
    };
    let grant = ks.applied().grant;
    let reentry =
        |w: &Waiter| w.session == record.session && w.owner == record.owner && w.seq > grant;
    if grant == 0 || !(ks.busy.lapsed.iter().any(reentry) || ks.busy.queue.iter().any(reentry)) {
        return;
    }
    let (session, owner) = (record.session.clone(), record.owner.clone());
    let reentry = |w: &Waiter| w.session == session && w.owner == owner && w.seq > grant;
    let (adopted, kept): (VecDeque<Waiter>, VecDeque<Waiter>) = std::mem::take(&mut ks.busy.queue)
        .into_iter()
        .partition(reentry);
    ks.busy.queue = kept;
    let mut adopted = Vec::from(adopted);
    let (more, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut ks.busy.lapsed)
        .into_iter()
        .partition(reentry);
    ks.busy.lapsed = kept;
    adopted.extend(more);
    for w in adopted {
        if ks.busy.ops.iter().any(|op| op.seq == w.seq) {
            continue;
        }
        let at = ks.busy.ops.partition_point(|op| op.seq < w.seq);
        ks.busy.ops.insert(
            at,
            HolderOp {
                seq: w.seq,
                session: w.session.to_string(),
                id: w.id.to_string(),
                kind: HolderOpKind::Reenter {
                    owner: w.owner.to_string(),
                    ttl_ms: w.ttl_ms,
                },
                arrived: w.arrived,
                verified: false,
            },
        );
    }
}

impl Engine {
    /// The `Jetlock-Write-Id` of write number `n` of this coordinator.
    pub(super) fn write_id(&self, n: u64) -> String {
        format!("{}.{n}", self.ring.me())
    }

    /// Numbers a new write of the key.
    pub(super) fn next_write(&mut self, expected: u64) -> Sent {
        self.writes_sent += 1;
        Sent {
            write: self.writes_sent,
            expected,
        }
    }

    /// When `key` has a write of unknown result in flight and `current`
    /// (stamped `stamp`) is that write, finishes it as written. Returns
    /// whether it did.
    pub(super) fn recognise(
        &mut self,
        name: &LockName,
        current: &Current,
        stamp: &Stamp,
        now: Instant,
    ) -> bool {
        let Some(ks) = self.keys.get(name.key()) else {
            return false;
        };
        let Some(Inflight::Unsure { sent, .. }) = ks.busy.inflight.as_deref() else {
            return false;
        };
        let revision = revision_of(current);
        // Above the revision it expected: a process that ran earlier under
        // the same coordinator id (`--id`) numbered its writes the same way,
        // but everything it wrote is at or below what this write expected.
        let ours = stamp.write_id.as_deref() == Some(self.write_id(sent.write).as_str());
        if !ours || revision <= sent.expected {
            return false;
        }
        let ks = self.keys.get_mut(name.key()).expect("checked above");
        let Some(Inflight::Unsure { was, .. }) = ks.busy.inflight.take().map(|b| *b) else {
            unreachable!("checked above");
        };
        ks.busy.inflight = Some(was);
        self.written(name, WriteResult::Written { revision }, now);
        true
    }

    /// Answers a holder operation the current hold already applied, from
    /// what the hold is now, and forgets it.
    pub(super) fn answer_applied(
        &mut self,
        ks: &KeyState,
        op: &HolderOp,
        record: &Record,
        token: u64,
    ) {
        let key = ks.name().to_string();
        let answer = match &op.kind {
            HolderOpKind::Release { .. } => Answer::Released {
                v: VERSION,
                re: op.id.clone(),
                key,
                holds: record.holds,
            },
            HolderOpKind::Renew { .. } => Answer::Renewed {
                v: VERSION,
                re: op.id.clone(),
                key,
                token,
                ttl_ms: record.lease_ms,
            },
            HolderOpKind::Reenter { .. } => Answer::Granted {
                v: VERSION,
                re: op.id.clone(),
                key,
                token,
                ttl_ms: record.lease_ms,
                holds: record.holds,
                waiters: ks.busy.queue.len() as u32,
            },
            HolderOpKind::Revoke { .. } | HolderOpKind::Settled => {
                unreachable!("only operations that write are applied")
            }
        };
        self.answer(&op.session, answer);
        self.done(&op.session, &op.id, op.seq, true);
    }
}
