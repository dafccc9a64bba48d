//! What one acquire + release pair stores: the messages each path adds to
//! the server's streams (the locks bucket, the request stream, the event
//! stream) and the finished requests it deletes, counted from the streams'
//! own sequence numbers around a run of pairs on fresh keys. Every stored
//! message is a write the stream leader orders, replicates and (with
//! `sync_interval: always`) fsyncs, so this is where the JSON path's cost
//! against the raw pair comes from.

use super::json::JsonSession;
use super::latency::{jetlock_pair, raw_pair};
use super::site::Ctx;
use super::CliError;
use async_nats::jetstream;
use jetlock::events::EVENT_STREAM;
use jetlock::protocol::REQUEST_STREAM;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// Pairs per path.
const PAIRS: u64 = 100;
/// How long the coordinator may take to delete the last finished requests.
const SETTLE: Duration = Duration::from_secs(5);
/// No new event for this long: the coordinator has published all of them.
const QUIET: Duration = Duration::from_millis(300);

/// Stored messages per pair on one path.
#[derive(Debug, Serialize)]
pub(super) struct WritesRow {
    pub(super) workload: &'static str,
    pub(super) pairs: u64,
    /// Messages stored in the locks bucket's stream: grants, release
    /// markers, renewals.
    pub(super) bucket: f64,
    /// Requests stored in the request stream.
    pub(super) requests: f64,
    /// Of those, deleted once finished (each a replicated stream operation).
    pub(super) request_deletes: f64,
    /// Events stored in the event stream.
    pub(super) events: f64,
}

impl WritesRow {
    /// Everything the stream leaders order per pair.
    pub(super) fn total(&self) -> f64 {
        self.bucket + self.requests + self.request_deletes + self.events
    }
}

/// The streams' last sequences and the request stream's message count.
#[derive(Clone, Copy)]
pub(super) struct Marks {
    pub(super) bucket: u64,
    pub(super) requests: u64,
    requests_held: u64,
    events: u64,
}

pub(super) async fn marks(js: &jetstream::Context, bucket: &str) -> Result<Marks, CliError> {
    let last = async |name: &str| -> Result<(u64, u64), CliError> {
        // The coordinator created the request and event streams before the
        // workloads began.
        let mut stream = js.get_stream(name).await?;
        let state = &stream.info().await?.state;
        Ok((state.last_sequence, state.messages))
    };
    let (bucket, _) = last(&format!("KV_{bucket}")).await?;
    let (requests, requests_held) = last(REQUEST_STREAM).await?;
    let (events, _) = last(EVENT_STREAM).await?;
    Ok(Marks {
        bucket,
        requests,
        requests_held,
        events,
    })
}

/// Counts what [`PAIRS`] pairs of each path store: the raw KV pair, the
/// fast path and the JSON path, one path at a time on fresh keys.
pub(super) async fn run(ctx: &Ctx<'_>, json: &mut JsonSession) -> Result<Vec<WritesRow>, CliError> {
    let (site, run, names, value) = (ctx.site, &ctx.run, &ctx.names, &ctx.value);
    let (js, kv, client, bucket) = (&site.js, &site.kv, &site.client, site.bucket());
    super::progress("stored writes per pair: raw, fast path, JSON");
    let mut rows = Vec::new();
    for workload in [
        "raw kv pair",
        "jetlock pair (fast path)",
        "json pair via coordinator",
    ] {
        let before = marks(js, bucket).await?;
        for i in 0..PAIRS {
            match workload {
                "raw kv pair" => raw_pair(kv, &format!("{run}.writes-raw-{i}"), value).await?,
                "jetlock pair (fast path)" => {
                    jetlock_pair(client, &format!("{names}:writes-fast-{i}")).await?
                }
                _ => json.pair(&format!("{names}:writes-json-{i}")).await?,
            }
        }
        // The coordinator deletes a finished request after answering it,
        // and publishes events as it sees the bucket change: wait until no
        // request is left and the events have stopped coming for a while,
        // or the settle time is over.
        let deadline = Instant::now() + SETTLE;
        let mut last = marks(js, bucket).await?;
        let mut quiet_since = Instant::now();
        let after = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = marks(js, bucket).await?;
            if now.events != last.events {
                quiet_since = Instant::now();
            }
            last = now;
            let requests_done = now.requests_held <= before.requests_held;
            if (requests_done && quiet_since.elapsed() >= QUIET) || Instant::now() >= deadline {
                break now;
            }
        };
        let per_pair = |n: u64| n as f64 / PAIRS as f64;
        let stored = after.requests - before.requests;
        let still_held = after.requests_held.saturating_sub(before.requests_held);
        rows.push(WritesRow {
            workload,
            pairs: PAIRS,
            bucket: per_pair(after.bucket - before.bucket),
            requests: per_pair(stored),
            request_deletes: per_pair(stored.saturating_sub(still_held)),
            events: per_pair(after.events - before.events),
        });
    }
    Ok(rows)
}
