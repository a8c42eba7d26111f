//! The adapter's `[adapters.config]` table.

use std::net::SocketAddr;

use polyhub_sdk::plugin::serde::Deserialize;
use polyhub_sdk::{ConfigError, QoS, TopicFilter};

/// Settings of one `tcp-line` adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "polyhub_sdk::plugin::serde", deny_unknown_fields)]
pub struct TcpLineConfig {
    /// Address devices connect to, e.g. `"0.0.0.0:7070"`. Required.
    pub listen: SocketAddr,
    /// Hub topic filters sent to connected devices as lines (default `["#"]`).
    #[serde(default = "default_subscribe")]
    pub subscribe: Vec<TopicFilter>,
    /// Longest accepted line, in bytes (default 4096). Longer lines are
    /// dropped and counted (`oversized_lines`).
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// QoS given to what devices send (default 0; 1 makes a device wait
    /// while a QoS 1 subscriber's queue is full).
    #[serde(default)]
    pub qos: QoS,
    /// Lines queued per device before hub envelopes for it are dropped and
    /// counted (default 256).
    #[serde(default = "default_device_queue")]
    pub device_queue: usize,
    /// Most devices connected at once (default 1024); more are refused.
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
}

fn default_subscribe() -> Vec<TopicFilter> {
    vec![TopicFilter::new("#").expect("`#` is a valid filter")]
}
fn default_max_line() -> usize {
    4096
}
fn default_device_queue() -> usize {
    256
}
fn default_max_devices() -> usize {
    1024
}

impl TcpLineConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_line < 2 {
            return Err(ConfigError::key("max_line", "must be at least 2 bytes"));
        }
        if self.device_queue == 0 {
            return Err(ConfigError::key("device_queue", "must be at least 1"));
        }
        if self.max_devices == 0 {
            return Err(ConfigError::key("max_devices", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::AdapterConfig;

    fn parse(text: &str) -> Result<TcpLineConfig, ConfigError> {
        let c: TcpLineConfig = AdapterConfig::from_toml_str("t", text)?.parse()?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_fill_everything_but_listen() {
        let c = parse("listen = \"127.0.0.1:7070\"").unwrap();
        assert_eq!(c.subscribe[0].as_str(), "#");
        assert_eq!(c.max_line, 4096);
        assert_eq!(c.qos, QoS::AtMostOnce);
        assert!(parse("")
            .unwrap_err()
            .message
            .contains("missing field `listen`"));
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\nlisen = 1")
                .unwrap_err()
                .key
                .as_deref(),
            Some("lisen")
        );
        assert_eq!(
            parse("listen = \"nowhere\"").unwrap_err().key.as_deref(),
            Some("listen")
        );
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\nsubscribe = [\"a/#/b\"]")
                .unwrap_err()
                .key
                .as_deref(),
            Some("subscribe[0]")
        );
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\nmax_line = 1")
                .unwrap_err()
                .key
                .as_deref(),
            Some("max_line")
        );
    }
}
