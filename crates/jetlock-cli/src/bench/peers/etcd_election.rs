//! etcd's v3 election API through its JSON gateway, for the election
//! failover rows (`bench/election.rs`), measured the way jetlock's are.
//!
//! Each candidate is a task in the bench process with two connections of
//! its own: one grants a lease of the smallest TTL etcd accepts (asked for
//! 1 s, etcd raises it to its minimum, 2 s with its default 100 ms heartbeat
//! and 1 s election timeout) and keeps it alive every third of the TTL, as
//! etcd's Go client does; the other campaigns (`/v3/election/campaign`,
//! which answers once elected) and later resigns (`/v3/election/resign`).
//! The leader leaves by
//!
//! - **crash**: its task is aborted: its keepalives stop and both its
//!   connections close, as when its process is killed (etcd does not end a
//!   lease when a connection closes, so a killed process is no different):
//!   the leadership ends when etcd expires the lease;
//! - **resign**: it calls resign, which deletes its key.
//!
//! An observer (`/v3/election/observe`, a stream of one JSON object per
//! line) sees the next leader: the candidate whose key is the oldest left.

use super::super::election::{ms_since, Departure, ElectionRow, CANDIDATES};
use super::super::failover::phase;
use super::etcd::Gateway;
use super::CliError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The lease TTL asked for; etcd grants at least its minimum.
const TTL_ASKED_S: u64 = 1;
/// How long a candidate may take to be in line, or elected.
const STEP_LIMIT: Duration = Duration::from_secs(15);
/// The election's name.
const ELECTION: &str = "jetlock-bench-election";

/// A leader as the observer saw it: its value (the candidate's id) and its
/// key's create revision (the term: it only grows).
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    candidate: String,
    revision: u64,
}

/// One line of `/v3/election/observe`: `{"result":{"kv":{...}}}`.
fn observed(line: &[u8]) -> Option<Observed> {
    let message: Value = serde_json::from_slice(line).ok()?;
    let kv = &message["result"]["kv"];
    let value = BASE64.decode(kv["value"].as_str()?).ok()?;
    Some(Observed {
        candidate: String::from_utf8(value).ok()?,
        revision: kv["create_revision"].as_str()?.parse().ok()?,
    })
}

/// etcd's rows against the etcd on `port`: `runs` crashes, then `runs`
/// resignations.
pub(super) async fn run(
    port: u16,
    service: String,
    runs: usize,
) -> Result<Vec<ElectionRow>, CliError> {
    let mut line = Line::start(port).await?;
    let settings = format!(
        "lease TTL {} s (asked {TTL_ASKED_S} s: etcd's minimum), keepalive every {} ms",
        line.ttl_s,
        line.ttl_s * 1000 / 3
    );
    let mut rows = Vec::new();
    for departure in Departure::BOTH {
        super::super::progress(&format!(
            "election: etcd, {}, {runs} runs",
            departure.label()
        ));
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(line.failover(departure).await?);
        }
        let how = match departure {
            Departure::Crash => {
                "its keepalives stop and its connections close (candidates are tasks in the bench)"
            }
            Departure::Resign => "it calls /v3/election/resign",
        };
        rows.push(ElectionRow::new(
            service.clone(),
            departure,
            how,
            samples,
            settings.clone(),
        ));
    }
    Ok(rows)
}

/// A candidate: its task, and the word to resign.
struct Candidate {
    id: String,
    resign: Option<oneshot::Sender<()>>,
    /// Aborted (keepalives stopped, connections closed) on drop.
    task: JoinSet<Result<(), CliError>>,
}

/// The candidates of the election, oldest first, and its observer.
struct Line {
    port: u16,
    ttl_s: u64,
    candidates: Vec<Candidate>,
    started: usize,
    leaders: mpsc::Receiver<Result<(Instant, Observed), String>>,
    _observer: JoinSet<()>,
    /// For counting the candidates in line.
    admin: Gateway,
    revision: u64,
    leader: String,
}

impl Line {
    async fn start(port: u16) -> Result<Line, CliError> {
        let mut admin = Gateway::connect(port).await?;
        let (probe, ttl_s) = admin.grant(TTL_ASKED_S).await?;
        admin
            .post("/v3/lease/revoke", json!({ "ID": probe }))
            .await?;
        let (tx, leaders) = mpsc::channel(64);
        let mut observer = JoinSet::new();
        observer.spawn(observe(port, tx));
        let mut line = Line {
            port,
            ttl_s,
            candidates: Vec::new(),
            started: 0,
            leaders,
            _observer: observer,
            admin,
            revision: 0,
            leader: String::new(),
        };
        line.add();
        line.next_leader(Instant::now()).await?;
        while line.candidates.len() < CANDIDATES {
            line.add();
            line.wait_in_line().await?;
        }
        Ok(line)
    }

    fn add(&mut self) {
        let id = format!("candidate-{}", self.started);
        self.started += 1;
        let (resign, resigned) = oneshot::channel();
        let mut task = JoinSet::new();
        task.spawn(campaign(self.port, id.clone(), self.ttl_s, resigned));
        self.candidates.push(Candidate {
            id,
            resign: Some(resign),
            task,
        });
    }

    /// Waits until every candidate has its key under the election's prefix.
    async fn wait_in_line(&mut self) -> Result<(), CliError> {
        let deadline = Instant::now() + STEP_LIMIT;
        let range = json!({
            "key": BASE64.encode(format!("{ELECTION}/")),
            "range_end": BASE64.encode(format!("{ELECTION}0")),
            "count_only": true,
        });
        loop {
            let answer = self.admin.post("/v3/kv/range", range.clone()).await?;
            let count: usize = answer["count"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if count >= self.candidates.len() {
                return Ok(());
            }
            if let Some(ended) = self
                .candidates
                .iter_mut()
                .find_map(|c| c.task.try_join_next())
            {
                let why = match ended {
                    Ok(Ok(())) => "it resigned".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(format!("an etcd candidate ended early: {why}").into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd: {count} of {} candidates in line after {STEP_LIMIT:?}",
                    self.candidates.len()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next leader the observer sees, and when: a key newer than the
    /// last leader's.
    async fn next_leader(&mut self, since: Instant) -> Result<Instant, CliError> {
        let seen = tokio::time::timeout(STEP_LIMIT, async {
            while let Some(seen) = self.leaders.recv().await {
                let (at, leader) = seen?;
                if leader.revision > self.revision {
                    return Ok(Some((at, leader)));
                }
            }
            Ok::<_, String>(None)
        })
        .await;
        match seen {
            Ok(Ok(Some((at, leader)))) => {
                self.revision = leader.revision;
                self.leader = leader.candidate;
                Ok(at)
            }
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(None)) => Err("etcd's election observer ended".into()),
            Err(_) => Err(format!(
                "etcd: no new leader within {STEP_LIMIT:?} ({:.0} ms after the leader left)",
                ms_since(since, Instant::now())
            )
            .into()),
        }
    }

    async fn failover(&mut self, departure: Departure) -> Result<f64, CliError> {
        let at = self
            .candidates
            .iter()
            .position(|c| c.id == self.leader)
            .ok_or_else(|| format!("etcd: {} leads, which is not a candidate here", self.leader))?;
        let mut old = self.candidates.remove(at);
        tokio::time::sleep(phase()).await;
        let left = Instant::now();
        match departure {
            Departure::Crash => drop(old.task),
            Departure::Resign => {
                if let Some(resign) = old.resign.take() {
                    let _ = resign.send(());
                }
            }
        }
        let seen = self.next_leader(left).await?;
        let expected = &self.candidates[0].id;
        if self.leader == old.id || self.leader != *expected {
            return Err(format!(
                "etcd: after {} left, {} leads instead of {expected}",
                old.id, self.leader
            )
            .into());
        }
        self.add();
        self.wait_in_line().await?;
        Ok(ms_since(left, seen))
    }
}

/// One candidate: campaigns on a lease it keeps alive, leads until told to
/// resign, resigns.
async fn campaign(
    port: u16,
    id: String,
    ttl_s: u64,
    resigned: oneshot::Receiver<()>,
) -> Result<(), CliError> {
    let mut keeper = Gateway::connect(port).await?;
    let mut voice = Gateway::connect(port).await?;
    let (lease, _) = keeper.grant(ttl_s).await?;
    let every = Duration::from_millis(ttl_s * 1000 / 3);
    let keepalive = async {
        loop {
            tokio::time::sleep(every).await;
            keeper
                .post("/v3/lease/keepalive", json!({ "ID": lease }))
                .await?;
        }
    };
    let lead = async {
        let body = json!({
            "name": BASE64.encode(ELECTION),
            "value": BASE64.encode(&id),
            "lease": lease,
        });
        let elected = voice.post("/v3/election/campaign", body).await?;
        // Told to resign, or the line is gone: resign either way.
        let _ = resigned.await;
        let leader = json!({ "leader": elected["leader"] });
        voice.post("/v3/election/resign", leader).await?;
        Ok::<_, CliError>(())
    };
    tokio::select! {
        kept = keepalive => kept,
        led = lead => led,
    }
}

/// Reads the observe stream line by line into `leaders`, each with the
/// moment it was read. The gateway answers the request only once there is
/// a leader to tell of, so this waits in its own task.
async fn observe(port: u16, leaders: mpsc::Sender<Result<(Instant, Observed), String>>) {
    let body = json!({ "name": BASE64.encode(ELECTION) });
    let mut gateway = None;
    let opened = async {
        let gateway = gateway.insert(Gateway::connect(port).await?);
        gateway.send("/v3/election/observe", &body).await
    };
    let mut stream = match opened.await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = leaders
                .send(Err(format!("etcd's observe failed: {e}")))
                .await;
            return;
        }
    };
    let mut buffer = BytesMut::new();
    loop {
        let frame = match stream.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let _ = leaders
                    .send(Err(format!("etcd's observe stream broke: {e}")))
                    .await;
                return;
            }
            None => return,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line = buffer.split_to(end + 1);
            let seen = match observed(&line) {
                Some(leader) => Ok((at, leader)),
                None => Err(format!(
                    "etcd's observe stream sent {}",
                    String::from_utf8_lossy(&line).trim()
                )),
            };
            if leaders.send(seen).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_leader_from_an_observe_line() {
        // As etcd 3.4.23 sends it.
        let line = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"},"kv":{"key":"ZWwvMzkwZA==","create_revision":"3","mod_revision":"3","version":"1","value":"Yg==","lease":"41"}}}"#;
        assert_eq!(
            observed(line),
            Some(Observed {
                candidate: "b".to_owned(),
                revision: 3
            })
        );
        assert_eq!(observed(br#"{"error":{"grpc_code":14}}"#), None);
        assert_eq!(observed(b"not json"), None);
    }
}
