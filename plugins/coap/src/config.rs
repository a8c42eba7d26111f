//! `CoapConfig`: the typed `[adapters.config]` table of a `type = "coap"`
//! adapter, with its defaults and the checks `create()` runs on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use polyhub_sdk::{AdapterConfig, ConfigError, TopicFilter};
use serde::Deserialize;

use crate::dtls::{DtlsLimits, PskKeys};

/// RFC 7252 §4.8 ACK_TIMEOUT, in milliseconds.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 2_000;
/// RFC 7252 §4.8 ACK_RANDOM_FACTOR.
pub const DEFAULT_ACK_RANDOM_FACTOR: f64 = 1.5;
/// RFC 7252 §4.8 MAX_RETRANSMIT.
pub const DEFAULT_MAX_RETRANSMIT: u32 = 4;
/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME, in seconds.
pub const DEFAULT_EXCHANGE_LIFETIME_SECS: u64 = 247;

/// The config of a `type = "coap"` adapter.
///
/// ```toml
/// [adapters.config]
/// bind = "0.0.0.0:5683"
/// push = [{ filter = "actuators/#", url = "coap://127.0.0.1:5684/led" }]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    /// UDP address the CoAP server listens on. Default `0.0.0.0:5683`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Envelopes matching `filter` are sent as CON `PUT` to the CoAP server
    /// at `url` (a device). Default: none.
    #[serde(default)]
    pub push: Vec<PushTarget>,
    /// Largest block (bytes) of a block-wise transfer (RFC 7959): a power of
    /// two from 16 to 1024. Payloads larger than this go in blocks. Default 1024.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Largest request body (bytes) assembled from Block1 transfers; larger
    /// ones are answered `4.13`. Default 1048576 (1 MiB).
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// RFC 7252 ACK_TIMEOUT in milliseconds: the first wait for an ACK to a
    /// CON message the hub sends (notifications, separate responses, pushes),
    /// doubled on every retransmission. Also how long a request may take
    /// before its CON gets an empty ACK and a separate response. Default 2000.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// RFC 7252 ACK_RANDOM_FACTOR: the first timeout is drawn between
    /// `ack_timeout_ms` and `ack_timeout_ms × ack_random_factor`. At least 1.
    /// Default 1.5.
    #[serde(default = "default_ack_random_factor")]
    pub ack_random_factor: f64,
    /// RFC 7252 MAX_RETRANSMIT: retransmissions of a CON message before the
    /// peer counts as gone. Default 4.
    #[serde(default = "default_max_retransmit")]
    pub max_retransmit: u32,
    /// How long (seconds) a request's message id is remembered per peer so
    /// that a duplicate is answered from the cache instead of processed again
    /// (RFC 7252 EXCHANGE_LIFETIME). Default 247.
    #[serde(default = "default_exchange_lifetime")]
    pub exchange_lifetime_secs: u64,
    /// Most remembered exchanges (the duplicate cache); the oldest are
    /// forgotten first beyond it. Default 65536.
    #[serde(default = "default_dedup_capacity")]
    pub dedup_capacity: usize,
    /// An observer gets a confirmable notification at least this often
    /// (seconds) while notifications flow, so that a vanished observer is
    /// noticed (RFC 7641 §4.5). QoS 1 envelopes are always confirmable.
    /// Default 60.
    #[serde(default = "default_observe_con_interval")]
    pub observe_con_interval_secs: u64,
    /// Most observers at once; registrations beyond are answered without the
    /// Observe option (not registered). Default 10000.
    #[serde(default = "default_max_observers")]
    pub max_observers: usize,
    /// No longer used, still accepted so that old configs load: each push
    /// target reads a durable queue (`push/{url}`) bounded by `[hub]
    /// max_queue_bytes`, whose publishers never wait. (Observers use the
    /// hub's subscription queues, sized by the adapter's `queue_depth`.)
    /// Default 1024.
    #[serde(default = "default_push_queue_depth")]
    pub push_queue_depth: usize,
    /// Most observers one peer (address and port) may hold; registrations
    /// beyond are answered without the Observe option and counted
    /// (`too_many_observers`). Default 64.
    #[serde(default = "default_max_observers_per_peer")]
    pub max_observers_per_peer: usize,
    /// Most bytes the duplicate cache keeps of the responses it remembers;
    /// the oldest exchanges are forgotten first beyond it. Default 8388608
    /// (8 MiB).
    #[serde(default = "default_dedup_max_bytes")]
    pub dedup_max_bytes: usize,
    /// Most request bodies being assembled from Block1 transfers at once,
    /// in all. Default 256.
    #[serde(default = "default_max_assemblies")]
    pub max_assemblies: usize,
    /// Most Block1 transfers one peer may have under way. Default 4.
    #[serde(default = "default_max_assemblies_per_peer")]
    pub max_assemblies_per_peer: usize,
    /// Most bytes held by Block1 transfers under way, in all; a block that
    /// would go beyond is answered `5.03` and counted. Default 16777216
    /// (16 MiB).
    #[serde(default = "default_max_assembly_bytes")]
    pub max_assembly_bytes: usize,
    /// Most response bodies kept for Block2 follow-up requests (large
    /// values and notifications), in all. Default 1024.
    #[serde(default = "default_block2_cache_entries")]
    pub block2_cache_entries: usize,
    /// Most bodies of those one peer may hold; its oldest goes first.
    /// Default 8.
    #[serde(default = "default_block2_cache_per_peer")]
    pub block2_cache_per_peer: usize,
    /// Most bytes of those bodies, in all (a body is shared with the hub's
    /// store while it is the topic's last value). Default 33554432 (32 MiB).
    #[serde(default = "default_block2_cache_bytes")]
    pub block2_cache_bytes: usize,
    /// How long (seconds) a partial Block1 body, a Block2 body or a
    /// `/.well-known/core` cursor is kept; a cursor at least
    /// `exchange_lifetime_secs`, so that a block request retransmitted after
    /// the duplicate cache forgot its answer is still served. Default 60.
    #[serde(default = "default_block_lifetime")]
    pub block_lifetime_secs: u64,
    /// Most `/.well-known/core` cursors kept (one per listing and block
    /// offset, shared by every peer): where the next block of a listing
    /// starts in the topic index. Default 4096.
    #[serde(default = "default_discovery_cache_entries")]
    pub discovery_cache_entries: usize,
    /// Most bytes of those cursors. Default 4194304 (4 MiB).
    #[serde(default = "default_discovery_cache_bytes")]
    pub discovery_cache_bytes: usize,
    /// Most requests waiting for the hub to take their publish (answered
    /// separately once it does); beyond, a request is answered `5.03` at
    /// once and counted (`too_many_pending`). Default 1024.
    #[serde(default = "default_max_pending_responses")]
    pub max_pending_responses: usize,
    /// UDP address of a CoAP-over-DTLS (`coaps://`) server with pre-shared
    /// keys, such as `0.0.0.0:5684`; needs `psk_file`. It serves the same
    /// resources as `bind`. Default: none.
    #[serde(default)]
    pub dtls_bind: Option<String>,
    /// The DTLS server's pre-shared keys: one `identity:key` per line (the
    /// key is the text after the first `:`, 1 to 64 bytes; `#` starts a
    /// comment line). A peer's PSK identity is its user for `[auth]`. A
    /// relative path is relative to the config file.
    #[serde(default)]
    pub psk_file: Option<PathBuf>,
    /// Most DTLS sessions at once, handshakes included; a new peer beyond
    /// is dropped and counted (`too_many_sessions`). Default 1024.
    #[serde(default = "default_max_dtls_sessions")]
    pub max_dtls_sessions: usize,
    /// How long (seconds) a DTLS handshake may take before its session is
    /// dropped and counted (`dtls_handshake_timeout`). Default 10.
    #[serde(default = "default_dtls_handshake_timeout")]
    pub dtls_handshake_timeout_secs: u64,
    /// How long (seconds) an established DTLS session may stay silent
    /// before it is dropped (the peer then handshakes again). Default 300.
    #[serde(default = "default_dtls_idle_timeout")]
    pub dtls_idle_timeout_secs: u64,
}

/// One `push` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    /// Topic filter of the envelopes to push (`actuators/#`).
    pub filter: TopicFilter,
    /// The device's resource: `coap://host[:port]/path[?query]`; port 5683
    /// when absent.
    pub url: String,
}

fn default_bind() -> String {
    "0.0.0.0:5683".to_owned()
}
fn default_block_size() -> usize {
    1024
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_ack_timeout_ms() -> u64 {
    DEFAULT_ACK_TIMEOUT_MS
}
fn default_ack_random_factor() -> f64 {
    DEFAULT_ACK_RANDOM_FACTOR
}
fn default_max_retransmit() -> u32 {
    DEFAULT_MAX_RETRANSMIT
}
fn default_exchange_lifetime() -> u64 {
    DEFAULT_EXCHANGE_LIFETIME_SECS
}
fn default_dedup_capacity() -> usize {
    65_536
}
fn default_observe_con_interval() -> u64 {
    60
}
fn default_push_queue_depth() -> usize {
    1024
}
fn default_max_observers() -> usize {
    10_000
}
fn default_max_observers_per_peer() -> usize {
    64
}
fn default_dedup_max_bytes() -> usize {
    8 << 20
}
fn default_max_assemblies() -> usize {
    256
}
fn default_max_assemblies_per_peer() -> usize {
    4
}
fn default_max_assembly_bytes() -> usize {
    16 << 20
}
fn default_block2_cache_entries() -> usize {
    1024
}
fn default_block2_cache_per_peer() -> usize {
    8
}
fn default_block2_cache_bytes() -> usize {
    32 << 20
}
fn default_block_lifetime() -> u64 {
    60
}
fn default_discovery_cache_entries() -> usize {
    4096
}
fn default_discovery_cache_bytes() -> usize {
    4 << 20
}
fn default_max_pending_responses() -> usize {
    1024
}
fn default_max_dtls_sessions() -> usize {
    1024
}
fn default_dtls_handshake_timeout() -> u64 {
    10
}
fn default_dtls_idle_timeout() -> u64 {
    300
}

/// A push target with its URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEndpoint {
    /// Which envelopes go there.
    pub filter: TopicFilter,
    /// The URL as written, for logs.
    pub url: String,
    /// Host name or address.
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Uri-Path options, one per segment, percent-decoded.
    pub path: Vec<String>,
    /// Uri-Query options, one per `&`-separated item.
    pub query: Vec<String>,
}

/// Retransmission parameters (RFC 7252 §4.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retransmission {
    /// First timeout, before the random factor.
    pub ack_timeout: Duration,
    /// Random factor applied to the first timeout.
    pub random_factor: f64,
    /// Retransmissions before giving up.
    pub max_retransmit: u32,
}

/// The validated settings the adapter runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind.
    pub bind: SocketAddr,
    /// Push targets.
    pub push: Vec<PushEndpoint>,
    /// Block size in bytes (16..=1024, power of two).
    pub block_size: usize,
    /// Largest assembled request body.
    pub max_body: usize,
    /// CON retransmission parameters.
    pub retransmission: Retransmission,
    /// How long request message ids are remembered.
    pub exchange_lifetime: Duration,
    /// Most remembered exchanges.
    pub dedup_capacity: usize,
    /// Longest time between confirmable notifications to one observer.
    pub observe_con_interval: Duration,
    /// Most observers.
    pub max_observers: usize,
    /// `push_queue_depth` as configured (no longer used).
    pub push_queue_depth: usize,
    /// Bounds of the adapter's caches and per-peer state.
    pub limits: Limits,
    /// The CoAP-over-DTLS server, if configured.
    pub dtls: Option<DtlsSettings>,
}

/// The CoAP-over-DTLS server's settings.
#[derive(Debug, Clone)]
pub struct DtlsSettings {
    /// Address to bind.
    pub bind: SocketAddr,
    /// The pre-shared keys of `psk_file`.
    pub keys: Arc<PskKeys>,
    /// Bounds of its sessions.
    pub limits: DtlsLimits,
}

/// Bounds of the adapter's caches and per-peer state (see [`CoapConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most observers per peer.
    pub observers_per_peer: usize,
    /// Most bytes of remembered responses.
    pub dedup_bytes: usize,
    /// Most Block1 transfers in all.
    pub assemblies: usize,
    /// Most Block1 transfers per peer.
    pub assemblies_per_peer: usize,
    /// Most bytes of Block1 transfers in all.
    pub assembly_bytes: usize,
    /// Most Block2 bodies in all.
    pub block2_entries: usize,
    /// Most Block2 bodies per peer.
    pub block2_per_peer: usize,
    /// Most bytes of Block2 bodies.
    pub block2_bytes: usize,
    /// Lifetime of block-wise state (discovery cursors: at least the
    /// exchange lifetime).
    pub block_lifetime: Duration,
    /// Most discovery cursors.
    pub discovery_entries: usize,
    /// Most bytes of discovery cursors.
    pub discovery_bytes: usize,
    /// Most requests waiting for the hub.
    pub pending_responses: usize,
}

impl Settings {
    /// Parses and checks an adapter's config table.
    pub fn from_config(config: &AdapterConfig) -> Result<Self, ConfigError> {
        let c: CoapConfig = config.parse()?;
        let bind: SocketAddr = c.bind.parse().map_err(|e| {
            ConfigError::key(
                "bind",
                format!(
                    "`{}` is not an IP address and port ({e}); e.g. \"0.0.0.0:5683\"",
                    c.bind
                ),
            )
        })?;
        if !(16..=1024).contains(&c.block_size) || !c.block_size.is_power_of_two() {
            return Err(ConfigError::key(
                "block_size",
                format!(
                    "{} is not a CoAP block size: use 16, 32, 64, 128, 256, 512 or 1024",
                    c.block_size
                ),
            ));
        }
        if c.max_body == 0 {
            return Err(ConfigError::key("max_body", "must be at least 1 byte"));
        }
        if c.ack_timeout_ms == 0 {
            return Err(ConfigError::key("ack_timeout_ms", "must be at least 1 ms"));
        }
        if !(c.ack_random_factor >= 1.0 && c.ack_random_factor <= 10.0) {
            return Err(ConfigError::key(
                "ack_random_factor",
                format!(
                    "{} is out of range: use a number from 1 to 10",
                    c.ack_random_factor
                ),
            ));
        }
        if c.max_retransmit > 20 {
            return Err(ConfigError::key(
                "max_retransmit",
                format!("{} is too many: use 0 to 20", c.max_retransmit),
            ));
        }
        if c.dedup_capacity == 0 {
            return Err(ConfigError::key("dedup_capacity", "must be at least 1"));
        }
        if c.observe_con_interval_secs == 0 {
            return Err(ConfigError::key(
                "observe_con_interval_secs",
                "must be at least 1 second",
            ));
        }
        if c.push_queue_depth == 0 {
            return Err(ConfigError::key("push_queue_depth", "must be at least 1"));
        }
        for (key, v) in [
            ("max_observers_per_peer", c.max_observers_per_peer),
            ("dedup_max_bytes", c.dedup_max_bytes),
            ("max_assemblies", c.max_assemblies),
            ("max_assemblies_per_peer", c.max_assemblies_per_peer),
            ("max_assembly_bytes", c.max_assembly_bytes),
            ("block2_cache_entries", c.block2_cache_entries),
            ("block2_cache_per_peer", c.block2_cache_per_peer),
            ("block2_cache_bytes", c.block2_cache_bytes),
            ("discovery_cache_entries", c.discovery_cache_entries),
            ("discovery_cache_bytes", c.discovery_cache_bytes),
        ] {
            if v == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if c.block_lifetime_secs == 0 {
            return Err(ConfigError::key(
                "block_lifetime_secs",
                "must be at least 1 second",
            ));
        }
        let dtls =
            match (&c.dtls_bind, &c.psk_file) {
                (None, None) => None,
                (None, Some(_)) => return Err(ConfigError::key(
                    "psk_file",
                    "only used with dtls_bind: set dtls_bind = \"0.0.0.0:5684\" or remove psk_file",
                )),
                (Some(_), None) => {
                    return Err(ConfigError::key(
                        "dtls_bind",
                        "needs psk_file (one `identity:key` per line)",
                    ))
                }
                (Some(addr), Some(file)) => {
                    let bind: SocketAddr = addr.parse().map_err(|e| {
                        ConfigError::key(
                            "dtls_bind",
                            format!(
                            "`{addr}` is not an IP address and port ({e}); e.g. \"0.0.0.0:5684\""
                        ),
                        )
                    })?;
                    let keys = PskKeys::load(&config.resolve(file))
                        .map_err(|e| ConfigError::key("psk_file", e))?;
                    for (key, v) in [
                        ("max_dtls_sessions", c.max_dtls_sessions as u64),
                        ("dtls_handshake_timeout_secs", c.dtls_handshake_timeout_secs),
                        ("dtls_idle_timeout_secs", c.dtls_idle_timeout_secs),
                    ] {
                        if v == 0 {
                            return Err(ConfigError::key(key, "must be at least 1"));
                        }
                    }
                    Some(DtlsSettings {
                        bind,
                        keys: Arc::new(keys),
                        limits: DtlsLimits {
                            max_sessions: c.max_dtls_sessions,
                            handshake_timeout: Duration::from_secs(c.dtls_handshake_timeout_secs),
                            idle_timeout: Duration::from_secs(c.dtls_idle_timeout_secs),
                        },
                    })
                }
            };
        let push = c
            .push
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_push_url(&p.url)
                    .map(|(host, port, path, query)| PushEndpoint {
                        filter: p.filter.clone(),
                        url: p.url.clone(),
                        host,
                        port,
                        path,
                        query,
                    })
                    .map_err(|m| ConfigError::key(format!("push[{i}].url"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            bind,
            push,
            block_size: c.block_size,
            max_body: c.max_body,
            retransmission: Retransmission {
                ack_timeout: Duration::from_millis(c.ack_timeout_ms),
                random_factor: c.ack_random_factor,
                max_retransmit: c.max_retransmit,
            },
            exchange_lifetime: Duration::from_secs(c.exchange_lifetime_secs),
            dedup_capacity: c.dedup_capacity,
            observe_con_interval: Duration::from_secs(c.observe_con_interval_secs),
            max_observers: c.max_observers,
            push_queue_depth: c.push_queue_depth,
            limits: Limits {
                observers_per_peer: c.max_observers_per_peer,
                dedup_bytes: c.dedup_max_bytes,
                assemblies: c.max_assemblies,
                assemblies_per_peer: c.max_assemblies_per_peer,
                assembly_bytes: c.max_assembly_bytes,
                block2_entries: c.block2_cache_entries,
                block2_per_peer: c.block2_cache_per_peer,
                block2_bytes: c.block2_cache_bytes,
                block_lifetime: Duration::from_secs(c.block_lifetime_secs),
                discovery_entries: c.discovery_cache_entries,
                discovery_bytes: c.discovery_cache_bytes,
                pending_responses: c.max_pending_responses,
            },
            dtls,
        })
    }
}

/// Splits `coap://host[:port]/a/b?x=1&y` into host, port, path segments and
/// query items.
fn parse_push_url(s: &str) -> Result<(String, u16, Vec<String>, Vec<String>), String> {
    let url = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if url.scheme() != "coap" {
        return Err(format!(
            "`{s}`: scheme `{}` is not supported, use coap://host:port/path",
            url.scheme()
        ));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("`{s}` has no host")),
    };
    let port = url.port().unwrap_or(5683);
    let path = url
        .path_segments()
        .map(|segs| {
            segs.filter(|p| !p.is_empty())
                .map(|p| {
                    percent_encoding::percent_decode_str(p)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    let query = url
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    percent_encoding::percent_decode_str(p)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((host, port, path, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_config(&AdapterConfig::from_toml_str("coap", text).unwrap())
    }

    #[test]
    fn defaults_follow_rfc_7252() {
        let s = settings("").unwrap();
        assert_eq!(s.bind.to_string(), "0.0.0.0:5683");
        assert_eq!(s.block_size, 1024);
        assert_eq!(s.retransmission.ack_timeout, Duration::from_secs(2));
        assert_eq!(s.retransmission.max_retransmit, 4);
        assert_eq!(s.exchange_lifetime, Duration::from_secs(247));
        assert!(s.push.is_empty());
    }

    #[test]
    fn push_urls_are_taken_apart() {
        let s = settings(
            "push = [{ filter = \"actuators/#\", url = \"coap://127.0.0.1:5684/led/a%20b?x=1&y\" }, \
             { filter = \"x\", url = \"coap://[::1]/\" }]",
        )
        .unwrap();
        let p = &s.push[0];
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 5684));
        assert_eq!(p.path, vec!["led", "a b"]);
        assert_eq!(p.query, vec!["x=1", "y"]);
        assert_eq!((s.push[1].host.as_str(), s.push[1].port), ("::1", 5683));
        assert!(s.push[1].path.is_empty());
    }

    #[test]
    fn dtls_needs_a_psk_file() {
        let e = settings("dtls_bind = \"127.0.0.1:5684\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dtls_bind"));
        let e = settings("psk_file = \"x\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("psk_file"));
        let e = settings("dtls_bind = \"127.0.0.1:5684\"\npsk_file = \"/nonexistent/psk\"")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("psk_file"));
        let dir = std::env::temp_dir().join(format!("polyhub-coap-psk-{}", std::process::id()));
        std::fs::write(&dir, "dev1:k1\n").unwrap();
        let s = settings(&format!(
            "dtls_bind = \"127.0.0.1:5684\"\npsk_file = \"{}\"",
            dir.display()
        ))
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        let d = s.dtls.unwrap();
        assert_eq!(d.keys.key("dev1"), Some(&b"k1"[..]));
        assert_eq!(d.limits.max_sessions, 1024);
        assert!(settings("").unwrap().dtls.is_none());
        // A relative psk_file is relative to the config file's directory.
        let dir = std::env::temp_dir().join(format!("polyhub-coap-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("psk"), "dev2:k2\n").unwrap();
        let mut config = AdapterConfig::from_toml_str(
            "coap",
            "dtls_bind = \"127.0.0.1:5684\"\npsk_file = \"psk\"",
        )
        .unwrap();
        config.base_dir = Some(dir.clone());
        let s = Settings::from_config(&config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.dtls.unwrap().keys.key("dev2"), Some(&b"k2"[..]));
    }

    #[test]
    fn bad_keys_are_named() {
        let e = settings("bnd = \"x\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bnd"));
        let e = settings("bind = \"localhost\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bind"));
        let e = settings("max_assemblies_per_peer = 0").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("max_assemblies_per_peer"));
        let e = settings("block_size = 1000").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("block_size"));
        let e = settings("push = [{ filter = \"a\", url = \"http://x/y\" }]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("push[0].url"));
        let e = settings("push = [{ filter = \"a/#/b\", url = \"coap://x/y\" }]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("push[0].filter"));
        let e =
            settings("push = [{ filter = \"a\", url = \"coap://x/y\", extra = 1 }]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("push[0].extra"));
    }
}
