//! Who is alive: coordinators (the hash ring that splits keys among them)
//! and client sessions (whose locks die with them).
//!
//! Both are fed by heartbeats on core NATS subjects and by the server's
//! client-disconnect advisories. A coordinator only ever *acts* on the keys
//! the ring gives it; it mirrors every other key, so taking one over needs
//! no hand-over protocol. The ring is a hint for splitting work, never a
//! safety mechanism: two coordinators that briefly disagree both try the
//! same CAS write, and one of them loses.

use super::HashMap;
use jetlock::protocol::{ClientInfo, ConnId};
use std::time::Duration;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The live coordinators, and which one owns a key.
///
/// Rendezvous (highest-random-weight) hashing: a key belongs to the
/// coordinator with the highest `hash(coordinator, key)`. Adding a
/// coordinator moves only the keys it now wins, about 1/N of them; removing
/// one moves only its own keys.
///
/// In a deployment whose requests are partitioned (`jetlock::shards`), a
/// lock's owner is its *partition's* owner, `hash(coordinator, partition)`:
/// that coordinator alone reads the partition's requests.
#[derive(Debug)]
pub struct Ring {
    me: String,
    members: HashMap<String, Member>,
    timeout: Duration,
    /// The deployment's request partitions (1: not partitioned, keys are
    /// hashed themselves).
    partitions: u32,
    /// Counts changes of the live set.
    version: u64,
}

#[derive(Debug)]
struct Member {
    last_seen: Instant,
    conn: Option<ConnId>,
}

impl Ring {
    pub fn new(me: String, timeout: Duration) -> Self {
        Ring {
            me,
            members: HashMap::default(),
            timeout,
            partitions: 1,
            version: 0,
        }
    }

    /// A number that changes whenever the live set does.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Splits the keys by the deployment's `partitions` request
    /// partitions (1: by key).
    pub fn set_partitions(&mut self, partitions: u32) {
        self.partitions = partitions.max(1);
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether the deployment's requests are partitioned.
    pub fn partitioned(&self) -> bool {
        self.partitions > 1
    }

    /// The partition of lock `key` (0 when not partitioned).
    pub fn partition_of(&self, key: &str) -> u32 {
        jetlock::shards::partition_of(key, self.partitions)
    }

    /// The coordinator that owns lock `key`: its partition's owner, or in a
    /// deployment without partitions the key's.
    pub fn owner_of_key<'a>(&'a self, key: &str) -> &'a str {
        if self.partitioned() {
            self.owner_by(&partition_label(self.partition_of(key)))
        } else {
            self.owner(key)
        }
    }

    /// Whether this coordinator owns lock `key`.
    pub fn owns_key(&self, key: &str) -> bool {
        self.members.is_empty() || self.owner_of_key(key) == self.me
    }

    /// Whether this coordinator owns request partition `p`.
    pub fn owns_partition(&self, p: u32) -> bool {
        self.members.is_empty() || self.owner_by(&partition_label(p)) == self.me
    }

    /// The partitions this coordinator owns (every one while alone).
    pub fn owned_partitions(&self) -> Vec<u32> {
        (0..self.partitions)
            .filter(|&p| self.owns_partition(p))
            .collect()
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Live coordinators, this one included.
    pub fn len(&self) -> usize {
        self.members.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// A heartbeat from coordinator `id`. Returns true when it joined.
    pub fn beat(&mut self, id: &str, conn: Option<ConnId>, now: Instant) -> bool {
        if id == self.me {
            return false;
        }
        match self.members.get_mut(id) {
            Some(m) => {
                m.last_seen = now;
                if conn.is_some() {
                    m.conn = conn;
                }
                false
            }
            None => {
                self.members.insert(
                    id.to_owned(),
                    Member {
                        last_seen: now,
                        conn,
                    },
                );
                self.version += 1;
                true
            }
        }
    }

    /// Removes coordinator `id` (it said it is leaving). True if it was live.
    pub fn leave(&mut self, id: &str) -> bool {
        let left = self.members.remove(id).is_some();
        self.version += u64::from(left);
        left
    }

    /// Removes the coordinator on connection `conn` (the server saw the
    /// connection close). Returns its id.
    pub fn disconnected(&mut self, conn: &ConnId) -> Option<String> {
        let id = self
            .members
            .iter()
            .find(|(_, m)| m.conn.as_ref() == Some(conn))
            .map(|(id, _)| id.clone())?;
        self.members.remove(&id);
        self.version += 1;
        Some(id)
    }

    /// Removes coordinators silent for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.timeout;
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.members.remove(id);
            self.version += 1;
        }
        dead
    }

    /// The coordinator that owns `key` as a string hashed itself (a
    /// session id; a KV key of a deployment without partitions).
    pub fn owner<'a>(&'a self, key: &str) -> &'a str {
        self.owner_by(key)
    }

    fn owner_by<'a>(&'a self, key: &str) -> &'a str {
        let mut best = (weight(&self.me, key), self.me.as_str());
        for id in self.members.keys() {
            let w = (weight(id, key), id.as_str());
            if w > best {
                best = w;
            }
        }
        best.1
    }

    /// Whether this coordinator owns `key` hashed itself (a session id).
    pub fn owns(&self, key: &str) -> bool {
        self.members.is_empty() || self.owner(key) == self.me
    }

    /// How long a silent coordinator stays in the ring.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// When each live peer was last heard from (this one is not listed).
    pub fn last_seen(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.members
            .iter()
            .map(|(id, m)| (id.as_str(), m.last_seen))
    }

    /// Ids of the live coordinators, sorted.
    pub fn members(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.members.keys().cloned().collect();
        ids.push(self.me.clone());
        ids.sort();
        ids
    }
}

/// The owner of `key` among `ids` (what [`Ring::owner`] answered when the
/// live set was `ids`).
pub fn owner_among<'a>(ids: &'a [String], key: &str) -> Option<&'a str> {
    ids.iter()
        .max_by_key(|id| (weight(id, key), id.as_str()))
        .map(String::as_str)
}

/// The owner of lock `key` among `ids` in a deployment with `partitions`
/// request partitions (what [`Ring::owner_of_key`] answered when the live
/// set was `ids`).
pub fn key_owner_among<'a>(ids: &'a [String], key: &str, partitions: u32) -> Option<&'a str> {
    if partitions > 1 {
        let p = jetlock::shards::partition_of(key, partitions);
        owner_among(ids, &partition_label(p))
    } else {
        owner_among(ids, key)
    }
}

/// What a partition is hashed as: a string no session id or lock key can
/// be (neither has a `#`), so a partition and a session never share a hash.
fn partition_label(p: u32) -> String {
    format!("#{p}")
}

fn weight(coordinator: &str, key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), xxh3_64_with_seed(coordinator.as_bytes(), 0))
}

/// Client sessions: alive (heartbeating) or dead (declared so; their locks
/// are released, and they stay dead: a session never comes back).
///
/// This keeps the coordinator's half of the session contract
/// (docs/ARCHITECTURE.md): a session is overdue no sooner than its timeout
/// after the last sign of life, or the reconnect grace after the server
/// reported its connection closed with no heartbeat on another connection
/// since. Only a heartbeat sets the timeout. Being overdue is not yet
/// death: the engine acts on it only with proof that it could hear the
/// session all along (`hearing.rs`).
#[derive(Debug)]
pub struct Sessions {
    alive: HashMap<String, Session>,
    dead: HashMap<String, Instant>,
    default_timeout: Duration,
    min_timeout: Duration,
    max_timeout: Duration,
    reconnect_grace: Duration,
    /// After the coordinator itself stalled, nobody is declared dead until
    /// this time: their heartbeats may be sitting unread in our buffers.
    holdoff_until: Option<Instant>,
    /// Most live sessions under one prefix (0: no limit), and how many
    /// each prefix has.
    max_per_prefix: u32,
    per_prefix: HashMap<String, u32>,
}

/// The prefix a session counts under for `max_sessions_per_prefix`: its id
/// without the last token (`billing.worker-3` for
/// `billing.worker-3.Z8hK2q`, as `ClientOptions::session_prefix` makes
/// them; the NATS permissions of a user name such a prefix). Ids of one
/// token have none and count together.
pub fn session_prefix(session: &str) -> &str {
    session.rsplit_once('.').map_or("", |(prefix, _)| prefix)
}

#[derive(Debug)]
struct Session {
    last_seen: Instant,
    timeout: Duration,
    conn: Option<ConnId>,
    /// The server reported `conn` closed by the client at this time, and no
    /// heartbeat on another connection came since.
    closed: Option<(ConnId, Instant)>,
    /// Who the client says it is (its last heartbeat that said).
    client: Option<ClientInfo>,
    /// A heartbeat came from it (not only requests): only then may this
    /// coordinator have answered it `alive`.
    beat: bool,
}

/// A session past its deadline, and the span in which the coordinator must
/// have been able to hear it for the death to stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub session: String,
    /// From when a heartbeat would have saved it.
    pub since: Instant,
    /// When its deadline passed.
    pub due: Instant,
    /// Why: "heartbeats missed" or "connection closed".
    pub cause: &'static str,
}

/// How long a dead session is remembered (to refuse its requests).
const DEAD_MEMORY: Duration = Duration::from_secs(600);

/// What a heartbeat or request did to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Touch {
    /// First sign of life of a session.
    Joined,
    Alive,
    /// The session was declared dead earlier.
    Dead,
    /// A new session its prefix has no room for (`max_sessions_per_prefix`):
    /// not registered.
    Refused,
}

impl Sessions {
    pub fn new(default_timeout: Duration, min_timeout: Duration, max_timeout: Duration) -> Self {
        Sessions {
            alive: HashMap::default(),
            dead: HashMap::default(),
            default_timeout,
            min_timeout,
            max_timeout,
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
            holdoff_until: None,
            max_per_prefix: 0,
            per_prefix: HashMap::default(),
        }
    }

    /// The most live sessions one prefix may have (0: no limit). Sessions
    /// over a lowered limit stay; new ones wait for room.
    pub fn set_max_per_prefix(&mut self, max: u32) {
        self.max_per_prefix = max;
    }

    /// Live sessions under `prefix`.
    pub fn count_under(&self, prefix: &str) -> u32 {
        self.per_prefix.get(prefix).copied().unwrap_or(0)
    }

    /// New bounds (a configuration change); sessions keep the timeout they
    /// were given until their next heartbeat asks again.
    pub fn set_timeouts(&mut self, default: Duration, min: Duration, max: Duration) {
        self.default_timeout = default;
        self.min_timeout = min;
        self.max_timeout = max;
    }

    /// The reconnect grace (see [`Sessions::closed`]).
    pub fn set_reconnect_grace(&mut self, grace: Duration) {
        self.reconnect_grace = grace;
    }

    pub fn reconnect_grace(&self) -> Duration {
        self.reconnect_grace
    }

    /// Live sessions: id, last sign of life, timeout.
    pub fn alive(&self) -> impl Iterator<Item = (&str, Instant, Duration)> {
        self.alive
            .iter()
            .map(|(id, s)| (id.as_str(), s.last_seen, s.timeout))
    }

    /// A heartbeat from `session`, asking for `timeout_ms` (kept from the
    /// last heartbeat that asked when absent), on connection `conn`.
    ///
    /// A session first heard without a timeout gets the longest allowed:
    /// the client may have asked for any timeout up to it from a
    /// coordinator that has since restarted, and believes in its locks for
    /// that long; an answer telling it a shorter one may be lost. Clients
    /// state their timeout in every heartbeat (the Rust client does).
    pub fn heartbeat(
        &mut self,
        session: &str,
        timeout_ms: Option<u64>,
        conn: Option<ConnId>,
        now: Instant,
    ) -> Touch {
        if self.dead.contains_key(session) {
            return Touch::Dead;
        }
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .map(|t| t.clamp(self.min_timeout, self.max_timeout));
        match self.alive.get_mut(session) {
            Some(s) => {
                s.last_seen = now;
                s.beat = true;
                if let Some(t) = timeout {
                    s.timeout = t;
                }
                // A heartbeat on another connection (or one that names
                // none) after the close: the client reconnected.
                if s.closed
                    .as_ref()
                    .is_some_and(|(c, _)| conn.as_ref() != Some(c))
                {
                    s.closed = None;
                }
                if conn.is_some() {
                    s.conn = conn;
                }
                Touch::Alive
            }
            None => {
                let timeout = timeout.unwrap_or(self.max_timeout);
                self.insert(session, timeout, conn, true, now)
            }
        }
    }

    /// What a live session's heartbeat says about its client, kept for the
    /// operators' view.
    pub fn describe(&mut self, session: &str, client: ClientInfo) {
        if let Some(s) = self.alive.get_mut(session) {
            s.client = Some(client.bounded());
        }
    }

    /// Who a live session's client says it is.
    pub fn client_of(&self, session: &str) -> Option<&ClientInfo> {
        self.alive.get(session).and_then(|s| s.client.as_ref())
    }

    /// A request from `session`: a sign of life that never sets or shortens
    /// its timeout. A session first seen through a request (a coordinator
    /// that starts and replays the request stream reads requests before the
    /// session's next heartbeat) gets the longest allowed until a heartbeat
    /// says otherwise.
    pub fn request(&mut self, session: &str, now: Instant) -> Touch {
        if self.dead.contains_key(session) {
            return Touch::Dead;
        }
        match self.alive.get_mut(session) {
            Some(s) => {
                s.last_seen = s.last_seen.max(now);
                Touch::Alive
            }
            None => self.insert(session, self.max_timeout, None, false, now),
        }
    }

    fn insert(
        &mut self,
        session: &str,
        timeout: Duration,
        conn: Option<ConnId>,
        beat: bool,
        now: Instant,
    ) -> Touch {
        let prefix = session_prefix(session);
        let count = self.count_under(prefix);
        if self.max_per_prefix > 0 && count >= self.max_per_prefix {
            return Touch::Refused;
        }
        self.per_prefix.insert(prefix.to_owned(), count + 1);
        self.alive.insert(
            session.to_owned(),
            Session {
                last_seen: now,
                timeout,
                conn,
                closed: None,
                client: None,
                beat,
            },
        );
        Touch::Joined
    }

    /// The timeout applied to `session`.
    pub fn timeout_of(&self, session: &str) -> Duration {
        self.alive
            .get(session)
            .map(|s| s.timeout)
            .unwrap_or(self.default_timeout)
    }

    pub fn is_dead(&self, session: &str) -> bool {
        self.dead.contains_key(session)
    }

    pub fn alive_count(&self) -> usize {
        self.alive.len()
    }

    /// Declares `session` dead. True if it was not already.
    pub fn kill(&mut self, session: &str, now: Instant) -> bool {
        if self.alive.remove(session).is_some() {
            let prefix = session_prefix(session);
            match self.per_prefix.get_mut(prefix) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.per_prefix.remove(prefix);
                }
            }
        }
        self.dead.insert(session.to_owned(), now).is_none()
    }

    /// The session on connection `conn`, if any.
    pub fn by_conn(&self, conn: &ConnId) -> Option<String> {
        self.alive
            .iter()
            .find(|(_, s)| s.conn.as_ref() == Some(conn))
            .map(|(id, _)| id.clone())
    }

    /// The server reports that the client closed connection `conn`: its
    /// process exited, or it is reconnecting (async-nats closes the old
    /// socket itself after missed pings or `force_reconnect`). A session
    /// that heartbeats on another connection within the reconnect grace
    /// lives on; otherwise it is overdue then. Returns the session.
    pub fn closed(&mut self, conn: &ConnId, now: Instant) -> Option<String> {
        let id = self.by_conn(conn)?;
        let s = self.alive.get_mut(&id).expect("found by its connection");
        s.closed.get_or_insert((conn.clone(), now));
        Some(id)
    }

    /// The session's connection broke (not a clean close): a reconnect
    /// may follow, so the session lives on by its heartbeats alone. It is
    /// not cut short: a live client whose server went away counts on the
    /// rule its heartbeats give it, that no coordinator declares it dead
    /// sooner than the timeout after the last heartbeat it heard answered,
    /// so that it can give its locks up first (`LostReason::Unconfirmed`).
    pub fn suspect(&mut self, session: &str) {
        if let Some(s) = self.alive.get_mut(session) {
            s.conn = None;
        }
    }

    /// The coordinator's loop stalled: hold off expiries for one longest
    /// timeout, so sessions whose heartbeats we failed to read in time are
    /// not declared dead for our own slowness.
    pub fn stalled(&mut self, now: Instant) {
        self.holdoff_until = Some(now + self.max_timeout.min(Duration::from_secs(5)));
        self.heard_until(now);
    }

    /// Counts every live session as heard at `at`: the coordinator may have
    /// missed their heartbeats before it (a stall, or a span in which it
    /// could not prove it heard the cluster), so silence is counted from
    /// there, and a reconnect heartbeat missed then is not held against them.
    pub fn heard_until(&mut self, at: Instant) {
        for s in self.alive.values_mut() {
            s.last_seen = s.last_seen.max(at);
            if s.closed.as_ref().is_some_and(|(_, since)| *since < at) {
                s.closed = None;
            }
        }
    }

    /// Counts `session` as heard at `at` (see [`Sessions::heard_until`]).
    pub fn revive(&mut self, session: &str, at: Instant) {
        if let Some(s) = self.alive.get_mut(session) {
            s.last_seen = s.last_seen.max(at);
            if s.closed.as_ref().is_some_and(|(_, since)| *since < at) {
                s.closed = None;
            }
        }
    }

    /// Forgets dead sessions after a while; returns the live sessions past
    /// their deadline (not yet declared dead: see [`Overdue`]).
    pub fn overdue(&mut self, now: Instant) -> Vec<Overdue> {
        self.dead
            .retain(|_, since| now.duration_since(*since) < DEAD_MEMORY);
        if let Some(until) = self.holdoff_until {
            if now < until {
                return Vec::new();
            }
            self.holdoff_until = None;
        }
        let grace = self.reconnect_grace;
        self.alive
            .iter()
            .filter_map(|(id, s)| overdue(id, s, grace, now))
            .collect()
    }

    /// `session`, if it is alive and past its deadline (holdoffs aside).
    pub fn overdue_one(&self, session: &str, now: Instant) -> Option<Overdue> {
        let s = self.alive.get(session)?;
        overdue(session, s, self.reconnect_grace, now)
    }

    /// How long ago `session` was last heard, if it is alive and has sent
    /// a heartbeat (one known only from requests was never answered
    /// `alive` here).
    pub fn last_heard(&self, session: &str, now: Instant) -> Option<Duration> {
        self.alive
            .get(session)
            .filter(|s| s.beat)
            .map(|s| now.saturating_duration_since(s.last_seen))
    }
}

fn overdue(id: &str, s: &Session, grace: Duration, now: Instant) -> Option<Overdue> {
    let silent = (s.last_seen, s.last_seen + s.timeout, "heartbeats missed");
    let closed = s
        .closed
        .as_ref()
        .map(|(_, since)| (*since, *since + grace, "connection closed"));
    let (since, due, cause) = match closed {
        Some(c) if c.1 < silent.1 => c,
        _ => silent,
    };
    (now > due).then(|| Overdue {
        session: id.to_owned(),
        since,
        due,
        cause,
    })
}

/// The reconnect grace unless configured: the default session timeout. The
/// client cannot tell a drop it caused (which the server reports as a close
/// by the client) from one the server caused (lame duck, shutdown), so it
/// gives its locks up 0.9 of the grace after any drop it cannot show was a
/// reconnect; at the session timeout, that is never sooner than its
/// deadline by silence, so no reconnect that the timeout allows ends a
/// session. (At 100 ms, reconnects through a rolling lame-duck restart on
/// a loaded machine ended sessions.) A holder whose process exits is still
/// handed on after the grace even when its session timeout is far longer;
/// deployments whose reconnects are fast may set it lower.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_millis(900);

#[cfg(test)]
mod tests;
