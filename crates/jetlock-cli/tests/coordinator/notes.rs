//! Done notes: a coordinator lists the requests it finished for the
//! others every tick, and a mirror that takes a key over does not carry
//! one of them out again.

use super::*;

/// The final answers to the session up to the one to `until`, as
/// (re, type), and that one's token.
async fn answers_until(json: &mut JsonSession, until: &str) -> (Vec<(String, String)>, u64) {
    let mut seen = Vec::new();
    let token = tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = json.answers.next().await.expect("subscription open");
            let a: Answer = serde_json::from_slice(&msg.payload).expect("answers parse");
            let value: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            if let (Some(re), true) = (a.re(), a.is_final()) {
                seen.push((re.to_owned(), kind));
                if re == until {
                    return value["token"].as_u64().unwrap_or_default();
                }
            }
        }
    })
    .await
    .expect("the answers arrive");
    (seen, token)
}

/// A release refused `not_holder` changes nothing in the bucket: only the
/// owner's done note tells the mirror it is finished. When the owner
/// leaves and the mirror takes the key over, it must not answer it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_takes_over_does_not_answer_a_finished_request_again() {
    let server = single();
    let url = server.url();
    let first = coordinator_named(&url, "notes-a").await;
    let second = coordinator_named(&url, "notes-b").await;
    let mut ring = jetlock_coordinator::Ring::new("notes-a".to_owned(), Duration::from_secs(60));
    ring.beat("notes-b", None, tokio::time::Instant::now());
    ring.set_partitions(jetlock::shards::DEFAULT_PARTITIONS);
    let name = (0..)
        .map(|i| format!("notes:{i}"))
        .find(|n| ring.owner_of_key(jetlock::name::LockName::new(n).unwrap().key()) == "notes-a")
        .unwrap();
    let mut json = JsonSession::new(&url).await;
    // Both coordinators mirror the request; the first one owns the key,
    // finds it free and answers `not_holder`, writing nothing.
    json.send(
        "release",
        json!({"v": 1, "id": "r1", "key": name, "token": 7}),
    )
    .await;
    let refused = json.next_final().await;
    assert_eq!(code(&refused), Some(ErrorCode::NotHolder), "{refused:?}");
    // It leaves: its done note goes out before its leaving heartbeat, and
    // the second coordinator takes the key over.
    first.shutdown().await;
    json.send("acquire", json!({"v": 1, "id": "r2", "key": name}))
        .await;
    let (mut answers, token) = answers_until(&mut json, "r2").await;
    json.send(
        "release",
        json!({"v": 1, "id": "r3", "key": name, "token": token}),
    )
    .await;
    answers.extend(answers_until(&mut json, "r3").await.0);
    assert_eq!(
        answers,
        [
            ("r2".to_owned(), "granted".to_owned()),
            ("r3".to_owned(), "released".to_owned())
        ],
        "the second coordinator answered a finished request again"
    );
    second.shutdown().await;
}
