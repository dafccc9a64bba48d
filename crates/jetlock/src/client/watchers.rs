//! Waits without a coordinator watch their key. The waits of one client on
//! one key share one watcher, one consumer of the bucket's stream, kept
//! while a wait uses it and a moment after, then deleted: a consumer per
//! wait cost two JetStream API calls a wait, and after a burst of waits
//! the server's consumer limit was reached before their deletes landed
//! (`bucket::MAX_CONSUMERS`). A client now has at most one consumer per key
//! it waits for.

use crate::name::LockName;
use crate::record::RecordError;
use crate::store::{Current, LockStore};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a watcher has seen of its key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// The newest change: its revision and what it says.
    pub(crate) latest: Option<(u64, Result<Current, RecordError>)>,
    /// Why the watcher cannot watch right now (it retries), until it can.
    pub(crate) failing: Option<String>,
}

/// How long a watcher outlives its last wait: a busy client's next wait on
/// the same key finds it.
const IDLE: Duration = Duration::from_secs(2);

/// This client's watchers, by key.
#[derive(Default)]
pub(crate) struct Watchers {
    by_key: Arc<DashMap<String, Arc<watch::Sender<Seen>>>>,
}

impl Watchers {
    /// What `name`'s watcher sees from revision `from` on: a new watcher
    /// starts there; a running one may have started earlier or later, so
    /// the waiter judges each change by its revision.
    pub(crate) fn subscribe(
        &self,
        store: &LockStore,
        name: &LockName,
        from: u64,
    ) -> watch::Receiver<Seen> {
        // Under the entry's lock: a watcher leaves the map only under it,
        // and only with nobody subscribed.
        let entry = self.by_key.entry(name.key().to_owned());
        match entry {
            dashmap::Entry::Occupied(e) => e.get().subscribe(),
            dashmap::Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(Seen::default());
                let tx = Arc::new(tx);
                e.insert(tx.clone());
                tokio::spawn(run(
                    store.clone(),
                    name.clone(),
                    from,
                    tx,
                    self.by_key.clone(),
                ));
                rx
            }
        }
    }
}

async fn run(
    store: LockStore,
    name: LockName,
    mut from: u64,
    tx: Arc<watch::Sender<Seen>>,
    by_key: Arc<DashMap<String, Arc<watch::Sender<Seen>>>>,
) {
    let mut failures = 0u32;
    let mut idle_since: Option<Instant> = None;
    // Whether the watcher may stop: nobody used it for `IDLE`. It leaves
    // the map first, under the entry's lock, so no wait subscribes to a
    // watcher that stopped.
    let done = |idle_since: &mut Option<Instant>| {
        if tx.receiver_count() > 0 {
            *idle_since = None;
            return false;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        since.elapsed() >= IDLE
            && by_key
                .remove_if(name.key(), |_, t| {
                    Arc::ptr_eq(t, &tx) && t.receiver_count() == 0
                })
                .is_some()
    };
    loop {
        let mut watch = match store.watch_from(&name, from).await {
            Ok(w) => w,
            Err(e) => {
                failures += 1;
                tx.send_modify(|s| s.failing = Some(e.to_string()));
                tokio::time::sleep(Duration::from_millis(25 << failures.min(6))).await;
                if done(&mut idle_since) {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                change = watch.next() => match change {
                    Some(Ok((revision, current))) => {
                        failures = 0;
                        from = revision + 1;
                        tx.send_replace(Seen { latest: Some((revision, current)), failing: None });
                    }
                    // Broke (a server restart) or ended: a new one resumes
                    // after the last revision seen.
                    Some(Err(e)) => {
                        tx.send_modify(|s| s.failing = Some(e.to_string()));
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(IDLE) => {}
            }
            if done(&mut idle_since) {
                return;
            }
        }
        failures += 1;
        tokio::time::sleep(Duration::from_millis(25 << failures.min(6))).await;
    }
}
