//! Client of an external broker (rumqttc, MQTT 5): the event-loop task that
//! connects, reconnects with backoff and takes publishes into the hub, and the
//! forwarder task that sends hub envelopes out.
//!
//! The forward reads the adapter's durable queue `forward` (on disk with
//! `[hub] data_dir`, bounded by `max_queue_bytes`): an envelope leaves it
//! only once the broker acknowledged it (PUBACK at QoS 1, PUBREC at QoS 2;
//! at QoS 0 once it was written). What is in flight when the connection
//! drops, or when the hub is killed, goes out again first and in order after
//! the reconnect or the restart: at least once, never lost to a broker
//! outage.
//!
//! rumqttc does not say which envelope got which packet id, so the
//! [`Tracker`] follows them: the forwarder submits envelopes in order, and
//! rumqttc writes them in that order, each announced by an
//! `Outgoing::Publish(pkid)` event (a packet id collision only delays one,
//! and rumqttc takes no other request meanwhile). A lost connection forgets
//! everything in flight; the forwarder then has the queue hand it all out
//! again ([`Subscription::redeliver`]).
//!
//! The other way, a QoS 1/2 publish from the broker is acknowledged once
//! the hub has it (on disk with a `data_dir`): routed at once, acknowledged
//! in order by [`Ingest`] when its group commit is done, so that the event
//! loop reads the next publishes meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use polyhub_sdk::{
    Acker, AdapterContext, AdapterError, DurableOptions, Envelope, PublishError, Stored,
    Subscription, TopicFilter,
};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as CQoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use polyhub_sdk::reconnect::{Next, Retry, Supervisor};

use crate::config::ClientSettings;
use crate::convert;
use crate::error::MqttError;

/// Requests rumqttc's event loop queues from the forwarder while connected.
const REQUEST_CHANNEL: usize = 256;
/// QoS 1 publishes in flight towards the broker (rumqttc also keeps to the
/// broker's receive maximum).
const INFLIGHT: u16 = 100;
/// Envelopes the forwarder has in flight at once (submitted, written and
/// not yet acknowledged).
const WINDOW: usize = INFLIGHT as usize;
/// The broker's QoS 1/2 publishes taken into the hub and not acknowledged
/// yet (waiting for the store's group commit): the receive maximum the
/// client asks the broker for ([`Ingest`] holds twice as many).
const INGEST_PIPELINE: u16 = 128;
/// The durable queue the forward reads.
const FORWARD_QUEUE: &str = "forward";
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Where each forwarded envelope is between the forwarder and the broker's
/// acknowledgement.
#[derive(Debug, Default)]
struct Tracker {
    connected: bool,
    /// The largest packet the broker takes (its CONNACK's maximum packet
    /// size), if it said.
    max_packet: Option<usize>,
    /// Bumped on every lost connection: the forwarder then has the queue
    /// redeliver what was in flight.
    generation: u64,
    /// Handed to rumqttc, not written yet, in order.
    submitted: VecDeque<Arc<Envelope>>,
    /// Written at QoS 1 or 2, waiting for the broker's acknowledgement.
    written: HashMap<u16, Arc<Envelope>>,
}

impl Tracker {
    fn in_flight(&self) -> usize {
        self.submitted.len() + self.written.len()
    }

    /// Whether the forwarder may submit another envelope.
    fn has_room(&self) -> bool {
        self.connected && self.in_flight() < WINDOW
    }

    /// rumqttc wrote the oldest submitted envelope with `pkid`: at QoS 0
    /// (`pkid` 0) it is done, and returned.
    fn wrote(&mut self, pkid: u16) -> Option<Arc<Envelope>> {
        let env = self.submitted.pop_front()?;
        if pkid == 0 {
            return Some(env);
        }
        self.written.insert(pkid, env);
        None
    }

    /// The broker acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) -> Option<Arc<Envelope>> {
        self.written.remove(&pkid)
    }

    /// The connection is gone: nothing is in flight any more.
    fn lost(&mut self) -> usize {
        let n = self.in_flight();
        self.connected = false;
        self.generation += 1;
        self.submitted.clear();
        self.written.clear();
        n
    }
}

/// What the event loop and the forwarder share.
struct Shared {
    ctx: AdapterContext,
    tracker: Mutex<Tracker>,
    /// Signalled when there is room, on a connection and on a lost one.
    changed: Notify,
    acker: Acker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        // The lock only guards plain data; a panic elsewhere cannot corrupt it.
        self.tracker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Handles one of rumqttc's events about the forward.
    fn on_event(&self, event: &Event, ctx: &AdapterContext) {
        // The broker acknowledged `pkid`; `refused` when with a failure code.
        let acked = |pkid: u16, refused_with: Option<&dyn std::fmt::Debug>| {
            let env = self.lock().acked(pkid);
            if let (Some(env), Some(reason)) = (&env, refused_with) {
                refused(ctx, env, reason);
            }
            env
        };
        let done = match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.lock().wrote(*pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                let ok = matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                );
                acked(
                    ack.pkid,
                    (!ok).then_some(&ack.reason as &dyn std::fmt::Debug),
                )
            }
            Event::Incoming(Packet::PubRec(rec)) => {
                let ok = matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                acked(
                    rec.pkid,
                    (!ok).then_some(&rec.reason as &dyn std::fmt::Debug),
                )
            }
            _ => return,
        };
        if let Some(env) = done {
            self.acker.ack(&env);
            self.changed.notify_one();
        }
    }
}

/// Acknowledges the broker's QoS 1/2 publishes once the hub has them on
/// disk, in the order they came, while the event loop reads the next ones:
/// one group commit per batch of messages, not one per message.
///
/// The acker never waits for rumqttc's request channel (the event loop,
/// which empties it, may be waiting for room in the acker): what does not
/// fit goes to `overflow`, which the event loop moves into rumqttc's
/// `pending` after each event.
struct Ingest {
    tx: mpsc::Sender<(u64, Stored, Publish)>,
    acks: Arc<Mutex<Acks>>,
}

/// The acker's side of [`Ingest`].
#[derive(Default)]
struct Acks {
    /// The connection acknowledgements are for, bumped when it is lost.
    connection: u64,
    /// Stored, their acknowledgements not handed to rumqttc yet.
    overflow: Vec<Publish>,
}

fn lock_acks(a: &Mutex<Acks>) -> MutexGuard<'_, Acks> {
    // The lock only guards plain data; a panic elsewhere cannot corrupt it.
    a.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The acknowledgement of a publish the hub took (none at QoS 0).
fn success_ack(publish: &Publish) -> Option<Request> {
    match publish.qos {
        CQoS::AtMostOnce => None,
        CQoS::AtLeastOnce => Some(Request::PubAck(PubAck::new(publish.pkid, None))),
        CQoS::ExactlyOnce => Some(Request::PubRec(PubRec::new(publish.pkid, None))),
    }
}

impl Ingest {
    fn start(ctx: &AdapterContext, client: &AsyncClient) -> Ingest {
        // Room for more than the broker should send unacknowledged.
        let (tx, rx) = mpsc::channel(2 * usize::from(INGEST_PIPELINE));
        let acks = Arc::new(Mutex::new(Acks::default()));
        ctx.spawn(ack_when_stored(rx, client.clone(), acks.clone()));
        Ingest { tx, acks }
    }

    /// Acknowledges `publish` once `stored` resolves; waits while the
    /// acker is full (it never waits for the event loop, so it drains).
    /// False when the acker is gone.
    async fn ack_when_stored(&self, stored: Stored, publish: Publish) -> bool {
        let connection = lock_acks(&self.acks).connection;
        self.tx.send((connection, stored, publish)).await.is_ok()
    }

    /// Acknowledgements that did not fit into rumqttc's request channel.
    fn overflow(&self) -> Vec<Request> {
        let mut a = lock_acks(&self.acks);
        if a.overflow.is_empty() {
            return Vec::new();
        }
        a.overflow
            .drain(..)
            .filter_map(|p| success_ack(&p))
            .collect()
    }

    /// The connection is lost: what it did not acknowledge yet is never
    /// acknowledged on the next one (its packet ids mean other messages
    /// there); the broker has no session for us and forgets them.
    fn lost(&self) {
        let mut a = lock_acks(&self.acks);
        a.connection += 1;
        a.overflow.clear();
    }
}

async fn ack_when_stored(
    mut rx: mpsc::Receiver<(u64, Stored, Publish)>,
    client: AsyncClient,
    acks: Arc<Mutex<Acks>>,
) {
    while let Some((on, stored, publish)) = rx.recv().await {
        // Not stored (the hub is stopping, or the store failed): not
        // acknowledged.
        if stored.await.is_err() {
            continue;
        }
        // Under the lock: a lost connection is either before (skipped) or
        // after (the ack is in rumqttc's channel, which the event loop
        // empties when it handles the loss, or in `overflow`, cleared).
        let mut a = lock_acks(&acks);
        if a.connection == on && client.try_ack(&publish).is_err() {
            a.overflow.push(publish);
        }
    }
}

/// The broker refused a forwarded message with a reason code: it is not
/// retried (the broker would refuse it again); counted (`broker_refused`,
/// `dropped`) and logged at most once a second.
fn refused(ctx: &AdapterContext, env: &Envelope, reason: &dyn std::fmt::Debug) {
    ctx.metrics().record_error();
    ctx.metrics().record_drop();
    ctx.metrics().incr("broker_refused");
    if let Some(unlogged) = ctx.metrics().should_log_rejection() {
        warn!(adapter = %ctx.name(), topic = %env.topic, reason = ?reason, also_refused_since_last_line = unlogged, "The broker refused a forwarded message; skipped it.");
    }
}

fn tls_config(s: &ClientSettings) -> Result<TlsConfiguration, MqttError> {
    let config = polyhub_sdk::tls::client_config(s.ca_file.as_deref())?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

fn options(s: &ClientSettings) -> Result<MqttOptions, MqttError> {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(s.keep_alive)
        .set_clean_start(true)
        // Acked once the hub took the message (or with the reason it did
        // not): at-least-once into the hub, and v5's quota error.
        .set_manual_acks(true)
        .set_connection_timeout(5)
        .set_outgoing_inflight_upper_limit(INFLIGHT)
        .set_receive_maximum(Some(INGEST_PIPELINE));
    if let Some((user, pass)) = &s.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    if s.tls {
        opts.set_transport(Transport::tls_with_config(tls_config(s)?));
    }
    Ok(opts)
}

fn subscribe_request(filters: &[TopicFilter]) -> Request {
    let filters = filters.iter().map(|f| Filter {
        path: f.as_str().to_owned(),
        // The broker delivers at the lower of this and the publisher's QoS:
        // at 2, every message arrives at the QoS it was published with.
        qos: CQoS::ExactlyOnce,
        // Never receive our own publishes back: no echo into the hub. This
        // is MQTT 5 no-local, which the broker applies per message whatever
        // the rate, so it cannot overflow as a memory of what was sent
        // would. The client speaks MQTT 5 only, so there is no 3.1.1 path
        // that could echo: a 3.1.1-only broker refuses the connection and
        // the adapter stops with an error that says so (`refusal_text`).
        nolocal: true,
        // Keep the retain flag of live messages, so the hub can carry it.
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    });
    Request::Subscribe(Subscribe::new_many(filters, None))
}

/// Why the hub refused a publish from the broker (one it took is
/// acknowledged by [`Ingest`] once stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    QuotaExceeded,
    TopicInvalid,
}

/// The refusal of a publish from the broker (none at QoS 0): the hub's
/// answer as an MQTT 5 reason code (0x97 quota exceeded, 0x90 topic name
/// invalid).
fn ack_request(publish: &Publish, outcome: Ack) -> Option<Request> {
    match publish.qos {
        CQoS::AtMostOnce => None,
        CQoS::AtLeastOnce => {
            let mut ack = PubAck::new(publish.pkid, None);
            ack.reason = match outcome {
                Ack::QuotaExceeded => PubAckReason::QuotaExceeded,
                Ack::TopicInvalid => PubAckReason::TopicNameInvalid,
            };
            Some(Request::PubAck(ack))
        }
        CQoS::ExactlyOnce => {
            let mut rec = PubRec::new(publish.pkid, None);
            rec.reason = match outcome {
                Ack::QuotaExceeded => PubRecReason::QuotaExceeded,
                Ack::TopicInvalid => PubRecReason::TopicNameInvalid,
            };
            Some(Request::PubRec(rec))
        }
    }
}

/// Why the connection to the broker failed, for the reconnect supervisor.
struct Lost(ConnectionError);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ConnectionError::ConnectionRefused(code) => {
                write!(f, "refused the connection: {}", refusal_text(code))
            }
            e => e.fmt(f),
        }
    }
}

impl Retry for Lost {
    fn is_permanent(&self) -> bool {
        matches!(&self.0, ConnectionError::ConnectionRefused(code) if is_permanent(code))
    }
}

/// A refusal that retrying will not cure.
fn is_permanent(code: &ConnectReturnCode) -> bool {
    matches!(
        code,
        ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId
            | ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::Banned
            | ConnectReturnCode::BadAuthenticationMethod
            | ConnectReturnCode::RefusedProtocolVersion
            | ConnectReturnCode::UnsupportedProtocolVersion
    )
}

/// What a permanent refusal says, with what to do about an old broker.
fn refusal_text(code: &ConnectReturnCode) -> String {
    match code {
        ConnectReturnCode::RefusedProtocolVersion
        | ConnectReturnCode::UnsupportedProtocolVersion => format!(
            "{code:?}: the broker does not speak MQTT 5, which the adapter needs \
             (MQTT 5 no-local is what keeps the hub's own publishes from coming back \
             as duplicates); upgrade the broker (Mosquitto 1.6 or later), or let the \
             devices connect to the embedded broker (`listen`) instead"
        ),
        _ => format!("{code:?}"),
    }
}

/// Runs the client until shutdown.
pub(crate) async fn run(
    s: ClientSettings,
    subscribe: Vec<TopicFilter>,
    forward: Vec<TopicFilter>,
    ctx: AdapterContext,
) -> Result<(), AdapterError> {
    let broker = format!("{}:{}", s.host, s.port);
    let (client, mut eventloop) = AsyncClient::new(options(&s)?, REQUEST_CHANNEL);
    let ingest = Ingest::start(&ctx, &client);

    // Stops with the event loop, also when that ends on an error.
    let stop_forwarder = ctx.shutdown().child_token();
    let (shared, forwarder) = if forward.is_empty() {
        (None, None)
    } else {
        let sub = ctx
            .subscribe_durable(FORWARD_QUEUE, forward, DurableOptions::default())
            .map_err(|_| AdapterError::HubClosed)?;
        let shared = Arc::new(Shared {
            ctx: ctx.clone(),
            tracker: Mutex::new(Tracker::default()),
            changed: Notify::new(),
            acker: sub.acker(),
        });
        let task = ctx.spawn(forward_loop(
            sub,
            client.clone(),
            shared.clone(),
            stop_forwarder.clone(),
        ));
        (Some(shared), Some(task))
    };

    let mut connected = false;
    let result = event_loop(
        &s,
        (&broker, &subscribe),
        &ingest,
        &mut eventloop,
        (shared.as_deref(), &mut connected),
        &ctx,
    )
    .await;
    drop(ingest);

    stop_forwarder.cancel();
    if let Some(task) = forwarder {
        let _ = task.await;
    }
    if result.is_ok() && connected {
        disconnect(&client, &mut eventloop).await;
    }
    if let Some(sh) = &shared {
        let left = sh.lock().in_flight();
        if left > 0 {
            debug!(adapter = %ctx.name(), messages = left, "Stopped with forwarded messages not acknowledged by the broker; they go out again after the restart.");
        }
    }
    result
}

async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Runs until shutdown; `connected` says, when it returns, whether a
/// connection is up (to close cleanly).
async fn event_loop(
    s: &ClientSettings,
    (broker, subscribe): (&str, &[TopicFilter]),
    ingest: &Ingest,
    eventloop: &mut EventLoop,
    (shared, connected): (Option<&Shared>, &mut bool),
    ctx: &AdapterContext,
) -> Result<(), AdapterError> {
    let mut supervisor = Supervisor::new(ctx, broker, s.backoff.clone());
    // Publishes of a lost connection still to come out of rumqttc.
    let mut stale = 0usize;
    loop {
        let event = tokio::select! {
            _ = ctx.shutdown().cancelled() => return Ok(()),
            event = eventloop.poll() => event,
        };
        if let (Some(sh), Ok(event)) = (shared, &event) {
            sh.on_event(event, ctx);
        }
        eventloop.pending.extend(ingest.overflow());
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                *connected = true;
                // Subscribe first; the forwarder starts (again) once it
                // sees the connection, so its publishes follow.
                if !subscribe.is_empty() {
                    eventloop.pending.push_front(subscribe_request(subscribe));
                }
                if let Some(sh) = shared {
                    let mut t = sh.lock();
                    t.connected = true;
                    t.max_packet = connack
                        .properties
                        .as_ref()
                        .and_then(|p| p.max_packet_size)
                        .map(|m| m as usize);
                    drop(t);
                    sh.changed.notify_one();
                }
                supervisor.connected(&"subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // A publish of a lost connection: its packet id means
                // another message on this one, so it goes into the hub but
                // is never acknowledged.
                let acked = publish.qos != CQoS::AtMostOnce && stale == 0;
                stale = stale.saturating_sub(1);
                let origin = ctx.origin().with_peer(broker);
                let outcome = match convert::envelope_from_client(&publish, origin) {
                    Ok(env) => match ctx.publish_routed(env).await {
                        Ok(_) if !acked => continue,
                        Ok(stored) => {
                            if !ingest.ack_when_stored(stored, publish).await {
                                return Ok(());
                            }
                            continue;
                        }
                        Err(PublishError::Quota) => {
                            ctx.metrics().record_rejected("quota_exceeded");
                            debug!(adapter = %ctx.name(), broker = %broker, "Refused a retained message: the hub's retained store is full.");
                            Ack::QuotaExceeded
                        }
                        // The hub is shutting down; unacked, the broker keeps it.
                        Err(_) => return Ok(()),
                    },
                    Err(e) => {
                        ctx.metrics().record_rejected(e.reason());
                        warn!(adapter = %ctx.name(), broker = %broker, error = %e, "Dropped invalid message from broker.");
                        Ack::TopicInvalid
                    }
                };
                // A refusal, with its reason code, through `pending` (an ack
                // with a reason has no client call); it may overtake
                // acknowledgements still waiting for the store, which
                // brokers match by packet id.
                if let Some(ack) = ack_request(&publish, outcome).filter(|_| acked) {
                    eventloop.pending.push_back(ack);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for (code, filter) in ack.return_codes.iter().zip(subscribe) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        ctx.metrics().record_error();
                        warn!(adapter = %ctx.name(), broker = %broker, filter = %filter, code = ?code, "Broker refused a subscription.");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                warn!(adapter = %ctx.name(), broker = %broker, reason = ?d.reason_code, "Broker is disconnecting us.");
            }
            Ok(other) => debug!(adapter = %ctx.name(), event = ?other, "MQTT event."),
            Err(e) => {
                *connected = false;
                ingest.lost();
                stale = forget_in_flight(shared, eventloop, ctx);
                match supervisor.lost(&Lost(e)).await? {
                    Next::Retry => {}
                    Next::Shutdown => return Ok(()),
                }
            }
        }
    }
}

/// The connection is lost: acknowledgements rumqttc read but did not hand
/// out yet still count; everything else in flight is forgotten, here and in
/// rumqttc (the session is clean, so the broker forgot it too), and the
/// forwarder has the durable queue hand it out again, in order.
/// Returns how many publishes of the lost connection rumqttc still holds
/// as events (taken into the hub after the reconnect, never acknowledged).
fn forget_in_flight(
    shared: Option<&Shared>,
    eventloop: &mut EventLoop,
    ctx: &AdapterContext,
) -> usize {
    let stale = eventloop
        .state
        .events
        .iter()
        .filter(|e| matches!(e, Event::Incoming(Packet::Publish(_))))
        .count();
    let Some(sh) = shared else {
        // Acknowledgements of the lost connection queued since rumqttc
        // emptied its channel: dropped with everything else it held.
        eventloop.clean();
        eventloop.pending.clear();
        return stale;
    };
    // Events of the forward are handled now; the rest (publishes from the
    // broker) are handed out after the reconnect, as rumqttc would.
    let events = std::mem::take(&mut eventloop.state.events);
    for event in events {
        match &event {
            Event::Outgoing(Outgoing::Publish(_))
            | Event::Outgoing(Outgoing::AwaitAck(_))
            | Event::Incoming(Packet::PubAck(_))
            | Event::Incoming(Packet::PubRec(_)) => sh.on_event(&event, ctx),
            _ => eventloop.state.events.push_back(event),
        }
    }
    let in_flight = sh.lock().lost();
    // Submitted after rumqttc emptied its channel into `pending`, before
    // `lost` stopped the forwarder (and acknowledgements of the lost
    // connection): into `pending` too, then all dropped.
    eventloop.clean();
    eventloop.pending.clear();
    eventloop.state.collision = None;
    sh.changed.notify_one();
    if in_flight > 0 {
        debug!(adapter = %ctx.name(), messages = in_flight, "Connection lost with forwarded messages in flight; they go out again after the reconnect.");
    }
    stale
}

/// Sends what the hub forwards to the broker, at most [`WINDOW`] at a time,
/// while connected; after a lost connection, everything not acknowledged
/// again first.
async fn forward_loop(
    mut sub: Subscription,
    client: AsyncClient,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut generation = 0;
    // An envelope taken from the queue and not submitted yet.
    let mut held: Option<Arc<Envelope>> = None;
    loop {
        let changed = shared.changed.notified();
        let ready = {
            let t = shared.lock();
            if t.generation != generation {
                generation = t.generation;
                held = None;
                sub.redeliver();
            }
            t.has_room()
        };
        if !ready {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
            }
            continue;
        }
        let env = match held.take() {
            Some(env) => env,
            None => tokio::select! {
                _ = stop.cancelled() => return,
                // A lost connection, while waiting for an envelope.
                _ = changed => continue,
                env = sub.recv() => match env {
                    Some(env) => env,
                    None => return,
                },
            },
        };
        // Converted once, outside the lock; submitted under it, so that a
        // lost connection is either before (not submitted) or after
        // (forgotten and redelivered).
        let publish = convert::client_publish(&env);
        let size = publish.size();
        let submitted = {
            let mut t = shared.lock();
            if t.generation != generation || !t.connected {
                false
            } else if let Some(max) = t.max_packet.filter(|m| size > *m) {
                // rumqttc would end the connection on it, and the queue hand
                // it out first again after every reconnect: skipped.
                drop(t);
                too_large(&shared, &env, size, max);
                continue;
            } else {
                t.submitted.push_back(env.clone());
                let ok = submit(&client, &env, publish);
                if !ok {
                    t.submitted.pop_back();
                }
                ok
            }
        };
        if !submitted {
            held = Some(env);
            // rumqttc's channel is full (or closed: the adapter stops), or
            // the connection was lost meanwhile.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }
}

/// An envelope larger than the broker's maximum packet size: the broker can
/// never take it, so it is acknowledged away, counted (`broker_refused`,
/// `dropped`) and logged at most once a second.
fn too_large(shared: &Shared, env: &Envelope, size: usize, max: usize) {
    shared.acker.ack(env);
    refused(
        &shared.ctx,
        env,
        &format_args!("{size} bytes, over the broker's maximum packet size of {max}"),
    );
}

/// Hands one envelope, converted, to rumqttc; false when its channel is
/// full or closed.
fn submit(client: &AsyncClient, env: &Envelope, publish: Publish) -> bool {
    let topic = env.topic.as_str().to_owned();
    let sent = match publish.properties {
        Some(props) => client.try_publish_with_properties(
            topic,
            publish.qos,
            publish.retain,
            publish.payload,
            props,
        ),
        None => client.try_publish(topic, publish.qos, publish.retain, publish.payload),
    };
    sent.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: u8) -> Arc<Envelope> {
        Arc::new(Envelope::new(
            polyhub_sdk::Topic::new("a").unwrap(),
            vec![n],
        ))
    }

    #[test]
    fn the_tracker_follows_envelopes_from_submitted_to_acknowledged() {
        let mut t = Tracker {
            connected: true,
            ..Tracker::default()
        };
        for n in 0..3 {
            t.submitted.push_back(env(n));
        }
        assert_eq!(t.in_flight(), 3);
        // QoS 1 written with packet ids 7 and 8, then a QoS 0 one (done
        // once written).
        assert!(t.wrote(7).is_none());
        assert!(t.wrote(8).is_none());
        assert_eq!(t.wrote(0).unwrap().payload[..], [2]);
        assert_eq!(t.in_flight(), 2);
        // Acknowledged in any order; an unknown packet id is nothing.
        assert_eq!(t.acked(8).unwrap().payload[..], [1]);
        assert!(t.acked(8).is_none());
        assert!(t.acked(99).is_none());
        assert!(t.wrote(5).is_none(), "nothing submitted: ignored");
        assert_eq!(t.in_flight(), 1);
        assert!(t.has_room());
        // A lost connection forgets what is in flight and says so.
        assert_eq!(t.lost(), 1);
        assert_eq!((t.in_flight(), t.generation), (0, 1));
        assert!(!t.has_room(), "no room while disconnected");
        t.connected = true;
        for n in 0..WINDOW {
            assert!(t.has_room());
            t.submitted.push_back(env(n as u8));
        }
        assert!(!t.has_room(), "the window is full");
    }

    #[test]
    fn subscription_asks_for_no_local_and_retain_as_published() {
        let Request::Subscribe(sub) = subscribe_request(&[TopicFilter::new("a/#").unwrap()]) else {
            panic!("expected a subscribe request")
        };
        assert_eq!(sub.filters.len(), 1);
        assert!(sub.filters[0].nolocal);
        assert!(sub.filters[0].preserve_retain);
        assert_eq!(sub.filters[0].qos, CQoS::ExactlyOnce);
    }

    #[test]
    fn acks_carry_the_hubs_answer_and_qos0_has_none() {
        let mut p = Publish::new("a", CQoS::AtLeastOnce, "x", None);
        p.pkid = 7;
        let Some(Request::PubAck(ack)) = ack_request(&p, Ack::QuotaExceeded) else {
            panic!("expected a PUBACK")
        };
        assert_eq!((ack.pkid, ack.reason), (7, PubAckReason::QuotaExceeded));
        p.qos = CQoS::ExactlyOnce;
        let Some(Request::PubRec(rec)) = ack_request(&p, Ack::TopicInvalid) else {
            panic!("expected a PUBREC")
        };
        assert_eq!(rec.reason, PubRecReason::TopicNameInvalid);
        p.qos = CQoS::AtMostOnce;
        assert!(ack_request(&p, Ack::QuotaExceeded).is_none());
    }
}
