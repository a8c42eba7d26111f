//! Client of an external broker (rumqttc, MQTT 5): the event-loop task that
//! connects, reconnects with backoff and takes publishes into the hub, and the
//! forwarder task that sends hub envelopes out.
//!
//! QoS 1 messages are never lost to a broker restart: when the connection
//! drops, rumqttc's unacknowledged and queued publishes are moved into the
//! adapter's own bounded [`Outbox`], which also takes what the hub forwards
//! while disconnected; after the next CONNACK the outbox is replayed first.
//! (rumqttc alone would discard them when the broker has no session for us.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use polyhub_sdk::{AdapterContext, AdapterError, PublishError, Subscription, TopicFilter};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as CQoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};
use rumqttc::{TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use polyhub_sdk::reconnect::{Next, Retry, Supervisor};

use crate::config::ClientSettings;
use crate::convert;
use crate::error::MqttError;

/// Requests rumqttc's event loop queues from the forwarder while connected.
const REQUEST_CHANNEL: usize = 256;
/// QoS 1 publishes in flight towards the broker.
const INFLIGHT: u16 = 100;
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Publishes waiting for a connection, bounded by `buffer`.
#[derive(Debug)]
struct Outbox {
    connected: bool,
    queue: VecDeque<Publish>,
    capacity: usize,
    overflowed: u64,
}

impl Outbox {
    /// Queues a publish; false when the buffer is full (the publish is dropped).
    fn push(&mut self, mut publish: Publish) -> bool {
        if self.queue.len() >= self.capacity {
            self.overflowed += 1;
            return false;
        }
        // A new session assigns fresh packet ids.
        publish.pkid = 0;
        publish.dup = false;
        self.queue.push_back(publish);
        true
    }
}

fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    // The lock only guards plain data; a panic elsewhere cannot corrupt it.
    outbox.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn overflow(ctx: &AdapterContext, outbox: &Mutex<Outbox>) {
    ctx.metrics().record_drop();
    ctx.metrics().incr("buffer_overflow");
    let total = lock(outbox).overflowed;
    // Log the first and then every 1000th, not one line per message.
    if total == 1 || total % 1000 == 0 {
        warn!(adapter = %ctx.name(), dropped_total = total, "Broker unreachable and the buffer is full; dropped a message.");
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
        .set_outgoing_inflight_upper_limit(INFLIGHT);
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

/// How the hub took a publish from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Success,
    QuotaExceeded,
    TopicInvalid,
}

/// The acknowledgement of a publish from the broker (none at QoS 0): the
/// hub's answer as an MQTT 5 reason code (0x97 quota exceeded, 0x90 topic
/// name invalid).
fn ack_request(publish: &Publish, outcome: Ack) -> Option<Request> {
    match publish.qos {
        CQoS::AtMostOnce => None,
        CQoS::AtLeastOnce => {
            let mut ack = PubAck::new(publish.pkid, None);
            ack.reason = match outcome {
                Ack::Success => PubAckReason::Success,
                Ack::QuotaExceeded => PubAckReason::QuotaExceeded,
                Ack::TopicInvalid => PubAckReason::TopicNameInvalid,
            };
            Some(Request::PubAck(ack))
        }
        CQoS::ExactlyOnce => {
            let mut rec = PubRec::new(publish.pkid, None);
            rec.reason = match outcome {
                Ack::Success => PubRecReason::Success,
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
    let outbox = Arc::new(Mutex::new(Outbox {
        connected: false,
        queue: VecDeque::new(),
        capacity: s.buffer,
        overflowed: 0,
    }));

    // Stops with the event loop, also when that ends on an error.
    let stop_forwarder = ctx.shutdown().child_token();
    let forwarder = if forward.is_empty() {
        None
    } else {
        let sub = ctx
            .subscribe(forward.iter().cloned())
            .map_err(|_| AdapterError::HubClosed)?;
        Some(ctx.spawn(forward_loop(
            ctx.clone(),
            sub,
            client.clone(),
            outbox.clone(),
            stop_forwarder.clone(),
        )))
    };

    let result = event_loop(
        &s,
        &broker,
        &subscribe,
        &client,
        &mut eventloop,
        &outbox,
        &ctx,
    )
    .await;

    stop_forwarder.cancel();
    if let Some(task) = forwarder {
        let _ = task.await;
    }
    if result.is_ok() && lock(&outbox).connected {
        disconnect(&client, &mut eventloop).await;
    }
    let left = lock(&outbox).queue.len();
    if left > 0 {
        warn!(adapter = %ctx.name(), messages = left, "Stopped with messages still buffered for the broker.");
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

async fn event_loop(
    s: &ClientSettings,
    broker: &str,
    subscribe: &[TopicFilter],
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    outbox: &Mutex<Outbox>,
    ctx: &AdapterContext,
) -> Result<(), AdapterError> {
    let mut supervisor = Supervisor::new(ctx, broker, s.backoff.clone());
    loop {
        let event = tokio::select! {
            _ = ctx.shutdown().cancelled() => return Ok(()),
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let saved = {
                    let mut ob = lock(outbox);
                    ob.connected = true;
                    std::mem::take(&mut ob.queue)
                };
                // Subscribe first, then replay what waited for the broker,
                // then anything rumqttc still holds.
                let mut pending = VecDeque::with_capacity(saved.len() + 1);
                if !subscribe.is_empty() {
                    pending.push_back(subscribe_request(subscribe));
                }
                let replayed = saved.len();
                pending.extend(saved.into_iter().map(Request::Publish));
                pending.append(&mut eventloop.pending);
                eventloop.pending = pending;
                supervisor.connected(&format_args!("{replayed} buffered messages resent"));
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let origin = ctx.origin().with_peer(broker);
                let outcome = match convert::envelope_from_client(&publish, origin) {
                    Ok(env) => match ctx.publish(env).await {
                        Ok(()) => Ack::Success,
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
                // A success goes through the request channel; anything else,
                // or a full channel, through `pending` (which rumqttc throttles
                // by a timer tick per request, too slow for every ack).
                let sent = outcome == Ack::Success && client.try_ack(&publish).is_ok();
                if !sent {
                    if let Some(ack) = ack_request(&publish, outcome) {
                        eventloop.pending.push_back(ack);
                    }
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
                let pending = std::mem::take(&mut eventloop.pending);
                let dropped = {
                    let mut ob = lock(outbox);
                    ob.connected = false;
                    pending
                        .into_iter()
                        .filter_map(|r| match r {
                            Request::Publish(p) => Some(p),
                            _ => None,
                        })
                        .filter(|p| !ob.push(p.clone()))
                        .count()
                };
                for _ in 0..dropped {
                    overflow(ctx, outbox);
                }
                match supervisor.lost(&Lost(e)).await? {
                    Next::Retry => {}
                    Next::Shutdown => return Ok(()),
                }
            }
        }
    }
}

/// Sends what the hub forwards to the broker; buffers it while disconnected.
async fn forward_loop(
    ctx: AdapterContext,
    mut sub: Subscription,
    client: AsyncClient,
    outbox: Arc<Mutex<Outbox>>,
    stop: CancellationToken,
) {
    loop {
        let env = tokio::select! {
            _ = stop.cancelled() => return,
            env = sub.recv() => match env {
                Some(env) => env,
                None => return,
            },
        };
        let publish = convert::client_publish(&env);
        {
            let mut ob = lock(&outbox);
            if !ob.connected {
                let queued = ob.push(publish);
                drop(ob);
                if !queued {
                    overflow(&ctx, &outbox);
                }
                continue;
            }
        }
        let topic = env.topic.as_str().to_owned();
        let sent = match publish.properties {
            Some(props) => {
                client
                    .publish_bytes_with_properties(
                        topic,
                        publish.qos,
                        publish.retain,
                        publish.payload,
                        props,
                    )
                    .await
            }
            None => {
                client
                    .publish_bytes(topic, publish.qos, publish.retain, publish.payload)
                    .await
            }
        };
        if let Err(e) = sent {
            // Only when the event loop is gone, i.e. the adapter is stopping.
            ctx.metrics().record_drop();
            debug!(adapter = %ctx.name(), error = %e, "Event loop closed; message not sent.");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_is_bounded_and_resets_packet_ids() {
        let mut ob = Outbox {
            connected: false,
            queue: VecDeque::new(),
            capacity: 2,
            overflowed: 0,
        };
        let mut p = Publish::new("a", CQoS::AtLeastOnce, "x", None);
        p.pkid = 42;
        p.dup = true;
        assert!(ob.push(p.clone()));
        assert!(ob.push(p.clone()));
        assert!(!ob.push(p), "third does not fit");
        assert_eq!(ob.overflowed, 1);
        assert_eq!(ob.queue.len(), 2);
        assert!(ob.queue.iter().all(|q| q.pkid == 0 && !q.dup));
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
        let Some(Request::PubRec(rec)) = ack_request(&p, Ack::Success) else {
            panic!("expected a PUBREC")
        };
        assert_eq!(rec.reason, PubRecReason::Success);
        p.qos = CQoS::AtMostOnce;
        assert!(ack_request(&p, Ack::Success).is_none());
    }
}
