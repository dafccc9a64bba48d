//! The coordinator's configuration: one struct, read from a TOML file, then
//! overridden by `JETLOCK_*` environment variables and flags (see
//! `jetlock serve --help`). Every default is here and in
//! `docs/OPERATIONS.md`; [`Config::validate`] refuses nonsense at start.

use crate::coordinator::{CoordinatorConfig, EngineConfig};
use crate::protocol::Limits;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// `jetlock serve` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// The locks bucket.
    pub bucket: String,
    /// Replicas of the bucket and request stream when the coordinator
    /// creates them (3 in production).
    pub replicas: usize,
    /// This coordinator's id (default: random per process).
    pub id: Option<String>,
    /// How often the coordinator heartbeats.
    pub heartbeat_ms: u64,
    /// A coordinator silent this long is presumed dead; its keys move.
    pub coordinator_timeout_ms: u64,
    /// A session silent this long is dead and its locks move on, unless
    /// the session asks for another timeout in its heartbeats.
    pub session_timeout_ms: u64,
    /// Bounds on what a session may ask for.
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    /// Lease of a JSON acquire that does not name one.
    pub default_ttl_ms: u64,
    /// Longest wait an acquire may ask for.
    pub max_wait_ms: u64,
    /// How long a holder asked to give way to a preempting request has.
    pub preempt_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "nats://127.0.0.1:4222".into(),
            bucket: crate::bucket::DEFAULT_BUCKET.into(),
            replicas: 1,
            id: None,
            heartbeat_ms: 250,
            coordinator_timeout_ms: 1500,
            session_timeout_ms: 900,
            min_session_timeout_ms: 300,
            max_session_timeout_ms: 300_000,
            default_ttl_ms: 10_000,
            max_wait_ms: 15 * 60 * 1000,
            preempt_grace_ms: 5000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
}

impl Config {
    /// Reads a TOML file; fields it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if !(1..=5).contains(&self.replicas) {
            return invalid("replicas", format!("{} is not 1 to 5", self.replicas));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.coordinator_timeout_ms {
            return invalid(
                "coordinator_timeout_ms",
                format!(
                    "{} must be at least three heartbeats ({} ms each)",
                    self.coordinator_timeout_ms, self.heartbeat_ms
                ),
            );
        }
        if self.min_session_timeout_ms < 100
            || self.min_session_timeout_ms > self.session_timeout_ms
            || self.session_timeout_ms > self.max_session_timeout_ms
        {
            return invalid(
                "session_timeout_ms",
                format!(
                    "need 100 <= min ({}) <= default ({}) <= max ({})",
                    self.min_session_timeout_ms,
                    self.session_timeout_ms,
                    self.max_session_timeout_ms
                ),
            );
        }
        if !(1000..=24 * 3_600_000).contains(&self.default_ttl_ms) {
            return invalid(
                "default_ttl_ms",
                format!("{} is not 1 s to 24 h", self.default_ttl_ms),
            );
        }
        let max_wait = crate::bucket::REQUEST_MAX_AGE.as_millis() as u64 / 2;
        if self.max_wait_ms > max_wait {
            return invalid(
                "max_wait_ms",
                format!(
                    "{} is above {max_wait} (half the request stream's max age)",
                    self.max_wait_ms
                ),
            );
        }
        if let Some(id) = &self.id {
            if crate::protocol::check_session(id).is_err() || id.contains('.') {
                return invalid("id", format!("{id:?} must be one token of A-Z a-z 0-9 _ -"));
            }
        }
        Ok(())
    }

    /// The coordinator settings this configuration describes.
    pub fn coordinator(&self) -> CoordinatorConfig {
        let ms = Duration::from_millis;
        let mut c = CoordinatorConfig {
            bucket: self.bucket.clone(),
            replicas: self.replicas,
            heartbeat_interval: ms(self.heartbeat_ms),
            engine: EngineConfig {
                limits: Limits {
                    default_ttl_ms: self.default_ttl_ms,
                    max_wait_ms: self.max_wait_ms,
                    ..Limits::default()
                },
                preempt_grace: ms(self.preempt_grace_ms),
                coordinator_timeout: ms(self.coordinator_timeout_ms),
                session_timeout: ms(self.session_timeout_ms),
                min_session_timeout: ms(self.min_session_timeout_ms),
                max_session_timeout: ms(self.max_session_timeout_ms),
                ..EngineConfig::default()
            },
            ..CoordinatorConfig::default()
        };
        if let Some(id) = &self.id {
            c.id = id.clone();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_files_override_them() {
        Config::default().validate().unwrap();
        let c: Config = toml::from_str("replicas = 3\nsession_timeout_ms = 2000").unwrap();
        assert_eq!(c.replicas, 3);
        assert_eq!(c.session_timeout_ms, 2000);
        assert_eq!(c.heartbeat_ms, 250);
        c.validate().unwrap();
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        assert!(toml::from_str::<Config>("replica = 3").is_err());
        let c = Config {
            coordinator_timeout_ms: 500,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("coordinator_timeout_ms"), "{e}");
        let c = Config {
            id: Some("a.b".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
