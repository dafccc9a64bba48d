//! Locks over several buckets: which of a deployment's K buckets holds a
//! lock, and what the buckets are called.
//!
//! One bucket is one stream, and one stream has one Raft leader that orders
//! every write to it: at some rate that leader is the ceiling. A deployment
//! made with K > 1 buckets spreads its locks over K streams whose leaders
//! sit on different servers (`jetlock setup --buckets K`). Bucket 0 is the
//! one every process is pointed at (`JETLOCK_LOCKS`); buckets 1..K are
//! named after it (`JETLOCK_LOCKS_1`, …). K is fixed when the deployment is
//! made and recorded in bucket 0's stream metadata ([`BUCKETS_KEY`]), so
//! every process computes the same bucket for a key from the key alone,
//! and a key never changes bucket: its fencing tokens stay the revisions
//! of one stream, increasing.
//!
//! Which bucket: `xxh3_64(route) mod K` over the bytes of the key's
//! *route* ([`route`]):
//!
//! - the key up to its first segment that starts with `~` (escaped `=7E`),
//!   so a read/write lock's or a semaphore's parts (`name:~rw:…`,
//!   `name:~sem:…`) live in their lock's bucket: they are watched together
//!   (one filter, `<key>.>`) and confirmed against each other;
//! - of that, the text between the first `{` and the next `}` if it is not
//!   empty (a *hash tag*, as Redis Cluster has): locks taken together in one
//!   atomic set must live in one bucket, and `account:{7}:debit` and
//!   `account:{7}:credit` do.
//!
//! PROTOCOL.md ("Key layouts") has the rule and test vectors for clients
//! in other languages; so does `tests` below.

use xxhash_rust::xxh3::xxh3_64;

/// Stream metadata key on bucket 0 giving K, the number of buckets.
/// Absent means one.
pub const BUCKETS_KEY: &str = "jetlock.buckets";
/// Stream metadata key on buckets 1..K naming bucket 0: a process pointed
/// at one of them by mistake refuses it rather than take locks in it alone.
pub const SHARD_OF_KEY: &str = "jetlock.shard_of";

/// Most buckets a deployment may spread its locks over.
pub const MAX_BUCKETS: u32 = 16;

/// The name of bucket `index` of the deployment whose bucket 0 is `first`.
pub fn bucket_name(first: &str, index: u32) -> String {
    if index == 0 {
        first.to_owned()
    } else {
        format!("{first}_{index}")
    }
}

/// The part of a KV key that decides its bucket (see the module's rules).
pub fn route(key: &str) -> &str {
    let root = match key.find(".=7E") {
        Some(at) => &key[..at],
        None => key,
    };
    // Every `=` in a key starts a three-character escape or is a whole
    // (empty) segment, so `=7B` is only ever an escaped `{`.
    if let Some(open) = root.find("=7B") {
        let rest = &root[open + 3..];
        if let Some(close) = rest.find("=7D") {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    root
}

/// Stream metadata key on bucket 0 giving P, the number of request
/// partitions (`docs/SCALING.md`, "Partitioned coordinators"). Absent means
/// the deployment's requests are not partitioned.
pub const PARTITIONS_KEY: &str = "jetlock.partitions";

/// Most request partitions a deployment may have: each is a subject of the
/// request stream and a filter of the consumer of the coordinator owning it.
pub const MAX_PARTITIONS: u32 = 256;

/// Partitions a deployment made by `jetlock setup` or `jetlock serve` has
/// unless told otherwise: enough that a few coordinators share them evenly
/// (rendezvous hashing gives each of 3 about 21), few enough that a
/// coordinator's consumer filter stays short.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// Which of `partitions` request partitions `key`'s requests go to: the
/// hash of its route, as for buckets, so a lock's parts share its
/// partition. With one partition or none, 0.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    (xxh3_64(route(key).as_bytes()) % u64::from(partitions)) as u32
}

/// Which of `buckets` buckets holds `key`.
pub fn bucket_of(key: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    (xxh3_64(route(key).as_bytes()) % u64::from(buckets)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::LockName;

    fn key(name: &str) -> String {
        LockName::new(name).unwrap().key().to_owned()
    }

    #[test]
    fn parts_of_a_lock_route_as_the_lock() {
        assert_eq!(route(&key("account:42")), "account.42");
        assert_eq!(route(&key("account:42:~rw:read:s1")), "account.42");
        assert_eq!(route(&key("q:~sem:permit:3")), "q");
        // A `~` inside a segment is not a part.
        assert_eq!(route(&key("a~b:c")), "a=7Eb.c");
    }

    #[test]
    fn a_hash_tag_routes_by_its_text() {
        assert_eq!(route(&key("account:{7}:debit")), "7");
        assert_eq!(route(&key("x{ab.c}y")), "ab=2Ec");
        assert_eq!(route(&key("{7}:~sem:gate")), "7");
        // An empty or unclosed tag is no tag.
        assert_eq!(route(&key("a{}b")), "a=7B=7Db");
        assert_eq!(route(&key("a{b")), "a=7Bb");
    }

    /// The vectors PROTOCOL.md gives, for clients in other languages.
    #[test]
    fn test_vectors() {
        assert_eq!(bucket_of(&key("account:42"), 1), 0);
        assert_eq!(xxh3_64(b"account.42"), 0xe5cb_9394_9e42_8715);
        let vectors = [
            ("account:42", 3, 0),
            ("account:43", 3, 2),
            ("account:{7}:debit", 3, 0),
            ("account:{7}:credit", 3, 0),
            ("orders", 16, 11),
        ];
        for (name, k, want) in vectors {
            assert_eq!(bucket_of(&key(name), k), want, "{name} over {k}");
        }
    }

    /// The partition vectors PROTOCOL.md gives.
    #[test]
    fn partition_vectors() {
        let vectors = [
            ("account:42", 64, 0xe5cb_9394_9e42_8715 % 64),
            ("account:42:~rw:read:s1", 64, 0xe5cb_9394_9e42_8715 % 64),
            ("account:42", 1, 0),
        ];
        for (name, p, want) in vectors {
            assert_eq!(
                u64::from(partition_of(&key(name), p)),
                want,
                "{name} over {p}"
            );
        }
        assert_eq!(partition_of(&key("account:42"), 64), 21);
    }

    #[test]
    fn keys_spread_over_every_bucket() {
        let mut seen = [0u32; 3];
        for i in 0..300 {
            seen[bucket_of(&key(&format!("account:{i}")), 3) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 70), "{seen:?}");
    }

    #[test]
    fn names_of_the_buckets() {
        assert_eq!(bucket_name("JETLOCK_LOCKS", 0), "JETLOCK_LOCKS");
        assert_eq!(bucket_name("JETLOCK_LOCKS", 2), "JETLOCK_LOCKS_2");
    }
}
