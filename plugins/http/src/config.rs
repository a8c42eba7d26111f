//! The `[adapters.config]` table of a `type = "http"` adapter, and its
//! validation (done by `create`, so `polyhub check` reports every problem).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use polyhub_sdk::reconnect::{self, Backoff};
use polyhub_sdk::{ConfigError, TopicFilter};
use serde::Deserialize;

/// Settings of one HTTP adapter.
///
/// ```toml
/// [adapters.config]
/// bind = "0.0.0.0:8080"
/// max_body_bytes = 1048576
/// max_connections = 10000
/// header_timeout_secs = 30
/// body_timeout_secs = 30
/// tokens = { "s3cret" = "user1" }
/// metrics_auth = false
/// tls = { cert = "cert.pem", key = "key.pem" }
/// webhooks = [{ filter = "alerts/#", url = "http://127.0.0.1:9000/hook" }]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `IP:port`. Default `0.0.0.0:8080`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Largest request body accepted, in bytes; a larger one is answered
    /// `413`. Default 1 MiB (1048576).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most connections open at once (TLS handshakes under way included).
    /// Past it a new connection is accepted and closed at once, counted as
    /// `polyhub_rejected_total{reason="too_many_connections"}`; the open
    /// ones keep working. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, in seconds,
    /// counted from when it opens and, on a keep-alive connection, from the
    /// end of its previous response: this is also the idle keep-alive
    /// timeout (hyper runs one timer for both). Past it the connection is
    /// closed, counted as `reason="header_timeout"` when it had served no
    /// request yet, else as the `idle_timeouts` counter. Default 30.
    #[serde(default = "default_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Time a request body has to arrive in full, in seconds: a total
    /// deadline from when the hub starts reading it (not an idle timer, so a
    /// body dribbled a byte at a time cannot hold a connection forever).
    /// Past it the request is answered `408` and the connection closed,
    /// counted as `reason="body_timeout"`. Default 30.
    #[serde(default = "default_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Bearer tokens accepted in `Authorization: Bearer …` (and in
    /// `?access_token=…` on `/events`, since browsers' `EventSource` cannot
    /// set headers). A map `{ "TOKEN" = "USER" }` names the user each token
    /// stands for, checked against `[auth]`'s ACL like a user who logged in
    /// with a password; a list `["TOKEN", …]` (the earlier form) holds tokens
    /// without a user, which get what anonymous clients get. Without `[auth]`,
    /// a non-empty `tokens` makes `/topics` and `/events` require a token.
    /// Default: none.
    #[serde(default)]
    pub tokens: Tokens,
    /// Whether `/metrics` and `/health` require credentials (HTTP Basic of a
    /// user in `[auth]`'s password file, or a token of `tokens`); anonymous
    /// requests get `401`. Needs `[auth]` or `tokens`. Default: false (open).
    #[serde(default)]
    pub metrics_auth: bool,
    /// Serve HTTPS with this certificate and key (PEM files). Default: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Interval between keep-alive comments on `/events` streams, in
    /// seconds. Default 15.
    #[serde(default = "default_keep_alive_secs")]
    pub sse_keep_alive_secs: u64,
    /// Queue depth of each `/events` stream, in envelopes. Default: the
    /// hub's `queue_depth` for this adapter. (Webhooks have durable queues
    /// bounded by `[hub] max_queue_bytes` instead.)
    #[serde(default)]
    pub queue_depth: Option<usize>,
    /// HTTP endpoints that receive matching envelopes as `POST`s.
    /// Default: none.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// The `tokens` key: a map token → user, or (the earlier form) a list of
/// tokens without a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tokens {
    /// `{ "TOKEN" = "USER" }`.
    Users(std::collections::BTreeMap<String, String>),
    /// `["TOKEN", …]`: tokens that act as an anonymous client.
    Anonymous(Vec<String>),
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Anonymous(Vec::new())
    }
}

impl Tokens {
    /// Every token with its user (`None`: anonymous-equivalent).
    pub fn entries(&self) -> Vec<(String, Option<String>)> {
        match self {
            Tokens::Users(map) => map
                .iter()
                .map(|(t, u)| (t.clone(), Some(u.clone())))
                .collect(),
            Tokens::Anonymous(list) => list.iter().map(|t| (t.clone(), None)).collect(),
        }
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        match self {
            Tokens::Users(map) => map.is_empty(),
            Tokens::Anonymous(list) => list.is_empty(),
        }
    }
}

/// A certificate chain and private key for HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One webhook: every envelope matching `filter` is `POST`ed to `url` with
/// the payload as body and the topic in `X-Polyhub-Topic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Topic filter (MQTT wildcards) selecting the envelopes to send.
    pub filter: TopicFilter,
    /// `http://` or `https://` URL to `POST` to.
    pub url: String,
    /// Failed retries after which the webhook logs at WARN that it keeps
    /// failing. Retries go on, with exponential backoff from
    /// `reconnect_min_ms` to `reconnect_max_ms`, until the receiver takes
    /// the envelope: nothing is dropped after them any more (the webhook's
    /// durable queue, bounded by `[hub] max_queue_bytes`, holds what comes
    /// meanwhile). Default 5.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry delay in milliseconds, doubled (jittered) on each retry.
    /// Default 100.
    #[serde(default)]
    pub reconnect_min_ms: Option<u64>,
    /// Longest retry delay in milliseconds. Default 5000.
    #[serde(default = "reconnect::default_max_ms")]
    pub reconnect_max_ms: u64,
    /// Deprecated: the earlier name of `reconnect_min_ms`, still read when
    /// `reconnect_min_ms` is absent.
    #[serde(default)]
    pub retry_backoff_ms: Option<u64>,
    /// Time limit for one request, in milliseconds. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_bind() -> String {
    "0.0.0.0:8080".to_owned()
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_max_connections() -> usize {
    10_000
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_keep_alive_secs() -> u64 {
    15
}

fn default_retries() -> u32 {
    5
}

fn default_timeout_ms() -> u64 {
    5000
}

/// A webhook after validation.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Filter selecting envelopes.
    pub filter: TopicFilter,
    /// Target URL.
    pub url: url::Url,
    /// Failed retries before the webhook warns that it keeps failing.
    pub retries: u32,
    /// First retry delay.
    pub backoff: Backoff,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl HttpConfig {
    /// Checks what serde cannot: the address, limits and URLs.
    pub fn validate(&self) -> Result<(SocketAddr, Vec<Webhook>), ConfigError> {
        let addr: SocketAddr = self.bind.parse().map_err(|e| {
            ConfigError::key(
                "bind",
                format!(
                    "`{}` is not an IP:port address ({e}); e.g. \"0.0.0.0:8080\"",
                    self.bind
                ),
            )
        })?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::key(
                "max_body_bytes",
                "must be at least 1 (default 1048576)",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                "max_connections",
                "must be at least 1 (default 10000)",
            ));
        }
        if self.header_timeout_secs == 0 {
            return Err(ConfigError::key(
                "header_timeout_secs",
                "must be at least 1 second (default 30)",
            ));
        }
        if self.body_timeout_secs == 0 {
            return Err(ConfigError::key(
                "body_timeout_secs",
                "must be at least 1 second (default 30)",
            ));
        }
        if self.sse_keep_alive_secs == 0 {
            return Err(ConfigError::key(
                "sse_keep_alive_secs",
                "must be at least 1 second (default 15)",
            ));
        }
        if self.queue_depth == Some(0) {
            return Err(ConfigError::key("queue_depth", "must be at least 1"));
        }
        for (t, user) in self.tokens.entries() {
            let key = match &self.tokens {
                Tokens::Users(_) => format!("tokens.{t}"),
                Tokens::Anonymous(list) => {
                    format!("tokens[{}]", list.iter().position(|x| *x == t).unwrap_or(0))
                }
            };
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::key(
                    key,
                    "a token must be non-empty visible ASCII without spaces",
                ));
            }
            if user.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::key(key, "the user name must not be empty"));
            }
        }
        let mut hooks = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.iter().enumerate() {
            let url = url::Url::parse(&w.url).map_err(|e| {
                ConfigError::key(
                    format!("webhooks[{i}].url"),
                    format!("`{}` is not a URL ({e})", w.url),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::key(
                    format!("webhooks[{i}].url"),
                    format!(
                        "`{}`: expected an http:// or https:// URL with a host",
                        w.url
                    ),
                ));
            }
            if w.timeout_ms == 0 {
                return Err(ConfigError::key(
                    format!("webhooks[{i}].timeout_ms"),
                    "must be at least 1",
                ));
            }
            let min_ms = w
                .reconnect_min_ms
                .or(w.retry_backoff_ms)
                .unwrap_or(reconnect::DEFAULT_MIN_MS);
            let backoff = Backoff::from_ms(min_ms, w.reconnect_max_ms.max(min_ms))
                .map_err(|(key, why)| ConfigError::key(format!("webhooks[{i}].{key}"), why))?;
            hooks.push(Webhook {
                filter: w.filter.clone(),
                url,
                retries: w.retries,
                backoff,
                timeout: Duration::from_millis(w.timeout_ms),
            });
        }
        Ok((addr, hooks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::AdapterConfig;

    fn parse(text: &str) -> Result<HttpConfig, ConfigError> {
        AdapterConfig::from_toml_str("web", text)?.parse::<HttpConfig>()
    }

    #[test]
    fn defaults_are_as_documented() {
        let c = parse("").unwrap();
        assert_eq!(c.bind, "0.0.0.0:8080");
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert!(c.tokens.is_empty() && c.tls.is_none() && c.webhooks.is_empty());
        assert_eq!(c.sse_keep_alive_secs, 15);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!((c.header_timeout_secs, c.body_timeout_secs), (30, 30));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("bnid = \"x\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bnid"));
        let e =
            parse("webhooks = [{ filter = \"a/#\", url = \"http://x/\", retry = 1 }]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("webhooks[0].retry"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse("bind = \"localhost\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bind"));
        let e = parse("webhooks = [{ filter = \"a/#\", url = \"ftp://x/\" }]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("webhooks[0].url"));
        let e = parse("webhooks = [{ filter = \"a/#/b\", url = \"http://x/\" }]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("webhooks[0].filter"));
        let e = parse("max_body_bytes = 0").unwrap().validate().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("max_body_bytes"));
        for key in [
            "max_connections",
            "header_timeout_secs",
            "body_timeout_secs",
        ] {
            let e = parse(&format!("{key} = 0"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key));
        }
        let e = parse("tokens = [\"a b\"]").unwrap().validate().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tokens[0]"));
        let e = parse("tokens = { \"t\" = \"\" }")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tokens.t"));
    }

    #[test]
    fn tokens_are_a_map_to_users_or_a_list() {
        let c = parse("tokens = { \"s3cret\" = \"user1\" }").unwrap();
        assert_eq!(
            c.tokens.entries(),
            vec![("s3cret".to_owned(), Some("user1".to_owned()))]
        );
        let c = parse("tokens = [\"a\", \"b\"]").unwrap();
        assert_eq!(
            c.tokens.entries(),
            vec![("a".to_owned(), None), ("b".to_owned(), None)]
        );
        assert!(parse("tokens = 3").is_err());
    }
}
