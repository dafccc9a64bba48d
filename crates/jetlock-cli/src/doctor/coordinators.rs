//! Coordinators: who answers the service ping `$SRV.PING.jetlock`, and how
//! far their clocks are from this host's, by their heartbeats.

use super::Finding;
use bytes::Bytes;
use futures::StreamExt;
use jetlock::clock::unix_ms;
use jetlock::protocol::{CoordinatorBeat, COORDINATOR_HEARTBEATS};
use jetlock_coordinator::admin::SERVICE;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long coordinators get to answer the service ping.
const PING_WAIT: Duration = Duration::from_millis(500);
/// How long to listen to coordinator heartbeats (sent every 250 ms).
const BEAT_WAIT: Duration = Duration::from_millis(600);
/// Clock skew worth a warning.
const MAX_SKEW_MS: i64 = 500;

/// A coordinator's answer to `$SRV.PING.jetlock`, leniently read.
#[derive(Debug, Clone, Default, Deserialize)]
struct ServicePing {
    #[serde(default)]
    id: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// A coordinator found by the service ping.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CoordinatorSeen {
    id: String,
    version: String,
    /// The locks bucket it serves, when it says.
    bucket: Option<String>,
}

pub(super) async fn ping(nats: &async_nats::Client) -> Vec<CoordinatorSeen> {
    let inbox = nats.new_inbox();
    let Ok(mut replies) = nats.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let subject = format!("$SRV.PING.{SERVICE}");
    if nats
        .publish_with_reply(subject, inbox, Bytes::new())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let deadline = Instant::now() + PING_WAIT;
    let mut seen: Vec<CoordinatorSeen> = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        let Ok(ping) = serde_json::from_slice::<ServicePing>(&msg.payload) else {
            continue;
        };
        let meta = ping.metadata.unwrap_or_default();
        let coordinator = CoordinatorSeen {
            id: meta.get("coordinator").cloned().unwrap_or(ping.id),
            version: ping.version,
            bucket: meta.get("bucket").cloned(),
        };
        if !seen.iter().any(|c| c.id == coordinator.id) {
            seen.push(coordinator);
        }
    }
    seen.sort_by(|a, b| a.id.cmp(&b.id));
    seen
}

pub(super) fn finding(seen: &[CoordinatorSeen], bucket: &str) -> Finding {
    const CHECK: &str = "coordinators";
    let (ours, others): (Vec<_>, Vec<_>) = seen
        .iter()
        .partition(|c| c.bucket.as_deref().is_none_or(|b| b == bucket));
    let list = |cs: &[&CoordinatorSeen]| {
        cs.iter()
            .map(|c| format!("{} ({})", c.id, c.version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if ours.is_empty() {
        let detail = if others.is_empty() {
            "no coordinator is running".to_owned()
        } else {
            format!(
                "no coordinator serves bucket {bucket:?}; running for other buckets: {}",
                list(&others)
            )
        };
        return Finding::fail(
            CHECK,
            detail,
            format!("start `jetlock serve --bucket {bucket}` (two or more in production)"),
        );
    }
    let detail = format!("{} running: {}", ours.len(), list(&ours));
    if ours.len() == 1 && others.is_empty() {
        // One is a working deployment; the runbooks ask for two.
        return Finding::ok(CHECK, format!("{detail} (run two or more in production)"));
    }
    Finding::ok(CHECK, detail)
}

/// Per coordinator id: its clock minus this host's, in ms, as well as one
/// heartbeat can tell (see [`listen_to_beats`]).
pub(super) type Skews = BTreeMap<String, i64>;

/// Listens to coordinator heartbeats. A beat's `now_ms` was read before it
/// travelled, so `now_ms - received` is the skew minus the delay; the
/// largest value over the beats is the closest to the skew.
pub(super) async fn listen_to_beats(nats: &async_nats::Client) -> Skews {
    let mut skews = Skews::new();
    let Ok(mut beats) = nats.subscribe(COORDINATOR_HEARTBEATS).await else {
        return skews;
    };
    let deadline = Instant::now() + BEAT_WAIT;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, beats.next()).await {
        let received = unix_ms() as i64;
        let Ok(beat) = serde_json::from_slice::<CoordinatorBeat>(&msg.payload) else {
            continue;
        };
        let Some(now_ms) = beat.now_ms.and_then(|ms| i64::try_from(ms).ok()) else {
            continue;
        };
        let skew = now_ms.saturating_sub(received);
        skews
            .entry(beat.id)
            .and_modify(|s| *s = (*s).max(skew))
            .or_insert(skew);
    }
    skews
}

pub(super) fn skew_finding(coordinators: &[CoordinatorSeen], skews: &Skews) -> Option<Finding> {
    const CHECK: &str = "clock-skew";
    if skews.is_empty() {
        return (!coordinators.is_empty()).then(|| {
            Finding::warn(
                CHECK,
                format!("no coordinator heartbeat with a clock heard in {BEAT_WAIT:?}"),
                "coordinators older than this jetlock send no clock: upgrade them; \
or allow this user to subscribe to jetlock.coord.hb.>",
            )
        });
    }
    let shown = |(id, ms): (&String, &i64)| format!("{id} {ms:+} ms");
    let far: Vec<String> = skews
        .iter()
        .filter(|(_, ms)| ms.abs() > MAX_SKEW_MS)
        .map(shown)
        .collect();
    if far.is_empty() {
        let all: Vec<String> = skews.iter().map(shown).collect();
        return Some(Finding::ok(
            CHECK,
            format!("{} (coordinator clock minus this host's)", all.join(", ")),
        ));
    }
    Some(Finding::warn(
        CHECK,
        format!(
            "{} (coordinator clock minus this host's; more than {MAX_SKEW_MS} ms)",
            far.join(", ")
        ),
        "fix NTP (chrony, systemd-timesyncd) on the coordinator hosts and this one; \
leases are timed by the NATS server, so skew does not break locking, but it distorts \
displayed hold times and the timestamps of audit events",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn coordinators_fail_when_none_serves_the_bucket() {
        let c = |id: &str, bucket: Option<&str>| CoordinatorSeen {
            id: id.into(),
            version: "0.1.0".into(),
            bucket: bucket.map(Into::into),
        };
        assert_eq!(finding(&[], "B").status, Status::Fail);
        let elsewhere = finding(&[c("c1", Some("OTHER"))], "B");
        assert_eq!(elsewhere.status, Status::Fail);
        assert!(elsewhere.detail.contains("c1"), "{}", elsewhere.detail);
        let ok = finding(&[c("c1", Some("B")), c("c2", None)], "B");
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.detail, "2 running: c1 (0.1.0), c2 (0.1.0)");
    }

    #[test]
    fn skew_warns_past_half_a_second_either_way() {
        let coordinator = [CoordinatorSeen {
            id: "c1".into(),
            version: "0.1.0".into(),
            bucket: None,
        }];
        let skews = |ms: i64| Skews::from([("c1".to_owned(), ms)]);
        let status = |ms| skew_finding(&coordinator, &skews(ms)).map(|f| f.status);
        assert_eq!(status(3), Some(Status::Ok));
        assert_eq!(status(-499), Some(Status::Ok));
        assert_eq!(status(501), Some(Status::Warn));
        assert_eq!(status(-2000), Some(Status::Warn));
        assert_eq!(
            skew_finding(&coordinator, &Skews::new()).map(|f| f.status),
            Some(Status::Warn)
        );
        assert_eq!(skew_finding(&[], &Skews::new()), None);
    }
}
