//! The corpus's tables: one row per case, grouped as in
//! `docs/RELIABILITY.md`.

use jetlock::protocol::ErrorCode::{self, *};
use serde_json::json;
use Expect::*;

/// Who sends a row.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    /// A live session that holds nothing.
    Fresh,
    /// The session holding the group's lock (`$TOKEN`, `$OWNER`).
    Holder,
    /// Another live session.
    Other,
}

/// What a row must lead to.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// `error` with this code and `re` = the row's id; no write, no event.
    Refused(ErrorCode),
    /// `error` with this code and no `re` (the id is unreadable or invalid).
    Unnamed(ErrorCode),
    /// `Refused`, and the coordinator reports these lock events of the key.
    Reported(ErrorCode, &'static [&'static str]),
    /// The stream refuses the publish with this JetStream error code: no
    /// coordinator ever sees it, nobody is answered.
    NotStored(u64),
    /// A valid request: `granted` with the key's new revision as token, one
    /// write and one `lock.granted` event.
    Granted,
}

pub struct Row {
    pub name: &'static str,
    pub op: &'static str,
    pub who: Who,
    /// The lock name the body aims at; its key is what must not change.
    /// Variables as in `body`, and `$SESSION`: the sender's session.
    pub lock: String,
    /// The raw body. `$ID` is replaced by the row's request id; `$TOKEN`,
    /// `$PREV`, `$NEXT` and `$OWNER` by the holder's token, token − 1,
    /// token + 1 and owner.
    pub body: Vec<u8>,
    /// Headers besides `Nats-Msg-Id` (`<session>:<id>`), or in its place.
    pub headers: &'static [(&'static str, &'static str)],
    pub expect: Expect,
}

pub fn row(
    name: &'static str,
    op: &'static str,
    lock: &str,
    body: impl AsRef<[u8]>,
    expect: Expect,
) -> Row {
    Row {
        name,
        op,
        who: Who::Fresh,
        lock: lock.to_owned(),
        body: body.as_ref().to_vec(),
        headers: &[],
        expect,
    }
}

impl Row {
    pub fn by(self, who: Who) -> Row {
        Row { who, ..self }
    }

    pub fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Row {
        Row { headers, ..self }
    }
}

/// How long a row's request id (`$ID`) is.
pub const ID_LEN: usize = "case-0000".len();

/// A lease that outlives any test run, so no expiry marker lands in the
/// bucket while rows are judged.
pub const LONG: u64 = 600_000;

/// A valid acquire of `lock` with a long lease (the name JSON-escaped:
/// control characters arrive as `\n`, `\u0000`, …).
pub fn valid(lock: &str) -> String {
    json!({"v": 1, "id": "$ID", "key": lock, "ttl_ms": LONG}).to_string()
}

/// Malformed bodies from a fresh session, one rule broken per row.
#[rustfmt::skip] // one row per line
pub fn malformed_rows() -> Vec<Row> {
    let long_name = "n".repeat(256);
    let too_long_name = "n".repeat(257);
    let long_id = "i".repeat(257);
    let too_large = format!(r#"{{"v":1,"id":"$ID","key":"k","pad":"{}"}}"#, "x".repeat(4200));
    let mut exactly_4096 = valid("edge:4096").into_bytes();
    exactly_4096.resize(4096 - (ID_LEN - "$ID".len()), b' '); // 4 096 once filled
    let over_stream_limit = format!(r#"{{"v":1,"id":"$ID","key":"k","pad":"{}"}}"#, "x".repeat(5200));
    let nested = |depth| format!(r#"{{"v":1,"id":"$ID","key":"k","x":{}"#, "[".repeat(depth));
    vec![
        // JSON syntax: nothing readable, so no `re`.
        row("empty body", "acquire", "k", "", Unnamed(BadRequest)),
        row("lone brace", "acquire", "k", "{", Unnamed(BadRequest)),
        row("truncated object", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k""#, Unnamed(BadRequest)),
        row("truncated in a string", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k"#, Unnamed(BadRequest)),
        row("truncated after a colon", "acquire", "k", r#"{"v":1,"id":"$ID","key":"#, Unnamed(BadRequest)),
        row("not JSON", "acquire", "k", "acquire k please", Unnamed(BadRequest)),
        row("null", "acquire", "k", "null", Unnamed(BadRequest)),
        row("an array", "acquire", "k", r#"[1,"$ID","k"]"#, Unnamed(BadRequest)),
        row("a string", "acquire", "k", r#""{\"v\":1}""#, Unnamed(BadRequest)),
        row("trailing garbage", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k"} x"#, Unnamed(BadRequest)),
        row("two objects", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k"}{"v":1}"#, Unnamed(BadRequest)),
        row("trailing comma", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k",}"#, Unnamed(BadRequest)),
        row("single quotes", "acquire", "k", "{'v':1,'id':'$ID','key':'k'}", Unnamed(BadRequest)),
        row("byte order mark", "acquire", "k", b"\xef\xbb\xbf{\"v\":1,\"id\":\"$ID\",\"key\":\"k\"}", Unnamed(BadRequest)),
        row("comment", "acquire", "k", "// hi\n{\"v\":1,\"id\":\"$ID\",\"key\":\"k\"}", Unnamed(BadRequest)),
        // Invalid UTF-8.
        row("0xFF in the key", "acquire", "k", b"{\"v\":1,\"id\":\"$ID\",\"key\":\"\xff\"}", Refused(BadRequest)),
        row("overlong encoding in the key", "acquire", "k", b"{\"v\":1,\"id\":\"$ID\",\"key\":\"\xc0\xaf\"}", Refused(BadRequest)),
        row("truncated sequence in the id", "acquire", "k", b"{\"v\":1,\"id\":\"\xc3\",\"key\":\"k\"}", Unnamed(BadRequest)),
        row("lone surrogate escape in the key", "acquire", "k", r#"{"v":1,"id":"$ID","key":"\ud800"}"#, Refused(BadRequest)),
        row("0xFF between tokens", "acquire", "k", b"{\"v\":1,\xff\"id\":\"$ID\",\"key\":\"k\"}", Unnamed(BadRequest)),
        // Nesting and size.
        row("4 000 nested arrays", "acquire", "k", "[".repeat(4000), Unnamed(BadRequest)),
        row("3 000 nested arrays in a field", "acquire", "k", nested(3000), Unnamed(BadRequest)),
        row("10 000 nested arrays", "acquire", "k", "[".repeat(10_000), NotStored(10054)),
        row("body over 4 KiB", "acquire", "k", too_large, Refused(TooLarge)),
        row("body over the stream's max message size", "acquire", "k", over_stream_limit, NotStored(10054)),
        row("body of exactly 4 096 bytes", "acquire", "edge:4096", exactly_4096, Granted),
        // Duplicate keys.
        row("duplicate v", "acquire", "k", r#"{"v":1,"v":1,"id":"$ID","key":"k"}"#, Unnamed(BadRequest)),
        row("duplicate id", "acquire", "k", r#"{"v":1,"id":"$ID","id":"other","key":"k"}"#, Unnamed(BadRequest)),
        row("duplicate key", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","key":"dup:other"}"#, Refused(BadRequest)),
        row("duplicate ttl_ms", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":2000,"ttl_ms":3000}"#, Refused(BadRequest)),
        // Numbers of the wrong type.
        row("ttl_ms as a string", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":"10000"}"#, Refused(BadRequest)),
        row("ttl_ms as a float", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":10000.0}"#, Refused(BadRequest)),
        row("ttl_ms as 1e4", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":1e4}"#, Refused(BadRequest)),
        row("negative ttl_ms", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":-1000}"#, Refused(BadRequest)),
        row("ttl_ms above u64", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":18446744073709551616}"#, Refused(BadRequest)),
        row("wait_ms as a fraction", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":1.5}"#, Refused(BadRequest)),
        row("wait_ms as a boolean", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":true}"#, Refused(BadRequest)),
        row("preempt as a number", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","preempt":1}"#, Refused(BadRequest)),
        row("preempt on the acquire subject", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":1000,"preempt":true}"#, Refused(NotPermitted)),
        row("preempt false on the preempt subject", "preempt", "k", r#"{"v":1,"id":"$ID","key":"k","preempt":false}"#, Refused(BadRequest)),
        row("token as a string", "release", "k", r#"{"v":1,"id":"$ID","key":"k","token":"5"}"#, Refused(BadRequest)),
        row("negative token", "release", "k", r#"{"v":1,"id":"$ID","key":"k","token":-1}"#, Refused(BadRequest)),
        row("token as 1e3", "release", "k", r#"{"v":1,"id":"$ID","key":"k","token":1e3}"#, Refused(BadRequest)),
        row("token above u64", "renew", "k", r#"{"v":1,"id":"$ID","key":"k","token":18446744073709551616}"#, Refused(BadRequest)),
        row("negative grace_ms", "revoke", "k", r#"{"v":1,"id":"$ID","key":"k","grace_ms":-1}"#, Refused(BadRequest)),
        // Missing, null and unknown fields.
        row("missing id", "acquire", "k", r#"{"v":1,"key":"k"}"#, Unnamed(BadRequest)),
        row("missing key", "acquire", "k", r#"{"v":1,"id":"$ID"}"#, Refused(BadRequest)),
        row("missing token", "release", "k", r#"{"v":1,"id":"$ID","key":"k"}"#, Refused(BadRequest)),
        row("missing target", "cancel", "k", r#"{"v":1,"id":"$ID","key":"k"}"#, Refused(BadRequest)),
        row("null id", "acquire", "k", r#"{"v":1,"id":null,"key":"k"}"#, Unnamed(BadRequest)),
        row("numeric id", "acquire", "k", r#"{"v":1,"id":7,"key":"k"}"#, Unnamed(BadRequest)),
        row("null key", "acquire", "k", r#"{"v":1,"id":"$ID","key":null}"#, Refused(BadRequest)),
        row("null ttl_ms", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":null}"#, Refused(BadRequest)),
        row("null owner", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","owner":null}"#, Refused(BadRequest)),
        row("null wait_ms", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":null}"#, Refused(BadRequest)),
        row("null reason", "revoke", "k", r#"{"v":1,"id":"$ID","key":"k","reason":null}"#, Refused(BadRequest)),
        row("unknown field", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","admin":true}"#, Refused(BadRequest)),
        row("another op's field", "release", "k", r#"{"v":1,"id":"$ID","key":"k","token":1,"ttl_ms":1000}"#, Refused(BadRequest)),
        row("answer fields in a request", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","type":"granted","token":1}"#, Refused(BadRequest)),
        // Versions.
        row("missing v", "acquire", "k", r#"{"id":"$ID","key":"k"}"#, Refused(BadRequest)),
        row("null v", "acquire", "k", r#"{"v":null,"id":"$ID","key":"k"}"#, Refused(BadRequest)),
        row("v 2", "acquire", "k", r#"{"v":2,"id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        row("v \"1\"", "acquire", "k", r#"{"v":"1","id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        row("v 0", "release", "k", r#"{"v":0,"id":"$ID","key":"k","token":1}"#, Refused(UnsupportedVersion)),
        row("v 1.0", "acquire", "k", r#"{"v":1.0,"id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        row("v -1", "acquire", "k", r#"{"v":-1,"id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        row("v [1]", "acquire", "k", r#"{"v":[1],"id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        row("v 2^64 + 1", "acquire", "k", r#"{"v":18446744073709551617,"id":"$ID","key":"k"}"#, Refused(UnsupportedVersion)),
        // Lock names: subject syntax is data (escaped in the key); control
        // characters and bad lengths are refused.
        row("name *", "acquire", "*", valid("*"), Granted),
        row("name >", "acquire", ">", valid(">"), Granted),
        row("name with dots", "acquire", "a.b.c", valid("a.b.c"), Granted),
        row("name with a space", "acquire", "a b", valid("a b"), Granted),
        row("name with wildcards and dots", "acquire", "acct.*.>", valid("acct.*.>"), Granted),
        row("name that looks escaped", "acquire", "=2A", valid("=2A"), Granted),
        row("name of empty segments", "acquire", "::", valid("::"), Granted),
        row("name of 256 bytes", "acquire", &long_name, valid(&long_name), Granted),
        row("name of 257 bytes", "acquire", &too_long_name, valid(&too_long_name), Refused(InvalidKey)),
        row("empty name", "acquire", "", valid(""), Refused(InvalidKey)),
        row("name with CR LF", "acquire", "a\r\nb", valid("a\r\nb"), Refused(InvalidKey)),
        row("name with LF", "release", "a\nb", r#"{"v":1,"id":"$ID","key":"a\nb","token":1}"#, Refused(InvalidKey)),
        row("name with NUL", "acquire", "a\0b", valid("a\0b"), Refused(InvalidKey)),
        row("name with TAB", "renew", "a\tb", r#"{"v":1,"id":"$ID","key":"a\tb","token":1}"#, Refused(InvalidKey)),
        row("name with DEL", "acquire", "a\u{7f}", valid("a\u{7f}"), Refused(InvalidKey)),
        row("name with a C1 control", "acquire", "a\u{85}", valid("a\u{85}"), Refused(InvalidKey)),
        // The parts of read/write locks and semaphores: reserved names
        // after `:~rw:` and `:~sem:`; a session takes its own reader key.
        row("a read/write lock's gate", "acquire", "pay:~rw:write", valid("pay:~rw:write"), Granted),
        row("a session's own reader key", "acquire", "pay:~rw:read:$SESSION", valid("pay:~rw:read:$SESSION"), Granted),
        row("a semaphore's last permit", "acquire", "pay:~sem:permit:1023", valid("pay:~sem:permit:1023"), Granted),
        row("a semaphore's queue", "acquire", "pay:~sem:queue", valid("pay:~sem:queue"), Granted),
        row("a permit index of 1024", "acquire", "pay:~sem:permit:1024", valid("pay:~sem:permit:1024"), Refused(InvalidKey)),
        row("a permit index with a leading zero", "acquire", "pay:~sem:permit:01", valid("pay:~sem:permit:01"), Refused(InvalidKey)),
        row("a permit index that is no number", "acquire", "pay:~sem:permit:x", valid("pay:~sem:permit:x"), Refused(InvalidKey)),
        row("a semaphore part that is neither", "acquire", "pay:~sem:gate", valid("pay:~sem:gate"), Refused(InvalidKey)),
        row("a read/write part that is neither", "acquire", "pay:~rw:reader", valid("pay:~rw:reader"), Refused(InvalidKey)),
        row("a reader key without its session", "preempt", "pay:~rw:read:", valid("pay:~rw:read:"), Refused(InvalidKey)),
        row("raw NUL byte in the name", "acquire", "a\0b", b"{\"v\":1,\"id\":\"$ID\",\"key\":\"a\x00b\"}", Unnamed(BadRequest)),
        row("raw LF in the name", "acquire", "a\nb", "{\"v\":1,\"id\":\"$ID\",\"key\":\"a\nb\"}", Unnamed(BadRequest)),
        // Leases and waits.
        row("ttl_ms 0", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":0}"#, Refused(InvalidTtl)),
        row("ttl_ms 999", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":999}"#, Refused(InvalidTtl)),
        row("ttl_ms above 24 h", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":86400001}"#, Refused(InvalidTtl)),
        row("ttl_ms u64::MAX", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","ttl_ms":18446744073709551615}"#, Refused(InvalidTtl)),
        row("renew with ttl_ms 0", "renew", "k", r#"{"v":1,"id":"$ID","key":"k","token":1,"ttl_ms":0}"#, Refused(InvalidTtl)),
        row("ttl_ms 24 h and wait_ms 15 min", "acquire", "edge:limits", r#"{"v":1,"id":"$ID","key":"edge:limits","ttl_ms":86400000,"wait_ms":900000}"#, Granted),
        row("wait_ms above 15 min", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":900001}"#, Refused(InvalidWait)),
        row("wait_ms u64::MAX", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","wait_ms":18446744073709551615}"#, Refused(InvalidWait)),
        // Request ids, owners, targets, reasons.
        row("empty id", "acquire", "k", r#"{"v":1,"id":"","key":"k"}"#, Unnamed(InvalidId)),
        row("id of 257 bytes", "acquire", "k", format!(r#"{{"v":1,"id":"{long_id}","key":"k"}}"#), Unnamed(InvalidId)),
        row("id with LF", "acquire", "k", r#"{"v":1,"id":"a\nb","key":"k"}"#, Unnamed(InvalidId)),
        row("empty owner", "acquire", "k", r#"{"v":1,"id":"$ID","key":"k","owner":""}"#, Refused(InvalidId)),
        row("owner of 257 bytes", "acquire", "k", format!(r#"{{"v":1,"id":"$ID","key":"k","owner":"{long_id}"}}"#), Refused(InvalidId)),
        row("empty cancel target", "cancel", "k", r#"{"v":1,"id":"$ID","key":"k","target":""}"#, Refused(InvalidId)),
        row("revoke reason with CR", "revoke", "k", r#"{"v":1,"id":"$ID","key":"k","reason":"a\rb"}"#, Refused(InvalidId)),
    ]
}

/// Forged, stale and misdirected requests around a held lock `held`
/// (`$TOKEN`), with a waiter `w1` queued behind it.
#[rustfmt::skip] // one row per line
pub fn holder_rows() -> Vec<Row> {
    let release = |token: &str| format!(r#"{{"v":1,"id":"$ID","key":"held","token":{token}}}"#);
    let renew = |token: &str| format!(r#"{{"v":1,"id":"$ID","key":"held","token":{token},"ttl_ms":{LONG}}}"#);
    const RENEW_FAILED: &[&str] = &["lock.renew_failed"];
    vec![
        row("release with the holder's token by another session", "release", "held", release("$TOKEN"), Refused(NotHolder)).by(Who::Other),
        row("renew with the holder's token by another session", "renew", "held", renew("$TOKEN"), Reported(NotHolder, RENEW_FAILED)).by(Who::Other),
        row("release with a stale token", "release", "held", release("$PREV"), Refused(StaleToken)).by(Who::Holder),
        row("release with a future token", "release", "held", release("$NEXT"), Refused(StaleToken)).by(Who::Holder),
        row("release with token 0", "release", "held", release("0"), Refused(StaleToken)).by(Who::Holder),
        row("release with token u64::MAX", "release", "held", release("18446744073709551615"), Refused(StaleToken)).by(Who::Holder),
        row("renew with a stale token", "renew", "held", renew("$PREV"), Reported(StaleToken, RENEW_FAILED)).by(Who::Holder),
        row("renew with a future token", "renew", "held", renew("$NEXT"), Reported(StaleToken, RENEW_FAILED)).by(Who::Holder),
        row("try-lock with the holder's owner id", "acquire", "held", r#"{"v":1,"id":"$ID","key":"held","owner":"$OWNER"}"#, Refused(Busy)).by(Who::Other),
        row("try-lock on a held lock", "acquire", "held", r#"{"v":1,"id":"$ID","key":"held"}"#, Refused(Busy)).by(Who::Other),
        row("wait above the maximum on a held lock", "acquire", "held", r#"{"v":1,"id":"$ID","key":"held","wait_ms":900001}"#, Refused(InvalidWait)).by(Who::Other),
        row("release of another name with the same token", "release", "Held", r#"{"v":1,"id":"$ID","key":"Held","token":$TOKEN}"#, Refused(NotHolder)).by(Who::Holder),
        row("another session's reader key", "acquire", "held:~rw:read:$OWNER", r#"{"v":1,"id":"$ID","key":"held:~rw:read:$OWNER"}"#, Refused(NotPermitted)).by(Who::Other),
        row("another session's reader key, waiting", "acquire", "held:~rw:read:$OWNER", r#"{"v":1,"id":"$ID","key":"held:~rw:read:$OWNER","wait_ms":1000}"#, Refused(NotPermitted)).by(Who::Other),
        row("cancel of an unknown request", "cancel", "held", r#"{"v":1,"id":"$ID","key":"held","target":"nope"}"#, Refused(NotWaiting)).by(Who::Other),
        row("cancel of another session's waiting acquire", "cancel", "held", r#"{"v":1,"id":"$ID","key":"held","target":"w1"}"#, Refused(NotWaiting)).by(Who::Other),
        row("cancel of a granted acquire", "cancel", "held", r#"{"v":1,"id":"$ID","key":"held","target":"h1"}"#, Refused(NotWaiting)).by(Who::Holder),
        row("cancel of the waiter's id on another lock", "cancel", "free", r#"{"v":1,"id":"$ID","key":"free","target":"w1"}"#, Refused(NotWaiting)).by(Who::Other),
        row("revoke of an unheld lock", "revoke", "free", r#"{"v":1,"id":"$ID","key":"free","grace_ms":0}"#, Refused(NotHolder)).by(Who::Other),
        row("release of an unheld lock", "release", "free", r#"{"v":1,"id":"$ID","key":"free","token":1}"#, Refused(NotHolder)),
        row("renew of an unheld lock", "renew", "free", r#"{"v":1,"id":"$ID","key":"free","token":1}"#, Reported(NotHolder, RENEW_FAILED)),
    ]
}

/// JetStream headers a client sets on a request about `guarded`, held by
/// `$TOKEN`'s holder: the request stream refuses what it does not allow,
/// and nothing a request carries reaches the locks bucket.
#[rustfmt::skip] // one row per line
pub fn header_rows() -> Vec<Row> {
    let try_lock = r#"{"v":1,"id":"$ID","key":"guarded"}"#;
    let release = r#"{"v":1,"id":"$ID","key":"guarded","token":$TOKEN}"#;
    let renew = r#"{"v":1,"id":"$ID","key":"guarded","token":$TOKEN,"ttl_ms":1000}"#;
    let other = |name, op, body, expect| row(name, op, "guarded", body, expect).by(Who::Other);
    vec![
        other("Nats-Rollup: all", "acquire", try_lock, NotStored(10111)).headers(&[("Nats-Rollup", "all")]),
        other("Nats-Rollup: sub", "acquire", try_lock, NotStored(10111)).headers(&[("Nats-Rollup", "sub")]),
        other("Nats-Expected-Last-Subject-Sequence", "acquire", try_lock, NotStored(10071)).headers(&[("Nats-Expected-Last-Subject-Sequence", "999999999")]),
        other("Nats-Expected-Last-Sequence", "acquire", try_lock, NotStored(10071)).headers(&[("Nats-Expected-Last-Sequence", "999999999")]),
        other("Nats-Expected-Stream of the bucket", "acquire", try_lock, NotStored(10060)).headers(&[("Nats-Expected-Stream", "KV_JETLOCK_LOCKS")]),
        other("Nats-Expected-Last-Msg-Id", "acquire", try_lock, NotStored(10070)).headers(&[("Nats-Expected-Last-Msg-Id", "someone-else")]),
        other("atomic batch", "acquire", try_lock, NotStored(10174)).headers(&[("Nats-Batch-Id", "b1"), ("Nats-Batch-Sequence", "1"), ("Nats-Batch-Commit", "1")]),
        other("counter increment", "acquire", try_lock, NotStored(10168)).headers(&[("Nats-Incr", "+1")]),
        other("schedule aimed at the bucket", "acquire", try_lock, NotStored(10188)).headers(&[("Nats-Schedule", "@every 1s"), ("Nats-Schedule-Target", "$KV.JETLOCK_LOCKS.guarded")]),
        other("Nats-Msg-Id of another session", "acquire", try_lock, Refused(BadMessageId)).headers(&[("Nats-Msg-Id", "json.victim:r1")]),
        other("Nats-Msg-Id without the session", "acquire", try_lock, Refused(BadMessageId)).headers(&[("Nats-Msg-Id", "r1")]),
        other("Nats-TTL on a try-lock", "acquire", try_lock, Refused(Busy)).headers(&[("Nats-TTL", "1s")]),
        other("KV-Operation: PURGE on a try-lock", "acquire", try_lock, Refused(Busy)).headers(&[("KV-Operation", "PURGE")]),
        other("expiry marker headers on a foreign release", "release", release, Refused(NotHolder)).headers(&[("Nats-Marker-Reason", "MaxAge"), ("KV-Operation", "DEL")]),
        other("write-id and TTL headers on a foreign renew", "renew", renew, Reported(NotHolder, &["lock.renew_failed"])).headers(&[("Jetlock-Write-Id", "c-1.1"), ("Nats-TTL", "1s")]),
    ]
}

/// Request subjects the stream stores (it captures `jetlock.req.>`) but
/// that name no session that may safely be answered: dropped and counted.
#[rustfmt::skip] // one row per line
pub fn dropped_subjects() -> Vec<(&'static str, String)> {
    vec![
        ("unknown op", "jetlock.req.steal.s1".into()),
        ("op in upper case", "jetlock.req.ACQUIRE.s1".into()),
        ("no session", "jetlock.req.acquire".into()),
        ("session *", "jetlock.req.acquire.*".into()),
        ("session >", "jetlock.req.acquire.>".into()),
        ("wildcard token in the session", "jetlock.req.acquire.team.*".into()),
        ("five-token session", "jetlock.req.acquire.a.b.c.d.e".into()),
        ("session of 129 bytes", format!("jetlock.req.acquire.{}", "s".repeat(129))),
        ("non-ASCII session", "jetlock.req.acquire.ü".into()),
        ("session with =", "jetlock.req.acquire.a=b".into()),
    ]
}

/// Request subjects a client that checks nothing may write, which never
/// reach the stream: the server closes the connection over a space or tab
/// (the line has one argument too many: `false`), or accepts the line but
/// routes nothing to a subject with an empty token (`true`, PONG).
#[rustfmt::skip] // one row per line
pub fn unroutable_subjects() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("space in the session", "jetlock.req.acquire.a b", false),
        ("tab in the session", "jetlock.req.acquire.a\tb", false),
        ("empty token", "jetlock.req.acquire..a", true),
        ("trailing dot", "jetlock.req.acquire.a.", true),
    ]
}
