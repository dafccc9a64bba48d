//! `jetlock watch [PREFIX]`: lock and membership events as they happen, one
//! line each (or one JSON object per line), read from the event stream so
//! `--since` can replay the recent past first.

use super::{admin, table, CliError, Connection};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use jetlock::events::{Event, EventKind, EVENT_STREAM};
use jetlock::name::LockName;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only lock events of names under this segment prefix (`account`
    /// follows `account:42`); without it, every event.
    prefix: Option<String>,
    /// Replay from this time first: a duration ago (`10m`) or RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON event per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let nats = args.conn.nats().await?;
    let js = jetstream::new(nats.clone());
    let stream = js
        .get_stream(EVENT_STREAM)
        .await
        .map_err(|e| format!("no event stream {EVENT_STREAM} (start `jetlock serve` once): {e}"))?;
    let filter_subjects = match &args.prefix {
        Some(p) => {
            let key = LockName::new(p.trim_end_matches(':'))?.key().to_owned();
            vec![
                format!("jetlock.ev.lock.*.{key}"),
                format!("jetlock.ev.lock.*.{key}.>"),
            ]
        }
        None => vec![jetlock::events::EVENT_SUBJECTS.to_owned()],
    };
    let deliver_policy = match &args.since {
        Some(t) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                admin::parse_time(t)? as i128 * 1_000_000,
            )
            .map_err(|e| format!("--since: {e}"))?,
        },
        None => consumer::DeliverPolicy::New,
    };
    let mut events = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: nats.new_inbox(),
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let msg = tokio::select! {
            m = events.next() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(msg) = msg else { break };
        let msg = msg?;
        match serde_json::from_slice::<Event>(&msg.payload) {
            Ok(event) if args.json => println!("{}", serde_json::to_string(&event)?),
            Ok(event) => println!("{}", line(&event)),
            Err(e) => eprintln!("jetlock: unreadable event on {}: {e}", msg.subject),
        }
        seen += 1;
    }
    Ok(())
}

/// One event as one line: time, kind, what, then the fields it has.
pub fn line(e: &Event) -> String {
    let what = if e.kind.is_lock() {
        e.lock.clone()
    } else {
        e.subject.clone()
    };
    let mut parts = vec![
        table::time(e.at_ms),
        format!("{:<22}", e.kind.as_str()),
        what.unwrap_or_default(),
    ];
    let mut field = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    field("session", e.session.clone());
    field("owner", e.owner.clone());
    field("token", e.token.map(|t| t.to_string()));
    field("waited", e.waited_ms.map(|ms| format!("{ms}ms")));
    field("held", e.held_ms.map(table::secs));
    field("ttl", e.ttl_ms.map(table::secs));
    field("grace", e.grace_ms.map(|ms| format!("{ms}ms")));
    field("cause", e.cause.clone());
    field("by", e.by.clone());
    field("reason", e.reason.as_ref().map(|r| format!("{r:?}")));
    field("keys", e.keys.map(|k| k.to_string()));
    field("value", e.value.as_ref().map(|v| v.to_string()));
    if e.kind == EventKind::Granted && e.handoff == Some(true) {
        parts.push("handoff".into());
    }
    parts.push(format!("[{}]", e.coordinator));
    parts.join(" ")
}
