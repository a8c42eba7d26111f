//! `XmppConfig`: the `[adapters.config]` table of a `type = "xmpp"` adapter,
//! and its validation into the checked form the run loop uses.

use std::path::PathBuf;

use polyhub_sdk::reconnect::{self, Backoff};
use polyhub_sdk::{AdapterConfig, ConfigError, TopicFilter};
use serde::Deserialize;
use xmpp_parsers::jid::{BareJid, Jid};

/// Settings of an XMPP adapter, as written in the config file.
///
/// ```toml
/// [adapters.config]
/// jid = "hub@localhost"
/// password = "secret"
/// server = "127.0.0.1:5222"
/// tls = "none"
/// subscribers = [{ jid = "bob@localhost", filter = "sensors/#" }]
/// allow = ["*@localhost"]
/// users = { "alice@example.org" = "user1" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The hub's own account, `user@domain` (optionally `/resource`). Required.
    pub jid: String,
    /// The account's password. Required.
    pub password: String,
    /// `host:port` of the XMPP server. Default: the JID's domain, port 5222
    /// (no DNS SRV lookup).
    #[serde(default)]
    pub server: Option<String>,
    /// `starttls` (default): upgrade the connection with STARTTLS and refuse a
    /// server that does not offer it; `none`: plaintext, only for a server on
    /// loopback.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file with CA certificates trusted for STARTTLS besides the
    /// system's roots (for a server with a private CA). Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Static subscriptions: every envelope matching `filter` is sent to `jid`
    /// as a chat message. Default: none.
    #[serde(default)]
    pub subscribers: Vec<SubscriberConfig>,
    /// Bare JIDs allowed to publish, subscribe and control through the hub;
    /// `*` matches any run of characters (`"*@localhost"`, `"sensor-*@iot.example"`).
    /// Default: everyone on the hub's own domain (`["*@{domain}"]`).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Which `[auth]` user a sender's bare JID is, for JIDs whose user is
    /// not their local part (`{ "alice@example.org" = "user1" }`). Without
    /// an entry, a JID on the hub's own domain is the user named by its
    /// local part (`user1@localhost` is `user1`), and a JID of another
    /// domain is anonymous. Only used with `[auth]`. Default: none.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, String>,
    /// Whether XEP-0323 sensor readings become retained values (a reading is
    /// the device's current state, like a retained MQTT message). Default: true.
    #[serde(default = "default_true")]
    pub retain_readings: bool,
    /// First wait before reconnecting, in milliseconds; doubles after each
    /// failed attempt, jittered. Default 100.
    #[serde(default = "reconnect::default_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnection attempts, in milliseconds.
    /// Default 5000.
    #[serde(default)]
    pub reconnect_max_ms: Option<u64>,
    /// Deprecated: `reconnect_max_ms` in seconds (the key of earlier
    /// versions, still read when `reconnect_max_ms` is absent).
    #[serde(default)]
    pub reconnect_max_secs: Option<u64>,
    /// Depth of each subscriber's queue in the hub (the hub's default when
    /// absent): when full, QoS 0 envelopes are dropped and counted.
    #[serde(default)]
    pub queue_depth: Option<usize>,
    /// Deepest element nesting accepted in a stanza from the server (the
    /// stanza's own element is 1), at most 256. A deeper stanza is dropped
    /// before it is parsed and counted as
    /// `polyhub_rejected_total{reason="xml_too_deep"}`. Default: 64.
    #[serde(default = "default_max_stanza_depth")]
    pub max_stanza_depth: usize,
    /// Largest stanza accepted, in bytes. A larger one is dropped and counted
    /// as `reason="xml_too_large"` (as is a name or attribute value of 8 192
    /// bytes or more, which the XML parser cannot take). Default: 262144
    /// (Prosody's own default `c2s_stanza_size_limit`).
    #[serde(default = "default_max_stanza_bytes")]
    pub max_stanza_bytes: usize,
}

/// Above this, `max_stanza_depth` would let the tree builder's recursion
/// (one stack frame per level per event) come near a worker thread's stack.
pub const MAX_STANZA_DEPTH_CAP: usize = 256;

fn default_max_stanza_depth() -> usize {
    crate::stanza_guard::Limits::default().max_depth
}

fn default_max_stanza_bytes() -> usize {
    crate::stanza_guard::Limits::default().max_stanza_bytes
}

fn default_true() -> bool {
    true
}

/// How the connection to the server is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS, required (the default).
    #[default]
    Starttls,
    /// Plaintext TCP (loopback servers only).
    None,
}

/// One static subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Bare JID that receives the messages (`bob@localhost`).
    pub jid: String,
    /// Topic filter with MQTT wildcards (`sensors/#`).
    pub filter: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The hub's JID (bare or full).
    pub jid: Jid,
    /// Password.
    pub password: String,
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// TLS mode.
    pub tls: TlsMode,
    /// Extra trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// Static subscriptions, with parsed JIDs and filters.
    pub subscribers: Vec<(BareJid, TopicFilter)>,
    /// Allowed sender patterns, lower-cased.
    pub allow: Vec<String>,
    /// `users`: bare JID → `[auth]` user.
    pub users: std::collections::HashMap<BareJid, String>,
    /// Whether readings are retained.
    pub retain_readings: bool,
    /// `reconnect_min_ms`/`reconnect_max_ms`.
    pub backoff: Backoff,
    /// Subscriber queue depth.
    pub queue_depth: Option<usize>,
    /// What the stanza guard lets through.
    pub limits: crate::stanza_guard::Limits,
}

impl Settings {
    /// Parses and checks an adapter's config table. Reads nothing from the
    /// network; checks that `ca_file` exists.
    pub fn from_config(config: &AdapterConfig) -> Result<Settings, ConfigError> {
        let mut raw: XmppConfig = config.parse()?;
        raw.ca_file = raw.ca_file.map(|p| config.resolve(&p));
        let jid = Jid::new(&raw.jid).map_err(|e| {
            ConfigError::key("jid", format!("`{}` is not a valid JID: {e}", raw.jid))
        })?;
        if jid.node().is_none() {
            return Err(ConfigError::key(
                "jid",
                format!("`{}` has no user part: expected `user@domain`", raw.jid),
            ));
        }
        if raw.password.is_empty() {
            return Err(ConfigError::key("password", "must not be empty"));
        }
        let (host, port) = match &raw.server {
            None => (jid.domain().to_string(), 5222),
            Some(s) => parse_server(s).ok_or_else(|| {
                ConfigError::key(
                    "server",
                    format!("`{s}` is not `host:port` (for example `127.0.0.1:5222`)"),
                )
            })?,
        };
        if let Some(path) = &raw.ca_file {
            if !path.is_file() {
                return Err(ConfigError::key(
                    "ca_file",
                    format!("`{}` is not a readable file", path.display()),
                ));
            }
            if raw.tls == TlsMode::None {
                return Err(ConfigError::key(
                    "ca_file",
                    "is only used with tls = \"starttls\", but tls = \"none\"",
                ));
            }
        }
        let mut subscribers = Vec::new();
        for (i, s) in raw.subscribers.iter().enumerate() {
            let sub_jid = BareJid::new(&s.jid).map_err(|e| {
                ConfigError::key(
                    format!("subscribers[{i}].jid"),
                    format!("`{}` is not a valid bare JID: {e}", s.jid),
                )
            })?;
            let filter = TopicFilter::new(&s.filter).map_err(|e| {
                ConfigError::key(
                    format!("subscribers[{i}].filter"),
                    format!("`{}` is not a valid topic filter: {e}", s.filter),
                )
            })?;
            subscribers.push((sub_jid, filter));
        }
        let allow = match raw.allow {
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    if p.trim().is_empty() {
                        return Err(ConfigError::key(
                            format!("allow[{i}]"),
                            "must not be empty: use \"*\" to allow everyone",
                        ));
                    }
                }
                list.iter().map(|p| p.trim().to_lowercase()).collect()
            }
            None => vec![format!("*@{}", jid.domain()).to_lowercase()],
        };
        let mut users = std::collections::HashMap::new();
        for (jid_text, user) in &raw.users {
            let bare = BareJid::new(jid_text).map_err(|e| {
                ConfigError::key(
                    format!("users.{jid_text}"),
                    format!("`{jid_text}` is not a valid bare JID: {e}"),
                )
            })?;
            if user.is_empty() {
                return Err(ConfigError::key(
                    format!("users.{jid_text}"),
                    "the user name must not be empty",
                ));
            }
            users.insert(bare, user.clone());
        }
        let max_ms = match (raw.reconnect_max_ms, raw.reconnect_max_secs) {
            (Some(ms), _) => ms,
            (None, Some(secs)) => secs.saturating_mul(1000),
            (None, None) => reconnect::DEFAULT_MAX_MS,
        };
        let backoff = Backoff::from_ms(raw.reconnect_min_ms, max_ms)
            .map_err(|(key, why)| ConfigError::key(key, why))?;
        if raw.queue_depth == Some(0) {
            return Err(ConfigError::key("queue_depth", "must be at least 1"));
        }
        if raw.max_stanza_depth == 0 || raw.max_stanza_depth > MAX_STANZA_DEPTH_CAP {
            return Err(ConfigError::key(
                "max_stanza_depth",
                format!("must be between 1 and {MAX_STANZA_DEPTH_CAP}"),
            ));
        }
        if raw.max_stanza_bytes < 1024 {
            return Err(ConfigError::key(
                "max_stanza_bytes",
                "must be at least 1024",
            ));
        }
        Ok(Settings {
            jid,
            password: raw.password,
            host,
            port,
            tls: raw.tls,
            ca_file: raw.ca_file,
            subscribers,
            allow,
            users,
            retain_readings: raw.retain_readings,
            backoff,
            queue_depth: raw.queue_depth,
            limits: crate::stanza_guard::Limits {
                max_depth: raw.max_stanza_depth,
                max_stanza_bytes: raw.max_stanza_bytes,
            },
        })
    }
}

/// Splits `host:port` (`[v6]:port` too).
fn parse_server(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_config(&AdapterConfig::from_toml_str("xmpp", text).unwrap())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = settings("jid = \"hub@example.org\"\npassword = \"pw\"").unwrap();
        assert_eq!(s.host, "example.org");
        assert_eq!(s.port, 5222);
        assert_eq!(s.tls, TlsMode::Starttls);
        assert_eq!(s.allow, vec!["*@example.org".to_owned()]);
        assert!(s.retain_readings);
        assert_eq!(s.backoff.max().as_millis(), 5000);
    }

    #[test]
    fn full_config_parses() {
        let s = settings(
            r#"jid = "hub@localhost/polyhub"
password = "pw"
server = "127.0.0.1:15222"
tls = "none"
subscribers = [{ jid = "bob@localhost", filter = "sensors/#" }]
allow = ["*"]
retain_readings = false
reconnect_max_secs = 2
queue_depth = 8"#,
        )
        .unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 15222));
        assert_eq!(s.tls, TlsMode::None);
        assert_eq!(s.subscribers[0].0.to_string(), "bob@localhost");
        assert_eq!(s.subscribers[0].1.as_str(), "sensors/#");
        assert_eq!(s.queue_depth, Some(8));
        // The deprecated key still sets the longest wait.
        assert_eq!(s.backoff.max().as_millis(), 2000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("jid = \"localhost\"\npassword = \"pw\"", "jid"),
            ("jid = \"a@b\"\npassword = \"pw\"\nserver = \"nohost\"", "server"),
            ("jid = \"a@b\"\npassword = \"pw\"\ntls = \"ssl\"", "tls"),
            ("jid = \"a@b\"\npassword = \"pw\"\npasword = \"x\"", "pasword"),
            (
                "jid = \"a@b\"\npassword = \"pw\"\nsubscribers = [{ jid = \"b@b\", filter = \"a/#/b\" }]",
                "subscribers[0].filter",
            ),
            (
                "jid = \"a@b\"\npassword = \"pw\"\nsubscribers = [{ jid = \"b@b\", filtre = \"a\" }]",
                "subscribers[0].filtre",
            ),
            (
                "jid = \"a@b\"\npassword = \"pw\"\nca_file = \"/nonexistent/ca.pem\"",
                "ca_file",
            ),
            ("jid = \"a@b\"\npassword = \"\"", "password"),
            ("jid = \"a@b\"\npassword = \"pw\"\nallow = [\"\"]", "allow[0]"),
            (
                "jid = \"a@b\"\npassword = \"pw\"\nusers = { \"x@y\" = \"\" }",
                "users.x@y",
            ),
        ];
        for (text, key) in cases {
            let e = settings(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
    }
}
