//! The demo's summary: for a person by default, JSON with `--json` (a
//! stable contract: fields are only ever added).

use super::ledger::{Fault, Invariant};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Summary {
    /// The run's id: in its subjects, message ids, lock names and worker
    /// command lines.
    pub run: String,
    pub workers: u64,
    pub accounts: u32,
    /// Partitions the workers shared (`jetlock::recipes::Partitions`).
    pub partitions: u32,
    pub transfers: u64,
    pub chaos: bool,
    /// About how often chaos struck (`--chaos-every`), with --chaos.
    pub chaos_every_s: Option<f64>,
    /// Whether the run was on the embedded 3-node cluster (`--cluster`).
    pub cluster: bool,
    pub seed: u64,
    /// The deliberate ledger fault (tests only), if any.
    pub fault: Option<Fault>,
    /// Where NATS ran, and the coordinator.
    pub nats: String,
    pub coordinator: String,
    /// Transfers applied (each counted once).
    pub applied: u64,
    /// Attempts beyond the first per transfer.
    pub retries: u64,
    /// Redelivered or retried transfers the ledger refused as already applied.
    pub duplicates_refused: u64,
    /// Writes refused because a newer lock holder had used the account.
    pub fenced_stale_writes: u64,
    /// Reads refused for the same reason.
    pub fenced_stale_reads: u64,
    /// Requests refused as malformed, unknown or overdrawing.
    pub refused: u64,
    /// Lock acquisitions (both accounts of a transfer = one).
    pub acquisitions: u64,
    /// Acquisitions that found a lock held and waited for its holder.
    pub handoffs: u64,
    /// Times a partition was used under a newer lease than before, as the
    /// ledger saw: it changed hands, or its owner took it again after
    /// losing it.
    pub partition_moves: u64,
    /// Partitions per worker slot at the end (`w1` for `w1.0`, `w1.1`,
    /// ...): who used each partition's newest lease.
    pub partition_owners: std::collections::BTreeMap<String, u32>,
    /// Ledger requests refused because a newer owner had used the
    /// partition.
    pub fenced_partition: u64,
    /// Messages `ProcessOnce` acknowledged from their done-record without
    /// running the transfer (a lost acknowledgement, redelivered).
    pub once_already_done: u64,
    /// Messages handed back because another worker held their lock.
    pub once_busy: u64,
    /// Messages handed back because their lock was lost mid-work.
    pub once_lost: u64,
    pub lock_wait_p50_ms: f64,
    pub lock_wait_p99_ms: f64,
    /// Workers killed with SIGKILL, paused with SIGSTOP, started to replace
    /// dead ones, and exited on their own.
    pub kills: u64,
    pub pauses: u64,
    pub respawns: u64,
    pub worker_crashes: u64,
    /// With --cluster --chaos: nats-server nodes killed with SIGKILL (each
    /// restarted), stopped with SIGSTOP (each resumed), and coordinator
    /// processes killed with SIGKILL (each restarted).
    pub server_kills: u64,
    pub server_pauses: u64,
    pub coordinator_kills: u64,
    /// With --cluster: coordinator processes that exited on their own (a
    /// coordinator that cannot reach JetStream as it starts) and were
    /// started again.
    pub coordinator_exits: u64,
    pub elapsed_s: f64,
    pub invariants: Vec<Invariant>,
    pub invariants_held: bool,
}

impl Summary {
    /// The names of the invariants that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.invariants
            .iter()
            .filter(|i| !i.held)
            .map(|i| i.name)
            .collect()
    }

    pub fn print(&self, json: bool) {
        if json {
            let text = serde_json::to_string_pretty(self).expect("the summary serializes");
            println!("{text}");
            return;
        }
        let row = |what: &str, value: String| println!("  {what:<24} {value}");
        println!();
        row(
            "transfers applied",
            format!("{} of {}", self.applied, self.transfers),
        );
        row(
            "retries",
            format!("{} (attempts beyond the first per transfer)", self.retries),
        );
        row(
            "duplicates refused",
            format!(
                "{} (redelivered transfers already applied)",
                self.duplicates_refused
            ),
        );
        row(
            "fenced-off stale writes",
            format!(
                "{} (and {} stale reads)",
                self.fenced_stale_writes, self.fenced_stale_reads
            ),
        );
        row(
            "handoffs",
            format!(
                "{} of {} acquisitions waited for another holder",
                self.handoffs, self.acquisitions
            ),
        );
        row(
            "partitions",
            format!(
                "{} over {} workers, {} moves, {} deposed-owner requests fenced off",
                self.partitions,
                self.partition_owners.len(),
                self.partition_moves,
                self.fenced_partition
            ),
        );
        row(
            "process-once",
            format!(
                "{} already done, {} busy, {} lost mid-work (handed back)",
                self.once_already_done, self.once_busy, self.once_lost
            ),
        );
        row(
            "lock wait",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms",
                self.lock_wait_p50_ms, self.lock_wait_p99_ms
            ),
        );
        if self.chaos {
            row(
                "chaos",
                format!(
                    "{} (kill -9), {} (SIGSTOP for 1.5-3 s), {} respawned; about every {:.1} s",
                    count(self.kills, "kill"),
                    count(self.pauses, "pause"),
                    count(self.respawns, "worker"),
                    self.chaos_every_s.unwrap_or_default()
                ),
            );
        }
        if self.chaos && self.cluster {
            row(
                "cluster chaos",
                format!(
                    "{} (kill -9, restarted), {} (SIGSTOP), {} (kill -9, restarted)",
                    count(self.server_kills, "server kill"),
                    count(self.server_pauses, "server pause"),
                    count(self.coordinator_kills, "coordinator kill")
                ),
            );
        }
        if self.coordinator_exits > 0 {
            row(
                "coordinator exits",
                format!("{} (restarted)", self.coordinator_exits),
            );
        }
        if self.worker_crashes > 0 {
            row("worker crashes", self.worker_crashes.to_string());
        }
        if self.refused > 0 {
            row("requests refused", self.refused.to_string());
        }
        row("elapsed", format!("{:.1} s", self.elapsed_s));
        println!();
        println!("invariants");
        for i in &self.invariants {
            let mark = if i.held { "ok  " } else { "FAIL" };
            println!("  {mark}  {} ({})", i.name, i.detail);
        }
    }
}

/// `1 kill`, `2 kills`.
fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
