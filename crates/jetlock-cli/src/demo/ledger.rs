//! The demo's ledger: account balances behind fencing tokens, with a
//! unique constraint on the transfer's message id. Pure state, no I/O:
//! `service.rs` serves it over NATS.
//!
//! A worker holding the locks of both accounts of a transfer **reads** their
//! balances, computes the new ones and **writes** them back (absolute
//! values, as a database row update would). Both requests carry the fencing
//! tokens of the worker's locks and pass the [`Fence`]: a read or write with
//! a token lower than the highest the account has seen is refused. Fencing
//! the read too matters: otherwise a stale holder's write could land between
//! a newer holder's read and write, and the newer write would silently undo
//! it (a lost update).
//!
//! A write is also refused when its transfer was already applied (the
//! transfer's JetStream message id is a unique key, kept in the same
//! transaction as the balances). The workers consume with
//! `jetlock::recipes::ProcessOnce`, whose done-record is written after the
//! work: a worker killed between this commit and its done-record leaves the
//! message to be run again, and only this constraint keeps that second run
//! from moving money twice (docs/RECIPES.md, "Process-once").
//! Balances may not go negative: a write that would overdraw is refused.
//!
//! Requests also carry the worker's partition and its lease's token: the
//! ledger fences partitions as it fences accounts (a deposed owner's
//! request is refused), counts how often a partition changed hands, and
//! checks that each transfer was applied under its own partition.
//!
//! Every request is parsed from untrusted bytes; bad input gets a
//! [`Reply::Refused`] and changes nothing.

use hdrhistogram::Histogram;
use jetlock::fence::{Fence, FencingToken, StaleToken};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The longest lock wait the histogram records (longer ones are clamped).
const MAX_WAIT_US: u64 = 10 * 60 * 1_000_000;

/// One planned transfer: `amount` from account `from` to account `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub from: u32,
    pub to: u32,
    pub amount: i64,
}

/// A deliberately broken ledger, for the tests that prove the invariant
/// checks can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Forget the unique constraint on message ids: a transfer run again
    /// (redelivered after its worker died before its done-record) is
    /// applied again.
    DoubleApply,
    /// Do not check fencing tokens on writes: a paused worker's stale write
    /// overwrites newer balances.
    SkipFence,
}

/// `…ledger.<run>.read`: the balances of a transfer's accounts, read by the
/// holder of both locks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The transfer's JetStream message id.
    pub msg_id: String,
    /// The worker process (for chaos and the record).
    pub worker: String,
    /// The tokens of the locks on `from` and `to`, in that order.
    pub tokens: [AccountToken; 2],
    /// How long the worker waited for both locks, in µs.
    pub lock_wait_us: u64,
    /// Whether the locks were held by someone else when it asked.
    pub handoff: bool,
    /// The partition the worker took the transfer from, and its lease.
    pub partition: PartitionToken,
}

/// `…ledger.<run>.write`: set the balances of a transfer's accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    pub msg_id: String,
    pub worker: String,
    /// The new balances of `from` and `to`, in that order.
    pub set: [NewBalance; 2],
    pub partition: PartitionToken,
}

/// A partition and the fencing token of the worker's lease on it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionToken {
    pub partition: u32,
    pub token: u64,
}

/// `…ledger.<run>.once` (no reply): how `ProcessOnce` ended a message
/// without running the work, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnceNote {
    /// A done-record was there: acknowledged, the ledger never asked.
    AlreadyDone,
    /// Another worker held the message's lock: handed back.
    Busy,
    /// The worker lost the message's lock while working: handed back.
    Lost,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountToken {
    pub account: u32,
    pub token: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBalance {
    pub account: u32,
    pub token: u64,
    pub balance: i64,
}

/// The ledger's answer (JSON, tagged by `result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The balances of `from` and `to`.
    Balances { balances: [i64; 2] },
    /// The write was applied.
    Applied,
    /// The transfer was applied before; nothing changed.
    Duplicate,
    /// A newer lock holder has used the account: this token is fenced off.
    Fenced {
        account: u32,
        presented: u64,
        highest: u64,
    },
    /// A newer owner of the partition has used it: this lease is fenced off.
    PartitionFenced {
        partition: u32,
        presented: u64,
        highest: u64,
    },
    /// The request is wrong and will stay wrong; nothing changed.
    Refused { code: Refusal, message: String },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    BadRequest,
    UnknownTransfer,
    Overdraft,
}

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown operation {0:?} (expected read or write)")]
    UnknownOp(String),
    #[error("no transfer has message id {0:?}")]
    UnknownTransfer(String),
    #[error(
        "transfer {msg_id} moves money from account {from} to {to}, not {got_from} to {got_to}"
    )]
    WrongAccounts {
        msg_id: String,
        from: u32,
        to: u32,
        got_from: u32,
        got_to: u32,
    },
    #[error("account {account}: {source}")]
    Stale {
        account: u32,
        #[source]
        source: StaleToken,
    },
    #[error("partition {partition}: {source}")]
    StalePartition {
        partition: u32,
        #[source]
        source: StaleToken,
    },
    #[error("no partition {partition} (there are {partitions})")]
    UnknownPartition { partition: u32, partitions: u32 },
    #[error("account {account} would be overdrawn (balance {balance})")]
    Overdraft { account: u32, balance: i64 },
}

impl LedgerError {
    fn reply(&self) -> Reply {
        let refused = |code| Reply::Refused {
            code,
            message: self.to_string(),
        };
        match self {
            LedgerError::Stale { account, source } => Reply::Fenced {
                account: *account,
                presented: source.presented.get(),
                highest: source.highest.get(),
            },
            LedgerError::StalePartition { partition, source } => Reply::PartitionFenced {
                partition: *partition,
                presented: source.presented.get(),
                highest: source.highest.get(),
            },
            LedgerError::UnknownTransfer(_) => refused(Refusal::UnknownTransfer),
            LedgerError::Overdraft { .. } => refused(Refusal::Overdraft),
            _ => refused(Refusal::BadRequest),
        }
    }
}

/// A moment chaos can strike at (see `service.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moment {
    /// `worker` holds both locks and has just been given the balances.
    Read { worker: String },
    /// `worker`'s transfer was just applied; it has not acknowledged its
    /// message yet.
    Committed { worker: String },
}

/// The answer to one request, and the moment it marks.
#[derive(Debug)]
pub struct Handled {
    pub reply: Reply,
    pub moment: Option<Moment>,
}

/// What the ledger counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Transfers applied at least once.
    pub applied: u64,
    /// Transfers applied or refused for good: nothing more will happen to
    /// them.
    pub settled: u64,
    /// Read requests beyond the first per transfer: a worker tried again
    /// (after a fenced-off request, a lost lock, an unanswered request, or a
    /// redelivery after a crash).
    pub retries: u64,
    /// Writes refused because their transfer was already applied.
    pub duplicates_refused: u64,
    pub fenced_reads: u64,
    pub fenced_writes: u64,
    /// Writes whose token was below the account's highest yet were applied
    /// (only with `--fault skip-fence`).
    pub stale_writes_applied: u64,
    /// Requests refused as malformed, unknown or overdrawing.
    pub refused: u64,
    /// Lock acquisitions reported (one per read request).
    pub acquisitions: u64,
    /// Acquisitions that found a lock held and waited for its holder.
    pub handoffs: u64,
    /// Reads and writes refused because a newer owner had used the
    /// partition.
    pub fenced_partition: u64,
    /// Times a partition was used under a newer lease than before: it
    /// changed hands (or its owner took it again after losing it).
    pub partition_moves: u64,
    /// Writes applied under a partition other than the transfer's.
    pub applied_off_partition: u64,
    /// Messages `ProcessOnce` acknowledged from their done-record.
    pub once_already_done: u64,
    /// Messages handed back because another worker held their lock.
    pub once_busy: u64,
    /// Messages handed back because their lock was lost mid-work.
    pub once_lost: u64,
}

/// One checked invariant, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: &'static str,
    pub held: bool,
    pub detail: String,
}

impl Invariant {
    pub fn new(name: &'static str, held: bool, detail: String) -> Self {
        Invariant { name, held, detail }
    }
}

struct Planned {
    index: usize,
    transfer: Transfer,
}

/// The accounts, their fences and what happened to every transfer.
pub struct Ledger {
    balances: Vec<i64>,
    initial_total: i128,
    fence: Fence,
    by_msg_id: HashMap<String, Planned>,
    msg_ids: Vec<String>,
    /// Times each transfer was applied (1 is right).
    applied: Vec<u32>,
    /// Read requests per transfer.
    reads: Vec<u32>,
    refused: Vec<bool>,
    partitions: u32,
    /// Per partition: the newest lease seen and the worker that used it.
    owners: Vec<Option<(u64, String)>>,
    fault: Option<Fault>,
    lock_wait_us: Histogram<u64>,
    counts: Counts,
}

impl Ledger {
    /// A ledger of `accounts` accounts holding `initial` each, expecting
    /// `transfers` (message id, transfer) from `partitions` partitions.
    pub fn new(
        accounts: u32,
        partitions: u32,
        initial: i64,
        transfers: impl IntoIterator<Item = (String, Transfer)>,
        fault: Option<Fault>,
    ) -> Self {
        let mut by_msg_id = HashMap::new();
        let mut msg_ids = Vec::new();
        for (index, (msg_id, transfer)) in transfers.into_iter().enumerate() {
            by_msg_id.insert(msg_id.clone(), Planned { index, transfer });
            msg_ids.push(msg_id);
        }
        let n = msg_ids.len();
        Ledger {
            balances: vec![initial; accounts as usize],
            initial_total: i128::from(initial) * i128::from(accounts),
            fence: Fence::new(),
            by_msg_id,
            msg_ids,
            applied: vec![0; n],
            reads: vec![0; n],
            refused: vec![false; n],
            partitions,
            owners: vec![None; partitions as usize],
            fault,
            lock_wait_us: Histogram::new_with_bounds(1, MAX_WAIT_US, 3)
                .expect("constant histogram bounds are valid"),
            counts: Counts::default(),
        }
    }

    /// Handles the request `payload` for operation `op` (`read`, `write`).
    /// Never panics, whatever the bytes.
    pub fn handle(&mut self, op: &str, payload: &[u8]) -> Handled {
        let outcome = match op {
            "read" => parse::<ReadRequest>(payload).and_then(|r| {
                let balances = self.read(&r)?;
                Ok(Handled {
                    reply: Reply::Balances { balances },
                    moment: Some(Moment::Read { worker: r.worker }),
                })
            }),
            "once" => parse::<OnceNote>(payload).map(|note| {
                match note {
                    OnceNote::AlreadyDone => self.counts.once_already_done += 1,
                    OnceNote::Busy => self.counts.once_busy += 1,
                    OnceNote::Lost => self.counts.once_lost += 1,
                }
                Handled {
                    reply: Reply::Applied,
                    moment: None,
                }
            }),
            "write" => parse::<WriteRequest>(payload).and_then(|w| {
                Ok(match self.write(&w)? {
                    Reply::Applied => Handled {
                        reply: Reply::Applied,
                        moment: Some(Moment::Committed { worker: w.worker }),
                    },
                    reply => Handled {
                        reply,
                        moment: None,
                    },
                })
            }),
            other => Err(LedgerError::UnknownOp(truncate(other))),
        };
        outcome.unwrap_or_else(|e| {
            match &e {
                LedgerError::Stale { .. } if op == "read" => self.counts.fenced_reads += 1,
                LedgerError::Stale { .. } => self.counts.fenced_writes += 1,
                LedgerError::StalePartition { .. } => self.counts.fenced_partition += 1,
                _ => self.counts.refused += 1,
            }
            Handled {
                reply: e.reply(),
                moment: None,
            }
        })
    }

    fn read(&mut self, r: &ReadRequest) -> Result<[i64; 2], LedgerError> {
        let accounts = [r.tokens[0].account, r.tokens[1].account];
        let (index, transfer) = self.planned(&r.msg_id, accounts)?;
        self.reads[index] += 1;
        if self.reads[index] > 1 {
            self.counts.retries += 1;
        }
        self.counts.acquisitions += 1;
        if r.handoff {
            self.counts.handoffs += 1;
        }
        self.lock_wait_us
            .saturating_record(r.lock_wait_us.clamp(1, MAX_WAIT_US));
        for t in &r.tokens {
            self.admit(t.account, t.token)?;
        }
        self.admit_partition(r.partition, &r.worker)?;
        Ok([
            self.balances[transfer.from as usize],
            self.balances[transfer.to as usize],
        ])
    }

    fn write(&mut self, w: &WriteRequest) -> Result<Reply, LedgerError> {
        let accounts = [w.set[0].account, w.set[1].account];
        let (index, transfer) = self.planned(&w.msg_id, accounts)?;
        let skip_fence = self.fault == Some(Fault::SkipFence);
        // The audit still notices what a missing check let in.
        let mut stale = false;
        let behind =
            |l: &Self, key: String, token| l.fence.highest(&key) > Some(FencingToken(token));
        for b in &w.set {
            if skip_fence {
                stale |= behind(self, fence_key(b.account), b.token);
            } else {
                self.admit(b.account, b.token)?;
            }
        }
        let p = w.partition;
        if skip_fence {
            self.known_partition(p.partition)?;
            stale |= behind(self, partition_fence_key(p.partition), p.token);
        } else {
            self.admit_partition(p, &w.worker)?;
        }
        if self.applied[index] > 0 && self.fault != Some(Fault::DoubleApply) {
            self.counts.duplicates_refused += 1;
            return Ok(Reply::Duplicate);
        }
        if let Some(b) = w.set.iter().find(|b| b.balance < 0) {
            self.refused[index] = true;
            return Err(LedgerError::Overdraft {
                account: b.account,
                balance: b.balance,
            });
        }
        if stale {
            self.counts.stale_writes_applied += 1;
        }
        if w.partition.partition != self.partition_of(&transfer) {
            self.counts.applied_off_partition += 1;
        }
        for b in &w.set {
            self.balances[b.account as usize] = b.balance;
        }
        self.applied[index] += 1;
        if self.applied[index] == 1 {
            self.counts.applied += 1;
        }
        Ok(Reply::Applied)
    }

    /// The transfer `msg_id`, checked against the accounts a request names
    /// (`[from, to]`).
    fn planned(&self, msg_id: &str, accounts: [u32; 2]) -> Result<(usize, Transfer), LedgerError> {
        let planned = self
            .by_msg_id
            .get(msg_id)
            .ok_or_else(|| LedgerError::UnknownTransfer(truncate(msg_id)))?;
        let t = &planned.transfer;
        if accounts != [t.from, t.to] {
            return Err(LedgerError::WrongAccounts {
                msg_id: msg_id.to_owned(),
                from: t.from,
                to: t.to,
                got_from: accounts[0],
                got_to: accounts[1],
            });
        }
        Ok((planned.index, t.clone()))
    }

    /// The partition a transfer is published under: its paying account's.
    pub fn partition_of(&self, t: &Transfer) -> u32 {
        t.from % self.partitions
    }

    fn known_partition(&self, partition: u32) -> Result<(), LedgerError> {
        if partition >= self.partitions {
            return Err(LedgerError::UnknownPartition {
                partition,
                partitions: self.partitions,
            });
        }
        Ok(())
    }

    /// Passes the partition's fence, and notes a new lease as a move.
    fn admit_partition(&mut self, p: PartitionToken, worker: &str) -> Result<(), LedgerError> {
        self.known_partition(p.partition)?;
        self.fence
            .admit(&partition_fence_key(p.partition), FencingToken(p.token))
            .map_err(|source| LedgerError::StalePartition {
                partition: p.partition,
                source,
            })?;
        let owner = &mut self.owners[p.partition as usize];
        match owner {
            Some((token, _)) if *token == p.token => {}
            Some(_) => {
                self.counts.partition_moves += 1;
                *owner = Some((p.token, worker.to_owned()));
            }
            None => *owner = Some((p.token, worker.to_owned())),
        }
        Ok(())
    }

    /// How many partitions each worker slot used last (under the newest
    /// lease seen): `w1` for `w1.0`, `w1.1`, ..., the id it is a member of
    /// the partition group under.
    pub fn partition_owners(&self) -> std::collections::BTreeMap<String, u32> {
        let mut owners = std::collections::BTreeMap::new();
        for (_, worker) in self.owners.iter().flatten() {
            let slot = worker.split('.').next().unwrap_or(worker);
            *owners.entry(slot.to_owned()).or_insert(0) += 1;
        }
        owners
    }

    fn admit(&self, account: u32, token: u64) -> Result<(), LedgerError> {
        self.fence
            .admit(&fence_key(account), FencingToken(token))
            .map_err(|source| LedgerError::Stale { account, source })
    }

    pub fn counts(&self) -> Counts {
        let mut counts = self.counts.clone();
        counts.settled = self
            .applied
            .iter()
            .zip(&self.refused)
            .filter(|(applied, refused)| **applied > 0 || **refused)
            .count() as u64;
        counts
    }

    /// The lock wait at `quantile` (0..=1), in ms.
    pub fn lock_wait_ms(&self, quantile: f64) -> f64 {
        self.lock_wait_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Checks the ledger's invariants on its current state.
    pub fn invariants(&self) -> Vec<Invariant> {
        let total: i128 = self.balances.iter().map(|b| i128::from(*b)).sum();
        let twice: Vec<usize> = (0..self.applied.len())
            .filter(|i| self.applied[*i] > 1)
            .collect();
        let once = self.applied.iter().filter(|n| **n == 1).count();
        let missing = self.applied.iter().filter(|n| **n == 0).count();
        let negative = self.balances.iter().filter(|b| **b < 0).count();
        let first = |list: &[usize]| {
            list.first()
                .map(|i| format!(", first message {}", self.msg_ids[*i]))
                .unwrap_or_default()
        };
        vec![
            Invariant::new(
                "total balance conserved",
                total == self.initial_total,
                format!("{} before, {total} after", self.initial_total),
            ),
            Invariant::new(
                "no transfer applied twice",
                twice.is_empty(),
                format!("{} applied more than once{}", twice.len(), first(&twice)),
            ),
            Invariant::new(
                "every transfer applied exactly once",
                once == self.applied.len(),
                format!("{once} of {}, {missing} never applied", self.applied.len()),
            ),
            Invariant::new(
                "no stale write applied",
                self.counts.stale_writes_applied == 0,
                format!(
                    "{} writes applied with a fenced-off token",
                    self.counts.stale_writes_applied
                ),
            ),
            Invariant::new(
                "every transfer applied under its own partition",
                self.counts.applied_off_partition == 0,
                format!(
                    "{} writes applied under another partition's lease",
                    self.counts.applied_off_partition
                ),
            ),
            Invariant::new(
                "no account balance negative",
                negative == 0,
                format!("{negative} of {} accounts negative", self.balances.len()),
            ),
        ]
    }
}

/// The resource name an account's fence is kept under.
fn fence_key(account: u32) -> String {
    format!("account:{account}")
}

/// The resource name a partition's fence is kept under.
fn partition_fence_key(partition: u32) -> String {
    format!("partition:{partition}")
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(payload).map_err(|e| LedgerError::Malformed(e.to_string()))
}

/// Untrusted text quoted in a reply, cut to a sane length.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests;
