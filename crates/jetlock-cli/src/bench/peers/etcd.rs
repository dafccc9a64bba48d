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

/// One client: a keep-alive connection and a lease.
pub(super) struct EtcdLock {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; ends when `sender` is dropped.
    _connection: tokio::task::JoinHandle<()>,
    host: String,
    lease: String,
}

impl EtcdLock {
    pub(super) async fn connect(port: u16) -> Result<EtcdLock, CliError> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let mut client = EtcdLock {
            sender,
            _connection: tokio::spawn(async move {
                let _ = connection.await;
            }),
            host: format!("127.0.0.1:{port}"),
            lease: String::new(),
        };
        let granted = client
            .post("/v3/lease/grant", json!({ "TTL": LEASE_TTL_S }))
            .await?;
        client.lease = match &granted["ID"] {
            Value::String(id) => id.clone(),
            Value::Number(id) => id.to_string(),
            _ => return Err(format!("etcd granted no lease: {granted}").into()),
        };
        Ok(client)
    }

    async fn post(&mut self, path: &str, body: Value) -> Result<Value, CliError> {
        self.sender.ready().await?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "etcd answered {path} with HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

impl Contender for EtcdLock {
    /// The lock's own key (base64), which unlock names.
    type Held = String;

    async fn take(&mut self, name: &str) -> Result<String, CliError> {
        let name = base64::engine::general_purpose::STANDARD.encode(name);
        let body = json!({ "name": name, "lease": self.lease });
        let locked = self.post("/v3/lock/lock", body).await?;
        locked["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("etcd's lock answer has no key: {locked}").into())
    }

    async fn give_back(&mut self, _: &str, key: String) -> Result<(), CliError> {
        self.post("/v3/lock/unlock", json!({ "key": key })).await?;
        Ok(())
    }
}
