//! # polyhub-amqp
//!
//! The AMQP 0-9-1 adapter (`type = "amqp"`), built on lapin. It connects to
//! a broker such as RabbitMQ as a client and bridges one topic exchange:
//!
//! - The exchange (`exchange`, default `polyhub`) is declared as a durable
//!   topic exchange if absent. The hub's queue, `{hub name}.{adapter name}`
//!   (durable with QoS 1), is bound with `bindings` (topic filters, default
//!   `["#"]`); what AMQP clients publish there enters the hub.
//! - Hub envelopes matching `forward` (default `["#"]`) are published to the
//!   exchange.
//! - Topics map to routing keys as RabbitMQ's MQTT plugin maps them: `/` and
//!   `.` swap places (`sensors/t1.raw` ↔ `sensors.t1/raw`); in filters `+`
//!   becomes `*` and `#` stays `#`.
//! - `content_type`, headers (string forms of the AMQP header values),
//!   `correlation_id` and `reply_to` (a topic, mapped like a routing key)
//!   are carried both ways.
//! - With `qos = 1` (default) deliveries are acked only after the hub accepted
//!   the envelope, publishes use publisher confirms and persistent delivery,
//!   and messages the broker did not confirm are sent again after a
//!   reconnect. Publishes carry the mandatory flag; returned (unroutable)
//!   messages are counted as `unroutable`.
//! - Every published message carries the header `x-polyhub-origin:
//!   {hub}.{adapter}`; deliveries with this adapter's own marker are acked
//!   and skipped, so nothing loops back.
//! - When the connection drops (broker restart), the adapter goes `down`,
//!   reconnects with exponential backoff, declares the topology again and
//!   goes back `up`. While it is down, envelopes for the broker wait in a
//!   queue of `buffer` envelopes.
//! - `amqps://` URLs use TLS; `ca_file` adds a private CA.
//!
//! ```toml
//! [[adapters]]
//! name = "amqp"
//! type = "amqp"
//! [adapters.config]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "polyhub"
//! bindings = ["sensors/#"]
//! forward = ["actuators/#"]
//! ```
//!
//! Note: AMQP's `#` also matches routing keys that start with `$`, which an
//! MQTT `#` filter does not; bind `$SYS/#`-like topics only on purpose.

mod adapter;
pub mod config;
pub mod convert;
mod error;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory, ConfigError};

pub use adapter::AmqpAdapter;
pub use config::{AmqpConfig, Settings};
pub use error::SessionError;

/// Builds `type = "amqp"` adapters.
#[derive(Debug, Default)]
pub struct Factory;

impl AdapterFactory for Factory {
    fn kind(&self) -> &str {
        "amqp"
    }

    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
        let mut raw = config.parse::<AmqpConfig>()?;
        raw.ca_file = raw.ca_file.map(|p| config.resolve(&p));
        let settings = Settings::validate(raw)?;
        Ok(Box::new(AmqpAdapter::new(settings)))
    }
}
