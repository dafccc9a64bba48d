//! Election failover: how long an election goes without a leader when its
//! leader crashes or steps down, jetlock's (`jetlock::Election`) beside
//! etcd's v3 election API (`peers/etcd_election.rs`).
//!
//! jetlock's candidates are `jetlock elect NAME -- cat` child processes
//! (`procs::candidate`), each its own client, session and connection,
//! queued at the coordinator behind the leader. Each run does one of:
//!
//! - **kill**: SIGKILL to the leader's process. Its connection closes; the
//!   server's disconnect advisory tells the coordinator, which waits the
//!   reconnect grace for the session to come back on a new connection
//!   (async-nats reconnects that way) or for its heartbeats to stop for the
//!   session timeout, whichever ends first, then hands the lock to the next
//!   candidate in line;
//! - **stop**: SIGTERM to the leader's process: `jetlock elect` stops its
//!   command and resigns (a `release`), and the coordinator hands over at
//!   once.
//!
//! Measured: from the signal to the new term seen by an observer in the
//! bench ([`jetlock::Election::observe_in`] on the bench's connection): a
//! watch of the election's key, as any follower of the election would see
//! it. The signal comes 0–300 ms after the last candidate was queued, to
//! sample every phase of the leader's heartbeats. The dead leader is
//! replaced by a fresh candidate at the back of the line before the next
//! run, so every run has the same line.

use super::failover::phase;
use super::procs::{self, CoordinatorMode, Proc};
use super::report::table;
use super::site::Ctx;
use super::CliError;
use futures::StreamExt;
use jetlock::protocol::{self, Answer};
use jetlock::recipes::{election_lock, LeaderChanges};
use jetlock::store::LockStore;
use jetlock::Election;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Failovers of each kind per service, by default and with `--quick`.
const RUNS: usize = 20;
const QUICK_RUNS: usize = 5;
/// Failovers of each kind per service.
pub(super) fn runs(quick: bool) -> usize {
    if quick {
        QUICK_RUNS
    } else {
        RUNS
    }
}

/// Candidates in each election: the leader and two in line.
pub(super) const CANDIDATES: usize = 3;
/// How long a candidate may take to be queued, or elected.
const STEP_LIMIT: Duration = Duration::from_secs(15);

/// How a leader leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Departure {
    /// Its process is killed (jetlock), or its keepalives stop and its
    /// connections close (etcd).
    Crash,
    /// It resigns.
    Resign,
}

impl Departure {
    pub(super) const BOTH: [Departure; 2] = [Departure::Crash, Departure::Resign];

    pub(super) fn label(self) -> &'static str {
        match self {
            Departure::Crash => "leader crashed → new leader observed",
            Departure::Resign => "leader resigned → new leader observed",
        }
    }
}

/// One service's failover times for one way of leaving.
#[derive(Debug, Serialize)]
pub(super) struct ElectionRow {
    pub(super) service: String,
    pub(super) event: &'static str,
    /// How the leader left, exactly.
    pub(super) how: &'static str,
    pub(super) candidates: usize,
    pub(super) runs: usize,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) samples_ms: Vec<f64>,
    /// The timeouts that decide the crash case.
    pub(super) settings: String,
}

impl ElectionRow {
    pub(super) fn new(
        service: String,
        departure: Departure,
        how: &'static str,
        samples_ms: Vec<f64>,
        settings: String,
    ) -> ElectionRow {
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        ElectionRow {
            service,
            event: departure.label(),
            how,
            candidates: CANDIDATES,
            runs: samples_ms.len(),
            p50_ms: quantile(&sorted, 0.5),
            p99_ms: quantile(&sorted, 0.99),
            max_ms: sorted.last().copied().unwrap_or(0.0),
            samples_ms,
            settings,
        }
    }
}

/// The nearest-rank quantile `q` of sorted samples (0 when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// Milliseconds since `from`.
pub(super) fn ms_since(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1000.0
}

/// Where jetlock's elections run.
pub(super) struct Setup<'a> {
    pub(super) url: &'a str,
    pub(super) bucket: &'a str,
    /// Any connection: the observer's, and to see candidates queued.
    pub(super) nats: &'a async_nats::Client,
    pub(super) store: &'a LockStore,
    /// The election's name (fresh for the run).
    pub(super) name: String,
    /// The timeouts in force, for the report.
    pub(super) settings: String,
}

/// jetlock's rows against a site, on an election of the run's own.
pub(super) async fn workload(ctx: &Ctx<'_>) -> Result<Vec<ElectionRow>, CliError> {
    let runs = runs(ctx.args.quick);
    let name = format!("{}-election", ctx.flat);
    // Purged with the run's other names.
    let lock = election_lock(&name)?;
    ctx.flat_names
        .lock()
        .expect("never poisoned")
        .push(lock.as_str().to_owned());
    let config = jetlock_coordinator::config::Config::default();
    let settings = match ctx.args.coordinator {
        CoordinatorMode::External => "the coordinators' own at --url".to_owned(),
        _ => format!(
            "coordinator defaults: reconnect grace {} ms; `jetlock elect` defaults: session timeout {} ms (a heartbeat every {} ms), lease {} s",
            config.reconnect_grace_ms,
            config.session_timeout_ms,
            config.session_timeout_ms / 4,
            config.default_ttl_ms / 1000
        ),
    };
    let setup = Setup {
        url: &ctx.site.url,
        bucket: ctx.site.bucket(),
        nats: ctx.site.client.nats(),
        store: ctx.site.client.store(),
        name,
        settings,
    };
    jetlock(&setup, runs).await
}

/// jetlock's rows: `runs` crashes, then `runs` resignations.
pub(super) async fn jetlock(s: &Setup<'_>, runs: usize) -> Result<Vec<ElectionRow>, CliError> {
    let mut line = Line::start(s).await?;
    let mut rows = Vec::new();
    for departure in Departure::BOTH {
        super::progress(&format!(
            "election: jetlock, {}, {runs} runs",
            departure.label()
        ));
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            match line.failover(s, departure).await {
                Ok(ms) => samples.push(ms),
                Err(e) => {
                    line.stop().await;
                    return Err(e);
                }
            }
        }
        let how = match departure {
            Departure::Crash => "SIGKILL to the leader's `jetlock elect` process",
            Departure::Resign => "SIGTERM to it: it stops its command and resigns",
        };
        rows.push(ElectionRow::new(
            "jetlock".to_owned(),
            departure,
            how,
            samples,
            s.settings.clone(),
        ));
    }
    line.stop().await;
    Ok(rows)
}

/// The candidates of one election, in the order they campaigned, with an
/// observer of the election and a view of the coordinator's answers.
struct Line {
    candidates: Vec<(String, Proc)>,
    started: usize,
    changes: LeaderChanges,
    answers: async_nats::Subscriber,
    /// Sessions the coordinator has queued for the election.
    queued: HashSet<String>,
    term: u64,
    leader: String,
}

impl Line {
    /// The first candidate elected, the others queued behind it.
    async fn start(s: &Setup<'_>) -> Result<Line, CliError> {
        let answers = s.nats.subscribe(protocol::answer_subject(">")).await?;
        s.nats.flush().await?;
        let mut line = Line {
            candidates: Vec::new(),
            started: 0,
            changes: Election::observe_in(s.store, &s.name).await?,
            answers,
            queued: HashSet::new(),
            term: 0,
            leader: String::new(),
        };
        line.add(s).await?;
        let (_, leader) = line.next_leader(Instant::now()).await?;
        if leader != line.candidates[0].0 {
            return Err(format!(
                "election {}: {leader} leads, not the first candidate",
                s.name
            )
            .into());
        }
        while line.candidates.len() < CANDIDATES {
            line.add(s).await?;
            line.wait_queued(s).await?;
        }
        Ok(line)
    }

    /// Starts one more candidate.
    async fn add(&mut self, s: &Setup<'_>) -> Result<(), CliError> {
        let owner = format!("candidate-{}", self.started);
        self.started += 1;
        let proc = procs::candidate(s.url, s.bucket, &s.name, &owner)?;
        self.candidates.push((owner, proc));
        Ok(())
    }

    /// Waits until the coordinator has queued a session it had not queued
    /// before: the newest candidate is in line.
    async fn wait_queued(&mut self, s: &Setup<'_>) -> Result<(), CliError> {
        let lock = election_lock(&s.name)?.as_str().to_owned();
        let queued = tokio::time::timeout(STEP_LIMIT, async {
            while let Some(msg) = self.answers.next().await {
                let Ok(Answer::Queued { key, .. }) = serde_json::from_slice(&msg.payload) else {
                    continue;
                };
                if key == lock && self.queued.insert(msg.subject.to_string()) {
                    return true;
                }
            }
            false
        })
        .await;
        if queued != Ok(true) {
            let (_, proc) = self.candidates.last_mut().expect("a candidate was added");
            return Err(proc
                .failed(&format!(
                    "was not queued by a coordinator within {STEP_LIMIT:?}"
                ))
                .into());
        }
        Ok(())
    }

    /// The next leader the observer sees, and when: a term above the last.
    async fn next_leader(&mut self, since: Instant) -> Result<(Instant, String), CliError> {
        let seen = tokio::time::timeout(STEP_LIMIT, async {
            while let Some(change) = self.changes.next().await {
                if let Some(leader) = change? {
                    if leader.term.get() > self.term {
                        return Ok(Some((Instant::now(), leader)));
                    }
                }
            }
            Ok::<_, CliError>(None)
        })
        .await;
        match seen {
            Ok(Ok(Some((at, leader)))) => {
                self.term = leader.term.get();
                self.leader = leader.candidate.clone();
                Ok((at, leader.candidate))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err("the election's observer ended".into()),
            Err(_) => Err(format!(
                "no new leader within {STEP_LIMIT:?} ({:.0} ms after the leader left)",
                ms_since(since, Instant::now())
            )
            .into()),
        }
    }

    /// One failover: the leader leaves, the next in line is observed
    /// leading; a fresh candidate takes the old leader's place in line.
    async fn failover(&mut self, s: &Setup<'_>, departure: Departure) -> Result<f64, CliError> {
        let at = self
            .candidates
            .iter()
            .position(|(owner, _)| *owner == self.leader)
            .ok_or_else(|| format!("{} leads, which is not a candidate here", self.leader))?;
        let (old, mut proc) = self.candidates.remove(at);
        tokio::time::sleep(phase()).await;
        let left = Instant::now();
        proc.signal(match departure {
            Departure::Crash => libc::SIGKILL,
            Departure::Resign => libc::SIGTERM,
        });
        let seen = self.next_leader(left).await;
        match departure {
            Departure::Crash => proc.kill().await,
            Departure::Resign => proc.stop().await,
        }
        let (at, new) = seen?;
        let expected = &self.candidates[0].0;
        if new == old || new != *expected {
            return Err(format!("after {old} left, {new} leads instead of {expected}").into());
        }
        self.add(s).await?;
        self.wait_queued(s).await?;
        Ok(ms_since(left, at))
    }

    async fn stop(self) {
        for (_, proc) in self.candidates {
            proc.stop().await;
        }
    }
}

/// The election table: jetlock's rows and the peers', one per service and
/// way of leaving.
pub(super) fn markdown(rows: &[ElectionRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut out = format!(
        "\nelection failover: {} candidates on one election, the leader leaves; from then until an observer sees the next leader\n\n",
        first.candidates
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.event.to_owned(),
                r.how.to_owned(),
                r.runs.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p99_ms),
                format!("{:.1}", r.max_ms),
                r.settings.clone(),
            ]
        })
        .collect();
    let header = [
        "service", "event", "how", "runs", "p50 (ms)", "p99 (ms)", "max (ms)", "settings",
    ];
    out.push_str(&table(&header, "lllrrrrl", &cells));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&sorted, 0.5), 10.0);
        assert_eq!(quantile(&sorted, 0.99), 20.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_row_sums_up_its_samples_and_prints_in_the_table() {
        let row = ElectionRow::new(
            "etcd".to_owned(),
            Departure::Crash,
            "keepalives stopped",
            vec![3.0, 1.0, 2.0],
            "lease TTL 2 s".to_owned(),
        );
        assert_eq!(
            (row.runs, row.p50_ms, row.p99_ms, row.max_ms),
            (3, 2.0, 3.0, 3.0)
        );
        assert_eq!(row.samples_ms, [3.0, 1.0, 2.0], "in the order measured");
        let text = markdown(&[row]);
        assert!(text.contains("3 candidates"), "{text}");
        assert!(
            text.contains("| etcd | leader crashed → new leader observed | keepalives stopped | 3 | 2.0 | 3.0 | 3.0 | lease TTL 2 s |"),
            "{text}"
        );
        assert_eq!(markdown(&[]), "");
    }
}
