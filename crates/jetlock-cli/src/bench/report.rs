//! The bench's report: the document `--json` prints (a stable contract:
//! fields are added, never renamed) and the markdown tables printed
//! otherwise.

use super::contention::ContentionRow;
use super::failover::FailoverRow;
use super::latency::Row;
use super::machine::Machine;
use super::memory::{self, MemoryReport};
use super::multi::MultiRow;
use super::peers::PeerRow;
use super::scaling::Scaling;
use super::throughput::ThroughputRow;
use serde::Serialize;
use std::fmt::Write;

/// The whole report, as printed by `--json`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) nats_server_version: String,
    pub(super) local_server: bool,
    pub(super) coordinator: String,
    /// The servers' `sync_interval`, in the order they ran: W1 and W2 ran
    /// against each, the other workloads against the first.
    pub(super) durability: Vec<String>,
    pub(super) cpus: usize,
    pub(super) iterations: u64,
    pub(super) warmup: u64,
    /// W1 and the JSON path, for every durability.
    pub(super) results: Vec<Row>,
    /// Stored writes per pair, by path (against the first server).
    pub(super) writes: Vec<super::writes::WritesRow>,
    /// W2, for every durability.
    pub(super) throughput: Vec<ThroughputRow>,
    /// W3.
    pub(super) contention: Vec<ContentionRow>,
    /// Read/write locks and semaphores.
    pub(super) kinds: Vec<super::kinds::KindsRow>,
    /// W4.
    pub(super) failover: Vec<FailoverRow>,
    /// Election failover, jetlock's and the peers'.
    pub(super) election: Vec<super::election::ElectionRow>,
    pub(super) scaling: Scaling,
    /// Multi-key `lock_all`, ordered and atomic.
    pub(super) multi: Vec<MultiRow>,
    /// Beating sessions.
    pub(super) sessions: Vec<super::sessions::SessionsRow>,
    /// JSON pairs with 1 to 3 coordinators on the 3-node cluster.
    pub(super) curve: Vec<super::curve::CurveRow>,
    /// A coordinator's partitions served again after it went.
    pub(super) takeover: Vec<super::takeover::TakeoverRow>,
    pub(super) memory: Option<MemoryReport>,
    pub(super) peers: Vec<PeerRow>,
    /// What was skipped, and why.
    pub(super) notes: Vec<String>,
    /// 1-, 5- and 15-minute load averages when the run ended.
    pub(super) load_at_end: Option<[f64; 3]>,
    /// Wall time of the whole bench, servers included.
    pub(super) elapsed_s: f64,
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("floor".to_owned(), |r| format!("{r:.2}"))
}

/// A markdown table; `align` has one letter per column: `l` for text,
/// `r` for numbers.
pub(super) fn table(header: &[&str], align: &str, rows: &[Vec<String>]) -> String {
    debug_assert_eq!(header.len(), align.len(), "one alignment per column");
    let mut out = format!("| {} |\n|", header.join(" | "));
    for a in align.chars() {
        out.push_str(if a == 'l' { "---|" } else { "---:|" });
    }
    out.push('\n');
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The markdown report.
    pub(super) fn markdown(&self, url: &str) -> String {
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(o, "machine: {}", self.machine.describe());
        let _ = writeln!(o, "nats-server: {}", self.nats_server_version);
        // Workloads that start what they measure (peers, the coordinator
        // curve) may have run alone.
        if !self.durability.is_empty() {
            if self.local_server {
                let _ = writeln!(
                    o,
                    "server: local single node per durability, started for this run (file storage)"
                );
            } else {
                let _ = writeln!(o, "server: {url}");
            }
            let _ = writeln!(
                o,
                "durability (sync_interval): {}",
                self.durability.join(", ")
            );
            let _ = writeln!(o, "coordinator: {}", self.coordinator);
        }
        self.latency(o);
        self.writes(o);
        self.durability_table(o);
        self.throughput(o);
        self.multi(o);
        self.contention(o);
        self.kinds(o);
        self.failover(o);
        o.push_str(&super::election::markdown(&self.election));
        self.scaling(o);
        o.push_str(&super::sessions::markdown(&self.sessions));
        o.push_str(&super::curve::markdown(&self.curve));
        o.push_str(&super::takeover::markdown(&self.takeover));
        self.memory(o);
        self.peers(o);
        for note in &self.notes {
            let _ = writeln!(o, "\nnote: {note}");
        }
        if let Some([a, b, c]) = self.load_at_end {
            let _ = writeln!(o, "\nload average at the end: {a:.2} {b:.2} {c:.2}");
        }
        out
    }

    fn first_durability(&self) -> &str {
        self.durability.first().map_or("", String::as_str)
    }

    fn latency(&self, o: &mut String) {
        let first = self.first_durability();
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .filter(|r| r.durability == first)
            .map(|r| {
                vec![
                    r.workload.to_owned(),
                    r.p50_us.to_string(),
                    r.p99_us.to_string(),
                    format!("{:.0}", r.pairs_per_sec),
                    ratio_cell(r.ratio_to_raw),
                ]
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nW1 latency: one client, sequential pairs, sync_interval {first}; {} pairs per workload after {} unrecorded warm-up pairs\n",
            self.iterations, self.warmup
        );
        let header = [
            "workload",
            "p50 (µs)",
            "p99 (µs)",
            "pairs/s",
            "× raw kv pair",
        ];
        o.push_str(&table(&header, "lrrrr", &rows));
    }

    fn writes(&self, o: &mut String) {
        let Some(first) = self.writes.first() else {
            return;
        };
        let _ = writeln!(
            o,
            "\nstored writes per pair: messages each path adds to the streams, and finished requests deleted, over {} pairs on fresh keys\n",
            first.pairs
        );
        let cell = |v: f64| format!("{v:.2}");
        let rows: Vec<Vec<String>> = self
            .writes
            .iter()
            .map(|r| {
                vec![
                    r.workload.to_owned(),
                    cell(r.bucket),
                    cell(r.requests),
                    cell(r.request_deletes),
                    cell(r.events),
                    cell(r.total()),
                ]
            })
            .collect();
        let header = [
            "workload",
            "bucket",
            "requests stored",
            "requests deleted",
            "events",
            "all",
        ];
        o.push_str(&table(&header, "lrrrrr", &rows));
    }

    /// W1 p50 and W2 pairs/s side by side for each durability, each with
    /// its ratio to the raw floor on the same server.
    fn durability_table(&self, o: &mut String) {
        if self.durability.len() < 2 {
            return;
        }
        let mut header = vec!["workload".to_owned()];
        for d in &self.durability {
            header.push(format!("{d}: value"));
            header.push(format!("{d}: × raw"));
        }
        let mut rows = Vec::new();
        let first = self.first_durability();
        for r in self.results.iter().filter(|r| r.durability == first) {
            let mut row = vec![format!("W1 {}, p50 µs", r.workload)];
            for d in &self.durability {
                match self
                    .results
                    .iter()
                    .find(|x| x.workload == r.workload && &x.durability == d)
                {
                    Some(x) => {
                        row.push(x.p50_us.to_string());
                        row.push(ratio_cell(x.ratio_to_raw));
                    }
                    None => row.extend(["–".to_owned(), "–".to_owned()]),
                }
            }
            rows.push(row);
        }
        for r in self.throughput.iter().filter(|r| r.durability == first) {
            let mut row = vec![format!(
                "W2 {}, {} connection, pairs/s",
                r.workload, r.connections
            )];
            for d in &self.durability {
                match self.throughput.iter().find(|x| {
                    x.workload == r.workload && x.connections == r.connections && &x.durability == d
                }) {
                    Some(x) => {
                        row.push(format!("{:.0}", x.pairs_per_sec));
                        row.push(ratio_cell(x.ratio_to_raw));
                    }
                    None => row.extend(["–".to_owned(), "–".to_owned()]),
                }
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\ndurability: the same workloads against a server with each sync_interval (W1: p50; W2: pairs/s); × raw is to the raw row against the same server\n"
        );
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let align = format!("l{}", "r".repeat(header.len() - 1));
        o.push_str(&table(&header, &align, &rows));
    }

    fn throughput(&self, o: &mut String) {
        let first = self.first_durability();
        let rows: Vec<Vec<String>> = self
            .throughput
            .iter()
            .filter(|r| r.durability == first)
            .map(|r| {
                let cpu = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
                let c = r.cpu_us_per_pair;
                vec![
                    r.workload.to_owned(),
                    r.connections.to_owned(),
                    r.pairs.to_string(),
                    format!("{:.0}", r.pairs_per_sec),
                    ratio_cell(r.ratio_to_raw),
                    format!("{:.0}", c.client),
                    cpu(c.nats_server),
                    cpu(c.coordinator),
                ]
            })
            .collect();
        let Some(any) = self.throughput.first() else {
            return;
        };
        let _ = writeln!(
            o,
            "\nW2 throughput: {} tasks, each on fresh keys of its own, acquire → release for {:.0} s per row (interleaved 1 s rounds), sync_interval {first}\n",
            any.tasks, any.seconds
        );
        let header = [
            "workload",
            "connection",
            "pairs",
            "pairs/s",
            "× raw kv pair",
            "CPU µs/pair: bench",
            "nats-server",
            "coordinator",
        ];
        o.push_str(&table(&header, "llrrrrrr", &rows));
    }

    fn multi(&self, o: &mut String) {
        if self.multi.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nmulti-key: one client, sequential lock_all + release of the same keys, sync_interval {}; {} sets per row after {} unrecorded warm-up sets\n",
            self.first_durability(),
            self.iterations,
            self.warmup
        );
        let rows: Vec<Vec<String>> = self
            .multi
            .iter()
            .map(|r| {
                vec![
                    r.path.to_owned(),
                    r.keys.to_string(),
                    r.p50_us.to_string(),
                    r.p99_us.to_string(),
                    format!("{:.0}", r.sets_per_sec),
                    r.ratio_to_ordered
                        .map_or("–".to_owned(), |r| format!("{r:.2}")),
                ]
            })
            .collect();
        let header = [
            "lock_all",
            "keys",
            "p50 (µs)",
            "p99 (µs)",
            "sets/s",
            "× ordered",
        ];
        o.push_str(&table(&header, "lrrrrr", &rows));
    }

    fn contention(&self, o: &mut String) {
        let Some(first) = self.contention.first() else {
            return;
        };
        let _ = writeln!(
            o,
            "\nW3 contention: {} clients (one session and connection each) on one key, acquire → release, {} s per path\n",
            first.clients, first.seconds
        );
        o.push_str(&contention_table(&self.contention, false));
    }

    fn kinds(&self, o: &mut String) {
        let all: Vec<&super::kinds::KindsRow> = self
            .kinds
            .iter()
            .chain(self.peers.iter().filter_map(|p| p.rw.as_ref()))
            .collect();
        let Some(first) = all.first() else {
            return;
        };
        let _ = writeln!(
            o,
            "\nLock kinds: {} clients (one session and connection each) on one name, acquire → release, {} s each\n",
            first.clients, first.seconds
        );
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|r| {
                vec![
                    r.workload.to_owned(),
                    format!("{:.0}", r.reads_per_sec),
                    format!("{:.0}", r.writes_per_sec),
                    format!("{:.0}", r.grants_per_sec),
                    r.most_at_once.to_string(),
                    r.lost_cas_per_grant
                        .map(|l| format!("{l:.2}"))
                        .unwrap_or_else(|| "-".to_owned()),
                    r.overlaps.to_string(),
                ]
            })
            .collect();
        o.push_str(&table(
            &[
                "workload",
                "reads/s",
                "writes/s",
                "grants/s",
                "most at once",
                "lost CAS per grant",
                "overlaps",
            ],
            "lrrrrrr",
            &rows,
        ));
    }

    fn failover(&self, o: &mut String) {
        if self.failover.is_empty() {
            return;
        }
        let _ = writeln!(o, "\nW4 failover: a `jetlock hold` process holds the lock, an in-process waiter is queued; the holder dies\n");
        let rows: Vec<Vec<String>> = self
            .failover
            .iter()
            .map(|r| {
                let each: Vec<String> = r.samples_ms.iter().map(|s| format!("{s:.1}")).collect();
                vec![
                    r.event.to_owned(),
                    r.runs.to_string(),
                    format!("{:.1}", r.p50_ms),
                    format!("{:.1}", r.max_ms),
                    format!("≤ {:.0}", r.target_ms),
                    each.join(", "),
                ]
            })
            .collect();
        let header = [
            "event",
            "runs",
            "p50 (ms)",
            "max (ms)",
            "target (ms)",
            "each run (ms)",
        ];
        o.push_str(&table(&header, "lrrrrl", &rows));
    }

    fn scaling(&self, o: &mut String) {
        let s = &self.scaling;
        if !s.distinct_keys.is_empty() {
            let _ = writeln!(
                o,
                "\nscaling, distinct keys (W2, one connection per client, {:.0} s per row)\n",
                s.distinct_keys[0].seconds
            );
            let rows: Vec<Vec<String>> = s
                .distinct_keys
                .iter()
                .map(|r| {
                    vec![
                        r.tasks.to_string(),
                        r.workload.to_owned(),
                        format!("{:.0}", r.pairs_per_sec),
                        ratio_cell(r.ratio_to_raw),
                    ]
                })
                .collect();
            let header = ["clients", "workload", "pairs/s", "× raw kv pair"];
            o.push_str(&table(&header, "rlrr", &rows));
        }
        if !s.one_key.is_empty() {
            let _ = writeln!(
                o,
                "\nscaling, one key (W3 through the coordinator's queue, {:.0} s per row)\n",
                s.one_key[0].seconds
            );
            o.push_str(&contention_table(&s.one_key, true));
        }
    }

    fn memory(&self, o: &mut String) {
        let Some(m) = &self.memory else {
            return;
        };
        let _ = writeln!(
            o,
            "\nscaling, held locks: a fresh `jetlock serve` child, fast-path lock records written into the bucket; its VmRSS once its gauge counts them (baseline {} MiB)\n",
            mib(m.baseline_rss_bytes)
        );
        let rows: Vec<Vec<String>> = m
            .held
            .iter()
            .map(|r| {
                vec![
                    r.held.to_string(),
                    mib(r.rss_bytes),
                    format!("{:.0}", r.bytes_per_lock),
                    format!("≤ {:.0}", memory::TARGET_PER_LOCK),
                    format!("{:.1}", r.write_secs),
                    format!("{:.1}", r.seen_secs),
                    format!("{:.0}", r.idle_cpu_pct),
                ]
            })
            .collect();
        let header = [
            "held locks",
            "coordinator RSS (MiB)",
            "bytes per held lock",
            "target",
            "written in (s)",
            "all seen in (s)",
            "idle CPU (% of a core)",
        ];
        o.push_str(&table(&header, "rrrlrrr", &rows));
        if let Some(w) = &m.waiters {
            let _ = writeln!(
                o,
                "\nwaiters: {} JSON acquires with a long wait over {} of those held locks: coordinator RSS {} → {} MiB, {:.0} bytes per queued waiter (target ≤ {:.0}), all queued in {:.1} s",
                w.waiters,
                w.keys,
                mib(w.rss_before_bytes),
                mib(w.rss_after_bytes),
                w.bytes_per_waiter,
                memory::TARGET_PER_WAITER,
                w.seen_secs
            );
        }
        if let Some(r) = &m.restart {
            let _ = writeln!(
                o,
                "\nrestart: a fresh coordinator in place of that one read {} held locks and {} queued requests and was ready {:.1} s after its process started ({:.0} records a second); its gauges counted them all at {:.1} s",
                r.held,
                r.queued,
                r.ready_secs,
                (r.held + r.queued) as f64 / r.ready_secs.max(1e-3),
                r.counted_secs
            );
        }
    }

    fn peers(&self, o: &mut String) {
        if self.peers.is_empty() {
            return;
        }
        let clients = self
            .peers
            .iter()
            .find_map(|p| p.w3.as_ref().map(|w| w.clients));
        let _ = writeln!(
            o,
            "\npeers: the W1 pair (a fresh lock name each) and W3 (one lock, {} clients) against other lock services, each started for this run on loopback; × raw is W1 p50 over the raw kv pair's (fresh key) against the server with that sync_interval\n",
            clients.unwrap_or(0)
        );
        let mut header = vec![
            "service".to_owned(),
            "lock".to_owned(),
            "W1 p50 (µs)".to_owned(),
            "W1 p99 (µs)".to_owned(),
        ];
        header.extend(self.durability.iter().map(|d| format!("W1 × raw ({d})")));
        header.extend([
            "W3 owner changes/s".to_owned(),
            "W3 min/max".to_owned(),
            "note".to_owned(),
        ]);
        let rows: Vec<Vec<String>> = self
            .peers
            .iter()
            .map(|p| {
                let dash = || "–".to_owned();
                let mut row = vec![
                    match &p.version {
                        Some(v) => format!("{} ({v})", p.service),
                        None => p.service.to_owned(),
                    },
                    p.lock.to_owned(),
                    p.w1_p50_us.map_or_else(dash, |v| v.to_string()),
                    p.w1_p99_us.map_or_else(dash, |v| v.to_string()),
                ];
                row.extend(self.durability.iter().map(|d| {
                    p.w1_ratio_to_raw
                        .get(d)
                        .map_or_else(dash, |r| format!("{r:.2}"))
                }));
                row.extend([
                    p.w3.as_ref()
                        .map_or_else(dash, |w| format!("{:.0}", w.owner_changes_per_sec)),
                    p.w3.as_ref()
                        .map_or_else(dash, |w| format!("{:.2}", w.min_max_ratio)),
                    p.note.clone(),
                ]);
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let align = format!("ll{}l", "r".repeat(header.len() - 3));
        o.push_str(&table(&header, &align, &rows));
    }
}

fn contention_table(rows: &[ContentionRow], by_clients: bool) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.workload.to_owned()];
            if by_clients {
                row[0] = r.clients.to_string();
            }
            row.extend([
                format!("{:.0}", r.owner_changes_per_sec),
                r.grants.to_string(),
                format!("{}–{}", r.min_grants, r.max_grants),
                format!("{:.2}", r.min_max_ratio),
                format!("{:.1}", r.wait_p50_ms),
                format!("{:.1}", r.wait_p99_ms),
                r.overlaps.to_string(),
                r.consumers_left.to_string(),
            ]);
            if !by_clients {
                row.push(r.stored_per_change.map_or_else(
                    || "—".to_owned(),
                    |(bucket, requests)| format!("{bucket:.2} + {requests:.2}"),
                ));
            }
            row
        })
        .collect();
    let first = if by_clients { "clients" } else { "path" };
    let header = [
        first,
        "owner changes/s",
        "grants",
        "grants per client (min–max)",
        "min/max",
        "wait p50 (ms)",
        "wait p99 (ms)",
        "overlaps",
        "consumers left",
        "stored per change (bucket + requests)",
    ];
    let (header, align) = if by_clients {
        (&header[..header.len() - 1], "rrrrrrrrr")
    } else {
        (&header[..], "lrrrrrrrrr")
    };
    table(header, align, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::floor::ratio;

    #[test]
    fn ratios_need_a_floor() {
        assert_eq!(ratio(150.0, 100.0), Some(1.5));
        assert_eq!(ratio(150.0, 0.0), None);
        assert_eq!(ratio_cell(None), "floor");
        assert_eq!(ratio_cell(Some(0.904)), "0.90");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let rows = vec![vec!["a".to_owned(), "x".to_owned(), "1".to_owned()]];
        assert_eq!(
            table(&["name", "kind", "n"], "llr", &rows),
            "| name | kind | n |\n|---|---|---:|\n| a | x | 1 |\n"
        );
        assert_eq!(table(&["n"], "r", &[]), "| n |\n|---:|\n");
    }
}
