//! The router: takes an envelope from one adapter, records it in the
//! last-value store, and queues it to every matching subscription of every
//! other adapter.
//!
//! Queue policy (bounded, per subscription): when a queue is full, a QoS 0
//! envelope is dropped and counted on the subscriber's `dropped` counter; a
//! QoS 1/2 envelope makes the publisher wait until there is room.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::collections::BTreeMap;

use ahash::AHashMap;
use parking_lot::{Mutex, RwLock};
use polyhub_sdk::{
    AdapterMetrics, DurableOptions, DurableQueue, Envelope, HistogramSnapshot, MessageId,
    PublishError, QoS, SubscribeError, SubscribeOptions, SubscriptionId, Topic, TopicFilter,
};
use tokio::sync::mpsc;

use crate::durable::{Queue, DEFAULT_MAX_QUEUE_BYTES};
use crate::last_value::LastValueStore;
use crate::store::Ticket;
use crate::trie::TopicTrie;

/// One subscription as the trie holds it.
#[derive(Debug)]
pub(crate) struct SubEntry {
    id: u64,
    /// Name of the adapter instance that owns it.
    adapter: Arc<str>,
    /// Whether it also receives envelopes its own adapter published
    /// (otherwise they are never handed back: no echo).
    include_own: bool,
    /// Whether a full queue drops whatever the envelope's QoS
    /// (`SubscribeOptions::max_qos` at QoS 0).
    lossy: bool,
    sink: Sink,
    metrics: Arc<AdapterMetrics>,
    /// Set while the subscription has more than one filter, so that an
    /// envelope matching two of them is queued once.
    multi: AtomicBool,
}

/// The commit a routed QoS 1/2 envelope waits for ([`Router::publish_routed`]).
#[derive(Debug)]
pub struct StoredWait {
    persist: Arc<crate::store::Persist>,
    ticket: Ticket,
}

impl StoredWait {
    /// Waits until the envelope (its last value and durable-queue copies)
    /// is on disk.
    pub async fn wait(self) -> Result<(), PublishError> {
        self.persist
            .stored(self.ticket)
            .await
            .map_err(|_| PublishError::NotStored)
    }
}

/// A durable queue and the id of the subscription holding it, if any.
type QueueSlot = (Arc<Queue>, Option<u64>);

/// Where a subscription's envelopes go.
#[derive(Debug)]
enum Sink {
    Channel(mpsc::Sender<Arc<Envelope>>),
    Durable(Arc<Queue>),
}

#[derive(Debug)]
struct SubRecord {
    entry: Arc<SubEntry>,
    filters: Vec<TopicFilter>,
}

/// Routing-latency histogram with fixed buckets (seconds).
#[derive(Debug)]
struct LatencyHistogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

const LATENCY_BOUNDS: [f64; 12] = [
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 1.0,
];

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram {
            counts: (0..LATENCY_BOUNDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: LATENCY_BOUNDS.to_vec(),
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// One live subscription, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Subscription id.
    pub id: u64,
    /// The adapter instance that owns it.
    pub adapter: String,
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Whether it also receives its own adapter's envelopes.
    pub include_own: bool,
    /// Envelopes waiting in its queue.
    pub queued: usize,
    /// Its queue's depth.
    pub depth: usize,
}

/// Routes envelopes between subscriptions.
#[derive(Debug)]
pub struct Router {
    trie: RwLock<TopicTrie<Arc<SubEntry>>>,
    subs: Mutex<AHashMap<u64, SubRecord>>,
    next_id: AtomicU64,
    store: LastValueStore,
    latency: LatencyHistogram,
    default_depth: usize,
    closed: AtomicBool,
    /// Every durable queue, by name, with its live subscription if any.
    queues: Mutex<AHashMap<Arc<str>, QueueSlot>>,
    /// `[hub] max_queue_bytes`.
    max_queue_bytes: u64,
    /// Adapters' state values (`state_put`), mirrored to the store.
    state: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Router {
    /// A router whose subscriptions queue `default_depth` envelopes unless
    /// told otherwise, with a last-value store of the default size.
    pub fn new(default_depth: usize) -> Self {
        Router::with_store(default_depth, LastValueStore::default())
    }

    /// A router with the given last-value store.
    pub fn with_store(default_depth: usize, store: LastValueStore) -> Self {
        Router {
            trie: RwLock::new(TopicTrie::new()),
            subs: Mutex::new(AHashMap::new()),
            next_id: AtomicU64::new(1),
            store,
            latency: LatencyHistogram::new(),
            default_depth: default_depth.max(1),
            closed: AtomicBool::new(false),
            queues: Mutex::new(AHashMap::new()),
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            state: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the default size of durable queues (`[hub] max_queue_bytes`).
    pub fn with_max_queue_bytes(mut self, max: u64) -> Self {
        self.max_queue_bytes = max.max(1);
        self
    }

    /// Takes what the data_dir store held: durable queues (handed to their
    /// subscribers when they subscribe again) and adapters' state.
    pub fn restore(
        &self,
        queues: crate::store::Queues,
        state: std::collections::HashMap<String, Vec<u8>>,
    ) {
        let persist = self.store.persist().cloned();
        let mut all = self.queues.lock();
        for (name, entries) in queues {
            let name: Arc<str> = Arc::from(name);
            let queue = Arc::new(Queue::new(name.clone(), persist.clone(), entries));
            all.insert(name, (queue, None));
        }
        self.state.lock().extend(state);
    }

    /// The last-value store.
    pub fn store(&self) -> &LastValueStore {
        &self.store
    }

    /// Stops accepting envelopes and closes every subscription queue.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        *self.trie.write() = TopicTrie::new();
        self.subs.lock().clear();
        for (queue, _) in self.queues.lock().values() {
            queue.close();
        }
    }

    /// Accepts an envelope: stamps it with an id and time, updates the
    /// last-value store and queues it to every matching subscription except
    /// those of the adapter it came from. `publisher` is the publishing
    /// adapter's counters.
    pub async fn publish(
        &self,
        envelope: Envelope,
        publisher: &AdapterMetrics,
    ) -> Result<(), PublishError> {
        match self.publish_routed(envelope, publisher).await? {
            Some(stored) => stored.wait().await,
            None => Ok(()),
        }
    }

    /// Like [`Router::publish`], but returns once the envelope is routed:
    /// with `[hub] data_dir`, a QoS 1/2 envelope comes with the commit to
    /// wait for before its device is acknowledged, so that a device (an
    /// MQTT connection, an AMQP consumer) can go on with its next message
    /// meanwhile and acknowledge in order as commits land.
    pub async fn publish_routed(
        &self,
        mut envelope: Envelope,
        publisher: &AdapterMetrics,
    ) -> Result<Option<StoredWait>, PublishError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PublishError::Closed);
        }
        let start = Instant::now();
        envelope.id = MessageId::generate();
        envelope.timestamp = SystemTime::now();
        let envelope = Arc::new(envelope);
        let ticket = match self.store.update_persisted(&envelope) {
            Ok(ticket) => ticket,
            Err(_) => return Err(PublishError::Quota),
        };
        publisher.record_in();

        let mut waiting: Vec<Arc<SubEntry>> = Vec::new();
        let mut queued: Option<Ticket> = None;
        {
            let trie = self.trie.read();
            let mut seen: Vec<u64> = Vec::new();
            trie.for_each_match(&envelope.topic, |entry| {
                if entry.multi.load(Ordering::Relaxed) {
                    if seen.contains(&entry.id) {
                        return;
                    }
                    seen.push(entry.id);
                }
                if !entry.include_own
                    && (Arc::ptr_eq(&entry.adapter, &envelope.origin.adapter)
                        || *entry.adapter == *envelope.origin.adapter)
                {
                    return;
                }
                let tx = match &entry.sink {
                    Sink::Channel(tx) => tx,
                    Sink::Durable(queue) => {
                        queued = queued.max(queue.push(envelope.clone()));
                        return;
                    }
                };
                match tx.try_send(envelope.clone()) {
                    Ok(()) => entry.metrics.record_out(),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if envelope.qos.is_acknowledged() && !entry.lossy {
                            waiting.push(entry.clone());
                        } else {
                            entry.metrics.record_drop();
                            tracing::debug!(
                                subscriber = %entry.adapter,
                                topic = %envelope.topic,
                                "Dropped QoS 0 envelope: subscriber queue full."
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            });
        }
        for entry in waiting {
            if let Sink::Channel(tx) = &entry.sink {
                if tx.send(envelope.clone()).await.is_ok() {
                    entry.metrics.record_out();
                }
            }
        }
        self.latency.observe(start.elapsed());
        // With `[hub] data_dir`, a QoS 1 or 2 publisher hears back (and
        // acknowledges its device) only once the value is on disk; the
        // subscribers had it already.
        // Durable queues' copies are in the same or a later batch.
        if let (Some(ticket), true) = (ticket.max(queued), envelope.qos.is_acknowledged()) {
            if let Some(persist) = self.store.persist() {
                return Ok(Some(StoredWait {
                    persist: persist.clone(),
                    ticket,
                }));
            }
        }
        Ok(None)
    }

    /// Creates a subscription owned by `adapter`, which is never handed the
    /// envelopes `adapter` published.
    pub fn subscribe(
        &self,
        adapter: Arc<str>,
        metrics: Arc<AdapterMetrics>,
        filters: &[TopicFilter],
        depth: Option<usize>,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        let options = SubscribeOptions {
            depth,
            ..SubscribeOptions::default()
        };
        self.subscribe_with(adapter, metrics, filters, options)
    }

    /// Creates a subscription owned by `adapter` with options.
    pub fn subscribe_with(
        &self,
        adapter: Arc<str>,
        metrics: Arc<AdapterMetrics>,
        filters: &[TopicFilter],
        options: SubscribeOptions,
    ) -> Result<(SubscriptionId, mpsc::Receiver<Arc<Envelope>>), SubscribeError> {
        let depth = options.depth;
        if self.closed.load(Ordering::Relaxed) {
            return Err(SubscribeError::Closed);
        }
        let (tx, rx) = mpsc::channel(depth.unwrap_or(self.default_depth).max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut unique: Vec<TopicFilter> = Vec::with_capacity(filters.len());
        for f in filters {
            if !unique.contains(f) {
                unique.push(f.clone());
            }
        }
        let entry = Arc::new(SubEntry {
            id,
            adapter,
            include_own: options.include_own,
            lossy: options.max_qos == Some(QoS::AtMostOnce),
            sink: Sink::Channel(tx),
            metrics,
            multi: AtomicBool::new(unique.len() > 1),
        });
        self.insert(entry, unique);
        Ok((SubscriptionId(id), rx))
    }

    /// Subscribes `adapter` through the durable queue `name`, made now or
    /// taken over (with what it holds) from an earlier subscriber or from
    /// the store.
    pub fn subscribe_durable(
        self: &Arc<Self>,
        name: &str,
        adapter: Arc<str>,
        metrics: Arc<AdapterMetrics>,
        filters: &[TopicFilter],
        options: DurableOptions,
    ) -> Result<(SubscriptionId, Arc<dyn DurableQueue>), SubscribeError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(SubscribeError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = {
            let mut queues = self.queues.lock();
            if let Some((_, Some(_))) = queues.get(name) {
                return Err(SubscribeError::QueueInUse(name.to_owned()));
            }
            let (queue, owner) = queues.entry(Arc::from(name)).or_insert_with(|| {
                let q = Queue::new(Arc::from(name), self.store.persist().cloned(), Vec::new());
                (Arc::new(q), None)
            });
            *owner = Some(id);
            queue.clone()
        };
        queue.attach(
            metrics.clone(),
            options.max_queue_bytes.unwrap_or(self.max_queue_bytes),
        );
        let (waiting, _) = queue.depth();
        if waiting > 0 {
            tracing::info!(queue = %name, envelopes = waiting, "Durable queue resumed with envelopes waiting.");
        }
        let mut unique: Vec<TopicFilter> = Vec::with_capacity(filters.len());
        for f in filters {
            if !unique.contains(f) {
                unique.push(f.clone());
            }
        }
        let entry = Arc::new(SubEntry {
            id,
            adapter,
            include_own: options.include_own,
            lossy: false,
            sink: Sink::Durable(queue.clone()),
            metrics,
            multi: AtomicBool::new(unique.len() > 1),
        });
        self.insert(entry, unique);
        let router = Arc::downgrade(self);
        Ok((
            SubscriptionId(id),
            Arc::new(crate::durable::Handle {
                queue,
                forget: Box::new(move |name| {
                    if let Some(r) = router.upgrade() {
                        r.forget_queue(name);
                    }
                }),
            }),
        ))
    }

    /// Drops a durable queue and everything in it.
    pub fn forget_queue(&self, name: &str) {
        let removed = self.queues.lock().remove(name);
        if let Some((queue, owner)) = removed {
            if let Some(id) = owner {
                self.unsubscribe(SubscriptionId(id));
            }
            queue.clear();
        }
    }

    /// Durable queues: name, waiting, in flight, and whether a subscriber
    /// holds it.
    pub fn durable_queues(&self) -> Vec<(String, usize, usize, bool)> {
        let mut out: Vec<_> = self
            .queues
            .lock()
            .iter()
            .map(|(name, (q, owner))| {
                let (w, f) = q.depth();
                (name.to_string(), w, f, owner.is_some())
            })
            .collect();
        out.sort();
        out
    }

    /// An adapter's state value.
    pub fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().get(key).cloned()
    }

    /// Stores or removes an adapter's state value.
    pub fn state_put(&self, key: &str, value: Option<Vec<u8>>) {
        {
            let mut state = self.state.lock();
            match &value {
                Some(v) => {
                    state.insert(key.to_owned(), v.clone());
                }
                None => {
                    if state.remove(key).is_none() {
                        return;
                    }
                }
            }
        }
        if let Some(p) = self.store.persist() {
            p.state_put(key, value);
        }
    }

    /// Adapters' state values under `prefix`.
    pub fn state_scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.state
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn insert(&self, entry: Arc<SubEntry>, unique: Vec<TopicFilter>) {
        let id = entry.id;
        let mut subs = self.subs.lock();
        {
            let mut trie = self.trie.write();
            for f in &unique {
                trie.insert(f, entry.clone());
            }
        }
        subs.insert(
            id,
            SubRecord {
                entry,
                filters: unique,
            },
        );
    }

    /// Adds a filter to a subscription (no-op if it already has it).
    pub fn add_filter(
        &self,
        id: SubscriptionId,
        filter: &TopicFilter,
    ) -> Result<(), SubscribeError> {
        let mut subs = self.subs.lock();
        let record = subs.get_mut(&id.0).ok_or(SubscribeError::Unknown)?;
        if record.filters.contains(filter) {
            return Ok(());
        }
        record.filters.push(filter.clone());
        record
            .entry
            .multi
            .store(record.filters.len() > 1, Ordering::Relaxed);
        self.trie.write().insert(filter, record.entry.clone());
        Ok(())
    }

    /// Removes a filter from a subscription.
    pub fn remove_filter(&self, id: SubscriptionId, filter: &TopicFilter) -> bool {
        let mut subs = self.subs.lock();
        let Some(record) = subs.get_mut(&id.0) else {
            return false;
        };
        let Some(pos) = record.filters.iter().position(|f| f == filter) else {
            return false;
        };
        record.filters.swap_remove(pos);
        self.trie.write().remove(filter, |e| e.id == id.0);
        record
            .entry
            .multi
            .store(record.filters.len() > 1, Ordering::Relaxed);
        true
    }

    /// Drops a subscription.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let mut subs = self.subs.lock();
        if let Some(record) = subs.remove(&id.0) {
            let mut trie = self.trie.write();
            for f in &record.filters {
                trie.remove(f, |e| e.id == id.0);
            }
            drop(trie);
            drop(subs);
            if let Sink::Durable(queue) = &record.entry.sink {
                if let Some((_, owner)) = self.queues.lock().get_mut(queue.name()) {
                    if *owner == Some(id.0) {
                        *owner = None;
                    }
                }
                queue.detach();
            }
        }
    }

    /// Number of live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.lock().len()
    }

    /// Routing latency so far.
    pub fn latency(&self) -> HistogramSnapshot {
        self.latency.snapshot()
    }

    /// Up to `limit` live subscriptions with an id above `after`, by id
    /// (what the admin's `/api/subscriptions` lists).
    pub fn subscriptions(&self, after: u64, limit: usize) -> Vec<SubscriptionInfo> {
        let subs = self.subs.lock();
        let mut ids: Vec<u64> = subs.keys().copied().filter(|id| *id > after).collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.iter()
            .filter_map(|id| subs.get(id))
            .map(|r| SubscriptionInfo {
                id: r.entry.id,
                adapter: r.entry.adapter.to_string(),
                filters: r.filters.iter().map(|f| f.to_string()).collect(),
                include_own: r.entry.include_own,
                queued: match &r.entry.sink {
                    Sink::Channel(tx) => tx.max_capacity() - tx.capacity(),
                    Sink::Durable(q) => q.depth().0,
                },
                depth: match &r.entry.sink {
                    Sink::Channel(tx) => tx.max_capacity(),
                    Sink::Durable(_) => 0,
                },
            })
            .collect()
    }

    /// The last value of a topic.
    pub fn last_value(&self, topic: &Topic) -> Option<Arc<Envelope>> {
        self.store.get(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::{Origin, QoS};

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    fn env(topic: &str, from: &str, qos: QoS) -> Envelope {
        Envelope::new(Topic::new(topic).unwrap(), "x")
            .with_qos(qos)
            .with_origin(Origin {
                adapter: Arc::from(from),
                ..Default::default()
            })
    }

    fn sub(
        r: &Router,
        adapter: &str,
        filters: &[&str],
        depth: usize,
    ) -> (
        SubscriptionId,
        mpsc::Receiver<Arc<Envelope>>,
        Arc<AdapterMetrics>,
    ) {
        let m = Arc::new(AdapterMetrics::default());
        let filters: Vec<_> = filters.iter().map(|s| f(s)).collect();
        let (id, rx) = r
            .subscribe(Arc::from(adapter), m.clone(), &filters, Some(depth))
            .unwrap();
        (id, rx, m)
    }

    #[tokio::test]
    async fn envelopes_reach_matching_subscribers_but_not_their_origin() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let (_a, mut rx_a, _) = sub(&r, "a", &["sensors/#"], 8);
        let (_b, mut rx_b, _) = sub(&r, "b", &["sensors/+/temp"], 8);
        let (_c, mut rx_c, _) = sub(&r, "c", &["other/#"], 8);
        r.publish(env("sensors/k/temp", "a", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert!(rx_a.try_recv().is_err(), "no echo to the origin adapter");
        assert_eq!(rx_b.try_recv().unwrap().topic.as_str(), "sensors/k/temp");
        assert!(rx_c.try_recv().is_err());
        assert_eq!(pm.snapshot().messages_in, 1);
    }

    #[tokio::test]
    async fn include_own_subscriptions_get_their_adapters_envelopes() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let m = Arc::new(AdapterMetrics::default());
        let options = SubscribeOptions {
            include_own: true,
            ..SubscribeOptions::default()
        };
        let (_id, mut rx) = r
            .subscribe_with(Arc::from("a"), m, &[f("t/#")], options)
            .unwrap();
        r.publish(env("t/1", "a", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert_eq!(rx.try_recv().unwrap().topic.as_str(), "t/1");
    }

    #[tokio::test]
    async fn overlapping_filters_of_one_subscription_deliver_once() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let (_id, mut rx, _) = sub(&r, "a", &["s/#", "s/+", "s/x"], 8);
        r.publish(env("s/x", "z", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "delivered once");
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_qos0() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let (_id, mut rx, m) = sub(&r, "slow", &["#"], 2);
        for _ in 0..5 {
            r.publish(env("t", "fast", QoS::AtMostOnce), &pm)
                .await
                .unwrap();
        }
        assert_eq!(m.snapshot().dropped, 3);
        assert_eq!(m.snapshot().messages_out, 2);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn full_queue_back_pressures_qos1_without_loss() {
        let r = Arc::new(Router::new(8));
        let (_id, mut rx, m) = sub(&r, "slow", &["#"], 1);
        let r2 = r.clone();
        let producer = tokio::spawn(async move {
            let pm = AdapterMetrics::default();
            for i in 0..20 {
                let mut e = env("t", "fast", QoS::AtLeastOnce);
                e.payload = bytes::Bytes::from(i.to_string());
                r2.publish(e, &pm).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while got.len() < 20 {
            let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(String::from_utf8(e.payload.to_vec()).unwrap());
        }
        producer.await.unwrap();
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, expected, "in order, none lost");
        assert_eq!(m.snapshot().dropped, 0);
    }

    #[tokio::test]
    async fn unsubscribe_and_filter_changes_take_effect() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let (id, mut rx, _) = sub(&r, "a", &["x"], 8);
        r.add_filter(id, &f("y/#")).unwrap();
        r.publish(env("y/1", "z", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(r.remove_filter(id, &f("y/#")));
        r.publish(env("y/1", "z", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert!(rx.try_recv().is_err());
        r.unsubscribe(id);
        assert_eq!(r.subscription_count(), 0);
        r.publish(env("x", "z", QoS::AtMostOnce), &pm)
            .await
            .unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(r.add_filter(id, &f("x")), Err(SubscribeError::Unknown));
    }

    #[tokio::test]
    async fn closed_router_refuses_publish() {
        let r = Router::new(8);
        r.close();
        let pm = AdapterMetrics::default();
        assert_eq!(
            r.publish(env("x", "z", QoS::AtMostOnce), &pm).await,
            Err(PublishError::Closed)
        );
    }

    #[tokio::test]
    async fn a_full_qos0_subscription_drops_qos1_envelopes_instead_of_stalling_the_publisher() {
        let r = Router::new(8);
        let pm = AdapterMetrics::default();
        let lossy_metrics = Arc::new(AdapterMetrics::default());
        let options = SubscribeOptions {
            depth: Some(1),
            max_qos: Some(QoS::AtMostOnce),
            ..SubscribeOptions::default()
        };
        let (_slow, _slow_rx) = r
            .subscribe_with(
                Arc::from("slow"),
                lossy_metrics.clone(),
                &[f("t/#")],
                options,
            )
            .unwrap();
        let (_fast, mut fast_rx, _) = sub(&r, "fast", &["t/#"], 16);
        for i in 0..5 {
            let publish = r.publish(env(&format!("t/{i}"), "x", QoS::AtLeastOnce), &pm);
            tokio::time::timeout(Duration::from_secs(5), publish)
                .await
                .expect("a QoS 0 subscriber never makes a QoS 1 publisher wait")
                .unwrap();
        }
        assert_eq!(lossy_metrics.snapshot().dropped, 4);
        for _ in 0..5 {
            assert!(fast_rx.try_recv().is_ok());
        }
    }

    #[tokio::test]
    async fn a_retained_publish_past_the_quota_is_refused_and_not_routed() {
        let r = Router::with_store(8, LastValueStore::new(1));
        let pm = AdapterMetrics::default();
        let (_b, mut rx, _) = sub(&r, "b", &["#"], 8);
        let retained = |t: &str| env(t, "x", QoS::AtMostOnce).with_retain(true);
        r.publish(retained("a"), &pm).await.unwrap();
        assert_eq!(
            r.publish(retained("b"), &pm).await,
            Err(PublishError::Quota)
        );
        assert_eq!(rx.try_recv().unwrap().topic.as_str(), "a");
        assert!(rx.try_recv().is_err());
        assert_eq!(pm.snapshot().messages_in, 1);
    }
}
