//! Micro-benchmarks of the pure codecs on every lock operation's path:
//! lock name → KV key (every `client.lock(name)`), KV key → lock name
//! (listings), and the ownership record's encode (every grant and renewal)
//! and decode (every contended acquire and every watched change).
//!
//! Run with `cargo bench --bench codec` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion};
use jetlock::record::LockRecord;
use jetlock::LockName;
use std::hint::black_box;

/// A name that is already a valid key apart from `:` → `.`.
const TYPICAL_NAME: &str = "account:42";
/// A name where most bytes need escaping (non-ASCII, space, `#`, `/`, `.`).
const ESCAPED_NAME: &str = "päyment order #7 / eu.west";

/// A record as a client writes it: pid-based owner, nuid session.
fn typical_record() -> LockRecord {
    LockRecord {
        owner: "jetlock-4242#17".to_owned(),
        session: "S3cZ9kPq1mW0aB2cD4eF6g".to_owned(),
        acquired_ms: 1_764_000_000_000,
        lease_ms: 10_000,
        holds: 1,
        token: 123_456,
    }
}

fn names(c: &mut Criterion) {
    let mut group = c.benchmark_group("LockName");
    group.bench_function("new/typical", |b| {
        b.iter(|| LockName::new(black_box(TYPICAL_NAME)))
    });
    group.bench_function("new/escaped", |b| {
        b.iter(|| LockName::new(black_box(ESCAPED_NAME)))
    });
    for (label, name) in [("typical", TYPICAL_NAME), ("escaped", ESCAPED_NAME)] {
        let key = LockName::new(name)
            .expect("a valid lock name")
            .key()
            .to_owned();
        group.bench_function(format!("from_key/{label}"), |b| {
            b.iter(|| LockName::from_key(black_box(&key)))
        });
    }
    group.finish();
}

fn records(c: &mut Criterion) {
    let record = typical_record();
    let bytes = record.encode();
    let mut group = c.benchmark_group("LockRecord");
    group.bench_function("encode", |b| b.iter(|| black_box(&record).encode()));
    group.bench_function("decode", |b| {
        b.iter(|| LockRecord::decode(black_box(&bytes)))
    });
    group.finish();
}

criterion_group!(benches, names, records);
criterion_main!(benches);
