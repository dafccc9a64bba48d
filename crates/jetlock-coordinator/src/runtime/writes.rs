//! A coordinator write on the bucket, and the headers that say what it
//! applied (`engine/replay.rs`).

use super::*;

pub(super) async fn run_write(
    store: &LockStore,
    write: &Write,
    applied: Option<&str>,
) -> WriteResult {
    let write_id = WriteId {
        id: &write.id,
        resend: false,
    };
    let (name, expected) = (&write.name, write.expected);
    let result = match &write.kind {
        WriteKind::Put { record, ttl } => {
            store
                .put_applied(name, record, expected, *ttl, write_id, applied)
                .await
        }
        WriteKind::Release => {
            store
                .release_applied(name, expected, DEFAULT_MARKER_TTL, write_id, applied)
                .await
        }
    };
    match result {
        Ok(w) => WriteResult::Written {
            revision: w.revision,
        },
        Err(CasError::Conflict { .. }) => WriteResult::Conflict,
        Err(CasError::Transport(e)) => {
            debug!(lock = %write.name, error = %e, "coordinator write failed");
            WriteResult::Failed
        }
    }
}

/// The `Jetlock-Applied` value of a write: `<request stream epoch> <hold>
/// <ended> <grant>` (see `engine/replay.rs`); none when it applies no
/// request. Three fields (no grant) are read too.
pub(super) fn applied_header(epoch: u64, applied: Applied) -> Option<String> {
    (!applied.is_none()).then(|| {
        format!(
            "{epoch} {} {} {}",
            applied.hold, applied.ended, applied.grant
        )
    })
}

/// What a message's headers say about the coordinator write that stored it.
/// Sequences of another request stream (one deleted and created again
/// since) count as none: they do not order this stream's requests.
pub(super) fn stamp_of(headers: Option<&async_nats::HeaderMap>, epoch: u64) -> Stamp {
    let Some(headers) = headers else {
        return Stamp::default();
    };
    let applied = headers
        .get(store::APPLIED)
        .and_then(|v| {
            let parts: Option<Vec<u64>> = v.as_str().split(' ').map(|p| p.parse().ok()).collect();
            match parts?.as_slice() {
                [e, hold, ended] if *e == epoch => Some(Applied {
                    hold: *hold,
                    ended: *ended,
                    grant: 0,
                }),
                [e, hold, ended, grant] if *e == epoch => Some(Applied {
                    hold: *hold,
                    ended: *ended,
                    grant: *grant,
                }),
                _ => None,
            }
        })
        .unwrap_or_default();
    Stamp {
        write_id: headers.get(store::WRITE_ID).map(|v| v.as_str().to_owned()),
        applied,
    }
}
