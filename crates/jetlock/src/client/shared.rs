//! What read/write locks and semaphores share: several holders under one
//! name, each holding a key of its own, with one ordinary lock as the gate
//! that orders whoever has to wait.
//!
//! Under a name `N` a kind keeps its holders' keys (`N:~rw:read:...`,
//! `N:~sem:permit:<i>`) and a gate (`N:~rw:write`, `N:~sem:queue`). Every
//! one of them is an ordinary lock: a fenced lease with renewal, loss
//! signal, session and coordinator handoff. What the kind adds is one
//! rule between the holders' keys and the gate, the same in both kinds:
//!
//! - whoever comes without waiting first writes its own key, *then* reads
//!   the gate, and backs off (deletes its key and queues for the gate) if
//!   somebody else holds it;
//! - the gate's holder first holds the gate, *then* reads the holders'
//!   keys, and waits on what it finds.
//!
//! All of these are writes to one stream, so they have one order, and the
//! reads go to the stream leader after the write before them was
//! acknowledged. Of a newcomer's key write and the gate holder's grant,
//! whichever is later is followed by a read that sees the earlier one: a
//! newcomer never gets past a gate holder, and a gate holder never misses
//! a newcomer that got in (docs/ARCHITECTURE.md, "Read/write locks and
//! semaphores").

use super::attempt::within;
use super::guard::LockGuard;
use super::Inner;
use crate::error::{LockError, LostReason};
use crate::fence::FencingToken;
use crate::name::{LockName, Part};
use crate::store::{Current, KeyWatch};
use std::collections::HashSet;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// One key held under a read/write lock's or semaphore's name: what a
/// [`crate::RwLockGuard`] and a [`crate::Permit`] have in common (they
/// dereference to it). Its errors name the lock asked for, not the key.
#[derive(Debug)]
pub struct PartGuard {
    guard: LockGuard,
    name: LockName,
}

impl PartGuard {
    pub(crate) fn new(guard: LockGuard, name: LockName) -> Self {
        PartGuard { guard, name }
    }

    /// The fencing token of this hold's key.
    pub fn token(&self) -> FencingToken {
        self.guard.token()
    }

    /// The read/write lock's or semaphore's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn owner(&self) -> &str {
        self.guard.owner()
    }

    /// Resolves when the hold is lost (see [`LockGuard::lost`]).
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.guard.lost()
    }

    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    pub fn lost_reason(&self) -> Option<LostReason> {
        self.guard.lost_reason()
    }

    /// See [`LockGuard::deadline`].
    pub fn deadline(&self) -> std::time::Instant {
        self.guard.deadline()
    }

    /// The ordinary lock this hold is (a reader's own key, the gate, a
    /// permit's key): for operators' views and tools.
    pub fn key_guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Releases this hold; see [`LockGuard::release`].
    pub async fn release(self) -> Result<(), LockError> {
        let name = self.name;
        self.guard
            .release()
            .await
            .map_err(|e| renamed(e, &name, Instant::now()))
    }
}

/// Errors name the lock the caller asked for, not the key under it.
pub(crate) fn renamed(e: LockError, name: &LockName, started: Instant) -> LockError {
    let name = name.to_string();
    match e {
        LockError::Busy { holder, .. } => LockError::Busy { name, holder },
        LockError::Timeout { .. } => LockError::Timeout {
            name,
            waited: started.elapsed(),
        },
        LockError::Lost { reason, .. } => LockError::Lost { name, reason },
        LockError::Upgrade { .. } => LockError::Upgrade { name },
        e => e,
    }
}

/// The name `<name>:~<kind>:<parts...>`; `~` keeps it apart from names a
/// user would pick for locks of their own under `name`.
pub(crate) fn sub_name(name: &LockName, kind: &str, parts: &[&str]) -> Result<LockName, LockError> {
    let mut s = format!("{}:~{kind}", name.as_str());
    for p in parts {
        s.push(':');
        s.push_str(p);
    }
    Ok(LockName::new(&s)?)
}

/// What a held key is, read from its lock name: a plain lock, or a part
/// of a read/write lock or semaphore (for operators' views).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldAs {
    Lock,
    /// A reader of the read/write lock `of`.
    Read {
        of: String,
    },
    /// The writer of `of`, or a waiter passing the gate.
    Write {
        of: String,
    },
    /// Permit `index` of the semaphore `of`.
    Permit {
        of: String,
        index: u32,
    },
    /// The gate of the semaphore `of`, held by the first waiter.
    SemaphoreQueue {
        of: String,
    },
}

impl HeldAs {
    pub fn of(name: &str) -> HeldAs {
        let Some((of, Ok(part))) = crate::name::part(name) else {
            return HeldAs::Lock;
        };
        let of = of.to_owned();
        match part {
            Part::Read { .. } => HeldAs::Read { of },
            Part::Write => HeldAs::Write { of },
            Part::Permit { index } => HeldAs::Permit { of, index },
            Part::Queue => HeldAs::SemaphoreQueue { of },
        }
    }

    /// The name the caller locked (the read/write lock's or semaphore's).
    pub fn name<'a>(&'a self, full: &'a str) -> &'a str {
        match self {
            HeldAs::Lock => full,
            HeldAs::Read { of }
            | HeldAs::Write { of }
            | HeldAs::Permit { of, .. }
            | HeldAs::SemaphoreQueue { of } => of,
        }
    }

    /// One word for tables and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            HeldAs::Lock => "lock",
            HeldAs::Read { .. } => "read",
            HeldAs::Write { .. } => "write",
            HeldAs::Permit { .. } => "permit",
            HeldAs::SemaphoreQueue { .. } => "queue",
        }
    }
}

/// Whether the gate lets a newcomer stay: it is vacant, or held by the
/// newcomer's own `owner` in this session. Read from the stream leader,
/// then confirmed by a write that expects the gate's revision as read
/// ([`confirmed`]): a read alone may come from a deposed leader that has
/// not heard of a newer grant. A closed gate needs no confirming: backing
/// off is always safe.
pub(crate) async fn gate_open(
    inner: &Inner,
    gate: &LockName,
    owner: Option<&str>,
) -> Result<bool, LockError> {
    loop {
        let revision = match inner.store.read(gate).await {
            Ok(Current::Vacant { revision }) => revision,
            Ok(Current::Held { record, revision })
                if record.session == inner.session && Some(record.owner.as_str()) == owner =>
            {
                revision
            }
            Ok(Current::Held { .. }) => return Ok(false),
            Err(e) => return Err(super::acquire::read_error(gate, e)),
        };
        if confirmed(inner, gate, gate, false, revision).await? {
            return Ok(true);
        }
        // The gate moved since the read: read it again.
    }
}

/// Whether the last message of `filter` (with `under`, of every key below
/// it) is still `revision`, by a write only the stream's current leader can
/// commit ([`crate::store::LockStore::confirm`]), on the gate's mark key
/// (`N:~rw:mark`, `N:~sem:mark`).
pub(crate) async fn confirmed(
    inner: &Inner,
    gate: &LockName,
    filter: &LockName,
    under: bool,
    revision: u64,
) -> Result<bool, LockError> {
    let mark = match gate.as_str().rsplit_once(':') {
        Some((kind, _)) => LockName::new(&format!("{kind}:mark"))?,
        None => gate.clone(),
    };
    inner
        .store
        .confirm(&mark, filter, under, revision, MARK_TTL)
        .await
        .map_err(|source| LockError::Nats {
            name: gate.to_string(),
            op: "confirm",
            source,
        })
}

/// How long a confirmation's mark stays: the server's shortest TTL.
const MARK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The keys held under a name, kept up to date by a watch of them all.
pub(crate) struct Holders {
    under: LockName,
    watch: KeyWatch,
    held: HashSet<String>,
    /// The newest revision seen under the name (0: none).
    last: u64,
}

impl Holders {
    /// Starts watching every key under `under` and reads what they hold
    /// now; `None` if `deadline` passed first.
    pub(crate) async fn open(
        inner: &Inner,
        under: &LockName,
        deadline: Option<Instant>,
    ) -> Result<Option<Self>, LockError> {
        let (watch, pending) = inner
            .store
            .watch_under(under)
            .await
            .map_err(|source| watch_error(under, source))?;
        let mut holders = Holders {
            under: under.clone(),
            watch,
            held: HashSet::new(),
            last: 0,
        };
        let mut caught_up = pending == 0;
        while !caught_up {
            match holders.next(deadline).await? {
                Some(pending) => caught_up = pending == 0,
                None => return Ok(None),
            }
        }
        Ok(Some(holders))
    }

    /// The keys held now, as last seen.
    pub(crate) fn held(&self) -> &HashSet<String> {
        &self.held
    }

    /// The newest revision seen under the name: what a confirmation of
    /// [`Holders::held`] expects ([`confirmed`]).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Waits for the next change of a key under the name; returns how many
    /// more the server had queued, or `None` if `deadline` passed first.
    pub(crate) async fn next(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>, LockError> {
        let change = match within(deadline, self.watch.change()).await {
            None => return Ok(None),
            Some(None) => {
                return Err(watch_error(&self.under, "the watch ended".into()));
            }
            Some(Some(Err(source))) => return Err(watch_error(&self.under, source)),
            Some(Some(Ok(change))) => change,
        };
        self.last = self.last.max(change.revision);
        match change.current {
            Ok(Current::Held { .. }) => {
                self.held.insert(change.key);
            }
            Ok(Current::Vacant { .. }) => {
                self.held.remove(&change.key);
            }
            Err(source) => {
                return Err(LockError::Corrupt {
                    name: change.key,
                    source,
                })
            }
        }
        Ok(Some(change.pending))
    }
}

fn watch_error(name: &LockName, source: async_nats::Error) -> LockError {
    LockError::Nats {
        name: name.to_string(),
        op: "watch",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::HeldAs;

    #[test]
    fn held_keys_are_told_apart_by_their_names() {
        assert_eq!(HeldAs::of("account:42"), HeldAs::Lock);
        let read = HeldAs::of("ledger:~rw:read:S1");
        assert_eq!(
            read,
            HeldAs::Read {
                of: "ledger".into()
            }
        );
        assert_eq!(read.name("x"), "ledger");
        assert_eq!(HeldAs::of("ledger:~rw:write").kind(), "write");
        assert_eq!(
            HeldAs::of("bank:~sem:permit:3"),
            HeldAs::Permit {
                of: "bank".into(),
                index: 3
            }
        );
        assert_eq!(HeldAs::of("bank:~sem:queue").kind(), "queue");
        assert_eq!(HeldAs::of("bank:~sem:permit:x"), HeldAs::Lock);
    }
}
