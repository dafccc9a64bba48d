//! Where and as whom the demo's processes reach NATS: the run itself (work
//! queue, ledger), a coordinator it runs, and every worker process.
//!
//! On the embedded default nobody logs in. With `--url`, every connection
//! logs in the same way (the credentials and TLS files of the command line,
//! environment or context, or the URLs' `user:password@`), and its session
//! ids and inbox start with the session prefix (`--session-prefix`, by
//! default the user name): all a user needs is what `nats/cluster.conf`
//! gives its `demo` user. Workers get the servers without credentials on
//! their command line (which other users of the machine can read) and the
//! credentials in their environment.

use jetlock::client::{prefixed_session, ClientOptions};
use jetlock::connect::{self, Auth, Credentials};
use jetlock::error::ConnectError;
use std::process::Command;

#[derive(Clone)]
pub struct Access {
    /// The server URLs, comma-separated, without credentials.
    urls: String,
    auth: Auth,
    prefix: Option<String>,
}

impl Access {
    /// The embedded server: no login, no session prefix.
    pub fn embedded(url: String) -> Access {
        Access {
            urls: url,
            auth: Auth::default(),
            prefix: None,
        }
    }

    /// The servers at `urls`, logging in as `auth` says or else as the
    /// user the URLs name, with session ids under `prefix` or else under
    /// the user name.
    pub fn at(urls: &str, auth: Auth, prefix: Option<String>) -> Result<Access, ConnectError> {
        let auth = match auth.credentials() {
            Some(_) => auth,
            None => match connect::login_in_urls(urls)? {
                Some(login) => auth.with_credentials(Credentials::UserPassword(login)),
                None => auth,
            },
        };
        let prefix = prefix.or_else(|| match auth.credentials() {
            Some(Credentials::UserPassword(login)) => Some(login.user().to_owned()),
            _ => None,
        });
        if let Some(prefix) = &prefix {
            // Refused here, not by every worker as it starts.
            prefixed_session(prefix, &nuid::next())?;
        }
        Ok(Access {
            urls: connect::bare_server_list(urls).join(","),
            auth,
            prefix,
        })
    }

    /// The servers and who connects, for people (no password).
    pub fn describe(&self) -> String {
        let mut text = self.urls.clone();
        if let Some(Credentials::UserPassword(login)) = self.auth.credentials() {
            text.push_str(&format!(" as user {}", login.user()));
        }
        if let Some(prefix) = &self.prefix {
            text.push_str(&format!(", session prefix {prefix}"));
        }
        text
    }

    /// The server URLs, without credentials.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// A connection named `name`; servers that cannot be reached fail it.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        connect::nats(&self.urls, &self.auth, self.options(name)).await
    }

    /// [`Access::connect`], waiting for servers that are not up yet.
    pub async fn connect_waiting(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        connect::nats_waiting(&self.urls, &self.auth, self.options(name)).await
    }

    fn options(&self, name: &str) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new().name(name);
        match &self.prefix {
            // Replies, JetStream acks and pulls arrive where the user may
            // read: `_INBOX.<prefix>.>`.
            Some(prefix) => options.custom_inbox_prefix(format!("_INBOX.{prefix}")),
            None => options,
        }
    }

    /// Options of a jetlock client on a connection from [`Access::connect`].
    pub fn client_options(&self) -> ClientOptions {
        let options = ClientOptions::new();
        match &self.prefix {
            Some(prefix) => options.session_prefix(prefix),
            None => options,
        }
    }

    /// The session id `id` under the prefix, if there is one.
    pub fn session(&self, id: &str) -> String {
        match &self.prefix {
            Some(prefix) => {
                prefixed_session(prefix, id).expect("the prefix was checked in Access::at")
            }
            None => id.to_owned(),
        }
    }

    /// Hands the servers, the prefix and the credentials to a worker
    /// process: secrets in its environment, never on its command line.
    pub fn pass_to(&self, cmd: &mut Command) {
        cmd.args(["--url", &self.urls])
            .env_remove("JETLOCK_SESSION_PREFIX");
        if let Some(prefix) = &self.prefix {
            cmd.args(["--session-prefix", prefix]);
        }
        // The worker resolves nothing by itself: what this process
        // resolved (from flags, environment or a context) is all it gets.
        for var in [
            "NATS_CONTEXT",
            "NATS_URL",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "JETLOCK_USER",
            "JETLOCK_PASSWORD",
            "JETLOCK_TOKEN",
            "NATS_CREDS",
            "NATS_NKEY",
            "NATS_CERT",
            "NATS_KEY",
            "NATS_CA",
        ] {
            cmd.env_remove(var);
        }
        match self.auth.credentials() {
            Some(Credentials::UserPassword(login)) => {
                cmd.env("JETLOCK_USER", login.user())
                    .env("JETLOCK_PASSWORD", login.password());
            }
            Some(Credentials::Token(token)) => {
                cmd.env("JETLOCK_TOKEN", token);
            }
            Some(Credentials::CredsFile(path)) => {
                cmd.env("NATS_CREDS", path);
            }
            Some(Credentials::NkeyFile(path)) => {
                cmd.env("NATS_NKEY", path);
            }
            None => {}
        }
        let tls = self.auth.tls();
        if let Some((cert, key)) = tls.client_certificate() {
            cmd.env("NATS_CERT", cert).env("NATS_KEY", key);
        }
        if let Some(ca) = tls.ca() {
            cmd.env("NATS_CA", ca);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetlock::connect::Login;

    #[test]
    fn the_prefix_is_the_user_unless_given_and_no_password_is_shown() {
        let access = Access::at(
            "nats://demo:s3cret@n1:4222,nats://n2:4222",
            Auth::default(),
            None,
        )
        .unwrap();
        assert_eq!(access.urls(), "nats://n1:4222,nats://n2:4222");
        assert_eq!(access.session("x"), "demo.x");
        assert!(
            !access.describe().contains("s3cret"),
            "{}",
            access.describe()
        );
        let given = Access::at(
            "nats://n1:4222",
            Auth::from(Login::new("billing-eu", "pw")),
            Some("billing".into()),
        )
        .unwrap();
        assert_eq!(given.session("x"), "billing.x");
        let anonymous = Access::at("nats://n1:4222", Auth::default(), None).unwrap();
        assert_eq!(anonymous.session("x"), "x");
    }

    #[test]
    fn a_user_name_that_cannot_be_a_prefix_is_refused_at_once() {
        let refused = Access::at("nats://n1:4222", Auth::from(Login::new("a b", "pw")), None);
        assert!(matches!(
            refused,
            Err(ConnectError::InvalidSessionPrefix { .. })
        ));
    }
}
