//! The `nats` CLI's contexts: `nats context save NAME` writes
//! `$XDG_CONFIG_HOME/nats/context/NAME.json` (`~/.config/nats/context/`
//! without `XDG_CONFIG_HOME`), and `--context NAME` reads it here, so an
//! operator who set up the `nats` CLI need not repeat its settings. The
//! fields read are `url`, `user`, `password`, `token`, `creds`, `nkey`,
//! `cert`, `key` and `ca`; the others (JetStream domain, inbox prefix, ...)
//! are not used by jetlock and ignored.

use super::Env;
use jetlock::connect::{Credentials, Login};
use std::path::PathBuf;

/// What jetlock reads of a context; empty strings count as unset, as the
/// `nats` CLI writes every field.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Context {
    pub url: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    nsc: Option<String>,
    #[serde(skip)]
    name: String,
}

/// Reads the context `name`; errors are one line, for a person.
pub fn load(name: &str, env: Env) -> Result<Context, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!(
            "--context {name:?}: not a context name (the file name under nats/context/, without .json)"
        ));
    }
    let dir = match (env("XDG_CONFIG_HOME"), env("HOME")) {
        (Some(config), _) => PathBuf::from(config),
        (None, Some(home)) => PathBuf::from(home).join(".config"),
        (None, None) => {
            return Err(format!(
                "--context {name}: neither XDG_CONFIG_HOME nor HOME is set"
            ))
        }
    };
    let path = dir.join("nats/context").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("--context {name}: cannot read {}: {e}", path.display()))?;
    let mut context: Context = serde_json::from_str(&text)
        .map_err(|e| format!("--context {name}: {} is not a context: {e}", path.display()))?;
    context.name = name.to_owned();
    let home = env("HOME");
    for field in [
        &mut context.url,
        &mut context.user,
        &mut context.password,
        &mut context.token,
        &mut context.nsc,
    ] {
        if field.as_deref() == Some("") {
            *field = None;
        }
    }
    for path in [
        &mut context.creds,
        &mut context.nkey,
        &mut context.cert,
        &mut context.key,
        &mut context.ca,
    ] {
        *path = path
            .take()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| expand_home(p, home.as_deref()));
    }
    Ok(context)
}

/// `~/x` as the `nats` CLI writes paths, under `home`.
fn expand_home(path: PathBuf, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

impl Context {
    /// The context's credentials: at most one kind, as the `nats` CLI sends
    /// them (a user without a password is a token).
    pub fn credentials(&self) -> Result<Option<Credentials>, String> {
        if self.nsc.is_some() {
            return Err(format!(
                "--context {}: it takes its credentials from nsc, which jetlock does not read: export a creds file (`nsc generate creds`) and set `creds` in the context",
                self.name
            ));
        }
        let mut given = Vec::new();
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                given.push(Credentials::UserPassword(Login::new(user, password)))
            }
            (Some(token), None) => given.push(Credentials::Token(token.clone())),
            (None, Some(_)) => {
                return Err(format!(
                    "--context {}: it has a password but no user",
                    self.name
                ))
            }
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            given.push(Credentials::Token(token.clone()));
        }
        if let Some(creds) = &self.creds {
            given.push(Credentials::CredsFile(creds.clone()));
        }
        if let Some(nkey) = &self.nkey {
            given.push(Credentials::NkeyFile(nkey.clone()));
        }
        if given.len() > 1 {
            return Err(format!(
                "--context {}: it names {} kinds of credentials (user, token, creds, nkey); keep one",
                self.name,
                given.len()
            ));
        }
        Ok(given.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, json: &str) {
        let contexts = dir.join("nats/context");
        std::fs::create_dir_all(&contexts).unwrap();
        std::fs::write(contexts.join(format!("{name}.json")), json).unwrap();
    }

    #[test]
    fn a_saved_context_is_read_with_home_expanded_and_empty_fields_unset() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().to_str().unwrap().to_owned();
        write(
            dir.path(),
            "prod",
            r#"{"description":"","url":"nats://n1:4222","user":"","password":"",
                "creds":"~/prod.creds","nkey":"","cert":"","key":"","ca":"/etc/ca.pem",
                "nsc":"","jetstream_domain":"","inbox_prefix":""}"#,
        );
        let env = |name: &str| match name {
            "XDG_CONFIG_HOME" => Some(config.clone()),
            "HOME" => Some("/home/op".to_owned()),
            _ => None,
        };
        let context = load("prod", &env).unwrap();
        assert_eq!(context.url.as_deref(), Some("nats://n1:4222"));
        assert_eq!(context.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(context.cert, None);
        assert_eq!(
            context.credentials().unwrap(),
            Some(Credentials::CredsFile("/home/op/prod.creds".into()))
        );
        let missing = load("staging", &env).unwrap_err();
        assert!(
            missing.starts_with("--context staging: cannot read"),
            "{missing}"
        );
        assert!(load("../prod", &env).is_err());
    }

    #[test]
    fn two_kinds_in_one_context_are_refused() {
        let context: Context = serde_json::from_str(r#"{"token":"t","nkey":"/k.nk"}"#).unwrap();
        assert!(context.credentials().unwrap_err().contains("2 kinds"));
        let token_user: Context = serde_json::from_str(r#"{"user":"t0k"}"#).unwrap();
        assert_eq!(
            token_user.credentials().unwrap(),
            Some(Credentials::Token("t0k".into()))
        );
    }
}
