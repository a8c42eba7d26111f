//! The embedded MQTT 3.1.1 and 5.0 broker. rumqttc's codecs read and write
//! the packets ([`codec`]); everything else is here, on tokio, and goes
//! through the hub: a device's PUBLISH is `ctx.publish`, each session's
//! subscriptions are one hub subscription (with `include_own`, so devices
//! reach each other through the hub's router), and retained messages come
//! from the hub's store.
//!
//! One task per session ([`session`]) owns its state across reconnects; a
//! connection is handed to it after CONNECT. Shared subscriptions
//! (`$share/GROUP/FILTER`) are one hub subscription per group whose task
//! hands each message to one member ([`shared`]).
//!
//! Devices connect over TCP, TLS, WebSocket or WebSocket over TLS
//! ([`listen`], [`ws`]); past the handshake every one is the same byte
//! stream to the session code.

mod codec;
mod listen;
mod session;
mod shared;
mod ws;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use polyhub_sdk::{AdapterContext, AdapterError, AdapterState, Envelope, Topic, TopicFilter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::BrokerSettings;

pub(crate) use session::Msg;

/// Depth of each session's hub subscription queue.
const SESSION_QUEUE: usize = 256;
/// Depth of each session's inbox (handed connections, shared and local
/// deliveries).
const INBOX: usize = 64;

/// State shared by the listeners and every session.
pub(crate) struct Broker {
    pub(crate) ctx: AdapterContext,
    pub(crate) settings: BrokerSettings,
    /// Device publishes that enter the hub (others stay among devices).
    pub(crate) subscribe: Vec<TopicFilter>,
    /// Envelopes of other adapters that devices may receive.
    pub(crate) forward: Vec<TopicFilter>,
    /// Live sessions by client id.
    pub(crate) sessions: Mutex<HashMap<Arc<str>, mpsc::Sender<Msg>>>,
    /// Shared-subscription groups.
    pub(crate) groups: shared::Groups,
    /// Open network connections (handshaking or attached).
    pub(crate) connections: AtomicUsize,
    /// Sequence for assigned client identifiers.
    pub(crate) assigned: AtomicU64,
    /// Cancelled when the broker stops: every session closes.
    pub(crate) stop: CancellationToken,
}

impl Broker {
    /// Counts one refused packet or connection.
    pub(crate) fn rejected(&self, reason: &str) {
        self.ctx.metrics().record_rejected(reason);
    }

    /// Whether a device publish on `topic` enters the hub.
    pub(crate) fn enters_hub(&self, topic: &Topic) -> bool {
        self.subscribe.iter().any(|f| f.matches(topic))
    }

    /// Whether `env` may be delivered to devices.
    pub(crate) fn deliverable(&self, env: &Envelope) -> bool {
        self.ctx.is_own(env) || self.forward.iter().any(|f| f.matches(&env.topic))
    }

    /// A device publish outside `subscribe`: handed to the sessions
    /// directly (they match it against their own subscriptions).
    pub(crate) fn local_fanout(&self, env: Arc<Envelope>) {
        let targets: Vec<mpsc::Sender<Msg>> = match self.sessions.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for t in targets {
            if t.try_send(Msg::Local(env.clone())).is_err() {
                self.ctx.metrics().record_drop();
            }
        }
    }
}

/// Reads `bytes` as one device connection's stream the way a connection
/// does: the CONNECT's protocol level, then up to `max_packets` packets with
/// the broker's codec (`max_size` its packet limit), each written back in
/// that version. Gives packets or errors, never panics. For the fuzz target.
#[doc(hidden)]
pub fn fuzz_device_stream(bytes: &[u8], max_size: usize, max_packets: usize) {
    let mut buf = bytes::BytesMut::from(bytes);
    let Ok(Some(version)) = codec::connect_level(&buf) else {
        return;
    };
    let mut out = bytes::BytesMut::new();
    for _ in 0..max_packets {
        match codec::read(version, &mut buf, max_size) {
            Ok(Some(p)) => {
                out.clear();
                let _ = codec::write(version, &p, &mut out);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// Checks that `addr` can be bound, with an error that says what to do
/// when it cannot.
fn bind_error(addr: SocketAddr, key: &str, e: io::Error) -> AdapterError {
    if e.kind() == io::ErrorKind::AddrInUse {
        AdapterError::Bind {
            addr: addr.to_string(),
            source: io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "port {port} is already in use by another program. Set another port \
                     in `{key}`; if that program is an MQTT broker (Mosquitto?), you can \
                     instead replace `listen` with `url = \"mqtt://127.0.0.1:{port}\"` to join it",
                    port = addr.port()
                ),
            ),
        }
    } else {
        AdapterError::Bind {
            addr: addr.to_string(),
            source: e,
        }
    }
}

/// Runs the embedded broker until shutdown.
pub(crate) async fn run(
    s: BrokerSettings,
    subscribe: Vec<TopicFilter>,
    forward: Vec<TopicFilter>,
    ctx: AdapterContext,
) -> Result<(), AdapterError> {
    if ctx.auth_enabled() && !s.users.is_empty() {
        tracing::warn!(
            adapter = %ctx.name(),
            "The broker's own `users` are ignored: [auth] decides who logs in (its password_file). Move them there with `polyhub passwd`."
        );
    }
    let tcp = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| bind_error(s.listen, "listen", e))?;
    let tls = match &s.tls {
        Some(t) => {
            let acceptor = listen::tls_acceptor(t)?;
            let l = tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|e| bind_error(t.listen, "tls_listen", e))?;
            Some((l, acceptor))
        }
        None => None,
    };
    let ws = match s.ws {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error(addr, "ws_listen", e))?,
        ),
        None => None,
    };
    let wss = match (s.wss, &tls) {
        (Some(addr), Some((_, acceptor))) => Some((
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error(addr, "wss_listen", e))?,
            acceptor.clone(),
        )),
        _ => None,
    };
    let broker = Arc::new(Broker {
        groups: shared::Groups::default(),
        sessions: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        assigned: AtomicU64::new(0),
        stop: ctx.shutdown().child_token(),
        subscribe,
        forward,
        settings: s,
        ctx: ctx.clone(),
    });
    info!(
        adapter = %ctx.name(),
        listen = %broker.settings.listen,
        tls_listen = ?broker.settings.tls.as_ref().map(|t| t.listen),
        ws_listen = ?broker.settings.ws,
        wss_listen = ?broker.settings.wss,
        "Embedded MQTT broker listening."
    );
    let restored = session::restore(&broker);
    if restored > 0 {
        info!(adapter = %ctx.name(), sessions = restored, "Persistent sessions restored from the data_dir.");
    }
    ctx.set_state(AdapterState::Up, None);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(listen::tcp_loop(broker.clone(), tcp));
    if let Some((l, acceptor)) = tls {
        tasks.spawn(listen::tls_loop(broker.clone(), l, acceptor));
    }
    if let Some(l) = ws {
        tasks.spawn(listen::ws_loop(broker.clone(), l, None));
    }
    if let Some((l, acceptor)) = wss {
        tasks.spawn(listen::ws_loop(broker.clone(), l, Some(acceptor)));
    }
    let result = tokio::select! {
        _ = ctx.shutdown().cancelled() => Ok(()),
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            _ => Ok(()),
        },
    };
    tasks.abort_all();
    broker.stop.cancel();
    info!(adapter = %ctx.name(), connections = broker.connections.load(Ordering::Relaxed), "Embedded MQTT broker stopped.");
    result
}
