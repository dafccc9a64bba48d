//! The ledger served over NATS request/reply, and the chaos that strikes
//! workers at the worst moments.
//!
//! Subjects (one run = one `<run>` id):
//!
//! - `jetlock.demo.ledger.<run>.read` — [`ReadRequest`](super::ledger::ReadRequest)
//!   → `balances` or `fenced`;
//! - `jetlock.demo.ledger.<run>.write` — [`WriteRequest`](super::ledger::WriteRequest)
//!   → `applied`, `duplicate` or `fenced`;
//!
//! any other subject or body gets `refused` with a code. Requests are
//! handled one at a time, in arrival order, like rows under one database
//! transaction log.
//!
//! With `--chaos`, a strike is armed each time the run passes another
//! stretch of its transfers, alternately:
//!
//! - **kill** — the next worker whose transfer the ledger commits is
//!   SIGKILLed before it gets the reply, so it can never acknowledge its
//!   message: JetStream redelivers it to another worker, and the ledger's
//!   process-once must refuse it;
//! - **pause** — the next worker that reads its balances (holding both
//!   locks) is SIGSTOPped for 1.5–3 s, longer than its session timeout: its
//!   locks move on to other workers, and when it wakes, its write, computed
//!   from the stale read, must be fenced off.

use super::crew::Crew;
use super::ledger::{Ledger, Moment};
use super::plan::SplitMix64;
use super::CliError;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Shortest and longest pause of a worker (its session times out after
/// 900 ms).
const PAUSE_MS: (u64, u64) = (1500, 3000);
/// Strikes per run, at most and at least.
const MAX_STRIKES: u64 = 8;
const MIN_STRIKES: u64 = 2;

/// The ledger, shared by the service and the run's progress loop.
pub type SharedLedger = Arc<Mutex<Ledger>>;

pub fn lock(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .expect("ledger lock never poisoned: the ledger never panics")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strike {
    Kill,
    Pause,
}

/// When and how chaos strikes.
pub struct Chaos {
    state: Mutex<ChaosState>,
}

struct ChaosState {
    armed: Option<Strike>,
    /// Applied-transfer counts at which the next strikes arm.
    thresholds: Vec<u64>,
    next: usize,
    rng: SplitMix64,
}

impl Chaos {
    /// Strikes spread evenly over a run of `transfers`: one per 250
    /// transfers, 2 to 8, first a kill, then a pause, and so on.
    pub fn new(transfers: u64, seed: u64) -> Self {
        let strikes = (transfers / 250).clamp(MIN_STRIKES, MAX_STRIKES);
        let thresholds = (1..=strikes)
            .map(|k| k * transfers / (strikes + 1))
            .collect();
        Chaos {
            state: Mutex::new(ChaosState {
                armed: None,
                thresholds,
                next: 0,
                rng: SplitMix64::new(seed ^ 0xC4A0_5000),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ChaosState> {
        self.state
            .lock()
            .expect("chaos lock never poisoned: nothing in it panics")
    }

    /// Arms the next strike once `applied` transfers passed its threshold
    /// and the previous one has struck.
    pub fn arm(&self, applied: u64) {
        let mut state = self.state();
        if state.armed.is_none()
            && state
                .thresholds
                .get(state.next)
                .is_some_and(|t| applied >= *t)
        {
            state.armed = Some(if state.next.is_multiple_of(2) {
                Strike::Kill
            } else {
                Strike::Pause
            });
            state.next += 1;
        }
    }

    /// Strikes `crew` if the armed strike belongs to `moment`.
    /// Returns whether the worker was killed (it gets no reply).
    fn strike(&self, moment: &Moment, crew: &Crew) -> bool {
        let mut state = self.state();
        match (state.armed, moment) {
            // The guard kills; a worker that is gone already keeps it armed.
            (Some(Strike::Kill), Moment::Committed { worker }) if crew.kill(worker) => {
                state.armed = None;
                true
            }
            (Some(Strike::Pause), Moment::Read { worker }) => {
                let ms = PAUSE_MS.0 + state.rng.below(PAUSE_MS.1 - PAUSE_MS.0 + 1);
                if crew.pause(worker, Duration::from_millis(ms)) {
                    state.armed = None;
                }
                false
            }
            _ => false,
        }
    }
}

/// The ledger's request loop; dropping it stops the loop.
pub struct LedgerService {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LedgerService {
    /// Subscribes to `jetlock.demo.ledger.<run>.>` and serves `ledger`.
    pub async fn start(
        nats: async_nats::Client,
        run: &str,
        ledger: SharedLedger,
        chaos: Option<Arc<Chaos>>,
        crew: Arc<Crew>,
    ) -> Result<Self, CliError> {
        let mut requests = nats.subscribe(super::ledger_subject(run, ">")).await?;
        // The subscription is registered before the workers start sending.
        nats.flush().await?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stopped.cancelled() => break,
                    msg = requests.next() => match msg {
                        Some(msg) => msg,
                        None => break,
                    },
                };
                let op = msg.subject.as_str().rsplit('.').next().unwrap_or("");
                let handled = lock(&ledger).handle(op, &msg.payload);
                let killed = match (&chaos, &handled.moment) {
                    (Some(chaos), Some(moment)) => chaos.strike(moment, &crew),
                    _ => false,
                };
                // Without a reply subject there is nobody to answer.
                if let (Some(reply), false) = (msg.reply, killed) {
                    let body = serde_json::to_vec(&handled.reply).expect("replies serialize");
                    let _ = nats.publish(reply, body.into()).await;
                }
            }
        });
        Ok(LedgerService {
            stop,
            task: Some(task),
        })
    }

    /// Stops serving and waits for the loop to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LedgerService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_arm_one_at_a_time_alternating_kill_and_pause() {
        let chaos = Chaos::new(2000, 1);
        assert_eq!(chaos.state().thresholds.len(), 8);
        chaos.arm(0);
        assert_eq!(chaos.state().armed, None);
        chaos.arm(230);
        assert_eq!(chaos.state().armed, Some(Strike::Kill));
        // Armed strikes wait for their moment; the next does not arm yet.
        chaos.arm(1999);
        assert_eq!(chaos.state().next, 1);
        chaos.state().armed = None;
        chaos.arm(1999);
        assert_eq!(chaos.state().armed, Some(Strike::Pause));
        assert_eq!(Chaos::new(10, 1).state().thresholds, vec![3, 6]);
    }
}
