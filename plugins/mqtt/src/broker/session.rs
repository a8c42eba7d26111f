//! One MQTT session: the CONNECT handshake ([`serve`]), then a task that owns
//! the session's state (subscriptions, offline queue, in-flight messages)
//! across reconnects and runs its current connection.
//!
//! The task always drains its hub subscription, into a queue bounded by
//! `max_queued_messages` (overflow dropped and counted), so a slow or
//! offline device never holds up publishers; deliveries leave that queue as
//! the device's receive maximum and the socket allow.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polyhub_sdk::{
    Action, ClientHandle, ClientInfo, DurableOptions, Envelope, Identity, PublishError,
    QoS as HubQoS, Refused, Stored, SubscribeOptions, Subscription, Topic, TopicFilter,
};
use rumqttc::v5::mqttbytes::v5::{
    ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    Login, Packet, PingResp, PubAckReason, PubRecReason, Publish, PublishProperties,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::codec::{self, Version, WireError};
use super::listen::{ConnGuard, Io, Peer};
use super::{Broker, INBOX, SESSION_QUEUE};

/// Time a device has from TCP accept to a complete CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight QoS 2 messages a device may have towards the broker.
const RECEIVE_MAX: u16 = 1024;
/// Topic aliases a v5 device may use towards the broker.
const TOPIC_ALIAS_MAX: u16 = 64;
/// Bytes of encoded packets held for a device before deliveries wait.
const HIGH_WATER: usize = 64 * 1024;
/// Read buffer of a connection: starts at `READ_MIN` bytes (what an idle
/// device holds), doubles up to `READ_MAX` while reads fill it and halves
/// back while they use less than a quarter of it.
const READ_MIN: usize = 256;
const READ_MAX: usize = 4096;
/// Packets from a device handled before its session yields to the
/// runtime. A fast publisher's socket is always readable, so without this
/// its task would run through tokio's whole cooperative budget (~128 reads,
/// thousands of packets) while the sessions it just woke wait on the same
/// worker, their hub queues (`SESSION_QUEUE`) overflow and QoS 0 messages
/// are dropped.
const YIELD_EVERY: u32 = 32;
/// Header carrying an MQTT 5 message expiry interval (seconds, from the
/// envelope's timestamp) through the hub; not sent as a user property.
pub(crate) const EXPIRY_HEADER: &str = "mqtt-message-expiry-interval";
/// Header carrying an MQTT 5 payload format indicator through the hub.
pub(crate) const FORMAT_HEADER: &str = "mqtt-payload-format-indicator";

/// What a session task is sent.
pub(crate) enum Msg {
    /// A new connection for this client id (reconnect or takeover).
    Attach(Box<Conn>),
    /// A message of a shared subscription group `key`.
    Shared {
        /// The message.
        env: Arc<Envelope>,
        /// The group's `$share/GROUP/FILTER`.
        key: Arc<str>,
    },
    /// A device publish outside `subscribe` (never entered the hub).
    Local(Arc<Envelope>),
}

/// What a restart needs of a persistent session (`[hub] data_dir`), kept
/// with `state_put` under [`record_key`]; its messages are in the durable
/// queue of the same name.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Session expiry interval in seconds (`None`: never); counted again
    /// from the restart.
    expiry: Option<u64>,
    /// Who the device logged in as (`[auth]` read checks on delivery).
    user: Option<String>,
    subs: Vec<RecordSub>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordSub {
    raw: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    id: Option<usize>,
}

/// The state key and durable queue name of client `id`'s session.
pub(crate) fn record_key(id: &str) -> String {
    format!("session/{id}")
}

/// Starts the persistent sessions the data_dir holds (at broker start),
/// each offline until its device connects; a record that cannot be read is
/// logged and dropped.
pub(crate) fn restore(broker: &Arc<Broker>) -> usize {
    let mut started = 0;
    for (key, value) in broker.ctx.state_scan("session/") {
        let Some(id) = key.strip_prefix("session/") else {
            continue;
        };
        let record: Record = match serde_json::from_slice(&value) {
            Ok(r) => r,
            Err(e) => {
                warn!(adapter = %broker.ctx.name(), client_id = %id, error = %e, "Unreadable persistent-session record; dropped.");
                broker.ctx.state_put(&key, None);
                continue;
            }
        };
        let id: Arc<str> = Arc::from(id);
        let (tx, rx) = mpsc::channel(INBOX);
        let Some(session) = Session::restored(broker.clone(), id.clone(), tx.clone(), rx, record)
        else {
            warn!(adapter = %broker.ctx.name(), client_id = %id, "Persistent session could not be restored.");
            continue;
        };
        if let Ok(mut sessions) = broker.sessions.lock() {
            sessions.insert(id, tx);
        }
        tokio::spawn(session.run(None));
        started += 1;
    }
    started
}

/// A connection past its CONNECT.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    version: Version,
    connect: Connect,
    will: Option<LastWill>,
    assigned: bool,
    peer: Peer,
    /// Who logged in (`[auth]`), or the user name it gave.
    identity: Identity,
    guard: ConnGuard,
}

async fn send_now(io: &mut Box<dyn Io>, version: Version, p: &Packet) {
    let mut out = BytesMut::new();
    if codec::write(version, p, &mut out).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&out)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
}

fn refuse_code(version: Version, code: ConnectReturnCode) -> Packet {
    // MQTT 3.1.1: Mosquitto answers a refused login with 5 (not
    // authorized), whatever was wrong; so do we.
    let code = match (version, code) {
        (Version::V311, ConnectReturnCode::BadUserNamePassword) => ConnectReturnCode::NotAuthorized,
        (_, code) => code,
    };
    codec::connack(code, false, None)
}

/// Reads a device's CONNECT, checks it and hands the connection to its
/// session.
pub(crate) async fn serve(broker: Arc<Broker>, mut io: Box<dyn Io>, peer: Peer, guard: ConnGuard) {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let max = broker.settings.max_packet;
    let mut buf = BytesMut::with_capacity(512);
    let mut version = None;
    let packet = loop {
        if version.is_none() {
            match codec::connect_level(&buf) {
                Ok(v) => version = v,
                Err(WireError::UnsupportedVersion(level)) => {
                    broker.rejected("unsupported_protocol_version");
                    debug!(adapter = %broker.ctx.name(), %peer, level, "Refused an unsupported MQTT version.");
                    let p = codec::connack(ConnectReturnCode::RefusedProtocolVersion, false, None);
                    send_now(&mut io, Version::V311, &p).await;
                    return;
                }
                Err(e) => {
                    broker.rejected("malformed_packet");
                    debug!(adapter = %broker.ctx.name(), %peer, error = ?e, "Not an MQTT CONNECT; closed.");
                    return;
                }
            }
        }
        if let Some(v) = version {
            match codec::read(v, &mut buf, max) {
                Ok(Some(p)) => break (v, p),
                Ok(None) => {}
                Err(e) => {
                    let reason = match e {
                        WireError::TooLarge(_) => "packet_too_large",
                        _ => "malformed_packet",
                    };
                    broker.rejected(reason);
                    debug!(adapter = %broker.ctx.name(), %peer, error = ?e, "Bad CONNECT; closed.");
                    if v == Version::V5 {
                        let code = if reason == "packet_too_large" {
                            ConnectReturnCode::PacketTooLarge
                        } else {
                            ConnectReturnCode::MalformedPacket
                        };
                        send_now(&mut io, v, &codec::connack(code, false, None)).await;
                    }
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        match timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                broker.rejected("connect_timeout");
                return;
            }
        }
    };
    let (version, packet) = packet;
    let Packet::Connect(mut connect, will, login) = packet else {
        broker.rejected("malformed_packet");
        return;
    };
    let identity = match authenticate(&broker, login.as_ref(), &peer) {
        Ok(identity) => identity,
        Err(code) => {
            broker.rejected("bad_credentials");
            info!(adapter = %broker.ctx.name(), %peer, client_id = %connect.client_id, "Refused a device: bad user name or password.");
            let p = refuse_code(version, code);
            send_now(&mut io, version, &p).await;
            return;
        }
    };
    if let Some(max) = broker.settings.max_keep_alive {
        if version == Version::V311 && (connect.keep_alive == 0 || connect.keep_alive > max) {
            // 3.1.1 has no way to tell the device a shorter keepalive.
            broker.rejected("keep_alive_too_long");
            info!(adapter = %broker.ctx.name(), %peer, client_id = %connect.client_id, keep_alive = connect.keep_alive, max, "Refused an MQTT 3.1.1 device: keepalive over max_keep_alive_secs.");
            let p = refuse_code(version, ConnectReturnCode::ClientIdentifierNotValid);
            send_now(&mut io, version, &p).await;
            return;
        }
    }
    if let Some(w) = &will {
        let ok = std::str::from_utf8(&w.topic)
            .ok()
            .is_some_and(|t| Topic::new(t).is_ok());
        if !ok {
            broker.rejected("invalid_topic");
            let p = refuse_code(version, ConnectReturnCode::TopicNameInvalid);
            send_now(&mut io, version, &p).await;
            return;
        }
    }
    let mut assigned = false;
    if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            broker.rejected("client_id");
            let p = refuse_code(version, ConnectReturnCode::ClientIdentifierNotValid);
            send_now(&mut io, version, &p).await;
            return;
        }
        let n = broker
            .assigned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        connect.client_id = format!("polyhub-{}-{n}", broker.ctx.name());
        assigned = true;
    }
    let conn = Conn {
        io,
        buf,
        version,
        connect,
        will,
        assigned,
        peer,
        identity,
        guard,
    };
    attach(broker, Box::new(conn)).await;
}

/// Who the device is. With `[auth]`, its user name and password against
/// the password file: refused, MQTT 3.1.1 gets CONNACK 5 (not authorized,
/// as Mosquitto sends), MQTT 5 0x86 (bad user name or password) or, for an
/// anonymous device when anonymous access is off, 0x87 (not authorized).
/// Without `[auth]`, the broker's own `users` (when set), else anyone.
fn authenticate(
    broker: &Broker,
    login: Option<&Login>,
    peer: &Peer,
) -> Result<Identity, ConnectReturnCode> {
    let name = login.map(|l| l.username.as_str()).filter(|u| !u.is_empty());
    if broker.ctx.auth_enabled() {
        let password = login.map(|l| l.password.as_bytes());
        return broker
            .ctx
            .authenticate(name, password, Some(&peer.to_string()))
            .map_err(|why| match why {
                Refused::AnonymousNotAllowed => ConnectReturnCode::NotAuthorized,
                _ => ConnectReturnCode::BadUserNamePassword,
            });
    }
    let users = &broker.settings.users;
    if !users.is_empty()
        && !login.is_some_and(|l| users.get(&l.username).is_some_and(|p| *p == l.password))
    {
        return Err(ConnectReturnCode::BadUserNamePassword);
    }
    Ok(name.map_or_else(Identity::anonymous, Identity::user))
}

/// Hands `conn` to the live session of its client id, or starts one
/// (boxed: a session that ends hands connections that raced in back here).
fn attach(broker: Arc<Broker>, conn: Box<Conn>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(attach_inner(broker, conn))
}

async fn attach_inner(broker: Arc<Broker>, mut conn: Box<Conn>) {
    let id: Arc<str> = Arc::from(conn.connect.client_id.as_str());
    loop {
        let existing = {
            let Ok(mut sessions) = broker.sessions.lock() else {
                return;
            };
            match sessions.get(&id) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(INBOX);
                    sessions.insert(id.clone(), tx.clone());
                    drop(sessions);
                    let Some(session) = Session::new(broker.clone(), id.clone(), tx, rx) else {
                        return;
                    };
                    tokio::spawn(session.run(Some(conn)));
                    return;
                }
            }
        };
        match existing.send(Msg::Attach(conn)).await {
            Ok(()) => return,
            Err(mpsc::error::SendError(Msg::Attach(c))) => conn = c,
            Err(_) => return,
        }
    }
}

/// One subscription of a session.
struct Sub {
    /// As the device wrote it (`$share/…` included).
    raw: String,
    filter: TopicFilter,
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: Option<usize>,
    /// `$share/GROUP/FILTER` key of a shared subscription.
    share: Option<Arc<str>>,
}

/// A message waiting for or in delivery.
struct Out {
    env: Arc<Envelope>,
    qos: QoS,
    retain: bool,
    ids: Vec<usize>,
    /// From the session's durable queue: acknowledged there once the device
    /// has it (or it is dropped).
    ack: bool,
}

enum Inflight {
    /// Sent, waiting for PUBACK / PUBREC.
    Publish(Out),
    /// PUBREC received, PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// The current connection of a session.
struct Link {
    version: Version,
    rd: ReadHalf<Box<dyn Io>>,
    wr: WriteHalf<Box<dyn Io>>,
    inbuf: BytesMut,
    /// Bytes the next read asks for (`READ_MIN`..=`READ_MAX`).
    read_size: usize,
    out: BytesMut,
    /// Written since the last flush (TLS and WebSocket streams hold bytes
    /// until flushed).
    unflushed: bool,
    keepalive: Option<Duration>,
    last_rx: Instant,
    receive_max: usize,
    max_packet: Option<usize>,
    aliases: HashMap<u16, Bytes>,
    /// Topic aliases towards the device (MQTT 5), up to its maximum.
    out_aliases: HashMap<Topic, u16>,
    alias_max: u16,
    will: Option<LastWill>,
    peer: Peer,
    /// Its entry in the hub's list of connected devices (`/api/clients`),
    /// removed when the connection ends.
    client: ClientHandle,
    _guard: ConnGuard,
}

impl Link {
    fn send(&mut self, p: &Packet) {
        if let Err(e) = codec::write(self.version, p, &mut self.out) {
            debug!(peer = %self.peer, error = %e, "Packet not encodable; skipped.");
        }
    }

    async fn close(mut self, reason: Option<DisconnectReasonCode>) {
        if let (Some(r), Version::V5) = (reason, self.version) {
            self.send(&Packet::Disconnect(Disconnect::new(r)));
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self.wr.write_all(&self.out).await;
            let _ = self.wr.shutdown().await;
        })
        .await;
    }
}

/// Writes some of `out`, or with `out` empty flushes what was written:
/// `Some(bytes written)` or `None` once flushed.
async fn write_or_flush(
    wr: &mut WriteHalf<Box<dyn Io>>,
    out: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write_buf(out).await.map(Some)
    }
}

/// How a connection ended.
enum End {
    /// A new connection took the session over.
    Takeover(Box<Conn>),
    /// Closed without DISCONNECT, or closed by the broker: the will goes out.
    Lost(Option<DisconnectReasonCode>),
    /// DISCONNECT from the device (will only with reason 0x04).
    Clean { send_will: bool },
    /// The broker is stopping.
    Shutdown,
}

/// What the offline wait ended with.
enum Off {
    Attach(Box<Conn>),
    Expired,
    Shutdown,
}

struct Session {
    broker: Arc<Broker>,
    id: Arc<str>,
    tx: mpsc::Sender<Msg>,
    inbox: mpsc::Receiver<Msg>,
    hub: Subscription,
    /// `hub` is the durable queue `session/{client id}` (a persistent
    /// session: its session expiry is not 0); its subscriptions, expiry and
    /// user are kept with `state_put` under the same key.
    durable: bool,
    subs: Vec<Sub>,
    pending: VecDeque<Out>,
    inflight: BTreeMap<u16, Inflight>,
    qos2_in: HashSet<u16>,
    /// PUBACKs/PUBRECs waiting for the hub's group commit (`[hub]
    /// data_dir`), in the order their PUBLISHes came; sent as commits land
    /// while the connection reads on.
    acks: VecDeque<(Stored, Packet)>,
    next_pkid: u16,
    /// Packets handled since this task last yielded (`YIELD_EVERY`).
    unyielded: u32,
    /// `None`: never expires.
    expiry: Option<Duration>,
    will_at: Option<(Instant, LastWill)>,
    /// Who the last connection logged in as (`[auth]` checks use it).
    identity: Identity,
}

fn hub_qos(q: QoS) -> HubQoS {
    match q {
        QoS::AtMostOnce => HubQoS::AtMostOnce,
        QoS::AtLeastOnce => HubQoS::AtLeastOnce,
        QoS::ExactlyOnce => HubQoS::ExactlyOnce,
    }
}

fn mqtt_qos(q: HubQoS) -> QoS {
    match q {
        HubQoS::AtMostOnce => QoS::AtMostOnce,
        HubQoS::AtLeastOnce => QoS::AtLeastOnce,
        HubQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_rank(q: QoS) -> u8 {
    q as u8
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if qos_rank(a) <= qos_rank(b) {
        a
    } else {
        b
    }
}

/// Seconds left of an envelope's message expiry interval; `Some(0)` once
/// expired, `None` when it has none.
fn expiry_left(env: &Envelope) -> Option<u32> {
    let interval: u32 = env.header(EXPIRY_HEADER)?.parse().ok()?;
    let age = env.timestamp.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    Some(u32::try_from(u64::from(interval).saturating_sub(age)).unwrap_or(0))
}

/// Waits for the commit of the acknowledgement in front of `acks`.
async fn front_stored(acks: &mut VecDeque<(Stored, Packet)>) -> Result<(), PublishError> {
    match acks.front_mut() {
        Some((stored, _)) => stored.await,
        None => std::future::pending().await,
    }
}

/// Splits `$share/GROUP/FILTER` into its group key and filter.
fn parse_share(raw: &str) -> Result<Option<&str>, ()> {
    let Some(rest) = raw.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(())?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return Err(());
    }
    Ok(Some(filter))
}

/// An envelope from a device's PUBLISH (or will).
#[allow(clippy::too_many_arguments)]
fn envelope(
    broker: &Broker,
    id: &Arc<str>,
    topic: Topic,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    content_type: Option<String>,
    user: Vec<(String, String)>,
    response_topic: Option<String>,
    correlation: Option<Bytes>,
    expiry: Option<u32>,
    format: Option<u8>,
) -> Envelope {
    // The codec's payload is a slice of the connection's read buffer: kept
    // as it is, a topic's last value would pin the whole buffer (and the
    // packets around it) for as long as the store holds it.
    let payload = Bytes::copy_from_slice(&payload);
    let correlation = correlation.map(|c| Bytes::copy_from_slice(&c));
    let mut env = Envelope::new(topic, payload)
        .with_qos(hub_qos(qos))
        .with_retain(retain)
        .with_origin(broker.ctx.origin().with_peer(id));
    env.content_type = content_type;
    env.headers = user;
    env.reply_to = response_topic;
    env.correlation = correlation;
    if let Some(e) = expiry {
        env.headers.push((EXPIRY_HEADER.to_owned(), e.to_string()));
    }
    if let Some(f) = format {
        env.headers.push((FORMAT_HEADER.to_owned(), f.to_string()));
    }
    env
}

impl Session {
    fn new(
        broker: Arc<Broker>,
        id: Arc<str>,
        tx: mpsc::Sender<Msg>,
        inbox: mpsc::Receiver<Msg>,
    ) -> Option<Session> {
        let hub = broker
            .ctx
            .subscribe_with(
                Vec::<TopicFilter>::new(),
                SubscribeOptions {
                    depth: Some(SESSION_QUEUE),
                    include_own: true,
                    ..SubscribeOptions::default()
                },
            )
            .ok()?;
        Some(Session {
            broker,
            id,
            tx,
            inbox,
            hub,
            durable: false,
            subs: Vec::new(),
            pending: VecDeque::new(),
            inflight: BTreeMap::new(),
            qos2_in: HashSet::new(),
            acks: VecDeque::new(),
            next_pkid: 0,
            unyielded: 0,
            expiry: Some(Duration::ZERO),
            will_at: None,
            identity: Identity::anonymous(),
        })
    }

    /// Runs the session: from its first connection, or (`None`: restored
    /// from the data_dir at start) offline until its device comes back.
    async fn run(mut self, first: Option<Box<Conn>>) {
        let mut existed = first.is_none();
        let mut next = match first {
            Some(conn) => Some(conn),
            None => match Box::pin(self.offline()).await {
                Off::Attach(conn) => Some(conn),
                Off::Expired | Off::Shutdown => None,
            },
        };
        while let Some(conn) = next.take() {
            let mut link = self.open(conn, existed);
            existed = true;
            let end = self.connected(&mut link).await;
            // Boxed, like `finish`: closing, the will and the offline wait
            // (a will is a publish into the hub) would otherwise make this
            // task's future, which every connected session holds, several
            // KiB larger.
            next = Box::pin(self.ended(link, end)).await;
        }
        Box::pin(self.finish()).await;
    }

    /// A connection ended: closes it, sends the will (now or later) and
    /// waits offline while the session lives; the next connection, if any.
    async fn ended(&mut self, mut link: Link, end: End) -> Option<Box<Conn>> {
        // Not on disk yet: unacknowledged, the device sends them again.
        self.acks.clear();
        let will = link.will.take();
        match end {
            End::Shutdown => {
                link.close(Some(DisconnectReasonCode::ServerShuttingDown))
                    .await;
                return None;
            }
            End::Takeover(conn) => {
                link.close(Some(DisconnectReasonCode::SessionTakenOver))
                    .await;
                self.will_later(will).await;
                return Some(conn);
            }
            End::Lost(reason) => {
                link.close(reason).await;
                self.will_later(will).await;
            }
            End::Clean { send_will } => {
                link.close(None).await;
                if send_will {
                    self.will_later(will).await;
                }
            }
        }
        match self.offline().await {
            Off::Attach(conn) => Some(conn),
            Off::Expired | Off::Shutdown => None,
        }
    }

    /// Starts a connection: session state per its clean start, CONNACK,
    /// redelivery of what was in flight.
    fn open(&mut self, conn: Box<Conn>, existed: bool) -> Link {
        let Conn {
            io,
            buf,
            version,
            connect,
            will,
            assigned,
            peer,
            identity,
            guard,
        } = *conn;
        let props = connect.properties.clone().unwrap_or_default_props();
        let session_present = existed && !connect.clean_start;
        if connect.clean_start {
            self.reset();
        }
        // A new connection before the will delay ran out: no will.
        self.will_at = None;
        self.expiry = match version {
            Version::V311 if connect.clean_start => Some(Duration::ZERO),
            Version::V311 => None,
            Version::V5 => match props.session_expiry_interval.unwrap_or(0) {
                u32::MAX => None,
                s => Some(Duration::from_secs(u64::from(s))),
            },
        };
        let mut info = ClientInfo::new("mqtt")
            .with_client_id(self.id.as_ref())
            .with_peer(peer.to_string());
        info.user = identity.username().map(str::to_owned);
        self.identity = identity;
        self.persistence(connect.clean_start);
        let client = self.broker.ctx.client_connected(info);
        // MQTT 5: a keepalive over the broker's maximum (or none) is
        // replaced by the maximum, told in CONNACK.
        let server_keep_alive = self
            .broker
            .settings
            .max_keep_alive
            .filter(|&max| connect.keep_alive == 0 || connect.keep_alive > max);
        let keep_alive = server_keep_alive.unwrap_or(connect.keep_alive);
        let (rd, wr) = tokio::io::split(io);
        let mut link = Link {
            client,
            version,
            rd,
            wr,
            inbuf: buf,
            read_size: READ_MIN,
            out: BytesMut::new(),
            unflushed: false,
            keepalive: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            last_rx: Instant::now(),
            receive_max: usize::from(props.receive_maximum.unwrap_or(u16::MAX).max(1)),
            max_packet: props
                .max_packet_size
                .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            aliases: HashMap::new(),
            out_aliases: HashMap::new(),
            alias_max: props.topic_alias_max.unwrap_or(0),
            will,
            peer,
            _guard: guard,
        };
        let ack_props = (version == Version::V5).then(|| ConnAckProperties {
            assigned_client_identifier: assigned.then(|| self.id.to_string()),
            receive_max: Some(RECEIVE_MAX),
            max_packet_size: u32::try_from(self.broker.settings.max_packet).ok(),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            session_expiry_interval: None,
            max_qos: None,
            reason_string: None,
            user_properties: Vec::new(),
            server_keep_alive,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        link.send(&codec::connack(
            ConnectReturnCode::Success,
            session_present,
            ack_props,
        ));
        debug!(adapter = %self.broker.ctx.name(), client_id = %self.id, peer = %link.peer, session_present, "Device connected.");
        // Redeliver what was in flight, DUP set.
        let resend: Vec<(u16, Option<Publish>)> = self
            .inflight
            .iter()
            .map(|(pkid, f)| match f {
                Inflight::Publish(out) => {
                    (*pkid, Some(self.publish_packet(out, *pkid, true, &link)))
                }
                Inflight::Released => (*pkid, None),
            })
            .collect();
        for (pkid, p) in resend {
            match p {
                Some(p) => link.send(&Packet::Publish(p)),
                None => link.send(&codec::pubrel(pkid)),
            }
        }
        link
    }

    /// Puts the session on its durable queue when it is persistent (its
    /// expiry is not 0), back on a plain subscription when it is not, and
    /// records what a restart needs. A clean start of a persistent session
    /// begins a new queue.
    fn persistence(&mut self, clean_start: bool) {
        let persistent = self.expiry != Some(Duration::ZERO);
        if self.durable && (clean_start || !persistent) {
            self.forget_queue();
        }
        if persistent && !self.durable {
            // What the plain subscription still holds goes first.
            while let Some(env) = self.hub.try_recv() {
                self.deliver(env, true);
            }
            let filters: Vec<TopicFilter> = self
                .subs
                .iter()
                .filter(|s| s.share.is_none())
                .map(|s| s.filter.clone())
                .collect();
            let options = DurableOptions {
                include_own: true,
                ..DurableOptions::default()
            };
            match self
                .broker
                .ctx
                .subscribe_durable(&record_key(&self.id), filters, options)
            {
                Ok(sub) => {
                    self.durable = sub.is_durable();
                    self.hub = sub;
                }
                Err(e) => {
                    warn!(adapter = %self.broker.ctx.name(), client_id = %self.id, error = %e, "Persistent session kept in memory only.");
                }
            }
        }
        self.save();
    }

    /// Drops the session's durable queue and record (back on a plain
    /// subscription with the same filters).
    fn forget_queue(&mut self) {
        if !self.durable {
            return;
        }
        let filters: Vec<TopicFilter> = self
            .subs
            .iter()
            .filter(|s| s.share.is_none())
            .map(|s| s.filter.clone())
            .collect();
        let Ok(plain) = self.broker.ctx.subscribe_with(
            filters,
            SubscribeOptions {
                depth: Some(SESSION_QUEUE),
                include_own: true,
                ..SubscribeOptions::default()
            },
        ) else {
            return;
        };
        let old = std::mem::replace(&mut self.hub, plain);
        self.durable = false;
        // In memory, the pending and in-flight messages no longer count on
        // the queue.
        for out in self.pending.iter_mut() {
            out.ack = false;
        }
        for f in self.inflight.values_mut() {
            if let Inflight::Publish(out) = f {
                out.ack = false;
            }
        }
        old.forget();
        self.broker.ctx.state_put(&record_key(&self.id), None);
    }

    /// Writes the session's record (persistent sessions only).
    fn save(&self) {
        if !self.durable {
            return;
        }
        let record = Record {
            expiry: self.expiry.map(|e| e.as_secs()),
            user: self.identity.username().map(str::to_owned),
            subs: self
                .subs
                .iter()
                .map(|s| RecordSub {
                    raw: s.raw.clone(),
                    qos: s.qos as u8,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    id: s.id,
                })
                .collect(),
        };
        match serde_json::to_vec(&record) {
            Ok(bytes) => self
                .broker
                .ctx
                .state_put(&record_key(&self.id), Some(bytes)),
            Err(e) => {
                warn!(adapter = %self.broker.ctx.name(), client_id = %self.id, error = %e, "Session record not written.");
            }
        }
    }

    /// A persistent session read back from the data_dir at start: its
    /// subscriptions on its durable queue (which holds what it had not
    /// delivered), waiting offline for its device.
    fn restored(
        broker: Arc<Broker>,
        id: Arc<str>,
        tx: mpsc::Sender<Msg>,
        inbox: mpsc::Receiver<Msg>,
        record: Record,
    ) -> Option<Session> {
        let mut subs = Vec::with_capacity(record.subs.len());
        for r in record.subs {
            let share = parse_share(&r.raw).ok()?;
            let filter = TopicFilter::new(share.unwrap_or(&r.raw)).ok()?;
            let qos = match r.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            subs.push(Sub {
                share: share.map(|_| Arc::from(r.raw.as_str())),
                raw: r.raw,
                filter,
                qos,
                no_local: r.no_local,
                retain_as_published: r.retain_as_published,
                id: r.id,
            });
        }
        let filters: Vec<TopicFilter> = subs
            .iter()
            .filter(|s| s.share.is_none())
            .map(|s| s.filter.clone())
            .collect();
        let options = DurableOptions {
            include_own: true,
            ..DurableOptions::default()
        };
        let hub = broker
            .ctx
            .subscribe_durable(&record_key(&id), filters, options)
            .ok()?;
        for s in &subs {
            if let Some(key) = &s.share {
                let _ = broker.groups.join(
                    &broker,
                    key.clone(),
                    s.filter.clone(),
                    id.clone(),
                    tx.clone(),
                );
            }
        }
        Some(Session {
            durable: hub.is_durable(),
            broker,
            id,
            tx,
            inbox,
            hub,
            subs,
            pending: VecDeque::new(),
            inflight: BTreeMap::new(),
            qos2_in: HashSet::new(),
            acks: VecDeque::new(),
            next_pkid: 0,
            unyielded: 0,
            expiry: record.expiry.map(Duration::from_secs),
            will_at: None,
            identity: record
                .user
                .as_deref()
                .map_or_else(Identity::anonymous, Identity::user),
        })
    }

    /// Forgets subscriptions and queued or in-flight messages.
    fn reset(&mut self) {
        for s in self.subs.drain(..) {
            match &s.share {
                Some(key) => self.broker.groups.leave(key, &self.id),
                None => {
                    self.hub.remove(&s.filter);
                }
            }
        }
        self.pending.clear();
        self.inflight.clear();
        self.qos2_in.clear();
        self.save();
    }

    async fn connected(&mut self, link: &mut Link) -> End {
        // Packets that came with the CONNECT (a device need not wait for
        // CONNACK before it subscribes). Boxed like the one below: unboxed,
        // packet handling made every session's task 4.3 KiB (measured with
        // massif), 8.3 KiB per idle device in all.
        if let Some(end) = Box::pin(self.incoming(link)).await {
            return end;
        }
        loop {
            self.pump(link);
            if link.inbuf.is_empty() && link.inbuf.capacity() > link.read_size {
                link.inbuf = BytesMut::new();
            }
            if link.inbuf.capacity() - link.inbuf.len() < link.read_size / 4 {
                link.inbuf.reserve(link.read_size);
            }
            let spare = link.inbuf.capacity() - link.inbuf.len();
            let writing = !link.out.is_empty();
            let ka = link.keepalive.map(|k| link.last_rx + k);
            tokio::select! {
                _ = self.broker.stop.cancelled() => return End::Shutdown,
                msg = self.inbox.recv() => match msg {
                    Some(Msg::Attach(c)) => return End::Takeover(c),
                    Some(m) => self.take(m),
                    None => return End::Shutdown,
                },
                r = link.rd.read_buf(&mut link.inbuf) => match r {
                    Ok(0) | Err(_) => return End::Lost(None),
                    Ok(n) => {
                        link.last_rx = Instant::now();
                        if n >= spare {
                            link.read_size = (link.read_size * 2).min(READ_MAX);
                        } else if n < link.read_size / 4 {
                            link.read_size = (link.read_size / 2).max(READ_MIN);
                        }
                        // Boxed: packet handling (a PUBLISH into the hub
                        // above all) is most of this task's future, which
                        // every idle session would otherwise carry.
                        if let Some(end) = Box::pin(self.incoming(link)).await {
                            return end;
                        }
                    }
                },
                r = write_or_flush(&mut link.wr, &mut link.out), if writing || link.unflushed => match r {
                    Ok(Some(0)) | Err(_) => return End::Lost(None),
                    Ok(None) => link.unflushed = false,
                    Ok(Some(_)) => {
                        link.unflushed = true;
                        if link.out.is_empty() && link.out.capacity() > 4 * HIGH_WATER {
                            link.out = BytesMut::new();
                        }
                    }
                },
                env = self.hub.recv() => match env {
                    Some(env) => self.deliver(env, true),
                    None => return End::Shutdown,
                },
                stored = front_stored(&mut self.acks), if !self.acks.is_empty() => {
                    if let Some(end) = self.stored(link, stored) {
                        return end;
                    }
                }
                _ = sleep_until(ka.unwrap_or_else(Instant::now)), if ka.is_some() => {
                    self.broker.rejected("keepalive_timeout");
                    debug!(adapter = %self.broker.ctx.name(), client_id = %self.id, "Keepalive ran out; closed.");
                    return End::Lost(Some(DisconnectReasonCode::KeepAliveTimeout));
                }
            }
        }
    }

    /// Handles every whole packet in the read buffer.
    async fn incoming(&mut self, link: &mut Link) -> Option<End> {
        loop {
            let packet = match codec::read(
                link.version,
                &mut link.inbuf,
                self.broker.settings.max_packet,
            ) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => {
                    let (reason, code) = match e {
                        WireError::TooLarge(_) => {
                            ("packet_too_large", DisconnectReasonCode::PacketTooLarge)
                        }
                        _ => ("malformed_packet", DisconnectReasonCode::MalformedPacket),
                    };
                    self.broker.rejected(reason);
                    debug!(adapter = %self.broker.ctx.name(), client_id = %self.id, error = ?e, "Bad packet; closed.");
                    return Some(End::Lost(Some(code)));
                }
            };
            if let Some(end) = self.handle(link, packet).await {
                return Some(end);
            }
            self.unyielded += 1;
            if self.unyielded >= YIELD_EVERY {
                self.unyielded = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    fn protocol_error(&self, what: &'static str, code: DisconnectReasonCode) -> Option<End> {
        self.broker.rejected(what);
        debug!(adapter = %self.broker.ctx.name(), client_id = %self.id, reason = what, "Protocol error; closed.");
        Some(End::Lost(Some(code)))
    }

    async fn handle(&mut self, link: &mut Link, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => return self.publish(link, p).await,
            Packet::PubAck(a) => {
                if matches!(self.inflight.get(&a.pkid), Some(Inflight::Publish(_))) {
                    if let Some(Inflight::Publish(out)) = self.inflight.remove(&a.pkid) {
                        self.done(&out);
                    }
                }
            }
            Packet::PubRec(r) => {
                let failed = (r.reason as u8) >= 0x80 && r.reason != PubRecReason::Success;
                // PUBREC: the device has the message (a refusal: it never
                // will); either way the durable queue is done with it.
                let was = if failed {
                    self.inflight.remove(&r.pkid)
                } else {
                    let f = self.inflight.get_mut(&r.pkid);
                    let was = f.map(|f| std::mem::replace(f, Inflight::Released));
                    link.send(&codec::pubrel(r.pkid));
                    was
                };
                if let Some(Inflight::Publish(out)) = was {
                    self.done(&out);
                }
            }
            Packet::PubComp(c) => {
                self.inflight.remove(&c.pkid);
            }
            Packet::PubRel(r) => {
                let found = self.qos2_in.remove(&r.pkid);
                link.send(&codec::pubcomp(r.pkid, found));
            }
            Packet::Subscribe(s) => self.subscribe(link, s),
            Packet::Unsubscribe(u) => self.unsubscribe(link, u),
            Packet::PingReq(_) => link.send(&Packet::PingResp(PingResp)),
            Packet::Disconnect(d) => {
                if let Some(e) = d
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                {
                    self.expiry = match e {
                        u32::MAX => None,
                        s => Some(Duration::from_secs(u64::from(s))),
                    };
                }
                return Some(End::Clean {
                    send_will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                });
            }
            Packet::Connect(..) => {
                return self.protocol_error("protocol_error", DisconnectReasonCode::ProtocolError)
            }
            _ => return self.protocol_error("protocol_error", DisconnectReasonCode::ProtocolError),
        }
        None
    }

    async fn publish(&mut self, link: &mut Link, mut p: Publish) -> Option<End> {
        let props = p.properties.take().unwrap_or_default();
        if let Some(alias) = props.topic_alias {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return self.protocol_error(
                    "topic_alias_invalid",
                    DisconnectReasonCode::TopicAliasInvalid,
                );
            }
            if p.topic.is_empty() {
                match link.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return self.protocol_error(
                            "topic_alias_invalid",
                            DisconnectReasonCode::ProtocolError,
                        )
                    }
                }
            } else {
                link.aliases.insert(alias, p.topic.clone());
            }
        }
        let topic = match std::str::from_utf8(&p.topic).ok().map(Topic::new) {
            Some(Ok(t)) => t,
            _ => {
                return self.protocol_error("invalid_topic", DisconnectReasonCode::TopicNameInvalid)
            }
        };
        if !self.may(topic.as_str(), Action::Write) {
            // Dropped, as Mosquitto does: acknowledged (MQTT 5 with 0x87
            // not authorized; 3.1.1 has no reason codes), never routed.
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => link.send(&codec::puback(p.pkid, PubAckReason::NotAuthorized)),
                QoS::ExactlyOnce => link.send(&codec::pubrec(p.pkid, PubRecReason::NotAuthorized)),
            }
            return None;
        }
        if p.qos == QoS::ExactlyOnce {
            if self.qos2_in.contains(&p.pkid) {
                // A resend of a message the hub already has.
                link.send(&codec::pubrec(p.pkid, PubRecReason::Success));
                return None;
            }
            if self.qos2_in.len() >= usize::from(RECEIVE_MAX) {
                return self.protocol_error(
                    "receive_maximum_exceeded",
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                );
            }
        }
        link.client.record_in();
        let mut env = envelope(
            &self.broker,
            &self.id,
            topic,
            p.payload,
            p.qos,
            p.retain,
            props.content_type,
            props.user_properties,
            props.response_topic,
            props.correlation_data,
            props.message_expiry_interval,
            props.payload_format_indicator,
        );
        env.origin.user = self.identity.username().map(Arc::from);
        let result = if self.broker.enters_hub(&env.topic) {
            self.publish_to_hub(env).await.map(Some)
        } else {
            self.broker.local_fanout(Arc::new(env));
            Ok(None)
        };
        let (quota, stored) = match result {
            Ok(stored) => (false, stored),
            Err(PublishError::Closed | PublishError::Failed) => return Some(End::Shutdown),
            // `PublishError::Quota`: a retained publish past the hub's topic quota.
            Err(_) => {
                self.broker.rejected("quota_exceeded");
                (true, None)
            }
        };
        let ack = match p.qos {
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => codec::puback(
                p.pkid,
                if quota {
                    PubAckReason::QuotaExceeded
                } else {
                    PubAckReason::Success
                },
            ),
            QoS::ExactlyOnce => {
                if quota {
                    codec::pubrec(p.pkid, PubRecReason::QuotaExceeded)
                } else {
                    self.qos2_in.insert(p.pkid);
                    codec::pubrec(p.pkid, PubRecReason::Success)
                }
            }
        };
        // With `[hub] data_dir` the acknowledgement waits for the commit;
        // the ones behind it wait too, so that they go out in order.
        match stored {
            None if self.acks.is_empty() => link.send(&ack),
            stored => {
                let stored =
                    stored.unwrap_or_else(|| Box::pin(std::future::ready(Ok(()))) as Stored);
                self.acks.push_back((stored, ack));
                while self.acks.len() > usize::from(RECEIVE_MAX) {
                    let r = front_stored(&mut self.acks).await;
                    if let Some(end) = self.stored(link, r) {
                        return Some(end);
                    }
                }
            }
        }
        None
    }

    /// The acknowledgement in front of `acks` has its commit: sends it, or
    /// closes the connection if the store could not write it (no
    /// acknowledgement: the device sends it again when it reconnects, as
    /// MQTT does with unacknowledged QoS 1/2).
    fn stored(&mut self, link: &mut Link, r: Result<(), PublishError>) -> Option<End> {
        let (_, ack) = self.acks.pop_front()?;
        match r {
            Err(PublishError::NotStored) => {
                self.broker.rejected("not_stored");
                if let Packet::PubRec(r) = &ack {
                    // Not a message the hub has: its resend must be routed.
                    self.qos2_in.remove(&r.pkid);
                }
                Some(End::Lost(Some(DisconnectReasonCode::UnspecifiedError)))
            }
            _ => {
                link.send(&ack);
                None
            }
        }
    }

    /// Routes into the hub, still draining this session's subscription
    /// meanwhile (the hub may be waiting for exactly that queue); what
    /// comes back resolves once the envelope is on disk.
    async fn publish_to_hub(&mut self, env: Envelope) -> Result<Stored, PublishError> {
        let ctx = self.broker.ctx.clone();
        let fut = ctx.publish_routed(env);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                e = self.hub.recv() => match e {
                    Some(e) => self.deliver(e, true),
                    None => return Err(PublishError::Closed),
                },
            }
        }
    }

    fn subscribe(&mut self, link: &mut Link, s: Subscribe) {
        let sub_id = s.properties.as_ref().and_then(|p| p.id);
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in s.filters {
            let share = match parse_share(&f.path) {
                Ok(share) => share,
                Err(()) => {
                    self.broker.rejected("invalid_filter");
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            let path = share.unwrap_or(&f.path);
            let filter = match TopicFilter::new(path) {
                Ok(filter) => filter,
                Err(_) => {
                    self.broker.rejected("invalid_filter");
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            // `$share/GROUP/FILTER` is checked on FILTER, as Mosquitto does.
            if !self.may(filter.as_str(), Action::Subscribe) {
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let key: Option<Arc<str>> = share.map(|_| Arc::from(f.path.as_str()));
            let existing = self.subs.iter().position(|s| s.raw == f.path);
            if existing.is_none() {
                let joined = match &key {
                    Some(k) => self.broker.groups.join(
                        &self.broker,
                        k.clone(),
                        filter.clone(),
                        self.id.clone(),
                        self.tx.clone(),
                    ),
                    None => self.hub.add(&filter),
                };
                if joined.is_err() {
                    codes.push(SubscribeReasonCode::Unspecified);
                    continue;
                }
            }
            let entry = Sub {
                raw: f.path.clone(),
                filter: filter.clone(),
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                id: sub_id,
                share: key.clone(),
            };
            match existing {
                Some(i) => self.subs[i] = entry,
                None => self.subs.push(entry),
            }
            codes.push(SubscribeReasonCode::Success(f.qos));
            let send_retained = key.is_none()
                && match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => existing.is_none(),
                    RetainForwardRule::Never => false,
                };
            if send_retained {
                for env in self.broker.ctx.retained(&filter) {
                    if expiry_left(&env) == Some(0) {
                        continue;
                    }
                    retained.push(Out {
                        qos: min_qos(f.qos, mqtt_qos(env.qos)),
                        retain: true,
                        ids: sub_id.into_iter().collect(),
                        ack: false,
                        env,
                    });
                }
            }
        }
        link.send(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: codes,
            properties: None,
        }));
        for out in retained {
            self.enqueue(out);
        }
        self.save();
    }

    fn unsubscribe(&mut self, link: &mut Link, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            match self.subs.iter().position(|s| s.raw == raw) {
                Some(i) => {
                    let s = self.subs.remove(i);
                    match &s.share {
                        Some(key) => self.broker.groups.leave(key, &self.id),
                        None => {
                            self.hub.remove(&s.filter);
                        }
                    }
                    reasons.push(UnsubAckReason::Success);
                }
                None => reasons.push(UnsubAckReason::NoSubscriptionExisted),
            }
        }
        link.send(&codec::unsuback(u.pkid, reasons));
        self.save();
    }

    /// A message from the inbox (not a connection).
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Attach(_) => {}
            Msg::Local(env) => self.deliver(env, false),
            Msg::Shared { env, key } => {
                let Some(s) = self.subs.iter().find(|s| s.share.as_ref() == Some(&key)) else {
                    return;
                };
                let out = Out {
                    qos: min_qos(s.qos, mqtt_qos(env.qos)),
                    retain: s.retain_as_published && env.retain,
                    ids: s.id.into_iter().collect(),
                    ack: false,
                    env,
                };
                self.enqueue(out);
            }
        }
    }

    /// Queues a hub envelope for this device under its matching
    /// subscriptions (highest QoS of them; none when no-local skips all).
    fn deliver(&mut self, env: Arc<Envelope>, from_hub: bool) {
        let ack = from_hub && self.durable;
        if !self.broker.deliverable(&env) {
            if ack {
                self.hub.ack(&env);
            }
            return;
        }
        let own = self.broker.ctx.is_own(&env) && env.origin.peer.as_deref() == Some(&*self.id);
        let mut best: Option<QoS> = None;
        let mut rap = false;
        let mut ids = Vec::new();
        for s in self.subs.iter().filter(|s| s.share.is_none()) {
            if (s.no_local && own) || !s.filter.matches(&env.topic) {
                continue;
            }
            if best.map_or(true, |b| qos_rank(s.qos) > qos_rank(b)) {
                best = Some(s.qos);
            }
            rap |= s.retain_as_published;
            if let Some(i) = s.id {
                ids.push(i);
            }
        }
        let Some(granted) = best else {
            if ack {
                self.hub.ack(&env);
            }
            return;
        };
        let out = Out {
            qos: min_qos(granted, mqtt_qos(env.qos)),
            retain: rap && env.retain,
            ids,
            ack,
            env,
        };
        self.enqueue(out);
    }

    /// Whether `[auth]` lets this session's user do `action` on `topic`
    /// (counted and logged when not); always true without `[auth]`.
    fn may(&self, topic: &str, action: Action) -> bool {
        self.broker
            .ctx
            .authorize(&self.identity, &self.id, topic, action)
    }

    /// Queues a message for the device: every delivery (live, retained,
    /// shared, queued while offline) passes the `read` check here first.
    fn enqueue(&mut self, out: Out) {
        if !self.may(out.env.topic.as_str(), Action::Read) {
            self.done(&out);
            return;
        }
        if self.pending.len() >= self.broker.settings.max_queued_messages {
            self.broker.ctx.metrics().record_drop();
            self.broker.ctx.metrics().incr("queue_full");
            self.done(&out);
            return;
        }
        self.pending.push_back(out);
    }

    /// The device has `out`, or it will never get it: its durable queue
    /// (if it came from there) forgets it.
    fn done(&self, out: &Out) {
        if out.ack {
            self.hub.ack(&out.env);
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn publish_packet(&self, out: &Out, pkid: u16, dup: bool, link: &Link) -> Publish {
        let env = &out.env;
        let properties = (link.version == Version::V5).then(|| PublishProperties {
            content_type: env.content_type.clone(),
            user_properties: env
                .headers
                .iter()
                .filter(|(k, _)| k != EXPIRY_HEADER && k != FORMAT_HEADER)
                .cloned()
                .collect(),
            response_topic: env.reply_to.clone(),
            correlation_data: env.correlation.clone(),
            message_expiry_interval: expiry_left(env),
            payload_format_indicator: env.header(FORMAT_HEADER).and_then(|f| f.parse().ok()),
            subscription_identifiers: out.ids.clone(),
            ..PublishProperties::default()
        });
        Publish {
            dup,
            qos: out.qos,
            retain: out.retain,
            topic: Bytes::copy_from_slice(env.topic.as_str().as_bytes()),
            pkid,
            payload: env.payload.clone(),
            properties,
        }
    }

    /// Moves queued messages onto the wire while the device's receive
    /// maximum and the write buffer allow.
    fn pump(&mut self, link: &mut Link) {
        while link.out.len() < HIGH_WATER {
            let Some(front) = self.pending.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= link.receive_max {
                return;
            }
            let Some(out) = self.pending.pop_front() else {
                return;
            };
            if expiry_left(&out.env) == Some(0) {
                self.broker.ctx.metrics().incr("expired");
                self.done(&out);
                continue;
            }
            let pkid = if out.qos == QoS::AtMostOnce {
                0
            } else {
                self.alloc_pkid()
            };
            let p = self.publish_packet(&out, pkid, false, link);
            if let Some(max) = link.max_packet {
                if p.size() > max {
                    self.broker.ctx.metrics().record_drop();
                    self.broker.ctx.metrics().incr("too_large_for_device");
                    self.done(&out);
                    continue;
                }
            }
            let mut p = p;
            if link.alias_max > 0 {
                let next = u16::try_from(link.out_aliases.len() + 1).unwrap_or(u16::MAX);
                let alias = match link.out_aliases.get(&out.env.topic) {
                    Some(a) => {
                        p.topic = Bytes::new();
                        Some(*a)
                    }
                    None if next <= link.alias_max => {
                        link.out_aliases.insert(out.env.topic.clone(), next);
                        Some(next)
                    }
                    None => None,
                };
                if let (Some(a), Some(props)) = (alias, p.properties.as_mut()) {
                    props.topic_alias = Some(a);
                }
            }
            link.send(&Packet::Publish(p));
            link.client.record_out();
            if out.qos == QoS::AtMostOnce {
                self.done(&out);
            } else {
                self.inflight.insert(pkid, Inflight::Publish(out));
            }
        }
    }

    /// The will of a connection that ended: now, or after its delay while
    /// the session lives.
    async fn will_later(&mut self, will: Option<LastWill>) {
        let Some(will) = will else {
            return;
        };
        let delay = will
            .properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0);
        let delay = Duration::from_secs(u64::from(delay));
        let delay = match self.expiry {
            Some(e) => delay.min(e),
            None => delay,
        };
        if delay.is_zero() {
            self.publish_will(will).await;
        } else {
            self.will_at = Some((Instant::now() + delay, will));
        }
    }

    async fn publish_will(&mut self, will: LastWill) {
        let Some(topic) = std::str::from_utf8(&will.topic)
            .ok()
            .and_then(|t| Topic::new(t).ok())
        else {
            return;
        };
        let props = will
            .properties
            .unwrap_or(rumqttc::v5::mqttbytes::v5::LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            });
        let env = envelope(
            &self.broker,
            &self.id,
            topic,
            will.message,
            will.qos,
            will.retain,
            props.content_type,
            props.user_properties,
            props.response_topic,
            props.correlation_data,
            props.message_expiry_interval,
            props.payload_format_indicator,
        );
        if !self.may(env.topic.as_str(), Action::Write) {
            // Checked when it is sent, as Mosquitto does.
            return;
        }
        let mut env = env;
        env.origin.user = self.identity.username().map(Arc::from);
        debug!(adapter = %self.broker.ctx.name(), client_id = %self.id, topic = %env.topic, "Will published.");
        if self.broker.enters_hub(&env.topic) {
            let _ = self.publish_to_hub(env).await;
        } else {
            self.broker.local_fanout(Arc::new(env));
        }
    }

    /// Waits, disconnected, for a reconnect, the will delay or the session
    /// expiry; keeps queueing meanwhile.
    async fn offline(&mut self) -> Off {
        let expires = self.expiry.map(|e| Instant::now() + e);
        if self.expiry == Some(Duration::ZERO) {
            return Off::Expired;
        }
        loop {
            let will_at = self.will_at.as_ref().map(|(t, _)| *t);
            tokio::select! {
                _ = self.broker.stop.cancelled() => return Off::Shutdown,
                msg = self.inbox.recv() => match msg {
                    Some(Msg::Attach(c)) => return Off::Attach(c),
                    Some(m) => self.take(m),
                    None => return Off::Shutdown,
                },
                env = self.hub.recv() => match env {
                    Some(env) => self.deliver(env, true),
                    None => return Off::Shutdown,
                },
                _ = sleep_until(will_at.unwrap_or_else(Instant::now)), if will_at.is_some() => {
                    if let Some((_, will)) = self.will_at.take() {
                        self.publish_will(will).await;
                    }
                }
                _ = sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => {
                    return Off::Expired;
                }
            }
        }
    }

    /// The session ends: its will (if still waiting), its groups, its
    /// registry entry; connections that raced in are started afresh.
    async fn finish(mut self) {
        if let Some((_, will)) = self.will_at.take() {
            self.publish_will(will).await;
        }
        let stopping = self.broker.stop.is_cancelled();
        if stopping {
            // A persistent session outlives the hub: its queue and record
            // stay in the data_dir for the next start.
            self.durable = false;
        } else {
            self.forget_queue();
        }
        self.reset();
        if let Ok(mut sessions) = self.broker.sessions.lock() {
            if sessions
                .get(&self.id)
                .is_some_and(|tx| tx.same_channel(&self.tx))
            {
                sessions.remove(&self.id);
            }
        }
        self.inbox.close();
        while let Ok(m) = self.inbox.try_recv() {
            if let (Msg::Attach(conn), false) = (m, stopping) {
                tokio::spawn(attach(self.broker.clone(), conn));
            }
        }
    }
}

trait PropsDefault {
    fn unwrap_or_default_props(self) -> rumqttc::v5::mqttbytes::v5::ConnectProperties;
}

impl PropsDefault for Option<rumqttc::v5::mqttbytes::v5::ConnectProperties> {
    fn unwrap_or_default_props(self) -> rumqttc::v5::mqttbytes::v5::ConnectProperties {
        self.unwrap_or_default()
    }
}
