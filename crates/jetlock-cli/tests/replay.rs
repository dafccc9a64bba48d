//! Case 3 of issue 13 against a real nats-server: a coordinator write that
//! landed with its ack lost, and a full restart that replays a request the
//! coordinator had answered but not yet deleted, must not run a holder
//! operation twice. The coordinator talks to the server through a lossy
//! link (`common/lossy.rs`) that drops what a lossy network would: one
//! JetStream ack, or the coordinator's request deletions. Verdicts are what
//! clients see: hold counts in answers, whether another session can take
//! the lock.

mod common;

use common::json::JsonSession;
use common::lossy::{LossyLink, Seen};
use common::{coordinator, serve, single, PATIENCE};
use jetlock::protocol::{Answer, ErrorCode, REQUEST_STREAM};
use serde_json::json;
use std::time::Duration;

/// The coordinator's read of a key (after a write it got no answer for).
const KEY_READ: &str = "$JS.API.STREAM.MSG.GET.KV_JETLOCK_LOCKS";
const REQUEST_DELETE: &str = "$JS.API.STREAM.MSG.DELETE.JETLOCK_REQ";

async fn acquire(s: &mut JsonSession, id: &str, key: &str) -> Answer {
    s.send(
        "acquire",
        json!({"v": 1, "id": id, "key": key, "ttl_ms": 30_000, "wait_ms": 0}),
    )
    .await;
    s.next_final().await
}

async fn release(s: &mut JsonSession, id: &str, key: &str, token: u64) -> Answer {
    s.send(
        "release",
        json!({"v": 1, "id": id, "key": key, "token": token}),
    )
    .await;
    s.next_final().await
}

fn token_and_holds(a: &Answer) -> (u64, u32) {
    match a {
        Answer::Granted { token, holds, .. } => (*token, *holds),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn holds_left(a: &Answer) -> Option<u32> {
    match a {
        Answer::Released { holds, .. } => Some(*holds),
        _ => None,
    }
}

fn busy(a: &Answer) -> bool {
    matches!(
        a,
        Answer::Error {
            code: ErrorCode::Busy,
            ..
        }
    )
}

/// Waits until the request stream holds no message: every request so far
/// was answered and deleted.
async fn requests_deleted(url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(REQUEST_STREAM).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while stream.info().await.unwrap().state.messages > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the coordinator deletes answered requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_release_whose_ack_was_lost_leaves_the_lock_held() {
    let server = single();
    let link = LossyLink::to(server.port()).await;
    let _coordinator = coordinator(&link.url()).await;
    let key = "replay:partial";
    let mut h = JsonSession::new(&server.url()).await;
    let (token, _) = token_and_holds(&acquire(&mut h, "a1", key).await);
    assert_eq!(token_and_holds(&acquire(&mut h, "a2", key).await).1, 2);

    // The coordinator's write of the partial release lands; its ack does
    // not reach it. After its JetStream timeout it reads the key.
    link.lose_next_ack_of("$KV.JETLOCK_LOCKS.replay.partial");
    link.report_next_reply_to(KEY_READ);
    h.send(
        "release",
        json!({"v": 1, "id": "r1", "key": key, "token": token}),
    )
    .await;
    link.wait_for(|s| matches!(s, Seen::AckLost(_))).await;
    link.wait_for(|s| matches!(s, Seen::Replied(_))).await;

    // h still holds once: nobody else may take the lock.
    let mut other = JsonSession::new(&server.url()).await;
    let try_lock = acquire(&mut other, "t1", key).await;
    let partial = h.next_final().await;
    assert!(
        holds_left(&partial) == Some(1) && busy(&try_lock),
        "h released one of its 2 holds: answered {partial:?}; another session's \
         try-lock while h still holds one: {try_lock:?}"
    );
    let last = release(&mut h, "r2", key, token).await;
    assert_eq!(holds_left(&last), Some(0), "{last:?}");
    let after = acquire(&mut other, "t2", key).await;
    assert!(
        matches!(after, Answer::Granted { .. }),
        "freed by h's last release: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reentrant_acquire_whose_ack_was_lost_is_counted_once() {
    let server = single();
    let link = LossyLink::to(server.port()).await;
    let _coordinator = coordinator(&link.url()).await;
    let key = "replay:reenter";
    let mut h = JsonSession::new(&server.url()).await;
    let (token, _) = token_and_holds(&acquire(&mut h, "a1", key).await);

    link.lose_next_ack_of("$KV.JETLOCK_LOCKS.replay.reenter");
    link.report_next_reply_to(KEY_READ);
    h.send(
        "acquire",
        json!({"v": 1, "id": "a2", "key": key, "ttl_ms": 30_000, "wait_ms": 0}),
    )
    .await;
    link.wait_for(|s| matches!(s, Seen::AckLost(_))).await;
    link.wait_for(|s| matches!(s, Seen::Replied(_))).await;

    let mut other = JsonSession::new(&server.url()).await;
    let try_lock = acquire(&mut other, "t1", key).await;
    assert!(busy(&try_lock), "h holds it: {try_lock:?}");
    let again = h.next_final().await;
    let r1 = release(&mut h, "r1", key, token).await;
    let r2 = release(&mut h, "r2", key, token).await;
    let after = acquire(&mut other, "t2", key).await;
    assert!(
        matches!(again, Answer::Granted { holds: 2, .. })
            && holds_left(&r2) == Some(0)
            && matches!(after, Answer::Granted { .. }),
        "h acquired twice: answered {again:?}; then released twice: {r1:?}, {r2:?}; \
         another session's try-lock after h's last release: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_replaying_an_answered_partial_release_leaves_the_lock_held() {
    let server = single();
    let link = LossyLink::to(server.port()).await;
    let key = "replay:restart";
    let first = serve(&link.url(), &[]);
    let mut h = JsonSession::new(&server.url()).await;
    let (token, _) = token_and_holds(&acquire(&mut h, "a1", key).await);
    assert_eq!(token_and_holds(&acquire(&mut h, "a2", key).await).1, 2);
    requests_deleted(&server.url()).await;

    // The partial release is answered; its deletion from the request
    // stream never reaches the server, and the only coordinator dies.
    link.lose_publishes_to(Some(REQUEST_DELETE));
    let partial = release(&mut h, "r1", key, token).await;
    assert_eq!(holds_left(&partial), Some(1), "{partial:?}");
    link.wait_for(|s| matches!(s, Seen::PublishLost(_))).await;
    drop(first); // SIGKILL, reaped

    // A new coordinator replays the request stream from its first message.
    let _second = serve(&server.url(), &[]);
    let replayed = h.next_final().await;
    let mut other = JsonSession::new(&server.url()).await;
    let try_lock = acquire(&mut other, "t1", key).await;
    assert!(
        holds_left(&replayed) == Some(1) && busy(&try_lock),
        "the replayed partial release was answered {replayed:?}; another session's \
         try-lock while h still holds one: {try_lock:?}"
    );
    let last = release(&mut h, "r2", key, token).await;
    assert_eq!(holds_left(&last), Some(0), "{last:?}");
    let after = acquire(&mut other, "t2", key).await;
    assert!(
        matches!(after, Answer::Granted { .. }),
        "freed by h's last release: {after:?}"
    );
}
