//! The run loop: connect, declare the topology, then move messages both ways
//! until the connection fails, and reconnect with backoff. Envelopes bound
//! for the broker live in an [`Outbox`] that outlives each connection, so
//! QoS 1 messages that were not confirmed are sent again after a reconnect.
//!
//! With `qos = 1` (the default) the forward reads the durable queue
//! `forward` of the hub: an envelope leaves it only once the broker
//! confirmed it (or refused it for good), so that with `[hub] data_dir` what
//! the broker has not confirmed survives a hub restart or `kill -9` and is
//! sent again, and a broker that is down for a while costs nothing but the
//! queue's `max_queue_bytes`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event, ExchangeKind,
    PublisherConfirm,
};
use polyhub_sdk::{
    Action, Adapter, AdapterContext, AdapterError, DurableOptions, Envelope, Identity, Origin,
    PublishError, QoS, Stored, Subscription,
};
use tracing::{debug, warn};

use crate::config::Settings;
use crate::convert::{amqp_to_envelope, envelope_to_amqp, is_own_echo, routing_key_to_topic};
use crate::error::SessionError;
use polyhub_sdk::reconnect::{Next, Supervisor};

/// How long shutdown waits for outstanding publisher confirms.
const DRAIN: Duration = Duration::from_secs(2);
/// The durable queue of the forward (`{adapter}/forward` in the hub).
pub const FORWARD_QUEUE: &str = "forward";

/// A running `type = "amqp"` adapter.
#[derive(Debug)]
pub struct AmqpAdapter {
    settings: Settings,
}

impl AmqpAdapter {
    /// An adapter from validated settings.
    pub fn new(settings: Settings) -> Self {
        AmqpAdapter { settings }
    }
}

/// An envelope handed to lapin and not yet confirmed.
struct InFlight {
    envelope: Arc<Envelope>,
    /// `None` while its `basic.publish` is being written.
    confirm: Option<PublisherConfirm>,
}

/// Envelopes on their way to the broker, kept across reconnects: the
/// `retry` queue is sent first after a reconnect, then the hub subscription.
#[derive(Default)]
struct Outbox {
    retry: VecDeque<Arc<Envelope>>,
    in_flight: VecDeque<InFlight>,
}

impl Outbox {
    /// After a broken connection: everything not confirmed goes to the front
    /// of the retry queue, in order.
    fn requeue_unconfirmed(&mut self) -> usize {
        let n = self.in_flight.len();
        while let Some(f) = self.in_flight.pop_back() {
            self.retry.push_front(f.envelope);
        }
        n
    }
}

/// A `basic.publish` being written by lapin; yields its confirm.
type Write = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// What stays the same for the whole life of the adapter.
struct Shared {
    ctx: AdapterContext,
    settings: Settings,
    /// The configured exchange, as lapin takes it.
    exchange: ShortString,
    queue: String,
    /// Value of the origin header on what this adapter publishes.
    marker: String,
    tls: OwnedTLSConfig,
}

#[async_trait::async_trait]
impl Adapter for AmqpAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let hub = ctx.snapshot().hub;
        let settings = self.settings;
        let queue = settings.queue_name(&hub, ctx.name());
        let marker = format!("{hub}.{}", ctx.name());
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: settings.ca_pem.clone(),
        };
        let forward = settings.config.forward.iter().cloned();
        let mut sub = if settings.qos == QoS::AtLeastOnce {
            ctx.subscribe_durable(FORWARD_QUEUE, forward, DurableOptions::default())
        } else {
            ctx.subscribe_with_depth(forward, Some(settings.config.buffer))
        }
        .map_err(|_| AdapterError::HubClosed)?;
        let shared = Shared {
            ctx: ctx.clone(),
            exchange: ShortString::from(settings.config.exchange.as_str()),
            settings,
            queue,
            marker,
            tls,
        };
        let mut outbox = Outbox::default();
        let authority = &shared.settings.uri.authority;
        let mut supervisor = Supervisor::new(
            &ctx,
            format!("{}:{}", authority.host, authority.port),
            shared.settings.backoff.clone(),
        );

        loop {
            let conn = tokio::select! {
                _ = ctx.shutdown().cancelled() => break,
                c = shared.connect() => c,
            };
            let outcome = match conn {
                Ok((conn, consumer)) => {
                    supervisor.connected(&format_args!(
                        "queue {}, exchange {}, {} to resend",
                        shared.queue,
                        shared.settings.config.exchange,
                        outbox.retry.len()
                    ));
                    let outcome = shared.serve(&conn, consumer, &mut sub, &mut outbox).await;
                    if outcome.is_ok() {
                        shared.drain(&mut outbox, &sub).await;
                    }
                    close(&conn).await;
                    outcome
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) | Err(SessionError::HubClosed) => break,
                Err(e) => {
                    let unconfirmed = outbox.requeue_unconfirmed();
                    if unconfirmed > 0 {
                        debug!(adapter = %ctx.name(), unconfirmed, "Unconfirmed messages will be sent again.");
                    }
                    match supervisor.lost(&e).await? {
                        Next::Retry => {}
                        Next::Shutdown => break,
                    }
                }
            }
        }
        let lost = outbox.retry.len() + outbox.in_flight.len();
        if lost > 0 {
            ctx.metrics().add("unsent_at_shutdown", lost as u64);
            if sub.is_durable() {
                // Unacknowledged, they stay in the durable queue (on disk
                // with a data_dir) and go first after the next start.
                warn!(adapter = %ctx.name(), count = lost, "Messages not confirmed by the broker at shutdown; kept in the forward's durable queue.");
            } else {
                warn!(adapter = %ctx.name(), count = lost, "Messages not confirmed by the broker at shutdown.");
            }
        }
        Ok(())
    }
}

/// Closes a connection politely, without waiting long for a dead broker.
async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(DRAIN, conn.close(200, ShortString::from("OK"))).await;
    }
}

impl Shared {
    fn confirmed(&self) -> bool {
        self.settings.qos == QoS::AtLeastOnce
    }

    /// Connects, opens the two channels and declares the topology:
    /// exchange, queue, bindings, prefetch, confirms and the consumer.
    async fn connect(&self) -> Result<(Connection, Consumer), SessionError> {
        let cfg = &self.settings.config;
        let props = ConnectionProperties::default()
            .with_connection_name(format!("polyhub {}", self.marker).into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(SessionError::amqp("starting the AMQP runtime"))?;
        let conn = Connection::connect_uri_with_config(
            self.settings.uri.clone(),
            props,
            self.tls.clone(),
            runtime,
        )
        .await
        .map_err(SessionError::amqp("connecting"))?;
        match self.declare(&conn).await {
            Ok(consumer) => Ok((conn, consumer)),
            Err(e) => {
                debug!(adapter = %self.ctx.name(), exchange = %cfg.exchange, error = %e, "Topology failed.");
                close(&conn).await;
                Err(e)
            }
        }
    }

    async fn declare(&self, conn: &Connection) -> Result<Consumer, SessionError> {
        let cfg = &self.settings.config;
        let ch = conn
            .create_channel()
            .await
            .map_err(SessionError::amqp("opening a channel"))?;
        let exchange = ShortString::from(cfg.exchange.as_str());
        let queue = ShortString::from(self.queue.as_str());
        ch.exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(SessionError::amqp("declaring the exchange"))?;
        let durable = self.confirmed();
        ch.queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable,
                auto_delete: !durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(SessionError::amqp("declaring the queue"))?;
        for key in &self.settings.binding_keys {
            ch.queue_bind(
                queue.clone(),
                exchange.clone(),
                key.clone(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("binding the queue"))?;
        }
        if self.confirmed() {
            ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
                .await
                .map_err(SessionError::amqp("setting the prefetch"))?;
        }
        let consumer = ch
            .basic_consume(
                queue,
                ShortString::from(format!("polyhub.{}", self.marker)),
                BasicConsumeOptions {
                    no_ack: !self.confirmed(),
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("starting the consumer"))?;
        Ok(consumer)
    }

    /// Moves messages both ways until the connection breaks (`Err`) or the
    /// hub shuts down (`Ok`).
    async fn serve(
        &self,
        conn: &Connection,
        consumer: Consumer,
        sub: &mut Subscription,
        outbox: &mut Outbox,
    ) -> Result<(), SessionError> {
        let out = conn
            .create_channel()
            .await
            .map_err(SessionError::amqp("opening the publish channel"))?;
        if self.confirmed() {
            out.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(SessionError::amqp("enabling publisher confirms"))?;
        }
        let mut events = conn.events_listener();
        let watch_events = async {
            while let Some(ev) = events.next().await {
                match ev {
                    Event::Error(e) => return SessionError::amqp("connection")(e),
                    Event::ConnectionBlocked(reason) => {
                        warn!(adapter = %self.ctx.name(), reason = %reason, "Broker blocked publishing.");
                        self.ctx.metrics().incr("connection_blocked");
                    }
                    _ => {}
                }
            }
            SessionError::HubClosed
        };
        tokio::select! {
            _ = self.ctx.shutdown().cancelled() => Ok(()),
            r = self.inbound(consumer) => r,
            r = self.outbound(&out, sub, outbox) => r,
            e = watch_events => Err(e),
        }
    }

    /// Broker → hub: each delivery becomes an envelope, acked once the hub
    /// has it (QoS 1; on disk with a `data_dir`). A delivery is routed at
    /// once and acked, in order, when its group commit is done, while the
    /// next ones are read (up to the prefetch count): one commit per batch
    /// of deliveries, not one per delivery.
    async fn inbound(&self, consumer: Consumer) -> Result<(), SessionError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Stored, lapin::Acker)>(256);
        let acks = async {
            while let Some((stored, acker)) = rx.recv().await {
                // Not stored: unacked, the broker delivers it again.
                stored.await.map_err(|_| SessionError::HubClosed)?;
                acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(SessionError::amqp("acking"))?;
            }
            Ok(())
        };
        tokio::select! {
            r = self.consume(consumer, tx) => r,
            r = acks => r,
        }
    }

    async fn consume(
        &self,
        mut consumer: Consumer,
        acks: tokio::sync::mpsc::Sender<(Stored, lapin::Acker)>,
    ) -> Result<(), SessionError> {
        let ack = self.confirmed();
        let uri = &self.settings.uri;
        let base = self
            .ctx
            .origin()
            .with_peer(format!("{}:{}", uri.authority.host, uri.authority.port));
        while let Some(delivery) = consumer.next().await {
            let d = delivery.map_err(SessionError::amqp("consuming"))?;
            if is_own_echo(&d.properties, &self.marker) {
                if ack {
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(SessionError::amqp("acking"))?;
                }
                continue;
            }
            let origin: Origin = match d.properties.user_id() {
                Some(u) => base.clone().with_user(u.as_str()),
                None => base.clone(),
            };
            if !self.may_publish(&d.properties, d.routing_key.as_str()) {
                // Dropped as Mosquitto drops a refused publish: acked
                // away (rejected without requeue), counted as a denial.
                if ack {
                    d.acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                        .map_err(SessionError::amqp("rejecting"))?;
                }
                continue;
            }
            match amqp_to_envelope(
                d.routing_key.as_str(),
                &d.properties,
                d.data,
                self.settings.qos,
                origin,
            ) {
                Ok(envelope) => {
                    match self.ctx.publish_routed(envelope).await {
                        Ok(stored) => {
                            if ack && acks.send((stored, d.acker)).await.is_err() {
                                return Err(SessionError::HubClosed);
                            }
                        }
                        Err(PublishError::Quota) => {
                            // Nothing to evict for a new retained topic: the
                            // message is refused, as a broker refuses past a
                            // quota, not requeued to come straight back.
                            self.ctx.reject(
                                "quota_exceeded",
                                None,
                                &format_args!("routing key {}", d.routing_key),
                            );
                            if ack {
                                d.acker
                                    .reject(BasicRejectOptions { requeue: false })
                                    .await
                                    .map_err(SessionError::amqp("rejecting"))?;
                            }
                            continue;
                        }
                        Err(_) => return Err(SessionError::HubClosed),
                    }
                }
                Err(e) => {
                    self.ctx.reject("invalid_routing_key", None, &e);
                    if ack {
                        d.acker
                            .reject(BasicRejectOptions { requeue: false })
                            .await
                            .map_err(SessionError::amqp("rejecting"))?;
                    }
                }
            }
        }
        Err(SessionError::ConsumerCancelled)
    }

    /// Whether `[auth]` lets the sender of a message publish on the topic
    /// of `routing_key`. The sender is the message's `user_id` property,
    /// which RabbitMQ checks against the user of the connection that
    /// published it; without one it is anonymous (let in only when
    /// `allow_anonymous` is on). The `%c` of ACL patterns is the message's
    /// `app_id` (empty without one). A routing key that maps to no topic is
    /// let through here, to be refused as such.
    fn may_publish(&self, properties: &lapin::BasicProperties, routing_key: &str) -> bool {
        if !self.ctx.auth_enabled() {
            return true;
        }
        let Ok(topic) = routing_key_to_topic(routing_key) else {
            return true;
        };
        let identity = match properties.user_id() {
            Some(u) => Identity::user(u.as_str()),
            None => match self.ctx.authenticate(None, None, None) {
                Ok(anonymous) => anonymous,
                Err(_) => return false,
            },
        };
        let client_id = properties.app_id().as_ref().map_or("", |a| a.as_str());
        self.ctx
            .authorize(&identity, client_id, topic.as_str(), Action::Write)
    }

    /// Hub → broker: resends the retry queue, then publishes what the
    /// subscription delivers, keeping at most `max_in_flight` envelopes
    /// between "handed to lapin" and "confirmed". Publishes are pipelined:
    /// each one's frames are queued at once (in order) and the loop goes on
    /// while lapin writes them, instead of waiting for each write.
    async fn outbound(
        &self,
        ch: &Channel,
        sub: &mut Subscription,
        outbox: &mut Outbox,
    ) -> Result<(), SessionError> {
        let max = self.settings.config.max_in_flight;
        let mut writes: FuturesOrdered<Write> = FuturesOrdered::new();
        // In-flight envelopes at the front whose write is done (they wait
        // for their confirm); the next write to finish is the one after.
        let mut written = outbox
            .in_flight
            .iter()
            .take_while(|f| f.confirm.is_some())
            .count();
        loop {
            while outbox.in_flight.len() < max {
                let Some(envelope) = outbox.retry.pop_front() else {
                    break;
                };
                self.start_publish(ch, envelope, sub, outbox, &mut writes)
                    .await;
            }
            let taking = outbox.in_flight.len() < max && outbox.retry.is_empty();
            let writing = !writes.is_empty();
            let waiting = outbox
                .in_flight
                .front_mut()
                .and_then(|f| f.confirm.as_mut());
            let has_waiting = waiting.is_some();
            let oldest = async {
                match waiting {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(w) = writes.next(), if writing => {
                    let confirm = w.map_err(SessionError::amqp("publishing"))?;
                    if self.confirmed() {
                        if let Some(f) = outbox.in_flight.get_mut(written) {
                            f.confirm = Some(confirm);
                            written += 1;
                        }
                    } else if let Some(f) = outbox.in_flight.pop_front() {
                        sub.ack(&f.envelope);
                    }
                }
                c = oldest, if has_waiting => {
                    let c = c.map_err(SessionError::amqp("waiting for a confirm"))?;
                    if let Some(f) = outbox.in_flight.pop_front() {
                        // Confirmed (or refused for good): the queue may forget it.
                        sub.ack(&f.envelope);
                    }
                    written = written.saturating_sub(1);
                    self.confirmation(c);
                }
                e = sub.recv(), if taking => match e {
                    Some(envelope) => {
                        self.start_publish(ch, envelope, sub, outbox, &mut writes).await
                    }
                    None => return Err(SessionError::HubClosed),
                },
            }
        }
    }

    /// Hands one envelope to lapin: its frames are queued before this
    /// returns (so the wire order is the call order), and the write's
    /// completion joins `writes`. An envelope whose topic maps to no routing
    /// key is dropped, counted and acknowledged to `sub` (it never will be
    /// sent).
    async fn start_publish(
        &self,
        ch: &Channel,
        envelope: Arc<Envelope>,
        sub: &Subscription,
        outbox: &mut Outbox,
        writes: &mut FuturesOrdered<Write>,
    ) {
        let persistent = self.confirmed() && envelope.qos.is_acknowledged();
        let msg = match envelope_to_amqp(&envelope, &self.marker, persistent) {
            Ok(m) => m,
            Err(e) => {
                warn!(adapter = %self.ctx.name(), topic = %envelope.topic, error = %e, "Dropped an envelope that maps to no routing key.");
                self.ctx.metrics().record_drop();
                self.ctx.metrics().incr("invalid_topic");
                sub.ack(&envelope);
                return;
            }
        };
        let ch = ch.clone();
        let exchange = self.exchange.clone();
        let options = BasicPublishOptions {
            mandatory: self.settings.config.mandatory,
            ..Default::default()
        };
        let payload = envelope.payload.clone();
        let mut write: Write = Box::pin(async move {
            ch.basic_publish(exchange, msg.routing_key, options, &payload, msg.properties)
                .await
        });
        // The first poll runs basic_publish up to its frames being queued.
        match futures::poll!(write.as_mut()) {
            Poll::Ready(done) => writes.push_back(Box::pin(std::future::ready(done))),
            Poll::Pending => writes.push_back(write),
        }
        outbox.in_flight.push_back(InFlight {
            envelope,
            confirm: None,
        });
    }

    /// Counts what the broker said about one published message.
    fn confirmation(&self, c: Confirmation) {
        match c {
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                debug!(adapter = %self.ctx.name(), routing_key = %returned.delivery.routing_key, code = returned.reply_code, "Broker returned an unroutable message.");
                self.ctx.metrics().incr("unroutable");
            }
            Confirmation::Nack(None) => {
                warn!(adapter = %self.ctx.name(), "Broker refused a message (nack).");
                self.ctx.metrics().record_error();
                self.ctx.metrics().record_drop();
            }
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
        }
    }

    /// At shutdown, waits a little for the outstanding confirms.
    async fn drain(&self, outbox: &mut Outbox, sub: &Subscription) {
        let wait = async {
            while let Some(front) = outbox.in_flight.front_mut() {
                match front.confirm.as_mut() {
                    Some(c) => match c.await {
                        Ok(c) => {
                            if let Some(f) = outbox.in_flight.pop_front() {
                                sub.ack(&f.envelope);
                            }
                            self.confirmation(c);
                        }
                        Err(_) => return,
                    },
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN, wait).await;
    }
}
