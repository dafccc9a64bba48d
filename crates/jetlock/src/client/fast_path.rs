//! Whether this client writes the locks bucket itself (the fast path) or
//! asks the coordinators for everything (the coordinator path).
//!
//! The fast path is one CAS per acquire, but it needs a NATS user that may
//! publish to `$KV.<bucket>.>`, and NATS cannot narrow that to the user's
//! own locks: such a user could overwrite any lock. Protocol-only users
//! (`restricted` in `nats/cluster.conf`) cannot, and their clients take,
//! renew and release every lock through coordinator requests.
//!
//! A client is told which with [`crate::ClientOptions::fast_path`], or
//! finds out: when it made its own connection, it watches the connection's
//! server errors, and a publish to the bucket refused by permissions turns
//! the fast path off for the rest of its life (logged once). It also finds
//! out at once, at connect, with a write that cannot land (see
//! [`crate::store::LockStore::probe_write`]): a refusal by JetStream means
//! writes are allowed, a refusal by the server's permissions that they are
//! not. A fast-path write that fails after the fast path was turned off
//! (permissions reloaded while the client runs) is retried on the
//! coordinator path.

use crate::store::{CasError, LockStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How long the connect-time probe waits for either verdict. Without one
/// (a cluster electing a leader), the fast path stays on and a refusal is
/// still noticed when a write is refused.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

pub(crate) struct FastPath {
    on: AtomicBool,
    /// Woken when the fast path is turned off.
    off: Notify,
    /// The deployment's bucket 0: refusals of publishes to it or to its
    /// other buckets (`<bucket>_<n>`, `crate::shards`) concern the fast path.
    bucket: String,
}

/// Server errors start with this for a refused publish (async-nats keeps
/// the server's text, without its quotes).
const PUBLISH_REFUSED: &str = "Permissions Violation for Publish to ";

impl FastPath {
    pub(crate) fn new(on: bool, bucket: &str) -> Self {
        FastPath {
            on: AtomicBool::new(on),
            off: Notify::new(),
            bucket: bucket.to_owned(),
        }
    }

    /// True while this client writes the bucket itself.
    pub(crate) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns the fast path off for good; the first call logs why.
    pub(crate) fn turn_off(&self, why: &str) {
        if self.on.swap(false, Ordering::Relaxed) {
            warn!("{why}; this client now takes, renews and releases every lock through the coordinators (fast path off)");
            self.off.notify_waiters();
        }
    }

    /// Reads one event of the client's own NATS connection.
    pub(crate) fn observe(&self, event: &async_nats::Event) {
        let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = event else {
            return;
        };
        let Some(subject) = text.strip_prefix(PUBLISH_REFUSED) else {
            if text.starts_with("Permissions Violation") {
                warn!("NATS refused: {text} (does the user's permissions block match its ClientOptions::session_prefix?)");
            }
            return;
        };
        if self.is_bucket_subject(subject.trim_matches('"')) {
            self.turn_off("this NATS user may not write the locks bucket");
        } else {
            warn!("NATS refused a publish to {subject}: the user's permissions do not allow it (does its permissions block match ClientOptions::session_prefix?)");
        }
    }

    /// Whether `subject` is a key of one of the deployment's buckets:
    /// `$KV.<bucket>.…` or `$KV.<bucket>_<n>.…`.
    fn is_bucket_subject(&self, subject: &str) -> bool {
        let Some(rest) = subject
            .strip_prefix("$KV.")
            .and_then(|s| s.strip_prefix(self.bucket.as_str()))
        else {
            return false;
        };
        let rest = match rest.strip_prefix('_') {
            Some(n) => n.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => rest,
        };
        rest.starts_with('.')
    }

    /// Resolves once the fast path is off.
    async fn turned_off(&self) {
        loop {
            let notified = self.off.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.on() {
                return;
            }
            notified.await;
        }
    }

    /// Finds out at connect whether this connection may write the bucket:
    /// sends the probe write and waits for JetStream's refusal (allowed),
    /// the server's permissions error (not allowed: the fast path is turned
    /// off by [`FastPath::observe`]), or neither for a while (unknown: stays
    /// on).
    pub(crate) async fn probe(&self, store: &LockStore) {
        if !self.on() {
            return;
        }
        tokio::select! {
            result = store.probe_write() => match result {
                Err(CasError::Conflict { .. }) => debug!("this NATS user may write the locks bucket"),
                Ok(_) => warn!("the locks bucket accepted a write that expects revision 2^63-1; is it a jetlock bucket?"),
                Err(CasError::Transport(e)) => debug!(error = %e, "bucket write probe got no answer"),
            },
            _ = self.turned_off() => {}
            _ = tokio::time::sleep(PROBE_PATIENCE) => debug!("bucket write probe got no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(subject: &str) -> async_nats::Event {
        async_nats::Event::ServerError(async_nats::ServerError::Other(format!(
            "Permissions Violation for Publish to \"{subject}\""
        )))
    }

    #[test]
    fn only_a_refused_bucket_write_turns_the_fast_path_off() {
        let fast = FastPath::new(true, "JETLOCK_LOCKS");
        fast.observe(&refused("jetlock.hb.other.s1"));
        fast.observe(&refused("$KV.OTHER_BUCKET.a"));
        fast.observe(&refused("$KV.JETLOCK_LOCKS_X.a"));
        fast.observe(&refused("$KV.JETLOCK_LOCKSMITH.a"));
        fast.observe(&async_nats::Event::ServerError(
            async_nats::ServerError::Other(
                "Permissions Violation for Subscription to \"$KV.JETLOCK_LOCKS.a\"".into(),
            ),
        ));
        assert!(fast.on());
        fast.observe(&refused("$KV.JETLOCK_LOCKS.account.42"));
        assert!(!fast.on());
        // It never comes back on.
        fast.observe(&async_nats::Event::Connected);
        assert!(!fast.on());
    }

    #[test]
    fn a_refused_write_to_another_bucket_of_the_deployment_turns_it_off() {
        let fast = FastPath::new(true, "JETLOCK_LOCKS");
        fast.observe(&refused("$KV.JETLOCK_LOCKS_2.account.42"));
        assert!(!fast.on());
    }

    #[tokio::test]
    async fn turning_off_wakes_the_waiting_probe() {
        let fast = std::sync::Arc::new(FastPath::new(true, "B"));
        let waiter = tokio::spawn({
            let fast = fast.clone();
            async move { fast.turned_off().await }
        });
        tokio::task::yield_now().await;
        fast.turn_off("test");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
