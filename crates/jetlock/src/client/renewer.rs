//! One lease watchdog per client, not one task per held lock.
//!
//! A task per grant costs a spawn on every acquire and two cross-thread
//! wake-ups per lock (at the spawn, and at the release that stops it): about
//! a tenth of a local round trip, on the hot path. Held by the thousand,
//! those tasks cost memory too. The renewer instead keeps every hold of a
//! client in one timer heap:
//!
//! - a grant registers its hold by pushing a weak reference into a pending
//!   list: no spawn, and no wake-up while the renewer is already ticking;
//! - the renewer wakes at the earliest due time, or at least every
//!   [`TICK`] while it has work, takes in new registrations and renews what
//!   is due, each renewal running concurrently within the task;
//! - a released hold is not removed: it is skipped when it comes due, so a
//!   release wakes nobody either.
//!
//! [`TICK`] is shorter than the shortest renewal period (a third of the
//! 1 s minimum lease), so a new hold is always in the heap before its first
//! renewal is due.

use super::guard::Hold;
use futures::stream::{FuturesUnordered, StreamExt};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest the renewer sleeps while it has holds: under a third of the
/// minimum lease.
const TICK: Duration = Duration::from_millis(250);

pub(crate) struct Renewer {
    pending: Mutex<Vec<Weak<Hold>>>,
    /// True while the renewer sleeps with nothing to do: only then does a
    /// registration wake it.
    idle: AtomicBool,
    wake: Notify,
    stop: CancellationToken,
}

impl Renewer {
    /// Starts the renewer task; it runs until [`Renewer::stop`].
    pub(crate) fn start() -> Arc<Renewer> {
        let renewer = Arc::new(Renewer {
            pending: Mutex::new(Vec::new()),
            idle: AtomicBool::new(true),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(run(renewer.clone()));
        renewer
    }

    /// Puts a new hold under watch.
    pub(crate) fn register(&self, hold: Weak<Hold>) {
        self.pending
            .lock()
            .expect("renewer pending list is never poisoned")
            .push(hold);
        if self.idle.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// A hold's next due time in the heap; `seq` breaks ties.
struct Due {
    at: Instant,
    seq: u64,
    hold: Weak<Hold>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

async fn run(renewer: Arc<Renewer>) {
    let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut running = FuturesUnordered::new();
    let mut seq = 0u64;
    let mut schedule = |heap: &mut BinaryHeap<Reverse<Due>>, hold: Weak<Hold>, at: Instant| {
        seq += 1;
        heap.push(Reverse(Due { at, seq, hold }));
    };
    loop {
        let registered = std::mem::take(
            &mut *renewer
                .pending
                .lock()
                .expect("renewer pending list is never poisoned"),
        );
        for weak in registered {
            if let Some(hold) = weak.upgrade() {
                schedule(&mut heap, weak, hold.first_due());
            }
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(due) = heap.pop().expect("peeked");
            if let Some(hold) = due.hold.upgrade() {
                running.push(async move {
                    let next = hold.tick().await;
                    (Arc::downgrade(&hold), next)
                });
            }
        }
        let idle = heap.is_empty() && running.is_empty();
        if idle {
            renewer.idle.store(true, Ordering::SeqCst);
            // A registration that saw `idle == false` left its hold in the
            // pending list: look once more before sleeping.
            if !renewer
                .pending
                .lock()
                .expect("renewer pending list is never poisoned")
                .is_empty()
            {
                renewer.idle.store(false, Ordering::SeqCst);
                continue;
            }
        }
        let wake_at = heap
            .peek()
            .map_or(now + TICK, |Reverse(d)| d.at.min(now + TICK));
        tokio::select! {
            _ = renewer.stop.cancelled() => return,
            _ = renewer.wake.notified(), if idle => {
                renewer.idle.store(false, Ordering::SeqCst);
            }
            _ = tokio::time::sleep_until(wake_at), if !idle => {}
            Some((hold, next)) = running.next(), if !running.is_empty() => {
                if let Some(at) = next {
                    schedule(&mut heap, hold, at);
                }
            }
        }
    }
}
