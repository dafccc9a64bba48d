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
