//! Strings that many waiters and requests repeat (a session id, an owner
//! id, a key), kept once: [`Shared`] is a pointer to one copy that
//! [`Strings`] hands out.
//!
//! The pointer is thin, 8 bytes (an [`ArcStr`] keeps the length beside
//! the count, not beside the pointer), where an `Arc<str>` is 16: a
//! waiter holds three, its request's entry three more and its timer one,
//! 56 bytes per waiter in tables that are up to twice their contents.

use crate::Hasher;
use arcstr::ArcStr;
use hashbrown::HashTable;
use std::borrow::Borrow;
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Deref;

/// A string shared by everything that holds it; compares and hashes as
/// the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Shared(ArcStr);

impl Deref for Shared {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Shared {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Shared {
    /// A copy of its own, not shared: for looking one up.
    fn from(s: &str) -> Self {
        Shared(ArcStr::from(s))
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Shared {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Shared {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Shared {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Shared> for String {
    fn eq(&self, other: &Shared) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Shared> for str {
    fn eq(&self, other: &Shared) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Shared> for &str {
    fn eq(&self, other: &Shared) -> bool {
        **self == *other.0
    }
}

/// The shared strings in use, each once.
#[derive(Default)]
pub(super) struct Strings {
    table: HashTable<Shared>,
    hasher: Hasher,
}

impl Strings {
    /// The shared copy of `s`.
    pub(super) fn get(&mut self, s: &str) -> Shared {
        let hash = self.hasher.hash_one(s);
        let hasher = &self.hasher;
        self.table
            .entry(hash, |t| *t.0 == *s, |t| hasher.hash_one(&*t.0))
            .or_insert_with(|| Shared(ArcStr::from(s)))
            .get()
            .clone()
    }

    /// Forgets the strings nothing else holds.
    pub(super) fn sweep(&mut self) {
        // `None`: a static string (the empty one), which costs nothing.
        self.table
            .retain(|t| ArcStr::strong_count(&t.0).is_some_and(|n| n > 1));
    }
}
