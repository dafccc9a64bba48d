//! What every row is judged by: one nats-server and coordinator, the
//! sessions that send rows, snapshots of the bucket and the event stream,
//! and the barrier that orders them.

use crate::rows::{Expect::*, Row, Who, ID_LEN};
use async_nats::jetstream::{self, consumer, stream::Stream};
use futures::StreamExt;
use jetlock::bucket::DEFAULT_BUCKET;
use jetlock::events::{lock_filter, Event, EventKind, EVENT_STREAM};
use jetlock::name::encode;
use jetlock::protocol::{Answer, ErrorCode, ErrorCode::*};
use jetlock_testkit::json::JsonSession;
use jetlock_testkit::server::NatsServer;
use jetlock_testkit::{coordinator, scrape, single, PATIENCE};
use serde_json::json;
use std::time::Duration;
use tokio::time::timeout;

/// The name of the lock barrier requests aim at (never held).
pub const BARRIER: &str = "barrier";

/// One nats-server and one coordinator, and what rows are judged by.
pub struct Corpus {
    _server: NatsServer,
    coordinator: jetlock_coordinator::Coordinator,
    pub url: String,
    pub js: jetstream::Context,
    pub bucket: Stream,
    /// The barrier's `lock.renew_failed` events, as the stream stores them.
    barrier_events: consumer::push::Ordered,
    /// Barriers and rows so far (each gets its own ids).
    barriers: u64,
    cases: u64,
}

/// What a row may not change.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The key's last revision in the bucket (`None`: never written).
    pub revision: Option<u64>,
    /// The bucket's last sequence, over every key.
    pub bucket_last: u64,
    /// The kinds of the key's lock events so far.
    pub events: Vec<String>,
}

/// The sessions that send rows.
pub struct Cast {
    pub fresh: JsonSession,
    pub holder: JsonSession,
    pub other: JsonSession,
}

impl Cast {
    pub async fn new(url: &str) -> Cast {
        Cast {
            fresh: JsonSession::new(url).await,
            holder: JsonSession::new(url).await,
            other: JsonSession::new(url).await,
        }
    }

    pub fn get(&mut self, who: Who) -> &mut JsonSession {
        match who {
            Who::Fresh => &mut self.fresh,
            Who::Holder => &mut self.holder,
            Who::Other => &mut self.other,
        }
    }
}

/// The stream's verdict on a publish.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Ack {
    pub seq: u64,
    #[serde(default)]
    pub duplicate: bool,
}

/// Publishes as a plain NATS client does: a request to the subject, whose
/// reply is the stream's ack, or its error (`Err` with the JetStream code).
pub async fn store(
    nats: &async_nats::Client,
    subject: &str,
    msg_id: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Ack, u64> {
    let mut map = async_nats::HeaderMap::new();
    map.insert("Nats-Msg-Id", msg_id);
    for (name, value) in headers {
        // A row's own message id replaces the session's.
        if name.eq_ignore_ascii_case("Nats-Msg-Id") {
            map.insert(*name, *value);
        } else {
            map.append(*name, *value);
        }
    }
    let reply = timeout(
        PATIENCE,
        nats.request_with_headers(subject.to_owned(), map, body.into()),
    )
    .await
    .expect("the stream answers")
    .unwrap_or_else(|e| panic!("publish to {subject:?}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
    match v["error"]["err_code"].as_u64() {
        Some(code) => Err(code),
        None => Ok(serde_json::from_value(v).expect("an ack")),
    }
}

/// Every lock event of `key` so far, read with a consumer filtered on
/// `jetlock.ev.lock.*.<key>`.
pub async fn lock_events(js: &jetstream::Context, key: &str) -> Vec<Event> {
    let stream = js.get_stream(EVENT_STREAM).await.expect("the event stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: lock_filter(key),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let pending = consumer.cached_info().num_pending as usize;
    let mut events = Vec::with_capacity(pending);
    if pending > 0 {
        let mut batch = consumer
            .batch()
            .max_messages(pending)
            .expires(PATIENCE)
            .messages()
            .await
            .expect("a batch");
        while events.len() < pending {
            let msg = timeout(PATIENCE, batch.next())
                .await
                .expect("the events arrive")
                .expect("the batch is open")
                .expect("an event");
            events.push(serde_json::from_slice(&msg.payload).expect("events parse"));
        }
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    events
}

/// Shortens a body for a failure message.
pub fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(120) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], body.len()),
        None => text.into_owned(),
    }
}

/// `body` with each variable replaced by its value.
pub fn fill(body: &[u8], vars: &[(&str, String)]) -> Vec<u8> {
    let mut out = body.to_vec();
    for (name, value) in vars {
        let (name, value) = (name.as_bytes(), value.as_bytes());
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(name) {
                next.extend_from_slice(value);
                i += name.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

pub fn granted_token(answer: Answer) -> u64 {
    match answer {
        Answer::Granted { token, .. } => token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// A request as a plain client publishes it: subject, message id, body.
#[derive(Clone)]
pub struct Publish {
    subject: String,
    msg_id: String,
    body: Vec<u8>,
}

impl Publish {
    /// `body` as `op` from `s`, under message id `<session>:<msg>`.
    pub fn new(s: &JsonSession, op: &str, msg: &str, body: &serde_json::Value) -> Publish {
        Publish {
            subject: format!("jetlock.req.{op}.{}", s.session),
            msg_id: format!("{}:{msg}", s.session),
            body: body.to_string().into_bytes(),
        }
    }

    pub async fn store(&self, s: &JsonSession) -> Result<Ack, u64> {
        store(&s.nats, &self.subject, &self.msg_id, &[], self.body.clone()).await
    }
}

impl Corpus {
    pub async fn start() -> Corpus {
        let server = single();
        let url = server.url();
        let coordinator = coordinator(&url).await;
        let nats = async_nats::connect(&url).await.expect("connect");
        let js = jetstream::new(nats.clone());
        let bucket = js
            .get_stream(format!("KV_{DEFAULT_BUCKET}"))
            .await
            .expect("the bucket's stream");
        let barrier_events = js
            .get_stream(EVENT_STREAM)
            .await
            .expect("the event stream")
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: nats.new_inbox(),
                filter_subject: format!("jetlock.ev.lock.renew_failed.{}", encode(BARRIER)),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .expect("a consumer")
            .messages()
            .await
            .expect("its messages");
        Corpus {
            _server: server,
            coordinator,
            url,
            js,
            bucket,
            barrier_events,
            barriers: 0,
            cases: 0,
        }
    }

    pub async fn snapshot(&self, key: &str) -> Snapshot {
        // Events first: an event is published after the bucket shows its
        // change, so the bucket read next is at least as new as the events.
        let events = lock_events(&self.js, key)
            .await
            .into_iter()
            .map(|e| e.kind.as_str().to_owned())
            .collect();
        let subject = format!("$KV.{DEFAULT_BUCKET}.{key}");
        let revision = match self.bucket.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Some(m.sequence),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                None
            }
            Err(e) => panic!("read {subject}: {e}"),
        };
        let bucket_last = self
            .bucket
            .clone()
            .info()
            .await
            .expect("the bucket's state")
            .state
            .last_sequence;
        Snapshot {
            revision,
            bucket_last,
            events,
        }
    }

    /// The snapshot once the key has at least `events` lock events (they
    /// are reported when the coordinator's bucket watch sees the write).
    pub async fn snapshot_with(&self, key: &str, events: usize) -> Snapshot {
        timeout(PATIENCE, async {
            loop {
                let s = self.snapshot(key).await;
                if s.events.len() >= events {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key} never had {events} lock events"))
    }

    /// A good request from `s` (a renew of the never-held barrier lock):
    /// its answer must be the next one `s` gets, and once its event is
    /// stored, every event of what `s` sent before is stored too (the
    /// coordinator handles requests and publishes events in order).
    pub async fn barrier(&mut self, s: &mut JsonSession, what: &str) {
        self.barriers += 1;
        let token = self.barriers;
        let id = format!("barrier-{token}");
        s.send(
            "renew",
            json!({"v": 1, "id": id, "key": BARRIER, "token": token}),
        )
        .await;
        match s.next_final().await {
            Answer::Error {
                re: Some(re),
                code: NotHolder,
                ..
            } if re == id => {}
            other => panic!("{what}: the next answer must be the barrier's, got {other:?}"),
        }
        timeout(PATIENCE, async {
            loop {
                let msg = self
                    .barrier_events
                    .next()
                    .await
                    .expect("consumer open")
                    .expect("an event");
                let e: Event = serde_json::from_slice(&msg.payload).expect("events parse");
                if e.token == Some(token) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the barrier's event is never stored"));
    }

    /// `s` acquires `lock` (free) with id `id`; the token, once the grant
    /// is in the event stream too.
    pub async fn take(&mut self, s: &mut JsonSession, id: &str, lock: &str, ttl_ms: u64) -> u64 {
        let acquire = json!({"v": 1, "id": id, "key": lock, "ttl_ms": ttl_ms});
        s.send("acquire", acquire).await;
        let token = granted_token(s.next_final().await);
        let key = encode(lock);
        timeout(PATIENCE, async {
            loop {
                let events = lock_events(&self.js, &key).await;
                if events
                    .iter()
                    .any(|e| e.kind == EventKind::Granted && e.token == Some(token))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the grant of {lock} is never reported"));
        token
    }

    /// Publishes `p` from `s`: refused with `want`, and the state of its
    /// lock is still `before` (`lock` is the body's `key`).
    pub async fn refused_publish(
        &mut self,
        s: &mut JsonSession,
        p: &Publish,
        want: ErrorCode,
        before: &Snapshot,
        what: &str,
    ) {
        let body: serde_json::Value = serde_json::from_slice(&p.body).expect("JSON");
        let (id, lock) = (body["id"].as_str(), body["key"].as_str().expect("a key"));
        p.store(s)
            .await
            .unwrap_or_else(|code| panic!("{what}: not stored: {code}"));
        let answer = s.next_final().await;
        assert!(
            matches!(&answer, Answer::Error { code, re, .. } if *code == want && re.as_deref() == id),
            "{what}: expected {want}, got {answer:?}"
        );
        self.barrier(s, what).await;
        assert_eq!(
            &self.snapshot(&encode(lock)).await,
            before,
            "{what}: state changed"
        );
    }

    /// `refused_publish` of `body` as `op`, under a message id of its own.
    pub async fn refused(
        &mut self,
        s: &mut JsonSession,
        op: &str,
        body: serde_json::Value,
        want: ErrorCode,
        before: &Snapshot,
        what: &str,
    ) {
        let msg = body["id"].as_str().expect("an id").to_owned();
        let p = Publish::new(s, op, &msg, &body);
        self.refused_publish(s, &p, want, before, what).await;
    }

    /// `first`, stored as `ack`, published again: the stream stores it
    /// once and nobody answers it twice; then under a new message id: the
    /// coordinator answers `duplicate`. The state is still `before`.
    pub async fn replayed(
        &mut self,
        s: &mut JsonSession,
        first: &Publish,
        ack: Ack,
        before: &Snapshot,
        what: &str,
    ) {
        let body: serde_json::Value = serde_json::from_slice(&first.body).expect("JSON");
        let again = first.store(s).await.expect("acknowledged");
        assert_eq!(
            again,
            Ack {
                seq: ack.seq,
                duplicate: true
            },
            "{what}"
        );
        self.barrier(s, what).await;
        let lock = body["key"].as_str().expect("a key");
        assert_eq!(
            &self.snapshot(&encode(lock)).await,
            before,
            "{what}: state changed"
        );
        let retry = Publish {
            msg_id: format!("{}-again", first.msg_id),
            ..first.clone()
        };
        let what = format!("{what}, under a new message id");
        self.refused_publish(s, &retry, Duplicate, before, &what)
            .await;
    }

    /// Runs the rows in order, each judged as the module doc says.
    pub async fn run(&mut self, cast: &mut Cast, rows: &[Row], vars: &[(&str, String)]) {
        for row in rows {
            self.case(cast, row, vars).await;
        }
    }

    pub async fn case(&mut self, cast: &mut Cast, row: &Row, vars: &[(&str, String)]) {
        self.cases += 1;
        let id = format!("case-{:04}", self.cases);
        assert_eq!(id.len(), ID_LEN);
        let s = cast.get(row.who);
        let mut vars = vars.to_vec();
        vars.push(("$ID", id.clone()));
        vars.push(("$SESSION", s.session.clone()));
        let body = fill(&row.body, &vars);
        let what = format!("{}: {} {}", row.name, row.op, shown(&body));
        let lock = String::from_utf8(fill(row.lock.as_bytes(), &vars)).expect("UTF-8 name");
        let key = encode(&lock);
        let before = self.snapshot(&key).await;
        let subject = format!("jetlock.req.{}.{}", row.op, s.session);
        let msg_id = format!("{}:{id}", s.session);
        let stored = store(&s.nats, &subject, &msg_id, row.headers, body).await;

        let mut token = None;
        if let NotStored(code) = row.expect {
            assert_eq!(stored, Err(code), "{what}");
        } else {
            assert!(stored.is_ok(), "{what}: not stored: {stored:?}");
            let answer = s.next_final().await;
            let ok = match (row.expect, &answer) {
                (
                    Granted,
                    Answer::Granted {
                        re,
                        token: t,
                        holds: 1,
                        ..
                    },
                ) => {
                    token = Some(*t);
                    *re == id
                }
                (Refused(want) | Reported(want, _), Answer::Error { re, code, .. }) => {
                    *code == want && re.as_deref() == Some(id.as_str())
                }
                (Unnamed(want), Answer::Error { re: None, code, .. }) => *code == want,
                _ => false,
            };
            assert!(ok, "{what}: expected {:?}, got {answer:?}", row.expect);
        }
        self.barrier(s, &what).await;

        let expected_events: &[&str] = match row.expect {
            Granted => &["lock.granted"],
            Reported(_, kinds) => kinds,
            _ => &[],
        };
        let after = self
            .snapshot_with(&key, before.events.len() + expected_events.len())
            .await;
        assert_eq!(
            &after.events[before.events.len()..],
            expected_events,
            "{what}: lock events of {key}"
        );
        if let Some(token) = token {
            assert_eq!(
                after.revision,
                Some(token),
                "{what}: the token is the grant's revision"
            );
            assert_eq!(
                after.bucket_last,
                before.bucket_last + 1,
                "{what}: one write"
            );
        } else {
            assert_eq!(after.revision, before.revision, "{what}: {key} was written");
            assert_eq!(
                after.bucket_last, before.bucket_last,
                "{what}: the bucket was written"
            );
        }
    }

    /// Every `release` row without headers of its own, sent unstored
    /// (`jetlock.now.release.<session>`, core NATS): a body the coordinator
    /// cannot read gets the row's documented code, as on the stream; a
    /// release it can read but that is not the holder's (`not_holder`,
    /// `stale_token` on the stream) is dropped unanswered. Either way
    /// nothing changes. Returns how many rows it sent.
    pub async fn run_unstored(
        &mut self,
        cast: &mut Cast,
        rows: &[Row],
        vars: &[(&str, String)],
    ) -> usize {
        let mut sent = 0;
        for row in rows
            .iter()
            .filter(|r| r.op == "release" && r.headers.is_empty())
        {
            self.cases += 1;
            sent += 1;
            let id = format!("case-{:04}", self.cases);
            let s = cast.get(row.who);
            let mut vars = vars.to_vec();
            vars.push(("$ID", id.clone()));
            vars.push(("$SESSION", s.session.clone()));
            let body = fill(&row.body, &vars);
            let what = format!("{} (unstored): {}", row.name, shown(&body));
            let lock = String::from_utf8(fill(row.lock.as_bytes(), &vars)).expect("UTF-8 name");
            let key = encode(&lock);
            let before = self.snapshot(&key).await;
            let subject = jetlock::protocol::unstored_release_subject(&s.session);
            s.nats.publish(subject, body.into()).await.expect("publish");
            match row.expect {
                Refused(NotHolder | StaleToken) => {}
                Refused(want) | Reported(want, _) => match s.next_final().await {
                    Answer::Error { re, code, .. } if code == want && re == Some(id) => {}
                    other => panic!("{what}: expected {want:?}, got {other:?}"),
                },
                Unnamed(want) => match s.next_final().await {
                    Answer::Error { re: None, code, .. } if code == want => {}
                    other => panic!("{what}: expected {want:?}, got {other:?}"),
                },
                NotStored(_) | Granted => panic!("{what}: no such release row"),
            }
            self.barrier(s, &what).await;
            let after = self.snapshot_with(&key, before.events.len()).await;
            assert_eq!(after.events, before.events, "{what}: lock events of {key}");
            assert_eq!(after.revision, before.revision, "{what}: {key} was written");
            assert_eq!(
                after.bucket_last, before.bucket_last,
                "{what}: the bucket was written"
            );
        }
        sent
    }

    /// The coordinator's `jetlock_requests_dropped_total`.
    /// The coordinator's `jetlock_request_errors_total` for `code`.
    pub async fn errors(&self, code: &str) -> u64 {
        let addr = self.coordinator.metrics_addr().expect("metrics are served");
        let series = format!("jetlock_request_errors_total{{code=\"{code}\"}} ");
        scrape(addr)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
            .map(|n| n.trim().parse().expect("a count"))
            .unwrap_or(0)
    }

    pub async fn dropped(&self) -> u64 {
        let addr = self.coordinator.metrics_addr().expect("metrics are served");
        scrape(addr)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("jetlock_requests_dropped_total "))
            .map(|n| n.trim().parse().expect("a count"))
            .unwrap_or(0)
    }
}

/// Writes `frame` on a new raw connection, as a client that checks no
/// subjects would, then PING. True when the server answers PONG; false
/// when it closes the connection over the frame.
pub async fn raw_nats(url: &str, frame: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(url.trim_start_matches("nats://"))
        .await
        .expect("connect");
    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n".to_vec();
    out.extend_from_slice(frame);
    out.extend_from_slice(b"PING\r\n");
    tcp.write_all(&out).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    timeout(PATIENCE, async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(6).any(|w| w == b"PONG\r\n") {
                return true;
            }
        }
    })
    .await
    .expect("the server answers or hangs up")
}
