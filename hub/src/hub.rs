//! A running hub: starts every adapter of a checked [`Config`] on the router,
//! tracks their state for `/health`, and shuts them down within the drain
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::RwLock;
use polyhub_sdk::{
    AdapterContext, AdapterMetrics, AdapterSnapshot, AdapterState, ClientRegistry, DurableOptions,
    DurableQueue, Envelope, HubLink, HubSnapshot, PublishError, Stored, SubscribeError,
    SubscribeOptions, SubscriptionId, Topic, TopicFilter,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::last_value::LastValueStore;
use crate::router::Router;

/// Name of the internal subscriber that runs `[[routes]]`.
pub const ROUTES_ADAPTER: &str = "routes";

/// Why the hub could not start or stop cleanly.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HubError {
    /// `[hub] data_dir` cannot be used.
    #[error("[hub] data_dir: {0}")]
    Store(#[from] crate::store::StoreError),
    /// An adapter failed before it was ever up.
    #[error("adapter \"{name}\" failed to start: {reason}")]
    AdapterFailed {
        /// The adapter.
        name: String,
        /// Its error.
        reason: String,
    },
    /// The `[admin]` listener could not bind.
    #[error("[admin] cannot listen on {addr}: {source}")]
    AdminBind {
        /// The address from `[admin] bind`.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Some adapters were still running when the drain timeout ran out.
    #[error("adapters still running after the {timeout:?} drain timeout: {}", names.join(", "))]
    DrainTimeout {
        /// The timeout.
        timeout: Duration,
        /// The adapters.
        names: Vec<String>,
    },
}

type StateCell = (AdapterState, Option<String>);

/// One adapter instance's place in the hub.
#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    kind: String,
    state: watch::Sender<StateCell>,
    metrics: Arc<AdapterMetrics>,
    queue_depth: Option<usize>,
}

impl Slot {
    fn set_state(&self, state: AdapterState, reason: Option<String>) {
        let changed = self.state.send_if_modified(|cell| {
            if cell.0 == state && cell.1 == reason {
                return false;
            }
            *cell = (state, reason.clone());
            true
        });
        if changed {
            match (&state, &reason) {
                (AdapterState::Failed, Some(r)) => {
                    tracing::error!(adapter = %self.name, state = %state, reason = %r, "Adapter state changed.")
                }
                (AdapterState::Down, Some(r)) => {
                    tracing::warn!(adapter = %self.name, state = %state, reason = %r, "Adapter state changed.")
                }
                _ => tracing::info!(adapter = %self.name, state = %state, "Adapter state changed."),
            }
        }
    }

    fn state(&self) -> AdapterState {
        self.state.borrow().0
    }
}

/// What every adapter link shares.
#[derive(Debug)]
pub(crate) struct Shared {
    name: String,
    pub(crate) router: Arc<Router>,
    slots: RwLock<Vec<Arc<Slot>>>,
    pub(crate) clients: Arc<ClientRegistry>,
    /// `[auth]`, when configured.
    pub(crate) auth: Option<crate::auth::Auth>,
}

impl Shared {
    pub(crate) fn snapshot(&self) -> HubSnapshot {
        let adapters = self
            .slots
            .read()
            .iter()
            .filter(|s| &*s.name != ROUTES_ADAPTER)
            .map(|s| {
                let (state, reason) = s.state.borrow().clone();
                AdapterSnapshot {
                    name: s.name.to_string(),
                    kind: s.kind.clone(),
                    state,
                    reason,
                    metrics: s.metrics.snapshot(),
                }
            })
            .collect();
        HubSnapshot {
            hub: self.name.clone(),
            adapters,
            routing_latency: self.router.latency(),
            topics: self.router.store().len(),
            subscriptions: self.router.subscription_count(),
            last_value_evictions: self.router.store().evictions(),
            retained_quota_refusals: self.router.store().refusals(),
            store: self.router.store().persist().map(|p| {
                let s = p.stats();
                polyhub_sdk::StoreSnapshot {
                    commits: s.commits.load(std::sync::atomic::Ordering::Relaxed),
                    writes: s.writes.load(std::sync::atomic::Ordering::Relaxed),
                    errors: s.errors.load(std::sync::atomic::Ordering::Relaxed),
                }
            }),
        }
    }

    fn add_slot(&self, name: &str, kind: &str, queue_depth: Option<usize>) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            name: Arc::from(name),
            kind: kind.to_owned(),
            state: watch::Sender::new((AdapterState::Starting, None)),
            metrics: Arc::new(AdapterMetrics::default()),
            queue_depth,
        });
        self.slots.write().push(slot.clone());
        slot
    }
}

/// The hub side of one adapter's [`HubLink`].
struct Link {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Link {
    /// Marks an envelope as this adapter's (a failed adapter may not publish).
    fn stamp(&self, envelope: &mut Envelope) -> Result<(), PublishError> {
        if self.slot.state() == AdapterState::Failed {
            return Err(PublishError::Failed);
        }
        envelope.origin.adapter = self.slot.name.clone();
        if *envelope.origin.protocol != self.slot.kind {
            envelope.origin.protocol = Arc::from(self.slot.kind.as_str());
        }
        Ok(())
    }
}

impl HubLink for Link {
    fn publish(&self, mut envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        async move {
            self.stamp(&mut envelope)?;
            self.shared
                .router
                .publish(envelope, &self.slot.metrics)
                .await
        }
        .boxed()
    }

    fn publish_routed(
        &self,
        mut envelope: Envelope,
    ) -> BoxFuture<'_, Result<Stored, PublishError>> {
        async move {
            self.stamp(&mut envelope)?;
            let stored = self
                .shared
                .router
                .publish_routed(envelope, &self.slot.metrics)
                .await?;
            Ok(match stored {
                Some(wait) => Box::pin(wait.wait()) as Stored,
                None => Box::pin(std::future::ready(Ok(()))) as Stored,
            })
        }
        .boxed()
    }

    fn subscribe(
        &self,
        filters: &[TopicFilter],
        depth: Option<usize>,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        self.shared.router.subscribe(
            self.slot.name.clone(),
            self.slot.metrics.clone(),
            filters,
            depth.or(self.slot.queue_depth),
        )
    }

    fn subscribe_with_options(
        &self,
        filters: &[TopicFilter],
        mut options: SubscribeOptions,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        options.depth = options.depth.or(self.slot.queue_depth);
        self.shared.router.subscribe_with(
            self.slot.name.clone(),
            self.slot.metrics.clone(),
            filters,
            options,
        )
    }

    fn subscribe_durable(
        &self,
        name: &str,
        filters: &[TopicFilter],
        options: DurableOptions,
    ) -> Result<(SubscriptionId, Arc<dyn DurableQueue>), SubscribeError> {
        self.shared.router.subscribe_durable(
            name,
            self.slot.name.clone(),
            self.slot.metrics.clone(),
            filters,
            options,
        )
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.router.state_get(key)
    }

    fn state_put(&self, key: &str, value: Option<Vec<u8>>) {
        self.shared.router.state_put(key, value)
    }

    fn state_scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.shared.router.state_scan(prefix)
    }

    fn add_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> Result<(), SubscribeError> {
        self.shared.router.add_filter(id, filter)
    }

    fn remove_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> bool {
        self.shared.router.remove_filter(id, filter)
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        self.shared.router.unsubscribe(id)
    }

    fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.shared.router.store().get(topic)
    }

    fn clear_last_value(&self, topic: &Topic) -> bool {
        self.shared.router.store().clear(topic)
    }

    fn last_values(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.shared.router.store().matching(filter)
    }

    fn topics_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Envelope>> {
        self.shared.router.store().page(prefix, after, limit)
    }

    fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.shared.router.store().retained(filter)
    }

    fn set_state(&self, state: AdapterState, reason: Option<String>) {
        self.slot.set_state(state, reason)
    }

    fn snapshot(&self) -> HubSnapshot {
        self.shared.snapshot()
    }

    fn clients(&self) -> Option<Arc<ClientRegistry>> {
        Some(self.shared.clients.clone())
    }

    fn access(&self) -> Option<Arc<dyn polyhub_sdk::Access>> {
        self.shared
            .auth
            .clone()
            .map(|a| Arc::new(a) as Arc<dyn polyhub_sdk::Access>)
    }
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
    drain: Duration,
    admin_addr: Option<std::net::SocketAddr>,
    /// `[hub] data_dir`, when set.
    store: Option<crate::store::Store>,
}

impl Hub {
    /// Starts every adapter and the routes, and waits (up to the start-up
    /// timeout) until each adapter is up or down. An adapter that fails
    /// before it was ever up stops the whole start with its error.
    pub async fn start(config: Config) -> Result<Hub, HubError> {
        let mut values = LastValueStore::new(config.hub.max_topics);
        let mut store = None;
        let mut loaded = crate::store::Loaded::default();
        if let Some(dir) = &config.hub.data_dir {
            let (opened, mut l) = crate::store::Store::open(
                dir,
                config.hub.fsync,
                Duration::from_millis(config.hub.fsync_window_ms),
            )?;
            let queued: usize = l.queues.values().map(Vec::len).sum();
            tracing::info!(file = %opened.path().display(), topics = l.slots.len(), queues = l.queues.len(), queued, fsync = ?config.hub.fsync, "Opened the data_dir store.");
            values = values.with_persist(opened.persist().clone(), std::mem::take(&mut l.slots));
            loaded = l;
            store = Some(opened);
        }
        let router = Router::with_store(config.hub.queue_depth, values)
            .with_max_queue_bytes(config.hub.max_queue_bytes);
        router.restore(loaded.queues, loaded.state);
        let router = Arc::new(router);
        let shared = Arc::new(Shared {
            name: config.hub.name.clone(),
            router,
            slots: RwLock::new(Vec::new()),
            clients: Arc::new(ClientRegistry::new()),
            auth: config.auth.clone(),
        });
        let mut hub = Hub {
            shared,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            drain: Duration::from_millis(config.hub.drain_timeout_ms),
            admin_addr: None,
            store,
        };
        tracing::info!(hub = %config.hub.name, source = %config.source, adapters = config.adapters.len(), routes = config.routes.len(), "Starting hub.");

        if !config.routes.is_empty() {
            let ctx = hub.attach(ROUTES_ADAPTER, "route");
            if let Ok(task) = crate::routes::start(config.routes, ctx) {
                hub.tracker.spawn(task);
            }
        }

        let mut started = Vec::new();
        for prepared in config.adapters {
            let name = prepared.entry.name.clone();
            let slot = hub
                .shared
                .add_slot(&name, &prepared.kind, prepared.entry.queue_depth);
            let ctx = hub.context_for(&slot);
            let span = ctx.span().clone();
            let tasks = ctx.clone();
            let task = tokio::spawn(prepared.adapter.run(ctx).instrument(span));
            let watcher = slot.clone();
            hub.tracker.spawn(async move {
                let outcome = task.await;
                match outcome {
                    Ok(Ok(())) => watcher.set_state(AdapterState::Stopped, None),
                    Ok(Err(e)) => watcher.set_state(AdapterState::Failed, Some(e.to_string())),
                    Err(join) => {
                        let reason = if join.is_panic() {
                            let panic = join.into_panic();
                            let msg = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "unknown panic".into());
                            format!("panicked: {msg}")
                        } else {
                            "cancelled".to_owned()
                        };
                        watcher.set_state(AdapterState::Failed, Some(reason));
                    }
                }
                // The adapter's own tasks (`ctx.spawn`) end with it, inside
                // the hub's drain timeout.
                tasks.drain_tasks().await;
            });
            started.push(slot);
        }

        let startup = Duration::from_millis(config.hub.startup_timeout_ms);
        let wait_all = async {
            for slot in &started {
                let mut rx = slot.state.subscribe();
                let _ = rx.wait_for(|(s, _)| *s != AdapterState::Starting).await;
                let (state, reason) = rx.borrow().clone();
                if state == AdapterState::Failed {
                    return Err(HubError::AdapterFailed {
                        name: slot.name.to_string(),
                        reason: reason.unwrap_or_default(),
                    });
                }
            }
            Ok(())
        };
        match tokio::time::timeout(startup, wait_all).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = hub.shutdown_ref().await;
                return Err(e);
            }
            Err(_) => {
                let slow: Vec<String> = started
                    .iter()
                    .filter(|s| s.state() == AdapterState::Starting)
                    .map(|s| s.name.to_string())
                    .collect();
                tracing::warn!(adapters = ?slow, timeout = ?startup, "Some adapters are still starting; going on without waiting.");
            }
        }
        if let Some(addr) = config.admin {
            let ctx = hub.attach(crate::config::ADMIN_ADAPTER, "admin");
            if config.auth.is_some() && config.admin_users.is_empty() {
                tracing::warn!(
                    "[admin] with [auth] but no `admin_users`: the admin listener refuses everyone. List the operators in [auth] admin_users."
                );
            }
            match crate::admin::start(
                addr,
                hub.shared.clone(),
                config.admin_users.clone(),
                config.admin_tls.clone(),
                ctx,
                &hub.tracker,
                hub.token.child_token(),
            )
            .await
            {
                Ok(bound) => {
                    let scheme = if config.admin_tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    tracing::info!(addr = %bound, "Admin dashboard listening: {scheme}://{bound}/");
                    hub.admin_addr = Some(bound);
                }
                Err(source) => {
                    let _ = hub.shutdown_ref().await;
                    return Err(HubError::AdminBind { addr, source });
                }
            }
        }
        tracing::info!(hub = %hub.shared.name, "Hub running.");
        Ok(hub)
    }

    fn context_for(&self, slot: &Arc<Slot>) -> AdapterContext {
        let link = Arc::new(Link {
            shared: self.shared.clone(),
            slot: slot.clone(),
        });
        AdapterContext::new(
            &slot.name,
            &slot.kind,
            link,
            self.token.child_token(),
            slot.metrics.clone(),
        )
    }

    /// Attaches an in-process client as if it were an adapter named `name`
    /// (already up): what it publishes is never delivered back to it. Used
    /// by routes, tests and `polyhub compare`.
    pub fn attach(&self, name: &str, kind: &str) -> AdapterContext {
        let slot = self.shared.add_slot(name, kind, None);
        slot.set_state(AdapterState::Up, None);
        self.context_for(&slot)
    }

    /// State and counters of the whole hub.
    pub fn snapshot(&self) -> HubSnapshot {
        self.shared.snapshot()
    }

    /// Every connected device that adapters reported.
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.shared.clients
    }

    /// The users and ACL, when `[auth]` is configured.
    pub fn auth(&self) -> Option<&crate::auth::Auth> {
        self.shared.auth.as_ref()
    }

    /// Re-reads the `[auth]` files (on SIGHUP), off the async threads, and
    /// logs the outcome; the old users and rules stay in force when either
    /// file is wrong. `None` without `[auth]`.
    pub async fn reload_auth(
        &self,
    ) -> Option<Result<crate::auth::ReloadSummary, crate::auth::AuthError>> {
        let auth = self.shared.auth.clone()?;
        let outcome = tokio::task::spawn_blocking(move || auth.reload())
            .await
            .unwrap_or_else(|e| {
                Err(crate::auth::AuthError::Invalid {
                    file: "[auth]".into(),
                    message: format!("the reload did not finish: {e}"),
                })
            });
        match &outcome {
            Ok(s) => tracing::info!(
                users = s.users,
                acl_users = s.acl_users,
                "Reloaded the [auth] password and ACL files."
            ),
            Err(e) => {
                tracing::error!(error = %e, "Kept the previous [auth] users and rules: the new files are wrong.")
            }
        }
        Some(outcome)
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.shared.router
    }

    /// Cancelled when the hub shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancels every adapter and waits up to the drain timeout for them.
    pub async fn shutdown(self) -> Result<(), HubError> {
        self.shutdown_ref().await
    }

    async fn shutdown_ref(&self) -> Result<(), HubError> {
        tracing::info!(hub = %self.shared.name, drain_timeout = ?self.drain, "Shutting down.");
        self.token.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(self.drain, self.tracker.wait()).await;
        self.shared.router.close();
        if let Some(store) = &self.store {
            // What the adapters published last goes to disk before the
            // process ends (the writer thread commits what is pending).
            // A few milliseconds: the last batch's commit.
            store.close();
            tracing::info!(file = %store.path().display(), "Closed the data_dir store.");
        }
        match drained {
            Ok(()) => {
                tracing::info!(hub = %self.shared.name, "Stopped.");
                Ok(())
            }
            Err(_) => {
                let names: Vec<String> = self
                    .shared
                    .slots
                    .read()
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.state(),
                            AdapterState::Starting | AdapterState::Up | AdapterState::Down
                        )
                    })
                    .map(|s| s.name.to_string())
                    .collect();
                Err(HubError::DrainTimeout {
                    timeout: self.drain,
                    names,
                })
            }
        }
    }
}
