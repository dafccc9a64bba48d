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
//! With `--chaos`, chaos strikes about every `--chaos-every` (each gap
//! drawn from the seed between half and one and a half of it), taking turns:
//!
//! - **kill** — the next worker whose transfer the ledger commits is
//!   SIGKILLed before it gets the reply, so it can never acknowledge its
//!   message: JetStream redelivers it to another worker, and the ledger's
//!   process-once must refuse it;
//! - **pause** — the next worker that reads its balances (holding both
//!   locks) is SIGSTOPped for 1.5–3 s, longer than its session timeout: its
//!   locks move on to other workers, and when it wakes, its write, computed
//!   from the stale read, must be fenced off.
//!
//! With `--cluster`, servers and coordinators take turns too
//! (`cluster.rs`). A worker strike waits for its moment; the next one is
//! not armed before it has struck, so strikes never pile up on a slow run.
//!
//! Chaos ends once every transfer is settled: what is left then is
//! acknowledging the last redeliveries, and a strike that waits for a
//! worker's moment would find only those, again and again. With the
//! ledger's `double-apply` fault each redelivery commits once more, so
//! every kill would meet the last message in flight and it could never be
//! acknowledged.

use super::crew::Crew;
use super::ledger::{Ledger, Moment};
use super::plan::SplitMix64;
use super::CliError;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shortest and longest pause of a worker (its session times out after
/// 900 ms).
const PAUSE_MS: (u64, u64) = (1500, 3000);

/// The ledger, shared by the service and the run's progress loop.
pub type SharedLedger = Arc<Mutex<Ledger>>;

pub fn lock(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .expect("ledger lock never poisoned: the ledger never panics")
}

/// What one strike of chaos does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// SIGKILL the next worker whose transfer the ledger commits.
    KillWorker,
    /// SIGSTOP the next worker that has read its balances.
    PauseWorker,
    /// SIGKILL a nats-server node of `--cluster` (`cluster.rs`).
    KillServer,
    /// SIGSTOP a nats-server node of `--cluster`.
    PauseServer,
    /// SIGKILL a coordinator process of `--cluster`.
    KillCoordinator,
}

impl Strike {
    /// The strikes in turn: on workers, and with `--cluster` on the fleet.
    pub fn turns(cluster: bool) -> Vec<Strike> {
        if cluster {
            vec![
                Strike::KillWorker,
                Strike::KillServer,
                Strike::PauseWorker,
                Strike::PauseServer,
                Strike::KillCoordinator,
            ]
        } else {
            vec![Strike::KillWorker, Strike::PauseWorker]
        }
    }

    /// Whether the strike waits for a worker's moment at the ledger.
    fn at_a_moment(self) -> bool {
        matches!(self, Strike::KillWorker | Strike::PauseWorker)
    }
}

/// When and how chaos strikes.
pub struct Chaos {
    every: Duration,
    state: Mutex<ChaosState>,
}

struct ChaosState {
    /// The worker strike waiting for its moment.
    armed: Option<Strike>,
    /// The strikes in turn.
    turns: Vec<Strike>,
    next: usize,
    /// When the next strike is due (set at the first look).
    next_at: Option<Instant>,
    /// Set once every transfer is settled: no strike is armed or returned.
    ended: bool,
    rng: SplitMix64,
}

impl Chaos {
    /// Chaos striking about every `every`, taking `turns` in turn; the gaps
    /// and the pause lengths come from `seed`.
    pub fn new(every: Duration, seed: u64, turns: Vec<Strike>) -> Self {
        assert!(!turns.is_empty(), "chaos has something to do");
        Chaos {
            every,
            state: Mutex::new(ChaosState {
                armed: None,
                turns,
                next: 0,
                next_at: None,
                ended: false,
                rng: SplitMix64::new(seed ^ 0xC4A0_5000),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ChaosState> {
        self.state
            .lock()
            .expect("chaos lock never poisoned: nothing in it panics")
    }

    /// Looks at the clock: when a strike is due, arms it if it waits for a
    /// worker's moment, or returns it for the caller to do now. A due worker
    /// strike waits while the previous one has not struck.
    pub fn due(&self, now: Instant) -> Option<Strike> {
        let mut state = self.state();
        if state.ended {
            return None;
        }
        if state.next_at.is_none() {
            state.next_at = Some(now + state.gap(self.every));
        }
        if state.next_at.is_some_and(|at| now < at) {
            return None;
        }
        let strike = state.turns[state.next % state.turns.len()];
        if strike.at_a_moment() {
            if state.armed.is_some() {
                return None;
            }
            state.armed = Some(strike);
        }
        state.next += 1;
        state.next_at = Some(now + state.gap(self.every));
        (!strike.at_a_moment()).then_some(strike)
    }

    /// Arms `strike` (a worker strike) for the next moment it belongs to,
    /// unless one is armed already; the clock's strikes go on as before.
    pub fn arm(&self, strike: Strike) {
        let mut state = self.state();
        if strike.at_a_moment() && state.armed.is_none() && !state.ended {
            state.armed = Some(strike);
        }
    }

    /// Ends chaos (every transfer is settled): the armed strike is
    /// disarmed and no other comes.
    pub fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        state.armed = None;
    }

    /// A length drawn from the seed between `range.0` and `range.1` ms.
    pub fn draw(&self, range: (u64, u64)) -> Duration {
        self.state().draw(range)
    }

    /// One of `0..n`, drawn from the seed.
    pub fn pick(&self, n: u64) -> u64 {
        self.state().rng.below(n)
    }

    /// Strikes `crew` if the armed strike belongs to `moment`.
    /// Returns whether the worker was killed (it gets no reply).
    fn strike(&self, moment: &Moment, crew: &Crew) -> bool {
        let mut state = self.state();
        match (state.armed, moment) {
            // The guard kills; a worker that is gone already keeps it armed.
            (Some(Strike::KillWorker), Moment::Committed { worker }) if crew.kill(worker) => {
                state.armed = None;
                true
            }
            (Some(Strike::PauseWorker), Moment::Read { worker }) => {
                let pause = state.draw(PAUSE_MS);
                if crew.pause(worker, pause) {
                    state.armed = None;
                }
                false
            }
            _ => false,
        }
    }
}

impl ChaosState {
    /// A length drawn from the seed between `range.0` and `range.1` ms.
    fn draw(&mut self, range: (u64, u64)) -> Duration {
        Duration::from_millis(range.0 + self.rng.below(range.1 - range.0 + 1))
    }

    /// Half to one and a half times `every`, drawn from the seed.
    fn gap(&mut self, every: Duration) -> Duration {
        every.mul_f64(0.5 + self.rng.below(1001) as f64 / 1000.0)
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
    fn worker_strikes_arm_when_due_one_at_a_time_in_turn() {
        let every = Duration::from_secs(2);
        let chaos = Chaos::new(every, 1, Strike::turns(false));
        let t0 = Instant::now();
        assert_eq!(chaos.due(t0), None);
        let first = chaos.state().next_at.expect("scheduled");
        assert!(first >= t0 + every / 2 && first <= t0 + every * 3 / 2);
        assert_eq!(chaos.due(first - Duration::from_millis(1)), None);
        assert_eq!(chaos.state().armed, None);
        // Worker strikes are armed, not returned.
        assert_eq!(chaos.due(first), None);
        assert_eq!(chaos.state().armed, Some(Strike::KillWorker));
        // An armed strike waits for its moment; the next does not arm yet.
        let later = first + every * 10;
        assert_eq!(chaos.due(later), None);
        assert_eq!(chaos.state().next, 1);
        chaos.state().armed = None;
        assert_eq!(chaos.due(later), None);
        assert_eq!(chaos.state().armed, Some(Strike::PauseWorker));
    }

    /// No cap per run: every gap that passes brings a strike.
    #[test]
    fn strikes_keep_coming_as_long_as_the_run_lasts() {
        let every = Duration::from_secs(1);
        let chaos = Chaos::new(every, 3, Strike::turns(false));
        let t0 = Instant::now();
        chaos.due(t0);
        let mut struck = 0;
        for _ in 0..50 {
            let at = chaos.state().next_at.expect("scheduled");
            chaos.due(at);
            if chaos.state().armed.take().is_some() {
                struck += 1;
            }
        }
        assert_eq!(struck, 50);
    }

    /// Once ended, nothing strikes: not the armed strike at its moment, not
    /// the clock's next ones.
    #[test]
    fn ended_chaos_strikes_no_more() {
        let every = Duration::from_secs(1);
        let chaos = Chaos::new(every, 5, Strike::turns(true));
        chaos.arm(Strike::KillWorker);
        chaos.end();
        assert_eq!(chaos.state().armed, None);
        chaos.arm(Strike::PauseWorker);
        assert_eq!(chaos.state().armed, None);
        let t0 = Instant::now();
        for n in 0..20 {
            assert_eq!(chaos.due(t0 + every * 2 * n), None);
            assert_eq!(chaos.state().armed, None);
        }
    }

    #[test]
    fn the_seed_decides_the_gaps() {
        let gaps = |seed| {
            let chaos = Chaos::new(Duration::from_secs(3), seed, Strike::turns(false));
            let mut state = chaos.state();
            (0..5)
                .map(|_| state.gap(Duration::from_secs(3)))
                .collect::<Vec<_>>()
        };
        assert_eq!(gaps(7), gaps(7));
        assert_ne!(gaps(7), gaps(8));
    }
}
