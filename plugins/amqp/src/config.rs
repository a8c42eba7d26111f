//! The `[adapters.config]` table of a `type = "amqp"` adapter, and its
//! validation (done by `create`, so `polyhub check` reports every problem
//! without connecting anywhere).

use std::path::PathBuf;
use std::str::FromStr;

use lapin::types::ShortString;
use lapin::uri::{AMQPScheme, AMQPUri};
use polyhub_sdk::reconnect::{self, Backoff};
use polyhub_sdk::{ConfigError, QoS, TopicFilter};
use serde::Deserialize;

use crate::convert::filter_to_binding_key;

/// Settings of one AMQP adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL, `amqp://user:pass@host:port/vhost` or `amqps://…` for TLS
    /// (the vhost percent-encoded: `/` is `%2f`). Query parameters of the
    /// AMQP URI spec are honoured (`?heartbeat=10&connection_timeout=5000`).
    /// Default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Topic exchange the adapter publishes to and binds its queue to;
    /// declared durable if absent. Default `polyhub`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Name of the hub's queue. Default `{hub name}.{adapter name}`.
    #[serde(default)]
    pub queue: Option<String>,
    /// Topic filters the queue is bound with: what AMQP clients publish to the
    /// exchange under a matching routing key enters the hub. Default `["#"]`.
    #[serde(default = "default_filters")]
    pub bindings: Vec<TopicFilter>,
    /// Hub topic filters published out to the exchange. Default `["#"]`.
    #[serde(default = "default_filters")]
    pub forward: Vec<TopicFilter>,
    /// `1` (default): durable queue, manual consumer acks after the hub took
    /// the envelope, publisher confirms, persistent delivery, messages
    /// resent after a reconnect. `0`: transient auto-delete queue, automatic
    /// acks, no confirms.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Deliveries the broker may send ahead of their acks (`basic.qos`
    /// prefetch count; `0` means unlimited). Default 100.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Publish with the mandatory flag so the broker returns messages no
    /// queue is bound for; they are counted (`unroutable`). Default `true`.
    #[serde(default = "default_true")]
    pub mandatory: bool,
    /// Most messages published and not yet confirmed by the broker (QoS 1).
    /// Default 256.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// With `qos = 0` only: envelopes buffered for the exchange while the
    /// broker is unreachable (the adapter's hub subscription queue); when
    /// full, QoS 0 envelopes are dropped and counted and QoS 1 publishers
    /// wait. With `qos = 1` the forward reads the durable queue `forward`
    /// instead (on disk with `[hub] data_dir`, bounded by `[hub]
    /// max_queue_bytes`, acknowledged on the broker's confirm) and this is
    /// not used. Default 10000.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// PEM file of the CA (or CAs) that signed the broker's certificate, for
    /// `amqps://` with a private CA; added to the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// First delay before reconnecting, in milliseconds; doubles after each
    /// failed attempt, jittered. Default 100.
    #[serde(default = "reconnect::default_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds. Default 5000.
    #[serde(default = "reconnect::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
}
fn default_exchange() -> String {
    "polyhub".to_owned()
}
fn default_filters() -> Vec<TopicFilter> {
    vec![TopicFilter::new("#").expect("`#` is a valid filter")]
}
fn default_qos() -> u8 {
    1
}
fn default_prefetch() -> u16 {
    100
}
fn default_true() -> bool {
    true
}
fn default_in_flight() -> usize {
    256
}
fn default_buffer() -> usize {
    10_000
}

/// A config checked and prepared for the run loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The parsed config.
    pub config: AmqpConfig,
    /// The parsed URL.
    pub uri: AMQPUri,
    /// The CA file's PEM text, read at validation time.
    pub ca_pem: Option<String>,
    /// QoS of the envelopes the adapter publishes into the hub.
    pub qos: QoS,
    /// `bindings` as AMQP binding keys.
    pub binding_keys: Vec<ShortString>,
    /// `reconnect_min_ms`/`reconnect_max_ms`.
    pub backoff: Backoff,
}

impl Settings {
    /// Checks every field of `config`, naming the key at fault.
    pub fn validate(config: AmqpConfig) -> Result<Self, ConfigError> {
        let uri = AMQPUri::from_str(&config.url)
            .map_err(|e| ConfigError::key("url", format!("not an AMQP URL: {e}")))?;
        let qos = match config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => {
                return Err(ConfigError::key(
                    "qos",
                    format!("invalid QoS {other}: expected 0 or 1"),
                ))
            }
        };
        if config.exchange.is_empty() || config.exchange.len() > 255 {
            return Err(ConfigError::key(
                "exchange",
                "must be 1 to 255 bytes (the default exchange cannot route by topic)",
            ));
        }
        if let Some(q) = &config.queue {
            if q.is_empty() || q.len() > 255 || q.starts_with("amq.") {
                return Err(ConfigError::key(
                    "queue",
                    "must be 1 to 255 bytes and not start with `amq.`",
                ));
            }
        }
        let binding_keys = config
            .bindings
            .iter()
            .enumerate()
            .map(|(i, f)| {
                filter_to_binding_key(f)
                    .map_err(|e| ConfigError::key(format!("bindings[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.max_in_flight == 0 {
            return Err(ConfigError::key("max_in_flight", "must be at least 1"));
        }
        if config.buffer == 0 {
            return Err(ConfigError::key("buffer", "must be at least 1"));
        }
        let backoff = Backoff::from_ms(config.reconnect_min_ms, config.reconnect_max_ms)
            .map_err(|(key, why)| ConfigError::key(key, why))?;
        let ca_pem = match &config.ca_file {
            None => None,
            Some(_) if uri.scheme != AMQPScheme::AMQPS => {
                return Err(ConfigError::key(
                    "ca_file",
                    "only used with an `amqps://` url",
                ))
            }
            Some(path) => {
                // The sdk's check, so a bad CA file reads the same in every
                // adapter; lapin then takes the PEM text itself.
                polyhub_sdk::tls::ca_certificates(path)
                    .map_err(|e| ConfigError::key("ca_file", e.to_string()))?;
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::key("ca_file", format!("cannot read {}: {e}", path.display()))
                })?;
                Some(pem)
            }
        };
        Ok(Settings {
            config,
            uri,
            ca_pem,
            qos,
            binding_keys,
            backoff,
        })
    }

    /// The queue name: configured, or `{hub}.{adapter}`.
    pub fn queue_name(&self, hub: &str, adapter: &str) -> String {
        self.config
            .queue
            .clone()
            .unwrap_or_else(|| format!("{hub}.{adapter}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::AdapterConfig;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        let cfg = AdapterConfig::from_toml_str("amqp", text).unwrap();
        Settings::validate(cfg.parse::<AmqpConfig>()?)
    }

    #[test]
    fn defaults_are_the_local_broker_and_everything() {
        let s = settings("").unwrap();
        assert_eq!(s.uri.authority.host, "127.0.0.1");
        assert_eq!(s.uri.vhost, "/");
        assert_eq!(s.config.exchange, "polyhub");
        assert_eq!(s.qos, QoS::AtLeastOnce);
        assert_eq!(s.config.bindings[0].as_str(), "#");
        assert_eq!(s.queue_name("hub-1", "amqp"), "hub-1.amqp");
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(settings("qos = 2").unwrap_err().key.as_deref(), Some("qos"));
        assert_eq!(
            settings("url = \"http://x\"").unwrap_err().key.as_deref(),
            Some("url")
        );
        assert_eq!(
            settings("exchnage = \"x\"").unwrap_err().key.as_deref(),
            Some("exchnage")
        );
        assert_eq!(
            settings("bindings = [\"a/#/b\"]")
                .unwrap_err()
                .key
                .as_deref(),
            Some("bindings[0]")
        );
        assert_eq!(
            settings("ca_file = \"/nonexistent.pem\"")
                .unwrap_err()
                .key
                .as_deref(),
            Some("ca_file")
        );
        assert_eq!(
            settings("url = \"amqps://h/%2f\"\nca_file = \"/nonexistent.pem\"")
                .unwrap_err()
                .key
                .as_deref(),
            Some("ca_file")
        );
        assert_eq!(
            settings("max_in_flight = 0").unwrap_err().key.as_deref(),
            Some("max_in_flight")
        );
    }
}
