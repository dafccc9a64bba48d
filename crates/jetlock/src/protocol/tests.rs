//! Requests and answers against the rules of the protocol.

use super::*;
use crate::name::LockName;

fn parse(op: Op, body: &str) -> Result<Request, WireError> {
    parse_request(op, "s1", body.as_bytes(), &Limits::default())
}

#[test]
fn acquire_defaults() {
    let r = parse(Op::Acquire, r#"{"v":1,"id":"r1","key":"acct:1"}"#).unwrap();
    assert_eq!(
        r,
        Request::Acquire {
            id: "r1".into(),
            name: LockName::new("acct:1").unwrap(),
            owner: "s1".into(),
            ttl_ms: 10_000,
            wait_ms: 0,
            preempt: false,
        }
    );
}

#[test]
fn preempting_needs_the_preempt_subject() {
    let body = r#"{"v":1,"id":"r1","key":"acct:1","wait_ms":9000,"preempt":true}"#;
    assert_eq!(
        parse(Op::Acquire, body).unwrap_err().code,
        ErrorCode::NotPermitted
    );
    assert!(matches!(
        parse(Op::Preempt, body).unwrap(),
        Request::Acquire { preempt: true, .. }
    ));
    let plain = r#"{"v":1,"id":"r1","key":"acct:1","wait_ms":9000}"#;
    assert!(matches!(
        parse(Op::Preempt, plain).unwrap(),
        Request::Acquire { preempt: true, .. }
    ));
    assert!(matches!(
        parse(Op::Acquire, plain).unwrap(),
        Request::Acquire { preempt: false, .. }
    ));
    let off = r#"{"v":1,"id":"r1","key":"acct:1","preempt":false}"#;
    assert!(matches!(
        parse(Op::Acquire, off).unwrap(),
        Request::Acquire { preempt: false, .. }
    ));
    assert_eq!(
        parse(Op::Preempt, off).unwrap_err().code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        parse_request_subject("jetlock.req.preempt.team.w1").unwrap(),
        (Op::Preempt, "team.w1")
    );
}

#[test]
fn message_ids_are_bound_to_the_subject_session() {
    assert!(check_message_id("team.a", Some("team.a:r1")).is_ok());
    assert!(check_message_id("team.a", None).is_ok());
    for bad in [
        "team.b:r1",
        "team.ab:r1",
        "team.a",
        "team.a:",
        "team:a:r1",
        "",
    ] {
        let e = check_message_id("team.a", Some(bad)).expect_err(bad);
        assert_eq!(e.code, ErrorCode::BadMessageId, "{bad}");
    }
}

/// Base-62 value of a nuid's 10 sequence characters.
fn nuid_sequence(id: &str) -> u64 {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    id.as_bytes()[12..].iter().fold(0, |n, c| {
        n * 62 + ALPHABET.iter().position(|a| a == c).expect("base 62") as u64
    })
}

/// Whether `next` is what a guesser expects after seeing `seen`: the same
/// prefix and a sequence at most a few hundred steps on.
fn guessable(seen: &str, next: &str) -> bool {
    seen[..12] == next[..12]
        && nuid_sequence(next)
            .checked_sub(nuid_sequence(seen))
            .is_some_and(|d| d < 333 * 100)
}

#[test]
fn request_ids_cannot_be_guessed_from_earlier_ids() {
    // What the stream's de-duplication made exploitable: one seen id
    // (a session id in an event) gives away the next ones.
    let seen = nuid::next().to_string();
    let next = nuid::next().to_string();
    assert!(guessable(&seen, &next), "{seen} {next}");
    for _ in 0..100 {
        let (seen, next) = (new_request_id(), new_request_id());
        assert_eq!(next.len(), 22);
        assert!(!guessable(&seen, &next), "{seen} then {next}");
        let session = nuid::next().to_string();
        assert!(!guessable(&session, &new_request_id()));
    }
}

#[test]
fn ttl_rounds_up_to_seconds() {
    let r = parse(
        Op::Acquire,
        r#"{"v":1,"id":"r1","key":"k","ttl_ms":1500,"wait_ms":5}"#,
    )
    .unwrap();
    assert!(matches!(r, Request::Acquire { ttl_ms: 2000, .. }));
}

#[test]
fn bad_bodies_get_stable_codes() {
    let cases: &[(Op, &str, ErrorCode)] = &[
        (Op::Acquire, "not json", ErrorCode::BadRequest),
        (Op::Acquire, "[1,2]", ErrorCode::BadRequest),
        (
            Op::Acquire,
            r#"{"id":"r","key":"k"}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":2,"id":"r","key":"k"}"#,
            ErrorCode::UnsupportedVersion,
        ),
        (
            Op::Acquire,
            r#"{"v":"1","id":"r","key":"k"}"#,
            ErrorCode::UnsupportedVersion,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":7,"key":"k"}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","ttl_ms":-1}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","extra":1}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":""}"#,
            ErrorCode::InvalidKey,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"a\u0000b"}"#,
            ErrorCode::InvalidKey,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"","key":"k"}"#,
            ErrorCode::InvalidId,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","owner":"a\nb"}"#,
            ErrorCode::InvalidId,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","ttl_ms":10}"#,
            ErrorCode::InvalidTtl,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","wait_ms":99999999999}"#,
            ErrorCode::InvalidWait,
        ),
        (
            Op::Release,
            r#"{"v":1,"id":"r","key":"k"}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Release,
            r#"{"v":1,"id":"r","key":"k","token":"5"}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Cancel,
            r#"{"v":1,"id":"r","key":"k"}"#,
            ErrorCode::BadRequest,
        ),
        // `null` is a wrong type, for optional fields too: it neither
        // picks the default nor passes as absent.
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","ttl_ms":null}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","owner":null}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Acquire,
            r#"{"v":1,"id":"r","key":"k","wait_ms":null}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Renew,
            r#"{"v":1,"id":"r","key":"k","token":1,"ttl_ms":null}"#,
            ErrorCode::BadRequest,
        ),
        (
            Op::Revoke,
            r#"{"v":1,"id":"r","key":"k","reason":null}"#,
            ErrorCode::BadRequest,
        ),
    ];
    for (op, body, code) in cases {
        let err = parse(*op, body).expect_err(body);
        assert_eq!(err.code, *code, "{body}: {err}");
    }
    let big = format!(r#"{{"v":1,"id":"r","key":"{}"}}"#, "k".repeat(5000));
    assert_eq!(
        parse(Op::Acquire, &big).unwrap_err().code,
        ErrorCode::TooLarge
    );
}

#[test]
fn request_subjects_parse_and_refuse_wildcards() {
    assert_eq!(
        parse_request_subject("jetlock.req.acquire.team.w1").unwrap(),
        (Op::Acquire, "team.w1")
    );
    for bad in [
        "jetlock.req.acquire",
        "jetlock.req.steal.s1",
        "jetlock.req.acquire.*",
        "jetlock.req.acquire.a.>",
        "jetlock.req.acquire.a..b",
        "jetlock.req.acquire.a.b.c.d.e",
        "other.req.acquire.s1",
        "jetlock.preq.acquire.s1",
        "jetlock.preq.x1.acquire.s1",
        "jetlock.preq.1234.acquire.s1",
        "jetlock.preq.*.acquire.s1",
        "jetlock.preq.3.acquire",
        "jetlock.preq.3.steal.s1",
    ] {
        assert!(parse_request_subject(bad).is_err(), "{bad}");
    }
}

#[test]
fn partitioned_request_subjects_name_their_partition() {
    let subject = partitioned_request_subject(7, Op::Release, "team.w1");
    assert_eq!(subject, "jetlock.preq.7.release.team.w1");
    assert_eq!(
        parse_request_subject(&subject).unwrap(),
        (Op::Release, "team.w1")
    );
    assert_eq!(subject_partition(&subject), Some(7));
    assert_eq!(subject_partition("jetlock.req.release.team.w1"), None);
    assert_eq!(partition_subjects(7), "jetlock.preq.7.>");
}

#[test]
fn partitioned_unstored_release_subjects_name_their_partition() {
    let subject = partitioned_unstored_release_subject(7, "team.w1");
    assert_eq!(subject, "jetlock.now.7.release.team.w1");
    assert_eq!(parse_unstored_release_subject(&subject).unwrap(), "team.w1");
    assert_eq!(subject_partition(&subject), Some(7));
    assert_eq!(subject_partition("jetlock.now.release.team.w1"), None);
    for bad in [
        "jetlock.now.7.renew.team.w1",
        "jetlock.now.x.release.team.w1",
        "jetlock.now.7.release.*",
        "jetlock.now.7.release",
    ] {
        assert!(parse_unstored_release_subject(bad).is_err(), "{bad}");
    }
}

#[test]
fn unstored_release_subjects_parse_and_refuse_wildcards() {
    let subject = unstored_release_subject("team.w1");
    assert_eq!(subject, "jetlock.now.release.team.w1");
    assert_eq!(parse_unstored_release_subject(&subject).unwrap(), "team.w1");
    for bad in [
        "jetlock.now.release",
        "jetlock.now.release.",
        "jetlock.now.renew.s1",
        "jetlock.now.release.*",
        "jetlock.now.release.a.>",
        "jetlock.now.release.a.b.c.d.e",
        "jetlock.req.release.s1",
    ] {
        assert!(parse_unstored_release_subject(bad).is_err(), "{bad}");
    }
}

#[test]
fn answers_round_trip_with_a_type_tag() {
    let a = Answer::Granted {
        v: 1,
        re: "r1".into(),
        key: "acct:1".into(),
        token: 42,
        ttl_ms: 10_000,
        holds: 1,
        waiters: 0,
    };
    let json = String::from_utf8(a.to_json()).unwrap();
    assert!(json.starts_with(r#"{"type":"granted""#), "{json}");
    assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), a);
    let future = r#"{"type":"error","v":1,"re":"r","code":"from_the_future","message":"m"}"#;
    assert!(matches!(
        serde_json::from_str::<Answer>(future).unwrap(),
        Answer::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    let e = Answer::error(None, None, WireError::new(ErrorCode::Busy, "held"));
    let json = String::from_utf8(e.to_json()).unwrap();
    assert!(json.contains(r#""code":"busy""#), "{json}");
}

#[test]
fn probe_finds_the_id_of_a_bad_request() {
    assert_eq!(probe_id(br#"{"v":9,"id":"r7"}"#).as_deref(), Some("r7"));
    assert_eq!(probe_id(br#"{"v":1,"id":5}"#), None);
    assert_eq!(probe_id(b"garbage"), None);
}

/// `ErrorCode::ALL` names each code once: the match below stops compiling
/// when a code is added, and its position must then be listed.
#[test]
fn every_error_code_is_listed_once() {
    fn position(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::UnknownOp => 2,
            ErrorCode::TooLarge => 3,
            ErrorCode::InvalidKey => 4,
            ErrorCode::InvalidSession => 5,
            ErrorCode::InvalidTtl => 6,
            ErrorCode::InvalidWait => 7,
            ErrorCode::InvalidId => 8,
            ErrorCode::Busy => 9,
            ErrorCode::Timeout => 10,
            ErrorCode::Cancelled => 11,
            ErrorCode::NotHolder => 12,
            ErrorCode::StaleToken => 13,
            ErrorCode::NotWaiting => 14,
            ErrorCode::SessionExpired => 15,
            ErrorCode::Duplicate => 16,
            ErrorCode::BadMessageId => 17,
            ErrorCode::NotPermitted => 18,
            ErrorCode::QueueFull => 19,
            ErrorCode::TooManyLocks => 20,
            ErrorCode::TooManyWaits => 21,
            ErrorCode::TooManySessions => 22,
            ErrorCode::Internal => 23,
        }
    }
    for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
        assert_eq!(position(code), i, "{code}");
        let wire: ErrorCode = serde_json::from_str(&format!("\"{code}\"")).unwrap();
        assert_eq!(wire, code);
    }
}
