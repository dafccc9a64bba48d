//! The revision of the last release marker this session wrote for a key:
//! the compare-and-swap precondition of the next grant of that name, so
//! taking again a name this client released is one round trip.
//!
//! A hint only saves a round trip (a wrong or missing one costs a refused
//! write and a read), so the table is a fixed array of slots chosen by the
//! key's hash: remembering and taking lock one slot and allocate nothing,
//! and a newer hint in the same slot replaces the older. A map would cost
//! an insert per release and need a cap, and clearing it at the cap would
//! drop every hint at once.

use crate::name::LockName;
use std::hash::BuildHasher;
use std::sync::{Mutex, OnceLock};

/// Slots: hints kept for up to this many recently released names at once.
const SLOTS: usize = 4096;

type Slot = Mutex<Option<(LockName, u64)>>;

#[derive(Default)]
pub(crate) struct Hints {
    /// Allocated at the first release: a client that never releases pays
    /// nothing.
    slots: OnceLock<Box<[Slot]>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Hints {
    fn slot(&self, name: &LockName) -> &Slot {
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| Mutex::new(None)).collect());
        let i = self.hasher.hash_one(name.key()) as usize % SLOTS;
        &slots[i]
    }

    /// The hint for `name`, taken out (0: none).
    pub(crate) fn take(&self, name: &LockName) -> u64 {
        if self.slots.get().is_none() {
            return 0;
        }
        let mut slot = self.slot(name).lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some((held, revision)) if held == *name => revision,
            other => {
                *slot = other;
                0
            }
        }
    }

    /// Remembers `revision` as `name`'s release marker.
    pub(crate) fn remember(&self, name: &LockName, revision: u64) {
        let mut slot = self.slot(name).lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some((name.clone(), revision));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_taken_once_and_only_by_its_name() {
        let hints = Hints::default();
        let a = LockName::new("account:1").unwrap();
        assert_eq!(hints.take(&a), 0, "none yet");
        hints.remember(&a, 7);
        hints.remember(&a, 9);
        assert_eq!(hints.take(&a), 9, "the newest");
        assert_eq!(hints.take(&a), 0, "taken");
        // Another name in the same slot replaces it, and never reads it.
        hints.remember(&a, 11);
        let other = (2..)
            .map(|i| LockName::new(&format!("account:{i}")).unwrap())
            .find(|n| std::ptr::eq(hints.slot(n), hints.slot(&a)))
            .expect("some name shares the slot");
        assert_eq!(hints.take(&other), 0);
        assert_eq!(hints.take(&a), 11, "a miss leaves the hint");
        hints.remember(&a, 13);
        hints.remember(&other, 15);
        assert_eq!(hints.take(&a), 0, "replaced");
        assert_eq!(hints.take(&other), 15);
    }
}
