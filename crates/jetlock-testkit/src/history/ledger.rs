//! The protected resource: what a fenced write accepted, and what it
//! refused.

use crate::belief::Mono;
use jetlock::FencingToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One write accepted by the [`FencedLedger`].
#[derive(Debug, Clone)]
pub struct Write {
    pub token: FencingToken,
    pub session: String,
    pub at: Mono,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) writes: HashMap<String, Vec<Write>>,
    pub(super) rejections: u64,
}

/// A resource protected by fencing tokens: per key, a write is accepted
/// only with a token above every token accepted so far, or equal to the
/// highest when it comes from the session that wrote it (one holder writes
/// many times with one token). Keeps every accepted write for
/// [`check`](super::check).
#[derive(Debug, Clone, Default)]
pub struct FencedLedger(pub(super) Arc<Mutex<Ledger>>);

impl FencedLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes to `key` as `session` holding `token`; `false` (and counted)
    /// when refused.
    pub fn write(&self, key: &str, session: &str, token: FencingToken) -> bool {
        let mut l = self.0.lock().expect("ledger lock");
        let accepted = match l.writes.get(key).and_then(|w| w.last()) {
            None => true,
            Some(last) => token > last.token || (token == last.token && session == last.session),
        };
        if accepted {
            l.writes.entry(key.to_owned()).or_default().push(Write {
                token,
                session: session.to_owned(),
                at: Mono::now(),
            });
        } else {
            l.rejections += 1;
        }
        accepted
    }

    /// The highest token accepted for `key`.
    pub fn highest(&self, key: &str) -> Option<FencingToken> {
        let l = self.0.lock().expect("ledger lock");
        l.writes.get(key).and_then(|w| w.last()).map(|w| w.token)
    }

    pub fn rejections(&self) -> u64 {
        self.0.lock().expect("ledger lock").rejections
    }

    pub fn accepted(&self) -> usize {
        let l = self.0.lock().expect("ledger lock");
        l.writes.values().map(Vec::len).sum()
    }
}
