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
//!   in the hub process; devices connect to it directly (MQTT 3.1.1 on
//!   `listen`, MQTT 5 on the optional `listen_v5`). The adapter is attached to
//!   it through rumqttd's in-process link; its own publishes carry a user
//!   property `x-polyhub-origin` by which it recognises and skips their echo.
//!
//! `subscribe` (MQTT → hub) and `forward` (hub → MQTT) are topic-filter
//! lists, default `["#"]`. Topics map unchanged; QoS, retain, and the MQTT 5
//! content type, user properties, response topic and correlation data are
//! carried both ways (the embedded broker hands live messages to its
//! subscribers with retain cleared, as MQTT says, so only its retained-on-
//! subscribe messages reach the hub flagged retained).
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
