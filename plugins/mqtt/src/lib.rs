//! # polyhub-mqtt
//!
//! The `type = "mqtt"` adapter. Two ways to plug MQTT into the hub:
//!
//! * `url = "mqtt://user:pass@host:1883"` (or `mqtts://` with `ca_file`):
//!   the adapter is an MQTT 5 client (rumqttc) of an external broker such as
//!   Mosquitto. It subscribes with no-local, so what it publishes never comes
//!   back into the hub; it reconnects with exponential backoff and keeps QoS 1
//!   messages from the hub in a bounded buffer (`buffer`) until the broker is
//!   back.
//! * `listen = "0.0.0.0:1883"`: the adapter runs an embedded broker (rumqttd)
//!   in the hub process; MQTT 3.1.1 devices connect to it directly (optional
//!   `users` for password login). The adapter is attached to it through
//!   rumqttd's in-process link. rumqttd has no no-local, so the adapter
//!   remembers what it published and skips that echo ([`echo_filter`]).
//!
//! `subscribe` (MQTT → hub) and `forward` (hub → MQTT) are topic-filter
//! lists, default `["#"]`. Topics map unchanged; QoS and retain are carried
//! both ways, and with an external MQTT 5 broker also the content type, user
//! properties, response topic and correlation data. (The embedded broker
//! hands live messages to subscribers with retain cleared, as MQTT says, so
//! only its retained-on-subscribe messages reach the hub flagged retained.)
//!
//! Counters beyond the hub's own: `invalid_messages` (publishes whose topic is
//! not a valid UTF-8 topic name), `buffer_overflow` (hub messages dropped
//! because the disconnected buffer was full), plus `errors`, `dropped` and
//! `reconnects`.
//!
//! Limits: an embedded broker's router thread (rumqttd runs its router on a
//! thread that has no stop signal) stays parked after the adapter stops; its
//! listeners and connections are closed. Each topic filter's in-memory log in
//! the embedded broker is capped at 4 × 4 MiB.

mod adapter;
mod broker;
mod client;
pub mod config;
pub mod convert;
pub mod echo_filter;
mod error;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use config::{MqttConfig, Settings};
pub use error::MqttError;

/// Builds `type = "mqtt"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "mqtt"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let settings = Settings::from_config(config)?;
        Ok(Box::new(adapter::MqttAdapter::new(settings)))
    }
}
