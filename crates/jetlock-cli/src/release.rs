//! `jetlock release NAME --force --reason TEXT`: an operator takes a lock
//! away from its holder. It is a revocation through the coordinators
//! (`jetlock.req.revoke.<session>`): the holder gets a notice and
//! `--grace-ms` to finish (default 0), then loses the lock — its `lost()`
//! fires and its fenced writes are refused — and the lock goes to the next
//! waiter. The event stream records it (`lock.revoked`, with `by` and
//! `reason`). Exit 3 when the lock is not held, 5 when no coordinator
//! answers.

use super::{CliError, Connection, Exit};
use futures::StreamExt;
use jetlock::events::{lock_filter, Event, EventKind};
use jetlock::name::LockName;
use jetlock::protocol::{self, Answer, ErrorCode, Heartbeat, Op, RevokeBody, VERSION};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    conn: Connection,
    /// The lock's name.
    name: String,
    /// Required: releasing a lock you do not hold is a revocation.
    #[arg(long, required = true)]
    force: bool,
    /// Why (kept in the event stream; shown to the holder).
    #[arg(long, required = true)]
    reason: String,
    /// How long the holder has to finish before it is fenced off: `5s`
    /// (an integer is ms).
    #[arg(long, visible_alias = "grace-ms", default_value = "0", value_parser = super::duration_ms)]
    grace: u64,
    /// Print the `lock.revoked` event as JSON.
    #[arg(long)]
    json: bool,
}

/// How long a coordinator has to answer, beyond the grace.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub async fn run(args: ReleaseArgs) -> Result<(), CliError> {
    let name = LockName::new(&args.name)?;
    let nats = args.conn.nats().await?;
    let js = async_nats::jetstream::new(nats.clone());
    let session = format!("operator.{}", nuid::next());
    let mut answers = nats.subscribe(protocol::answer_subject(&session)).await?;
    let mut events = nats.subscribe(lock_filter(name.key())).await?;
    let id = protocol::new_request_id();
    let body = RevokeBody {
        v: VERSION,
        id: id.clone(),
        key: name.to_string(),
        grace_ms: args.grace,
        reason: Some(args.reason.clone()),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", protocol::message_id(&session, &id).as_str());
    js.publish_with_headers(
        protocol::request_subject(Op::Revoke, &session),
        headers,
        serde_json::to_vec(&body)?.into(),
    )
    .await?
    .await
    .map_err(|e| format!("the request stream did not store the revocation: {e}"))?;
    let result = revoke(&mut answers, &mut events, &id, &args).await;
    // The operator session ends here.
    let bye = Heartbeat {
        leaving: true,
        ..Heartbeat::default()
    };
    let _ = nats
        .publish(
            protocol::heartbeat_subject(&session),
            serde_json::to_vec(&bye)?.into(),
        )
        .await;
    let _ = nats.flush().await;
    let event = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&event)?);
    } else {
        println!(
            "revoked {}: token {} of session {} (owner {}); reason: {}",
            name,
            event.token.unwrap_or(0),
            event.session.as_deref().unwrap_or("?"),
            event.owner.as_deref().unwrap_or("?"),
            args.reason
        );
    }
    Ok(())
}

async fn revoke(
    answers: &mut async_nats::Subscriber,
    events: &mut async_nats::Subscriber,
    id: &str,
    args: &ReleaseArgs,
) -> Result<Event, CliError> {
    let within = ANSWER_WITHIN + Duration::from_millis(args.grace);
    let token = tokio::time::timeout(within, async {
        while let Some(msg) = answers.next().await {
            match serde_json::from_slice::<Answer>(&msg.payload) {
                Ok(Answer::Revoking { re, token, .. }) if re == id => return Ok(token),
                Ok(Answer::Error {
                    re: Some(re),
                    code,
                    message,
                    ..
                }) if re == id => {
                    return Err(match code {
                        ErrorCode::NotHolder => Exit::with(3, format!("{} is not held", args.name)),
                        _ => format!("refused ({}): {message}", code.as_str()).into(),
                    })
                }
                _ => {}
            }
        }
        Err("the answer subscription ended".into())
    })
    .await
    .map_err(|_| super::admin::no_coordinator())??;
    // The coordinator reports the end of the hold once the bucket shows it.
    let revoked = tokio::time::timeout(within, async {
        while let Some(msg) = events.next().await {
            if let Ok(e) = serde_json::from_slice::<Event>(&msg.payload) {
                if e.token == Some(token)
                    && matches!(
                        e.kind,
                        EventKind::Revoked | EventKind::Released | EventKind::Expired
                    )
                {
                    return Some(e);
                }
            }
        }
        None
    })
    .await;
    match revoked {
        Ok(Some(e)) => Ok(e),
        _ => Err(format!(
            "token {token} was told to give {} up, but its end was not reported within {within:?}",
            args.name
        )
        .into()),
    }
}
