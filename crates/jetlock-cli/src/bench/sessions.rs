//! Sessions: what sessions cost a coordinator and the server while they
//! only beat, the figure the capacity model needs for "sessions per
//! coordinator" (docs/SCALING.md).
//!
//! Sessions of the default timeout (900 ms) beat every quarter of it, as
//! the Rust client does, each a core NATS request on `jetlock.hb.<session>`
//! that every coordinator answers. The bench keeps 100, then 1,000, then
//! 10,000 sessions beating at once (each step adds to the last), all from
//! one connection with the beats spread evenly over the interval. Over a
//! window after each step's first beats it counts the beats sent and the
//! `alive` answers with their delay, and reads the CPU time the coordinator
//! and the local server used: CPU per beat above what they use idle
//! (measured first), and so the sessions one core carries. The coordinator's resident memory before and after a step
//! gives its memory per session. At the end every session says `leaving`.
//!
//! An `alive` answer waits for the coordinator's next proof beat (every
//! 50 ms, docs/ARCHITECTURE.md "Confirmations need the same proof"), so
//! the answer delay is tens of milliseconds by design; what matters is that
//! it stays well inside the quarter of the timeout.

use super::CliError;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The session timeout the sessions ask for: the Rust client's default.
const TIMEOUT_MS: u64 = 900;
/// Each session beats this often: a quarter of its timeout.
const INTERVAL: Duration = Duration::from_millis(TIMEOUT_MS / 4);
/// How often the sender wakes to send the beats now due.
const TICK: Duration = Duration::from_millis(5);
/// The window the idle coordinator and server are measured over.
const IDLE: Duration = Duration::from_secs(1);
/// Beats of a step before its window: every new session beats twice.
const WARMUP: Duration = Duration::from_millis(2 * TIMEOUT_MS / 4 + 50);

/// Sessions beating at once, step by step.
pub(super) const STEPS: [u64; 3] = [100, 1_000, 10_000];
pub(super) const QUICK_STEPS: [u64; 2] = [100, 1_000];

#[derive(Debug, Serialize)]
pub(super) struct SessionsRow {
    pub(super) sessions: u64,
    /// Beats sent per second over the window.
    pub(super) beats_per_sec: f64,
    /// Beats of the window answered `alive: true`, in %.
    pub(super) alive_pct: f64,
    pub(super) answer_p50_ms: f64,
    pub(super) answer_p99_ms: f64,
    /// The coordinator's CPU over the window, in % of one core.
    pub(super) coordinator_cpu_pct: f64,
    /// Its CPU above what it uses idle, per beat.
    pub(super) coordinator_us_per_beat: f64,
    /// The local server's, when the bench started it.
    pub(super) server_cpu_pct: Option<f64>,
    pub(super) server_us_per_beat: Option<f64>,
    /// The coordinator's resident memory growth per session added by this
    /// step.
    pub(super) coordinator_bytes_per_session: f64,
    /// Sessions of this timeout one core of a coordinator carries at this
    /// CPU per beat (`None` when the CPU above idle was too small to read).
    pub(super) sessions_per_coordinator_core: Option<f64>,
}

/// What the workload beats against.
pub(super) struct Setup<'a> {
    pub(super) nats: &'a async_nats::Client,
    /// The run's prefix, for session ids.
    pub(super) run: &'a str,
    pub(super) coordinator_pid: u32,
    pub(super) server_pid: Option<u32>,
}

/// `alive` answers to the beats of a window, shared with the task that
/// reads them: beats sent from `from_us` until `to_us` (µs since the
/// workload's start) count.
struct Answers {
    from_us: AtomicU64,
    to_us: AtomicU64,
    /// Their delays, in µs.
    delays_us: Mutex<Vec<u64>>,
}

pub(super) async fn run(
    s: &Setup<'_>,
    steps: &[u64],
    window: Duration,
) -> Result<Vec<SessionsRow>, CliError> {
    let inbox = format!("_INBOX.bench-hb.{}", nuid::next());
    let mut replies = s.nats.subscribe(format!("{inbox}.>")).await?;
    let answers = Arc::new(Answers {
        from_us: AtomicU64::new(u64::MAX),
        to_us: AtomicU64::new(u64::MAX),
        delays_us: Mutex::new(Vec::new()),
    });
    let epoch = Instant::now();
    let reader = {
        let answers = answers.clone();
        tokio::spawn(async move {
            while let Some(msg) = replies.next().await {
                // The reply subject ends with the beat's send time.
                let sent_us = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                let alive = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                    .is_ok_and(|v| v["alive"] == serde_json::json!(true));
                let Some(sent_us) = sent_us.filter(|_| alive) else {
                    continue;
                };
                let window =
                    answers.from_us.load(Ordering::Relaxed)..answers.to_us.load(Ordering::Relaxed);
                if window.contains(&sent_us) {
                    let now_us = epoch.elapsed().as_micros() as u64;
                    answers
                        .delays_us
                        .lock()
                        .expect("no panics while held")
                        .push(now_us.saturating_sub(sent_us));
                }
            }
        })
    };
    let beat = Bytes::from(serde_json::json!({ "timeout_ms": TIMEOUT_MS }).to_string());
    let subject = |i: u64| format!("jetlock.hb.{}.s{i}", s.run);
    let mut rows = Vec::new();
    let mut sessions = 0;
    let result = async {
        // What the coordinator and the server use without the bench's
        // sessions (proof beats, the sweep), taken off each step's CPU.
        super::progress("sessions: the idle coordinator");
        let idle = |pid: u32| async move {
            let before = cpu(pid)?;
            tokio::time::sleep(IDLE).await;
            Ok::<_, CliError>(cpu(pid)?.saturating_sub(before).as_secs_f64() / IDLE.as_secs_f64())
        };
        let idle_coordinator = idle(s.coordinator_pid).await?;
        let idle_server = match s.server_pid {
            Some(pid) => Some(idle(pid).await?),
            None => None,
        };
        for &step in steps {
            super::progress(&format!("sessions: {step} beating"));
            let rss_before = rss(s.coordinator_pid)?;
            sessions = step;
            // Beat for the warm-up, then measure over the window.
            beat_for(s.nats, &subject, &inbox, &beat, sessions, WARMUP, epoch).await?;
            let cpu_before = (cpu(s.coordinator_pid)?, s.server_pid.map(cpu).transpose()?);
            answers
                .delays_us
                .lock()
                .expect("no panics while held")
                .clear();
            answers.to_us.store(u64::MAX, Ordering::Relaxed);
            answers
                .from_us
                .store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            let started = Instant::now();
            let sent = beat_for(s.nats, &subject, &inbox, &beat, sessions, window, epoch).await?;
            let elapsed = started.elapsed().as_secs_f64();
            answers
                .to_us
                .store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            let coordinator_cpu = cpu(s.coordinator_pid)?.saturating_sub(cpu_before.0);
            let server_cpu = match (s.server_pid, cpu_before.1) {
                (Some(pid), Some(before)) => Some(cpu(pid)?.saturating_sub(before)),
                _ => None,
            };
            // Answers to the window's last beats come within a proof beat
            // or two.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut delays =
                std::mem::take(&mut *answers.delays_us.lock().expect("no panics while held"));
            delays.sort_unstable();
            let alive = delays.len() as u64;
            // CPU above idle, per beat.
            let per_beat = |cpu: Duration, idle: f64| {
                (cpu.as_secs_f64() - idle * elapsed).max(0.0) * 1e6 / sent.max(1) as f64
            };
            let coordinator_us_per_beat = per_beat(coordinator_cpu, idle_coordinator);
            let beats_per_session_per_sec = 1.0 / INTERVAL.as_secs_f64();
            rows.push(SessionsRow {
                sessions: step,
                beats_per_sec: sent as f64 / elapsed,
                alive_pct: 100.0 * alive as f64 / sent.max(1) as f64,
                answer_p50_ms: quantile_ms(&delays, 0.50),
                answer_p99_ms: quantile_ms(&delays, 0.99),
                coordinator_cpu_pct: 100.0 * coordinator_cpu.as_secs_f64() / elapsed,
                coordinator_us_per_beat,
                server_cpu_pct: server_cpu.map(|c| 100.0 * c.as_secs_f64() / elapsed),
                server_us_per_beat: server_cpu.zip(idle_server).map(|(c, i)| per_beat(c, i)),
                coordinator_bytes_per_session: super::memory::per_item(
                    rss_before,
                    rss(s.coordinator_pid)?,
                    step - rows.last().map_or(0, |r: &SessionsRow| r.sessions),
                ),
                sessions_per_coordinator_core: (coordinator_us_per_beat >= 0.1)
                    .then(|| 1e6 / (coordinator_us_per_beat * beats_per_session_per_sec)),
            });
        }
        Ok::<_, CliError>(())
    }
    .await;
    // Every session leaves, so the coordinator frees them now.
    let leaving = Bytes::from(serde_json::json!({ "leaving": true }).to_string());
    for i in 0..sessions {
        let _ = s.nats.publish(subject(i), leaving.clone()).await;
    }
    let _ = s.nats.flush().await;
    reader.abort();
    result.map(|()| rows)
}

/// Beats `sessions` sessions for `length`, each once per [`INTERVAL`],
/// spread evenly; returns the beats sent.
async fn beat_for(
    nats: &async_nats::Client,
    subject: &impl Fn(u64) -> String,
    inbox: &str,
    body: &Bytes,
    sessions: u64,
    length: Duration,
    epoch: Instant,
) -> Result<u64, CliError> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let per_sec = sessions as f64 / INTERVAL.as_secs_f64();
    let (mut sent, mut next) = (0u64, 0u64);
    while started.elapsed() < length {
        tick.tick().await;
        let due = (per_sec * started.elapsed().as_secs_f64()) as u64;
        while sent < due {
            let now_us = epoch.elapsed().as_micros() as u64;
            let reply = format!("{inbox}.{next}.{now_us}");
            nats.publish_with_reply(subject(next), reply, body.clone())
                .await?;
            sent += 1;
            next = (next + 1) % sessions;
        }
    }
    nats.flush().await?;
    Ok(sent)
}

fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn rss(pid: u32) -> Result<u64, CliError> {
    super::machine::rss_bytes(pid)
        .ok_or_else(|| format!("could not read the memory of process {pid}").into())
}

fn cpu(pid: u32) -> Result<Duration, CliError> {
    super::machine::cpu_time(pid)
        .ok_or_else(|| format!("could not read the CPU time of process {pid}").into())
}

/// The workload's table.
pub(super) fn markdown(rows: &[SessionsRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\nsessions: each beats every {} ms (timeout {TIMEOUT_MS} ms), all from one connection; CPU over each step's window\n\n",
        INTERVAL.as_millis()
    );
    let cell =
        |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.sessions.to_string(),
                format!("{:.0}", r.beats_per_sec),
                format!("{:.1}", r.alive_pct),
                format!("{:.1}", r.answer_p50_ms),
                format!("{:.1}", r.answer_p99_ms),
                format!("{:.0}", r.coordinator_cpu_pct),
                format!("{:.1}", r.coordinator_us_per_beat),
                cell(r.server_cpu_pct, 0),
                cell(r.server_us_per_beat, 1),
                format!("{:.0}", r.coordinator_bytes_per_session),
                cell(r.sessions_per_coordinator_core, 0),
            ]
        })
        .collect();
    let header = [
        "sessions",
        "beats/s",
        "answered alive (%)",
        "answer p50 (ms)",
        "answer p99 (ms)",
        "coordinator CPU (% of a core)",
        "coordinator µs per beat (above idle)",
        "server CPU (%)",
        "server µs per beat (above idle)",
        "coordinator bytes per session",
        "sessions per coordinator core",
    ];
    let _ = write!(o, "{}", super::report::table(&header, "rrrrrrrrrrr", &rows));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_delays() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&us, 0.5), 51.0);
        assert_eq!(quantile_ms(&us, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
