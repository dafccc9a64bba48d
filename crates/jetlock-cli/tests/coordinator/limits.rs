//! Limits against real servers: the request stream at its cap, and quotas
//! changed live.

use super::*;

/// The request stream holds only requests in progress, and at its cap the
/// server refuses a new one (discard new) instead of dropping the oldest,
/// which somebody waits for; once a request finishes there is room again.
/// Each refusal is the client's publish error, and the queued waiters are
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_stream_refuses_new_requests_and_keeps_the_queued_ones() {
    use jetlock::bucket::RequestStreamLimits;
    use jetlock_coordinator::{Coordinator, CoordinatorConfig};
    let server = single();
    let url = server.url();
    let config = CoordinatorConfig {
        request_stream: RequestStreamLimits {
            max_msgs: 2,
            max_bytes: 1 << 20,
        },
        ..CoordinatorConfig::default()
    };
    let nats = async_nats::connect(&url).await.expect("connect");
    let _coordinator = Coordinator::start(nats, config)
        .await
        .expect("coordinator starts");
    let mut holder = JsonSession::new(&url).await;
    holder
        .send("acquire", json!({"v": 1, "id": "h1", "key": "capped"}))
        .await;
    let token = match holder.next_final().await {
        Answer::Granted { token, .. } => token,
        other => panic!("{other:?}"),
    };
    // Two waiters fill the stream (the grant above was deleted).
    let waiter = JsonSession::new(&url).await;
    for id in ["w1", "w2"] {
        let wait = json!({"v": 1, "id": id, "key": "capped", "wait_ms": 60_000});
        waiter.send("acquire", wait).await;
    }
    let third = json!({"v": 1, "id": "w3", "key": "capped", "wait_ms": 60_000});
    let refused = waiter
        .publish(
            "acquire",
            &format!("{}:w3", waiter.session),
            third.to_string(),
        )
        .await
        .expect_err("the full stream refuses a third request");
    assert!(
        refused.to_string().contains("maximum messages exceeded"),
        "{refused}"
    );
    // The release is refused too while the stream is full: the holder
    // cannot even give the lock up through the stream, so the cap must sit
    // far above any real load (the default is a million).
    let release = json!({"v": 1, "id": "h2", "key": "capped", "token": token});
    assert!(holder
        .publish(
            "release",
            &format!("{}:h2", holder.session),
            release.to_string()
        )
        .await
        .is_err());
    // A waiter that gives up frees room: its cancel is refused, but its
    // session leaving ends both waits, and the holder's release goes in.
    waiter.leave().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let retry = holder
            .publish(
                "release",
                &format!("{}:h2", holder.session),
                release.to_string(),
            )
            .await;
        if retry.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        holder.next_final().await,
        Answer::Released { holds: 0, .. }
    ));
}

/// Sets a live setting in the config bucket and waits until a coordinator
/// reports it applied; the JetStream context it used.
async fn set_live(
    nats: &async_nats::Client,
    key: &str,
    value: u64,
) -> async_nats::jetstream::Context {
    let mut changes = nats.subscribe("jetlock.ev.config.changed.>").await.unwrap();
    nats.flush().await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let settings = js
        .get_key_value(jetlock::bucket::CONFIG_BUCKET)
        .await
        .expect("the config bucket");
    settings
        .put(key, value.to_string().into())
        .await
        .expect("set");
    let msg = tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("the change is reported")
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event["value"], value, "{event}");
    js
}

/// A session quota set live in the config bucket: the next acquire beyond
/// it is refused with its code, counted, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_quota_refuses_the_lock_beyond_it() {
    let server = single();
    let url = server.url();
    let coordinator = coordinator(&url).await;
    let nats = async_nats::connect(&url).await.expect("connect");
    let js = set_live(&nats, "max_locks_per_session", 1).await;

    let mut s = JsonSession::new(&url).await;
    s.send("acquire", json!({"v": 1, "id": "q1", "key": "quota:1"}))
        .await;
    assert!(matches!(s.next_final().await, Answer::Granted { .. }));
    s.send("acquire", json!({"v": 1, "id": "q2", "key": "quota:2"}))
        .await;
    match s.next_final().await {
        Answer::Error { code, re, .. } => {
            assert_eq!((code, re.as_deref()), (ErrorCode::TooManyLocks, Some("q2")))
        }
        other => panic!("the second lock was answered {other:?}"),
    }
    let kv = js
        .get_key_value(jetlock::bucket::DEFAULT_BUCKET)
        .await
        .unwrap();
    assert!(
        kv.get("quota.2").await.unwrap().is_none(),
        "quota:2 written"
    );
    let metrics = common::scrape(coordinator.metrics_addr().unwrap()).await;
    assert!(
        metrics.contains("jetlock_request_errors_total{code=\"too_many_locks\"} 1"),
        "{metrics}"
    );
}

/// Sessions per prefix, set live: a new session beyond the limit is
/// refused in its heartbeat answer and in its requests, is counted, and
/// takes nothing; another prefix has room of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sessions_per_prefix_quota_refuses_the_session_beyond_it() {
    let server = single();
    let url = server.url();
    let coordinator = coordinator(&url).await;
    let nats = async_nats::connect(&url).await.expect("connect");
    let js = set_live(&nats, "max_sessions_per_prefix", 1).await;

    let beat = |session: &str| {
        let (nats, subject) = (nats.clone(), jetlock::protocol::heartbeat_subject(session));
        async move {
            let reply = tokio::time::timeout(
                PATIENCE,
                nats.request(subject, r#"{"timeout_ms":5000}"#.into()),
            )
            .await
            .expect("answered in time")
            .expect("answered");
            serde_json::from_slice::<jetlock::protocol::HeartbeatAck>(&reply.payload).unwrap()
        }
    };
    assert!(beat("team.first").await.alive);
    let refused = beat("team.second").await;
    assert!(!refused.alive, "{refused:?}");
    assert_eq!(refused.refused, Some(ErrorCode::TooManySessions));
    assert!(beat("other.first").await.alive, "another prefix has room");

    let mut s = JsonSession::on(nats.clone(), "team.third".into()).await;
    s.send("acquire", json!({"v": 1, "id": "q", "key": "quota:s"}))
        .await;
    match s.next_final().await {
        Answer::Error { code, re, .. } => {
            assert_eq!(
                (code, re.as_deref()),
                (ErrorCode::TooManySessions, Some("q"))
            )
        }
        other => panic!("a session beyond the quota was answered {other:?}"),
    }
    let kv = js
        .get_key_value(jetlock::bucket::DEFAULT_BUCKET)
        .await
        .unwrap();
    assert!(
        kv.get("quota.s").await.unwrap().is_none(),
        "quota:s written"
    );
    let metrics = common::scrape(coordinator.metrics_addr().unwrap()).await;
    assert!(
        metrics.contains("jetlock_request_errors_total{code=\"too_many_sessions\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jetlock_sessions_refused_total "),
        "{metrics}"
    );
}
