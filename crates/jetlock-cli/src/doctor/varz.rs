//! VARZ: a server's own report of its version and JetStream settings. The
//! client connection's INFO has the version but not `sync_interval`, so
//! `jetlock doctor` reads VARZ either from a server's monitoring port
//! (`GET /varz`) or, through a system-account connection, from every
//! server of the cluster at once (`$SYS.REQ.SERVER.PING.VARZ`).

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;

/// The part of a server's VARZ that `jetlock doctor` reads (field names as
/// nats-server 2.15.1 sends them). Any field may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Varz {
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub jetstream: Option<JetStreamVarz>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JetStreamVarz {
    /// Absent when JetStream is off on the server.
    #[serde(default)]
    pub config: Option<JetStreamConfigVarz>,
}

/// `jetstream.config` of VARZ.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JetStreamConfigVarz {
    /// Nanoseconds between fsyncs (120 s by default). The server keeps
    /// reporting it with `sync_interval: always`, which sets `sync_always`.
    #[serde(default)]
    pub sync_interval: Option<i64>,
    /// True with `sync_interval: always` (absent otherwise).
    #[serde(default)]
    pub sync_always: bool,
}

impl Varz {
    /// The name to show for this server.
    pub fn name(&self) -> &str {
        if self.server_name.is_empty() {
            &self.server_id
        } else {
            &self.server_name
        }
    }
}

/// Why VARZ could not be read from one source.
#[derive(Debug, thiserror::Error)]
pub enum VarzError {
    #[error("{url:?} is not a monitoring URL like http://host:8222 ({why})")]
    BadUrl { url: String, why: String },
    #[error("could not read {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer within {limit:?}")]
    Timeout { url: String, limit: Duration },
    #[error("{url} sent VARZ that does not parse: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not use --system-url {url}: {source}")]
    System {
        url: String,
        #[source]
        source: async_nats::Error,
    },
    #[error(
        "no server answered $SYS.REQ.SERVER.PING.VARZ on {url}: is its user in the system account?"
    )]
    NoReplies { url: String },
}

/// A VARZ body: bigger means something else answered.
const MAX_VARZ_BYTES: usize = 4 << 20;

/// `GET <monitor>/varz` with hyper's HTTP/1 client, within `limit`.
pub async fn from_monitor(monitor: &str, limit: Duration) -> Result<Varz, VarzError> {
    let url = if monitor.contains("://") {
        monitor.to_owned()
    } else {
        format!("http://{monitor}")
    };
    match tokio::time::timeout(limit, get_varz(&url)).await {
        Ok(result) => result,
        Err(_) => Err(VarzError::Timeout { url, limit }),
    }
}

async fn get_varz(base: &str) -> Result<Varz, VarzError> {
    let url = format!("{}/varz", base.trim_end_matches('/'));
    let bad = |why: &str| VarzError::BadUrl {
        url: base.to_owned(),
        why: why.to_owned(),
    };
    let http = |e: async_nats::Error| VarzError::Http {
        url: url.clone(),
        source: e,
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    let (status, body) = crate::http::get(&uri, MAX_VARZ_BYTES).await.map_err(http)?;
    if !status.is_success() {
        return Err(VarzError::Status {
            url,
            status: status.as_u16(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| VarzError::Decode { url, source })
}

/// One server's answer to `$SYS.REQ.SERVER.PING.VARZ`.
#[derive(Debug, Deserialize)]
struct PingReply {
    #[serde(default)]
    server: PingServer,
    #[serde(default)]
    data: Option<Varz>,
}

#[derive(Debug, Default, Deserialize)]
struct PingServer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
}

/// Asks every server for its VARZ through a system-account connection
/// and collects the answers for `wait`, or until `expected` servers
/// answered.
pub async fn from_system(
    system_url: &str,
    wait: Duration,
    expected: Option<usize>,
) -> Result<Vec<Varz>, VarzError> {
    let shown = redact(system_url);
    let system = |e: async_nats::Error| VarzError::System {
        url: shown.clone(),
        source: e,
    };
    let servers = jetlock::client::server_list(system_url);
    // async-nats parses credentials in a URL but does not send them.
    let mut options = async_nats::ConnectOptions::new();
    let credentials = servers
        .iter()
        .filter_map(|s| s.parse::<async_nats::ServerAddr>().ok())
        .find_map(|a| Some((a.username()?.to_owned(), a.password()?.to_owned())));
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    let nats = tokio::time::timeout(wait, options.connect(servers))
        .await
        .map_err(|_| system("no connection within the wait".into()))?
        .map_err(|e| system(e.into()))?;
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| system(e.into()))?;
    nats.publish_with_reply("$SYS.REQ.SERVER.PING.VARZ", inbox, Bytes::new())
        .await
        .map_err(|e| system(e.into()))?;
    let deadline = Instant::now() + wait;
    let mut found: Vec<Varz> = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        let Ok(PingReply {
            server,
            data: Some(mut varz),
        }) = serde_json::from_slice::<PingReply>(&msg.payload)
        else {
            continue; // an error reply or something else: not a server's VARZ
        };
        if varz.server_name.is_empty() {
            varz.server_name = server.name;
        }
        if varz.server_id.is_empty() {
            varz.server_id = server.id;
        }
        if !found.iter().any(|v| v.server_id == varz.server_id) {
            found.push(varz);
        }
        if expected.is_some_and(|n| found.len() >= n) {
            break;
        }
    }
    if found.is_empty() {
        return Err(VarzError::NoReplies { url: shown });
    }
    Ok(found)
}

/// The URLs without their passwords, for messages.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_nats_server_sends() {
        // Trimmed from nats-server 2.15.1 with `sync_interval: always`.
        let varz: Varz = serde_json::from_str(
            r#"{"server_id":"NABC","server_name":"n1","version":"2.15.1","port":4222,
                "jetstream":{"config":{"max_memory":1,"store_dir":"/x",
                "sync_interval":120000000000,"sync_always":true,"strict":true},
                "stats":{"memory":0}}}"#,
        )
        .unwrap();
        assert_eq!(varz.name(), "n1");
        let config = varz.jetstream.unwrap().config.unwrap();
        assert!(config.sync_always);
        assert_eq!(config.sync_interval, Some(120_000_000_000));
        // The default config leaves sync_always out; no JetStream, no config.
        let varz: Varz =
            serde_json::from_str(r#"{"jetstream":{"config":{"sync_interval":1}}}"#).unwrap();
        assert!(!varz.jetstream.unwrap().config.unwrap().sync_always);
        let varz: Varz = serde_json::from_str(r#"{"jetstream":{}}"#).unwrap();
        assert!(varz.jetstream.unwrap().config.is_none());
    }

    #[test]
    fn system_replies_carry_varz_in_data() {
        let reply: PingReply = serde_json::from_str(
            r#"{"server":{"name":"n2","id":"NX","ver":"2.15.1"},"data":{"version":"2.15.1"}}"#,
        )
        .unwrap();
        assert_eq!(reply.server.name, "n2");
        assert_eq!(reply.data.unwrap().version, "2.15.1");
        let refused: PingReply = serde_json::from_str(
            r#"{"server":{"name":"n2"},"error":{"code":403,"description":"no"}}"#,
        )
        .unwrap();
        assert!(refused.data.is_none());
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("nats://sys:secret@h1:4222,nats://h2:4222"),
            "nats://***@h1:4222,nats://h2:4222"
        );
        assert_eq!(redact("h1:4222"), "h1:4222");
    }
}
