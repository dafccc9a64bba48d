//! What the operator views share: asking a coordinator (`jetlock.admin.*`)
//! and reading times from the command line.

use super::{CliError, Exit};
use serde::de::DeserializeOwned;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a view waits for a coordinator's answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks any coordinator `subject` with `body`; exit code 5 when none
/// answers.
pub async fn ask<T: DeserializeOwned>(
    nats: &async_nats::Client,
    subject: &'static str,
    body: Vec<u8>,
) -> Result<T, CliError> {
    let request = nats.request(subject, body.into());
    let msg = match tokio::time::timeout(ADMIN_TIMEOUT, request).await {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(no_coordinator());
        }
        Ok(Err(e)) => return Err(format!("{subject}: {e}").into()),
        Err(_) => return Err(no_coordinator()),
    };
    if let Some(status) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
    {
        return Err(format!("the coordinator refused the request: {status}").into());
    }
    serde_json::from_slice(&msg.payload)
        .map_err(|e| format!("unreadable answer on {subject}: {e}").into())
}

/// How long [`ask_every`] waits for one more answer after the last.
const QUIET: Duration = Duration::from_millis(300);

/// Asks every coordinator `subject` (an endpoint each answers, see
/// `jetlock_coordinator::admin::SETTINGS`): the answers that came until
/// none came for a while. Empty when no coordinator answered.
pub async fn ask_every<T: DeserializeOwned>(
    nats: &async_nats::Client,
    subject: &'static str,
) -> Result<Vec<T>, CliError> {
    use futures::StreamExt;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await?;
    nats.publish_with_reply(subject, inbox, Vec::new().into())
        .await?;
    nats.flush().await?;
    let mut answers = Vec::new();
    let mut wait = ADMIN_TIMEOUT;
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        // The server's own "no responders" status: nobody serves it.
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            break;
        }
        let answer = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("unreadable answer on {subject}: {e}"))?;
        answers.push(answer);
        wait = QUIET;
    }
    Ok(answers)
}

pub fn no_coordinator() -> CliError {
    Exit::with(5, "no coordinator answered (is `jetlock serve` running?)")
}

/// A point in time from the command line: RFC 3339 (`2026-11-25T14:03:00Z`)
/// or a duration ago (`10m`, `2h 30m`). Returns Unix ms.
pub fn parse_time(text: &str) -> Result<u64, CliError> {
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(ms(t));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(ms(SystemTime::now()).saturating_sub(ago.as_millis() as u64)),
        Err(_) => Err(Exit::with(
            2,
            format!("{text:?} is neither a time (2026-11-25T14:03:00Z) nor a duration ago (10m)"),
        )),
    }
}
