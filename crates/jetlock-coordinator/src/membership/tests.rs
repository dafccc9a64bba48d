//! The ring's ownership and the sessions' timeouts, closes and stalls.

use super::*;

fn ring(ids: &[&str]) -> Ring {
    let now = Instant::now();
    let mut r = Ring::new(ids[0].to_owned(), Duration::from_secs(1));
    for id in &ids[1..] {
        r.beat(id, None, now);
    }
    r
}

#[test]
fn every_coordinator_agrees_on_owners() {
    let a = ring(&["a", "b", "c"]);
    let b = ring(&["b", "c", "a"]);
    for k in 0..1000 {
        let key = format!("acct.{k}");
        assert_eq!(a.owner(&key), b.owner(&key));
    }
}

#[test]
fn adding_a_coordinator_moves_about_a_third_of_three() {
    let two = ring(&["a", "b"]);
    let three = ring(&["a", "b", "c"]);
    let n = 30_000;
    let mut moved = 0;
    for k in 0..n {
        let key = format!("acct.{k}");
        let before = two.owner(&key);
        let after = three.owner(&key);
        if before != after {
            assert_eq!(after, "c", "a key only moves to the newcomer");
            moved += 1;
        }
    }
    let share = moved as f64 / n as f64;
    assert!((0.30..0.37).contains(&share), "moved {share}");
}

#[test]
fn silent_coordinators_and_sessions_expire() {
    let t0 = Instant::now();
    let mut r = Ring::new("me".into(), Duration::from_secs(1));
    assert!(r.beat("b", None, t0));
    assert!(r.expire(t0 + Duration::from_millis(500)).is_empty());
    assert_eq!(r.expire(t0 + Duration::from_secs(2)), vec!["b".to_owned()]);
    assert_eq!(r.len(), 1);

    let mut s = sessions();
    assert_eq!(s.heartbeat("s1", Some(1000), None, t0), Touch::Joined);
    assert_eq!(s.heartbeat("s2", Some(10), None, t0), Touch::Joined);
    // s2 asked for 10 ms: clamped to the 300 ms minimum.
    assert!(s.overdue(t0 + ms(200)).is_empty());
    assert_eq!(names(s.overdue(t0 + ms(400))), ["s2"]);
    s.kill("s2", t0 + ms(400));
    assert_eq!(s.heartbeat("s2", None, None, t0), Touch::Dead);
    assert_eq!(names(s.overdue(t0 + ms(1100))), ["s1"]);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sessions() -> Sessions {
    Sessions::new(ms(1000), ms(300), Duration::from_secs(60))
}

fn names(overdue: Vec<Overdue>) -> Vec<String> {
    let mut v: Vec<String> = overdue.into_iter().map(|o| o.session).collect();
    v.sort();
    v
}

fn conn(cid: u64) -> Option<ConnId> {
    Some(ConnId {
        server_id: "S".into(),
        cid,
    })
}

#[test]
fn a_request_never_sets_or_shortens_a_timeout() {
    let t0 = Instant::now();
    let mut s = sessions();
    // First seen through a request (a coordinator replaying the
    // request stream): the longest allowed, not the default.
    assert_eq!(s.request("r", t0), Touch::Joined);
    assert_eq!(s.timeout_of("r"), Duration::from_secs(60));
    assert!(s.overdue(t0 + ms(5000)).is_empty());
    // Its heartbeat names its timeout; a later request keeps it.
    s.heartbeat("r", Some(40_000), None, t0);
    s.request("r", t0 + ms(10));
    assert_eq!(s.timeout_of("r"), ms(40_000));
    // A heartbeat that names none keeps the last one named.
    s.heartbeat("r", None, None, t0 + ms(20));
    assert_eq!(s.timeout_of("r"), ms(40_000));
    // One first heard without a timeout also gets the longest.
    s.heartbeat("q", None, None, t0);
    assert_eq!(s.timeout_of("q"), Duration::from_secs(60));
}

#[test]
fn a_closed_connection_is_overdue_after_the_grace_unless_it_reconnects() {
    let t0 = Instant::now();
    let mut s = sessions();
    s.set_reconnect_grace(ms(100));
    s.heartbeat("gone", Some(1000), conn(1), t0);
    s.heartbeat("back", Some(1000), conn(2), t0);
    s.heartbeat("old", Some(1000), None, t0);
    assert_eq!(
        s.closed(&conn(1).unwrap(), t0 + ms(10)),
        Some("gone".into())
    );
    assert_eq!(
        s.closed(&conn(2).unwrap(), t0 + ms(10)),
        Some("back".into())
    );
    assert_eq!(s.closed(&conn(9).unwrap(), t0 + ms(10)), None);
    // `back` reconnected: a heartbeat on a new connection.
    s.heartbeat("back", Some(1000), conn(3), t0 + ms(20));
    assert!(s.overdue(t0 + ms(100)).is_empty());
    let o = s.overdue(t0 + ms(111));
    assert_eq!(names(o.clone()), ["gone"]);
    assert_eq!(o[0].since, t0 + ms(10));
    assert_eq!(o[0].due, t0 + ms(110));
    assert_eq!(o[0].cause, "connection closed");
}

#[test]
fn a_heartbeat_on_the_closed_connection_does_not_undo_the_close() {
    let t0 = Instant::now();
    let mut s = sessions();
    s.set_reconnect_grace(ms(100));
    s.heartbeat("a", Some(1000), conn(1), t0);
    s.closed(&conn(1).unwrap(), t0 + ms(10));
    s.heartbeat("a", Some(1000), conn(1), t0 + ms(20));
    assert_eq!(names(s.overdue(t0 + ms(111))), ["a"]);
}

#[test]
fn reviving_counts_silence_and_the_close_from_then() {
    let t0 = Instant::now();
    let mut s = sessions();
    s.set_reconnect_grace(ms(100));
    s.heartbeat("a", Some(1000), conn(1), t0);
    s.closed(&conn(1).unwrap(), t0 + ms(10));
    s.revive("a", t0 + ms(500));
    assert!(s.overdue(t0 + ms(1400)).is_empty());
    assert_eq!(names(s.overdue(t0 + ms(1501))), ["a"]);
}

#[test]
fn a_broken_connection_is_dead_only_by_its_missed_heartbeats() {
    let t0 = Instant::now();
    let mut s = sessions();
    s.heartbeat("a", Some(1000), None, t0);
    s.heartbeat("b", Some(1000), None, t0);
    s.suspect("a");
    s.suspect("b");
    // b reconnects and heartbeats; a is never heard again.
    s.heartbeat("b", None, None, t0 + ms(200));
    // Not before a's timeout since it was last heard: a live client
    // counts on that to give its locks up first.
    assert!(s.overdue(t0 + ms(900)).is_empty());
    assert_eq!(names(s.overdue(t0 + ms(1100))), ["a"]);
    assert_eq!(names(s.overdue(t0 + ms(1300))), ["a", "b"]);
}

#[test]
fn a_stall_holds_off_expiry() {
    let t0 = Instant::now();
    let mut s = Sessions::new(ms(1000), ms(300), Duration::from_secs(3));
    s.heartbeat("s1", Some(1000), None, t0);
    s.stalled(t0 + Duration::from_secs(5));
    assert!(s.overdue(t0 + Duration::from_secs(6)).is_empty());
    assert_eq!(names(s.overdue(t0 + Duration::from_secs(9))), ["s1"]);
}

#[test]
fn a_session_known_only_from_requests_was_never_heard() {
    let t0 = Instant::now();
    let mut s = sessions();
    assert_eq!(s.request("r", t0), Touch::Joined);
    assert_eq!(s.last_heard("r", t0 + ms(5)), None, "never answered alive");
    s.heartbeat("r", Some(1000), None, t0 + ms(10));
    assert_eq!(s.last_heard("r", t0 + ms(30)), Some(ms(20)));
    assert_eq!(s.heartbeat("h", Some(1000), None, t0), Touch::Joined);
    assert_eq!(s.last_heard("h", t0 + ms(7)), Some(ms(7)));
}
