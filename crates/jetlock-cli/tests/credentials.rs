//! Every way of logging in to NATS, each against a nats-server configured
//! for it alone: a token, an nkey, a creds file (operator mode: the
//! operator, account and user JWTs are made and signed here with nkeys),
//! and TLS with client certificates (a CA and certificates made here with
//! rcgen). For each:
//!
//! - with the right credentials, `jetlock serve` runs, a library client
//!   takes a lock through it (`fast_path(false)`: every acquire is a
//!   coordinator request), and `jetlock locks` lists the lock from the
//!   coordinator;
//! - with wrong or missing ones, `jetlock locks` and `jetlock serve` exit
//!   non-zero at once, saying why, and the library returns the matching
//!   `ConnectError`.
//!
//! Also: `--context` (a `nats` CLI context file), `NATS_URL`, and usage
//! errors for conflicting credentials and unreadable files.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{serve_with_env, NATS_LOGIN_VARS, PATIENCE};
use jetlock::{ClientOptions, ConnectError};
use jetlock_testkit::server::NatsServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The variables a server config reads (see `NatsServer::start_configured`).
const BASE: &str = "server_name: $NATS_SERVER_NAME
host: $NATS_HOST
port: $NATS_PORT
jetstream { store_dir: $NATS_STORE_DIR }
";

const LOCK: &str = "account:1";

/// `jetlock` with none of the test's own `JETLOCK_*` or `NATS_*` settings,
/// reading contexts under `config_home`.
fn command(config_home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetlock"));
    for var in [
        "JETLOCK_URL",
        "JETLOCK_USER",
        "JETLOCK_PASSWORD",
        "JETLOCK_TOKEN",
    ]
    .into_iter()
    .chain(NATS_LOGIN_VARS)
    {
        cmd.env_remove(var);
    }
    cmd.env("XDG_CONFIG_HOME", config_home);
    cmd
}

/// `jetlock <args>` run to its end (see [`command`]), with `env` set.
fn jetlock(args: &[&str], env: &[(&str, &str)], config_home: &Path) -> Output {
    command(config_home)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run jetlock")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A run that failed with `code`, saying `says` on stderr.
#[track_caller]
fn refused(out: &Output, code: i32, says: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(says), "expected {says:?} in: {err}");
}

/// One server configured for one way of logging in, and how to log in
/// right, wrong, and not at all.
struct Case {
    server: NatsServer,
    /// Flags that log in (also given to `jetlock serve`).
    right: Vec<String>,
    /// The library's options that log in.
    options: fn(ClientOptions, &Path) -> ClientOptions,
    /// Flags that are refused, and what the refusal says.
    wrong: Vec<String>,
    wrong_says: &'static str,
    /// What a connection without credentials hears.
    missing_says: &'static str,
    /// The files of the case (keys, certificates), for `options`.
    dir: tempfile::TempDir,
}

impl Case {
    /// A server from `config` whose credentials are one flag: `right`
    /// logs in, `wrong` is refused saying `wrong_says`, and none is
    /// refused as `without credentials`.
    fn one_flag(
        config: &str,
        flag: &str,
        right: impl AsRef<std::ffi::OsStr>,
        wrong: impl AsRef<std::ffi::OsStr>,
        options: fn(ClientOptions, &Path) -> ClientOptions,
        wrong_says: &'static str,
        dir: tempfile::TempDir,
    ) -> Case {
        Case {
            server: NatsServer::start_configured(config).expect("start nats-server"),
            right: arg(flag, right),
            options,
            wrong: arg(flag, wrong),
            wrong_says,
            missing_says: "refused the connection without credentials",
            dir,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// The whole round: serve, lock through the coordinator, list, refuse.
    async fn check(&self) {
        let url = self.url();
        let home = tempfile::tempdir().unwrap();
        let right: Vec<&str> = self.right.iter().map(String::as_str).collect();
        let serving = serve_with_env(&url, &right, &[], PATIENCE);

        let client = (self.options)(ClientOptions::new().fast_path(false), self.dir.path())
            .connect(&url)
            .await
            .expect("the library logs in");
        let guard = client
            .lock(LOCK)
            .try_acquire()
            .await
            .expect("a lock through the coordinator");

        tokio::task::block_in_place(|| hold(&url, &right, home.path()));

        let mut args = vec!["locks", "--json", "--url", &url];
        args.extend(&right);
        let out = jetlock(&args, &[], home.path());
        assert!(out.status.success(), "locks: {}", stderr(&out));
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(listed.contains(LOCK), "{listed}");
        assert!(
            !stderr(&out).contains("no coordinator answered"),
            "{}",
            stderr(&out)
        );

        let mut args = vec!["locks", "--url", &url];
        args.extend(self.wrong.iter().map(String::as_str));
        refused(&jetlock(&args, &[], home.path()), 1, self.wrong_says);
        let out = jetlock(&["locks", "--url", &url], &[], home.path());
        refused(&out, 1, self.missing_says);

        let wrong: Vec<&str> = self.wrong.iter().map(String::as_str).collect();
        serve_refused(&url, &wrong, self.wrong_says).await;

        guard.release().await.expect("release");
        drop(serving);
    }
}

/// `jetlock hold` logs in with `right`, takes a lock (printing its token)
/// and releases it when its stdin closes.
fn hold(url: &str, right: &[&str], config_home: &Path) {
    use std::io::BufRead;
    let mut child = command(config_home)
        .args(["hold", "account:2", "--wait-ms", "0", "--url", url])
        .args(right)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn jetlock hold");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("jetlock hold ends");
    assert!(out.status.success(), "hold: {}", stderr(&out));
    assert!(line.contains("\"token\""), "hold printed {line:?}");
}

/// `jetlock serve` with credentials the server refuses exits 1 at once,
/// instead of waiting for a server that will never let it in.
async fn serve_refused(url: &str, args: &[&str], says: &str) {
    let mut child = common::serving::serve_command(url, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn jetlock serve");
    let start = Instant::now();
    let status = common::serving::exited(&mut child, "jetlock serve with wrong credentials").await;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(says), "expected {says:?} in: {err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn arg(flag: &str, value: impl AsRef<std::ffi::OsStr>) -> Vec<String> {
    vec![
        flag.to_owned(),
        value.as_ref().to_string_lossy().into_owned(),
    ]
}

// ---- token ------------------------------------------------------------------

fn token_case() -> Case {
    let config = format!("{BASE}authorization {{ token: \"t0k3n-right\" }}\n");
    Case::one_flag(
        &config,
        "--token",
        "t0k3n-right",
        "t0k3n-wrong",
        |o, _| o.token("t0k3n-right"),
        "refused the connection with a token",
        tempfile::tempdir().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let case = token_case();
    case.check().await;
    // From the environment, the server list from NATS_URL.
    let home = tempfile::tempdir().unwrap();
    let url = case.url();
    for env in [
        [("JETLOCK_TOKEN", "t0k3n-right"), ("NATS_URL", url.as_str())],
        [("NATS_TOKEN", "t0k3n-right"), ("NATS_URL", url.as_str())],
    ] {
        let out = jetlock(&["locks"], &env, home.path());
        assert!(out.status.success(), "{env:?}: {}", stderr(&out));
    }
    let lib = ClientOptions::new()
        .token("t0k3n-wrong")
        .connect(&url)
        .await;
    assert!(
        matches!(lib, Err(ConnectError::NotAuthorized { .. })),
        "{:?}",
        lib.err()
    );
}

// ---- nkey -------------------------------------------------------------------

fn nkey_case() -> Case {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let seed = write(dir.path(), "user.nk", &user.seed().unwrap());
    let wrong = write(dir.path(), "stranger.nk", &stranger.seed().unwrap());
    let config = format!(
        "{BASE}authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    );
    Case::one_flag(
        &config,
        "--nkey",
        seed,
        wrong,
        |o, dir| o.nkey_file(dir.join("user.nk")),
        "refused the connection with the nkey in",
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey() {
    nkey_case().check().await;
}

/// `--context NAME` reads a `nats` CLI context: its url and nkey log in;
/// a flag beside it wins over its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cli_context_gives_the_url_and_credentials() {
    let case = nkey_case();
    let home = tempfile::tempdir().unwrap();
    let contexts = home.path().join("nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    let context = serde_json::json!({
        "description": "", "url": case.url(), "user": "", "password": "", "token": "",
        "creds": "", "nkey": case.dir.path().join("user.nk"), "cert": "", "key": "",
        "ca": "", "nsc": "", "jetstream_domain": "",
    });
    write(&contexts, "lab.json", &context.to_string());
    let out = jetlock(
        &["setup", "--replicas", "1", "--context", "lab"],
        &[],
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = jetlock(&["locks", "--context", "lab"], &[], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = jetlock(&["locks"], &[("NATS_CONTEXT", "lab")], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    // Flags win: the context's nkey is not sent with a flag's token.
    let out = jetlock(
        &["locks", "--context", "lab", "--token", "x"],
        &[],
        home.path(),
    );
    refused(&out, 1, "refused the connection with a token");
    let out = jetlock(&["locks", "--context", "prod"], &[], home.path());
    refused(&out, 2, "--context prod: cannot read");
}

// ---- creds file (operator mode) ---------------------------------------------

/// A NATS JWT: `claims` signed by `issuer` (nkeys' ed25519).
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": nuid::next().to_string(),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("sign a JWT");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An account's JWT, with JetStream when `jetstream` (the system account
/// may not have it).
fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
) -> String {
    let mut unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
            unlimited[limit] = (-1).into();
        }
    }
    let nats = serde_json::json!({"limits": unlimited, "type": "account", "version": 2});
    jwt(operator, &account.public_key(), name, nats)
}

/// A `.creds` file as `nsc generate creds` writes it.
fn creds(account: &nkeys::KeyPair, user: &nkeys::KeyPair) -> String {
    let nats = serde_json::json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2,
    });
    let jwt = jwt(account, &user.public_key(), "worker", nats);
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    )
}

fn creds_case() -> Case {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    // An account the server was never told of signs the wrong user.
    let unknown = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "jetlock-test",
        serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let config = format!(
        "{BASE}operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {acct}: \"{acct_jwt}\"\n}}\n",
        sys = system.public_key(),
        sys_jwt = account_jwt(&operator, &system, "SYS", false),
        acct = account.public_key(),
        acct_jwt = account_jwt(&operator, &account, "JETLOCK", true),
    );
    let dir = tempfile::tempdir().unwrap();
    let right = write(
        dir.path(),
        "worker.creds",
        &creds(&account, &nkeys::KeyPair::new_user()),
    );
    let wrong = write(
        dir.path(),
        "stranger.creds",
        &creds(&unknown, &nkeys::KeyPair::new_user()),
    );
    Case::one_flag(
        &config,
        "--creds",
        right,
        wrong,
        |o, dir| o.credentials_file(dir.join("worker.creds")),
        "refused the connection with the creds file",
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file() {
    creds_case().check().await;
}

// ---- TLS with client certificates -------------------------------------------

/// A CA and a certificate it signed for `names` (as PEM files under `dir`,
/// prefixed `prefix`), returned with the CA for more certificates.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes `<prefix>.pem` and `<prefix>-key.pem`, a certificate for
    /// `names` used as `usage`.
    fn issue(
        &self,
        dir: &Path,
        prefix: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, prefix);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (
            write(dir, &format!("{prefix}.pem"), &cert.pem()),
            write(dir, &format!("{prefix}-key.pem"), &key.serialize_pem()),
        )
    }

    fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, name, &self.ca.pem())
    }
}

fn tls_case() -> Case {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("jetlock test CA");
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let (server_cert, server_key) = pki.issue(
        dir.path(),
        "server",
        &["127.0.0.1", "localhost"],
        ServerAuth,
    );
    let (cert, key) = pki.issue(dir.path(), "client", &["worker"], ClientAuth);
    // A client certificate from a CA the server does not trust.
    let (stranger, stranger_key) =
        Pki::new("another CA").issue(dir.path(), "stranger", &["worker"], ClientAuth);
    let config = format!(
        "{BASE}tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca.display()
    );
    let mut right = arg("--tlscert", &cert);
    right.extend(arg("--tlskey", &key));
    right.extend(arg("--tlsca", &ca));
    let mut wrong = arg("--tlscert", &stranger);
    wrong.extend(arg("--tlskey", &stranger_key));
    wrong.extend(arg("--tlsca", &ca));
    Case {
        server: NatsServer::start_configured(&config).expect("start nats-server"),
        right,
        options: |o, dir| {
            o.client_certificate(dir.join("client.pem"), dir.join("client-key.pem"))
                .root_certificates(dir.join("ca.pem"))
        },
        wrong,
        wrong_says: "TLS with NATS at",
        // Without the CA the server's certificate is not trusted.
        missing_says: "TLS with NATS at",
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates() {
    let case = tls_case();
    case.check().await;
    // The CA alone: the server wants a client certificate.
    let home = tempfile::tempdir().unwrap();
    let url = case.url();
    let ca = case.dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = jetlock(&["locks", "--url", &url, "--tlsca", ca], &[], home.path());
    refused(&out, 1, "TLS with NATS at");
    let lib = ClientOptions::new()
        .root_certificates(ca)
        .connect(&url)
        .await;
    assert!(
        matches!(lib, Err(ConnectError::Tls { .. })),
        "{:?}",
        lib.err()
    );
}

// ---- usage errors -----------------------------------------------------------

#[test]
fn conflicting_credentials_and_unreadable_files_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let file = write(home.path(), "x.creds", "");
    let file = file.to_str().unwrap();
    let url = ["--url", "nats://127.0.0.1:1"];
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["locks"];
        args.extend(url);
        args.extend(extra);
        jetlock(&args, env, home.path())
    };
    refused(
        &run(&["--token", "t", "--creds", file], &[]),
        2,
        "--token and --creds are 2 ways to log in",
    );
    refused(
        &run(&["--nkey", file], &[("NATS_CREDS", file)]),
        2,
        "--creds and --nkey are 2 ways to log in",
    );
    refused(
        &run(&["--creds", "/nonexistent/x.creds"], &[]),
        2,
        "--creds /nonexistent/x.creds: cannot read it",
    );
    refused(
        &run(&["--tlscert", file], &[]),
        2,
        "--tlscert (NATS_CERT) needs its private key",
    );
    refused(
        &run(&["--user", "worker"], &[]),
        2,
        "--user worker needs its password",
    );
    // Empty variables are unset, as in the nats CLI: no server here (1).
    refused(
        &run(
            &[],
            &[("NATS_CREDS", ""), ("NATS_CA", ""), ("JETLOCK_USER", "")],
        ),
        1,
        "could not connect to NATS",
    );
    // Each is one line.
    let out = run(&["--token", "t", "--creds", file], &[]);
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
}
