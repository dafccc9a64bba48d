//! The bad-input corpus (DESIGN.md invariant 6): malformed, oversized,
//! forged, replayed and out-of-date requests, sent as raw bytes by plain
//! NATS clients to a real nats-server and an in-process coordinator.
//!
//! Each case is a row: who sends it, the op, the raw body, the lock it
//! aims at, and the documented outcome (`docs/PROTOCOL.md`, "Error codes").
//! For every row the harness checks that
//!
//! - the answer on `jetlock.to.<session>` carries the documented code (or
//!   the stream refused the publish), and that it is the only answer: a
//!   barrier request from the same session follows every row, and its
//!   answer must come next;
//! - the coordinator still answers that good request: nothing panicked;
//! - nothing changed that the row does not expect: the key's last revision
//!   in the locks bucket, the bucket's last sequence, and the key's `lock.*`
//!   events in `JETLOCK_EV` (a consumer filtered on
//!   `jetlock.ev.lock.*.<key>`).
//!
//! `docs/RELIABILITY.md` lists the groups and how to run them.

mod harness;
mod rows;

use futures::StreamExt;
use harness::{granted_token, lock_events, raw_nats, store, Cast, Corpus, Publish};
use jetlock::bucket::DEFAULT_BUCKET;
use jetlock::events::EventKind;
use jetlock::protocol::{Answer, ErrorCode::*, REQUEST_STREAM};
use jetlock::FencingToken;
use jetlock_testkit::json::JsonSession;
use jetlock_testkit::{ExclusionChecker, PATIENCE};
use rows::LONG;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_documented_code_and_change_nothing() {
    let mut corpus = Corpus::start().await;
    let mut cast = Cast::new(&corpus.url).await;
    let rows = rows::malformed_rows();
    corpus.run(&mut cast, &rows, &[]).await;
    let unstored = corpus.run_unstored(&mut cast, &rows, &[]).await;
    assert!(unstored >= 7, "{unstored} release rows");
}

/// The stream de-duplicates `Nats-Msg-Id` across every session: a message
/// id squatted by another session is refused by the coordinator (and
/// changes nothing), but the server has already dropped the real request
/// by then; its sender learns it from the ack (`duplicate`) alone. So the
/// defence is request ids nobody can guess (`protocol::new_request_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_squatted_by_another_session_is_refused() {
    let mut corpus = Corpus::start().await;
    let mut cast = Cast::new(&corpus.url).await;
    let victim = cast.fresh.session.clone();
    let before = corpus.snapshot("squat").await;
    let attacker = &mut cast.other;
    let squat = json!({"v": 1, "id": "a1", "key": "squat", "ttl_ms": LONG});
    let subject = format!("jetlock.req.acquire.{}", attacker.session);
    let ack = store(
        &attacker.nats,
        &subject,
        &format!("{victim}:v1"),
        &[],
        squat.to_string().into_bytes(),
    )
    .await
    .expect("the server stores it: it checks no message id");
    assert!(!ack.duplicate);
    match attacker.next_final().await {
        Answer::Error { code, re, .. } => {
            assert_eq!((code, re.as_deref()), (BadMessageId, Some("a1")))
        }
        other => panic!("the squatting request was answered {other:?}"),
    }
    corpus.barrier(attacker, "squat").await;
    assert_eq!(corpus.errors("bad_message_id").await, 1, "counted");
    let after = corpus.snapshot("squat").await;
    assert_eq!(
        (after.revision, after.bucket_last),
        (before.revision, before.bucket_last),
        "the squatting request changed the bucket"
    );

    // The victim's real request under that id: not stored, and the ack is
    // the only sign. A new id goes through.
    let v = &mut cast.fresh;
    let real = json!({"v": 1, "id": "v1", "key": "squat", "ttl_ms": LONG});
    let ack = Publish::new(v, "acquire", "v1", &real)
        .store(v)
        .await
        .expect("acked");
    assert!(ack.duplicate, "the server dropped the victim's request");
    let retry = json!({"v": 1, "id": "v2", "key": "squat", "ttl_ms": LONG});
    v.send("acquire", retry).await;
    assert!(matches!(v.next_final().await, Answer::Granted { re, .. } if re == "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_requests_change_nothing() {
    let mut corpus = Corpus::start().await;
    let url = corpus.url.clone();
    let mut cast = Cast::new(&url).await;
    let token = corpus.take(&mut cast.holder, "h1", "held", LONG).await;
    let mut waiter = JsonSession::new(&url).await;
    waiter
        .send(
            "acquire",
            json!({"v": 1, "id": "w1", "key": "held", "ttl_ms": LONG, "wait_ms": LONG}),
        )
        .await;
    timeout(PATIENCE, async {
        loop {
            let msg = waiter.answers.next().await.expect("subscription open");
            if let Ok(Answer::Queued { .. }) = serde_json::from_slice(&msg.payload) {
                return;
            }
        }
    })
    .await
    .expect("the waiter is queued");
    let vars = [
        ("$TOKEN", token.to_string()),
        ("$PREV", (token - 1).to_string()),
        ("$NEXT", (token + 1).to_string()),
        ("$OWNER", cast.holder.session.clone()),
    ];
    let rows = rows::holder_rows();
    corpus.run(&mut cast, &rows, &vars).await;
    let unstored = corpus.run_unstored(&mut cast, &rows, &vars).await;
    assert!(unstored >= 7, "{unstored} release rows");

    // Double release: the second finds nothing to release.
    let a = &mut cast.fresh;
    let t = corpus.take(a, "d1", "twice", LONG).await;
    let release = json!({"v": 1, "id": "d2", "key": "twice", "token": t});
    a.send("release", release).await;
    assert!(matches!(
        a.next_final().await,
        Answer::Released { holds: 0, .. }
    ));
    let before = corpus.snapshot_with("twice", 2).await;
    let again = json!({"v": 1, "id": "d3", "key": "twice", "token": t});
    corpus
        .refused(a, "release", again, NotHolder, &before, "double release")
        .await;

    // Release after the lease ran out: the server's marker ended the hold.
    let t = corpus.take(a, "e1", "short", 1000).await;
    let before = corpus.snapshot_with("short", 2).await;
    assert_eq!(before.events, ["lock.granted", "lock.expired"]);
    let late = json!({"v": 1, "id": "e2", "key": "short", "token": t});
    corpus
        .refused(
            a,
            "release",
            late,
            NotHolder,
            &before,
            "release after expiry",
        )
        .await;

    // A release retried after the lock went to somebody else: the same
    // publish is stored once and not answered again, the same id is a
    // duplicate, a new id is refused.
    let t1 = corpus.take(a, "g1", "regrant", LONG).await;
    let release = json!({"v": 1, "id": "g2", "key": "regrant", "token": t1});
    let first = Publish::new(a, "release", "g2", &release);
    let ack = first.store(a).await.expect("stored");
    assert!(matches!(
        a.next_final().await,
        Answer::Released { holds: 0, .. }
    ));
    let t2 = corpus.take(&mut cast.other, "g3", "regrant", LONG).await;
    assert!(t2 > t1);
    let a = &mut cast.fresh;
    let before = corpus.snapshot_with("regrant", 3).await;
    assert_eq!(before.revision, Some(t2));
    corpus
        .replayed(a, &first, ack, &before, "re-sent release")
        .await;
    let fresh_id = json!({"v": 1, "id": "g4", "key": "regrant", "token": t1});
    corpus
        .refused(
            a,
            "release",
            fresh_id,
            NotHolder,
            &before,
            "release of a moved hold",
        )
        .await;

    // A replayed acquire: the same publish is stored once and granted once;
    // the same id under a new message id is a duplicate, not a second hold.
    let acquire = json!({"v": 1, "id": "p1", "key": "replay", "ttl_ms": LONG});
    let first = Publish::new(a, "acquire", "p1", &acquire);
    let ack = first.store(a).await.expect("stored");
    granted_token(a.next_final().await);
    let before = corpus.snapshot_with("replay", 1).await;
    corpus
        .replayed(a, &first, ack, &before, "replayed acquire")
        .await;

    // A session that left is dead: its requests get session_expired (and
    // so would a barrier of its own: a live session sends it).
    let mut gone = JsonSession::new(&url).await;
    gone.leave().await;
    let before = corpus.snapshot("after-leaving").await;
    gone.send(
        "acquire",
        json!({"v": 1, "id": "l1", "key": "after-leaving"}),
    )
    .await;
    let answer = gone.next_final().await;
    assert!(
        matches!(&answer, Answer::Error { re: Some(re), code: SessionExpired, .. } if re == "l1"),
        "acquire after leaving: {answer:?}"
    );
    corpus
        .barrier(&mut cast.fresh, "acquire after leaving")
        .await;
    assert_eq!(
        corpus.snapshot("after-leaving").await,
        before,
        "acquire after leaving"
    );

    // After all of it the held lock is intact: released, it goes to the
    // waiter that queued before the corpus ran.
    let before = corpus.snapshot("held").await;
    assert_eq!(
        before.revision,
        Some(token),
        "the holder's grant is the last write"
    );
    let release = json!({"v": 1, "id": "h2", "key": "held", "token": token});
    cast.holder.send("release", release).await;
    let next = granted_token(waiter.next_final().await);
    assert!(next > token);
    assert_eq!(corpus.snapshot("held").await.revision, Some(next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subjects_are_dropped_and_counted_and_client_headers_change_nothing() {
    let mut corpus = Corpus::start().await;
    let url = corpus.url.clone();
    let mut cast = Cast::new(&url).await;
    let nats = async_nats::connect(&url).await.expect("connect");
    let mut answers = nats.subscribe("jetlock.to.>").await.unwrap();
    nats.flush().await.unwrap();
    let before = corpus.snapshot("k").await;
    let body = br#"{"v":1,"id":"s1","key":"k"}"#;

    let dropped = rows::dropped_subjects();
    let mut seqs = Vec::new();
    for (n, (name, subject)) in dropped.iter().enumerate() {
        let ack = store(&nats, subject, &format!("drop-{n}"), &[], body.to_vec())
            .await
            .unwrap_or_else(|code| panic!("{name}: refused with {code}"));
        seqs.push((name, ack.seq));
    }
    let mut requests = corpus.js.get_stream(REQUEST_STREAM).await.unwrap();
    let last = requests.info().await.unwrap().state.last_sequence;
    for (name, subject, pong) in rows::unroutable_subjects() {
        let mut frame = format!("PUB {subject} _INBOX.raw {}\r\n", body.len()).into_bytes();
        frame.extend_from_slice(body);
        frame.extend_from_slice(b"\r\n");
        assert_eq!(raw_nats(&url, &frame).await, pong, "{name}");
    }
    corpus.barrier(&mut cast.fresh, "bad subjects").await;
    // Nothing unroutable was stored: the barrier's request came next.
    assert_eq!(
        requests.info().await.unwrap().state.last_sequence,
        last + 1,
        "a malformed subject was stored"
    );
    // Nobody was answered before the barrier.
    let first = timeout(PATIENCE, answers.next()).await.unwrap().unwrap();
    assert_eq!(
        first.subject.as_str(),
        format!("jetlock.to.{}", cast.fresh.session),
        "an answer to a dropped request: {:?}",
        String::from_utf8_lossy(&first.payload)
    );
    // Each drop counted once, and deleted from the stream.
    assert_eq!(corpus.dropped().await, dropped.len() as u64);
    for (name, seq) in seqs {
        timeout(PATIENCE, async {
            while requests.get_raw_message(seq).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: request {seq} stays in the stream"));
    }
    assert_eq!(corpus.snapshot("k").await, before, "the bucket changed");

    // A space in a plain publish makes the rest the reply subject: NATS
    // reads it as session `fresh`'s request, and it is answered there.
    let subject = format!("jetlock.req.acquire.{} junk", cast.fresh.session);
    let ttl = br#"{"v":1,"id":"space","key":"k","ttl_ms":5}"#;
    let mut frame = format!("PUB {subject} {}\r\n", ttl.len()).into_bytes();
    frame.extend_from_slice(ttl);
    frame.extend_from_slice(b"\r\n");
    assert!(raw_nats(&url, &frame).await);
    let answer = cast.fresh.next_final().await;
    assert!(
        matches!(&answer, Answer::Error { re: Some(re), code: InvalidTtl, .. } if re == "space"),
        "{answer:?}"
    );
    corpus.barrier(&mut cast.fresh, "space in a subject").await;
    assert_eq!(corpus.snapshot("k").await, before, "space in a subject");

    // Client-set JetStream headers on requests about a held lock.
    let token = corpus.take(&mut cast.holder, "h1", "guarded", LONG).await;
    let rows = rows::header_rows();
    corpus
        .run(&mut cast, &rows, &[("$TOKEN", token.to_string())])
        .await;

    // Operator endpoint bodies: a service error for each bad one.
    let deep = "[".repeat(4000);
    let admin: [(&str, &[u8], bool); 7] = [
        ("empty", b"", true),
        ("a prefix", br#"{"prefix":"guarded"}"#, true),
        ("a numeric prefix", br#"{"prefix":5}"#, false),
        ("not JSON", b"{not json", false),
        ("a prefix with NUL", br#"{"prefix":"a\u0000"}"#, false),
        ("an unknown field", br#"{"prefix":"x","all":true}"#, false),
        ("deep nesting", deep.as_bytes(), false),
    ];
    for (name, body, ok) in admin {
        let reply = timeout(
            PATIENCE,
            nats.request(jetlock_coordinator::admin::LOCKS, body.to_vec().into()),
        )
        .await
        .expect("answered")
        .expect("answered");
        let error = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned());
        if ok {
            assert_eq!(error, None, "admin body {name}");
        } else {
            assert_eq!(error.as_deref(), Some("400"), "admin body {name}");
        }
    }
    let guarded = corpus.snapshot("guarded").await;
    assert_eq!(
        guarded.revision,
        Some(token),
        "the headers changed the lock"
    );
    assert_eq!(guarded.events, ["lock.granted", "lock.renew_failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_acquires_on_one_key_is_answered_once_each_one_holder_at_a_time() {
    const SESSIONS: usize = 4;
    const ACQUIRES: usize = 1000;
    let mut corpus = Corpus::start().await;
    let url = corpus.url.clone();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(JsonSession::new(&url).await);
    }
    // Every acquire published at once, each with its own owner so none is
    // reentrant; all wait.
    let publishes = (0..ACQUIRES).map(|i| {
        let s = &sessions[i % SESSIONS];
        let body = json!({"v": 1, "id": format!("a{i}"), "key": "burst", "owner": format!("o{i}"),
                          "ttl_ms": LONG, "wait_ms": 900_000});
        let subject = format!("jetlock.req.acquire.{}", s.session);
        let msg_id = format!("{}:a{i}", s.session);
        async move { store(&s.nats, &subject, &msg_id, &[], body.to_string().into()).await }
    });
    for ack in futures::future::join_all(publishes).await {
        ack.expect("stored");
    }

    // Each session releases every grant at once. The checker sees a
    // holder from its grant until its release goes out: a grant meanwhile
    // is a second holder.
    let checker = Arc::new(ExclusionChecker::default());
    let mut tasks = Vec::new();
    for (n, mut s) in sessions.into_iter().enumerate() {
        let checker = checker.clone();
        tasks.push(tokio::spawn(async move {
            let mine = (n..ACQUIRES).step_by(SESSIONS).count();
            let (mut granted, mut released) = (HashSet::new(), HashSet::new());
            while granted.len() < mine || released.len() < mine {
                match s.next_final().await {
                    Answer::Granted {
                        re,
                        token,
                        holds: 1,
                        ..
                    } => {
                        checker.enter(FencingToken(token));
                        assert!(granted.insert(re.clone()), "{re} granted twice");
                        checker.exit();
                        let release = json!({"v": 1, "id": format!("r-{re}"), "key": "burst",
                                             "token": token});
                        s.send("release", release).await;
                    }
                    Answer::Released { re, holds: 0, .. } => {
                        assert!(released.insert(re.clone()), "{re} answered twice");
                    }
                    other => panic!("unexpected answer in the burst: {other:?}"),
                }
            }
            s
        }));
    }
    let mut sessions = Vec::new();
    for task in tasks {
        sessions.push(
            timeout(PATIENCE, task)
                .await
                .expect("the burst drains")
                .expect("no panic"),
        );
    }
    checker.assert_clean();
    assert_eq!(checker.entries(), ACQUIRES as u64);
    // No answer beyond one per request, and the queue is empty.
    for s in &mut sessions {
        corpus.barrier(s, "after the burst").await;
    }
    let view = nats_admin_locks(&url, "burst").await;
    assert!(view["locks"].as_array().unwrap().is_empty(), "{view}");
    // The audit trail: grant, release, grant, … each release ending the
    // grant before it, tokens rising.
    corpus.snapshot_with("burst", 2 * ACQUIRES).await;
    let history = lock_events(&corpus.js, "burst").await;
    assert_eq!(history.len(), 2 * ACQUIRES);
    let mut last = 0;
    for (n, pair) in history.chunks(2).enumerate() {
        let (grant, release) = (&pair[0], &pair[1]);
        assert_eq!(
            (grant.kind, release.kind, grant.token),
            (EventKind::Granted, EventKind::Released, release.token),
            "hold {n}: {grant:?} then {release:?}"
        );
        let token = grant.token.expect("grants carry their token");
        assert!(token > last, "hold {n}: token {token} after {last}");
        last = token;
    }
    let last = corpus
        .bucket
        .get_last_raw_message_by_subject(&format!("$KV.{DEFAULT_BUCKET}.burst"))
        .await
        .expect("the key was written");
    assert_eq!(
        last.headers.get("KV-Operation").map(|v| v.as_str()),
        Some("DEL"),
        "the last write releases the lock"
    );
}

/// The `jetlock.admin.locks` view of one prefix.
async fn nats_admin_locks(url: &str, prefix: &str) -> serde_json::Value {
    let nats = async_nats::connect(url).await.expect("connect");
    let body = json!({"prefix": prefix}).to_string();
    let reply = nats
        .request(jetlock_coordinator::admin::LOCKS, body.into())
        .await
        .expect("a coordinator answers");
    serde_json::from_slice(&reply.payload).expect("a view")
}

/// Requests sent while the only coordinator was down are read by it when
/// it starts again, before it is ready. Every one is answered once it is:
/// the refused ones too, whether refused for what the message says (a TTL
/// of 0) or for what was read before it (a request id used twice), and
/// each leaves the request stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_requests_sent_while_the_only_coordinator_was_down_are_answered() {
    let server = jetlock_testkit::single();
    let url = server.url();
    let first = jetlock_testkit::coordinator(&url).await;
    let mut s = JsonSession::new(&url).await;
    first.shutdown().await;

    s.send(
        "acquire",
        json!({"v": 1, "id": "bad", "key": "restart", "ttl_ms": 0}),
    )
    .await;
    let acquire = json!({"v": 1, "id": "a1", "key": "restart", "ttl_ms": LONG});
    s.send("acquire", acquire.clone()).await;
    // The same request id again, under another message id so the stream
    // keeps it: only the coordinator can tell it is a duplicate.
    let subject = format!("jetlock.req.acquire.{}", s.session);
    let copy = format!("{}:copy", s.session);
    store(
        &s.nats,
        &subject,
        &copy,
        &[],
        acquire.to_string().into_bytes(),
    )
    .await
    .expect("stored");

    let _second = jetlock_testkit::coordinator(&url).await;
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 3 {
        match s.next_final().await {
            Answer::Error {
                re: Some(re), code, ..
            } if re == "a1" => {
                answers.insert("dup".to_owned(), format!("{code:?}"));
            }
            Answer::Error {
                re: Some(re), code, ..
            } => {
                answers.insert(re, format!("{code:?}"));
            }
            Answer::Granted { re, .. } => {
                answers.insert(re, "Granted".to_owned());
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(answers["bad"], format!("{InvalidTtl:?}"));
    assert_eq!(answers["a1"], "Granted");
    assert_eq!(answers["dup"], format!("{Duplicate:?}"));

    let js = async_nats::jetstream::new(s.nats.clone());
    let mut requests = js.get_stream(REQUEST_STREAM).await.expect("the stream");
    timeout(jetlock_testkit::PATIENCE, async {
        while requests.info().await.expect("info").state.messages > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every request leaves the stream once answered");
}
