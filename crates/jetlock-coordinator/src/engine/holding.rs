//! What a key holds as the coordinator keeps it: [`Holding`], the bucket's
//! [`Current`] with the holder's session and owner shared.
//!
//! Every held lock has one, and a session usually holds many locks under
//! one owner: each record keeps a pointer to a [`Holder`] interned in
//! [`Holders`] instead of its own copies of both strings.

use crate::Hasher;
use hashbrown::HashTable;
use jetlock::record::LockRecord;
use jetlock::store::Current;
use std::hash::BuildHasher;
use std::sync::Arc;

/// A session and the owner id it holds locks as.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) session: String,
    pub(super) owner: String,
}

/// A [`LockRecord`] whose session and owner are a shared [`Holder`]; it
/// reads as its holder (`record.session`, `record.owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    holder: Arc<Holder>,
    pub(super) acquired_ms: u64,
    pub(super) lease_ms: u64,
    pub(super) holds: u32,
    pub(super) token: u64,
}

impl std::ops::Deref for Record {
    type Target = Holder;
    fn deref(&self) -> &Holder {
        &self.holder
    }
}

impl Record {
    /// See [`LockRecord::token_at`].
    pub(super) fn token_at(&self, revision: u64) -> u64 {
        if self.token == 0 {
            revision
        } else {
            self.token
        }
    }

    /// The record as stored in the bucket.
    pub(super) fn to_record(&self) -> LockRecord {
        LockRecord {
            owner: self.holder.owner.clone(),
            session: self.holder.session.clone(),
            acquired_ms: self.acquired_ms,
            lease_ms: self.lease_ms,
            holds: self.holds,
            token: self.token,
        }
    }
}

/// [`Current`] with a shared holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holding {
    Vacant { revision: u64 },
    Held { revision: u64, record: Record },
}

impl Holding {
    pub(super) fn revision(&self) -> u64 {
        match self {
            Holding::Vacant { revision } | Holding::Held { revision, .. } => *revision,
        }
    }

    /// The fencing token of the hold (0: vacant).
    pub(super) fn token(&self) -> u64 {
        match self {
            Holding::Held { revision, record } => record.token_at(*revision),
            Holding::Vacant { .. } => 0,
        }
    }
}

/// The holders of the locks a coordinator knows, each once.
#[derive(Default)]
pub(super) struct Holders {
    table: HashTable<Arc<Holder>>,
    hasher: Hasher,
}

impl Holders {
    fn holder(&mut self, session: &str, owner: &str) -> Arc<Holder> {
        let hash = self.hasher.hash_one((session, owner));
        let hasher = &self.hasher;
        self.table
            .entry(
                hash,
                |h| h.session == session && h.owner == owner,
                |h| hasher.hash_one((h.session.as_str(), h.owner.as_str())),
            )
            .or_insert_with(|| {
                Arc::new(Holder {
                    session: session.to_owned(),
                    owner: owner.to_owned(),
                })
            })
            .get()
            .clone()
    }

    pub(super) fn record(&mut self, r: &LockRecord) -> Record {
        Record {
            holder: self.holder(&r.session, &r.owner),
            acquired_ms: r.acquired_ms,
            lease_ms: r.lease_ms,
            holds: r.holds,
            token: r.token,
        }
    }

    pub(super) fn holding(&mut self, c: &Current) -> Holding {
        match c {
            Current::Vacant { revision } => Holding::Vacant {
                revision: *revision,
            },
            Current::Held { revision, record } => Holding::Held {
                revision: *revision,
                record: self.record(record),
            },
        }
    }

    /// Forgets the holders no record points to.
    pub(super) fn sweep(&mut self) {
        self.table.retain(|h| Arc::strong_count(h) > 1);
    }
}
