//! # polyhub-mqtt
//!
//! The `type = "mqtt"` adapter. Two ways to plug MQTT into the hub:
//!
//! * `url = "mqtt://user:pass@host:1883"` (or `mqtts://` with `ca_file`):
//!   the adapter is an MQTT 5 client (rumqttc) of an external broker such as
//!   Mosquitto. It subscribes with no-local, so what it publishes never comes
//!   back into the hub; it reconnects with exponential backoff. What the hub
//!   forwards goes through the adapter's durable queue `forward` (on disk
//!   with `[hub] data_dir`): a message leaves it once the broker acknowledged
//!   it, so what is in flight or waiting during a broker outage or a hub
//!   restart goes out afterwards, in order, at least once. It acknowledges a broker's QoS 1/2 message once the hub took it
//!   (v5 reason 0x97 quota exceeded when the hub refused a retained value).
//!   A broker that only speaks MQTT 3.1.1 is refused with an error that says
//!   so, rather than bridged without no-local: without it the hub's own
//!   publishes would come back (use the embedded broker for 3.1.1 devices).
//! * `listen = "0.0.0.0:1883"`: the adapter is an embedded MQTT 3.1.1 and
//!   5.0 broker in the hub process (module `broker`, on rumqttc's packet
//!   codecs and tokio). Devices connect to it directly, over TCP and
//!   optionally TLS (`tls_listen`), WebSocket (`ws_listen`) or WebSocket
//!   over TLS (`wss_listen`); optional `users` for password login. There is
//!   no broker-side router or retained store: a device's PUBLISH is
//!   `ctx.publish`, each session's subscriptions are one hub subscription,
//!   retained messages come from the hub's store, and each connected device
//!   is listed in the hub's client registry (`/api/clients`). Sessions,
//!   wills, QoS 1/2, shared subscriptions, MQTT 5 properties and the limits
//!   (`max_connections`, `max_queued_messages`, `max_packet_size`) are
//!   described in the crate's README.
//!
//! `subscribe` (MQTT → hub) and `forward` (hub → MQTT) are topic-filter
//! lists, default `["#"]`. Topics map unchanged; QoS and retain are carried
//! both ways exactly, and the MQTT 5 content type, user properties, response
//! topic and correlation data ride on the envelope.
//!
//! Refusals are counted in `polyhub_rejected_total{reason}`: on the client
//! side `invalid_topic` (a publish whose topic is not a valid UTF-8 topic
//! name) and `quota_exceeded` (a retained publish the hub refused because its
//! store holds `max_topics` retained values); the embedded broker's reasons
//! (`malformed_packet`, `packet_too_large`, `bad_credentials`,
//! `max_connections`, `tls_handshake`, `ws_handshake`, ...) are listed in
//! the README. Other counters: `broker_refused` (forwarded messages the
//! broker refused with a reason code; skipped, not retried), plus `errors`,
//! `dropped` and `reconnects`.

mod adapter;
mod broker;
mod client;
pub mod config;
pub mod convert;
mod error;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use config::{MqttConfig, Settings};
pub use error::MqttError;

#[doc(hidden)]
pub use broker::fuzz_device_stream;

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
