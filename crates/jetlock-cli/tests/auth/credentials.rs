//! Connections without credentials, or with wrong ones, are refused at
//! once and say who was refused; the right ones connect either way.

use super::*;

// ---- credentials --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_or_with_wrong_credentials_are_refused() {
    let _slot = two_at_a_time().await;
    let cluster = cluster().await;
    let refused = |r: Result<async_nats::Client, ConnectError>, user: Option<&str>| match r {
        Err(ConnectError::NotAuthorized { user: u, url, .. }) => {
            assert_eq!(u.as_deref(), user);
            assert!(!url.contains(":wrong@"), "the password is shown: {url}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("connected as {user:?}"),
    };
    let options = async_nats::ConnectOptions::new;
    let started = Instant::now();

    // Without credentials: the server itself refuses (plain async-nats).
    let plain = async_nats::connect(cluster.servers()[0].url()).await;
    assert_eq!(
        plain.err().map(|e| e.kind()),
        Some(async_nats::ConnectErrorKind::AuthorizationViolation)
    );
    refused(
        jetlock::connect::nats(&cluster.url(), &Auth::default(), options()).await,
        None,
    );
    let bad = cluster.url().replace("nats://", "nats://worker:wrong@");
    refused(
        jetlock::connect::nats(&bad, &Auth::default(), options()).await,
        Some("worker"),
    );
    let good = cluster.login(Role::Worker);
    refused(
        jetlock::connect::nats(
            &cluster.url(),
            &Auth::from(Login::new("restricted", good.password())),
            options(),
        )
        .await,
        Some("restricted"),
    );
    // The lock client says so at once, instead of timing out later.
    match ClientOptions::new()
        .user_and_password("worker", "wrong")
        .connect(&cluster.url())
        .await
    {
        Err(ConnectError::NotAuthorized { user, .. }) => {
            assert_eq!(user.as_deref(), Some("worker"))
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusals took {:?}",
        started.elapsed()
    );

    // The right password, given either way, connects.
    jetlock::connect::nats(&cluster.url_as(Role::Worker), &Auth::default(), options())
        .await
        .expect("URL credentials");
    jetlock::connect::nats(&cluster.url(), &Auth::from(good), options())
        .await
        .expect("explicit credentials");
}
