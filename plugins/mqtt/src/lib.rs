//! # polyhub-mqtt
//!
//! The `type = "mqtt"` adapter. Two ways to plug MQTT into the hub:
//!
//! * `url = "mqtt://user:pass@host:1883"` (or `mqtts://` with `ca_file`):
//!   the adapter is an MQTT 5 client (rumqttc) of an external broker such as
//!   Mosquitto. It subscribes with no-local, so what it publishes never comes
//!   back into the hub; it reconnects with exponential backoff and keeps QoS 1
//!   messages from the hub in a bounded buffer (`buffer`) until the broker is
//!   back. It acknowledges a broker's QoS 1/2 message once the hub took it
//!   (v5 reason 0x97 quota exceeded when the hub refused a retained value).
//!   A broker that only speaks MQTT 3.1.1 is refused with an error that says
//!   so, rather than bridged without no-local: without it the hub's own
//!   publishes would come back (use the embedded broker for 3.1.1 devices).
//! * `listen = "0.0.0.0:1883"`: the adapter runs an embedded broker (rumqttd)
//!   in the hub process; MQTT 3.1.1 devices connect to it directly (optional
//!   `users` for password login). The adapter is attached to it through
//!   rumqttd's in-process link. rumqttd has no no-local, so the adapter marks
//!   each of its publishes with a user property and skips what comes back
//!   with that mark: exact however many are in flight, where a memory of
//!   what was sent overflowed into duplicates. rumqttd also forwards at the
//!   subscription's QoS, so its codec marks each device publish with the QoS
//!   it was sent with; both marks are stripped before a device sees them.
//!
//! `subscribe` (MQTT → hub) and `forward` (hub → MQTT) are topic-filter
//! lists, default `["#"]`. Topics map unchanged; QoS and retain are carried
//! both ways, and with an external MQTT 5 broker also the content type, user
//! properties, response topic and correlation data. (The embedded broker
//! hands live messages to subscribers with retain cleared, as MQTT says, so
//! only its retained-on-subscribe messages reach the hub flagged retained.)
//!
//! Refusals are counted in `polyhub_rejected_total{reason}`: `invalid_topic`
//! (a publish whose topic is not a valid UTF-8 topic name), `malformed_packet`
//! and `payload_too_large` (bytes the embedded broker's codec refused; the
//! device is disconnected), `quota_exceeded` (a retained publish the hub
//! refused because its store holds `max_topics` retained values: dropped as
//! Mosquitto drops a denied publish). Other counters: `buffer_overflow` (hub
//! messages dropped because the disconnected buffer was full), plus `errors`,
//! `dropped` and `reconnects`.
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
