//! An in-memory hub for adapters' unit tests: [`TestHub`] hands out
//! [`AdapterContext`]s whose publishes, subscriptions, last values, states
//! and clients stay in this process, so an adapter's conversion and
//! connection logic can be tested against a real protocol peer without
//! starting the whole `polyhub` hub (which depends on every adapter).
//!
//! It keeps the hub's rules that adapters rely on: an adapter does not get
//! its own envelopes back unless it subscribes with `include_own`; a QoS 1
//! delivery waits for room in a full queue, a subscription capped at QoS 0
//! (`max_qos`) drops instead; retained values are kept per topic. Matching
//! is a scan of the subscriptions, which is all a test needs (the real
//! router is a trie).
//!
//! ```
//! # async fn demo() {
//! use polyhub_sdk::testing::TestHub;
//! use polyhub_sdk::{Envelope, Topic, TopicFilter};
//!
//! let hub = TestHub::new();
//! let ctx = hub.context("dev", "mqtt");
//! let mut sub = ctx.subscribe([TopicFilter::new("a/#").unwrap()]).unwrap();
//! hub.publish_from("other", Envelope::new(Topic::new("a/b").unwrap(), "1"))
//!     .await
//!     .unwrap();
//! assert_eq!(sub.recv().await.unwrap().payload, "1");
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::adapter::{
    AdapterContext, AdapterState, HubLink, PublishError, SubscribeError, SubscribeOptions,
    SubscriptionId,
};
use crate::clients::ClientRegistry;
use crate::envelope::{Envelope, QoS};
use crate::metrics::{AdapterMetrics, AdapterSnapshot, HubSnapshot};
use crate::topic::{Topic, TopicFilter};

/// Default queue depth of a subscription, as the hub's default.
const DEFAULT_DEPTH: usize = 1024;

/// An in-memory hub for tests. Cheap to clone; every clone is the same hub.
#[derive(Clone, Default)]
pub struct TestHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    subs: Mutex<Vec<Sub>>,
    values: Mutex<BTreeMap<Topic, Arc<Envelope>>>,
    published: Mutex<Vec<Arc<Envelope>>>,
    adapters: Mutex<Vec<Arc<Slot>>>,
    shutdown: CancellationToken,
    clients: Arc<ClientRegistry>,
}

struct Sub {
    id: SubscriptionId,
    adapter: Arc<str>,
    filters: Vec<TopicFilter>,
    options: SubscribeOptions,
    tx: mpsc::Sender<Arc<Envelope>>,
}

struct Slot {
    name: Arc<str>,
    kind: Arc<str>,
    metrics: Arc<AdapterMetrics>,
    state: watch::Sender<(AdapterState, Option<String>)>,
    history: Mutex<Vec<(AdapterState, Option<String>)>>,
}

impl std::fmt::Debug for TestHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHub").finish_non_exhaustive()
    }
}

impl TestHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context of a new adapter instance `name` of kind `kind`.
    pub fn context(&self, name: &str, kind: &str) -> AdapterContext {
        let slot = Arc::new(Slot {
            name: Arc::from(name),
            kind: Arc::from(kind),
            metrics: Arc::new(AdapterMetrics::default()),
            state: watch::Sender::new((AdapterState::Starting, None)),
            history: Mutex::new(Vec::new()),
        });
        self.inner.adapters.lock().push(slot.clone());
        let link = Arc::new(TestLink {
            hub: self.inner.clone(),
            slot: slot.clone(),
        });
        AdapterContext::new(
            name,
            kind,
            link,
            self.inner.shutdown.child_token(),
            slot.metrics.clone(),
        )
    }

    /// Publishes `envelope` as the adapter `adapter` would (it need not
    /// exist): what another protocol's device sends the adapter under test.
    pub async fn publish_from(
        &self,
        adapter: &str,
        mut envelope: Envelope,
    ) -> Result<(), PublishError> {
        envelope.origin.adapter = Arc::from(adapter);
        self.inner.route(envelope).await
    }

    /// Every envelope published so far, in order, by any adapter.
    pub fn published(&self) -> Vec<Arc<Envelope>> {
        self.inner.published.lock().clone()
    }

    /// Waits until `n` envelopes have been published (or `timeout`), and
    /// returns them.
    pub async fn wait_published(&self, n: usize, timeout: Duration) -> Vec<Arc<Envelope>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.published();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every state the adapter `name` reported, in order.
    pub fn states(&self, name: &str) -> Vec<(AdapterState, Option<String>)> {
        self.slot(name)
            .map(|s| s.history.lock().clone())
            .unwrap_or_default()
    }

    /// Waits until the adapter `name` reports `state` (or `timeout`), and
    /// returns its reason; `None` on timeout or an unknown adapter.
    pub async fn wait_state(
        &self,
        name: &str,
        state: AdapterState,
        timeout: Duration,
    ) -> Option<Option<String>> {
        let mut rx = self.slot(name)?.state.subscribe();
        let seen = tokio::time::timeout(timeout, rx.wait_for(|(s, _)| *s == state))
            .await
            .ok()?
            .ok()?
            .1
            .clone();
        Some(seen)
    }

    /// The connected clients the adapters registered.
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.inner.clients
    }

    /// Stops the hub: every context's shutdown token is cancelled.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.inner
            .adapters
            .lock()
            .iter()
            .find(|s| &*s.name == name)
            .cloned()
    }
}

impl Inner {
    async fn route(&self, mut envelope: Envelope) -> Result<(), PublishError> {
        if self.shutdown.is_cancelled() {
            return Err(PublishError::Closed);
        }
        envelope.id = crate::envelope::MessageId::generate();
        let env = Arc::new(envelope);
        {
            let mut values = self.values.lock();
            if env.retain && env.payload.is_empty() {
                values.remove(&env.topic);
            } else {
                values.insert(env.topic.clone(), env.clone());
            }
        }
        self.published.lock().push(env.clone());
        // Collect the targets first: sends may wait, the lock may not.
        let targets: Vec<(mpsc::Sender<Arc<Envelope>>, bool)> = self
            .subs
            .lock()
            .iter()
            .filter(|s| s.options.include_own || s.adapter != env.origin.adapter)
            .filter(|s| s.filters.iter().any(|f| f.matches(&env.topic)))
            .map(|s| {
                let drop_when_full =
                    env.qos == QoS::AtMostOnce || s.options.max_qos == Some(QoS::AtMostOnce);
                (s.tx.clone(), drop_when_full)
            })
            .collect();
        for (tx, drop_when_full) in targets {
            if drop_when_full {
                let _ = tx.try_send(env.clone());
            } else {
                let _ = tx.send(env.clone()).await;
            }
        }
        Ok(())
    }
}

struct TestLink {
    hub: Arc<Inner>,
    slot: Arc<Slot>,
}

impl HubLink for TestLink {
    fn publish(&self, mut envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        async move {
            if self.slot.state.borrow().0 == AdapterState::Failed {
                return Err(PublishError::Failed);
            }
            envelope.origin.adapter = self.slot.name.clone();
            envelope.origin.protocol = self.slot.kind.clone();
            self.hub.route(envelope).await
        }
        .boxed()
    }

    fn subscribe(
        &self,
        filters: &[TopicFilter],
        depth: Option<usize>,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        self.subscribe_with_options(
            filters,
            SubscribeOptions {
                depth,
                ..SubscribeOptions::default()
            },
        )
    }

    fn subscribe_with_options(
        &self,
        filters: &[TopicFilter],
        options: SubscribeOptions,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        if self.hub.shutdown.is_cancelled() {
            return Err(SubscribeError::Closed);
        }
        let (tx, rx) = mpsc::channel(options.depth.unwrap_or(DEFAULT_DEPTH).max(1));
        let id = SubscriptionId(self.hub.next_id.fetch_add(1, Ordering::Relaxed));
        self.hub.subs.lock().push(Sub {
            id,
            adapter: self.slot.name.clone(),
            filters: filters.to_vec(),
            options,
            tx,
        });
        Ok((id, rx))
    }

    fn add_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> Result<(), SubscribeError> {
        let mut subs = self.hub.subs.lock();
        let sub = subs
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(SubscribeError::Unknown)?;
        if !sub.filters.contains(filter) {
            sub.filters.push(filter.clone());
        }
        Ok(())
    }

    fn remove_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> bool {
        let mut subs = self.hub.subs.lock();
        let Some(sub) = subs.iter_mut().find(|s| s.id == id) else {
            return false;
        };
        let before = sub.filters.len();
        sub.filters.retain(|f| f != filter);
        sub.filters.len() != before
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        self.hub.subs.lock().retain(|s| s.id != id);
    }

    fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.hub.values.lock().get(topic).cloned()
    }

    fn clear_last_value(&self, topic: &Topic) -> bool {
        self.hub.values.lock().remove(topic).is_some()
    }

    fn last_values(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.hub
            .values
            .lock()
            .values()
            .filter(|e| filter.matches(&e.topic))
            .cloned()
            .collect()
    }

    fn retained(&self, filter: &TopicFilter) -> Vec<Arc<Envelope>> {
        self.last_values(filter)
            .into_iter()
            .filter(|e| e.retain)
            .collect()
    }

    fn set_state(&self, state: AdapterState, reason: Option<String>) {
        self.slot.history.lock().push((state, reason.clone()));
        self.slot.state.send_replace((state, reason));
    }

    fn snapshot(&self) -> HubSnapshot {
        let adapters = self
            .hub
            .adapters
            .lock()
            .iter()
            .map(|s| {
                let (state, reason) = s.state.borrow().clone();
                AdapterSnapshot {
                    name: s.name.to_string(),
                    kind: s.kind.to_string(),
                    state,
                    reason,
                    metrics: s.metrics.snapshot(),
                }
            })
            .collect();
        HubSnapshot {
            hub: "test".into(),
            adapters,
            topics: self.hub.values.lock().len(),
            subscriptions: self.hub.subs.lock().len(),
            ..HubSnapshot::default()
        }
    }

    fn clients(&self) -> Option<Arc<ClientRegistry>> {
        Some(self.hub.clients.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static str) -> Envelope {
        Envelope::new(Topic::new(topic).unwrap(), payload)
    }

    #[tokio::test]
    async fn own_envelopes_only_with_include_own() {
        let hub = TestHub::new();
        let a = hub.context("a", "mqtt");
        let mut plain = a.subscribe([TopicFilter::new("#").unwrap()]).unwrap();
        let mut own = a
            .subscribe_with(
                [TopicFilter::new("#").unwrap()],
                SubscribeOptions {
                    include_own: true,
                    ..Default::default()
                },
            )
            .unwrap();
        a.publish(env("x", "1")).await.unwrap();
        assert_eq!(own.recv().await.unwrap().payload, "1");
        assert!(
            plain.try_recv().is_none(),
            "an adapter got its own envelope"
        );
        hub.publish_from("b", env("x", "2")).await.unwrap();
        assert_eq!(plain.recv().await.unwrap().payload, "2");
        assert_eq!(&*hub.published()[0].origin.adapter, "a");
        assert_eq!(&*hub.published()[0].origin.protocol, "mqtt");
    }

    #[tokio::test]
    async fn qos0_subscription_drops_when_full() {
        let hub = TestHub::new();
        let a = hub.context("a", "http");
        let _full = a
            .subscribe_with(
                [TopicFilter::new("t").unwrap()],
                SubscribeOptions {
                    depth: Some(1),
                    max_qos: Some(QoS::AtMostOnce),
                    ..Default::default()
                },
            )
            .unwrap();
        for _ in 0..3 {
            let mut e = env("t", "v");
            e.qos = QoS::AtLeastOnce;
            // Would wait forever if the full queue were not dropping.
            tokio::time::timeout(Duration::from_secs(5), hub.publish_from("b", e))
                .await
                .expect("a QoS 0 subscription stalled the publisher")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn states_and_last_values() {
        let hub = TestHub::new();
        let a = hub.context("a", "coap");
        a.set_state(AdapterState::Down, Some("why".into()));
        a.set_state(AdapterState::Up, None);
        assert_eq!(
            hub.wait_state("a", AdapterState::Up, Duration::from_secs(1))
                .await,
            Some(None)
        );
        assert_eq!(hub.states("a").len(), 2);
        let mut e = env("s/1", "21");
        e.retain = true;
        a.publish(e).await.unwrap();
        a.publish(env("s/2", "22")).await.unwrap();
        let f = TopicFilter::new("s/+").unwrap();
        assert_eq!(a.last_values(&f).len(), 2);
        assert_eq!(a.retained(&f).len(), 1);
        assert!(a.clear_last_value(&Topic::new("s/2").unwrap()));
        assert_eq!(a.snapshot().topics, 1);
    }
}
