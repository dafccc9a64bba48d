//! The operators' side against a real nats-server and coordinator: the CLI
//! views (`locks`, `members`, `history`, `watch`), a forced release, live
//! settings reaching a running coordinator, `/metrics` and `$SRV`.

mod common;

use common::{coordinator, named_client as client, scrape, single, PATIENCE};
use futures::StreamExt;
use jetlock::events::{Event, EventKind};
use jetlock::protocol::{self, Answer, ErrorCode};
use jetlock::LostReason;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::process::Command;
use tokio::time::timeout;

/// Runs `jetlock ARGS --url URL`; (exit code, stdout, stderr).
async fn jetlock(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = timeout(
        PATIENCE,
        Command::new(env!("CARGO_BIN_EXE_jetlock"))
            .args(args)
            .args(["--url", url])
            .env_remove("JETLOCK_URL")
            .env_remove("JETLOCK_BUCKET")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("jetlock finishes")
    .expect("jetlock runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn jetlock_json(url: &str, args: &[&str]) -> Value {
    let (code, out, err) = jetlock(url, args).await;
    assert_eq!(code, 0, "jetlock {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_show_the_holder_and_a_forced_release_fences_it_off_on_the_record() {
    let server = single();
    let url = server.url();
    let _coordinator = coordinator(&url).await;
    let holder = client(&url, "holder").await;
    let waiter = client(&url, "waiter").await;

    // `watch` replays the last hour first, so it misses nothing however
    // late its consumer starts.
    let watch = Command::new(env!("CARGO_BIN_EXE_jetlock"))
        .args([
            "watch", "account", "--json", "--count", "4", "--since", "1h",
        ])
        .args(["--url", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch runs");

    let guard = holder
        .lock("account:42")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let token = guard.token().get();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock("account:42").wait(PATIENCE).acquire().await }
    });
    // The waiter shows up in the coordinator's view once it queued.
    let lock = timeout(PATIENCE, async {
        loop {
            let locks = jetlock_json(&url, &["locks", "account", "--json"]).await;
            let lock = locks.as_array().unwrap().first().cloned();
            if lock.as_ref().is_some_and(|l| l["waiters"] == 1) {
                return lock.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the waiter is listed");
    assert_eq!(lock["name"], "account:42");
    assert_eq!(lock["session"], holder.session());
    assert_eq!(lock["owner"], guard.owner());
    assert_eq!(lock["token"], token);
    assert!(lock["lease_left_ms"].as_u64().unwrap() <= 30_000);

    let members = jetlock_json(&url, &["members", "--json"]).await;
    let sessions = members["sessions"].as_array().unwrap();
    let me = sessions
        .iter()
        .find(|s| s["session"] == holder.session())
        .expect("the holder's session is live");
    assert_eq!(me["locks_held"], 1);
    let them = sessions
        .iter()
        .find(|s| s["session"] == waiter.session())
        .expect("the waiter's session is live");
    assert_eq!(them["waiting"], 1);
    assert_eq!(members["coordinators"].as_array().unwrap().len(), 1);

    // The operator takes the lock away: the holder is told, the waiter
    // gets it, the event stream records who did it and why.
    let revoked = jetlock_json(
        &url,
        &[
            "release",
            "account:42",
            "--force",
            "--reason",
            "stuck batch",
            "--json",
        ],
    )
    .await;
    assert_eq!(revoked["kind"], "lock.revoked");
    assert_eq!(revoked["token"], token);
    assert_eq!(revoked["reason"], "stuck batch");
    timeout(PATIENCE, guard.lost()).await.expect("lost() fires");
    assert_eq!(guard.lost_reason(), Some(LostReason::Revoked));
    let next_guard = timeout(PATIENCE, waiting).await.unwrap().unwrap().unwrap();
    let next = next_guard.token().get();
    assert!(next > token, "the waiter's token {next} is above {token}");

    let history = jetlock_json(&url, &["history", "account:42", "--json"]).await;
    let kinds: Vec<(String, u64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["token"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("lock.granted", token),
        ("lock.revoking", token),
        ("lock.revoked", token),
        ("lock.granted", next),
    ];
    assert_eq!(
        kinds,
        expected.map(|(k, t)| (k.to_owned(), t)),
        "{history:#}"
    );
    assert!(history[2]["by"].as_str().unwrap().starts_with("operator."));
    // "Who held it when": between the grant and the revocation, the holder.
    let at = history[1]["at_ms"].as_u64().unwrap();
    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at))
        .to_string();
    let held = jetlock_json(&url, &["history", "account:42", "--at", &at, "--json"]).await;
    assert_eq!(held["holder"]["token"], token);
    assert_eq!(held["holder"]["session"], holder.session());

    let out = timeout(PATIENCE, watch.wait_with_output())
        .await
        .expect("watch saw four events")
        .unwrap();
    let seen: Vec<Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].kind, EventKind::Granted);
    assert!(seen.iter().all(|e| e.lock.as_deref() == Some("account:42")));

    // Nothing to release: exit code 3, and no event.
    let (code, _, err) = jetlock(&url, &["release", "account:7", "--force", "--reason", "x"]).await;
    assert_eq!(code, 3, "{err}");
    // Without --force the command refuses to run (usage error).
    let (code, _, _) = jetlock(&url, &["release", "account:42", "--reason", "x"]).await;
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_reaches_a_running_coordinator_and_bad_values_change_nothing() {
    let server = single();
    let url = server.url();
    let _coordinator = coordinator(&url).await;
    let nats = async_nats::connect(&url).await.unwrap();
    let mut changes = nats.subscribe("jetlock.ev.config.changed.>").await.unwrap();
    nats.flush().await.unwrap();

    // A bad value is refused before anything is written.
    let (code, _, err) = jetlock(&url, &["config", "set", "default_ttl_ms", "-5"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing written"), "{err}");
    let (code, _, _) = jetlock(&url, &["config", "set", "no_such_setting", "5"]).await;
    assert_eq!(code, 2);
    let (_, out, _) = jetlock(&url, &["config", "get", "default_ttl_ms"]).await;
    assert_eq!(out.trim(), "10000", "the default stays");

    let (code, _, err) = jetlock(&url, &["config", "set", "default_ttl_ms", "3000"]).await;
    assert_eq!(code, 0, "{err}");
    let msg = timeout(PATIENCE, changes.next()).await.unwrap().unwrap();
    let event: Event = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event.subject.as_deref(), Some("default_ttl_ms"));
    assert_eq!(event.value, Some(json!(3000)));

    // A JSON acquire without a lease now gets the new default.
    let mut json = JsonClient::new(nats.clone()).await;
    match json
        .acquire(json!({"v": 1, "id": "a", "key": "cfg:1"}))
        .await
    {
        Answer::Granted { ttl_ms, .. } => assert_eq!(ttl_ms, 3000),
        other => panic!("expected a grant, got {other:?}"),
    }

    // A per-prefix policy caps leases (and queues) under `cfg:`.
    let (code, _, err) = jetlock(
        &url,
        &[
            "config",
            "set",
            "policy.cfg",
            r#"{"max_waiters": 1, "max_ttl_ms": 5000}"#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let msg = timeout(PATIENCE, changes.next()).await.unwrap().unwrap();
    let event: Event = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event.subject.as_deref(), Some("policy.cfg"));
    let long = json!({"v": 1, "id": "b", "key": "cfg:2", "ttl_ms": 60000});
    match json.acquire(long).await {
        Answer::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidTtl),
        other => panic!("expected invalid_ttl, got {other:?}"),
    }
    let list = jetlock_json(&url, &["config", "list", "--json"]).await;
    let rows = list.as_array().unwrap();
    let row = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(row("default_ttl_ms")["source"], "bucket");
    assert_eq!(row("max_wait_ms")["source"], "default");
    assert_eq!(row("policy.cfg")["value"]["max_waiters"], 1);

    // Unset: back to the coordinator's own value.
    let (code, _, _) = jetlock(&url, &["config", "unset", "default_ttl_ms"]).await;
    assert_eq!(code, 0);
    let msg = timeout(PATIENCE, changes.next()).await.unwrap().unwrap();
    let event: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event["subject"], "default_ttl_ms");
    assert_eq!(event["value"], Value::Null, "removed: {event}");
    match json
        .acquire(json!({"v": 1, "id": "c", "key": "other:1"}))
        .await
    {
        Answer::Granted { ttl_ms, .. } => assert_eq!(ttl_ms, 10_000),
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// A session speaking the JSON protocol over a plain NATS connection.
struct JsonClient {
    session: String,
    js: async_nats::jetstream::Context,
    answers: async_nats::Subscriber,
}

impl JsonClient {
    async fn new(nats: async_nats::Client) -> JsonClient {
        let session = format!("json.{}", nuid::next());
        let answers = nats
            .subscribe(protocol::answer_subject(&session))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        JsonClient {
            session,
            js: async_nats::jetstream::new(nats),
            answers,
        }
    }

    /// Publishes an acquire; its first answer.
    async fn acquire(&mut self, body: Value) -> Answer {
        let subject = protocol::request_subject(protocol::Op::Acquire, &self.session);
        let body = serde_json::to_vec(&body).unwrap();
        self.js
            .publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        let answer = timeout(PATIENCE, self.answers.next())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&answer.payload).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_and_the_service_api_finds_the_coordinator() {
    let server = single();
    let url = server.url();
    let coordinator = coordinator(&url).await;
    let addr = coordinator.metrics_addr().expect("metrics are served");
    let a = client(&url, "a").await;
    let b = client(&url, "b").await;
    let guard = a.lock("pay:1").acquire().await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.lock("pay:1").wait(PATIENCE).acquire().await }
    });
    // Let b queue behind a, then hand over.
    timeout(PATIENCE, async {
        while !scrape(addr)
            .await
            .contains("jetlock_queue_depth{prefix=\"pay\"} 1")
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the queue depth shows b waiting");
    guard.release().await.unwrap();
    let next = timeout(PATIENCE, waiting).await.unwrap().unwrap().unwrap();
    next.release().await.unwrap();
    // A bad request is counted by its code.
    let nats = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    js.publish("jetlock.req.acquire.bad", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let text = timeout(PATIENCE, async {
        loop {
            let text = scrape(addr).await;
            if text.contains("jetlock_request_errors_total{code=\"bad_request\"} 1")
                && text.contains("jetlock_grants_total{handoff=\"true\"} 1")
                && text.contains("jetlock_releases_total 2")
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the counters reach the traffic's numbers");
    for series in [
        "jetlock_wait_seconds_bucket",
        "jetlock_hold_seconds_count",
        "jetlock_sessions",
        "jetlock_coordinators 1",
        "jetlock_failovers_total 0",
        "jetlock_revocations_total 0",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }

    // The NATS service API: PING and INFO find the coordinator.
    let ping = nats.request("$SRV.PING.jetlock", "".into()).await.unwrap();
    let ping: Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "jetlock");
    assert_eq!(ping["metadata"]["coordinator"], coordinator.id());
    let info = nats.request("$SRV.INFO.jetlock", "".into()).await.unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    let endpoints: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(endpoints.contains(&"jetlock.admin.locks"), "{info}");
    assert!(endpoints.contains(&"jetlock.admin.members"), "{info}");
    // A bad admin body gets a service error and changes nothing.
    let reply = nats
        .request("jetlock.admin.locks", r#"{"prefix": 5}"#.into())
        .await
        .unwrap();
    assert!(reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some()));
}
