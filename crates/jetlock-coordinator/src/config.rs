//! The coordinator's configuration: one struct, read from a TOML file, then
//! overridden by `JETLOCK_*` environment variables and flags (see
//! `jetlock serve --help`). Every default is here and in
//! `docs/OPERATIONS.md`; [`Config::validate`] refuses nonsense at start.
//! Durations are written with units (`default_ttl = "10s"`) or, under
//! their `_ms` names, as integers of ms (`default_ttl_ms = 10000`).

use crate::admin::SettingSource;
use crate::duration;
use crate::engine::EngineConfig;
use crate::limits::PrefixLimits;
use jetlock::bucket::{self, DEFAULT_BUCKET};
use jetlock::name::LockName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// How many buckets the locks spread over when the coordinator creates
    /// the deployment (`jetlock::shards`; fixed after).
    pub buckets: u32,
    /// How many partitions the requests are split into when the coordinator
    /// creates the deployment (`jetlock::shards`; 1: not split; fixed
    /// after).
    pub partitions: u32,
    /// This coordinator's id (default: random per process).
    pub id: Option<String>,
    /// How often the coordinator heartbeats.
    #[serde(alias = "heartbeat", deserialize_with = "duration::ms")]
    pub heartbeat_ms: u64,
    /// A coordinator silent this long is presumed dead; its keys move.
    #[serde(alias = "coordinator_timeout", deserialize_with = "duration::ms")]
    pub coordinator_timeout_ms: u64,
    /// A session silent this long is dead and its locks move on, unless
    /// the session asks for another timeout in its heartbeats.
    #[serde(alias = "session_timeout", deserialize_with = "duration::ms")]
    pub session_timeout_ms: u64,
    /// Bounds on what a session may ask for. A session first seen without
    /// a timeout (through a request, or a heartbeat that names none) gets
    /// the maximum until a heartbeat names one.
    #[serde(alias = "min_session_timeout", deserialize_with = "duration::ms")]
    pub min_session_timeout_ms: u64,
    #[serde(alias = "max_session_timeout", deserialize_with = "duration::ms")]
    pub max_session_timeout_ms: u64,
    /// After the server reports a session's connection closed by the
    /// client, how long it has to heartbeat on a new connection before it
    /// is dead: a reconnect is not a death, while a holder whose process
    /// exited is handed on after this.
    #[serde(alias = "reconnect_grace", deserialize_with = "duration::ms")]
    pub reconnect_grace_ms: u64,
    /// Lease of a JSON acquire that does not name one.
    #[serde(alias = "default_ttl", deserialize_with = "duration::ms")]
    pub default_ttl_ms: u64,
    /// Longest wait an acquire may ask for.
    #[serde(alias = "max_wait", deserialize_with = "duration::ms")]
    pub max_wait_ms: u64,
    /// How long a holder asked to give way to a preempting request has.
    #[serde(alias = "preempt_grace", deserialize_with = "duration::ms")]
    pub preempt_grace_ms: u64,
    /// Longest lease an acquire may ask for.
    #[serde(alias = "max_ttl", deserialize_with = "duration::ms")]
    pub max_ttl_ms: u64,
    /// Most waiters per lock (0: no limit); more are refused `queue_full`.
    pub max_waiters: u32,
    /// Most locks one session may hold (0: no limit): `too_many_locks`.
    pub max_locks_per_session: u32,
    /// Most acquires one session may have waiting (0: no limit):
    /// `too_many_waits`.
    pub max_waits_per_session: u32,
    /// Most live sessions under one prefix (a session id without its last
    /// token; 0: no limit): `too_many_sessions`.
    pub max_sessions_per_prefix: u32,
    /// Most requests the request stream stores at once when a coordinator
    /// creates it; at the cap the server refuses new ones.
    pub request_max_msgs: i64,
    /// Most bytes the request stream stores at once (same rule).
    pub request_max_bytes: i64,
    /// Per-prefix policies: `[policies."account"]` applies to `account:42`.
    pub policies: BTreeMap<String, PrefixLimits>,
    /// Prometheus endpoint (`host:port`, `off` to disable).
    pub metrics_addr: String,
    /// How long the event stream keeps events, in seconds.
    #[serde(alias = "event_max_age", deserialize_with = "duration::secs")]
    pub event_max_age_secs: u64,
    /// Most bytes the event stream keeps (oldest go first).
    pub event_max_bytes: i64,
}

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Unique id of this coordinator (default: a random one).
    pub id: String,
    pub bucket: String,
    /// Create the bucket and the request stream with this many replicas
    /// when they do not exist.
    pub replicas: usize,
    /// Spread the locks over this many buckets when creating them.
    pub buckets: u32,
    /// Split the requests into this many partitions when creating the
    /// deployment.
    pub partitions: u32,
    /// How often this coordinator heartbeats.
    pub heartbeat_interval: Duration,
    pub engine: EngineConfig,
    /// Serve Prometheus metrics here (`127.0.0.1:0` picks a port).
    pub metrics_addr: Option<String>,
    /// Retention of the event stream when this coordinator creates it.
    pub event_max_age: Duration,
    pub event_max_bytes: i64,
    /// Caps of the request stream when this coordinator creates it.
    pub request_stream: bucket::RequestStreamLimits,
    /// Where the live settings that are not compiled defaults came from
    /// (file, env, flag), by key (`policy.<prefix>` for a policy); shown by
    /// `jetlock.admin.settings`.
    pub setting_sources: BTreeMap<String, SettingSource>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            id: format!("c-{}", nuid::next()),
            bucket: DEFAULT_BUCKET.to_owned(),
            replicas: 1,
            buckets: 1,
            partitions: jetlock::shards::DEFAULT_PARTITIONS,
            heartbeat_interval: Duration::from_millis(250),
            engine: EngineConfig::default(),
            metrics_addr: None,
            event_max_age: jetlock::events::DEFAULT_EVENT_MAX_AGE,
            event_max_bytes: jetlock::events::DEFAULT_EVENT_MAX_BYTES,
            request_stream: bucket::RequestStreamLimits::default(),
            setting_sources: BTreeMap::new(),
        }
    }
}

/// The settings coordinators apply while running: the file's values,
/// overridden by the config bucket (`jetlock config set`). The others
/// (url, bucket, id, ...) need a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveSettings {
    pub heartbeat_ms: u64,
    pub coordinator_timeout_ms: u64,
    pub session_timeout_ms: u64,
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    pub reconnect_grace_ms: u64,
    pub default_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_wait_ms: u64,
    pub preempt_grace_ms: u64,
    pub max_waiters: u32,
    pub max_locks_per_session: u32,
    pub max_waits_per_session: u32,
    /// Absent from settings written before it existed: the default.
    #[serde(default = "default_max_sessions_per_prefix")]
    pub max_sessions_per_prefix: u32,
    #[serde(default)]
    pub policies: BTreeMap<String, PrefixLimits>,
}

/// Config-bucket keys of per-prefix policies: `policy.<prefix key>`.
pub const POLICY_PREFIX: &str = "policy.";

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "nats://127.0.0.1:4222".into(),
            bucket: bucket::DEFAULT_BUCKET.into(),
            replicas: 1,
            buckets: 1,
            partitions: jetlock::shards::DEFAULT_PARTITIONS,
            id: None,
            heartbeat_ms: 250,
            coordinator_timeout_ms: 1500,
            session_timeout_ms: 900,
            min_session_timeout_ms: 300,
            max_session_timeout_ms: 300_000,
            reconnect_grace_ms: 900,
            default_ttl_ms: 10_000,
            max_wait_ms: 15 * 60 * 1000,
            preempt_grace_ms: 5000,
            max_ttl_ms: 24 * 3_600_000,
            // Enough for any real queue (a lock with 10 000 waiters is held
            // for hours by FIFO), small enough that one key cannot take a
            // coordinator's memory.
            max_waiters: 10_000,
            max_locks_per_session: 10_000,
            max_waits_per_session: 20_000,
            max_sessions_per_prefix: 10_000,
            request_max_msgs: bucket::RequestStreamLimits::default().max_msgs,
            request_max_bytes: bucket::RequestStreamLimits::default().max_bytes,
            policies: BTreeMap::new(),
            metrics_addr: "127.0.0.1:9464".into(),
            event_max_age_secs: jetlock::events::DEFAULT_EVENT_MAX_AGE.as_secs(),
            event_max_bytes: jetlock::events::DEFAULT_EVENT_MAX_BYTES,
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

    /// Reads a TOML file as [`Config::from_file`] does, and names the live
    /// settings it sets (`policy.<prefix>` for each policy), by their
    /// canonical keys (`default_ttl` is `default_ttl_ms`).
    pub fn from_file_noting(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let config = Config::from_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut keys = Vec::new();
        for (key, value) in &table {
            if key == "policies" {
                let prefixes = value.as_table().into_iter().flat_map(|t| t.keys());
                keys.extend(prefixes.map(|p| format!("{POLICY_PREFIX}{p}")));
            } else if LIVE_KEYS.contains(&key.as_str()) {
                keys.push(key.clone());
            } else if LIVE_KEYS.contains(&format!("{key}_ms").as_str()) {
                keys.push(format!("{key}_ms"));
            }
        }
        Ok((config, keys))
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if !(1..=5).contains(&self.replicas) {
            return invalid("replicas", format!("{} is not 1 to 5", self.replicas));
        }
        if !(1..=jetlock::shards::MAX_BUCKETS).contains(&self.buckets) {
            return invalid(
                "buckets",
                format!(
                    "{} is not 1 to {}",
                    self.buckets,
                    jetlock::shards::MAX_BUCKETS
                ),
            );
        }
        if !(1..=jetlock::shards::MAX_PARTITIONS).contains(&self.partitions) {
            return invalid(
                "partitions",
                format!(
                    "{} is not 1 to {}",
                    self.partitions,
                    jetlock::shards::MAX_PARTITIONS
                ),
            );
        }
        if let Some(id) = &self.id {
            if jetlock::protocol::check_session(id).is_err() || id.contains('.') {
                return invalid("id", format!("{id:?} must be one token of A-Z a-z 0-9 _ -"));
            }
        }
        if self.metrics_addr != "off" && self.metrics_addr.parse::<std::net::SocketAddr>().is_err()
        {
            return invalid(
                "metrics_addr",
                format!("{:?} is not host:port or off", self.metrics_addr),
            );
        }
        if self.request_max_msgs < 1 || self.request_max_bytes < 1 << 20 {
            return invalid(
                "request_max_msgs",
                "the request stream must keep at least 1 request and 1 MiB".into(),
            );
        }
        if self.event_max_age_secs == 0 || self.event_max_bytes < 1 << 20 {
            return invalid(
                "event_max_age_secs",
                "events must be kept at least 1 s and 1 MiB".into(),
            );
        }
        self.live().validate()
    }

    /// The part of the settings that can change while running.
    pub fn live(&self) -> LiveSettings {
        LiveSettings {
            heartbeat_ms: self.heartbeat_ms,
            coordinator_timeout_ms: self.coordinator_timeout_ms,
            session_timeout_ms: self.session_timeout_ms,
            min_session_timeout_ms: self.min_session_timeout_ms,
            max_session_timeout_ms: self.max_session_timeout_ms,
            reconnect_grace_ms: self.reconnect_grace_ms,
            default_ttl_ms: self.default_ttl_ms,
            max_ttl_ms: self.max_ttl_ms,
            max_wait_ms: self.max_wait_ms,
            preempt_grace_ms: self.preempt_grace_ms,
            max_waiters: self.max_waiters,
            max_locks_per_session: self.max_locks_per_session,
            max_waits_per_session: self.max_waits_per_session,
            max_sessions_per_prefix: self.max_sessions_per_prefix,
            policies: self.policies.clone(),
        }
    }

    /// The coordinator settings this configuration describes.
    pub fn coordinator(&self) -> CoordinatorConfig {
        let mut c = CoordinatorConfig {
            bucket: self.bucket.clone(),
            replicas: self.replicas,
            buckets: self.buckets,
            partitions: self.partitions,
            metrics_addr: (self.metrics_addr != "off").then(|| self.metrics_addr.clone()),
            event_max_age: Duration::from_secs(self.event_max_age_secs),
            event_max_bytes: self.event_max_bytes,
            request_stream: bucket::RequestStreamLimits {
                max_msgs: self.request_max_msgs,
                max_bytes: self.request_max_bytes,
            },
            ..CoordinatorConfig::default()
        };
        self.live().apply(&mut c);
        if let Some(id) = &self.id {
            c.id = id.clone();
        }
        c
    }
}

impl LiveSettings {
    /// The live settings a coordinator runs with.
    pub fn of(c: &CoordinatorConfig) -> LiveSettings {
        let ms = |d: Duration| d.as_millis() as u64;
        let e = &c.engine;
        LiveSettings {
            heartbeat_ms: ms(c.heartbeat_interval),
            coordinator_timeout_ms: ms(e.coordinator_timeout),
            session_timeout_ms: ms(e.session_timeout),
            min_session_timeout_ms: ms(e.min_session_timeout),
            max_session_timeout_ms: ms(e.max_session_timeout),
            reconnect_grace_ms: ms(e.reconnect_grace),
            default_ttl_ms: e.limits.default_ttl_ms,
            max_ttl_ms: e.limits.max_ttl_ms,
            max_wait_ms: e.limits.max_wait_ms,
            preempt_grace_ms: ms(e.preempt_grace),
            max_waiters: e.max_waiters,
            max_locks_per_session: e.max_locks_per_session,
            max_waits_per_session: e.max_waits_per_session,
            max_sessions_per_prefix: e.max_sessions_per_prefix,
            policies: e
                .policies
                .iter()
                .map(|(p, policy)| (p.as_str().to_owned(), policy.clone()))
                .collect(),
        }
    }

    /// Sets these values in a coordinator's settings.
    pub fn apply(&self, c: &mut CoordinatorConfig) {
        let ms = Duration::from_millis;
        c.heartbeat_interval = ms(self.heartbeat_ms);
        let e = &mut c.engine;
        e.limits.default_ttl_ms = self.default_ttl_ms;
        e.limits.max_ttl_ms = self.max_ttl_ms;
        e.limits.max_wait_ms = self.max_wait_ms;
        e.preempt_grace = ms(self.preempt_grace_ms);
        e.coordinator_timeout = ms(self.coordinator_timeout_ms);
        e.session_timeout = ms(self.session_timeout_ms);
        e.min_session_timeout = ms(self.min_session_timeout_ms);
        e.max_session_timeout = ms(self.max_session_timeout_ms);
        e.reconnect_grace = ms(self.reconnect_grace_ms);
        e.max_waiters = self.max_waiters;
        e.max_locks_per_session = self.max_locks_per_session;
        e.max_waits_per_session = self.max_waits_per_session;
        e.max_sessions_per_prefix = self.max_sessions_per_prefix;
        e.policies = self
            .policies
            .iter()
            .filter_map(|(p, policy)| Some((LockName::new(p).ok()?, policy.clone())))
            .collect();
    }

    /// These settings with the config bucket's entries (`key` → JSON
    /// value) laid over them, checked.
    pub fn with_overlay<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<LiveSettings, ConfigError> {
        let mut value = serde_json::to_value(self).expect("settings serialize");
        for (key, raw) in entries {
            let v: serde_json::Value =
                serde_json::from_slice(raw).map_err(|e| ConfigError::Invalid {
                    field: "value",
                    why: format!("{key}: {e} (values are JSON: 5000, {{\"max_ttl_ms\": 60000}})"),
                })?;
            let obj = value.as_object_mut().expect("settings are an object");
            match key.strip_prefix(POLICY_PREFIX) {
                Some(prefix_key) => {
                    let name =
                        LockName::from_key(prefix_key).map_err(|e| ConfigError::Invalid {
                            field: "policy",
                            why: format!("{key}: {e}"),
                        })?;
                    obj["policies"]
                        .as_object_mut()
                        .expect("policies are a map")
                        .insert(name.as_str().to_owned(), v);
                }
                None if obj.contains_key(key) && key != "policies" => {
                    obj.insert(key.to_owned(), v);
                }
                None => {
                    return Err(ConfigError::Invalid {
                        field: "key",
                        why: format!(
                            "{key:?} is not a live setting (one of: {}, or policy.<prefix>)",
                            LIVE_KEYS.join(", ")
                        ),
                    })
                }
            }
        }
        let live: LiveSettings =
            serde_json::from_value(value).map_err(|e| ConfigError::Invalid {
                field: "value",
                why: e.to_string(),
            })?;
        live.validate()?;
        Ok(live)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.coordinator_timeout_ms {
            return invalid(
                "coordinator_timeout_ms",
                format!(
                    "{} must be at least three heartbeats ({} ms each)",
                    self.coordinator_timeout_ms, self.heartbeat_ms
                ),
            );
        }
        // Below 300 ms, a loss of hearing shorter than the coordinator
        // notices (hearing.rs: MAX_GAP) could hide a death.
        if self.min_session_timeout_ms < 300
            || self.min_session_timeout_ms > self.session_timeout_ms
            || self.session_timeout_ms > self.max_session_timeout_ms
        {
            return invalid(
                "session_timeout_ms",
                format!(
                    "need 300 <= min ({}) <= default ({}) <= max ({})",
                    self.min_session_timeout_ms,
                    self.session_timeout_ms,
                    self.max_session_timeout_ms
                ),
            );
        }
        let grace_min = jetlock::client::belief::MIN_RECONNECT_GRACE.as_millis() as u64;
        if !(grace_min..=60_000).contains(&self.reconnect_grace_ms) {
            // Clients assume the smallest until told: a smaller one could
            // hand on a reconnecting client's locks while it still believes.
            return invalid(
                "reconnect_grace_ms",
                format!("{} is not {grace_min} ms to 60 s", self.reconnect_grace_ms),
            );
        }
        if !(1000..=24 * 3_600_000).contains(&self.max_ttl_ms) {
            return invalid(
                "max_ttl_ms",
                format!("{} is not 1 s to 24 h", self.max_ttl_ms),
            );
        }
        if !(1000..=self.max_ttl_ms).contains(&self.default_ttl_ms) {
            return invalid(
                "default_ttl_ms",
                format!("{} is not 1 s to max_ttl_ms", self.default_ttl_ms),
            );
        }
        if self.preempt_grace_ms > 60_000 {
            return invalid(
                "preempt_grace_ms",
                format!("{} is above 60 s", self.preempt_grace_ms),
            );
        }
        for (prefix, policy) in &self.policies {
            if let Err(e) = LockName::new(prefix) {
                return invalid("policies", format!("{prefix:?}: {e}"));
            }
            if policy.max_ttl_ms.is_some_and(|t| t < 1000) {
                return invalid("policies", format!("{prefix}: max_ttl_ms is below 1 s"));
            }
        }
        let max_wait = bucket::REQUEST_MAX_AGE.as_millis() as u64 / 2;
        if self.max_wait_ms > max_wait {
            return invalid(
                "max_wait_ms",
                format!(
                    "{} is above {max_wait} (half the request stream's max age)",
                    self.max_wait_ms
                ),
            );
        }
        Ok(())
    }
}

/// The keys of the config bucket that are live settings (besides
/// `policy.<prefix>`).
pub const LIVE_KEYS: [&str; 14] = [
    "heartbeat_ms",
    "coordinator_timeout_ms",
    "session_timeout_ms",
    "min_session_timeout_ms",
    "max_session_timeout_ms",
    "reconnect_grace_ms",
    "default_ttl_ms",
    "max_ttl_ms",
    "max_wait_ms",
    "preempt_grace_ms",
    "max_waiters",
    "max_locks_per_session",
    "max_waits_per_session",
    "max_sessions_per_prefix",
];

fn default_max_sessions_per_prefix() -> u32 {
    EngineConfig::default().max_sessions_per_prefix
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
    fn durations_take_units_and_old_ms_integers_still_count() {
        let c: Config = toml::from_str(
            "default_ttl = \"20s\"\nheartbeat_ms = \"250ms\"\nmax_wait_ms = 60000\nevent_max_age = \"2h\"",
        )
        .unwrap();
        assert_eq!(c.default_ttl_ms, 20_000);
        assert_eq!(c.heartbeat_ms, 250);
        assert_eq!(c.max_wait_ms, 60_000);
        assert_eq!(c.event_max_age_secs, 7200);
        assert!(toml::from_str::<Config>("default_ttl = \"soon\"").is_err());
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
