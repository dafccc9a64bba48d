//! Scaling in clients: W2 (distinct keys, one connection per client, the
//! raw KV pair beside the jetlock pair) and W3 through the coordinator's
//! queue (one key) at 1 to 64 clients. Memory per held lock and per waiter
//! is `memory.rs`.

use super::contention::{self, ContentionRow};
use super::throughput::{self, Path, Sharing, ThroughputRow};
use super::CliError;
use serde::Serialize;
use std::time::Duration;

/// The client counts.
pub(super) const CLIENTS: [usize; 4] = [1, 4, 16, 64];

#[derive(Debug, Default, Serialize)]
pub(super) struct Scaling {
    /// W2 at each count: a raw row, then a jetlock row.
    pub(super) distinct_keys: Vec<ThroughputRow>,
    /// W3 through the coordinator's queue at each count but 1.
    pub(super) one_key: Vec<ContentionRow>,
}

/// Runs both at every count of [`CLIENTS`], `length` per group.
pub(super) async fn run(
    site: &throughput::Site<'_>,
    one_key_name: &dyn Fn(usize) -> String,
    length: Duration,
) -> Result<Scaling, CliError> {
    let mut scaling = Scaling::default();
    let groups = [
        (Path::Raw, Sharing::PerTask),
        (Path::Jetlock, Sharing::PerTask),
    ];
    for n in CLIENTS {
        super::progress(&format!("scaling: {n} clients, distinct keys"));
        let rows = throughput::run(site, &groups, n, length).await?;
        scaling.distinct_keys.extend(rows);
    }
    // One client on one key never waits: nothing to measure.
    for n in CLIENTS.into_iter().filter(|&n| n > 1) {
        super::progress(&format!("scaling: {n} clients, one key, coordinator queue"));
        let name = one_key_name(n);
        let row = contention::jetlock(
            "jetlock, coordinator FIFO queue",
            site.url,
            site.bucket,
            &name,
            n,
            length,
            true,
        )
        .await?;
        scaling.one_key.push(row);
    }
    Ok(scaling)
}
