//! `polyhub compare`: the same payloads sent end to end through each
//! protocol (a client of that protocol → the hub → a client of that
//! protocol), measured on the wire by byte-counting relays and the kernel's
//! TCP counters. `METHOD.md` beside this file says what is measured, how,
//! and how to read the results.
//!
//! The hub runs in-process on its own runtime (`cmp-hub` threads) with a
//! generated config on free ports; every protocol gets two adapter
//! instances, one the publisher talks to and one the subscriber talks to, so
//! each message really crosses the hub's router (the hub never delivers an
//! envelope back to the instance it came from).

pub mod chart;
pub mod clients;
pub mod payload;
pub mod relay;
pub mod report;
mod session;
pub mod spec;
pub mod stats;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use report::{Report, Row, Skipped};

/// The protocols `polyhub compare` knows, in display order.
pub const PROTOCOLS: [Protocol; 5] = [
    Protocol::Mqtt,
    Protocol::Coap,
    Protocol::Http,
    Protocol::Amqp,
    Protocol::Xmpp,
];

/// One protocol under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1.1 through the hub's embedded broker.
    Mqtt,
    /// CoAP over UDP.
    Coap,
    /// HTTP/1.1 POST in, Server-Sent Events out.
    Http,
    /// AMQP 0-9-1 through RabbitMQ.
    Amqp,
    /// XMPP c2s through Prosody.
    Xmpp,
}

impl Protocol {
    /// Lower-case name (also the adapter `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Coap => "coap",
            Protocol::Http => "http",
            Protocol::Amqp => "amqp",
            Protocol::Xmpp => "xmpp",
        }
    }

    /// What "at-most-once" and "acknowledged" mean for this protocol.
    pub fn delivery(self, acked: bool) -> &'static str {
        match (self, acked) {
            (Protocol::Mqtt, false) => "QoS 0 both hops",
            (Protocol::Mqtt, true) => "QoS 1 both hops (PUBACK)",
            (Protocol::Coap, false) => "NON POST, NON/CON notifications as the hub sends them",
            (Protocol::Coap, true) => "CON POST (piggybacked ACK), CON notifications (ACK)",
            (Protocol::Http, _) => "POST answered 202 (no unacknowledged mode); SSE over TCP",
            (Protocol::Amqp, false) => "no confirms, no_ack consumer",
            (Protocol::Amqp, true) => "publisher confirms, manual consumer acks",
            (Protocol::Xmpp, false) => "plain <message>; XEP-0198 if the server enables it",
            (Protocol::Xmpp, true) => "XEP-0198 <a/> awaited for each stanza",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = CompareError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PROTOCOLS
            .into_iter()
            .find(|p| p.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                CompareError::Usage(format!(
                    "unknown protocol \"{s}\" (known: mqtt, coap, http, amqp, xmpp)"
                ))
            })
    }
}

/// Where the external servers are and how to log in to them.
#[derive(Debug, Clone)]
pub struct Servers {
    /// RabbitMQ (AMQP 0-9-1). Default `127.0.0.1:5672`.
    pub amqp: SocketAddr,
    /// RabbitMQ user and password. Default `guest`/`guest`.
    pub amqp_login: (String, String),
    /// XMPP server c2s address (plaintext on loopback). Default
    /// `127.0.0.1:$POLYHUB_XMPP_PORT` when that is set (scripts/setup), else
    /// `127.0.0.1:5222`.
    pub xmpp: SocketAddr,
    /// XMPP domain of the accounts. Default `localhost`.
    pub xmpp_domain: String,
    /// Password of the four compare accounts (`polyhub-cmp-pub`, `-sub`,
    /// `-in`, `-out`). Default `polyhub-cmp`.
    pub xmpp_password: String,
}

impl Default for Servers {
    fn default() -> Self {
        Servers {
            amqp: SocketAddr::from(([127, 0, 0, 1], 5672)),
            amqp_login: ("guest".into(), "guest".into()),
            xmpp: SocketAddr::from((
                [127, 0, 0, 1],
                std::env::var("POLYHUB_XMPP_PORT")
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(5222),
            )),
            xmpp_domain: "localhost".into(),
            xmpp_password: "polyhub-cmp".into(),
        }
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct Options {
    /// Protocols, in order.
    pub protocols: Vec<Protocol>,
    /// Payload sizes in bytes (each at least 16).
    pub sizes: Vec<usize>,
    /// Messages per protocol and size (each phase).
    pub messages: usize,
    /// Acknowledged delivery (`--qos 1`) instead of at-most-once.
    pub acked: bool,
    /// Where `compare.json`, `compare.csv` and the charts go; none: no files.
    pub out: Option<PathBuf>,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// External servers.
    pub servers: Servers,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protocols: PROTOCOLS.to_vec(),
            sizes: vec![16, 256, 1024, 4096],
            messages: 200,
            acked: false,
            out: None,
            progress: false,
            servers: Servers::default(),
        }
    }
}

/// Why a comparison (or one protocol of it) failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CompareError {
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
    /// A protocol client failed.
    #[error("{protocol} client: {message}")]
    Client {
        /// The protocol.
        protocol: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The hub did not start with the generated config.
    #[error("hub: {0}")]
    Hub(String),
    /// Something took longer than its bound.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Local I/O (sockets, output files).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Writing a chart failed.
    #[error("chart {path}: {message}")]
    Chart {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A [`CompareError::Client`] from anything printable.
pub(crate) fn client_err(protocol: &'static str, e: impl fmt::Display) -> CompareError {
    CompareError::Client {
        protocol,
        message: e.to_string(),
    }
}

impl Options {
    /// Checks the values a user gave.
    pub fn validate(&self) -> Result<(), CompareError> {
        if self.protocols.is_empty() {
            return Err(CompareError::Usage("--protocols: none given".into()));
        }
        if self.sizes.is_empty() {
            return Err(CompareError::Usage("--sizes: none given".into()));
        }
        if let Some(s) = self
            .sizes
            .iter()
            .find(|s| **s < payload::MIN_PAYLOAD || **s > 1 << 20)
        {
            return Err(CompareError::Usage(format!(
                "--sizes: {s} is out of range ({} to 1048576 bytes: a payload carries a 16-byte sequence number and timestamp)",
                payload::MIN_PAYLOAD
            )));
        }
        if self.messages == 0
            || self.messages * 2 * self.sizes.len() + 64 > payload::MAX_SEQ as usize
        {
            return Err(CompareError::Usage(format!(
                "--messages: {} is out of range (1 to {})",
                self.messages,
                (payload::MAX_SEQ as usize - 64) / (2 * self.sizes.len())
            )));
        }
        Ok(())
    }
}

/// Runs the whole comparison (blocking: it owns its runtimes). Protocols
/// whose server is unreachable, whose adapter is not compiled in, or whose
/// run fails are reported as skipped with the reason; the rest still run.
pub fn run(options: &Options) -> Result<Report, CompareError> {
    options.validate()?;
    let hub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cmp-hub")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(stats::CLIENT_THREAD_PREFIX)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    let report = client_rt.block_on(session::run_all(options, hub_rt.handle().clone()));
    client_rt.shutdown_timeout(Duration::from_secs(2));
    hub_rt.shutdown_timeout(Duration::from_secs(2));
    if let Some(dir) = &options.out {
        report.write_files(dir)?;
    }
    Ok(report)
}
