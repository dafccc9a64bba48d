//! Where and as whom the demo's processes reach NATS: the run itself (work
//! queue, ledger), a coordinator it runs, and every worker process.
//!
//! On the embedded default nobody logs in. With `--url`, every connection
//! logs in as the same NATS user (`--user`/`JETLOCK_USER` with
//! `JETLOCK_PASSWORD`, or the URLs' `user:password@`), and its session ids
//! and inbox start with the session prefix (`--session-prefix`, by default
//! the user name): all a user needs is what `nats/cluster.conf` gives its
//! `demo` user. Workers get the servers without credentials on their
//! command line (which other users of the machine can read) and the login
//! in their environment.

use jetlock::client::{prefixed_session, ClientOptions};
use jetlock::connect::{self, Login};
use jetlock::error::ConnectError;
use std::process::Command;

#[derive(Clone)]
pub struct Access {
    /// The server URLs, comma-separated, without credentials.
    urls: String,
    login: Option<Login>,
    prefix: Option<String>,
}

impl Access {
    /// The embedded server: no login, no session prefix.
    pub fn embedded(url: String) -> Access {
        Access {
            urls: url,
            login: None,
            prefix: None,
        }
    }

    /// The servers at `urls`, as `login` or else the user the URLs name,
    /// with session ids under `prefix` or else under the user name.
    pub fn at(
        urls: &str,
        login: Option<Login>,
        prefix: Option<String>,
    ) -> Result<Access, ConnectError> {
        let login = match login {
            Some(login) => Some(login),
            None => connect::login_in_urls(urls).map_err(ConnectError::InvalidUrl)?,
        };
        let prefix = prefix.or_else(|| login.as_ref().map(|l| l.user().to_owned()));
        if let Some(prefix) = &prefix {
            // Refused here, not by every worker as it starts.
            prefixed_session(prefix, &nuid::next())?;
        }
        Ok(Access {
            urls: connect::bare_server_list(urls).join(","),
            login,
            prefix,
        })
    }

    /// The servers and who connects, for people (no password).
    pub fn describe(&self) -> String {
        let mut text = self.urls.clone();
        if let Some(login) = &self.login {
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
        connect::nats(&self.urls, self.login.clone(), self.options(name)).await
    }

    /// [`Access::connect`], waiting for servers that are not up yet.
    pub async fn connect_waiting(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        connect::nats_waiting(&self.urls, self.login.clone(), self.options(name)).await
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

    /// Hands the servers, the prefix and the login to a worker process.
    pub fn pass_to(&self, cmd: &mut Command) {
        cmd.args(["--url", &self.urls])
            .env_remove("JETLOCK_SESSION_PREFIX");
        if let Some(prefix) = &self.prefix {
            cmd.args(["--session-prefix", prefix]);
        }
        match &self.login {
            Some(login) => cmd
                .env("JETLOCK_USER", login.user())
                .env("JETLOCK_PASSWORD", login.password()),
            None => cmd
                .env_remove("JETLOCK_USER")
                .env_remove("JETLOCK_PASSWORD"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_user_unless_given_and_no_password_is_shown() {
        let access = Access::at("nats://demo:s3cret@n1:4222,nats://n2:4222", None, None).unwrap();
        assert_eq!(access.urls(), "nats://n1:4222,nats://n2:4222");
        assert_eq!(access.session("x"), "demo.x");
        assert!(
            !access.describe().contains("s3cret"),
            "{}",
            access.describe()
        );
        let given = Access::at(
            "nats://n1:4222",
            Some(Login::new("billing-eu", "pw")),
            Some("billing".into()),
        )
        .unwrap();
        assert_eq!(given.session("x"), "billing.x");
        let anonymous = Access::at("nats://n1:4222", None, None).unwrap();
        assert_eq!(anonymous.session("x"), "x");
    }

    #[test]
    fn a_user_name_that_cannot_be_a_prefix_is_refused_at_once() {
        let refused = Access::at("nats://n1:4222", Some(Login::new("a b", "pw")), None);
        assert!(matches!(
            refused,
            Err(ConnectError::InvalidSessionPrefix { .. })
        ));
    }
}
