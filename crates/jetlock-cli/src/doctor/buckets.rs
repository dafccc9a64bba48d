//! The buckets 1..K of a deployment that spreads its locks over several
//! (`jetlock::shards`): each one there, safe, and led by its own server.

use super::streams::{locks_bucket_findings, stream_info};
use super::{Finding, Status};
use async_nats::jetstream::{self, stream};
use jetlock::bucket::buckets_of;
use jetlock::shards::{bucket_name, SHARD_OF_KEY};
use std::collections::BTreeMap;

const CHECK: &str = "locks-buckets";

/// Findings about the deployment's other buckets, given bucket 0's info;
/// none for a deployment of one bucket.
pub(super) async fn findings(
    js: &jetstream::Context,
    first: &str,
    info: &stream::Info,
    servers: Option<usize>,
) -> Vec<Finding> {
    let buckets = match buckets_of(first, &info.config) {
        Ok(1) => return Vec::new(),
        Ok(k) => k,
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                e.to_string(),
                "the count is fixed when the deployment is made: restore the stream metadata `nats stream edit` changed",
            )]
        }
    };
    let mut findings = Vec::new();
    let mut leaders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut note = |bucket: &str, info: &stream::Info| {
        if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
            leaders.entry(leader).or_default().push(bucket.to_owned());
        }
    };
    note(first, info);
    for index in 1..buckets {
        let bucket = bucket_name(first, index);
        match stream_info(js, &format!("KV_{bucket}")).await {
            Ok(Some(info)) => {
                if info.config.metadata.get(SHARD_OF_KEY).map(String::as_str) != Some(first) {
                    findings.push(Finding::fail(
                        CHECK,
                        format!("{bucket} is not marked as a bucket of {first} ({SHARD_OF_KEY})"),
                        "clients refuse it: create the deployment with `jetlock setup --buckets`, not by hand",
                    ));
                }
                findings.extend(locks_bucket_findings(&bucket, &info, servers));
                note(&bucket, &info);
            }
            Ok(None) => findings.push(Finding::fail(
                CHECK,
                format!("{first} spreads its locks over {buckets} buckets, and {bucket} does not exist: every client and coordinator refuses the deployment"),
                format!("`jetlock setup --bucket {first} --buckets {buckets}` creates what is missing"),
            )),
            Err(e) => findings.push(Finding::fail(
                CHECK,
                format!("cannot read stream KV_{bucket}: {e}"),
                "a stream without a leader does not answer: check `nats stream info` and run the doctor again",
            )),
        }
    }
    let shared: Vec<String> = leaders
        .iter()
        .filter(|(_, led)| led.len() > 1)
        .map(|(server, led)| format!("{server} leads {}", led.join(", ")))
        .collect();
    if !shared.is_empty() && servers.is_some_and(|n| n > leaders.len()) {
        findings.push(Finding::warn(
            CHECK,
            format!("buckets share a leader ({}): their writes are ordered by one server, which spreading them was to avoid", shared.join("; ")),
            format!("`jetlock setup --bucket {first} --buckets {buckets} --replicas N` moves the leaders apart again (an election after a restart can bring them together)"),
        ));
    } else if findings.iter().all(|f| f.status == Status::Ok) {
        findings.push(Finding::ok(
            CHECK,
            format!(
                "locks spread over {buckets} buckets, led by {} server(s)",
                leaders.len().max(1)
            ),
        ));
    }
    findings
}
