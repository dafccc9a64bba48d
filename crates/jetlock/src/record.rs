//! The ownership record: the value stored under a lock's KV key.
//!
//! Encoding (documented in `docs/ARCHITECTURE.md`): two header bytes, the
//! magic `b'J'` and the format version, then the fields encoded by bincode 2's
//! standard configuration (varint integers, length-prefixed strings). A
//! typical record is 40–60 bytes, a third of the same record in JSON; it is
//! read on every contended acquire, so it is kept small. Operators read it
//! through `jetlock` (which decodes it); services in other languages never
//! need to, they speak the JSON protocol to the coordinator.
//!
//! Decoding is defensive: the record came from the network, so a wrong magic,
//! an unknown version, a truncated body, trailing bytes or an oversized
//! value are typed errors, never panics.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC: u8 = b'J';
/// Current record format version.
pub const RECORD_VERSION: u8 = 1;
/// Largest encoded record accepted when decoding.
pub const MAX_RECORD_BYTES: usize = 1024;

/// Who holds a lock, written by the granting CAS and every renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Owner id: the identity reentrancy is keyed on.
    pub owner: String,
    /// Session id of the client that holds the lock.
    pub session: String,
    /// Wall-clock time of the grant, in ms since the Unix epoch. For people
    /// only: nothing reads it back to decide anything.
    pub acquired_ms: u64,
    /// Lease length in ms (the key's TTL, renewed while held).
    pub lease_ms: u64,
    /// Reentrant hold count (1 for a first acquisition).
    pub holds: u32,
    /// Fencing token of the grant. Zero in the granting write itself (its
    /// token is that write's revision, unknown until the server assigns it);
    /// renewals carry the grant's revision here.
    pub token: u64,
}

impl LockRecord {
    /// The fencing token of the grant this record belongs to, given the
    /// revision the record was read at.
    pub fn token_at(&self, revision: u64) -> u64 {
        if self.token == 0 {
            revision
        } else {
            self.token
        }
    }

    /// Encodes the record: magic, version, bincode body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(MAGIC);
        out.push(RECORD_VERSION);
        bincode::serde::encode_into_std_write(self, &mut out, bincode::config::standard())
            .expect("encoding a record into a Vec cannot fail");
        out
    }

    /// [`LockRecord::encode`], as the payload of a write: one allocation of
    /// the exact size (a `Vec` with room to spare would cost `Bytes` a
    /// second one).
    pub fn encode_bytes(&self) -> Bytes {
        let mut buf = [0u8; MAX_RECORD_BYTES];
        buf[0] = MAGIC;
        buf[1] = RECORD_VERSION;
        match bincode::serde::encode_into_slice(self, &mut buf[2..], bincode::config::standard()) {
            Ok(len) => Bytes::copy_from_slice(&buf[..2 + len]),
            // Longer than a reader accepts; written all the same, as
            // `encode` would.
            Err(_) => Bytes::from(self.encode()),
        }
    }

    /// Decodes a record read from the bucket.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge { len: bytes.len() });
        }
        match bytes {
            [] | [_] => Err(RecordError::Truncated),
            [m, ..] if *m != MAGIC => Err(RecordError::NotARecord),
            [_, v, ..] if *v != RECORD_VERSION => Err(RecordError::UnsupportedVersion(*v)),
            [_, _, body @ ..] => {
                let config = bincode::config::standard().with_limit::<MAX_RECORD_BYTES>();
                let (record, used) = bincode::serde::decode_from_slice(body, config)
                    .map_err(|e| RecordError::Malformed(e.to_string()))?;
                if used != body.len() {
                    return Err(RecordError::Malformed(format!(
                        "{} trailing bytes",
                        body.len() - used
                    )));
                }
                Ok(record)
            }
        }
    }
}

/// Why a value in the locks bucket is not a readable record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("lock record is truncated")]
    Truncated,
    #[error("value is not a jetlock record (wrong magic byte)")]
    NotARecord,
    #[error("lock record version {0} is not supported by this jetlock (supports {RECORD_VERSION}); upgrade jetlock")]
    UnsupportedVersion(u8),
    #[error("lock record is {len} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge { len: usize },
    #[error("lock record is malformed: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LockRecord {
        LockRecord {
            owner: "worker-1/7Hq2".into(),
            session: "S3cZ9kPq1mW0aB2c".into(),
            acquired_ms: 1_764_000_000_000,
            lease_ms: 10_000,
            holds: 1,
            token: 0,
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let bytes = sample().encode();
        assert_eq!(&bytes[..2], &[MAGIC, RECORD_VERSION]);
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
        assert_eq!(LockRecord::decode(&bytes).unwrap(), sample());
    }

    /// The exact bytes of a v1 record, as documented in docs/PROTOCOL.md.
    /// If this changes, the format changed: bump the version instead.
    #[test]
    fn v1_golden_bytes() {
        let r = LockRecord {
            owner: "w1#1".into(),
            session: "S1".into(),
            acquired_ms: 1_764_000_000_000,
            lease_ms: 10_000,
            holds: 1,
            token: 0,
        };
        let golden = [
            0x4a, 0x01, // magic 'J', version 1
            0x04, b'w', b'1', b'#', b'1', // owner
            0x02, b'S', b'1', // session
            0xfd, 0x00, 0xe8, 0x97, 0xb6, 0x9a, 0x01, 0x00, 0x00, // acquired_ms (u64 varint)
            0xfb, 0x10, 0x27, // lease_ms = 10000 (u16 varint)
            0x01, // holds
            0x00, // token
        ];
        assert_eq!(r.encode(), golden);
        assert_eq!(LockRecord::decode(&golden).unwrap(), r);
    }

    #[test]
    fn the_payload_of_a_write_is_the_encoding() {
        let mut r = sample();
        assert_eq!(r.encode_bytes(), r.encode());
        // Past what a reader accepts, still the same bytes.
        r.owner = "o".repeat(MAX_RECORD_BYTES);
        assert_eq!(r.encode_bytes(), r.encode());
    }

    #[test]
    fn token_comes_from_revision_until_renewed() {
        let mut r = sample();
        assert_eq!(r.token_at(17), 17);
        r.token = 17;
        assert_eq!(r.token_at(20), 17);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        let good = sample().encode();
        assert_eq!(LockRecord::decode(b""), Err(RecordError::Truncated));
        assert_eq!(LockRecord::decode(b"J"), Err(RecordError::Truncated));
        assert_eq!(
            LockRecord::decode(b"{\"owner\":1}"),
            Err(RecordError::NotARecord)
        );
        assert_eq!(
            LockRecord::decode(&[MAGIC, 9, 0]),
            Err(RecordError::UnsupportedVersion(9))
        );
        assert!(matches!(
            LockRecord::decode(&good[..good.len() - 3]),
            Err(RecordError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            LockRecord::decode(&trailing),
            Err(RecordError::Malformed(_))
        ));
        assert!(matches!(
            LockRecord::decode(&vec![MAGIC; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge { .. })
        ));
        // A string length prefix claiming far more than the value holds.
        assert!(
            LockRecord::decode(&[MAGIC, RECORD_VERSION, 0xFC, 0xFF, 0xFF, 0xFF, 0x7F]).is_err()
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LockRecord::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(owner in ".{0,40}", session in "[A-Za-z0-9]{0,22}",
                                    acquired_ms: u64, lease_ms: u64, holds: u32, token: u64) {
            let r = LockRecord { owner, session, acquired_ms, lease_ms, holds, token };
            prop_assert_eq!(&r.encode()[..], &r.encode_bytes()[..]);
            prop_assert_eq!(LockRecord::decode(&r.encode()).unwrap(), r);
        }
    }
}
