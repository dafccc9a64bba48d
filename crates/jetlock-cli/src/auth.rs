//! Who the `jetlock` commands connect as: the flags the `nats` CLI has
//! (`--user`/`--password`, `--creds`, `--nkey`, `--tlscert`, `--tlskey`,
//! `--tlsca`, `--context`) plus `--token`, their environment variables,
//! and the `nats` CLI's context files (see [`context`]).
//!
//! Precedence, per setting: a flag, then its `JETLOCK_*` variable, then
//! its `NATS_*` variable, then the context. Credentials come whole from one
//! place: flags and variables that name any (user, token, nkey, creds)
//! replace all of the context's, so a context's password never goes out
//! with a flag's user. Naming two kinds at once is a usage error.

mod context;

use super::{CliError, Exit};
use jetlock::connect::{Auth, Credentials, Login};
use std::path::{Path, PathBuf};

/// Where the URL comes from when `--url` and `JETLOCK_URL` are not given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Credentials and TLS flags, shared by every subcommand that connects.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// A `nats` CLI context to take the URL, credentials and TLS files
    /// from ($XDG_CONFIG_HOME/nats/context/NAME.json; also NATS_CONTEXT);
    /// flags and environment variables win over its values.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// NATS user (also JETLOCK_USER, NATS_USER); its password from
    /// --password, JETLOCK_PASSWORD or NATS_PASSWORD.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// The user's password. A flag's value shows in `ps` to every user of
    /// the machine: prefer JETLOCK_PASSWORD (or NATS_PASSWORD).
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// A token (`authorization { token }`). A flag's value shows in `ps`:
    /// prefer JETLOCK_TOKEN (or NATS_TOKEN).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// A user credentials file (JWT and nkey seed, for servers in operator
    /// mode; also NATS_CREDS).
    #[arg(long, global = true, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU...`; also NATS_NKEY).
    #[arg(long, global = true, value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// TLS client certificate (PEM), for servers that verify clients;
    /// needs --tlskey (also NATS_CERT).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// The client certificate's private key (PEM; also NATS_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// The CA (PEM) that signed the servers' certificates; implies TLS
    /// (also NATS_CA).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlsca: Option<PathBuf>,
}

/// The server list and how to log in, as resolved from flags, environment
/// and context.
#[derive(Debug, Clone)]
pub struct Target {
    /// `--url` or `JETLOCK_URL`, else `NATS_URL`, else the context's `url`;
    /// `None` when none of them is set (the caller's default applies).
    pub url: Option<String>,
    pub auth: Auth,
}

/// The environment, read through one function so tests can give their
/// own. An empty variable counts as unset, as in the `nats` CLI (clap's
/// `env` would take it as an empty file name).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl AuthArgs {
    /// Resolves the credentials and TLS files, and the URL given `url`
    /// (`--url`/`JETLOCK_URL`, which win). Usage errors (two kinds of
    /// credentials, a certificate without its key, an unreadable file, a
    /// missing context) are [`Exit`] code 2.
    pub fn resolve(&self, url: Option<&str>) -> Result<Target, CliError> {
        self.resolve_with(url, &process_env)
    }

    fn resolve_with(&self, url: Option<&str>, env: Env) -> Result<Target, CliError> {
        let context = match self.context.clone().or_else(|| env("NATS_CONTEXT")) {
            Some(name) => context::load(&name, env).map_err(usage)?,
            None => context::Context::default(),
        };
        let url = url
            .map(str::to_owned)
            .or_else(|| env("NATS_URL"))
            .or(context.url.clone());
        let credentials = match self.given_credentials(env)? {
            Some(credentials) => Some(credentials),
            None => context.credentials().map_err(usage)?,
        };
        let mut auth = Auth::new();
        if let Some(credentials) = credentials {
            check_credential_file(&credentials)?;
            auth = auth.with_credentials(credentials);
        }
        let file =
            |flag: &Option<PathBuf>, var| flag.clone().or_else(|| env(var).map(PathBuf::from));
        let cert = file(&self.tlscert, "NATS_CERT").or(context.cert.clone());
        let key = file(&self.tlskey, "NATS_KEY").or(context.key.clone());
        match (cert, key) {
            (Some(cert), Some(key)) => {
                readable("--tlscert", &cert)?;
                readable("--tlskey", &key)?;
                auth = auth.client_certificate(cert, key);
            }
            (Some(_), None) => {
                return Err(usage(
                    "--tlscert (NATS_CERT) needs its private key: pass --tlskey (NATS_KEY)",
                ))
            }
            (None, Some(_)) => {
                return Err(usage(
                    "--tlskey (NATS_KEY) needs its certificate: pass --tlscert (NATS_CERT)",
                ))
            }
            (None, None) => {}
        }
        if let Some(ca) = file(&self.tlsca, "NATS_CA").or(context.ca.clone()) {
            readable("--tlsca", &ca)?;
            auth = auth.root_certificates(ca);
        }
        Ok(Target { url, auth })
    }

    /// The credentials flags and environment variables name: at most one
    /// kind.
    fn given_credentials(&self, env: Env) -> Result<Option<Credentials>, CliError> {
        let password = self
            .password
            .clone()
            .or_else(|| env("JETLOCK_PASSWORD"))
            .or_else(|| env("NATS_PASSWORD"));
        let token = self
            .token
            .clone()
            .or_else(|| env("JETLOCK_TOKEN"))
            .or_else(|| env("NATS_TOKEN"));
        let user = match (
            self.user.clone().or_else(|| env("JETLOCK_USER")),
            env("NATS_USER"),
        ) {
            (Some(user), _) => Some(user),
            // The nats CLI sends a NATS_USER without a password as a token.
            (None, Some(user)) if password.is_none() && token.is_none() => {
                return self.one_kind(None, Some(user), env)
            }
            (None, user) => user,
        };
        let login = match (user, password) {
            (Some(user), Some(password)) => Some(Login::new(user, password)),
            (Some(user), None) => {
                return Err(usage(format!(
                    "--user {user} needs its password: set JETLOCK_PASSWORD (or pass --password); a token goes in --token or JETLOCK_TOKEN"
                )))
            }
            (None, Some(_)) => {
                return Err(usage(
                    "a password is set (--password, JETLOCK_PASSWORD or NATS_PASSWORD) but no user is: pass --user or set JETLOCK_USER",
                ))
            }
            (None, None) => None,
        };
        self.one_kind(login, token, env)
    }

    fn one_kind(
        &self,
        login: Option<Login>,
        token: Option<String>,
        env: Env,
    ) -> Result<Option<Credentials>, CliError> {
        let mut given: Vec<(&str, Credentials)> = Vec::new();
        if let Some(login) = login {
            given.push(("--user/--password", Credentials::UserPassword(login)));
        }
        if let Some(token) = token {
            given.push(("--token", Credentials::Token(token)));
        }
        if let Some(path) = self
            .creds
            .clone()
            .or_else(|| env("NATS_CREDS").map(PathBuf::from))
        {
            given.push(("--creds", Credentials::CredsFile(path)));
        }
        if let Some(path) = self
            .nkey
            .clone()
            .or_else(|| env("NATS_NKEY").map(PathBuf::from))
        {
            given.push(("--nkey", Credentials::NkeyFile(path)));
        }
        match given.len() {
            0 | 1 => Ok(given.pop().map(|(_, c)| c)),
            _ => {
                let names: Vec<&str> = given.iter().map(|(name, _)| *name).collect();
                Err(usage(format!(
                    "{} are {} ways to log in, and a server takes one: give one (check the environment too: JETLOCK_USER, JETLOCK_PASSWORD, JETLOCK_TOKEN, NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_NKEY)",
                    names.join(" and "),
                    names.len()
                )))
            }
        }
    }
}

fn check_credential_file(credentials: &Credentials) -> Result<(), CliError> {
    match credentials {
        Credentials::CredsFile(path) => readable("--creds", path),
        Credentials::NkeyFile(path) => readable("--nkey", path),
        _ => Ok(()),
    }
}

/// A file named on the command line (or in the environment, or a context)
/// that cannot be opened is a usage error, said on one line.
fn readable(flag: &str, path: &Path) -> Result<(), CliError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| usage(format!("{flag} {}: cannot read it: {e}", path.display())))
}

fn usage(message: impl std::fmt::Display) -> CliError {
    Exit::with(2, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: &AuthArgs, vars: &[(&str, &str)]) -> Result<Target, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| vars.get(name).cloned();
        args.resolve_with(None, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn two_kinds_of_credentials_are_a_usage_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let args = AuthArgs {
            token: Some("t".into()),
            creds: Some(file.path().into()),
            ..AuthArgs::default()
        };
        let e = resolve(&args, &[]).unwrap_err();
        assert!(e.contains("--token and --creds are 2 ways"), "{e}");
        // One from the environment counts too.
        let args = AuthArgs {
            nkey: Some(file.path().into()),
            ..AuthArgs::default()
        };
        let e = resolve(&args, &[("JETLOCK_TOKEN", "t")]).unwrap_err();
        assert!(e.contains("--token and --nkey"), "{e}");
        let path = file.path().to_str().unwrap();
        let e = resolve(
            &AuthArgs::default(),
            &[("NATS_TOKEN", "t"), ("NATS_CREDS", path)],
        );
        assert!(e.unwrap_err().contains("--token and --creds"));
    }

    #[test]
    fn users_need_passwords_except_the_nats_cli_token_user() {
        let args = AuthArgs {
            user: Some("worker".into()),
            ..AuthArgs::default()
        };
        let e = resolve(&args, &[]).unwrap_err();
        assert!(e.contains("needs its password"), "{e}");
        let t = resolve(&args, &[("NATS_PASSWORD", "pw")]).unwrap();
        assert_eq!(
            t.auth.credentials(),
            Some(&Credentials::UserPassword(Login::new("worker", "pw")))
        );
        let t = resolve(&AuthArgs::default(), &[("NATS_USER", "s3cret")]).unwrap();
        assert_eq!(
            t.auth.credentials(),
            Some(&Credentials::Token("s3cret".into()))
        );
    }

    #[test]
    fn certificates_come_with_their_keys_and_files_must_be_readable() {
        let args = AuthArgs {
            tlscert: Some("/nonexistent/cert.pem".into()),
            ..AuthArgs::default()
        };
        assert!(resolve(&args, &[])
            .unwrap_err()
            .contains("needs its private key"));
        let args = AuthArgs {
            tlsca: Some("/nonexistent/ca.pem".into()),
            ..AuthArgs::default()
        };
        let e = resolve(&args, &[]).unwrap_err();
        assert!(
            e.starts_with("--tlsca /nonexistent/ca.pem: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn urls_fall_back_to_nats_url() {
        let t = resolve(&AuthArgs::default(), &[("NATS_URL", "nats://n1:4222")]).unwrap();
        assert_eq!(t.url.as_deref(), Some("nats://n1:4222"));
        let env = |name: &str| (name == "NATS_URL").then(|| "nats://n1:4222".to_owned());
        let t = AuthArgs::default()
            .resolve_with(Some("nats://given:4222"), &env)
            .unwrap();
        assert_eq!(t.url.as_deref(), Some("nats://given:4222"));
        assert_eq!(resolve(&AuthArgs::default(), &[]).unwrap().url, None);
    }
}
