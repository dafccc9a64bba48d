//! Every parser that reads bytes off the network, fed arbitrary bytes and
//! arbitrary JSON: nothing panics, and whatever `parse_request` accepts is
//! within the documented limits. The integration corpus
//! (`crates/jetlock-coordinator/tests/bad_input/`) sends chosen cases through a real coordinator;
//! these look for the cases nobody thought of.

use super::*;
use crate::events::Event;
use crate::name::LockName;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const OPS: [Op; 6] = [
    Op::Acquire,
    Op::Release,
    Op::Renew,
    Op::Cancel,
    Op::Revoke,
    Op::Preempt,
];

/// Every request field, and a few that are not.
const FIELDS: [&str; 14] = [
    "v", "id", "key", "owner", "ttl_ms", "wait_ms", "preempt", "token", "target", "grace_ms",
    "reason", "type", "admin", "",
];

/// Numbers around every limit, of every JSON number type.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(vec![
            0u64,
            1,
            2,
            999,
            1000,
            1001,
            1500,
            60_000,
            60_001,
            900_000,
            900_001,
            86_400_000,
            86_400_001,
            u64::MAX,
        ])
        .prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => prop::sample::select(vec![1.0f64, 1e3, 1.5, -0.0, -1.0, 1.8446744073709552e19])
            .prop_map(Value::from),
    ]
}

/// Strings around every rule: empty, control characters, subject syntax,
/// 256 and 257 bytes, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "k", "acct:1", "*", ">", "a.b", "a b", "::", "ü", "a\nb", "a\r\nb", "\0", "\t",
            "\u{7f}", "\u{85}", "\u{2028}", "=2A",
        ])
        .prop_map(str::to_owned),
        Just("k".repeat(256)),
        Just("k".repeat(257)),
        Just("ü".repeat(128)),
        ".{0,12}",
        "[a-z:.*> ]{1,12}",
    ]
}

/// Any JSON value, nested a little.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

/// A request-shaped object for `op`: mostly right, each field present or
/// not and of its type or not, so that many are accepted and the rest fail
/// one rule at a time.
fn request_body(op: Op) -> impl Strategy<Value = Value> {
    let maybe = |p: f64, typed: BoxedStrategy<Value>| {
        prop::option::weighted(p, prop_oneof![8 => typed, 1 => value()]).boxed()
    };
    let number = || number().boxed();
    let string = || {
        prop_oneof![3 => "[a-z0-9:]{1,12}", 1 => text()]
            .prop_map(Value::String)
            .boxed()
    };
    let mut fields = vec![
        ("v", maybe(0.97, Just(json!(1)).boxed())),
        ("id", maybe(0.97, string())),
        ("key", maybe(0.97, string())),
    ];
    fields.extend(match op {
        Op::Acquire | Op::Preempt => vec![
            ("owner", maybe(0.5, string())),
            ("ttl_ms", maybe(0.5, number())),
            ("wait_ms", maybe(0.5, number())),
            (
                "preempt",
                maybe(0.5, any::<bool>().prop_map(Value::Bool).boxed()),
            ),
        ],
        Op::Release => vec![("token", maybe(0.97, number()))],
        Op::Renew => vec![
            ("token", maybe(0.97, number())),
            ("ttl_ms", maybe(0.5, number())),
        ],
        Op::Cancel => vec![("target", maybe(0.97, string()))],
        Op::Revoke => vec![
            ("grace_ms", maybe(0.5, number())),
            ("reason", maybe(0.5, string())),
        ],
    });
    let (names, strategies): (Vec<&str>, Vec<_>) = fields.into_iter().unzip();
    let extra = prop::option::weighted(0.05, (prop::sample::select(FIELDS.to_vec()), value()));
    (strategies, extra).prop_map(move |(values, extra)| {
        let mut body: Map<String, Value> = names
            .iter()
            .zip(values)
            .filter_map(|(name, v)| Some(((*name).to_owned(), v?)))
            .collect();
        if let Some((name, v)) = extra {
            body.insert(name.to_owned(), v);
        }
        Value::Object(body)
    })
}

/// An op and a body shaped for it.
fn op_and_body() -> impl Strategy<Value = (Op, Value)> {
    prop::sample::select(OPS.to_vec()).prop_flat_map(|op| (Just(op), request_body(op)))
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

/// What every accepted request must satisfy ("Requests" in
/// `docs/PROTOCOL.md`).
fn assert_within_limits(op: Op, request: &Request, limits: &Limits) {
    assert!(valid_id(request.id()), "id {:?}", request.id());
    let name = request.name().as_str();
    assert!(!name.is_empty() && name.len() <= crate::name::MAX_NAME_BYTES);
    assert!(!name.chars().any(char::is_control), "name {name:?}");
    assert_eq!(LockName::new(name).as_ref(), Ok(request.name()));
    let lease = |ttl_ms: u64| {
        assert!((limits.min_ttl_ms..=limits.max_ttl_ms).contains(&ttl_ms));
        assert_eq!(ttl_ms % 1000, 0, "leases are whole seconds");
    };
    match (op, request) {
        (
            Op::Acquire | Op::Preempt,
            Request::Acquire {
                owner,
                ttl_ms,
                wait_ms,
                preempt,
                ..
            },
        ) => {
            assert_eq!(*preempt, op == Op::Preempt, "only the preempt op preempts");
            assert!(valid_id(owner), "owner {owner:?}");
            lease(*ttl_ms);
            assert!(*wait_ms <= limits.max_wait_ms);
        }
        (Op::Release, Request::Release { .. }) => {}
        (Op::Renew, Request::Renew { ttl_ms, .. }) => lease(*ttl_ms),
        (Op::Cancel, Request::Cancel { target, .. }) => assert!(valid_id(target)),
        (
            Op::Revoke,
            Request::Revoke {
                grace_ms, reason, ..
            },
        ) => {
            assert!(*grace_ms <= limits.max_grace_ms);
            assert!(valid_id(reason), "reason {reason:?}");
        }
        (op, request) => panic!("{op:?} parsed as {request:?}"),
    }
}

/// Parses `body` as every op; each accepted request is checked, each
/// refusal must carry a code a coordinator sends.
fn parse_as_every_op(body: &[u8]) {
    let limits = Limits::default();
    for op in OPS {
        match parse_request(op, "s1", body, &limits) {
            Ok(request) => assert_within_limits(op, &request, &limits),
            Err(e) => assert!(
                !matches!(
                    e.code,
                    ErrorCode::UnknownOp | ErrorCode::InvalidSession | ErrorCode::Internal
                ),
                "{e}"
            ),
        }
    }
    if let Some(id) = probe_id(body) {
        assert!(valid_id(&id));
    }
}

/// The other parsers of network input: none may panic. (The admin
/// endpoints' body is the coordinator crate's: its own proptest.)
fn parse_everything_else(body: &[u8]) {
    if let Ok(event) = serde_json::from_slice::<Event>(body) {
        assert!(event.subject().starts_with("jetlock.ev."));
    }
    let _ = serde_json::from_slice::<Heartbeat>(body);
    let _ = serde_json::from_slice::<CoordinatorBeat>(body);
    let _ = serde_json::from_slice::<DisconnectAdvisory>(body);
    let _ = serde_json::from_slice::<Answer>(body);
}

proptest! {
    // A limit is broken only by one value among many fields: more cases.
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn accepted_requests_are_within_the_limits((_op, body) in op_and_body()) {
        parse_as_every_op(&serde_json::to_vec(&body).expect("values serialize"));
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        parse_as_every_op(&bytes);
        parse_everything_else(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in value()) {
        let bytes = serde_json::to_vec(&v).expect("values serialize");
        parse_as_every_op(&bytes);
        parse_everything_else(&bytes);
    }


    /// Truncated, spliced and bit-flipped versions of request bodies.
    #[test]
    fn damaged_requests_never_panic(
        (_op, body) in op_and_body(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let bytes = serde_json::to_vec(&body).expect("values serialize");
        let truncated = &bytes[..cut.index(bytes.len() + 1)];
        parse_as_every_op(truncated);
        let mut flipped = bytes.clone();
        if !flipped.is_empty() {
            let i = flip.0.index(flipped.len());
            flipped[i] ^= flip.1;
        }
        parse_as_every_op(&flipped);
        parse_everything_else(&flipped);
    }

    #[test]
    fn events_and_admin_bodies_of_any_shape_never_panic(
        fields in prop::collection::btree_map(
            prop::sample::select(vec![
                "v", "kind", "at_ms", "coordinator", "lock", "key", "session", "token",
                "value", "keys", "coordinators", "prefix", "timeout_ms", "leaving", "conn",
            ]),
            value(),
            0..6,
        ),
        kind in prop::sample::select(crate::events::EventKind::ALL.to_vec()),
    ) {
        let mut body: Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        parse_everything_else(&serde_json::to_vec(&body).expect("values serialize"));
        body.insert("v".into(), json!(1));
        body.insert("kind".into(), json!(kind));
        parse_everything_else(&serde_json::to_vec(&body).expect("values serialize"));
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // Under the body limit, serde_json's recursion limit refuses it; over
    // it, the size check does before any parsing.
    for depth in [129, 4000, 10_000] {
        for open in ["[", "{\"a\":"] {
            let body = open.repeat(depth);
            parse_as_every_op(body.as_bytes());
            parse_everything_else(body.as_bytes());
            let nested = format!(r#"{{"v":1,"id":"r","key":"k","x":{body}"#);
            let code = parse_request(Op::Acquire, "s1", nested.as_bytes(), &Limits::default())
                .expect_err("refused")
                .code;
            let want = if nested.len() > MAX_REQUEST_BYTES {
                ErrorCode::TooLarge
            } else {
                ErrorCode::BadRequest
            };
            assert_eq!(code, want, "depth {depth}");
        }
    }
}

#[test]
fn the_request_strategy_gets_requests_accepted_and_refused() {
    // Without accepted requests `accepted_requests_are_within_the_limits`
    // would check nothing.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for op in OPS {
        let strategy = request_body(op);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..300 {
            let body = strategy.new_tree(&mut runner).expect("a body").current();
            let bytes = serde_json::to_vec(&body).expect("values serialize");
            match parse_request(op, "s1", &bytes, &Limits::default()) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(
            accepted >= 30 && refused >= 30,
            "{op:?}: {accepted} accepted, {refused} refused"
        );
    }
}
