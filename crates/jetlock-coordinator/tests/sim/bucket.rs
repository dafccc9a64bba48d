//! The simulated JetStream side: the locks bucket (CAS on the key's last
//! revision, per-key TTL expired by the server's clock into a `MaxAge`
//! marker, write ids stored with messages, revisions from one stream
//! sequence) and the request stream (de-duplication by message id,
//! deletion of finished requests).

use jetlock::record::LockRecord;
use jetlock::store::Current;
use jetlock_coordinator::{Applied, Stamp, WriteKind};
use std::collections::{BTreeMap, HashMap};

/// The last message of a key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    /// `None`: a release or expiry marker.
    pub record: Option<LockRecord>,
    /// Set on server-expiry markers (`Nats-Marker-Reason: MaxAge`).
    pub expired: bool,
    /// `Jetlock-Write-Id` and `Jetlock-Applied`, stored with the message.
    pub stamp: Stamp,
}

impl Entry {
    pub fn current(&self) -> Current {
        match &self.record {
            Some(record) => Current::Held {
                revision: self.revision,
                record: record.clone(),
            },
            None => Current::Vacant {
                revision: self.revision,
            },
        }
    }
}

#[derive(Default)]
pub struct Bucket {
    seq: u64,
    pub keys: BTreeMap<String, Entry>,
}

impl Bucket {
    pub fn current(&self, key: &str) -> Current {
        self.keys
            .get(key)
            .map_or(Current::Vacant { revision: 0 }, Entry::current)
    }

    fn revision(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |e| e.revision)
    }

    /// A CAS write: stored (its entry) only if the key's last revision is
    /// `expected`.
    pub fn cas(
        &mut self,
        key: &str,
        expected: u64,
        kind: &WriteKind,
        write_id: &str,
        applied: Applied,
    ) -> Option<Entry> {
        if self.revision(key) != expected {
            return None;
        }
        self.seq += 1;
        let record = match kind {
            WriteKind::Put { record, .. } => Some(record.clone()),
            WriteKind::Release => None,
        };
        let entry = Entry {
            revision: self.seq,
            record,
            expired: false,
            stamp: Stamp {
                write_id: Some(write_id.to_owned()),
                applied,
            },
        };
        self.keys.insert(key.to_owned(), entry.clone());
        Some(entry)
    }

    /// The server's TTL of revision `revision` ran out: a `MaxAge` marker,
    /// if that revision is still the key's last.
    pub fn expire(&mut self, key: &str, revision: u64) -> Option<Entry> {
        let e = self.keys.get(key)?;
        if e.revision != revision || e.record.is_none() {
            return None;
        }
        self.seq += 1;
        let entry = Entry {
            revision: self.seq,
            record: None,
            expired: true,
            stamp: Stamp::default(),
        };
        self.keys.insert(key.to_owned(), entry.clone());
        Some(entry)
    }
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub body: Vec<u8>,
    /// True time it was stored, µs.
    pub at: u64,
}

#[derive(Default)]
pub struct RequestStream {
    seq: u64,
    pub msgs: BTreeMap<u64, Stored>,
    dedup: HashMap<String, u64>,
}

impl RequestStream {
    /// Stores a message unless its id was seen within `window` µs.
    /// Returns its sequence when it is new.
    pub fn publish(
        &mut self,
        subject: &str,
        body: &[u8],
        msg_id: &str,
        now: u64,
        window: u64,
    ) -> Option<u64> {
        if let Some(&at) = self.dedup.get(msg_id) {
            if now.saturating_sub(at) < window {
                return None;
            }
        }
        self.dedup.insert(msg_id.to_owned(), now);
        self.seq += 1;
        self.msgs.insert(
            self.seq,
            Stored {
                subject: subject.to_owned(),
                body: body.to_vec(),
                at: now,
            },
        );
        Some(self.seq)
    }

    pub fn delete(&mut self, seq: u64) {
        self.msgs.remove(&seq);
    }
}
