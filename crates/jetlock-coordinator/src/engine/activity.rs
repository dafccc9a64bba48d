//! What a key needs only while something happens to it: waiters, holder
//! operations, a write in flight, a revocation, a recent grant; and what
//! its hold applied, when a coordinator granted it. Most held locks have
//! none of it, so it is allocated on the first change and freed once
//! empty.

use super::{Applied, HolderOp, Inflight, Note, RecentGrant, Revocation, Waiter};
use std::collections::VecDeque;

/// The parts of a key's state that only a key being waited on, operated
/// on, written, revoked or just granted through the coordinator needs.
#[derive(Debug, Default)]
pub(super) struct Activity {
    pub(super) queue: VecDeque<Waiter>,
    pub(super) ops: VecDeque<HolderOp>,
    pub(super) inflight: Option<Box<Inflight>>,
    /// The token a `contended` notice was sent for.
    pub(super) contended: u64,
    pub(super) revoke: Option<Box<Revocation>>,
    /// The last grant seen, so a coordinator taking the key over can repeat
    /// an answer the previous owner may not have sent.
    pub(super) recent_grant: Option<Box<RecentGrant>>,
    /// Why our last write of the key was made.
    pub(super) note: Option<Box<Note>>,
    /// Waiters this coordinator let go at their deadline while another
    /// acted for the key, kept [`MIRROR_OP_LIFETIME`](super::MIRROR_OP_LIFETIME): one of the holder's
    /// own was a reentry to the coordinator that acted, which a view that
    /// lagged here took for a wait (see `replay::adopt_reentries`).
    pub(super) lapsed: Vec<Waiter>,
}

impl Activity {
    /// What a key without activity reads.
    const NONE: Activity = Activity {
        queue: VecDeque::new(),
        ops: VecDeque::new(),
        inflight: None,
        contended: 0,
        revoke: None,
        recent_grant: None,
        note: None,
        lapsed: Vec::new(),
    };

    fn is_none(&self) -> bool {
        self.queue.is_empty()
            && self.ops.is_empty()
            && self.inflight.is_none()
            && self.contended == 0
            && self.revoke.is_none()
            && self.recent_grant.is_none()
            && self.note.is_none()
            && self.lapsed.is_empty()
    }
}

/// What a key keeps beside its key, holding and last change, each part
/// allocated only while it has something: the requests its hold applied
/// (none for a hold a client took itself) and its [`Activity`]. A key
/// that is only held keeps one null pointer instead of the 24 bytes of
/// the one and the 128 of the other. It reads as [`Activity::NONE`] while
/// there is no activity; a change allocates one, [`Busy::settle`] frees
/// what is empty again.
#[derive(Debug, Default)]
pub(super) struct Busy(Option<Box<Parts>>);

#[derive(Debug, Default)]
struct Parts {
    applied: Applied,
    activity: Option<Box<Activity>>,
}

static NO_ACTIVITY: Activity = Activity::NONE;

impl Busy {
    /// The activity, if the key has some allocated: for walks over every
    /// key that must not allocate one per key.
    pub(super) fn get_mut(&mut self) -> Option<&mut Activity> {
        self.0.as_deref_mut()?.activity.as_deref_mut()
    }

    pub(super) fn applied(&self) -> Applied {
        self.0
            .as_deref()
            .map_or_else(Applied::default, |p| p.applied)
    }

    pub(super) fn set_applied(&mut self, applied: Applied) {
        match &mut self.0 {
            Some(parts) => parts.applied = applied,
            None if applied.is_none() => {}
            None => {
                self.0 = Some(Box::new(Parts {
                    applied,
                    activity: None,
                }))
            }
        }
        self.settle();
    }

    /// Frees what nothing is left in.
    pub(super) fn settle(&mut self) {
        let Some(parts) = &mut self.0 else {
            return;
        };
        if parts.activity.as_deref().is_some_and(Activity::is_none) {
            parts.activity = None;
        }
        if parts.activity.is_none() && parts.applied.is_none() {
            self.0 = None;
        }
    }
}

impl std::ops::Deref for Busy {
    type Target = Activity;
    fn deref(&self) -> &Activity {
        self.0
            .as_deref()
            .and_then(|p| p.activity.as_deref())
            .unwrap_or(&NO_ACTIVITY)
    }
}

impl std::ops::DerefMut for Busy {
    fn deref_mut(&mut self) -> &mut Activity {
        self.0
            .get_or_insert_with(Box::default)
            .activity
            .get_or_insert_with(Box::default)
    }
}
