//! A lossy link: a TCP proxy between one NATS client and its server that
//! reads the NATS protocol frames going both ways and drops the ones a
//! test asks it to, as a flaky network would. The server and the client
//! are real and unchanged: a dropped JetStream ack leaves a write stored
//! and its writer without an answer, exactly as a lost packet does.

use super::PATIENCE;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the link did that a test waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The ack of a publish to this subject was dropped.
    AckLost(String),
    /// A publish to this subject was dropped.
    PublishLost(String),
    /// The reply to a request on this subject was passed on to the client.
    Replied(String),
}

#[derive(Default)]
struct Rules {
    /// Drop the reply to the next publish on this subject.
    lose_ack_of: Option<String>,
    /// Pass on and report the reply to the next request on this subject
    /// prefix.
    report_reply_of: Option<String>,
    /// Drop every publish on subjects with this prefix.
    lose_publishes_to: Option<String>,
    /// Reply subjects whose message is dropped / reported, and why.
    lose: HashSet<String>,
    report: HashSet<String>,
    subjects: std::collections::HashMap<String, String>,
}

pub struct LossyLink {
    port: u16,
    rules: Arc<Mutex<Rules>>,
    seen: tokio::sync::Mutex<mpsc::UnboundedReceiver<Seen>>,
    accept: tokio::task::JoinHandle<()>,
}

impl LossyLink {
    /// A link to the server on `server_port` (every connection made to the
    /// link is proxied).
    pub async fn to(server_port: u16) -> LossyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let r = rules.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", server_port))
                    .await
                    .unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, r.clone(), tx.clone(), Direction::ToServer));
                tokio::spawn(pump(sr, cw, r.clone(), tx.clone(), Direction::ToClient));
            }
        });
        LossyLink {
            port,
            rules,
            seen: tokio::sync::Mutex::new(rx),
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The ack of the next publish on `subject` is lost.
    pub fn lose_next_ack_of(&self, subject: &str) {
        self.rules.lock().unwrap().lose_ack_of = Some(subject.to_owned());
    }

    /// The reply to the next request on a subject starting with `prefix`
    /// is reported when it has been passed on.
    pub fn report_next_reply_to(&self, prefix: &str) {
        self.rules.lock().unwrap().report_reply_of = Some(prefix.to_owned());
    }

    /// Every publish on a subject starting with `prefix` is lost (`None`:
    /// none is).
    pub fn lose_publishes_to(&self, prefix: Option<&str>) {
        self.rules.lock().unwrap().lose_publishes_to = prefix.map(str::to_owned);
    }

    /// Waits (up to [`PATIENCE`]) until the link reports `what`.
    pub async fn wait_for(&self, what: impl Fn(&Seen) -> bool) -> Seen {
        let mut seen = self.seen.lock().await;
        tokio::time::timeout(PATIENCE, async {
            loop {
                let s = seen.recv().await.expect("the link runs");
                if what(&s) {
                    return s;
                }
            }
        })
        .await
        .expect("the link saw it")
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Copies frames from `from` to `to`, dropping what the rules say.
async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rules: Arc<Mutex<Rules>>,
    seen: mpsc::UnboundedSender<Seen>,
    dir: Direction,
) {
    let mut from = BufReader::new(from);
    loop {
        let mut frame = Vec::new();
        match from.read_until(b'\n', &mut frame).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&frame).trim_end().to_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        let op = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        // PUB/HPUB (to the server) and MSG/HMSG (to the client) carry a
        // payload whose size is the line's last number, then CRLF.
        if ["PUB", "HPUB", "MSG", "HMSG"].contains(&op.as_str()) {
            let size: usize = words.last().and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut payload = vec![0; size + 2];
            if from.read_exact(&mut payload).await.is_err() {
                return;
            }
            frame.extend_from_slice(&payload);
        }
        let (pass, report) = match (dir, op.as_str()) {
            (Direction::ToServer, "PUB" | "HPUB") => {
                let subject = words[1];
                let has_reply = words.len() == if op == "PUB" { 4 } else { 5 };
                let reply = has_reply.then(|| words[2].to_owned());
                to_server(&rules, subject, reply)
            }
            // MSG <subject> <sid> [reply] <size>: the subject is the inbox
            // a reply goes to.
            (Direction::ToClient, "MSG" | "HMSG") => to_client(&rules, words[1]),
            _ => (true, None),
        };
        if pass && to.write_all(&frame).await.is_err() {
            return;
        }
        if let Some(report) = report {
            let _ = seen.send(report);
        }
    }
}

/// Whether a publish passes, and what to report once it did (or not).
fn to_server(rules: &Mutex<Rules>, subject: &str, reply: Option<String>) -> (bool, Option<Seen>) {
    let mut r = rules.lock().unwrap();
    if r.lose_publishes_to
        .as_deref()
        .is_some_and(|p| subject.starts_with(p))
    {
        return (false, Some(Seen::PublishLost(subject.to_owned())));
    }
    if let Some(reply) = reply {
        if r.lose_ack_of.as_deref() == Some(subject) {
            r.lose_ack_of = None;
            r.lose.insert(reply.clone());
            r.subjects.insert(reply, subject.to_owned());
        } else if r
            .report_reply_of
            .as_deref()
            .is_some_and(|p| subject.starts_with(p))
        {
            r.report_reply_of = None;
            r.report.insert(reply.clone());
            r.subjects.insert(reply, subject.to_owned());
        }
    }
    (true, None)
}

/// Whether a message to the client passes, and what to report.
fn to_client(rules: &Mutex<Rules>, subject: &str) -> (bool, Option<Seen>) {
    let mut r = rules.lock().unwrap();
    if r.lose.remove(subject) {
        let about = r.subjects.remove(subject).unwrap_or_default();
        return (false, Some(Seen::AckLost(about)));
    }
    if r.report.remove(subject) {
        let about = r.subjects.remove(subject).unwrap_or_default();
        return (true, Some(Seen::Replied(about)));
    }
    (true, None)
}
