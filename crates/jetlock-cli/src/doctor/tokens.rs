//! Whether fencing tokens can go back: a token is the sequence of the
//! granting write in the locks bucket's stream, so it goes back when the
//! stream loses acknowledged writes (one replica, or fsync not on every
//! write) or when the bucket is created again starting below the old one
//! (a first sequence not taken from the clock, `bucket::first_sequence`).

use super::varz::Varz;
use super::Finding;
use async_nats::jetstream::stream;
use jetlock::bucket::first_sequence_derived;

const CHECK: &str = "fencing-tokens";

/// What the doctor saw of the servers' fsync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fsync {
    /// No server's VARZ was read (the `sync-interval` check says why).
    Unknown,
    /// The servers, of those read, that do not fsync every write.
    NotAlways(Vec<String>),
    /// Every server read fsyncs every write.
    Always,
}

impl Fsync {
    pub(super) fn of(varz: &[Varz]) -> Self {
        let lazy: Vec<String> = varz
            .iter()
            .filter(|v| {
                v.jetstream
                    .as_ref()
                    .and_then(|js| js.config.as_ref())
                    .is_some_and(|c| !c.sync_always)
            })
            .map(|v| v.name().to_owned())
            .collect();
        match (varz.is_empty(), lazy.is_empty()) {
            (true, _) => Fsync::Unknown,
            (false, true) => Fsync::Always,
            (false, false) => Fsync::NotAlways(lazy),
        }
    }
}

/// One WARN per way the bucket's tokens can go back, or one OK.
pub(super) fn findings(bucket: &str, info: &stream::Info, fsync: &Fsync) -> Vec<Finding> {
    let config = &info.config;
    let replicas = config.num_replicas.max(1);
    let mut findings = Vec::new();
    if !first_sequence_derived(config) {
        let first = config.first_sequence.unwrap_or(1);
        findings.push(Finding::warn(
            CHECK,
            format!(
                "{bucket}: its stream started at sequence {first}, not at the clock: if a bucket \
of this name existed before, fences may hold higher tokens of it and refuse this one's holders"
            ),
            format!(
                "nothing, if no earlier bucket {bucket} ever issued tokens. Otherwise, with no client \
and no coordinator running: `nats kv del {bucket}`, then `jetlock setup --bucket {bucket}` (its tokens \
start above every earlier one; docs/OPERATIONS.md, \"Deleting the locks bucket\")"
            ),
        ));
    }
    if replicas == 1 {
        findings.push(Finding::warn(
            CHECK,
            format!(
                "{bucket} has 1 replica: when its server loses acknowledged writes (a machine \
crash without fsync on every write, a damaged store), their sequences are issued again, and a \
lost grant's token goes to another grant"
            ),
            format!(
                "production: 3 replicas (`nats stream edit KV_{bucket} --replicas 3`) and \
`sync_interval: always`"
            ),
        ));
    }
    if let Fsync::NotAlways(servers) = fsync {
        let who = if replicas == 1 {
            "its server"
        } else {
            "a majority of its servers at once (a power loss)"
        };
        findings.push(Finding::warn(
            CHECK,
            format!(
                "{} fsync(s) not on every write: a crash of {who} can lose acknowledged writes, \
and a lost grant's token goes to another grant",
                servers.join(", ")
            ),
            super::SYNC_FIX,
        ));
    }
    if findings.is_empty() {
        let fsync = match fsync {
            Fsync::Always => "fsync on every write",
            _ => "fsync not checked (see sync-interval)",
        };
        let first = config.first_sequence.unwrap_or(1);
        findings.push(Finding::ok(
            CHECK,
            format!(
                "{bucket}: first sequence {first} from the clock, {replicas} replicas, {fsync}"
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use jetlock::bucket::{FIRST_SEQ_RULE, FIRST_SEQ_RULE_KEY};

    fn info(replicas: usize, first_seq: Option<u64>, rule: bool) -> stream::Info {
        let mut json = serde_json::json!({
            "config": {"name": "KV_X", "num_replicas": replicas, "subjects": [],
                        "retention": "limits", "storage": "file", "max_consumers": -1,
                        "max_msgs": -1, "max_bytes": -1, "max_age": 0,
                        "max_msgs_per_subject": 1, "discard": "new",
                        "allow_msg_ttl": true, "subject_delete_marker_ttl": 900000000000u64},
            "created": "2025-01-01T00:00:00Z",
            "state": {"messages": 0, "bytes": 0, "first_seq": 0, "first_ts": "0001-01-01T00:00:00Z",
                      "last_seq": 0, "last_ts": "0001-01-01T00:00:00Z", "consumer_count": 0},
        });
        if let Some(seq) = first_seq {
            json["config"]["first_seq"] = seq.into();
        }
        if rule {
            json["config"]["metadata"] = serde_json::json!({FIRST_SEQ_RULE_KEY: FIRST_SEQ_RULE});
        }
        serde_json::from_value(json).expect("a stream info as the server sends it")
    }

    fn statuses(findings: &[Finding]) -> Vec<Status> {
        findings.iter().map(|f| f.status).collect()
    }

    const CLOCK: u64 = 1_796_100_000_000_000;

    #[test]
    fn a_derived_r3_bucket_with_fsync_always_is_ok() {
        let found = findings("X", &info(3, Some(CLOCK), true), &Fsync::Always);
        assert_eq!(statuses(&found), [Status::Ok], "{found:?}");
        assert!(found[0].detail.contains("fsync on every write"));
    }

    #[test]
    fn each_way_tokens_can_go_back_warns() {
        // Created before the rule, or by hand: started at 1.
        for (first, rule) in [(None, false), (Some(CLOCK), false), (Some(5), true)] {
            let found = findings("X", &info(3, first, rule), &Fsync::Always);
            assert_eq!(statuses(&found), [Status::Warn], "{first:?} {rule}");
            assert!(found[0].detail.contains("not at the clock"));
        }
        let found = findings("X", &info(1, Some(CLOCK), true), &Fsync::Unknown);
        assert_eq!(statuses(&found), [Status::Warn]);
        assert!(found[0].detail.contains("1 replica"));
        let lazy = Fsync::NotAlways(vec!["n2".into()]);
        let found = findings("X", &info(3, Some(CLOCK), true), &lazy);
        assert_eq!(statuses(&found), [Status::Warn]);
        assert!(
            found[0].detail.starts_with("n2 fsync"),
            "{}",
            found[0].detail
        );
        assert!(found[0].detail.contains("a majority"));
        // All three at once: three warnings.
        let found = findings("X", &info(1, None, false), &lazy);
        assert_eq!(statuses(&found), [Status::Warn; 3]);
    }

    #[test]
    fn fsync_is_read_from_every_varz() {
        let varz = |json: &str| serde_json::from_str::<Varz>(json).unwrap();
        let always = varz(
            r#"{"server_name":"n1","jetstream":{"config":{"sync_interval":1,"sync_always":true}}}"#,
        );
        let lazy = varz(r#"{"server_name":"n2","jetstream":{"config":{"sync_interval":1}}}"#);
        assert_eq!(Fsync::of(&[]), Fsync::Unknown);
        assert_eq!(Fsync::of(std::slice::from_ref(&always)), Fsync::Always);
        assert_eq!(
            Fsync::of(&[always, lazy]),
            Fsync::NotAlways(vec!["n2".into()])
        );
    }
}
