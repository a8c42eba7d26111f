//! The `[adapters.config]` table of a `type = "mqtt"` adapter, and its
//! validation into [`Settings`]: either a client of an external broker
//! (`url`) or an embedded broker (`listen`), never both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use polyhub_sdk::{AdapterConfig, ConfigError, TopicFilter};
use serde::Deserialize;

/// The adapter's config table, as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// External broker to join as a client: `mqtt://[user:pass@]host[:port]`
    /// (port 1883 by default) or `mqtts://…` for TLS (port 8883 by default).
    /// Exactly one of `url` and `listen`.
    #[serde(default)]
    pub url: Option<String>,
    /// Address the embedded broker listens on for MQTT 3.1.1 devices, such as
    /// `0.0.0.0:1883`. Exactly one of `url` and `listen`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Filters taken from MQTT into the hub. Default `["#"]`.
    #[serde(default = "default_filters")]
    pub subscribe: Vec<String>,
    /// Hub filters published out to MQTT. Default `["#"]`.
    #[serde(default = "default_filters")]
    pub forward: Vec<String>,
    /// Client id towards the external broker. Default `polyhub-{adapter name}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`
    /// only). Default: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive towards the external broker, in seconds. Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First delay before reconnecting, in milliseconds; doubles on each
    /// failed attempt up to `reconnect_max_ms`. Default 100.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds. Default 5000.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// How many messages from the hub are held while the external broker is
    /// unreachable; they are sent after reconnect. Beyond it new messages are
    /// dropped, counted (`buffer_overflow`) and logged. Default 10000.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Users allowed to connect to the embedded broker, `{ name = "password" }`.
    /// Default: none, anyone may connect.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Largest payload the embedded broker accepts, in bytes. Default 1 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

fn default_filters() -> Vec<String> {
    vec!["#".to_owned()]
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    100
}
fn default_reconnect_max() -> u64 {
    5000
}
fn default_buffer() -> usize {
    10_000
}
fn default_max_payload() -> usize {
    1 << 20
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client of a broker, or embedded broker.
    pub mode: Mode,
    /// Filters taken from MQTT into the hub.
    pub subscribe: Vec<TopicFilter>,
    /// Hub filters published out to MQTT.
    pub forward: Vec<TopicFilter>,
}

/// Which side of MQTT the adapter plays.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Connects to an external broker.
    Client(ClientSettings),
    /// Runs an embedded broker.
    Broker(BrokerSettings),
}

/// Settings of a client of an external broker.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Whether to speak TLS.
    pub tls: bool,
    /// CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Messages held while disconnected.
    pub buffer: usize,
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// MQTT 3.1.1 listener.
    pub listen: SocketAddr,
    /// Allowed users; empty means anonymous access.
    pub users: BTreeMap<String, String>,
    /// Largest accepted payload.
    pub max_payload: usize,
}

impl Settings {
    /// Parses and checks the adapter's table.
    pub fn from_config(config: &AdapterConfig) -> Result<Settings, ConfigError> {
        let raw: MqttConfig = config.parse()?;
        Settings::from_raw(&config.name, raw)
    }

    /// Checks a parsed table.
    pub fn from_raw(name: &str, raw: MqttConfig) -> Result<Settings, ConfigError> {
        let subscribe = filters("subscribe", &raw.subscribe)?;
        let forward = filters("forward", &raw.forward)?;
        let mode = match (&raw.url, &raw.listen) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::table(
                    "both `url` and `listen` are set; use `url` to join an external broker \
                     or `listen` to run the embedded one, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::table(
                    "set `url = \"mqtt://127.0.0.1:1883\"` to join an external broker \
                     or `listen = \"0.0.0.0:1883\"` to run the embedded one",
                ))
            }
            (Some(url), None) => Mode::Client(client_settings(name, url, &raw)?),
            (None, Some(listen)) => Mode::Broker(broker_settings(listen, &raw)?),
        };
        Ok(Settings {
            mode,
            subscribe,
            forward,
        })
    }
}

fn filters(key: &str, list: &[String]) -> Result<Vec<TopicFilter>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, f)| {
            TopicFilter::new(f).map_err(|e| ConfigError::key(format!("{key}[{i}]"), e.to_string()))
        })
        .collect()
}

fn client_settings(name: &str, url: &str, raw: &MqttConfig) -> Result<ClientSettings, ConfigError> {
    let bad = |msg: String| ConfigError::key("url", msg);
    let parsed = url::Url::parse(url).map_err(|e| {
        bad(format!(
            "`{url}` is not a URL ({e}); expected mqtt://[user:pass@]host[:port]"
        ))
    })?;
    let tls = match parsed.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(bad(format!(
                "scheme `{other}` is not supported; use mqtt:// or mqtts://"
            )))
        }
    };
    let host = match parsed.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(bad(format!("`{url}` has no host"))),
    };
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(bad(format!(
            "`{url}` has a path or query; expected mqtt://[user:pass@]host[:port]"
        )));
    }
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = if parsed.username().is_empty() && parsed.password().is_none() {
        None
    } else {
        Some((
            decode(parsed.username()),
            decode(parsed.password().unwrap_or("")),
        ))
    };
    if raw.ca_file.is_some() && !tls {
        return Err(ConfigError::key(
            "ca_file",
            "`ca_file` only applies to mqtts:// URLs",
        ));
    }
    if let Some(ca) = &raw.ca_file {
        if !ca.is_file() {
            return Err(ConfigError::key(
                "ca_file",
                format!("`{}` is not a readable file", ca.display()),
            ));
        }
    }
    if !raw.users.is_empty() {
        return Err(ConfigError::key(
            "users",
            "`users` belongs to the embedded broker (`listen`); put the broker's user in `url`",
        ));
    }
    if raw.keep_alive_secs < 5 {
        return Err(ConfigError::key(
            "keep_alive_secs",
            "must be at least 5 seconds",
        ));
    }
    if raw.reconnect_min_ms == 0 || raw.reconnect_max_ms < raw.reconnect_min_ms {
        return Err(ConfigError::key(
            "reconnect_max_ms",
            "need 0 < reconnect_min_ms <= reconnect_max_ms",
        ));
    }
    if raw.buffer == 0 {
        return Err(ConfigError::key("buffer", "must be at least 1"));
    }
    let client_id = raw
        .client_id
        .clone()
        .unwrap_or_else(|| format!("polyhub-{name}"));
    if client_id.is_empty() || client_id.len() > 65_535 {
        return Err(ConfigError::key(
            "client_id",
            "must be 1 to 65535 bytes long",
        ));
    }
    Ok(ClientSettings {
        host: host.to_owned(),
        port,
        tls,
        ca_file: raw.ca_file.clone(),
        credentials,
        client_id,
        keep_alive: Duration::from_secs(raw.keep_alive_secs),
        reconnect_min: Duration::from_millis(raw.reconnect_min_ms),
        reconnect_max: Duration::from_millis(raw.reconnect_max_ms),
        buffer: raw.buffer,
    })
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::key(
            key,
            format!("`{s}` is not an address:port such as `0.0.0.0:1883`"),
        )
    })
}

fn broker_settings(listen: &str, raw: &MqttConfig) -> Result<BrokerSettings, ConfigError> {
    let listen = socket_addr("listen", listen)?;
    for (key, set) in [
        ("client_id", raw.client_id.is_some()),
        ("ca_file", raw.ca_file.is_some()),
    ] {
        if set {
            return Err(ConfigError::key(
                key,
                format!(
                    "`{key}` applies to `url` (a client of an external broker), not to `listen`"
                ),
            ));
        }
    }
    if raw.max_payload == 0 {
        return Err(ConfigError::key("max_payload", "must be at least 1"));
    }
    Ok(BrokerSettings {
        listen,
        users: raw.users.clone(),
        max_payload: raw.max_payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        let cfg = AdapterConfig::from_toml_str("mq", text).expect("toml");
        Settings::from_config(&cfg)
    }

    #[test]
    fn url_with_credentials_and_default_port_is_parsed() {
        let s = settings(r#"url = "mqtt://al%40ice:p%3Ass@broker.local""#).unwrap();
        let Mode::Client(c) = s.mode else {
            panic!("expected client mode")
        };
        assert_eq!(c.host, "broker.local");
        assert_eq!(c.port, 1883);
        assert!(!c.tls);
        assert_eq!(
            c.credentials,
            Some(("al@ice".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(c.client_id, "polyhub-mq");
        assert_eq!(s.subscribe, vec![TopicFilter::new("#").unwrap()]);
        assert_eq!(s.forward, vec![TopicFilter::new("#").unwrap()]);
    }

    #[test]
    fn mqtts_defaults_to_port_8883() {
        let s = settings(r#"url = "mqtts://127.0.0.1""#).unwrap();
        let Mode::Client(c) = s.mode else {
            panic!("expected client mode")
        };
        assert!(c.tls);
        assert_eq!(c.port, 8883);
    }

    #[test]
    fn url_and_listen_together_are_refused() {
        let e = settings("url = \"mqtt://h\"\nlisten = \"0.0.0.0:1883\"").unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
        let e = settings("").unwrap_err();
        assert!(
            e.message.contains("url") && e.message.contains("listen"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = settings(r#"url = "http://h""#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("url"));
        let e = settings(r#"listen = "nope""#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen"));
        let e = settings("listen = \"0.0.0.0:1\"\nsubscribe = [\"a/#/b\"]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("subscribe[0]"));
        let e = settings("listen = \"0.0.0.0:1\"\nca_file = \"/x\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ca_file"));
        let e = settings("url = \"mqtt://h\"\nlisen = 1").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lisen"));
        let e = settings("url = \"mqtt://h\"\nca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ca_file"));
    }

    #[test]
    fn embedded_broker_settings_are_parsed() {
        let s = settings("listen = \"127.0.0.1:1883\"\nusers = { a = \"b\" }\nforward = [\"x/+\"]")
            .unwrap();
        let Mode::Broker(b) = s.mode else {
            panic!("expected broker mode")
        };
        assert_eq!(b.listen.port(), 1883);
        assert_eq!(b.users.get("a").map(String::as_str), Some("b"));
        assert_eq!(s.forward, vec![TopicFilter::new("x/+").unwrap()]);
    }
}
