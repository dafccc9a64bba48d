//! The key states, found by their key.
//!
//! A table of pointers to the states, each found by the key it holds:
//! with a map from key to state every held lock would pay for its key a
//! second time (a `String` in the slot and its heap copy) and for a slot
//! three times as wide, in a table that doubles as it grows.

use super::KeyState;
use crate::Hasher;
use hashbrown::HashTable;
use jetlock::name::LockName;
use std::hash::BuildHasher;

#[derive(Default)]
pub(super) struct Keys {
    table: HashTable<Box<KeyState>>,
    hasher: Hasher,
}

impl Keys {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&KeyState> {
        self.table
            .find(self.hash(key), |ks| ks.key() == key)
            .map(|ks| &**ks)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut KeyState> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |ks| ks.key() == key)
            .map(|ks| &mut **ks)
    }

    /// The state of `name`'s key, new if it had none.
    pub(super) fn get_or_insert(&mut self, name: &LockName) -> &mut KeyState {
        let key = name.key();
        let hash = self.hash(key);
        let hasher = &self.hasher;
        let entry = self
            .table
            .entry(hash, |ks| ks.key() == key, |ks| hasher.hash_one(ks.key()));
        entry
            .or_insert_with(|| Box::new(KeyState::new(name)))
            .into_mut()
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Box<KeyState>> {
        let hash = self.hash(key);
        let entry = self.table.find_entry(hash, |ks| ks.key() == key).ok()?;
        Some(entry.remove().0)
    }

    /// Puts back a state taken out with [`Keys::remove`]; its key has
    /// none.
    pub(super) fn insert(&mut self, ks: Box<KeyState>) {
        let hash = self.hash(ks.key());
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, ks, |ks| hasher.hash_one(ks.key()));
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut KeyState) -> bool) {
        self.table.retain(|ks| keep(ks));
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &KeyState)> {
        self.table.iter().map(|ks| (ks.key(), &**ks))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &KeyState> {
        self.table.iter().map(|ks| &**ks)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.table.iter().map(|ks| ks.key())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{KeyState, Shared, Tracked, Waiter};
    use std::mem::size_of;

    /// The coordinator's memory per held lock and per waiter is mostly
    /// these two (`jetlock bench --only memory`): 88 bytes is a 96-byte
    /// allocation, 96 would be 112. A waiter's three strings are thin
    /// pointers (`Shared`); fat ones would make it 104 bytes.
    #[test]
    fn key_state_and_waiter_sizes() {
        let (key_state, waiter) = (size_of::<KeyState>(), size_of::<Waiter>());
        assert!(key_state <= 88, "a KeyState is {key_state} bytes");
        assert!(waiter <= 80, "a Waiter is {waiter} bytes");
    }

    /// Every waiter also has an entry in the engine's requests (and one in
    /// its timers): with thin strings 48 bytes, with fat ones 72.
    #[test]
    fn request_entry_size() {
        let entry = size_of::<((Shared, Shared), Tracked)>();
        assert!(entry <= 48, "a request's entry is {entry} bytes");
    }
}
