//! Peers: other lock services measured by the same W1 pair and W3 loop.
//! Only the row type so far; the services come next.

use serde::Serialize;

/// One lock service's numbers, or why it was skipped.
#[derive(Debug, Serialize)]
pub(super) struct PeerRow {
    pub(super) service: String,
    pub(super) lock: String,
    pub(super) w1_p50_us: Option<u64>,
    pub(super) w1_p99_us: Option<u64>,
    pub(super) w1_ratio_to_raw: Option<f64>,
    pub(super) w3_clients: Option<usize>,
    pub(super) w3_owner_changes_per_sec: Option<f64>,
    pub(super) w3_min_max_ratio: Option<f64>,
    pub(super) note: Option<String>,
}

/// Measures every peer; none yet.
pub(super) async fn run(
    _iterations: u64,
    _clients: usize,
    _window: std::time::Duration,
    _raw_p50_us: Option<u64>,
) -> Vec<PeerRow> {
    Vec::new()
}
