//! Whether this coordinator can serve, for `GET /readyz`: connected to
//! NATS, and its engine caught up with the request stream and the bucket
//! (and past the start's listening period). Orchestrators route work and
//! order start-ups by it, so it turns false again the moment the NATS
//! connection drops, and at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Shared by the runtime (which marks it ready) and the HTTP endpoint
/// (which reads it on every probe).
#[derive(Debug, Default)]
pub struct Health {
    nats: OnceLock<async_nats::Client>,
    ready: AtomicBool,
    leaving: AtomicBool,
}

impl Health {
    /// The connection whose state the probe reads. Later calls are ignored:
    /// one coordinator has one connection.
    pub fn connection(&self, nats: &async_nats::Client) {
        let _ = self.nats.set(nats.clone());
    }

    /// The engine has caught up and serves.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The coordinator is leaving: it takes no more work.
    pub(crate) fn set_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// `Ok` when ready; otherwise why not, in one line.
    pub fn readiness(&self) -> Result<(), &'static str> {
        use async_nats::connection::State;
        if self.leaving.load(Ordering::Acquire) {
            return Err("shutting down");
        }
        let Some(nats) = self.nats.get() else {
            return Err("not connected to NATS yet");
        };
        match nats.connection_state() {
            State::Connected => {}
            State::Pending => return Err("not connected to NATS yet"),
            State::Disconnected => return Err("disconnected from NATS; reconnecting"),
        }
        if !self.ready.load(Ordering::Acquire) {
            return Err("catching up with the request stream and the locks bucket");
        }
        Ok(())
    }
}
