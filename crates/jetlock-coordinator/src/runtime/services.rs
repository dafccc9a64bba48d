//! What the coordinator publishes and answers besides locks: events, live
//! settings from the config bucket, the operators' admin endpoints.

use super::*;
use crate::admin::{SettingSource, SettingView, SettingsView};
use crate::config::{LIVE_KEYS, POLICY_PREFIX};

impl Runtime {
    /// Stamps an event, counts it and publishes it (the event stream keeps
    /// it). A core publish: events never slow a grant down.
    pub(super) async fn publish_event(&mut self, mut event: Event) {
        event.at_ms = unix_ms();
        event.coordinator = self.config.id.clone();
        if let Some(acquired) = event.acquired_ms {
            event.held_ms = Some(event.at_ms.saturating_sub(acquired));
        }
        if let Some(lock) = &event.lock {
            let held = jetlock::client::HeldAs::of(lock);
            if held != jetlock::client::HeldAs::Lock {
                event.of = Some(held.name(lock).to_owned());
                event.part = Some(held.kind().to_owned());
            }
        }
        self.metrics.event(&event);
        debug!(kind = event.kind.as_str(), lock = ?event.lock, session = ?event.session,
               token = ?event.token, "event");
        let body = serde_json::to_vec(&event).expect("events serialize");
        let _ = self.nats.publish(event.subject(), body.into()).await;
    }

    /// A change in the config bucket: lay it over the file's settings and
    /// apply the result, or refuse it and keep what runs.
    pub(super) fn setting(&mut self, entry: kv::Entry, live: bool) {
        let key = entry.key.clone();
        let mut overlay = self.overlay.clone();
        match entry.operation {
            kv::Operation::Put => {
                overlay.insert(key.clone(), entry.value.to_vec());
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                overlay.remove(&key);
            }
        }
        let entries = overlay.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        let mut event = Event::about(EventKind::ConfigChanged, &key);
        match self.base_settings.with_overlay(entries) {
            Ok(settings) => {
                let mut config = self.config.clone();
                settings.apply(&mut config);
                self.engine.set_config(config.engine.clone());
                self.config = config;
                self.overlay = overlay;
                event.value = Some(match entry.operation {
                    kv::Operation::Put => {
                        serde_json::from_slice(&entry.value).unwrap_or(serde_json::Value::Null)
                    }
                    _ => serde_json::Value::Null,
                });
                info!(setting = %key, "config change applied");
            }
            Err(e) => {
                warn!(setting = %key, error = %e, "config change refused; the previous settings stay");
                event.cause = Some(format!("refused: {e}"));
            }
        }
        // One report per change, by the coordinator owning the setting.
        if live && self.engine.ring().owns(&format!("config.{key}")) {
            self.engine_event(event);
        }
    }

    pub(super) fn engine_event(&mut self, event: Event) {
        // Published with the engine's events on the next carry_out.
        self.pending_events.push(event);
    }

    pub(super) async fn admin_locks(&mut self, req: service::Request) {
        let reply = LocksQuery::parse(&req.message.payload).map(|prefix| LocksView {
            coordinator: self.config.id.clone(),
            bucket: Some(self.store.bucket().to_owned()),
            locks: self.engine.locks_view(prefix.as_deref(), Instant::now()),
        });
        respond(req, reply).await;
    }

    pub(super) async fn admin_members(&mut self, req: service::Request) {
        let (coordinators, sessions) = self.engine.members_view(Instant::now());
        let view = MembersView {
            coordinator: self.config.id.clone(),
            now_ms: unix_ms(),
            coordinators,
            sessions,
        };
        respond(req, Ok(view)).await;
    }
}

impl Runtime {
    /// The live settings as applied now, each with where it came from:
    /// the config bucket when it sets the key, else what the coordinator
    /// was started with.
    pub(super) async fn admin_settings(&mut self, req: service::Request) {
        let applied = LiveSettings::of(&self.config);
        let values = serde_json::to_value(&applied).expect("settings serialize");
        let source = |key: &str, bucket_key: &str| {
            if self.overlay.contains_key(bucket_key) {
                SettingSource::Bucket
            } else {
                self.config
                    .setting_sources
                    .get(key)
                    .copied()
                    .unwrap_or(SettingSource::Default)
            }
        };
        let mut settings: Vec<SettingView> = LIVE_KEYS
            .iter()
            .map(|&key| SettingView {
                key: key.to_owned(),
                value: values[key].clone(),
                source: source(key, key),
            })
            .collect();
        for (prefix, policy) in &applied.policies {
            let key = format!("{POLICY_PREFIX}{prefix}");
            let bucket_key = match LockName::new(prefix) {
                Ok(name) => format!("{POLICY_PREFIX}{}", name.key()),
                Err(_) => key.clone(),
            };
            settings.push(SettingView {
                value: serde_json::to_value(policy).expect("policies serialize"),
                source: source(&key, &bucket_key),
                key,
            });
        }
        let view = SettingsView {
            coordinator: self.config.id.clone(),
            settings,
        };
        respond(req, Ok(view)).await;
    }
}

/// Answers a service request with JSON, or a service error.
async fn respond<T: serde::Serialize>(req: service::Request, reply: Result<T, String>) {
    let answer = match reply {
        Ok(v) => Ok(serde_json::to_vec(&v).expect("views serialize").into()),
        Err(status) => Err(service::error::Error { status, code: 400 }),
    };
    if let Err(e) = req.respond(answer).await {
        debug!(error = %e, "could not answer an admin request");
    }
}
