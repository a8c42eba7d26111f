//! The `[adapters.config]` table of a `type = "mqtt"` adapter, and its
//! validation into [`Settings`]: either a client of an external broker
//! (`url`) or an embedded broker (`listen`), never both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use polyhub_sdk::reconnect::{self, Backoff};
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
    /// Address the embedded broker listens on for MQTT 3.1.1 and 5.0 devices,
    /// such as `0.0.0.0:1883`. Exactly one of `url` and `listen`.
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
    /// With `url = "mqtts://…"`: PEM file of the CA that signed the broker's
    /// certificate (default: the system's trusted roots). With `tls_listen`:
    /// the CA that signs device certificates, which devices must then
    /// present (default: no client certificates).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive towards the external broker, in seconds. Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First delay before reconnecting, in milliseconds; doubles on each
    /// failed attempt up to `reconnect_max_ms`. Default 100.
    #[serde(default = "reconnect::default_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds. Default 5000.
    #[serde(default = "reconnect::default_max_ms")]
    pub reconnect_max_ms: u64,
    /// No longer used (still accepted): what the hub forwards to the
    /// external broker waits in the adapter's durable queue `forward`,
    /// bounded by `[hub] max_queue_bytes`, however long the broker is away.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Users allowed to connect to the embedded broker, `{ name = "password" }`.
    /// Default: none, anyone may connect.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Largest payload the embedded broker accepts, in bytes. Default 1 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Largest MQTT packet the embedded broker accepts, in bytes (told to
    /// MQTT 5 devices in CONNACK). Default `max_payload` + 64 KiB.
    #[serde(default)]
    pub max_packet_size: Option<usize>,
    /// Embedded broker: address of an MQTT-over-TLS listener, such as
    /// `0.0.0.0:8883`; needs `cert` and `key`.
    #[serde(default)]
    pub tls_listen: Option<String>,
    /// PEM certificate chain of `tls_listen`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `tls_listen`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Embedded broker: address of an MQTT-over-WebSocket listener, such as
    /// `0.0.0.0:8083` (path `/mqtt`, subprotocol `mqtt`). Default: none.
    #[serde(default)]
    pub ws_listen: Option<String>,
    /// Embedded broker: address of an MQTT-over-WebSocket-over-TLS listener,
    /// such as `0.0.0.0:8084`; needs `tls_listen` (its `cert`, `key` and
    /// `ca_file`). Default: none.
    #[serde(default)]
    pub wss_listen: Option<String>,
    /// Embedded broker: longest keepalive a device may use, in seconds. An
    /// MQTT 5 device asking for more (or for none, 0) is told this one
    /// (CONNACK Server Keep Alive); an MQTT 3.1.1 device, which cannot be
    /// told, is refused (CONNACK 2). Default: none, the device's own stands.
    #[serde(default)]
    pub max_keep_alive_secs: Option<u16>,
    /// Embedded broker: devices connected at once; past it a connection is
    /// closed at once and counted. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Embedded broker: messages queued per session (offline, or waiting
    /// for the device's receive maximum); past it they are dropped and
    /// counted. Default 1000.
    #[serde(default = "default_max_queued")]
    pub max_queued_messages: usize,
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_queued() -> usize {
    1000
}

fn default_filters() -> Vec<String> {
    vec!["#".to_owned()]
}
fn default_keep_alive() -> u64 {
    30
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
    /// `reconnect_min_ms`/`reconnect_max_ms`.
    pub backoff: Backoff,
    /// Messages held while disconnected.
    pub buffer: usize,
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// MQTT 3.1.1 and 5.0 TCP listener.
    pub listen: SocketAddr,
    /// The TLS listener, if any.
    pub tls: Option<TlsSettings>,
    /// The WebSocket listener, if any.
    pub ws: Option<SocketAddr>,
    /// The WebSocket-over-TLS listener (with `tls`'s certificate), if any.
    pub wss: Option<SocketAddr>,
    /// Allowed users; empty means anonymous access.
    pub users: BTreeMap<String, String>,
    /// Largest accepted packet.
    pub max_packet: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Longest keepalive a device may use, in seconds.
    pub max_keep_alive: Option<u16>,
    /// Messages queued per session.
    pub max_queued_messages: usize,
}

/// The embedded broker's TLS listener.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Address.
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA of client certificates; `None`: none asked for.
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    /// Parses and checks the adapter's table.
    pub fn from_config(config: &AdapterConfig) -> Result<Settings, ConfigError> {
        let mut raw: MqttConfig = config.parse()?;
        for path in [&mut raw.cert, &mut raw.key, &mut raw.ca_file]
            .into_iter()
            .flatten()
        {
            *path = config.resolve(path);
        }
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
    for (key, set) in [
        ("tls_listen", raw.tls_listen.is_some()),
        ("ws_listen", raw.ws_listen.is_some()),
        ("wss_listen", raw.wss_listen.is_some()),
        ("max_keep_alive_secs", raw.max_keep_alive_secs.is_some()),
        ("cert", raw.cert.is_some()),
        ("key", raw.key.is_some()),
        ("max_packet_size", raw.max_packet_size.is_some()),
    ] {
        if set {
            return Err(ConfigError::key(
                key,
                format!("`{key}` belongs to the embedded broker (`listen`), not to `url`"),
            ));
        }
    }
    if raw.keep_alive_secs < 5 {
        return Err(ConfigError::key(
            "keep_alive_secs",
            "must be at least 5 seconds",
        ));
    }
    let backoff = Backoff::from_ms(raw.reconnect_min_ms, raw.reconnect_max_ms)
        .map_err(|(key, why)| ConfigError::key(key, why))?;
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
        backoff,
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
        ("ca_file", raw.ca_file.is_some() && raw.tls_listen.is_none()),
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
    let max_packet = raw
        .max_packet_size
        .unwrap_or(raw.max_payload.saturating_add(64 << 10));
    if !(16..=268_435_455).contains(&max_packet) {
        return Err(ConfigError::key(
            "max_packet_size",
            "must be 16 to 268435455 bytes (MQTT's largest packet)",
        ));
    }
    if raw.max_connections == 0 {
        return Err(ConfigError::key("max_connections", "must be at least 1"));
    }
    if raw.max_keep_alive_secs == Some(0) {
        return Err(ConfigError::key(
            "max_keep_alive_secs",
            "must be 1 to 65535 seconds (leave it out for no limit)",
        ));
    }
    if raw.max_queued_messages == 0 {
        return Err(ConfigError::key(
            "max_queued_messages",
            "must be at least 1",
        ));
    }
    let tls = match &raw.tls_listen {
        None => {
            for (key, set) in [("cert", raw.cert.is_some()), ("key", raw.key.is_some())] {
                if set {
                    return Err(ConfigError::key(
                        key,
                        format!("`{key}` needs `tls_listen = \"0.0.0.0:8883\"`"),
                    ));
                }
            }
            None
        }
        Some(addr) => {
            let tls_listen = socket_addr("tls_listen", addr)?;
            let file = |key: &str, p: &Option<PathBuf>| -> Result<PathBuf, ConfigError> {
                match p {
                    Some(p) if p.is_file() => Ok(p.clone()),
                    Some(p) => Err(ConfigError::key(
                        key,
                        format!("`{}` is not a readable file", p.display()),
                    )),
                    None => Err(ConfigError::key(
                        key,
                        format!("`tls_listen` needs `{key}` (a PEM file)"),
                    )),
                }
            };
            let cert = file("cert", &raw.cert)?;
            let key = file("key", &raw.key)?;
            let ca_file = match &raw.ca_file {
                Some(_) => Some(file("ca_file", &raw.ca_file)?),
                None => None,
            };
            Some(TlsSettings {
                listen: tls_listen,
                cert,
                key,
                ca_file,
            })
        }
    };
    let ws = match &raw.ws_listen {
        Some(a) => Some(socket_addr("ws_listen", a)?),
        None => None,
    };
    let wss = match &raw.wss_listen {
        Some(_) if tls.is_none() => {
            return Err(ConfigError::key(
                "wss_listen",
                "`wss_listen` needs `tls_listen` with `cert` and `key` (it serves the same certificate)",
            ))
        }
        Some(a) => Some(socket_addr("wss_listen", a)?),
        None => None,
    };
    Ok(BrokerSettings {
        listen,
        tls,
        ws,
        wss,
        users: raw.users.clone(),
        max_packet,
        max_connections: raw.max_connections,
        max_keep_alive: raw.max_keep_alive_secs,
        max_queued_messages: raw.max_queued_messages,
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

    #[test]
    fn websocket_listeners_are_parsed_and_wss_needs_tls_listen() {
        let s = settings("listen = \"127.0.0.1:1883\"\nws_listen = \"0.0.0.0:8083\"").unwrap();
        let Mode::Broker(b) = s.mode else {
            panic!("broker mode")
        };
        assert_eq!(b.ws, Some("0.0.0.0:8083".parse().unwrap()));
        assert_eq!(b.wss, None);
        let e = settings("listen = \"127.0.0.1:1883\"\nwss_listen = \"0.0.0.0:8084\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("wss_listen"));
        let e = settings("listen = \"127.0.0.1:1883\"\nws_listen = \"nowhere\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ws_listen"));
        let e = settings("url = \"mqtt://h\"\nws_listen = \"0.0.0.0:8083\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ws_listen"));
    }
}
