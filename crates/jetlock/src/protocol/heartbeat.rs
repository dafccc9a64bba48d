//! Heartbeats: sessions' (`jetlock.hb.<session>`) and their answers,
//! coordinators' (`jetlock.coord.hb.<id>`), and the server's disconnect
//! advisories.

use super::ErrorCode;
use serde::{Deserialize, Serialize};

/// A session heartbeat (`jetlock.hb.<session>`). Every field is optional;
/// an empty body is a valid heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// After how long without a heartbeat the session is dead (clamped by
    /// the coordinator; default 900 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The session's NATS connection (`server_id` and client id from the
    /// server's INFO): when the server reports that this connection closed,
    /// the session is dead at once instead of after `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// The session is closing: release its locks now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Who the client is, for operators (`jetlock members`); changes no
    /// decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

/// What a session tells operators about itself. Every field is optional;
/// coordinators keep at most [`ClientInfo::MAX_FIELD`] bytes of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's name (`ClientOptions::name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The machine it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its process id there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl ClientInfo {
    /// The longest name or host a coordinator keeps.
    pub const MAX_FIELD: usize = 128;

    /// This process: `name`, the host name and the pid.
    pub fn this_process(name: &str) -> ClientInfo {
        ClientInfo {
            name: (!name.is_empty()).then(|| name.to_owned()),
            host: crate::protocol::host_name(),
            pid: Some(std::process::id()),
        }
    }

    /// The same, with over-long fields cut (on a character boundary).
    pub fn bounded(mut self) -> ClientInfo {
        for field in [&mut self.name, &mut self.host].into_iter().flatten() {
            if field.len() > Self::MAX_FIELD {
                let mut end = Self::MAX_FIELD;
                while !field.is_char_boundary(end) {
                    end -= 1;
                }
                field.truncate(end);
            }
        }
        self
    }
}

/// One NATS client connection, as the server names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnId {
    pub server_id: String,
    pub cid: u64,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub v: u32,
    /// False when the session was declared dead: its locks are gone and the
    /// client must start a new session.
    pub alive: bool,
    /// The timeout the coordinator applies to this session.
    pub timeout_ms: u64,
    /// Live coordinators.
    pub coordinators: u32,
    /// The reconnect grace the coordinator applies: after the server
    /// reports the session's connection closed, a heartbeat naming a new
    /// connection must arrive within it, or the session is dead. Absent
    /// from coordinators before protocol 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// The answering coordinator's id: after a reconnect, the client counts
    /// which coordinators heard its new connection. Absent from
    /// coordinators before protocol 1.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why a new session was not taken (`too_many_sessions`), with
    /// `alive: false`. Absent from coordinators before protocol 1.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ErrorCode>,
    /// True when the coordinator serves unstored releases
    /// ([`super::unstored_release_subject`]). Absent (false) from
    /// coordinators before protocol 1.8.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unstored_release: bool,
}

/// A coordinator's heartbeat (`jetlock.coord.hb.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorBeat {
    pub v: u32,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// The coordinator's wall clock, Unix ms (`jetlock doctor` compares
    /// clocks with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// The part of a server client-disconnect advisory jetlock reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectAdvisory {
    pub server: AdvisoryServer,
    pub client: AdvisoryClient,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdvisoryServer {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdvisoryClient {
    pub id: u64,
}

impl DisconnectAdvisory {
    pub fn conn(&self) -> ConnId {
        ConnId {
            server_id: self.server.id.clone(),
            cid: self.client.id,
        }
    }
}

/// The requests a coordinator finished since its last note
/// (`jetlock.coord.done.<from>`, every 20 ms while it answers): the other
/// coordinators mirror every request, and forget the ones listed, so a
/// takeover does not carry one out again. One note per tick instead of
/// every answer to every coordinator: a mirror's share of the answers
/// was a third of what it was sent per JSON pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneNote {
    pub v: u32,
    /// The coordinator that answered them.
    pub from: String,
    /// (session, request id) of each final answer, in the order sent.
    pub done: Vec<(String, String)>,
}

/// A coordinator about to declare sessions dead by silence asks the others
/// when they last heard them (`jetlock.coord.ask.<from>`, answered on
/// `jetlock.coord.heard.<from>`): a heartbeat lost on its way to one
/// coordinator alone must not end a session another one confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardQuery {
    pub v: u32,
    /// The asking coordinator.
    pub from: String,
    /// Its number for this question.
    pub round: u64,
    pub sessions: Vec<String>,
}

/// The answer to a [`HeardQuery`]: for each session asked, in order, how
/// long ago this coordinator last heard it (ms, its own clock), or `None`
/// when it counts the session past its deadline too, or not alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardReply {
    pub v: u32,
    pub by: String,
    pub round: u64,
    pub ages_ms: Vec<Option<u64>>,
}
