//! Reaching NATS: server lists, credentials, TLS, and URLs fit to print.
//!
//! Every connection jetlock makes (the client, `jetlock serve`, the other
//! commands) goes through [`nats`], so all of them authenticate the same
//! ways: an [`Auth`] given explicitly (user and password, token, nkey file,
//! creds file, TLS client certificate and CA; see [`auth`]), or a user and
//! password in the URLs (`nats://user:pass@host:4222`, percent-encoded).
//! async-nats 0.51 parses such URLs but sends no credentials from them, so
//! jetlock takes them out of the URLs itself and hands async-nats the bare
//! addresses: its logs then never show a password either.

pub mod auth;

use crate::error::{ConnectError, UrlError};
pub use auth::{Auth, Credentials, Tls};
use std::borrow::Cow;
use std::fmt;

/// A NATS user and its password. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    user: String,
    password: String,
}

impl Login {
    /// The user `user`, logging in with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Login {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password (print it nowhere).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Splits a comma-separated server list (`nats://a:4222,nats://b:4222`),
/// which async-nats itself takes only as a list.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// One server URL taken apart: the URL without credentials, and the
/// credentials it carried (still percent-encoded).
struct Parts<'a> {
    bare: String,
    user: Option<&'a str>,
    password: Option<&'a str>,
}

fn parts(url: &str) -> Parts<'_> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        None => Parts {
            bare: url.to_owned(),
            user: None,
            password: None,
        },
        Some(at) => {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            Parts {
                bare: format!("{scheme}{}", &rest[at + 1..]),
                user: Some(user),
                password,
            }
        }
    }
}

/// The login carried by the URLs, if any. Every URL that carries one must
/// carry the same (a list is one cluster, reached as one user).
pub fn login_in_urls(urls: &str) -> Result<Option<Login>, UrlError> {
    let mut found: Option<Login> = None;
    for url in server_list(urls) {
        let p = parts(&url);
        let Some(user) = p.user else { continue };
        let refuse = |reason| UrlError {
            url: redact(&url),
            reason,
        };
        let login = Login::new(
            percent_decode(user).ok_or_else(|| refuse("has a malformed %-escape in its user"))?,
            percent_decode(p.password.unwrap_or_default())
                .ok_or_else(|| refuse("has a malformed %-escape in its password"))?,
        );
        match &found {
            Some(first) if *first != login => {
                return Err(refuse(
                    "carries other credentials than the URLs before it; use one user for the whole list",
                ))
            }
            Some(_) => {}
            None => found = Some(login),
        }
    }
    Ok(found)
}

/// The URLs without credentials, as a list for async-nats.
pub fn bare_server_list(urls: &str) -> Vec<String> {
    server_list(urls)
        .iter()
        .map(|url| parts(url).bare)
        .collect()
}

/// The URLs with every password replaced by `***`: for logs and errors.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let p = parts(url.trim());
            match (p.user, p.password) {
                (Some(user), Some(_)) => {
                    let at = p.bare.find("://").map_or(0, |i| i + 3);
                    format!("{}{user}:***@{}", &p.bare[..at], &p.bare[at..])
                }
                _ => url.trim().to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `%XX` escapes to bytes; `None` for a malformed escape or bytes that are
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Connects to the servers in `urls` (comma-separated) with `options`,
/// authenticating as `auth` says, or when it names no credentials as the
/// user the URLs name. Servers that cannot be reached fail the call (for
/// commands, which should say so at once); see [`nats_waiting`] for
/// processes that may start before their servers. Refused credentials are
/// [`ConnectError::NotAuthorized`], a failed TLS handshake
/// [`ConnectError::Tls`].
pub async fn nats(
    urls: &str,
    auth: &Auth,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ConnectError> {
    connect(urls, auth, options, false).await
}

/// [`nats`], except that servers that cannot be reached yet are retried in
/// the background: the call returns, and requests wait for the connection.
/// Refused credentials and failed TLS still fail the call at once.
pub async fn nats_waiting(
    urls: &str,
    auth: &Auth,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ConnectError> {
    connect(urls, auth, options, true).await
}

async fn connect(
    urls: &str,
    auth: &Auth,
    options: async_nats::ConnectOptions,
    wait: bool,
) -> Result<async_nats::Client, ConnectError> {
    let auth = match auth.credentials() {
        Some(_) => Cow::Borrowed(auth),
        None => match login_in_urls(urls).map_err(ConnectError::InvalidUrl)? {
            Some(login) => Cow::Owned(
                auth.clone()
                    .with_credentials(Credentials::UserPassword(login)),
            ),
            None => Cow::Borrowed(auth),
        },
    };
    let options = auth.apply(options)?;
    let servers = bare_server_list(urls);
    let failed = |source| ConnectError::Nats {
        url: redact(urls),
        source,
    };
    // First try once: this is where wrong credentials show. With
    // `retry_on_initial_connect`, async-nats would give up silently in the
    // background instead, and every request would time out.
    match options.clone().connect(servers.clone()).await {
        Ok(client) => Ok(client),
        Err(e) => match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => Err(ConnectError::NotAuthorized {
                url: redact(urls),
                user: auth.user(),
                credentials: auth.describe(),
            }),
            async_nats::ConnectErrorKind::ServerParse => Err(failed(e)),
            _ if tls_failed(&e) => Err(ConnectError::Tls {
                url: redact(urls),
                source: e,
            }),
            _ if wait => options
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .map_err(failed),
            _ => Err(failed(e)),
        },
    }
}

/// Whether TLS failed: its setup (a certificate file that is no PEM), or
/// the handshake (a server certificate no trusted CA signed, a client
/// certificate the server refused or that is missing). The TLS layer
/// reports handshake failures and alerts as `InvalidData`; retrying would
/// fail the same way forever.
fn tls_failed(e: &async_nats::ConnectError) -> bool {
    if e.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_urls_and_never_into_prints() {
        let urls = "nats://coordinator:s%40cret@n1:4222, nats://coordinator:s%40cret@n2:4222/";
        let login = login_in_urls(urls).unwrap().unwrap();
        assert_eq!(login, Login::new("coordinator", "s@cret"));
        assert_eq!(
            bare_server_list(urls),
            ["nats://n1:4222", "nats://n2:4222/"]
        );
        let shown = redact(urls);
        assert!(!shown.contains("cret"), "{shown}");
        assert_eq!(
            shown,
            "nats://coordinator:***@n1:4222,nats://coordinator:***@n2:4222/"
        );
        assert!(!format!("{login:?}").contains("cret"));
    }

    #[test]
    fn urls_without_credentials_pass_through() {
        let urls = "nats://127.0.0.1:4222,tls://n2:4222,n3:4222";
        assert_eq!(login_in_urls(urls).unwrap(), None);
        assert_eq!(bare_server_list(urls), server_list(urls));
        assert_eq!(redact(urls), urls);
        // A user without a password (token-style) keeps its user.
        let token = login_in_urls("nats://tok@h:4222").unwrap().unwrap();
        assert_eq!(token, Login::new("tok", ""));
        assert_eq!(redact("nats://tok@h:4222"), "nats://tok@h:4222");
    }

    #[test]
    fn mixed_or_malformed_credentials_are_refused() {
        let mixed = login_in_urls("nats://a:1@n1:4222,nats://b:2@n2:4222").unwrap_err();
        assert!(mixed.reason.contains("other credentials"), "{mixed}");
        assert!(!mixed.to_string().contains(":2@"), "{mixed}");
        assert!(login_in_urls("nats://a:%zz@n1:4222").is_err());
        assert!(login_in_urls("nats://a:%4@n1:4222").is_err());
        // URLs without credentials beside ones with them are fine.
        let one = login_in_urls("nats://n1:4222,nats://a:b@n2:4222").unwrap();
        assert_eq!(one, Some(Login::new("a", "b")));
    }
}
