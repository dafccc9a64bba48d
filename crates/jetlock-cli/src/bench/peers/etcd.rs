//! etcd's lock API through its JSON gateway: `POST /v3/lock/lock` with a
//! lease (granted once per client) returns the lock's key, `POST
//! /v3/lock/unlock` deletes it. Both are Raft writes, fsynced to the WAL
//! before etcd answers. One HTTP/1.1 keep-alive connection per client,
//! with the hyper client jetlock already has: the gateway costs a JSON
//! round of encoding beside gRPC, small next to the fsyncs.

use super::service::Service;
use super::{CliError, Contender};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Value};
use std::process::Command;
use tokio::task::JoinSet;

/// Seconds the lease of a client's locks lives (the run is shorter).
const LEASE_TTL_S: u64 = 120;
/// Largest answer read.
const MAX_ANSWER: usize = 1 << 20;

/// Starts a single-member etcd in a temp dir on free loopback ports.
pub(super) async fn start(binary: &std::path::Path) -> Result<Service, CliError> {
    let (dir, port) = Service::prepare("etcd")?;
    let peer_port = jetlock_testkit::server::free_ports(2)?
        .into_iter()
        .find(|&p| p != port)
        .ok_or("no second free port")?;
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(binary);
    cmd.arg("--name")
        .arg("bench")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen-client-urls")
        .arg(&client_url)
        .arg("--advertise-client-urls")
        .arg(&client_url)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("bench={peer_url}"));
    let service = Service::start("etcd", cmd, dir, port).await?;
    // Listening comes before the member has elected itself: wait for a
    // lease to be granted.
    service
        .wait_serving("granted no lease", async || EtcdLock::connect(port).await)
        .await?;
    Ok(service)
}

/// One HTTP/1.1 keep-alive connection to etcd's JSON gateway.
pub(super) struct Gateway {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted (the socket closed) on drop.
    _connection: JoinSet<()>,
    host: String,
}

impl Gateway {
    pub(super) async fn connect(port: u16) -> Result<Gateway, CliError> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let mut driver = JoinSet::new();
        driver.spawn(async move {
            let _ = connection.await;
        });
        Ok(Gateway {
            sender,
            _connection: driver,
            host: format!("127.0.0.1:{port}"),
        })
    }

    /// Posts `body` to `path`; the answer's body, once the status says it
    /// is one.
    pub(super) async fn send(
        &mut self,
        path: &str,
        body: &Value,
    ) -> Result<hyper::body::Incoming, CliError> {
        self.sender.ready().await?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        if !status.is_success() {
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await?
                .to_bytes();
            return Err(format!(
                "etcd answered {path} with HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(response.into_body())
    }

    /// Posts `body` to `path` and reads the JSON answer.
    pub(super) async fn post(&mut self, path: &str, body: Value) -> Result<Value, CliError> {
        let answer = self.send(path, &body).await?;
        let body = http_body_util::Limited::new(answer, MAX_ANSWER)
            .collect()
            .await?
            .to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    /// A lease of (about) `ttl_s` seconds: its id, and the TTL etcd
    /// granted, which is at least its minimum.
    pub(super) async fn grant(&mut self, ttl_s: u64) -> Result<(String, u64), CliError> {
        let granted = self
            .post("/v3/lease/grant", json!({ "TTL": ttl_s }))
            .await?;
        let id = match &granted["ID"] {
            Value::String(id) => id.clone(),
            Value::Number(id) => id.to_string(),
            _ => return Err(format!("etcd granted no lease: {granted}").into()),
        };
        let ttl = match &granted["TTL"] {
            Value::String(ttl) => ttl.parse().ok(),
            other => other.as_u64(),
        };
        Ok((id, ttl.unwrap_or(ttl_s)))
    }
}

/// One client: a keep-alive connection and a lease.
pub(super) struct EtcdLock {
    gateway: Gateway,
    lease: String,
}

impl EtcdLock {
    pub(super) async fn connect(port: u16) -> Result<EtcdLock, CliError> {
        let mut gateway = Gateway::connect(port).await?;
        let (lease, _) = gateway.grant(LEASE_TTL_S).await?;
        Ok(EtcdLock { gateway, lease })
    }
}

impl Contender for EtcdLock {
    /// The lock's own key (base64), which unlock names.
    type Held = String;

    async fn take(&mut self, name: &str) -> Result<String, CliError> {
        let name = base64::engine::general_purpose::STANDARD.encode(name);
        let body = json!({ "name": name, "lease": self.lease });
        let locked = self.gateway.post("/v3/lock/lock", body).await?;
        locked["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("etcd's lock answer has no key: {locked}").into())
    }

    async fn give_back(&mut self, _: &str, key: String) -> Result<(), CliError> {
        self.gateway
            .post("/v3/lock/unlock", json!({ "key": key }))
            .await?;
        Ok(())
    }
}
