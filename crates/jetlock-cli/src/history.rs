//! `jetlock history NAME [--since T] [--at T]`: who held a lock when, read
//! from the event stream (`jetlock.ev.lock.*.<key>`), oldest first. `--at`
//! answers "who held account:42 at 14:03?".

use super::{admin, table, CliError, Connection, Exit};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use jetlock::events::{lock_filter, Event, EventKind, EVENT_STREAM};
use jetlock::name::LockName;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    conn: Connection,
    /// The lock's name.
    name: String,
    /// Only events from this time: a duration ago (`2h`) or RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// Say who held the lock at this time (a duration ago or RFC 3339).
    #[arg(long)]
    at: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Stop reading when the stream has been silent this long (it sends what
/// it holds at full speed).
const IDLE: Duration = Duration::from_secs(1);

/// The holder at a point in time.
#[derive(Debug, Serialize)]
pub struct HeldAt {
    pub name: String,
    pub at_ms: u64,
    /// The grant in force then; absent when the lock was free.
    pub holder: Option<Event>,
}

pub async fn run(args: HistoryArgs) -> Result<(), CliError> {
    let name = LockName::new(&args.name)?;
    let at = args.at.as_deref().map(admin::parse_time).transpose()?;
    let since = args.since.as_deref().map(admin::parse_time).transpose()?;
    let nats = args.conn.nats().await?;
    let events = read(&nats, &name, since).await?;
    if let Some(at_ms) = at {
        let held = HeldAt {
            name: name.to_string(),
            at_ms,
            holder: holder_at(&events, at_ms).cloned(),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&held)?);
        } else {
            match &held.holder {
                Some(g) => println!(
                    "{name} at {} was held by session {} (owner {}, token {}) since {}",
                    table::time(at_ms),
                    g.session.as_deref().unwrap_or("?"),
                    g.owner.as_deref().unwrap_or("?"),
                    g.token.unwrap_or(0),
                    table::time(g.at_ms),
                ),
                None => println!("{name} at {} was free", table::time(at_ms)),
            }
        }
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    if events.is_empty() {
        return Err(Exit::with(
            3,
            format!("no events for {name} in {EVENT_STREAM}"),
        ));
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let detail = [
                e.waited_ms.map(|ms| format!("waited {ms}ms")),
                e.handoff.filter(|h| *h).map(|_| "handoff".to_owned()),
                e.held_ms.map(|ms| format!("held {}", table::secs(ms))),
                e.cause.clone(),
                e.by.as_ref().map(|b| format!("by {b}")),
                e.reason.as_ref().map(|r| format!("{r:?}")),
            ];
            vec![
                table::time(e.at_ms),
                e.kind.as_str().trim_start_matches("lock.").to_owned(),
                e.session.clone().unwrap_or_default(),
                e.owner.clone().unwrap_or_default(),
                e.token.map(|t| t.to_string()).unwrap_or_default(),
                detail.into_iter().flatten().collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    table::print(
        &["TIME", "EVENT", "SESSION", "OWNER", "TOKEN", "DETAIL"],
        &rows,
    );
    Ok(())
}

/// Every event of one lock the stream holds (from `since`), oldest first.
pub async fn read(
    nats: &async_nats::Client,
    name: &LockName,
    since: Option<u64>,
) -> Result<Vec<Event>, CliError> {
    let js = jetstream::new(nats.clone());
    let stream = js
        .get_stream(EVENT_STREAM)
        .await
        .map_err(|e| format!("no event stream {EVENT_STREAM} (start `jetlock serve` once): {e}"))?;
    let filter = lock_filter(name.key());
    let mut counts = stream.info_with_subjects(&filter).await?;
    let mut total = 0;
    while let Some(entry) = counts.next().await {
        total += entry?.1;
    }
    if total == 0 {
        return Ok(Vec::new());
    }
    let deliver_policy = match since {
        Some(ms) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .map_err(|e| format!("--since: {e}"))?,
        },
        None => consumer::DeliverPolicy::All,
    };
    let mut messages = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: nats.new_inbox(),
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let mut events = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(IDLE, messages.next()).await {
        let msg = msg?;
        match serde_json::from_slice::<Event>(&msg.payload) {
            Ok(e) => events.push(e),
            Err(e) => eprintln!("jetlock: unreadable event on {}: {e}", msg.subject),
        }
        if msg.info().is_ok_and(|i| i.pending == 0) {
            break;
        }
    }
    Ok(events)
}

/// The grant in force at `at_ms`: the last grant before it whose hold had
/// not ended by then.
pub fn holder_at(events: &[Event], at_ms: u64) -> Option<&Event> {
    let mut holder: Option<&Event> = None;
    for e in events.iter().take_while(|e| e.at_ms <= at_ms) {
        match e.kind {
            EventKind::Granted => holder = Some(e),
            EventKind::Released | EventKind::Expired | EventKind::Revoked
                if holder.is_some_and(|h| h.token == e.token) =>
            {
                holder = None
            }
            _ => {}
        }
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_at_a_time_is_the_last_grant_not_yet_ended() {
        let ev = |kind, at_ms, token| Event {
            at_ms,
            token: Some(token),
            ..Event::lock(kind, "a", "a")
        };
        let events = [
            ev(EventKind::Granted, 10, 1),
            ev(EventKind::Released, 20, 1),
            ev(EventKind::Granted, 30, 2),
            ev(EventKind::Expired, 40, 2),
        ];
        assert_eq!(holder_at(&events, 5), None);
        assert_eq!(holder_at(&events, 15).and_then(|e| e.token), Some(1));
        assert_eq!(holder_at(&events, 25), None);
        assert_eq!(holder_at(&events, 30).and_then(|e| e.token), Some(2));
        assert_eq!(holder_at(&events, 45), None);
        // An end of an older hold does not end the current one.
        let late = [
            ev(EventKind::Granted, 10, 2),
            ev(EventKind::Released, 11, 1),
        ];
        assert_eq!(holder_at(&late, 12).and_then(|e| e.token), Some(2));
    }
}
