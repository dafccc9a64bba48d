//! The locks bucket, the request and event streams and the config bucket:
//! each exists, is configured as jetlock needs, has replicas that fit the
//! cluster and a quorum online.

use super::{Finding, Status};
use async_nats::jetstream::{self, stream};
use jetlock::bucket::CONFIG_BUCKET;
use jetlock::bucket::{check_layout, config_problem, config_warnings};
use jetlock::clock::unix_ms;
use jetlock::events::EVENT_STREAM;
use jetlock::protocol::REQUEST_STREAM;
use std::time::Duration;

/// A replica the stream leader has not heard from for this long is down
/// (the server marks a peer `offline` only later, and not always).
const SILENT_REPLICA: Duration = Duration::from_secs(10);

/// The locks bucket, the request and event streams and the config bucket;
/// and the locks bucket's stream info, when it could be read.
pub(super) async fn findings(
    nats: &async_nats::Client,
    bucket: &str,
    servers: Option<usize>,
) -> (Vec<Finding>, Option<stream::Info>) {
    let js = jetstream::new(nats.clone());
    if let Err(e) = js.query_account().await {
        let finding = vec![Finding::fail(
            "jetstream",
            format!("JetStream does not answer for this account: {e}"),
            "enable JetStream: a `jetstream {}` block in every server's config and \
`jetstream: enabled` for this account",
        )];
        return (finding, None);
    }
    let kv_stream = format!("KV_{bucket}");
    let config_stream = format!("KV_{CONFIG_BUCKET}");
    let streams = [
        ("locks-bucket", kv_stream.as_str()),
        ("request-stream", REQUEST_STREAM),
        ("event-stream", EVENT_STREAM),
        ("config-bucket", config_stream.as_str()),
    ];
    let infos =
        futures::future::join_all(streams.iter().map(|(_, name)| stream_info(&js, name))).await;
    // A server that is down is missing from the advertised URLs but not
    // from the peers of the streams it holds.
    let peers = infos
        .iter()
        .filter_map(|i| i.as_ref().ok().and_then(Option::as_ref))
        .filter_map(|i| i.cluster.as_ref())
        .map(|c| usize::from(c.leader.is_some()) + c.replicas.len())
        .max()
        .unwrap_or(0);
    let servers = match servers {
        Some(n) => Some(n.max(peers)),
        None => Some(peers).filter(|&n| n > 1),
    };
    let replicas = recommended_replicas(servers);
    let mut findings = Vec::new();
    let mut locks = None;
    for ((check, name), info) in streams.into_iter().zip(infos) {
        match info {
            Ok(Some(info)) if check == "locks-bucket" => {
                findings.extend(locks_bucket_findings(bucket, &info, servers));
                locks = Some(info);
            }
            Ok(Some(info)) => findings.extend(replica_findings(check, &info, servers)),
            Ok(None) if check == "locks-bucket" => findings.push(Finding::fail(
                check,
                format!("locks bucket {bucket:?} does not exist"),
                format!(
                    "create it: `jetlock setup --bucket {bucket} --replicas {replicas}`, or start `jetlock serve --bucket {bucket} --replicas {replicas}`"
                ),
            )),
            Ok(None) => findings.push(Finding::warn(
                check,
                format!("{name} does not exist"),
                format!(
                    "start `jetlock serve --replicas {replicas}` once: a coordinator creates it"
                ),
            )),
            Err(e) => findings.push(Finding::fail(
                check,
                format!("cannot read stream {name}: {e}"),
                format!(
                    "a stream without a leader does not answer (after a server loss an election \
takes seconds; with most of its servers down there is none), nor does JetStream to a user \
without $JS.API.STREAM.INFO: check `nats stream info {name}` and run the doctor again"
                ),
            )),
        }
    }
    if let Some(info) = &locks {
        findings.extend(super::buckets::findings(&js, bucket, info, servers).await);
    }
    (findings, locks)
}

fn recommended_replicas(servers: Option<usize>) -> usize {
    match servers {
        Some(n) if n >= 3 => 3,
        _ => 1,
    }
}

/// A stream's info, `None` when the stream does not exist.
pub(super) async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, async_nats::Error> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s.cached_info().clone())),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn locks_bucket_findings(
    bucket: &str,
    info: &stream::Info,
    servers: Option<usize>,
) -> Vec<Finding> {
    const CHECK: &str = "locks-bucket";
    let config = &info.config;
    let mut findings = Vec::new();
    if let Err(e) = check_layout(bucket, config) {
        findings.push(Finding::fail(
            CHECK,
            e.to_string(),
            "run every client, coordinator and CLI of this bucket at a release that speaks its layout (docs/PROTOCOL.md, \"Key layouts\")",
        ));
    }
    if let Some(problem) = config_problem(config) {
        findings.push(Finding::fail(
            CHECK,
            format!("{bucket}: {problem}"),
            format!("fix the stream (`nats stream edit KV_{bucket}`); never delete or rename a bucket while a client may hold a lock in it (docs/OPERATIONS.md, \"Deleting the locks bucket\")"),
        ));
    }
    for warning in config_warnings(config) {
        findings.push(Finding::warn(
            CHECK,
            format!("{bucket}: {warning}"),
            format!("`nats kv edit {bucket} --history 1` (history); file storage needs the bucket created again, with no client running (docs/OPERATIONS.md, \"Deleting the locks bucket\")"),
        ));
    }
    let replicas = replica_findings(CHECK, info, servers);
    if findings.is_empty() {
        let markers = config
            .subject_delete_marker_ttl
            .map(|ttl| humantime::format_duration(ttl).to_string())
            .unwrap_or_default();
        let requests = match jetlock::bucket::partitions_of(bucket, config) {
            Ok(p) if p > 1 => format!("; requests in {p} partitions"),
            _ => "; requests not partitioned".to_owned(),
        };
        let safe = format!("; per-message TTL on, markers kept {markers}, history 1{requests}");
        return replicas
            .into_iter()
            .map(|mut f| {
                if f.status == Status::Ok {
                    f.detail.push_str(&safe);
                }
                f
            })
            .collect();
    }
    // The OK line of the replicas says nothing the problems did not.
    findings.extend(replicas.into_iter().filter(|f| f.status != Status::Ok));
    findings
}

/// A stream's quorum, its replicas against the cluster's size, and
/// replicas that are offline.
fn replica_findings(
    check: &'static str,
    info: &stream::Info,
    servers: Option<usize>,
) -> Vec<Finding> {
    let name = &info.config.name;
    let replicas = info.config.num_replicas.max(1);
    let mut findings = Vec::new();
    if let Some(cluster) = info.cluster.as_ref().filter(|_| replicas > 1) {
        // A leader that has led for a while and never heard from a peer
        // (`active` 0, not current) has not seen it since the election.
        let led_ms = cluster.leader_since.map_or(i64::MAX, |since| {
            (unix_ms() as i64).saturating_sub(since.unix_timestamp().saturating_mul(1000))
        });
        let never_heard = |p: &stream::PeerInfo| {
            !p.current && p.active.is_zero() && led_ms > SILENT_REPLICA.as_millis() as i64
        };
        let offline: Vec<&str> = cluster
            .replicas
            .iter()
            .filter(|p| p.offline || p.active > SILENT_REPLICA || never_heard(p))
            .map(|p| p.name.as_str())
            .collect();
        let online = replicas.saturating_sub(offline.len());
        let quorum = replicas / 2 + 1;
        if cluster.leader.is_none() || online < quorum {
            findings.push(Finding::fail(
                check,
                format!(
                    "{name} has no quorum: {online} of {replicas} replicas online, {quorum} needed"
                ),
                format!(
                    "restart the servers of its offline replicas ({}) with their store dirs",
                    offline.join(", ")
                ),
            ));
        } else if !offline.is_empty() {
            findings.push(Finding::warn(
                check,
                format!(
                    "{name}: replica on {} offline (silent for over {SILENT_REPLICA:?}); it works on the other {online}",
                    offline.join(", ")
                ),
                "restart that server with its store dir; its replica catches up",
            ));
        }
    }
    match servers {
        Some(n) if replicas > n => findings.push(Finding::fail(
            check,
            format!("{name} has {replicas} replicas but the cluster has {n} server(s): it cannot reach a quorum"),
            format!("add servers, or `nats stream edit {name} --replicas {n}`"),
        )),
        Some(n) if n > 1 && replicas == 1 => findings.push(Finding::warn(
            check,
            format!("{name} has 1 replica in a cluster of {n}: it is gone when its one server is"),
            format!("`nats stream edit {name} --replicas {}`", n.min(3)),
        )),
        _ if replicas == 2 => findings.push(Finding::warn(
            check,
            format!("{name} has 2 replicas: it stops taking writes when either server is down"),
            format!("`nats stream edit {name} --replicas 3`"),
        )),
        _ => {}
    }
    if findings.is_empty() {
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.as_deref())
            .map(|l| format!(", leader {l}"))
            .unwrap_or_default();
        findings.push(Finding::ok(
            check,
            format!(
                "{name}: {replicas} replica(s){leader}, messages: {}",
                info.state.messages
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_info(replicas: usize) -> stream::Info {
        serde_json::from_value(stream_info_json(replicas))
            .expect("a stream info as the server sends it")
    }

    fn stream_info_json(replicas: usize) -> serde_json::Value {
        serde_json::json!({
            "config": {"name": "KV_X", "num_replicas": replicas, "subjects": [],
                        "retention": "limits", "storage": "file", "max_consumers": -1,
                        "max_msgs": -1, "max_bytes": -1, "max_age": 0,
                        "max_msgs_per_subject": 1, "discard": "new",
                        "allow_msg_ttl": true, "subject_delete_marker_ttl": 900000000000u64},
            "created": "2025-01-01T00:00:00Z",
            "state": {"messages": 0, "bytes": 0, "first_seq": 0, "first_ts": "0001-01-01T00:00:00Z",
                      "last_seq": 0, "last_ts": "0001-01-01T00:00:00Z", "consumer_count": 0},
        })
    }

    #[test]
    fn replicas_are_judged_against_the_cluster() {
        let status = |replicas, servers| {
            replica_findings("s", &stream_info(replicas), servers)
                .iter()
                .map(|f| f.status)
                .max()
        };
        assert_eq!(status(1, Some(1)), Some(Status::Ok));
        assert_eq!(status(3, Some(3)), Some(Status::Ok));
        assert_eq!(status(1, Some(3)), Some(Status::Warn));
        assert_eq!(status(2, Some(3)), Some(Status::Warn));
        assert_eq!(status(3, Some(1)), Some(Status::Fail));
        assert_eq!(status(3, None), Some(Status::Ok));
    }

    #[test]
    fn silent_replicas_warn_and_a_lost_quorum_fails() {
        let with_peers = |leader: Option<&str>, peers: serde_json::Value| {
            let mut info = stream_info_json(3);
            info["cluster"] = serde_json::json!({
                "name": "c", "leader": leader, "leader_since": "2025-01-01T00:00:00Z",
                "replicas": peers,
            });
            let info: stream::Info = serde_json::from_value(info).unwrap();
            replica_findings("s", &info, Some(3))
        };
        let peer = |name: &str, current: bool, active_ns: u64| serde_json::json!({"name": name, "current": current, "active": active_ns});
        let healthy = with_peers(
            Some("n1"),
            serde_json::json!([peer("n2", true, 5_000_000), peer("n3", true, 0)]),
        );
        assert_eq!(healthy[0].status, Status::Ok, "{healthy:?}");
        // Silent for a minute, or never heard from by a leader of long standing.
        for n3 in [peer("n3", false, 60_000_000_000), peer("n3", false, 0)] {
            let one_down = with_peers(
                Some("n1"),
                serde_json::json!([peer("n2", true, 5_000_000), n3]),
            );
            assert_eq!(one_down.len(), 1, "{one_down:?}");
            assert_eq!(one_down[0].status, Status::Warn);
            assert!(one_down[0].detail.contains("n3"), "{}", one_down[0].detail);
        }
        let two_down = with_peers(
            Some("n1"),
            serde_json::json!([peer("n2", false, 60_000_000_000), {"name": "n3", "current": false, "active": 0, "offline": true}]),
        );
        assert_eq!(two_down[0].status, Status::Fail, "{two_down:?}");
        assert!(two_down[0]
            .detail
            .contains("1 of 3 replicas online, 2 needed"));
        let leaderless = with_peers(None, serde_json::json!([]));
        assert_eq!(leaderless[0].status, Status::Fail, "{leaderless:?}");
    }

    #[test]
    fn a_safe_bucket_is_ok_and_an_unsafe_one_fails_with_the_setting() {
        let good = stream_info(1);
        let findings = locks_bucket_findings("X", &good, Some(1));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Ok);
        let mut no_ttl = good.clone();
        no_ttl.config.allow_message_ttl = false;
        no_ttl.config.max_messages_per_subject = 5;
        let findings = locks_bucket_findings("X", &no_ttl, Some(1));
        let statuses: Vec<Status> = findings.iter().map(|f| f.status).collect();
        assert_eq!(statuses, [Status::Fail, Status::Warn]);
        assert!(findings[0].detail.contains("allow_msg_ttl"));
        assert!(findings[1].detail.contains("5 messages"));
        let mut other_layout = good.clone();
        other_layout
            .config
            .metadata
            .insert(jetlock::bucket::LAYOUT_KEY.to_owned(), "4".to_owned());
        let findings = locks_bucket_findings("X", &other_layout, Some(1));
        assert_eq!(findings[0].status, Status::Fail, "{findings:?}");
        assert!(findings[0].detail.contains("key layout \"4\""));
    }
}
