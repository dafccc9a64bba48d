//! The coordinator's Prometheus metrics (`GET /metrics`), fed from the
//! events and answers it sends, so a metric never disagrees with the event
//! stream. Every series is about the locks this coordinator serves; sum
//! over coordinators for the service.
//!
//! Every labelled counter starts at 0 for each label value it can take, so
//! `rate()` and `increase()` see the first event after a restart (a series
//! born at 1 shows no increase). The `process_*` series come from
//! `process.rs`; `GET /metrics` is served by [`crate::http`].

use jetlock::events::{Event, EventKind};
use jetlock::protocol::{Answer, ErrorCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

mod connection;
mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handoff {
    handoff: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Part {
    part: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Prefix {
    prefix: String,
}

/// The `cause` of an expiry: the server's lease ran out, or the holder's
/// session died (`engine/observe.rs`).
const EXPIRY_CAUSES: [&str; 2] = ["lease", "session"];

/// Most distinct `prefix` labels; the rest are summed under `_other`.
const MAX_PREFIXES: usize = 64;

/// The series (names in `docs/OPERATIONS.md`).
pub struct Metrics {
    registry: Registry,
    grants: Family<Handoff, Counter>,
    part_grants: Family<Part, Counter>,
    releases: Counter,
    expiries: Family<Cause, Counter>,
    revocations: Counter,
    renew_failures: Family<Cause, Counter>,
    errors: Family<Code, Counter>,
    dropped: Counter,
    sessions_refused: Counter,
    proof_beats: Family<Outcome, Counter>,
    confirmations_withheld: Counter,
    failovers: Counter,
    wait: Histogram,
    hold: Histogram,
    queue_depth: Family<Prefix, Gauge>,
    locks_held: Gauge,
    sessions: Gauge,
    coordinators: Gauge,
    partitions_owned: Gauge,
    partitions_catching_up: Gauge,
    config_changes: Counter,
    /// The NATS connection's statistics, once `connection` is called.
    connection: connection::Slot,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to ~100 s.
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.5, 16)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            grants: Family::default(),
            part_grants: Family::default(),
            releases: Counter::default(),
            expiries: Family::default(),
            revocations: Counter::default(),
            renew_failures: Family::default(),
            errors: Family::default(),
            dropped: Counter::default(),
            sessions_refused: Counter::default(),
            proof_beats: Family::default(),
            confirmations_withheld: Counter::default(),
            failovers: Counter::default(),
            wait: Histogram::new(seconds_buckets()),
            hold: Histogram::new(seconds_buckets()),
            queue_depth: Family::default(),
            locks_held: Gauge::default(),
            sessions: Gauge::default(),
            coordinators: Gauge::default(),
            partitions_owned: Gauge::default(),
            partitions_catching_up: Gauge::default(),
            config_changes: Counter::default(),
            connection: connection::Slot::default(),
            registry: Registry::default(),
        };
        m.start_at_zero();
        registry.register_collector(Box::new(process::ProcessCollector));
        registry.register_collector(Box::new(connection::ConnectionCollector(
            m.connection.clone(),
        )));
        let r = registry.sub_registry_with_prefix("jetlock");
        r.register(
            "build",
            "This build: the jetlock version and the wire protocol version it speaks",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: jetlock::protocol::VERSION.to_string(),
            }),
        );
        r.register(
            "grants",
            "Locks granted (handoff: straight from the previous holder)",
            m.grants.clone(),
        );
        r.register(
            "part_grants",
            "Grants of the keys of read/write locks and semaphores (part: read, write, permit, queue)",
            m.part_grants.clone(),
        );
        r.register("releases", "Holds ended by a release", m.releases.clone());
        r.register(
            "expiries",
            "Holds ended without a release (cause: lease, session)",
            m.expiries.clone(),
        );
        r.register(
            "revocations",
            "Holds ended by a revocation",
            m.revocations.clone(),
        );
        r.register(
            "renew_failures",
            "Renewals refused, by error code",
            m.renew_failures.clone(),
        );
        r.register(
            "request_errors",
            "Requests answered with an error, by code",
            m.errors.clone(),
        );
        r.register(
            "requests_dropped",
            "Requests dropped unanswered: unknown op or malformed session id in the subject",
            m.dropped.clone(),
        );
        r.register(
            "sessions_refused",
            "Heartbeats of new sessions refused: their prefix is at max_sessions_per_prefix",
            m.sessions_refused.clone(),
        );
        r.register(
            "proof_beats",
            "Proof beats by result: in_time (stored by a quorum within 60 ms), late (within 1 s: proof for sessions of 900 ms and more only), failed",
            m.proof_beats.clone(),
        );
        r.register(
            "confirmations_withheld",
            "Heartbeat answers `alive` never sent: no timely proof beat followed them (their clients' deadlines ran on)",
            m.confirmations_withheld.clone(),
        );
        r.register(
            "failovers",
            "Takeovers of a departed coordinator's locks",
            m.failovers.clone(),
        );
        r.register(
            "wait_seconds",
            "How long queued acquires waited for their grant",
            m.wait.clone(),
        );
        r.register("hold_seconds", "How long holds lasted", m.hold.clone());
        r.register(
            "queue_depth",
            "Waiters, by lock-name prefix (the part before the first ':')",
            m.queue_depth.clone(),
        );
        r.register("locks_held", "Held locks", m.locks_held.clone());
        r.register("sessions", "Live sessions", m.sessions.clone());
        r.register(
            "coordinators",
            "Live coordinators, this one included",
            m.coordinators.clone(),
        );
        r.register(
            "partitions_owned",
            "Request partitions this coordinator owns (0: requests not partitioned)",
            m.partitions_owned.clone(),
        );
        r.register(
            "partitions_catching_up",
            "Request partitions gained and being read from the request stream, not yet acted on",
            m.partitions_catching_up.clone(),
        );
        r.register(
            "config_changes",
            "Config-bucket changes applied",
            m.config_changes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts what `nats` receives and sends from now on
    /// (`jetlock_nats_messages`, `jetlock_nats_bytes`); the first
    /// connection given is kept.
    pub fn connection(&self, nats: &async_nats::Client) {
        let _ = self.connection.set(nats.statistics());
    }

    /// Creates every labelled counter's series for each value its label
    /// can take. `queue_depth` is left out: a gauge redrawn every second.
    fn start_at_zero(&self) {
        for handoff in ["true", "false"] {
            self.grants
                .get_or_create(&Handoff {
                    handoff: handoff.to_owned(),
                })
                .inc_by(0);
        }
        for part in ["read", "write", "permit", "queue"] {
            self.part_grants
                .get_or_create(&Part {
                    part: part.to_owned(),
                })
                .inc_by(0);
        }
        for cause in EXPIRY_CAUSES {
            self.expiries
                .get_or_create(&Cause {
                    cause: cause.to_owned(),
                })
                .inc_by(0);
        }
        for code in ErrorCode::ALL {
            let code = code.as_str().to_owned();
            self.renew_failures
                .get_or_create(&Cause {
                    cause: code.clone(),
                })
                .inc_by(0);
            self.errors.get_or_create(&Code { code }).inc_by(0);
        }
        for result in ["in_time", "late", "failed"] {
            self.proof_beats
                .get_or_create(&Outcome {
                    result: result.to_owned(),
                })
                .inc_by(0);
        }
    }

    /// Counts what an event reports.
    pub fn event(&self, e: &Event) {
        let cause = || Cause {
            cause: e.cause.clone().unwrap_or_default(),
        };
        match e.kind {
            EventKind::Granted => {
                let handoff = e.handoff.unwrap_or(false).to_string();
                self.grants.get_or_create(&Handoff { handoff }).inc();
                if let Some(part) = &e.part {
                    self.part_grants
                        .get_or_create(&Part { part: part.clone() })
                        .inc();
                }
                if let Some(ms) = e.waited_ms {
                    self.wait.observe(ms as f64 / 1000.0);
                }
            }
            EventKind::Released => {
                self.releases.inc();
            }
            EventKind::Expired => {
                self.expiries.get_or_create(&cause()).inc();
            }
            EventKind::Revoked => {
                self.revocations.inc();
            }
            EventKind::RenewFailed => {
                self.renew_failures.get_or_create(&cause()).inc();
            }
            EventKind::Takeover if !e.cause.as_deref().unwrap_or("").starts_with("rebalanced") => {
                self.failovers.inc();
            }
            EventKind::ConfigChanged => {
                self.config_changes.inc();
            }
            _ => {}
        }
        if matches!(
            e.kind,
            EventKind::Released | EventKind::Expired | EventKind::Revoked
        ) {
            if let Some(ms) = e.held_ms {
                self.hold.observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Counts an error answer.
    pub fn answer(&self, a: &Answer) {
        if let Answer::Error { code, .. } = a {
            self.errors
                .get_or_create(&Code {
                    code: code.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// Counts a request dropped unanswered (its subject names nobody who
    /// may be answered).
    pub fn dropped(&self) {
        self.dropped.inc();
    }

    /// Counts a heartbeat of a new session refused for its prefix's quota.
    pub fn session_refused(&self) {
        self.sessions_refused.inc();
    }

    /// Counts a proof beat's result.
    pub fn proof_beat(&self, result: &str) {
        self.proof_beats
            .get_or_create(&Outcome {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts `alive` answers the engine dropped unsent since the last call.
    pub fn confirmations_withheld(&self, more: u64) {
        self.confirmations_withheld.inc_by(more);
    }

    /// Sets the gauges from the engine's state.
    pub fn gauges(
        &self,
        depths: HashMap<String, usize>,
        held: usize,
        sessions: usize,
        coordinators: usize,
    ) {
        let mut depths: Vec<(String, usize)> = depths.into_iter().collect();
        depths.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.queue_depth.clear();
        let mut other = 0;
        for (i, (prefix, n)) in depths.into_iter().enumerate() {
            if i < MAX_PREFIXES {
                self.queue_depth
                    .get_or_create(&Prefix { prefix })
                    .set(n as i64);
            } else {
                other += n;
            }
        }
        if other > 0 {
            self.queue_depth
                .get_or_create(&Prefix {
                    prefix: "_other".into(),
                })
                .set(other as i64);
        }
        self.locks_held.set(held as i64);
        self.sessions.set(sessions as i64);
        self.coordinators.set(coordinators as i64);
    }

    /// The request partitions owned, and those of them being read.
    pub fn partitions(&self, owned: usize, catching_up: usize) {
        self.partitions_owned.set(owned as i64);
        self.partitions_catching_up.set(catching_up as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
