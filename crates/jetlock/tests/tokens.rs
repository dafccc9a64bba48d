//! Fencing tokens never go back, against a real nats-server: not when the
//! locks bucket is deleted and created again (a new stream would count its
//! sequences from 1 again), and not when the bucket's stream is purged.
//! And a key outlives on the server the lease its holder believes in.

use jetlock::bucket::{first_sequence_derived, DEFAULT_BUCKET};
use jetlock::{Fence, FencingToken};
use jetlock_testkit::{client, single};
use std::time::SystemTime;

#[tokio::test]
async fn a_recreated_bucket_issues_tokens_above_the_old_ones() {
    let server = single();
    let old = client(&server.url(), 1).await;
    // A few writes on other keys raise the old bucket's sequence, as a
    // bucket in use would have.
    for i in 0..5 {
        old.lock(&format!("other:{i}"))
            .acquire()
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let fence = Fence::new();
    let stale = old.lock("account:1").acquire().await.expect("acquire");
    fence
        .admit("account:1", stale.token())
        .expect("the first holder's write");

    // The bucket is deleted and created again (what an operator's
    // `nats kv del` followed by `jetlock setup` or a coordinator start does).
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    js.delete_key_value(DEFAULT_BUCKET)
        .await
        .expect("delete the bucket");
    let new = client(&server.url(), 1).await;
    let stream = js
        .get_stream(format!("KV_{DEFAULT_BUCKET}"))
        .await
        .expect("the new bucket's stream");
    assert!(
        first_sequence_derived(&stream.cached_info().config),
        "{:?}",
        stream.cached_info().config
    );
    let holder = new.lock("account:1").acquire().await.expect("acquire");
    assert!(
        holder.token() > stale.token(),
        "the new bucket's grant has token {} after the old bucket's {}",
        holder.token(),
        stale.token()
    );
    // The fence that admitted the old holder admits the new one, and from
    // then on refuses the old one.
    fence
        .admit("account:1", holder.token())
        .expect("the new holder is admitted");
    fence
        .admit("account:1", stale.token())
        .expect_err("the old holder is fenced off");
    // Tokens stay exact for clients that read JSON numbers as doubles.
    assert!(holder.token().get() < jetlock::bucket::MAX_EXACT_TOKEN);
    holder.release().await.expect("release");
    drop(stale);
}

#[tokio::test]
async fn purging_the_bucket_does_not_reset_its_sequence() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let first = c.lock("account:2").acquire().await.expect("acquire");
    let before: FencingToken = first.token();
    first.release().await.expect("release");

    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    let mut stream = js
        .get_stream(format!("KV_{DEFAULT_BUCKET}"))
        .await
        .expect("the bucket's stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    stream.purge().await.expect("purge the stream");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!(state.messages, 0);
    assert_eq!(state.last_sequence, last, "a purge keeps the last sequence");
    assert_eq!(state.first_sequence, last + 1);

    let after = c.lock("account:2").acquire().await.expect("acquire");
    assert!(after.token() > before, "{} after {before}", after.token());
    after.release().await.expect("release");
}

#[test]
fn a_clock_before_the_release_or_past_2_53_creates_no_bucket() {
    use jetlock::bucket::first_sequence;
    use std::time::{Duration, UNIX_EPOCH};
    let now = first_sequence(SystemTime::now()).expect("this machine's clock");
    assert!(now > 1_796_000_000_000_000);
    assert!(first_sequence(UNIX_EPOCH).is_err(), "a reset clock");
    assert!(first_sequence(UNIX_EPOCH + Duration::from_secs(300 * 365 * 86_400)).is_err());
}

#[tokio::test]
async fn the_server_keeps_a_key_longer_than_its_holder_believes() {
    let server = single();
    let c = client(&server.url(), 1).await;
    let held = c
        .lock("account:3")
        .ttl(std::time::Duration::from_secs(10))
        .acquire()
        .await
        .expect("acquire");
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    let stream = js
        .get_stream(format!("KV_{DEFAULT_BUCKET}"))
        .await
        .expect("the bucket's stream");
    let grant = stream
        .get_last_raw_message_by_subject(&format!("$KV.{DEFAULT_BUCKET}.account.3"))
        .await
        .expect("the grant");
    // A 10 s lease: the server's clock may step 1 s forward or run 10%
    // fast before it could free the key while the holder still believes.
    assert_eq!(
        grant.headers.get("Nats-TTL").map(|v| v.as_str()),
        Some("12s")
    );
    held.release().await.expect("release");
}
