//! Who a connection is to NATS, and how it protects itself: [`Auth`] holds
//! at most one kind of [`Credentials`] (user and password, token, nkey,
//! creds file) and the [`Tls`] settings (client certificate, CA, TLS
//! required), and turns them into `async_nats::ConnectOptions`.
//!
//! Files are read when a connection is made, not when they are named, so a
//! rotated creds file is picked up by the next process without a rebuild of
//! its options; an unreadable or unusable file is
//! [`ConnectError::Credentials`] naming its path. No `Debug` output shows a
//! password, a token or a seed: only paths and user names.

use super::Login;
use crate::error::ConnectError;
use std::fmt;
use std::path::{Path, PathBuf};

/// One way of proving who a connection is. A server accepts one per
/// connection, so an [`Auth`] holds at most one.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user and its password (`users` of an account or `authorization`).
    UserPassword(Login),
    /// A token (`authorization { token: ... }`).
    Token(String),
    /// A file holding a user nkey seed (`SU...`), as `nk -gen user` or
    /// `nsc` write it; the server knows the user by its public key
    /// (`users: [{ nkey: U... }]`).
    NkeyFile(PathBuf),
    /// A `.creds` file: a user JWT and its nkey seed, for servers in
    /// operator mode (decentralized JWT authentication).
    CredsFile(PathBuf),
}

impl Credentials {
    /// The refused user, as [`ConnectError::NotAuthorized`] reports it.
    fn user(&self) -> Option<String> {
        match self {
            Credentials::UserPassword(login) => Some(login.user().to_owned()),
            _ => None,
        }
    }

    /// How the connection presents itself, for errors: no secret, only the
    /// user name or the file's path.
    fn describe(&self) -> String {
        match self {
            Credentials::UserPassword(login) => format!("as user {:?}", login.user()),
            Credentials::Token(_) => "with a token".to_owned(),
            Credentials::NkeyFile(path) => format!("with the nkey in {}", path.display()),
            Credentials::CredsFile(path) => format!("with the creds file {}", path.display()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::UserPassword(login) => f.debug_tuple("UserPassword").field(login).finish(),
            Credentials::Token(_) => f.debug_tuple("Token").field(&"***").finish(),
            Credentials::NkeyFile(path) => f.debug_tuple("NkeyFile").field(path).finish(),
            Credentials::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

/// TLS settings: a client certificate for servers that verify clients
/// (`tls { verify: true }`), the CA that signed the servers' certificates
/// when it is not a public one, and whether TLS is required. Naming any of
/// the files requires TLS too: a client given a CA or a certificate never
/// falls back to plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    client_cert: Option<(PathBuf, PathBuf)>,
    ca: Option<PathBuf>,
    required: bool,
}

impl Tls {
    /// The client certificate and its private key (PEM files).
    pub fn client_certificate(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// The CA certificates (PEM file) servers are checked against.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Whether the connection must be TLS (asked for, or implied by a file).
    pub fn required(&self) -> bool {
        self.required || self.client_cert.is_some() || self.ca.is_some()
    }
}

/// How to connect: credentials and TLS. The default sends no credentials
/// (or those in the URLs, see [`super::nats`]) and uses TLS only when the
/// server asks for it or a URL says `tls://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    credentials: Option<Credentials>,
    tls: Tls,
}

impl From<Login> for Auth {
    fn from(login: Login) -> Self {
        Auth::default().with_credentials(Credentials::UserPassword(login))
    }
}

impl From<Credentials> for Auth {
    fn from(credentials: Credentials) -> Self {
        Auth::default().with_credentials(credentials)
    }
}

impl Auth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connect with `credentials`, replacing any set before.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Present this certificate (PEM) with its private key (PEM) to servers
    /// that verify clients.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Trust servers whose certificates this CA (PEM file) signed.
    pub fn root_certificates(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(ca.into());
        self
    }

    /// Refuse to connect without TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.tls.required = required;
        self
    }

    /// The credentials, if any were given.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The TLS settings.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// The user to report when the server refuses these credentials.
    pub(crate) fn user(&self) -> Option<String> {
        self.credentials.as_ref().and_then(Credentials::user)
    }

    /// How the connection presents itself, for errors (no secrets).
    pub(crate) fn describe(&self) -> String {
        let mut text = match &self.credentials {
            Some(credentials) => credentials.describe(),
            None => "without credentials".to_owned(),
        };
        if let Some((cert, _)) = self.tls.client_certificate() {
            text.push_str(&format!(" and the client certificate {}", cert.display()));
        }
        text
    }

    /// `options` with these credentials and TLS settings. The credential
    /// files are read here, and the TLS files checked for readability (the
    /// TLS layer reads them only during the handshake, where a missing file
    /// would look like a refused connection).
    pub(crate) fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, ConnectError> {
        options = match &self.credentials {
            None => options,
            Some(Credentials::UserPassword(login)) => {
                options.user_and_password(login.user().to_owned(), login.password().to_owned())
            }
            Some(Credentials::Token(token)) => options.token(token.clone()),
            Some(Credentials::NkeyFile(path)) => {
                let text = read("nkey file", path)?;
                let seed = user_seed(&text).ok_or_else(|| ConnectError::Credentials {
                    what: "nkey file",
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "it holds no user nkey seed (a line starting with SU)",
                    ),
                })?;
                options.nkey(seed.to_owned())
            }
            Some(Credentials::CredsFile(path)) => {
                let text = read("creds file", path)?;
                options
                    .credentials(&text)
                    .map_err(|source| ConnectError::Credentials {
                        what: "creds file",
                        path: path.clone(),
                        source,
                    })?
            }
        };
        if let Some((cert, key)) = &self.tls.client_cert {
            readable("TLS client certificate", cert)?;
            readable("TLS client key", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(ca) = &self.tls.ca {
            readable("TLS CA file", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        if self.tls.required() {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|source| ConnectError::Credentials {
        what,
        path: path.to_owned(),
        source,
    })
}

fn readable(what: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ConnectError::Credentials {
            what,
            path: path.to_owned(),
            source,
        })
}

/// The user seed in an nkey file: the file may hold the bare seed or the
/// seed between `-----BEGIN USER NKEY SEED-----` lines.
fn user_seed(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| l.starts_with("SU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let token = Auth::from(Credentials::Token("t0ps3cret".into()));
        let login = Auth::from(Login::new("worker", "pa55word"));
        for shown in [format!("{token:?}"), format!("{login:?}")] {
            assert!(!shown.contains("t0ps3cret") && !shown.contains("pa55word"));
        }
        assert_eq!(token.describe(), "with a token");
        assert_eq!(login.describe(), "as user \"worker\"");
    }

    #[test]
    fn a_seed_is_found_bare_or_decorated() {
        assert_eq!(user_seed("SUABC\n"), Some("SUABC"));
        let decorated = "-----BEGIN USER NKEY SEED-----\nSUXYZ\n------END USER NKEY SEED------\n";
        assert_eq!(user_seed(decorated), Some("SUXYZ"));
        assert_eq!(user_seed("UABC public key\n"), None);
    }

    #[test]
    fn tls_files_require_tls_and_unreadable_files_name_their_path() {
        let auth = Auth::new().root_certificates("/nonexistent/ca.pem");
        assert!(auth.tls().required());
        match auth.apply(async_nats::ConnectOptions::new()) {
            Err(e @ ConnectError::Credentials { .. }) => {
                assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}")
            }
            other => panic!("not refused for its file: {other:?}"),
        }
        let nkey = Auth::from(Credentials::NkeyFile("/nonexistent/user.nk".into()));
        let e = nkey.apply(async_nats::ConnectOptions::new()).unwrap_err();
        assert!(
            e.to_string().contains("nkey file /nonexistent/user.nk"),
            "{e}"
        );
    }
}
