//! The [`Adapter`] trait every protocol adapter implements, the
//! [`AdapterFactory`] that builds it from config, and the [`AdapterContext`]
//! through which a running adapter talks to the hub.
//!
//! An adapter's life: the hub calls [`AdapterFactory::create`] with the
//! adapter's config table (also during `polyhub check`, so it must only
//! validate, never bind or connect), then spawns [`Adapter::run`] with a
//! context. `run` binds or connects, calls [`AdapterContext::set_state`] with
//! [`AdapterState::Up`] once it serves, publishes what its peers send with
//! [`AdapterContext::publish`], sends what its [`Subscription`]s receive, and
//! returns when [`AdapterContext::shutdown`] is cancelled.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, Action, DenialLog, Identity, Refused};
use crate::clients::{ClientHandle, ClientInfo, ClientRegistry};
use crate::config::{AdapterConfig, ConfigError};
use crate::envelope::{Envelope, MessageId, Origin, QoS};
use crate::metrics::{AdapterMetrics, HubSnapshot};
use crate::topic::{Topic, TopicFilter};

/// A protocol adapter, ready to run.
#[async_trait::async_trait]
pub trait Adapter: Send + 'static {
    /// Serves the protocol until `ctx.shutdown()` is cancelled.
    ///
    /// Returning `Err` before the adapter was ever up fails the hub's start;
    /// returning `Err` later marks the adapter failed while the hub runs on.
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError>;
}

/// Builds adapters of one kind from their config table.
pub trait AdapterFactory: Send + Sync + 'static {
    /// The kind, as written in `type = "..."` (`mqtt`, `coap`, ...).
    fn kind(&self) -> &str;

    /// Validates `config` and builds an adapter. Must not bind sockets or
    /// connect anywhere: `polyhub check` calls it too.
    fn create(&self, config: &AdapterConfig) -> Result<Box<dyn Adapter>, ConfigError>;
}

/// The state of an adapter, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterState {
    /// Created, not yet serving.
    Starting,
    /// Serving: listening, or connected to its server.
    Up,
    /// Running but not serving right now (reconnecting to its server).
    Down,
    /// Stopped by an error (or a panic in a plugin); receives nothing more.
    Failed,
    /// Stopped by shutdown.
    Stopped,
}

impl AdapterState {
    /// Lower-case name, as `/health` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterState::Starting => "starting",
            AdapterState::Up => "up",
            AdapterState::Down => "down",
            AdapterState::Failed => "failed",
            AdapterState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for AdapterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an adapter stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// Could not bind a listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the config.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The config was valid for `create` but unusable at run time.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The peer or server broke the protocol, or refused us.
    #[error("{0}")]
    Protocol(String),
    /// The hub went away under the adapter.
    #[error("the hub is shutting down")]
    HubClosed,
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl AdapterError {
    /// An [`AdapterError::Protocol`] from anything printable.
    pub fn protocol(msg: impl fmt::Display) -> Self {
        AdapterError::Protocol(msg.to_string())
    }
}

/// Why the hub did not accept an envelope.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
    /// The adapter was marked failed and may not publish.
    #[error("adapter is failed")]
    Failed,
    /// A retained publish on a new topic while the hub's last-value store
    /// holds `max_topics` retained values: nothing is left to evict.
    /// Adapters answer with their protocol's quota error (MQTT v5 0x97,
    /// HTTP 507, CoAP 5.03).
    #[error("quota exceeded: the hub keeps [hub] max_topics retained values already")]
    Quota,
    /// `[hub] data_dir` could not write the envelope's value to disk: the
    /// envelope was routed, but a QoS 1 device must not be told it is safe
    /// (MQTT: no PUBACK, so the device sends it again; HTTP 503; CoAP 5.03).
    #[error("not stored: the hub's data_dir could not write it")]
    NotStored,
}

/// Resolves once a routed envelope is stored ([`AdapterContext::publish_routed`]).
pub type Stored = BoxFuture<'static, Result<(), PublishError>>;

/// Why a subscription could not be made.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
    /// No such subscription (already dropped).
    #[error("no such subscription")]
    Unknown,
    /// The hub on the other side of this link does not offer the option.
    #[error("this hub does not support {0}")]
    Unsupported(&'static str),
    /// A durable subscription of that name is live already.
    #[error("the durable queue `{0}` has a subscriber already")]
    QueueInUse(String),
}

/// How a durable subscription behaves ([`AdapterContext::subscribe_durable`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurableOptions {
    /// Bytes the queue holds at most, waiting and unacknowledged envelopes
    /// together; past it the oldest is dropped and counted (`None`: the
    /// hub's `[hub] max_queue_bytes`).
    pub max_queue_bytes: Option<u64>,
    /// Also receive envelopes this same adapter instance published.
    pub include_own: bool,
}

/// The hub's side of a durable subscription: a queue that outlives its
/// subscriber. With `[hub] data_dir`, every QoS 1/2 envelope in it is on
/// disk before its publisher is acknowledged and stays there until the
/// subscriber acknowledges it, so that a hub restart (or `kill -9`)
/// delivers it again. Envelopes handed out are "in flight" until
/// [`DurableQueue::ack`]; [`DurableQueue::redeliver`] hands them out again.
pub trait DurableQueue: Send + Sync + 'static {
    /// The next envelope, waiting for one; `None` once the hub shut down.
    fn next(&self) -> BoxFuture<'_, Option<Arc<Envelope>>>;
    /// The next envelope if one is waiting.
    fn try_next(&self) -> Option<Arc<Envelope>>;
    /// The subscriber's peer has the envelope: forget it.
    fn ack(&self, id: MessageId);
    /// Everything handed out and not acknowledged goes back to the front of
    /// the queue, in order (the subscriber lost its peer).
    fn redeliver(&self);
    /// Drops the queue and everything in it (an MQTT clean session).
    fn forget(&self);
    /// Envelopes waiting (not handed out yet).
    fn len(&self) -> usize;
    /// Whether nothing waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a subscription behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Queue depth in envelopes (the hub's default when `None`).
    pub depth: Option<usize>,
    /// Also receive envelopes this same adapter instance published.
    ///
    /// By default the hub never hands an adapter its own envelopes, which is
    /// what adapters attached to a broker want (the broker already delivers
    /// between its clients). An adapter whose devices talk to the hub directly
    /// (an HTTP client POSTing while another streams `/events`, a CoAP client
    /// publishing to a topic another observes) sets this so that those devices
    /// reach each other through the router too.
    pub include_own: bool,
    /// The highest QoS this subscription is delivered at (MQTT's granted
    /// QoS; `None`: as published). Under [`QoS::AtMostOnce`], a full queue
    /// drops the envelope and counts it instead of making its publisher
    /// wait, whatever QoS it was published with: what a subscriber that
    /// cannot acknowledge (an SSE stream, a QoS 0 MQTT subscription) wants,
    /// so that it never stalls anyone. Not carried across the plugin
    /// boundary (ABI 1.1): a loaded adapter's subscriptions keep `None`.
    pub max_qos: Option<QoS>,
}

/// Identifies one subscription within the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// What the hub offers one adapter instance. The hub implements it for
/// built-in adapters; the plugin side of the sdk implements it over the C
/// boundary. Adapter code uses [`AdapterContext`] instead.
pub trait HubLink: Send + Sync + 'static {
    /// Routes `envelope` (its `origin.adapter` and `origin.protocol` are set
    /// by the link). Waits when a QoS 1 subscriber's queue is full.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>>;
    /// Routes `envelope` and returns what to wait for before acknowledging
    /// its device: with `[hub] data_dir`, a QoS 1/2 envelope is
    /// acknowledged only once on disk, and the returned future resolves
    /// then (in publish order). This default waits for everything inside.
    fn publish_routed(&self, envelope: Envelope) -> BoxFuture<'_, Result<Stored, PublishError>> {
        Box::pin(async move {
            self.publish(envelope).await?;
            Ok(Box::pin(std::future::ready(Ok(()))) as Stored)
        })
    }
    /// Creates a subscription to `filters` whose queue holds `depth`
    /// envelopes (the hub's default when `None`).
    fn subscribe(
        &self,
        filters: &[TopicFilter],
        depth: Option<usize>,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError>;
    /// Creates a subscription with options. The default implementation
    /// serves links that only know [`HubLink::subscribe`] and refuses
    /// `include_own` rather than silently ignoring it.
    fn subscribe_with_options(
        &self,
        filters: &[TopicFilter],
        options: SubscribeOptions,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        if options.include_own {
            return Err(SubscribeError::Unsupported("include_own subscriptions"));
        }
        self.subscribe(filters, options.depth)
    }
    /// Creates (or takes over) the durable queue `name` (unique in the
    /// hub; [`AdapterContext::subscribe_durable`] prefixes the adapter's
    /// name). Envelopes that were queued for it before, in this process or
    /// in the data_dir before a restart, come first.
    fn subscribe_durable(
        &self,
        name: &str,
        filters: &[TopicFilter],
        options: DurableOptions,
    ) -> Result<(SubscriptionId, Arc<dyn DurableQueue>), SubscribeError> {
        let _ = (name, filters, options);
        Err(SubscribeError::Unsupported("durable subscriptions"))
    }
    /// A value the adapter stored under `key` ([`HubLink::state_put`]).
    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        let _ = key;
        None
    }
    /// Stores (`Some`) or removes (`None`) a small value under `key`, on
    /// disk with `[hub] data_dir` (written with the next group commit), in
    /// memory otherwise. Links without a store keep nothing.
    fn state_put(&self, key: &str, value: Option<Vec<u8>>) {
        let _ = (key, value);
    }
    /// Every key starting with `prefix`, with its value.
    fn state_scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let _ = prefix;
        Vec::new()
    }
    /// Adds a filter to a subscription.
    fn add_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> Result<(), SubscribeError>;
    /// Removes a filter from a subscription; false if it was not there.
    fn remove_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> bool;
    /// Drops a subscription.
    fn unsubscribe(&self, id: SubscriptionId);
    /// The last value of a topic, retained or not.
    fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>>;
    /// Forgets the last (and retained) value of a topic; false if it had none.
    fn clear_last_value(&self, topic: &Topic) -> bool;
    /// The last values of every topic matching `filter`.
    fn last_values(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>>;
    /// The retained values of every topic matching `filter`.
    fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>>;
    /// One page of the last values, in topic order: up to `limit` topics
    /// that start with `prefix` (as a string) and sort after `after`. The
    /// hub answers from an ordered index at the cost of the page; this
    /// default (for links without one) filters every last value.
    fn topics_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Envelope>> {
        let all = TopicFilter::new("#").map(|f| self.last_values(&f));
        let mut page: Vec<_> = all
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.topic.as_str().starts_with(prefix))
            .filter(|e| after.map_or(true, |a| e.topic.as_str() > a))
            .collect();
        page.sort_by(|a, b| a.topic.cmp(&b.topic));
        page.truncate(limit);
        page
    }
    /// Reports the adapter's state.
    fn set_state(&self, state: AdapterState, reason: Option<String>);
    /// State and counters of the whole hub.
    fn snapshot(&self) -> HubSnapshot;
    /// The hub's registry of connected devices; `None` where the link has
    /// none (handles are then detached: they count, nobody lists them).
    fn clients(&self) -> Option<Arc<ClientRegistry>> {
        None
    }
    /// The hub's users and ACL (`[auth]`); `None` when the hub has no
    /// `[auth]` section, and everyone is anonymous and allowed everything.
    /// Links across the plugin boundary do not carry it yet (ABI 1.1).
    fn access(&self) -> Option<Arc<dyn Access>> {
        None
    }
}

/// What a running adapter gets from the hub.
#[derive(Clone)]
pub struct AdapterContext {
    name: Arc<str>,
    kind: Arc<str>,
    link: Arc<dyn HubLink>,
    shutdown: CancellationToken,
    metrics: Arc<AdapterMetrics>,
    span: tracing::Span,
    tasks: TaskTracker,
    access: Option<Arc<dyn Access>>,
    denials: Arc<DenialLog>,
}

impl fmt::Debug for AdapterContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterContext")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl AdapterContext {
    /// Assembles a context (the hub and the plugin loader do this).
    pub fn new(
        name: &str,
        kind: &str,
        link: Arc<dyn HubLink>,
        shutdown: CancellationToken,
        metrics: Arc<AdapterMetrics>,
    ) -> Self {
        let span = tracing::info_span!("adapter", name = %name, kind = %kind);
        let access = link.access();
        AdapterContext {
            name: Arc::from(name),
            kind: Arc::from(kind),
            link,
            shutdown,
            metrics,
            span,
            tasks: TaskTracker::new(),
            access,
            denials: Arc::new(DenialLog::default()),
        }
    }

    /// The instance name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The adapter kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// An origin naming this adapter; add the peer with [`Origin::with_peer`].
    pub fn origin(&self) -> Origin {
        Origin {
            adapter: self.name.clone(),
            protocol: self.kind.clone(),
            peer: None,
            user: None,
        }
    }

    /// Whether `envelope` came in through this adapter instance.
    pub fn is_own(&self, envelope: &Envelope) -> bool {
        *envelope.origin.adapter == *self.name
    }

    /// Hands an envelope to the hub. Returns once every subscriber's queue
    /// took it (QoS 1) or it was queued or dropped (QoS 0).
    pub async fn publish(&self, envelope: Envelope) -> Result<(), PublishError> {
        self.link.publish(envelope).await
    }

    /// Routes an envelope and returns, without waiting for the disk, what
    /// to await before the device may be told its QoS 1/2 message is safe
    /// (`[hub] data_dir`: the group commit holding it; otherwise ready).
    /// A device connection that must acknowledge in order (MQTT PUBACK,
    /// AMQP ack) keeps these futures in order and reads its next message
    /// meanwhile, so that one connection's stream is not one commit per
    /// message.
    pub async fn publish_routed(&self, envelope: Envelope) -> Result<Stored, PublishError> {
        self.link.publish_routed(envelope).await
    }

    /// Subscribes to `filters` with the hub's default queue depth.
    pub fn subscribe<I>(&self, filters: I) -> Result<Subscription, SubscribeError>
    where
        I: IntoIterator,
        I::Item: Into<TopicFilter>,
    {
        self.subscribe_with_depth(filters, None)
    }

    /// Subscribes to `filters` with a queue of `depth` envelopes.
    pub fn subscribe_with_depth<I>(
        &self,
        filters: I,
        depth: Option<usize>,
    ) -> Result<Subscription, SubscribeError>
    where
        I: IntoIterator,
        I::Item: Into<TopicFilter>,
    {
        let filters: Vec<TopicFilter> = filters.into_iter().map(Into::into).collect();
        let (id, rx) = self.link.subscribe(&filters, depth)?;
        Ok(Subscription::from_parts(id, rx, self.link.clone()))
    }

    /// Subscribes to `filters` with [`SubscribeOptions`] (queue depth, and
    /// whether this adapter's own envelopes are delivered to it too).
    pub fn subscribe_with<I>(
        &self,
        filters: I,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError>
    where
        I: IntoIterator,
        I::Item: Into<TopicFilter>,
    {
        let filters: Vec<TopicFilter> = filters.into_iter().map(Into::into).collect();
        let (id, rx) = self.link.subscribe_with_options(&filters, options)?;
        Ok(Subscription::from_parts(id, rx, self.link.clone()))
    }

    /// Subscribes to `filters` through the durable queue `name` (unique
    /// within this adapter; the hub keys it as `{adapter}/{name}`): what a
    /// subscriber that forwards to a peer which acknowledges (an external
    /// broker, a webhook, an MQTT persistent session) uses. The queue never
    /// makes a publisher wait; it holds up to
    /// [`DurableOptions::max_queue_bytes`] and drops (and counts) its oldest
    /// past that. Call [`Subscription::ack`] once the peer has an envelope,
    /// [`Subscription::redeliver`] when the peer was lost.
    ///
    /// A link without durable queues (a loaded plugin, ABI 1.1) gives an
    /// ordinary subscription instead: in memory, no acknowledgements.
    pub fn subscribe_durable<I>(
        &self,
        name: &str,
        filters: I,
        options: DurableOptions,
    ) -> Result<Subscription, SubscribeError>
    where
        I: IntoIterator,
        I::Item: Into<TopicFilter>,
    {
        let filters: Vec<TopicFilter> = filters.into_iter().map(Into::into).collect();
        let full = format!("{}/{name}", self.name);
        match self.link.subscribe_durable(&full, &filters, options) {
            Ok((id, queue)) => Ok(Subscription {
                id,
                rx: Source::Durable(queue),
                link: self.link.clone(),
            }),
            Err(SubscribeError::Unsupported(_)) => {
                tracing::warn!(adapter = %self.name, queue = %full, "This hub link has no durable queues (a loaded plugin); the subscription keeps its envelopes in memory only.");
                self.subscribe_with(
                    filters,
                    SubscribeOptions {
                        include_own: options.include_own,
                        ..SubscribeOptions::default()
                    },
                )
            }
            Err(e) => Err(e),
        }
    }

    /// The value this adapter stored under `key` (see
    /// [`AdapterContext::state_put`]).
    pub fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.link.state_get(&format!("{}/{key}", self.name))
    }

    /// Stores (`Some`) or removes (`None`) a small value of this adapter's
    /// under `key`: in the data_dir with `[hub] data_dir` (so it survives a
    /// restart), in memory otherwise. For session state such as an MQTT
    /// persistent session's subscriptions.
    pub fn state_put(&self, key: &str, value: Option<Vec<u8>>) {
        self.link.state_put(&format!("{}/{key}", self.name), value)
    }

    /// This adapter's keys starting with `prefix`, with their values (the
    /// keys without the adapter's own prefix).
    pub fn state_scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let own = format!("{}/", self.name);
        self.link
            .state_scan(&format!("{own}{prefix}"))
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(&own).map(|k| (k.to_owned(), v)))
            .collect()
    }

    /// The last value of a topic.
    pub fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.link.last_value(topic)
    }

    /// Forgets the last value of a topic.
    pub fn clear_last_value(&self, topic: &Topic) -> bool {
        self.link.clear_last_value(topic)
    }

    /// The last values of every topic matching `filter`.
    pub fn last_values(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.link.last_values(filter)
    }

    /// The retained values of every topic matching `filter`.
    pub fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.link.retained(filter)
    }

    /// One page of the last values in topic order (see
    /// [`HubLink::topics_page`]): for listings such as CoAP discovery.
    pub fn topics_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Envelope>> {
        self.link.topics_page(prefix, after, limit)
    }

    /// Reports this adapter's state (shown on `/health`), with a reason
    /// when it is not up. Logged at INFO on every change.
    pub fn set_state(&self, state: AdapterState, reason: Option<String>) {
        self.link.set_state(state, reason)
    }

    /// State and counters of the whole hub.
    pub fn snapshot(&self) -> HubSnapshot {
        self.link.snapshot()
    }

    /// Reports a connected device (listed on the admin's `/api/clients`)
    /// until the returned handle is dropped; count its messages on the handle.
    pub fn client_connected(&self, info: ClientInfo) -> ClientHandle {
        match self.link.clients() {
            Some(registry) => registry.register(self.name.clone(), info),
            None => ClientHandle::detached(self.name.clone(), info),
        }
    }

    /// Cancelled when the hub shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` beside the adapter's run loop, in the adapter's span.
    /// Every task spawned here is the hub's to wait for: when the run loop
    /// returns, the adapter's shutdown token is cancelled and the hub waits
    /// for its tasks within the one drain timeout (`[hub] drain_timeout_ms`).
    /// A task should end when [`AdapterContext::shutdown`] is cancelled.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use tracing::Instrument;
        self.tasks.spawn(task.instrument(self.span.clone()))
    }

    /// Called by whoever ran the adapter (the hub, the plugin runner) once
    /// its run loop returned: cancels the adapter's token and waits until
    /// every task of [`AdapterContext::spawn`] has ended.
    pub async fn drain_tasks(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Refuses something a peer sent: counts it under `reason` on
    /// `polyhub_rejected_total` and logs it at WARN, at most one line a
    /// second per adapter (the line says how many refusals it stands for).
    /// `peer` and `detail` say who and what; never put payloads in `detail`.
    pub fn reject(&self, reason: &'static str, peer: Option<&str>, detail: &dyn fmt::Display) {
        self.metrics.record_rejected(reason);
        if let Some(unlogged) = self.metrics.should_log_rejection() {
            tracing::warn!(
                adapter = %self.name,
                reason,
                peer = peer.unwrap_or("-"),
                detail = %detail,
                also_refused_since_last_line = unlogged,
                "Refused input from a peer."
            );
        }
    }

    /// Whether the hub has an `[auth]` section. Without one, every peer is
    /// anonymous and allowed everything, and adapters ask for no credentials.
    pub fn auth_enabled(&self) -> bool {
        self.access.is_some()
    }

    /// Checks a peer's user name and password against the hub's password
    /// file (`None` user name: anonymous). A refusal is counted under
    /// `polyhub_auth_denied_total{action="connect"}` and logged once per
    /// user per minute. Costs one password hash (PBKDF2 with the file's
    /// iteration count; 101 for files `mosquitto_passwd` wrote): call it once
    /// per connection, not per message. Without `[auth]`, everyone is let in
    /// (as the user they claim, which nothing checks).
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: Option<&str>,
    ) -> Result<Identity, Refused> {
        let Some(access) = &self.access else {
            return Ok(username.map_or_else(Identity::anonymous, Identity::user));
        };
        let outcome = access.authenticate(username, password);
        if let Err(refused) = &outcome {
            let who = username.map_or_else(Identity::anonymous, Identity::user);
            self.auth_denied(&who, "connect", "", peer, refused);
        }
        outcome
    }

    /// Whether `identity`, connected as `client_id`, may do `action` on
    /// `topic` (a filter for [`Action::Subscribe`]). A denial is counted
    /// under `polyhub_auth_denied_total{action}` and logged once per (user,
    /// topic) per minute. Always true without `[auth]`.
    pub fn authorize(
        &self,
        identity: &Identity,
        client_id: &str,
        topic: &str,
        action: Action,
    ) -> bool {
        let Some(access) = &self.access else {
            return true;
        };
        match access.authorize(identity, client_id, topic, action) {
            Ok(()) => true,
            Err(denied) => {
                self.auth_denied(identity, action.as_str(), topic, Some(client_id), &denied);
                false
            }
        }
    }

    /// Like [`AdapterContext::authorize`], but neither counted nor logged:
    /// for leaving what a peer may not read out of a listing (CoAP's
    /// `/.well-known/core`), which refuses nothing. Always true without
    /// `[auth]`.
    pub fn may(&self, identity: &Identity, client_id: &str, topic: &str, action: Action) -> bool {
        self.access.as_ref().map_or(true, |access| {
            access.authorize(identity, client_id, topic, action).is_ok()
        })
    }

    /// Counts a peer refused by `[auth]` under `action` on
    /// `polyhub_auth_denied_total` and logs it at WARN once per (user,
    /// topic) per minute. [`AdapterContext::authenticate`] and
    /// [`AdapterContext::authorize`] call it; an adapter calls it itself for
    /// refusals it decides alone (an unknown bearer token).
    pub fn auth_denied(
        &self,
        identity: &Identity,
        action: &'static str,
        topic: &str,
        peer: Option<&str>,
        why: &dyn fmt::Display,
    ) {
        self.metrics.record_denied(action);
        if self.denials.should_log(identity, topic) {
            tracing::warn!(
                adapter = %self.name,
                user = %identity,
                action,
                topic,
                peer = peer.unwrap_or("-"),
                reason = %why,
                "Access denied (logged once a minute per user and topic)."
            );
        }
    }

    /// This adapter's counters.
    pub fn metrics(&self) -> &Arc<AdapterMetrics> {
        &self.metrics
    }

    /// The span the adapter's run loop runs in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}

/// A stream of envelopes matching one or more filters, with a bounded queue
/// (or a durable one, [`AdapterContext::subscribe_durable`]). Dropping it
/// unsubscribes; a durable queue keeps what it holds for the next
/// subscriber of its name.
pub struct Subscription {
    id: SubscriptionId,
    rx: Source,
    link: Arc<dyn HubLink>,
}

enum Source {
    Channel(mpsc::Receiver<Arc<Envelope>>),
    Durable(Arc<dyn DurableQueue>),
}

/// Acknowledges a [`Subscription`]'s envelopes ([`Subscription::acker`]);
/// a no-op for an in-memory subscription.
#[derive(Clone)]
pub struct Acker(Option<Arc<dyn DurableQueue>>);

impl Acker {
    /// The peer has `envelope` (see [`Subscription::ack`]).
    pub fn ack(&self, envelope: &Envelope) {
        if let Some(q) = &self.0 {
            q.ack(envelope.id);
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("durable", &self.0.is_some())
            .finish()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("durable", &self.is_durable())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Assembles a subscription from its parts (for [`HubLink`] implementors).
    pub fn from_parts(
        id: SubscriptionId,
        rx: mpsc::Receiver<Arc<Envelope>>,
        link: Arc<dyn HubLink>,
    ) -> Self {
        Subscription {
            id,
            rx: Source::Channel(rx),
            link,
        }
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Whether it reads a durable queue (acknowledgements matter).
    pub fn is_durable(&self) -> bool {
        matches!(self.rx, Source::Durable(_))
    }

    /// The next envelope; `None` once the hub has shut down.
    pub async fn recv(&mut self) -> Option<Arc<Envelope>> {
        match &mut self.rx {
            Source::Channel(rx) => rx.recv().await,
            Source::Durable(q) => q.next().await,
        }
    }

    /// The next envelope if one is queued.
    pub fn try_recv(&mut self) -> Option<Arc<Envelope>> {
        match &mut self.rx {
            Source::Channel(rx) => rx.try_recv().ok(),
            Source::Durable(q) => q.try_next(),
        }
    }

    /// Envelopes waiting to be received.
    pub fn len(&self) -> usize {
        match &self.rx {
            Source::Channel(rx) => rx.len(),
            Source::Durable(q) => q.len(),
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The peer has `envelope` (a durable queue forgets it; a no-op
    /// otherwise). QoS 0 envelopes need no acknowledgement.
    pub fn ack(&self, envelope: &Envelope) {
        if let Source::Durable(q) = &self.rx {
            q.ack(envelope.id);
        }
    }

    /// A handle that acknowledges this subscription's envelopes from
    /// another task than the one receiving them (the task that sees the
    /// peer's acknowledgements).
    pub fn acker(&self) -> Acker {
        Acker(match &self.rx {
            Source::Durable(q) => Some(q.clone()),
            Source::Channel(_) => None,
        })
    }

    /// The peer was lost: a durable queue hands out again, first and in
    /// order, everything not acknowledged (a no-op otherwise).
    pub fn redeliver(&self) {
        if let Source::Durable(q) = &self.rx {
            q.redeliver();
        }
    }

    /// Unsubscribes and drops a durable queue with everything in it.
    pub fn forget(self) {
        if let Source::Durable(q) = &self.rx {
            q.forget();
        }
    }

    /// Adds a filter.
    pub fn add(&self, filter: &TopicFilter) -> Result<(), SubscribeError> {
        self.link.add_filter(self.id, filter)
    }

    /// Removes a filter; false if it was not there.
    pub fn remove(&self, filter: &TopicFilter) -> bool {
        self.link.remove_filter(self.id, filter)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.link.unsubscribe(self.id);
    }
}
