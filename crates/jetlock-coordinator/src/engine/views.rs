//! The views operators read: locks, members, load.

use super::*;

impl Engine {
    /// Held locks and locks with waiters, for operators; `prefix` is a
    /// bucket-key prefix (segments).
    pub fn locks_view(&self, prefix: Option<&str>, now: Instant) -> Vec<LockInfo> {
        let mut out: Vec<LockInfo> = self
            .keys
            .iter()
            .filter(|(k, _)| match prefix {
                Some(p) => *k == p || k.strip_prefix(p).is_some_and(|r| r.starts_with('.')),
                None => true,
            })
            .filter_map(|(key, ks)| {
                let holder = match &ks.current {
                    Holding::Held { revision, record } => {
                        let since = ks
                            .changed_at
                            .map_or(0, |t| now.duration_since(t).as_millis());
                        Some(HolderView {
                            session: record.session.clone(),
                            owner: record.owner.clone(),
                            token: record.token_at(*revision),
                            holds: record.holds,
                            lease_ms: record.lease_ms,
                            lease_left_ms: record.lease_ms.saturating_sub(since as u64),
                            held_ms: unix_ms().saturating_sub(record.acquired_ms),
                        })
                    }
                    Holding::Vacant { .. } => None,
                };
                (holder.is_some() || !ks.busy.queue.is_empty()).then(|| LockInfo {
                    name: ks.name().to_string(),
                    key: key.to_owned(),
                    holder,
                    waiters: ks
                        .busy
                        .queue
                        .iter()
                        .map(|w| w.session.to_string())
                        .collect(),
                    served_by: self.ring.owner_of_key(key).to_owned(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Live coordinators and sessions, for operators.
    pub fn members_view(&self, now: Instant) -> (Vec<CoordinatorView>, Vec<SessionView>) {
        let mut served: HashMap<&str, u64> = HashMap::default();
        let mut held: HashMap<&str, u64> = HashMap::default();
        let mut waiting: HashMap<&str, u64> = HashMap::default();
        for (key, ks) in self.keys.iter() {
            if let Holding::Held { record, .. } = &ks.current {
                *served.entry(self.ring.owner_of_key(key)).or_default() += 1;
                *held.entry(record.session.as_str()).or_default() += 1;
            }
            for w in &ks.busy.queue {
                *waiting.entry(&*w.session).or_default() += 1;
            }
        }
        let ago = |t: Instant| now.duration_since(t).as_millis() as u64;
        let me = self.ring.me();
        let mut coordinators: Vec<CoordinatorView> = self
            .ring
            .last_seen()
            .map(|(id, t)| (id, ago(t)))
            .chain([(me, 0)])
            .map(|(id, last_seen_ms)| CoordinatorView {
                id: id.to_owned(),
                last_seen_ms,
                locks: served.get(id).copied().unwrap_or(0),
            })
            .collect();
        coordinators.sort_by(|a, b| a.id.cmp(&b.id));
        let mut sessions: Vec<SessionView> = self
            .sessions
            .alive()
            .map(|(id, t, timeout)| SessionView {
                session: id.to_owned(),
                last_seen_ms: ago(t),
                timeout_ms: timeout.as_millis() as u64,
                locks_held: held.get(id).copied().unwrap_or(0),
                waiting: waiting.get(id).copied().unwrap_or(0),
                served_by: self.ring.owner(id).to_owned(),
                client: self.sessions.client_of(id).cloned(),
            })
            .collect();
        sessions.sort_by(|a, b| a.session.cmp(&b.session));
        (coordinators, sessions)
    }

    /// Waiters by lock-name prefix and held locks, over the keys this
    /// coordinator serves (for the metrics).
    pub fn served_load(&self) -> (std::collections::HashMap<String, usize>, usize) {
        let mut depths = std::collections::HashMap::default();
        let mut held = 0;
        for ks in self.keys.values().filter(|ks| self.owns(ks.key())) {
            let key = ks.key();
            if matches!(ks.current, Holding::Held { .. }) {
                held += 1;
            }
            if !ks.busy.queue.is_empty() {
                let prefix = key.split('.').next().unwrap_or(key);
                let prefix = LockName::from_key(prefix)
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_else(|_| prefix.to_owned());
                *depths.entry(prefix).or_default() += ks.busy.queue.len();
            }
        }
        (depths, held)
    }

    /// Waiters queued for `key` (mirror included).
    pub fn queue_len(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |k| k.busy.queue.len())
    }
}
