//! Partition ownership: a group of workers shares `P` partitions (the
//! subjects of a payment stream, account ranges); each partition is owned by
//! one live member at a time, by rendezvous hashing over the live members,
//! so when a member joins or leaves only about 1/N of the partitions move.
//!
//! - A member is live while it holds its member lock `<group>:~member:<id>`
//!   (a session lock: it ends with the process, or with the lease).
//! - Partition `p` is the lock `<group>:~part:<p>`. A member takes the
//!   partitions the hash gives it; the grant's fencing token is the
//!   assignment's token.
//! - Handoffs never overlap: the member that loses a partition in a
//!   rebalance is asked to stop ([`Change::Release`]) and the lock is
//!   released only when it drops the [`PartitionLease`]; the new owner's
//!   acquire waits until then (or until the old owner's lease or session
//!   ends, after which its token is fenced off).

use crate::client::{Client, LockGuard};
use crate::error::LockError;
use crate::fence::FencingToken;
use crate::name::LockName;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Which member owns `partition` among `members`: the highest hash of
/// (member, partition). Every member computes the same.
pub fn owner_of<'a>(partition: u32, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members.into_iter().max_by_key(|m| {
        let mut bytes = Vec::with_capacity(m.len() + 4);
        bytes.extend_from_slice(m.as_bytes());
        bytes.extend_from_slice(&partition.to_be_bytes());
        (xxhash_rust::xxh3::xxh3_64(&bytes), *m)
    })
}

/// A change of this member's assignment.
#[derive(Debug)]
pub enum Change {
    /// This member now owns the partition: work on it while the lease lives.
    Assigned(PartitionLease),
    /// The partition goes to another member: stop working on it, then drop
    /// its lease (that releases it to the new owner).
    Release(u32),
}

/// One owned partition. Dropping it releases the partition.
#[derive(Debug)]
pub struct PartitionLease {
    partition: u32,
    guard: LockGuard,
}

impl PartitionLease {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The assignment's fencing token: pass it to what the work writes.
    pub fn token(&self) -> FencingToken {
        self.guard.token()
    }

    /// Resolves when the partition is lost (lease or session over).
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.guard.lost()
    }

    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Releases the partition now, reporting the result.
    pub async fn release(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

/// A member of a partition group: `Partitions::join`, then
/// [`Partitions::next`] for its assignment changes.
pub struct Partitions {
    changes: mpsc::UnboundedReceiver<Change>,
    task: JoinHandle<()>,
    _member: LockGuard,
}

impl Drop for Partitions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Most partitions a group may have.
pub const MAX_PARTITIONS: u32 = 65_536;

impl Partitions {
    /// Joins `group` of `partitions` partitions as `member` (unique in the
    /// group: a second member with the same id waits for the first to go).
    pub async fn join(
        client: &Client,
        group: &str,
        partitions: u32,
        member: &str,
    ) -> Result<Partitions, LockError> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(LockError::InvalidPartitions {
                partitions,
                max: MAX_PARTITIONS,
            });
        }
        let group = LockName::new(group)?;
        let members = LockName::new(&format!("{}:~member", group.as_str()))?;
        let me = client
            .lock(&format!("{}:{member}", members.as_str()))
            .acquire()
            .await?;
        let (tx, changes) = mpsc::unbounded_channel();
        let watch = client
            .store()
            .watch_under(&members)
            .await
            .map_err(|source| LockError::Nats {
                name: members.to_string(),
                op: "watch",
                source,
            })?
            .0;
        let task = tokio::spawn(
            Rebalancer {
                client: client.clone(),
                group,
                members_key: members.key().to_owned(),
                partitions,
                me: member.to_owned(),
                tx,
                live: BTreeSet::new(),
                taking: HashMap::new(),
                handouts: 0,
                handed: Arc::new(Mutex::new(Handed::default())),
            }
            .run(watch, me.lost()),
        );
        Ok(Partitions {
            changes,
            task,
            _member: me,
        })
    }

    /// The next change of this member's assignment; `None` once the group
    /// ended for it (its member lock is lost: every lease is lost too).
    pub async fn next(&mut self) -> Option<Change> {
        self.changes.recv().await
    }
}

struct Rebalancer {
    client: Client,
    group: LockName,
    members_key: String,
    partitions: u32,
    me: String,
    tx: mpsc::UnboundedSender<Change>,
    /// Live members, as their member locks show.
    live: BTreeSet<String>,
    /// Acquires under way, by partition: the hand-out's number and task.
    taking: HashMap<u32, (u64, JoinHandle<()>)>,
    /// Hand-outs so far: each acquire's number, so news of an old one (its
    /// lease lost or released) never touches a newer one of the partition.
    handouts: u64,
    /// Shared with the acquiring tasks, which hand a granted partition out
    /// under its lock only while it is still wanted: an acquire that lands
    /// just as a rebalance gives its partition away is released, never
    /// handed out untracked.
    handed: Arc<Mutex<Handed>>,
}

#[derive(Default)]
struct Handed {
    /// Partitions this member should own now.
    wanted: BTreeSet<u32>,
    /// Partitions handed to the user and neither asked back nor lost, with
    /// the hand-out's number.
    owned: HashMap<u32, u64>,
}

/// What the rebalancer hears from its partitions' tasks: hand-out number
/// `.1` of partition `.0` failed to acquire, or its lease was lost.
struct Gone(u32, u64);

/// After a membership change, wait this long for more before rebalancing:
/// members that join together move partitions once.
const SETTLE: Duration = Duration::from_millis(50);

impl Rebalancer {
    async fn run(
        mut self,
        mut watch: crate::store::KeyWatch,
        member_lost: WaitForCancellationFutureOwned,
    ) {
        let (heard_tx, mut heard) = mpsc::unbounded_channel::<Gone>();
        tokio::pin!(member_lost);
        loop {
            tokio::select! {
                // Without its member lock this member is not in the group:
                // ending the changes tells the user (every lease goes too).
                () = &mut member_lost => return,
                change = watch.change() => {
                    let Some(Ok(change)) = change else { return };
                    self.saw(change);
                    let settle = tokio::time::sleep(SETTLE);
                    tokio::pin!(settle);
                    loop {
                        tokio::select! {
                            () = &mut settle => break,
                            more = watch.change() => match more {
                                Some(Ok(more)) => self.saw(more),
                                _ => return,
                            },
                        }
                    }
                    self.rebalance(&heard_tx);
                }
                Some(Gone(p, n)) = heard.recv() => {
                    if self.taking.get(&p).is_some_and(|(m, _)| *m == n) {
                        self.taking.remove(&p);
                    }
                    let mut handed = self.handed.lock().expect("never poisoned");
                    if handed.owned.get(&p) == Some(&n) {
                        handed.owned.remove(&p);
                    }
                    drop(handed);
                    self.rebalance(&heard_tx);
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    /// A member lock changed: who is live now.
    fn saw(&mut self, change: crate::store::Change) {
        let id = change
            .key
            .strip_prefix(self.members_key.as_str())
            .and_then(|k| k.strip_prefix('.'))
            .and_then(|k| LockName::from_key(k).ok());
        let Some(id) = id else { return };
        match change.current {
            Ok(crate::store::Current::Held { .. }) => self.live.insert(id.as_str().to_owned()),
            _ => self.live.remove(id.as_str()),
        };
    }

    fn rebalance(&mut self, heard: &mpsc::UnboundedSender<Gone>) {
        if !self.live.contains(&self.me) {
            return;
        }
        self.taking.retain(|_, (_, task)| !task.is_finished());
        let mut handed = self.handed.lock().expect("never poisoned");
        for p in 0..self.partitions {
            let owner = owner_of(p, self.live.iter().map(String::as_str));
            if owner != Some(self.me.as_str()) {
                handed.wanted.remove(&p);
                if let Some((_, taking)) = self.taking.remove(&p) {
                    taking.abort();
                }
                if handed.owned.remove(&p).is_some() {
                    let _ = self.tx.send(Change::Release(p));
                }
                continue;
            }
            handed.wanted.insert(p);
            if handed.owned.contains_key(&p) || self.taking.contains_key(&p) {
                continue;
            }
            self.handouts += 1;
            let n = self.handouts;
            let name = format!("{}:~part:{p}", self.group.as_str());
            let (client, tx, heard) = (self.client.clone(), self.tx.clone(), heard.clone());
            let shared = self.handed.clone();
            self.taking.insert(
                p,
                (
                    n,
                    tokio::spawn(async move {
                        let Ok(guard) = client.lock(&name).acquire().await else {
                            let _ = heard.send(Gone(p, n));
                            return;
                        };
                        let lost = guard.lost();
                        {
                            let mut handed = shared.lock().expect("never poisoned");
                            // Given away while we waited: the drop releases it.
                            if !handed.wanted.contains(&p) {
                                return;
                            }
                            let lease = PartitionLease {
                                partition: p,
                                guard,
                            };
                            if tx.send(Change::Assigned(lease)).is_err() {
                                return;
                            }
                            handed.owned.insert(p, n);
                        }
                        // A lease the user still has that is lost (its lease
                        // or session ended): the partition may be taken again.
                        lost.await;
                        let _ = heard.send(Gone(p, n));
                    }),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    fn owners(members: &[String], partitions: u32) -> Vec<String> {
        (0..partitions)
            .map(|p| {
                owner_of(p, members.iter().map(String::as_str))
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// 8 → 9 → 7 members over 256 partitions: what moves is about what
    /// must (1/9 to the newcomer, the two leavers' share), nothing else.
    #[test]
    fn a_member_joining_or_leaving_moves_about_its_share() {
        let mut members: Vec<String> = (0..8).map(|i| format!("worker-{i}")).collect();
        let before = owners(&members, 256);
        members.push("worker-8".into());
        let joined = owners(&members, 256);
        let moved = before.iter().zip(&joined).filter(|(a, b)| a != b).count();
        // Every moved partition went to the newcomer.
        assert!(before
            .iter()
            .zip(&joined)
            .all(|(a, b)| a == b || b == "worker-8"));
        assert!((16..=42).contains(&moved), "8 -> 9 moved {moved} of 256");
        members.retain(|m| m != "worker-2" && m != "worker-5");
        let left = owners(&members, 256);
        let moved_2 = joined.iter().zip(&left).filter(|(a, b)| a != b).count();
        assert!(joined
            .iter()
            .zip(&left)
            .all(|(a, b)| a == b || a == "worker-2" || a == "worker-5"));
        assert!(
            (40..=80).contains(&moved_2),
            "9 -> 7 moved {moved_2} of 256"
        );
        println!("8 -> 9 moved {moved}/256, 9 -> 7 moved {moved_2}/256");
    }
}
