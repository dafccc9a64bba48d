//! Every jetlock row is read beside the raw NATS floor measured in the
//! same run: its ratio to it, computed where rows are made (throughput,
//! peers) and printed by the report.

/// `value / floor`, when the floor was measured.
pub(super) fn ratio(value: f64, floor: f64) -> Option<f64> {
    (floor > 0.0 && value.is_finite()).then(|| value / floor)
}
