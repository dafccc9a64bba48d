//! The operator role: revocation and preemption are its own, and a worker
//! can do neither, nor delete the coordinators' consumers.

use super::*;

// ---- the operator -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_a_lock_and_a_worker_cannot() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    const NAME: &str = "account:stuck";
    let worker = d.client(Role::Worker, d.options(Role::Worker)).await;
    let guard = worker
        .lock(NAME)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .expect("granted");

    // The operator's view: `jetlock locks` logged in as operator.
    let out = jetlock_as(&d.cluster, Role::Operator, &["locks", "--json"]);
    assert!(
        out.status.success(),
        "jetlock locks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let locks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(locks[0]["name"], NAME, "{locks}");
    assert_eq!(locks[0]["session"], worker.session(), "{locks}");
    assert_eq!(locks[0]["token"], guard.token().get(), "{locks}");

    let revoke = |session: &str| {
        (
            protocol::request_subject(protocol::Op::Revoke, session),
            serde_json::to_vec(&serde_json::json!(
                {"v": 1, "id": "rv1", "key": NAME, "grace_ms": 0, "reason": "test"}
            ))
            .unwrap(),
        )
    };

    // The worker may not revoke, under its own prefix or any other.
    let (nats, refusals) = connect_as(&d.cluster, Role::Worker).await;
    for session in ["worker.ops", "ops.alice"] {
        let (subject, body) = revoke(session);
        let _ = nats.publish(subject.clone(), body.into()).await;
        refusals.wait_for("Publish", &subject).await;
    }
    assert!(!guard.is_lost(), "a worker's revoke got through");

    // The operator may: `jetlock release --force`, logged in as operator.
    let out = jetlock_as(
        &d.cluster,
        Role::Operator,
        &["release", NAME, "--force", "--reason", "test", "--json"],
    );
    assert!(
        out.status.success(),
        "jetlock release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Permissions Violation"), "{stderr}");
    let revoked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(revoked["kind"], "lock.revoked", "{revoked}");
    assert_eq!(revoked["token"], guard.token().get(), "{revoked}");
    // And reads the record of it.
    let out = jetlock_as(&d.cluster, Role::Operator, &["history", NAME, "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        history
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["kind"] == "lock.revoked")),
        "{history}"
    );
    timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the holder's lost() fired");
    assert!(
        matches!(
            guard.lost_reason(),
            Some(LostReason::Revoked | LostReason::Taken)
        ),
        "{:?}",
        guard.lost_reason()
    );
    drop(guard);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_preempts_and_a_worker_cannot_delete_bucket_consumers() {
    let _slot = two_at_a_time().await;
    let d = Deployment::start().await;
    const NAME: &str = "account:preempted";
    let worker = d.client(Role::Worker, d.options(Role::Worker)).await;
    let guard = worker
        .lock(NAME)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .expect("granted");
    let preempting = |id: &str| serde_json::json!({"v": 1, "id": id, "key": NAME, "wait_ms": 60_000, "preempt": true});

    // A worker's preempting acquire on the acquire subject, which it may
    // publish on: the coordinator refuses it and the holder is untouched.
    let (nats, refusals) = connect_as(&d.cluster, Role::Worker).await;
    let mut json = JsonSession::on(nats.clone(), format!("worker.{}", nuid::next())).await;
    json.send("acquire", preempting("p1")).await;
    match json.next_final().await {
        protocol::Answer::Error { code, re, .. } => {
            assert_eq!(
                (code, re.as_deref()),
                (protocol::ErrorCode::NotPermitted, Some("p1"))
            )
        }
        other => panic!("a worker's preempt was answered {other:?}"),
    }
    // The preempt subject is not the worker's to publish on.
    let subject = protocol::request_subject(protocol::Op::Preempt, &json.session);
    let body = serde_json::to_vec(&preempting("p2")).unwrap();
    let _ = nats.publish(subject.clone(), body.into()).await;
    refusals.wait_for("Publish", &subject).await;
    // Nor may it delete a consumer of the bucket's stream (a coordinator's
    // bucket watch is one): the server refuses before looking at the name.
    let delete = "$JS.API.CONSUMER.DELETE.KV_JETLOCK_LOCKS.any";
    let _ = nats.publish(delete, "".into()).await;
    refusals.wait_for("Publish", delete).await;
    assert!(!guard.is_lost(), "{:?}", guard.lost_reason());

    // The operator may preempt: the holder loses the lock after the grace
    // and the operator's session is granted it.
    let (operator, _) = connect_as(&d.cluster, Role::Operator).await;
    let mut ops = JsonSession::on(operator, format!("operator.{}", nuid::next())).await;
    ops.send("preempt", preempting("p3")).await;
    timeout(Duration::from_secs(30), guard.lost())
        .await
        .expect("the holder's lost() fired");
    let token = match ops.next_final().await {
        protocol::Answer::Granted { re, token, .. } if re == "p3" => token,
        other => panic!("the operator's preempt was answered {other:?}"),
    };
    assert!(token > guard.token().get());
    assert_eq!(
        token_of(&d.current(NAME).await),
        Some((ops.session.clone(), token))
    );
    drop(guard);
    // Operators send no releases; leaving ends its session and its hold.
    ops.leave().await;
    d.finish().await;
}
