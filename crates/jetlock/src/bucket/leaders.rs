//! Where the leaders of a deployment's buckets sit.
//!
//! Each bucket is a stream with its own Raft leader, and spreading locks
//! over K buckets helps only when those leaders are different servers. The
//! server elects leaders as it likes, so after creating the buckets
//! `jetlock setup` asks each one whose leader already leads an earlier one
//! to step down in favour of a replica that leads none (nats-server 2.11+
//! takes a preferred server in the step-down request). A later election
//! (a server restart) can bring two together again: `jetlock doctor` says
//! so, and `jetlock setup` run again spreads them again.

use super::{jetstream_error, BucketError};
use crate::shards;
use async_nats::jetstream;
use std::collections::HashSet;
use std::time::Duration;

/// How long one step-down may take to elect the new leader.
const ELECTION: Duration = Duration::from_secs(5);

/// Each bucket of the deployment whose bucket 0 is `first` with its
/// leader's server name (`None` while it has none).
pub async fn leaders(
    js: &jetstream::Context,
    first: &str,
    buckets: u32,
) -> Result<Vec<(String, Option<String>)>, BucketError> {
    let mut out = Vec::new();
    for index in 0..buckets {
        let name = shards::bucket_name(first, index);
        let (leader, _) = leader_and_replicas(js, &name).await?;
        out.push((name, leader));
    }
    Ok(out)
}

/// Moves leaders so that no two of the deployment's buckets share one,
/// where the cluster has servers enough; returns [`leaders`] after.
pub async fn spread_leaders(
    js: &jetstream::Context,
    first: &str,
    buckets: u32,
) -> Result<Vec<(String, Option<String>)>, BucketError> {
    let mut taken = HashSet::new();
    for index in 0..buckets {
        let name = shards::bucket_name(first, index);
        let (mut leader, replicas) = leader_and_replicas(js, &name).await?;
        if let Some(now) = leader.as_ref().filter(|l| taken.contains(*l)).cloned() {
            if let Some(free) = replicas.iter().find(|r| !taken.contains(*r)) {
                step_down(js, &name, free).await?;
                leader = elected(js, &name, &now).await?;
            }
        }
        taken.extend(leader);
    }
    leaders(js, first, buckets).await
}

async fn leader_and_replicas(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<(Option<String>, Vec<String>), BucketError> {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| jetstream_error(bucket, e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| jetstream_error(bucket, e))?;
    let Some(cluster) = &info.cluster else {
        return Ok((None, Vec::new()));
    };
    let mut replicas: Vec<String> = cluster.replicas.iter().map(|p| p.name.clone()).collect();
    replicas.sort();
    Ok((cluster.leader.clone(), replicas))
}

async fn step_down(js: &jetstream::Context, bucket: &str, to: &str) -> Result<(), BucketError> {
    let body = serde_json::json!({ "placement": { "preferred": to } });
    let answer: serde_json::Value = js
        .request(format!("STREAM.LEADER.STEPDOWN.KV_{bucket}"), &body)
        .await
        .map_err(|e| jetstream_error(bucket, e))?;
    match answer.get("error") {
        Some(error) => Err(jetstream_error(
            bucket,
            format!("leader step-down refused: {error}"),
        )),
        None => Ok(()),
    }
}

/// The leader once it is another server than `old` (or after [`ELECTION`],
/// whatever it is then).
async fn elected(
    js: &jetstream::Context,
    bucket: &str,
    old: &str,
) -> Result<Option<String>, BucketError> {
    let until = tokio::time::Instant::now() + ELECTION;
    loop {
        let (leader, _) = leader_and_replicas(js, bucket).await?;
        if leader.as_deref().is_some_and(|l| l != old) || tokio::time::Instant::now() >= until {
            return Ok(leader);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
