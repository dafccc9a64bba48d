//! What nats-server guarantees for an atomic batch of CAS writes
//! (`store/batch.rs`), against a real server. `atomic.rs` tests
//! `lock_all(..).atomic()` on top of it.

use futures::future::join_all;
use jetlock::async_nats::{self, jetstream};
use jetlock::record::LockRecord;
use jetlock::store::{BatchError, BatchPut, Current, LockStore, WriteId};
use jetlock::LockName;
use jetlock_testkit::{client, single, PATIENCE};
use std::time::Duration;
use tokio::time::timeout;

const LEASE: Duration = Duration::from_secs(10);

fn names(keys: &[&str]) -> Vec<LockName> {
    keys.iter().map(|k| LockName::new(k).unwrap()).collect()
}

fn record(session: &str) -> LockRecord {
    LockRecord {
        owner: "test".into(),
        session: session.into(),
        acquired_ms: 0,
        lease_ms: LEASE.as_millis() as u64,
        holds: 1,
        token: 0,
    }
}

fn write(id: &str) -> WriteId<'_> {
    WriteId { id, resend: false }
}

/// A put of `record` to each key, expecting it to have no message.
fn unwritten<'a>(keys: &'a [LockName], record: &'a LockRecord) -> Vec<BatchPut<'a>> {
    keys.iter()
        .map(|name| BatchPut {
            name,
            record,
            expected: 0,
        })
        .collect()
}

async fn read_all(store: &LockStore, names: &[LockName]) -> Vec<Current> {
    join_all(names.iter().map(|n| store.read(n)))
        .await
        .into_iter()
        .map(|r| r.expect("read"))
        .collect()
}

/// The server checks `Nats-Expected-Last-Subject-Sequence` on every
/// message of a batch, and one failed check stores none of them: whichever
/// position the held key has, the free keys stay without a message.
#[tokio::test]
async fn one_failed_subject_check_rejects_the_whole_batch() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let other = record("other-session");
    let mine = record(c.session());
    for held in 0..3 {
        let keys = names(&[
            &format!("fact{held}:a"),
            &format!("fact{held}:b"),
            &format!("fact{held}:c"),
        ]);
        let taken = store
            .put(&keys[held], &other, 0, LEASE, write("other"))
            .await
            .expect("the other holder's write");
        let puts = unwritten(&keys, &mine);
        let result = store.put_all(&puts, LEASE, write("mine")).await;
        assert!(matches!(result, Err(BatchError::Conflict)), "{result:?}");
        for (i, current) in read_all(store, &keys).await.into_iter().enumerate() {
            if i == held {
                assert_eq!(
                    current,
                    Current::Held {
                        revision: taken.revision,
                        record: other.clone()
                    }
                );
            } else {
                assert_eq!(current, Current::Vacant { revision: 0 }, "key {i}");
            }
        }
    }
}

/// A batch that passes is stored with consecutive revisions, and each
/// message's `Nats-TTL` expires its key on the server.
#[tokio::test]
async fn a_batch_lands_in_consecutive_revisions_and_each_key_expires_by_its_ttl() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let keys = names(&["ttl:a", "ttl:b", "ttl:c"]);
    let mine = record(c.session());
    let puts = unwritten(&keys, &mine);
    let written = store
        .put_all(&puts, Duration::from_secs(1), write("short"))
        .await
        .expect("the batch lands");
    let revisions: Vec<u64> = written.iter().map(|w| w.revision).collect();
    assert_eq!(revisions[1], revisions[0] + 1);
    assert_eq!(revisions[2], revisions[0] + 2);
    for (current, revision) in read_all(store, &keys).await.into_iter().zip(&revisions) {
        assert_eq!(
            current,
            Current::Held {
                revision: *revision,
                record: mine.clone()
            }
        );
    }
    for (name, revision) in keys.iter().zip(&revisions) {
        let mut watch = store.watch_from(name, revision + 1).await.unwrap();
        let (_, expired) = timeout(PATIENCE, watch.next())
            .await
            .expect("the key expires")
            .expect("watching")
            .expect("a change");
        assert!(
            matches!(expired, Ok(Current::Vacant { .. })),
            "{name}: {expired:?}"
        );
    }
}

/// A batch sent with raw headers, the last message committing it: the
/// commit's ack or the server's refusal of the whole batch.
async fn raw_batch(
    js: &jetstream::Context,
    messages: Vec<(&str, async_nats::HeaderMap)>,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let id = nuid::next().to_string();
    let last = messages.len() - 1;
    for (i, (subject, mut headers)) in messages.into_iter().enumerate() {
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i < last {
            js.client()
                .publish_with_headers(subject.to_owned(), headers, "x".into())
                .await
                .unwrap();
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            return js
                .publish_with_headers(subject.to_owned(), headers, "x".into())
                .await
                .unwrap()
                .await;
        }
    }
    unreachable!("the last message returns")
}

fn error_code(e: &jetstream::context::PublishError) -> Option<u64> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|api| api.error_code().0)
}

/// `Nats-Msg-Id` is allowed in a batch (nats-server 2.14+), and a duplicate
/// rejects the whole batch; `Nats-Expected-Last-Msg-Id` is refused.
#[tokio::test]
async fn msg_ids_in_a_batch_dedup_it_whole_and_expected_msg_ids_are_refused() {
    let server = single();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "FACTS".into(),
            subjects: vec!["facts.>".into()],
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let with = |pairs: &[(&str, &str)]| {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    };
    let ack = raw_batch(
        &js,
        vec![
            ("facts.a", with(&[("Nats-Msg-Id", "m1")])),
            ("facts.b", with(&[])),
        ],
    )
    .await
    .expect("a batch with a message id lands");
    assert_eq!(ack.batch_size, Some(2));
    let duplicate = raw_batch(
        &js,
        vec![
            ("facts.c", with(&[])),
            ("facts.d", with(&[("Nats-Msg-Id", "m1")])),
        ],
    )
    .await
    .expect_err("a duplicate message id rejects the batch");
    assert_eq!(error_code(&duplicate), Some(10201), "{duplicate}");
    let refused = raw_batch(
        &js,
        vec![
            ("facts.e", with(&[])),
            ("facts.f", with(&[("Nats-Expected-Last-Msg-Id", "m1")])),
        ],
    )
    .await
    .expect_err("an expected message id is refused");
    assert_eq!(error_code(&refused), Some(10177), "{refused}");
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2,
        "only the first batch"
    );
}

/// A re-send after a lost ack conflicts with its own first send; the write
/// id on every key tells it landed, and gives its revisions. A first send,
/// or another write id, is a real conflict.
#[tokio::test]
async fn a_resent_batch_that_landed_is_recognised_by_its_write_id() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let store = c.store();
    let keys = names(&["resend:a", "resend:b"]);
    let mine = record(c.session());
    let puts = unwritten(&keys, &mine);
    let landed = store.put_all(&puts, LEASE, write("w-1")).await.unwrap();
    let again = WriteId {
        id: "w-1",
        resend: true,
    };
    let recovered = store.put_all(&puts, LEASE, again).await.unwrap();
    assert!(recovered.iter().all(|w| w.recovered));
    let revisions =
        |w: &[jetlock::store::Written]| w.iter().map(|w| w.revision).collect::<Vec<_>>();
    assert_eq!(revisions(&recovered), revisions(&landed));
    for write in [
        write("w-1"),
        WriteId {
            id: "w-2",
            resend: true,
        },
    ] {
        let result = store.put_all(&puts, LEASE, write).await;
        assert!(matches!(result, Err(BatchError::Conflict)), "{result:?}");
    }
}
