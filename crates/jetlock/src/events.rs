//! Events: what the coordinators tell operators, on `jetlock.ev.>`, kept by
//! the `JETLOCK_EV` stream for replay (`jetlock watch`, `jetlock history`).
//!
//! Subjects put the thing an event is about last, so one subscription can
//! follow one lock, one prefix or one session:
//!
//! | subject | events |
//! |---|---|
//! | `jetlock.ev.lock.<kind>.<key>` | `granted`, `released`, `expired`, `revoking`, `revoked`, `renew_failed` |
//! | `jetlock.ev.session.<kind>.<session>` | `up`, `down` |
//! | `jetlock.ev.coordinator.<kind>.<id>` | `up`, `down`, `takeover` |
//! | `jetlock.ev.config.changed.<setting>` | a setting of the config bucket changed |
//!
//! `<key>` is the lock's bucket key (`account:42` → `account.42`), so
//! `jetlock.ev.lock.*.account.>` follows every `account:` lock.
//!
//! Lock events come from the key's owning coordinator when it sees the
//! bucket change, so grants taken on the client's fast path (no
//! coordinator involved) are reported too. Delivery is at least once from
//! a live coordinator; a coordinator that dies between a write and its
//! event loses that one event (the bucket, not the event stream, is the
//! truth about who holds a lock).

use crate::protocol::VERSION;
use serde::{Deserialize, Serialize};

/// The stream that keeps events.
pub const EVENT_STREAM: &str = "JETLOCK_EV";
/// Every event subject.
pub const EVENT_SUBJECTS: &str = "jetlock.ev.>";
/// Default retention of the event stream.
pub const DEFAULT_EVENT_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);
/// Default size bound of the event stream.
pub const DEFAULT_EVENT_MAX_BYTES: i64 = 1 << 30;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A lock was taken: from a queue (`waited_ms` set), by a handoff from
    /// the previous holder (`handoff`), or on the client's fast path.
    #[serde(rename = "lock.granted")]
    Granted,
    /// The holder released it (`cause`: `released`).
    #[serde(rename = "lock.released")]
    Released,
    /// The hold ended without a release: the lease ran out
    /// (`cause`: `lease`) or the holder's session died (`session`).
    #[serde(rename = "lock.expired")]
    Expired,
    /// The holder was asked to give the lock up within `grace_ms`.
    #[serde(rename = "lock.revoking")]
    Revoking,
    /// The holder was fenced off (`by`, `reason`).
    #[serde(rename = "lock.revoked")]
    Revoked,
    /// A renewal was refused (`cause`: the error code).
    #[serde(rename = "lock.renew_failed")]
    RenewFailed,
    #[serde(rename = "session.up")]
    SessionUp,
    #[serde(rename = "session.down")]
    SessionDown,
    #[serde(rename = "coordinator.up")]
    CoordinatorUp,
    #[serde(rename = "coordinator.down")]
    CoordinatorDown,
    /// This coordinator now serves `keys` locks that another one served.
    #[serde(rename = "coordinator.takeover")]
    Takeover,
    #[serde(rename = "config.changed")]
    ConfigChanged,
}

impl EventKind {
    /// The subject part before the subject's last part (`lock.granted`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Granted => "lock.granted",
            EventKind::Released => "lock.released",
            EventKind::Expired => "lock.expired",
            EventKind::Revoking => "lock.revoking",
            EventKind::Revoked => "lock.revoked",
            EventKind::RenewFailed => "lock.renew_failed",
            EventKind::SessionUp => "session.up",
            EventKind::SessionDown => "session.down",
            EventKind::CoordinatorUp => "coordinator.up",
            EventKind::CoordinatorDown => "coordinator.down",
            EventKind::Takeover => "coordinator.takeover",
            EventKind::ConfigChanged => "config.changed",
        }
    }

    pub fn is_lock(self) -> bool {
        self.as_str().starts_with("lock.")
    }

    /// Every kind, for documentation and tests.
    pub const ALL: [EventKind; 12] = [
        EventKind::Granted,
        EventKind::Released,
        EventKind::Expired,
        EventKind::Revoking,
        EventKind::Revoked,
        EventKind::RenewFailed,
        EventKind::SessionUp,
        EventKind::SessionDown,
        EventKind::CoordinatorUp,
        EventKind::CoordinatorDown,
        EventKind::Takeover,
        EventKind::ConfigChanged,
    ];
}

/// One event. Fields that do not apply to a kind are absent from the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub kind: EventKind,
    /// Wall-clock time at the coordinator, Unix ms.
    #[serde(default)]
    pub at_ms: u64,
    /// The coordinator that reports it.
    #[serde(default)]
    pub coordinator: String,
    /// The lock's name (`account:42`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// The lock's bucket key (`account.42`): the subject's last part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The fencing token of the hold the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long a queued grant waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// How long the ended hold lasted (by the holder's grant time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    /// A grant that went straight from the previous holder to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// Why (see each kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The reason a person gave (revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The session that asked for it (revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// A session's or coordinator's id, a setting's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// How many locks moved (takeover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// What the lock is part of, for the keys of read/write locks and
    /// semaphores (1.6): `read`, `write`, `permit` or `queue`
    /// ([`crate::client::HeldAs`]); absent for a plain lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// The read/write lock's or semaphore's name, with `part`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
    /// The live coordinators after a membership change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinators: Option<Vec<String>>,
    /// A setting's new value (`null` when it was removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// When the ended hold began, Unix ms by the holder's clock; the
    /// runtime turns it into `held_ms`.
    #[serde(skip)]
    pub acquired_ms: Option<u64>,
}

impl Event {
    /// An event with only its kind set.
    pub fn new(kind: EventKind) -> Event {
        Event {
            v: VERSION,
            kind,
            at_ms: 0,
            coordinator: String::new(),
            lock: None,
            key: None,
            session: None,
            owner: None,
            token: None,
            ttl_ms: None,
            waited_ms: None,
            held_ms: None,
            handoff: None,
            grace_ms: None,
            cause: None,
            reason: None,
            by: None,
            subject: None,
            part: None,
            of: None,
            keys: None,
            coordinators: None,
            value: None,
            acquired_ms: None,
        }
    }

    /// A lock event about `key` (the bucket key) named `lock`.
    pub fn lock(kind: EventKind, lock: &str, key: &str) -> Event {
        Event {
            lock: Some(lock.to_owned()),
            key: Some(key.to_owned()),
            ..Event::new(kind)
        }
    }

    /// An event about a session, coordinator or setting.
    pub fn about(kind: EventKind, subject: &str) -> Event {
        Event {
            subject: Some(subject.to_owned()),
            ..Event::new(kind)
        }
    }

    /// The subject it is published on.
    pub fn subject(&self) -> String {
        let last = if self.kind.is_lock() {
            self.key.as_deref()
        } else {
            self.subject.as_deref()
        };
        format!("jetlock.ev.{}.{}", self.kind.as_str(), last.unwrap_or("_"))
    }
}

/// The subject filter for every lock event of one bucket key.
pub fn lock_filter(key: &str) -> String {
    format!("jetlock.ev.lock.*.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_name_their_subjects() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        let e = Event {
            token: Some(7),
            ..Event::lock(EventKind::Granted, "account:42", "account.42")
        };
        assert_eq!(e.subject(), "jetlock.ev.lock.granted.account.42");
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            !json.contains("waited_ms"),
            "absent fields are left out: {json}"
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        let s = Event::about(EventKind::SessionDown, "pay.w1");
        assert_eq!(s.subject(), "jetlock.ev.session.down.pay.w1");
    }
}
