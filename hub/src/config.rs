//! The hub's config file: `[hub]`, `[[adapters]]` and `[[routes]]`, parsed
//! and checked in full before anything starts. Every problem names the file,
//! the adapter and the key, and says what would be valid.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polyhub_sdk::{Adapter, AdapterConfig, AdapterFactory};
use serde::Deserialize;
use thiserror::Error;

use crate::plugin;
use crate::registry::Registry;
use crate::routes::Route;

/// `[hub]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// Name of this hub, used as the origin marker towards brokers.
    #[serde(default = "default_name")]
    pub name: String,
    /// Default depth of every subscription queue (envelopes).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// How long shutdown waits for adapters to finish, in milliseconds.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How long start-up waits for every adapter to be up or down, in milliseconds.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// Most topics the last-value store keeps. Past it the least recently
    /// updated topic without a retained value is evicted; when only retained
    /// values are left, a retained publish on a new topic is refused.
    #[serde(default = "default_max_topics")]
    pub max_topics: usize,
    /// Directory of the embedded store (last and retained values survive a
    /// restart; QoS 1 is acknowledged once on disk). Relative to the config
    /// file's directory. Default: none, everything in memory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// When the store fsyncs: `always`, `batch` (default) or `never`.
    #[serde(default)]
    pub fsync: crate::store::Fsync,
    /// With `fsync = "batch"`: at most one commit per this many
    /// milliseconds. Default 5.
    #[serde(default = "default_fsync_window_ms")]
    pub fsync_window_ms: u64,
    /// Bytes each durable subscriber's queue holds at most (an MQTT
    /// persistent session, an external broker or webhook forward); past it
    /// the oldest envelope is dropped and counted. Default 16 MiB.
    #[serde(default = "default_max_queue_bytes")]
    pub max_queue_bytes: u64,
}

fn default_max_queue_bytes() -> u64 {
    crate::durable::DEFAULT_MAX_QUEUE_BYTES
}

fn default_fsync_window_ms() -> u64 {
    crate::store::DEFAULT_FSYNC_WINDOW_MS
}

fn default_max_topics() -> usize {
    crate::last_value::DEFAULT_MAX_TOPICS
}

fn default_name() -> String {
    "polyhub".to_owned()
}
fn default_queue_depth() -> usize {
    1024
}
fn default_drain_timeout_ms() -> u64 {
    5_000
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}

impl Default for HubSection {
    fn default() -> Self {
        HubSection {
            name: default_name(),
            queue_depth: default_queue_depth(),
            drain_timeout_ms: default_drain_timeout_ms(),
            startup_timeout_ms: default_startup_timeout_ms(),
            max_topics: default_max_topics(),
            data_dir: None,
            fsync: crate::store::Fsync::default(),
            fsync_window_ms: default_fsync_window_ms(),
            max_queue_bytes: default_max_queue_bytes(),
        }
    }
}

/// `[admin]`: the admin API and dashboard listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener (HTTP). Loopback by default. Without
    /// `[auth]` the admin API asks for no credentials, so anyone who reaches
    /// it can publish; with `[auth]`, only `admin_users` get in.
    #[serde(default = "default_admin_bind")]
    pub bind: String,
    /// HTTPS for the admin listener: `tls = { cert = "cert.pem", key =
    /// "key.pem" }` (PEM files, relative to the config file's directory).
    /// Default: plain HTTP.
    pub tls: Option<AdminTls>,
}

/// `[admin] tls`: the admin listener's certificate and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM file with the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The admin listener's TLS server configuration, when `[admin] tls` is set.
#[cfg(feature = "http")]
pub type AdminTlsConfig = std::sync::Arc<polyhub_http::tls::ServerConfig>;
/// Without the `http` feature there is no TLS for the admin listener.
#[cfg(not(feature = "http"))]
pub type AdminTlsConfig = std::convert::Infallible;

fn default_admin_bind() -> String {
    "127.0.0.1:9090".to_owned()
}

/// `[auth]`: who may connect and what each user may do, in Mosquitto's own
/// file formats (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Users and password hashes, as `mosquitto_passwd` (or `polyhub
    /// passwd`) writes them. Relative to the config file's directory.
    pub password_file: Option<PathBuf>,
    /// Mosquitto `acl_file`: `user`, `topic` and `pattern` rules. Relative to
    /// the config file's directory. Without it every user may do everything.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name are let in. Default: true only
    /// when neither file is set.
    pub allow_anonymous: Option<bool>,
    /// Users of the password file who may use the `[admin]` listener (HTTP
    /// Basic). With `[auth]` present nobody else gets in, not even with
    /// `allow_anonymous`. Default: none.
    #[serde(default)]
    pub admin_users: Vec<String>,
}

/// Name of the internal client the admin publishes as.
pub const ADMIN_ADAPTER: &str = "admin";

/// One `[[adapters]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterEntry {
    /// Unique instance name, used in logs, metrics and routes.
    pub name: String,
    /// A built-in kind (`mqtt`, `coap`, `http`, `amqp`, `xmpp`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Path of a plugin shared library, instead of `type`.
    pub plugin: Option<PathBuf>,
    /// `false` keeps the entry in the file without starting it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Depth of this adapter's subscription queues, overriding `[hub] queue_depth`.
    pub queue_depth: Option<usize>,
    /// Worker threads of a plugin's own tokio runtime.
    pub plugin_threads: Option<usize>,
    /// The adapter's own settings.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_true() -> bool {
    true
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// Topic filter envelopes must match.
    pub from: String,
    /// Topic template; `{N}` is the Nth wildcard level of `from`.
    pub to: String,
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[hub]`.
    #[serde(default)]
    pub hub: HubSection,
    /// `[[adapters]]`.
    #[serde(default)]
    pub adapters: Vec<AdapterEntry>,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// `[admin]`, optional.
    #[serde(default)]
    pub admin: Option<AdminSection>,
    /// `[auth]`, optional.
    #[serde(default)]
    pub auth: Option<AuthSection>,
}

/// An adapter ready to start.
pub struct PreparedAdapter {
    /// The entry it came from.
    pub entry: AdapterEntry,
    /// Its kind (the `type`, or the plugin's kind).
    pub kind: String,
    /// The adapter, built by its factory.
    pub adapter: Box<dyn Adapter>,
}

impl fmt::Debug for PreparedAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedAdapter")
            .field("name", &self.entry.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A checked config: every adapter built, every route parsed.
#[derive(Debug)]
pub struct Config {
    /// Where it was read from (`<inline>` for strings).
    pub source: String,
    /// `[hub]`.
    pub hub: HubSection,
    /// Enabled adapters, in file order.
    pub adapters: Vec<PreparedAdapter>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// The admin listener's address, when `[admin]` is present.
    pub admin: Option<std::net::SocketAddr>,
    /// Users and ACL, when `[auth]` is present (files read and checked).
    pub auth: Option<crate::auth::Auth>,
    /// `[auth] admin_users`: who may use the admin listener when `[auth]`
    /// is present.
    pub admin_users: Vec<String>,
    /// `[admin] tls`, loaded.
    pub admin_tls: Option<AdminTlsConfig>,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The adapter at fault, if the problem is in an `[[adapters]]` entry.
    pub adapter: Option<String>,
    /// Dotted key path.
    pub key: Option<String>,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = &self.adapter {
            write!(f, "adapter \"{a}\": ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config file cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The path.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or not the shape of a polyhub config (with line and column).
    #[error("{file}: {message}")]
    Syntax {
        /// The path.
        file: String,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// Valid TOML, but some entries are wrong.
    #[error("{file}: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The path.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            file: file.clone(),
            source,
        })?;
        let config = Self::parse(&text, &file, registry, path.parent())?;
        // A file that starts nothing is a mistake (`polyhub run` would sit
        // idle). Text parsed for an embedding program may have no adapters:
        // it attaches its own clients (`Hub::attach`).
        if config.adapters.is_empty() {
            return Err(ConfigFileError::Invalid {
                file,
                problems: vec![Problem {
                    adapter: None,
                    key: Some("adapters".into()),
                    message: "no enabled [[adapters]], so the hub would do nothing; add one, e.g. \
                              [[adapters]] name = \"http\" type = \"http\" with \
                              [adapters.config] bind = \"127.0.0.1:8080\" (see polyhub.toml)"
                        .into(),
                }],
            });
        }
        Ok(config)
    }

    /// Parses and checks config text; `source` names it in errors, `base_dir`
    /// resolves relative plugin paths.
    pub fn parse(
        text: &str,
        source: &str,
        registry: &Registry,
        base_dir: Option<&Path>,
    ) -> Result<Config, ConfigFileError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
            file: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut problems = Vec::new();
        let mut hub = raw.hub;
        hub.data_dir = hub
            .data_dir
            .take()
            .map(|d| crate::auth::resolve(&d, base_dir));
        if hub.fsync_window_ms > 10_000 {
            problems.push(Problem {
                adapter: None,
                key: Some("hub.fsync_window_ms".into()),
                message: "at most 10000 (QoS 1 publishers wait up to this long)".into(),
            });
        }
        if hub.max_topics == 0 {
            problems.push(Problem {
                adapter: None,
                key: Some("hub.max_topics".into()),
                message: "must be at least 1".into(),
            });
        }
        if hub.queue_depth == 0 {
            problems.push(Problem {
                adapter: None,
                key: Some("hub.queue_depth".into()),
                message: "must be at least 1".into(),
            });
        }
        if hub.name.is_empty() || hub.name.contains(['/', '+', '#', '\0']) {
            problems.push(Problem {
                adapter: None,
                key: Some("hub.name".into()),
                message: "must be non-empty, without `/`, `+`, `#`".into(),
            });
        }

        let admin = match &raw.admin {
            None => None,
            Some(a) => match a.bind.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    problems.push(Problem {
                        adapter: None,
                        key: Some("admin.bind".into()),
                        message: format!(
                            "`{}` is not an address: {e}; expected ip:port such as \"127.0.0.1:9090\"",
                            a.bind
                        ),
                    });
                    None
                }
            },
        };

        let auth = raw
            .auth
            .as_ref()
            .and_then(|a| match load_auth(a, base_dir) {
                Ok(auth) => Some(auth),
                Err((key, e)) => {
                    problems.push(Problem {
                        adapter: None,
                        key: Some(key.into()),
                        message: e.to_string(),
                    });
                    None
                }
            });

        let mut names = HashSet::new();
        let mut adapters = Vec::new();
        for (i, entry) in raw.adapters.into_iter().enumerate() {
            let label = if entry.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                entry.name.clone()
            };
            let problem = |key: Option<&str>, message: String| Problem {
                adapter: Some(label.clone()),
                key: key.map(str::to_owned),
                message,
            };
            if entry.name.is_empty() {
                problems.push(problem(Some("name"), "must not be empty".into()));
                continue;
            }
            if entry.name == crate::hub::ROUTES_ADAPTER {
                problems.push(problem(
                    Some("name"),
                    format!(
                        "`{}` is reserved for [[routes]]",
                        crate::hub::ROUTES_ADAPTER
                    ),
                ));
                continue;
            }
            if raw.admin.is_some() && entry.name == ADMIN_ADAPTER {
                problems.push(problem(
                    Some("name"),
                    format!("`{ADMIN_ADAPTER}` is reserved for the [admin] listener's publishes"),
                ));
                continue;
            }
            if !names.insert(entry.name.clone()) {
                problems.push(problem(
                    Some("name"),
                    "another adapter already has this name; names must be unique".into(),
                ));
                continue;
            }
            if entry.queue_depth == Some(0) {
                problems.push(problem(Some("queue_depth"), "must be at least 1".into()));
            }
            let factory: Arc<dyn AdapterFactory> = match (&entry.kind, &entry.plugin) {
                (Some(_), Some(_)) => {
                    problems.push(problem(Some("type"), "set either `type` (a built-in adapter) or `plugin` (a shared library), not both".into()));
                    continue;
                }
                (None, None) => {
                    problems.push(problem(
                        None,
                        format!(
                            "missing `type` (one of: {}) or `plugin` (path of a shared library)",
                            registry.kinds().join(", ")
                        ),
                    ));
                    continue;
                }
                (Some(kind), None) => match registry.get(kind) {
                    Some(f) => f,
                    None => {
                        problems.push(problem(
                            Some("type"),
                            format!(
                                "unknown adapter type `{kind}`; known types: {}",
                                registry.kinds().join(", ")
                            ),
                        ));
                        continue;
                    }
                },
                (None, Some(path)) => {
                    let path = match base_dir {
                        Some(dir) if path.is_relative() && !path.exists() => dir.join(path),
                        _ => path.clone(),
                    };
                    match plugin::load_factory(&path, entry.plugin_threads) {
                        Ok(f) => f,
                        Err(e) => {
                            problems.push(problem(Some("plugin"), e.to_string()));
                            continue;
                        }
                    }
                }
            };
            let adapter_config = AdapterConfig {
                name: entry.name.clone(),
                table: entry.config.clone(),
                base_dir: base_dir.map(Path::to_path_buf),
            };
            match factory.create(&adapter_config) {
                Ok(adapter) => {
                    if entry.enabled {
                        adapters.push(PreparedAdapter {
                            kind: factory.kind().to_owned(),
                            entry,
                            adapter,
                        });
                    }
                }
                Err(e) => problems.push(problem(
                    Some(&match &e.key {
                        Some(k) => format!("config.{k}"),
                        None => "config".to_owned(),
                    }),
                    e.message,
                )),
            }
        }

        problems.extend(port_conflicts(&adapters, admin));

        let admin_tls = raw
            .admin
            .as_ref()
            .and_then(|a| a.tls.as_ref())
            .and_then(|tls| match load_admin_tls(tls, base_dir) {
                Ok(config) => Some(config),
                Err(p) => {
                    problems.push(p);
                    None
                }
            });

        let admin_users = raw
            .auth
            .as_ref()
            .map(|a| a.admin_users.clone())
            .unwrap_or_default();
        for (i, user) in admin_users.iter().enumerate() {
            if user.is_empty() || user.contains(':') {
                problems.push(Problem {
                    adapter: None,
                    key: Some(format!("auth.admin_users[{i}]")),
                    message: format!(
                        "`{user}` is not a user name: names are non-empty and hold no `:`"
                    ),
                });
            }
        }

        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            match Route::new(&r.from, &r.to) {
                Ok(route) => routes.push(route),
                Err(message) => problems.push(Problem {
                    adapter: None,
                    key: Some(format!("routes[{i}]")),
                    message,
                }),
            }
        }

        if problems.is_empty() {
            Ok(Config {
                source: source.to_owned(),
                hub,
                adapters,
                routes,
                admin,
                auth,
                admin_users,
                admin_tls,
            })
        } else {
            Err(ConfigFileError::Invalid {
                file: source.to_owned(),
                problems,
            })
        }
    }
}

/// Reads `[admin] tls`'s certificate and key.
#[cfg(feature = "http")]
fn load_admin_tls(tls: &AdminTls, base_dir: Option<&Path>) -> Result<AdminTlsConfig, Problem> {
    let config = polyhub_http::TlsConfig {
        cert: crate::auth::resolve(&tls.cert, base_dir),
        key: crate::auth::resolve(&tls.key, base_dir),
    };
    polyhub_http::tls::load(&config).map_err(|e| Problem {
        adapter: None,
        key: Some(match &e.key {
            Some(k) => format!("admin.{k}"),
            None => "admin.tls".to_owned(),
        }),
        message: e.message,
    })
}

#[cfg(not(feature = "http"))]
fn load_admin_tls(_: &AdminTls, _: Option<&Path>) -> Result<AdminTlsConfig, Problem> {
    Err(Problem {
        adapter: None,
        key: Some("admin.tls".into()),
        message: "this polyhub was built without the `http` feature, which serves TLS".into(),
    })
}

/// Reads the files `[auth]` names; on error, the key of the file at fault.
fn load_auth(
    section: &AuthSection,
    base_dir: Option<&Path>,
) -> Result<crate::auth::Auth, (&'static str, crate::auth::AuthError)> {
    use crate::auth::{resolve, Acl, Auth, AuthSettings, PasswordFile};
    let settings = AuthSettings {
        password_file: section
            .password_file
            .as_deref()
            .map(|p| resolve(p, base_dir)),
        acl_file: section.acl_file.as_deref().map(|p| resolve(p, base_dir)),
        allow_anonymous: section
            .allow_anonymous
            .unwrap_or(section.password_file.is_none() && section.acl_file.is_none()),
    };
    // Each file on its own first, so that the error names the right key.
    if let Some(p) = &settings.password_file {
        PasswordFile::load(p).map_err(|e| ("auth.password_file", e))?;
    }
    if let Some(p) = &settings.acl_file {
        Acl::load(p).map_err(|e| ("auth.acl_file", e))?;
    }
    Auth::load(settings).map_err(|e| ("auth", e))
}

/// One listening socket a config asks for.
struct Listener {
    owner: Option<String>,
    key: String,
    addr: std::net::SocketAddr,
    udp: bool,
}

/// The listening addresses of an adapter's table: keys `bind`, `listen` and
/// `*_bind`, `*_listen` whose value is an `ip:port` (port 0 left out).
fn listeners(entry: &AdapterEntry, kind: &str) -> Vec<Listener> {
    entry
        .config
        .iter()
        .filter(|(k, _)| {
            *k == "bind" || *k == "listen" || k.ends_with("_bind") || k.ends_with("_listen")
        })
        .filter_map(|(k, v)| {
            let addr: std::net::SocketAddr = v.as_str()?.parse().ok()?;
            (addr.port() != 0).then(|| Listener {
                owner: Some(entry.name.clone()),
                key: format!("config.{k}"),
                addr,
                udp: kind == "coap" || k.starts_with("dtls"),
            })
        })
        .collect()
}

/// Two listeners of this config on one port (same transport, and the same
/// address or either on all addresses): one problem naming both.
fn port_conflicts(
    adapters: &[PreparedAdapter],
    admin: Option<std::net::SocketAddr>,
) -> Vec<Problem> {
    let mut all: Vec<Listener> = admin
        .filter(|a| a.port() != 0)
        .map(|addr| Listener {
            owner: None,
            key: "admin.bind".into(),
            addr,
            udp: false,
        })
        .into_iter()
        .collect();
    all.extend(adapters.iter().flat_map(|a| listeners(&a.entry, &a.kind)));
    let mut problems = Vec::new();
    for (i, b) in all.iter().enumerate() {
        let Some(a) = all[..i].iter().find(|a| {
            a.udp == b.udp
                && a.addr.port() == b.addr.port()
                && (a.addr.ip() == b.addr.ip()
                    || a.addr.ip().is_unspecified()
                    || b.addr.ip().is_unspecified())
        }) else {
            continue;
        };
        let first = match &a.owner {
            Some(name) => format!("adapter \"{name}\" (`{}` = \"{}\")", a.key, a.addr),
            None => format!("[admin] (`{}` = \"{}\")", a.key, a.addr),
        };
        problems.push(Problem {
            adapter: b.owner.clone(),
            key: Some(b.key.clone()),
            message: format!(
                "port {}/{} is also taken by {first}; two listeners cannot share a port: give one of them another port",
                b.addr.port(),
                if b.udp { "udp" } else { "tcp" },
            ),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::{AdapterContext, AdapterError, ConfigError};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct DemoConfig {
        listen: String,
    }

    struct Demo;
    #[polyhub_sdk::reexports::async_trait]
    impl Adapter for Demo {
        async fn run(self: Box<Self>, _ctx: AdapterContext) -> Result<(), AdapterError> {
            Ok(())
        }
    }
    struct DemoFactory;
    impl AdapterFactory for DemoFactory {
        fn kind(&self) -> &str {
            "demo"
        }
        fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError> {
            config.parse::<DemoConfig>()?;
            Ok(Box::new(Demo))
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.add(DemoFactory);
        r
    }

    fn parse(text: &str) -> Result<Config, ConfigFileError> {
        Config::parse(text, "test.toml", &registry(), None)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_config_parses() {
        let c = parse(
            r#"
            [hub]
            name = "h"
            [[adapters]]
            name = "d"
            type = "demo"
            [adapters.config]
            listen = "x"
            [[routes]]
            from = "a/+"
            to = "b/{1}"
            "#,
        )
        .unwrap();
        assert_eq!(c.adapters.len(), 1);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.hub.name, "h");
    }

    #[test]
    fn misspelled_adapter_key_names_file_adapter_and_key() {
        let e = err("[[adapters]]\nname = \"d\"\ntype = \"demo\"\n[adapters.config]\nlisten = \"x\"\nlisen = \"y\"\n");
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("adapter \"d\""), "{e}");
        assert!(e.contains("key `config.lisen`"), "{e}");
        assert!(
            e.contains("expected `listen`") || e.contains("expected one of"),
            "{e}"
        );
    }

    #[test]
    fn unknown_type_lists_known_types() {
        let e = err("[[adapters]]\nname = \"d\"\ntype = \"zigbee\"\n");
        assert!(
            e.contains("unknown adapter type `zigbee`; known types: demo"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_show_line_and_column() {
        let e = err("[hub]\nname = \n");
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_top_level_and_entry_keys_are_rejected_with_position() {
        let e = err("[hub]\nnmae = \"x\"\n");
        assert!(
            e.contains("unknown field `nmae`") && e.contains("line 2"),
            "{e}"
        );
        let e = err("[[adapters]]\nname = \"d\"\ntyp = \"demo\"\n");
        assert!(
            e.contains("unknown field `typ`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_type_and_plugin_together_and_bad_routes_are_reported_together() {
        let e = err(
            "[[adapters]]\nname = \"d\"\ntype = \"demo\"\nconfig = { listen = \"x\" }\n\
             [[adapters]]\nname = \"d\"\ntype = \"demo\"\n\
             [[adapters]]\nname = \"e\"\ntype = \"demo\"\nplugin = \"x.so\"\n\
             [[routes]]\nfrom = \"a/+\"\nto = \"b/{3}\"\n",
        );
        assert!(e.contains("names must be unique"), "{e}");
        assert!(e.contains("not both"), "{e}");
        assert!(e.contains("key `routes[0]`"), "{e}");
    }

    #[test]
    fn wrong_value_types_are_errors_not_panics() {
        for text in [
            "hub = 3",
            "[[adapters]]\nname = 3",
            "[hub]\nqueue_depth = -1",
            "[hub]\nqueue_depth = 0",
            "adapters = \"x\"",
            "[[adapters]]\nname = \"d\"\ntype = \"demo\"\nconfig = 5",
            "[[routes]]\nfrom = \"#\"",
            "\u{0}",
        ] {
            assert!(parse(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn a_config_file_without_adapters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "",
            "[hub]\nname = \"h\"\n",
            "[[adapters]]\nname = \"x\"\ntype = \"demo\"\nenabled = false\n[adapters.config]\nlisten = \"x\"\n",
        ] {
            let path = dir.path().join("empty.toml");
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path, &registry()).unwrap_err().to_string();
            assert!(e.contains("no enabled [[adapters]]"), "{text:?}: {e}");
        }
        // An embedding program may start a hub of attached clients only.
        assert!(parse("").is_ok());
    }

    #[test]
    fn two_listeners_on_one_port_are_refused_naming_both() {
        let e = err(
            "[[adapters]]\nname = \"a\"\ntype = \"demo\"\nconfig = { listen = \"0.0.0.0:8080\" }\n\
             [[adapters]]\nname = \"b\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.1:8080\" }\n",
        );
        assert!(e.contains("adapter \"b\": key `config.listen`"), "{e}");
        assert!(
            e.contains("port 8080/tcp is also taken by adapter \"a\""),
            "{e}"
        );
        let e = err(
            "[admin]\nbind = \"127.0.0.1:9090\"\n\
             [[adapters]]\nname = \"a\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.1:9090\" }\n",
        );
        assert!(e.contains("also taken by [admin]"), "{e}");
        // Other ports, or other addresses, are fine.
        parse(
            "[[adapters]]\nname = \"a\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.1:8080\" }\n\
             [[adapters]]\nname = \"b\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.2:8080\" }\n\
             [[adapters]]\nname = \"c\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.1:0\" }\n\
             [[adapters]]\nname = \"d\"\ntype = \"demo\"\nconfig = { listen = \"127.0.0.1:0\" }\n",
        )
        .unwrap();
    }

    #[test]
    fn admin_section_is_checked() {
        let e = err("[admin]\nbind = \"nowhere\"\n[[adapters]]\nname = \"admin\"\ntype = \"demo\"\nconfig = { listen = \"x\" }\n");
        assert!(e.contains("key `admin.bind`"), "{e}");
        assert!(e.contains("reserved for the [admin] listener"), "{e}");
        let c = parse(
            "[admin]\n[[adapters]]\nname = \"d\"\ntype = \"demo\"\nconfig = { listen = \"x\" }\n",
        )
        .unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn disabled_adapters_are_checked_but_not_started() {
        let c = parse("[[adapters]]\nname = \"d\"\ntype = \"demo\"\nenabled = false\nconfig = { listen = \"x\" }\n").unwrap();
        assert!(c.adapters.is_empty());
        let e = err("[[adapters]]\nname = \"d\"\ntype = \"demo\"\nenabled = false\n");
        assert!(e.contains("missing field `listen`"), "{e}");
    }
}
