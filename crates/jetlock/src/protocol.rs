//! The coordinator's wire protocol (version 1): subjects, JSON messages,
//! error codes. `docs/PROTOCOL.md` is the prose version of this file, for
//! people writing clients in other languages.
//!
//! - Requests go to `jetlock.req.<op>.<session>` and are stored by the
//!   `JETLOCK_REQ` stream, so an acknowledged request survives a
//!   coordinator crash; the publisher sets `Nats-Msg-Id` so a retried
//!   publish is stored once.
//! - Answers and notices for a session go to `jetlock.to.<session>` (core
//!   NATS). The session is in the subject, so subject permissions decide who
//!   can send requests as a session and who can read its answers.
//! - Heartbeats: `jetlock.hb.<session>` (core NATS request; every
//!   coordinator answers).
//! - Unstored releases: `jetlock.now.release.<session>` (core NATS, since
//!   1.8): the body of a release, acted on by the lock's coordinator when
//!   it arrives, so handing a lock on is one write. Nothing keeps it: a
//!   client that gets no answer sends the release again on the stored
//!   subject (or writes the bucket itself, on the fast path).
//!
//! Parsing never panics and never trusts a field: every message is checked
//! here, and a bad one becomes a [`WireError`] with a stable [`ErrorCode`].
//!
//! This file holds the subjects and session ids; the messages are in
//! `protocol/`: one file per request op (`acquire.rs`, `release.rs`,
//! `renew.rs`, `cancel.rs`, `revoke.rs`: its body and its checks),
//! `request.rs` (the checked [`Request`] and [`parse_request`], one arm per
//! op), `answer.rs`, `heartbeat.rs` and `error.rs`.

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// The revision of v1, announced in the coordinators' service metadata
/// (`protocol_revision`). Revision 2 moved preempting to its own subject and
/// refuses `preempt: true` on the acquire subject; revision 3 (1.7) refuses
/// acquires of names that look like parts of read/write locks and
/// semaphores but are not, and of another session's reader key
/// (`docs/PROTOCOL.md`, "Versioning"); revision 4 (1.8) serves unstored
/// releases ([`unstored_release_subject`]); revision 5 (1.9) reads
/// partitioned requests ([`partitioned_request_subject`]).
pub const REVISION: u32 = 5;
/// Largest request body the coordinator reads (the request stream refuses
/// larger messages at publish time).
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Longest session id, in bytes.
pub const MAX_SESSION_BYTES: usize = 128;
/// Most tokens in a session id (`team.worker.<nuid>`).
pub const MAX_SESSION_TOKENS: usize = 4;
/// Longest request id or owner id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Root of every jetlock subject.
pub const PREFIX: &str = "jetlock";
/// Stream that stores requests.
pub const REQUEST_STREAM: &str = "JETLOCK_REQ";
/// Subjects the request stream captures.
pub const REQUEST_SUBJECTS: &str = "jetlock.req.>";
/// Coordinator heartbeats: `jetlock.coord.hb.<coordinator id>`.
pub const COORDINATOR_HEARTBEATS: &str = "jetlock.coord.hb.*";
/// Session heartbeats: `jetlock.hb.<session>`.
pub const SESSION_HEARTBEATS: &str = "jetlock.hb.>";
/// Where the server's client-disconnect advisories are imported to (see
/// `nats/*.conf`): lets coordinators see a holder's process exit at once.
pub const DISCONNECT_EVENTS: &str = "jetlock.sys.disconnect";

/// The request kinds, the `<op>` token of a request subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Acquire,
    Release,
    Renew,
    Cancel,
    Revoke,
    /// An acquire that asks the holder to give way. Its own subject, so
    /// NATS permissions decide who may preempt (see `nats/cluster.conf`).
    Preempt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Renew => "renew",
            Op::Cancel => "cancel",
            Op::Revoke => "revoke",
            Op::Preempt => "preempt",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "acquire" => Op::Acquire,
            "release" => Op::Release,
            "renew" => Op::Renew,
            "cancel" => Op::Cancel,
            "revoke" => Op::Revoke,
            "preempt" => Op::Preempt,
            _ => return None,
        })
    }
}

/// The subject a session publishes `op` requests to in a deployment whose
/// requests are not partitioned (and, in one whose requests are, the
/// subject every coordinator reads: see [`partitioned_request_subject`]).
pub fn request_subject(op: Op, session: &str) -> String {
    format!("{PREFIX}.req.{}.{session}", op.as_str())
}

/// Root of partitioned request subjects,
/// `jetlock.preq.<partition>.<op>.<session>`.
pub const PARTITIONED_PREFIX: &str = "jetlock.preq.";

/// The subject a session publishes `op` requests about a lock in request
/// partition `partition` to (`crate::shards::partition_of`): only the
/// coordinator owning the partition reads it. The request stream captures
/// `jetlock.preq.<p>.>` for each partition the deployment has and nothing
/// else under `jetlock.preq`, so a request to a partition that does not
/// exist is refused by the server when it is published.
pub fn partitioned_request_subject(partition: u32, op: Op, session: &str) -> String {
    format!("{PARTITIONED_PREFIX}{partition}.{}.{session}", op.as_str())
}

/// What the request stream captures for partition `partition`, and the
/// filter its owner reads it by.
pub fn partition_subjects(partition: u32) -> String {
    format!("{PARTITIONED_PREFIX}{partition}.>")
}

/// The partition of a `jetlock.preq.<partition>.…` or
/// `jetlock.now.<partition>.…` subject, if it is one with a partition
/// number.
pub fn subject_partition(subject: &str) -> Option<u32> {
    let rest = subject
        .strip_prefix(PARTITIONED_PREFIX)
        .or_else(|| subject.strip_prefix(UNSTORED_PREFIX))?;
    let (p, _) = rest.split_once('.')?;
    if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// Every session's unstored releases in a deployment whose requests are
/// not partitioned (every coordinator reads them).
pub const UNSTORED_RELEASES: &str = "jetlock.now.release.>";

/// Root of unstored releases, unpartitioned and partitioned.
const UNSTORED_PREFIX: &str = "jetlock.now.";

/// The subject a session publishes an unstored release to (core NATS:
/// nothing stores it, so a lost one is sent again on [`request_subject`]).
pub fn unstored_release_subject(session: &str) -> String {
    format!("{PREFIX}.now.release.{session}")
}

/// The subject of an unstored release of a lock in request partition
/// `partition`: only the partition's coordinator reads it.
pub fn partitioned_unstored_release_subject(partition: u32, session: &str) -> String {
    format!("{UNSTORED_PREFIX}{partition}.release.{session}")
}

/// What the coordinator owning partition `partition` subscribes to for its
/// unstored releases.
pub fn partition_unstored_releases(partition: u32) -> String {
    format!("{UNSTORED_PREFIX}{partition}.release.>")
}

/// Every partition's unstored releases.
pub const PARTITIONED_UNSTORED_RELEASES: &str = "jetlock.now.*.release.>";

/// The session of `jetlock.now.release.<session>` or
/// `jetlock.now.<partition>.release.<session>`.
pub fn parse_unstored_release_subject(subject: &str) -> Result<&str, WireError> {
    let not = || WireError::new(ErrorCode::BadRequest, "not an unstored release subject");
    let session = match subject.strip_prefix("jetlock.now.release.") {
        Some(session) => session,
        None => {
            subject_partition(subject).ok_or_else(not)?;
            let (_, rest) = subject
                .strip_prefix(UNSTORED_PREFIX)
                .and_then(|r| r.split_once('.'))
                .ok_or_else(not)?;
            rest.strip_prefix("release.").ok_or_else(not)?
        }
    };
    check_session(session)?;
    Ok(session)
}

/// The subject a session's answers and notices arrive on.
pub fn answer_subject(session: &str) -> String {
    format!("{PREFIX}.to.{session}")
}

/// The subject a session heartbeats on.
pub fn heartbeat_subject(session: &str) -> String {
    format!("{PREFIX}.hb.{session}")
}

/// The subject a coordinator heartbeats on.
pub fn coordinator_subject(id: &str) -> String {
    format!("{PREFIX}.coord.hb.{id}")
}

/// Where coordinator `id` asks the others when they last heard sessions.
pub fn heard_query_subject(id: &str) -> String {
    format!("{PREFIX}.coord.ask.{id}")
}

/// Every coordinator's questions ([`heard_query_subject`]).
pub const HEARD_QUERIES: &str = "jetlock.coord.ask.*";

/// Where coordinator `id` lists the requests it finished lately
/// ([`DoneNote`]).
pub fn done_subject(id: &str) -> String {
    format!("{PREFIX}.coord.done.{id}")
}

/// Every coordinator's [`DoneNote`]s.
pub const DONE_NOTES: &str = "jetlock.coord.done.*";

/// Where the answers to coordinator `id`'s questions go.
pub fn heard_reply_subject(id: &str) -> String {
    format!("{PREFIX}.coord.heard.{id}")
}

/// The `Nats-Msg-Id` of a request: the stream de-duplicates on it, so a
/// publish retried after a lost ack is stored once.
pub fn message_id(session: &str, id: &str) -> String {
    format!("{session}:{id}")
}

/// Checks a request's `Nats-Msg-Id` against the session of its subject: it
/// must start with `<session>:`. The stream de-duplicates message ids across
/// all sessions, so an id another session may also send lets one drop the
/// other's request; ids bound to the sender's session cannot collide.
/// A request without a message id is not de-duplicated and collides with
/// nothing, so it passes.
pub fn check_message_id(session: &str, msg_id: Option<&str>) -> Result<(), WireError> {
    let Some(msg_id) = msg_id else {
        return Ok(());
    };
    let bound = msg_id
        .strip_prefix(session)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|id| !id.is_empty());
    if bound {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::BadMessageId,
        format!("Nats-Msg-Id {msg_id:?} must be \"{session}:<request id>\", the subject's session"),
    ))
}

/// A new request id nobody can guess from ids seen before. A request's
/// message id is `<session>:<id>`, and the stream drops a second message
/// with the same message id whoever sends it, so a guessable id lets
/// another user of the same NATS account drop a request before it is sent.
/// `nuid::next()` is not enough: its 12-character prefix is shared by every
/// id of the process (session ids, which events show, included) and its
/// sequence grows by a fixed step of 33 to 332. A fresh generator draws a
/// new prefix from the OS (about 71 bits) and a new sequence (about 59).
pub fn new_request_id() -> String {
    nuid::NUID::new().next().to_string()
}

/// Checks a session id: 1–4 dot-separated tokens of `[A-Za-z0-9_-]`, at
/// most 128 bytes. Subject wildcards and spaces cannot appear, so a session
/// id never widens a subject.
pub fn check_session(session: &str) -> Result<(), WireError> {
    let bad = |why: &str| {
        WireError::new(
            ErrorCode::InvalidSession,
            format!("session id {session:?} {why}"),
        )
    };
    if session.is_empty() || session.len() > MAX_SESSION_BYTES {
        return Err(bad("must be 1 to 128 bytes"));
    }
    let mut tokens = 0;
    for token in session.split('.') {
        tokens += 1;
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad("must be dot-separated tokens of A-Z a-z 0-9 _ -"));
        }
    }
    if tokens > MAX_SESSION_TOKENS {
        return Err(bad("has more than 4 tokens"));
    }
    Ok(())
}

/// Splits `jetlock.req.<op>.<session>` or
/// `jetlock.preq.<partition>.<op>.<session>` (the partition is read with
/// [`subject_partition`]).
pub fn parse_request_subject(subject: &str) -> Result<(Op, &str), WireError> {
    let rest = match subject.strip_prefix("jetlock.req.") {
        Some(rest) => rest,
        None => subject_partition(subject)
            .and_then(|_| subject.strip_prefix(PARTITIONED_PREFIX)?.split_once('.'))
            .map(|(_, rest)| rest)
            .ok_or_else(|| WireError::new(ErrorCode::BadRequest, "not a request subject"))?,
    };
    let (op, session) = rest
        .split_once('.')
        .ok_or_else(|| WireError::new(ErrorCode::BadRequest, "request subject has no session"))?;
    let op = Op::parse(op).ok_or_else(|| {
        WireError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown request kind {op:?} (acquire, release, renew, cancel, revoke, preempt)"
            ),
        )
    })?;
    check_session(session)?;
    Ok((op, session))
}
mod acquire;
mod answer;
mod cancel;
mod error;
mod heartbeat;
mod release;
mod renew;
mod request;
mod revoke;

pub use acquire::AcquireBody;
pub use answer::{Answer, HolderInfo, LostCause};
pub use cancel::CancelBody;
pub use error::{ErrorCode, WireError};
pub use heartbeat::{
    AdvisoryClient, AdvisoryServer, ClientInfo, ConnId, CoordinatorBeat, DisconnectAdvisory,
    DoneNote, HeardQuery, HeardReply, Heartbeat, HeartbeatAck,
};
pub use release::ReleaseBody;

/// This machine's host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`),
/// for the client info sessions send.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
pub use renew::RenewBody;
pub use request::{parse_request, probe_id, Limits, Request};
pub use revoke::RevokeBody;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
