//! W4 failover: how long a queued waiter waits after the holder dies.
//!
//! Each run: a `jetlock hold` child takes a fresh lock; an in-process
//! client asks for it with a long wait; once the coordinator has answered
//! the waiter `queued` (watched on `jetlock.to.<session>`; the Rust client
//! itself ignores that answer), the holder is
//!
//! - **killed** (SIGKILL): its connection closes, the server's disconnect
//!   advisory tells the coordinator at once, which hands the lock over.
//!   When the dead process left unread data in its socket, the kernel resets
//!   the connection instead of closing it, the server reports `Read Error`,
//!   and the coordinator (which ends sessions at once only on `Client
//!   Closed`) waits for the session timeout: about one run in twenty;
//! - **hung** (SIGSTOP): its connection stays open and its heartbeats stop;
//!   the coordinator declares the session dead after the session timeout
//!   (1 s by default) and hands the lock over. The holder is killed after.
//!
//! Measured: from the signal to `acquire()` returning in the waiter. The
//! signal comes 0–300 ms after the waiter is queued, so that the hang runs
//! sample every phase of the holder's heartbeats (every 250 ms): a hang is
//! noticed between 0.75 and 1 s (the session timeout) after it begins,
//! plus up to one 20 ms coordinator tick.

use super::procs;
use super::CliError;
use futures::StreamExt;
use jetlock::protocol::{self, Answer};
use jetlock::Client;
use serde::Serialize;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long the coordinator may take to queue the waiter.
const QUEUE_LIMIT: Duration = Duration::from_secs(5);
/// How long the grant may take after the holder's death.
const GRANT_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub(super) enum Death {
    Kill,
    Hang,
}

impl Death {
    fn signal(self) -> libc::c_int {
        match self {
            Death::Kill => libc::SIGKILL,
            Death::Hang => libc::SIGSTOP,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Death::Kill => "holder killed (SIGKILL) → waiter granted",
            Death::Hang => "holder hung (SIGSTOP) → waiter granted",
        }
    }

    /// The target, in ms.
    fn target_ms(self) -> f64 {
        match self {
            Death::Kill => 50.0,
            Death::Hang => 1000.0,
        }
    }
}

/// One failover workload's numbers.
#[derive(Debug, Serialize)]
pub(super) struct FailoverRow {
    pub(super) event: &'static str,
    pub(super) runs: usize,
    pub(super) p50_ms: f64,
    pub(super) max_ms: f64,
    pub(super) target_ms: f64,
    pub(super) samples_ms: Vec<f64>,
}

/// Where the runs happen.
pub(super) struct Setup<'a> {
    pub(super) url: &'a str,
    pub(super) bucket: &'a str,
    /// The queued waiter (a client connected while the coordinator ran).
    pub(super) waiter: &'a Client,
    /// Any connection, to watch the waiter's answers.
    pub(super) nats: &'a async_nats::Client,
    /// A fresh lock name for a run, from a suffix.
    pub(super) name: &'a dyn Fn(&str) -> String,
}

pub(super) async fn run(s: &Setup<'_>, death: Death, runs: usize) -> Result<FailoverRow, CliError> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let kind = match death {
            Death::Kill => "kill",
            Death::Hang => "hang",
        };
        let name = (s.name)(&format!("failover-{kind}-{i}"));
        let took = once(s, &name, death).await?;
        samples.push(took.as_secs_f64() * 1000.0);
    }
    let (p50_ms, max_ms) = p50_and_max(&samples);
    Ok(FailoverRow {
        event: death.label(),
        runs,
        p50_ms,
        max_ms,
        target_ms: death.target_ms(),
        samples_ms: samples,
    })
}

/// The median (the lower of the middle two) and the largest of `samples`;
/// 0 for none.
pub(super) fn p50_and_max(samples: &[f64]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |i: usize| sorted.get(i).copied().unwrap_or(0.0);
    (
        at(sorted.len().saturating_sub(1) / 2),
        at(sorted.len().saturating_sub(1)),
    )
}

/// A pause of 0–300 ms that differs from run to run.
pub(super) fn phase() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(nanos) % 300)
}

async fn once(s: &Setup<'_>, name: &str, death: Death) -> Result<Duration, CliError> {
    let mut holder = procs::hold(s.url, s.bucket, name).await?;
    let mut answers = s
        .nats
        .subscribe(protocol::answer_subject(s.waiter.session()))
        .await?;
    s.nats.flush().await?;
    // In a set: an early return aborts the acquire (which cancels it).
    let mut waiting = JoinSet::new();
    let (waiter, lock) = (s.waiter.clone(), name.to_owned());
    waiting.spawn(async move {
        let guard = waiter
            .lock(&lock)
            .wait(Duration::from_secs(60))
            .acquire()
            .await;
        (guard, Instant::now())
    });
    let queued = tokio::time::timeout(QUEUE_LIMIT, async {
        while let Some(msg) = answers.next().await {
            if let Ok(Answer::Queued { key, .. }) = serde_json::from_slice(&msg.payload) {
                if key == name {
                    return true;
                }
            }
        }
        false
    })
    .await;
    drop(answers);
    if queued != Ok(true) {
        holder.proc.kill().await;
        return Err(format!(
            "failover: the waiter for {name} was not queued by a coordinator within {QUEUE_LIMIT:?}"
        )
        .into());
    }
    // The holder heartbeats every 250 ms and printed its line just after
    // its first one: without a pause the signal would always land right
    // after a heartbeat (the worst case of a hang). A pause of 0–300 ms
    // samples the heartbeat phase evenly instead.
    tokio::time::sleep(phase()).await;
    let died = Instant::now();
    holder.proc.signal(death.signal());
    let granted = tokio::time::timeout(GRANT_LIMIT, waiting.join_next()).await;
    holder.proc.kill().await;
    let (guard, at) = match granted {
        Ok(Some(Ok((Ok(guard), at)))) => (guard, at),
        Ok(Some(Ok((Err(e), _)))) => return Err(e.into()),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(None) => unreachable!("one task was spawned"),
        Err(_) => {
            return Err(format!(
                "failover: the waiter for {name} was not granted within {GRANT_LIMIT:?} of the holder's death"
            )
            .into())
        }
    };
    let took = at.duration_since(died);
    if guard.token().get() <= holder.token {
        return Err(format!(
            "failover: {name} was granted with token {} after the holder's {}",
            guard.token(),
            holder.token
        )
        .into());
    }
    guard.release().await?;
    Ok(took)
}
